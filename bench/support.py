"""
Plumbing shared by the benchmarks: free ports, a raw HTTP client that notes
when the first byte arrives, percentiles, and llamaswap run as users run it
(C{twistd -n llamaswap} in a child process).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import tempfile
import time

from zope.interface import implementer

from twisted.internet import task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from llamaswap.proxy.relay import BytesProducer  # noqa: E402

PYTHON = json.dumps(sys.executable)


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(p / 100 * (len(ordered) - 1)))))
    return ordered[index]


def chatBody(model: str, **extra) -> bytes:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    ).encode()


class _Collect(Protocol):
    def __init__(self, done: Deferred, onData=None) -> None:
        self.done = done
        self.chunks: list[bytes] = []
        self.onData = onData

    def dataReceived(self, data: bytes) -> None:
        if self.onData is not None:
            self.onData(data)
        self.chunks.append(data)

    def connectionLost(self, reason) -> None:
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


async def fetch(agent: Agent, url: str, body: bytes, onData=None):
    """
    POST C{body} as JSON to C{url}.

    @return: C{(response, body bytes, seconds to the first body byte)}.
    """
    start = time.perf_counter()
    first: list[float] = []

    def noteFirst(data: bytes) -> None:
        if not first:
            first.append(time.perf_counter() - start)
        if onData is not None:
            onData(data)

    response = await agent.request(
        b"POST", url.encode(), Headers({b"content-type": [b"application/json"]}),
        BytesProducer(body),
    )
    done: Deferred[bytes] = Deferred()
    response.deliverBody(_Collect(done, noteFirst))
    data = await done
    if response.code != 200:
        raise RuntimeError(f"{url}: HTTP {response.code}: {data[:200]!r}")
    return response, data, (first[0] if first else time.perf_counter() - start)


@implementer(IAgentEndpointFactory)
class _LoopbackEndpoints:
    """
    Plain TCP endpoints: a refused connection fails at once (an L{Agent}'s
    default L{HostnameEndpoint} takes its 0.3 s attempt delay to say so,
    which would inflate every "direct" spawn-to-ready time).
    """

    def __init__(self, reactor) -> None:
        self.reactor = reactor

    def endpointForURI(self, uri):
        return TCP4ClientEndpoint(self.reactor, uri.host.decode(), uri.port)


def agent(reactor, persistent: bool = True, perHost: int = 1) -> tuple[Agent, HTTPConnectionPool]:
    pool = HTTPConnectionPool(reactor, persistent=persistent)
    pool.maxPersistentPerHost = perHost
    return Agent.usingEndpointFactory(reactor, _LoopbackEndpoints(reactor), pool=pool), pool


class Daemon(ProcessProtocol):
    """
    C{twistd -n llamaswap} with a config given as text, in a child process.
    """

    def __init__(self, reactor, configText: str) -> None:
        self.reactor = reactor
        self.port = freePort()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ended: Deferred = Deferred()
        self.output = b""
        config = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        config.write(configText)
        config.close()
        self.configPath = config.name
        self.transport = None

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value)

    async def start(self) -> None:
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "--pidfile=", "-n", "llamaswap", "-c", self.configPath,
                "--listen", f"127.0.0.1:{self.port}"]
        env = dict(os.environ,
                   PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
        self.reactor.spawnProcess(self, argv[0], argv, env=env, path=ROOT)
        probe, pool = agent(self.reactor, persistent=False)
        for _ in range(300):
            try:
                response = await probe.request(b"GET", (self.base + "/health").encode())
                if response.code == 200:
                    await pool.closeCachedConnections()
                    return
            except Exception:
                pass
            if self.ended.called:
                break
            await task.deferLater(self.reactor, 0.1, lambda: None)
        raise RuntimeError("llamaswap did not come up:\n" + self.output.decode())

    async def stop(self) -> None:
        if self.transport is not None and self.transport.pid is not None:
            os.kill(self.transport.pid, signal.SIGTERM)
        await self.ended
        os.unlink(self.configPath)

    def count(self, needle: bytes) -> int:
        """
        @return: how many lines of the daemon's log contain C{needle}.
        """
        return sum(1 for line in self.output.splitlines() if needle in line)


class DirectServer(ProcessProtocol):
    """
    An upstream started by hand (no llamaswap), timed from spawn to ready
    and from SIGTERM to exit.
    """

    def __init__(self, reactor, argv: list[str], port: int, path: str | None = None) -> None:
        self.reactor = reactor
        self.argv = argv
        self.port = port
        self.path = path
        self.ended: Deferred = Deferred()
        self.transport = None

    def processEnded(self, reason) -> None:
        self.ended.callback(None)

    async def start(self) -> float:
        """
        Spawn it and poll its C{/health} every 2 ms (polling every millisecond
        takes enough of a busy two-core machine to slow the start it times).

        @return: seconds from spawn to the first 200.
        """
        start = time.perf_counter()
        self.reactor.spawnProcess(self, self.argv[0], self.argv, env=dict(os.environ),
                                  path=self.path)
        probe, _ = agent(self.reactor, persistent=False)
        url = f"http://127.0.0.1:{self.port}/health".encode()
        while True:
            try:
                response = await probe.request(b"GET", url)
                if response.code == 200:
                    return time.perf_counter() - start
            except Exception:
                pass
            if self.ended.called:
                raise RuntimeError(f"{self.argv} exited before it was ready")
            await task.deferLater(self.reactor, 0.002, lambda: None)

    async def stop(self) -> float:
        """
        @return: seconds from SIGTERM to its exit.
        """
        stopping = time.perf_counter()
        self.transport.signalProcess("TERM")
        await self.ended
        return time.perf_counter() - stopping


# -- a fast upstream and a lean load generator (asyncio, raw sockets) ------
#
# The relay bench must measure the proxy, not its neighbours: the upstream
# below answers from prebuilt bytes, and the client writes prebuilt requests
# and reads only the framing it needs.

import asyncio  # noqa: E402
import re  # noqa: E402

_SMALL_JSON = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "ok"}}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}).encode()
_MAX_TOKENS = re.compile(rb'"max_tokens"\s*:\s*(\d+)')


def _sseChunk(payload: bytes) -> bytes:
    event = b"data: " + payload + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


_EVENT = _sseChunk(json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "bench",
    "choices": [{"index": 0, "delta": {"content": "tok"}, "finish_reason": None}],
}).encode())
_LAST = _sseChunk(json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "bench",
    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 500, "total_tokens": 505},
    "timings": {"prompt_n": 5, "prompt_ms": 1.0, "predicted_n": 500, "predicted_ms": 50.0},
}).encode()) + _sseChunk(b"[DONE]") + b"0\r\n\r\n"


class FastUpstream(asyncio.Protocol):
    """
    An OpenAI-ish upstream as cheap as Python allows: C{GET /health}, a
    fixed small chat completion, and for C{"stream": true} bodies
    C{max_tokens} SSE events, one chunk each, yielding to the loop between
    events (as a server that flushes every token does).
    """

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buffer = b""
        self.busy = False

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        head, sep, rest = self.buffer.partition(b"\r\n\r\n")
        if not sep:
            return
        length = 0
        lower = head.lower()
        at = lower.find(b"content-length:")
        if at >= 0:
            length = int(lower[at + 15:lower.find(b"\r\n", at) if lower.find(b"\r\n", at) > 0
                               else None].strip())
        if b"expect: 100-continue" in lower and len(rest) < length:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if len(rest) < length:
            return
        body, self.buffer = rest[:length], rest[length:]
        if head.startswith(b"GET /health"):
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nOK")
        elif b'"stream": true' in body or b'"stream":true' in body:
            found = _MAX_TOKENS.search(body)
            self.busy = True
            asyncio.ensure_future(self._stream(int(found.group(1)) if found else 500))
            return
        else:
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(_SMALL_JSON), _SMALL_JSON))
        if self.buffer:
            self._next()

    async def _stream(self, n: int) -> None:
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"transfer-encoding: chunked\r\n\r\n")
        for _ in range(n - 1):
            if self.transport.is_closing():
                return
            self.transport.write(_EVENT)
            await asyncio.sleep(0)
        self.transport.write(_LAST)
        self.busy = False
        if self.buffer:
            self._next()


def serveFastUpstream(port: int) -> None:
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(FastUpstream, "127.0.0.1", port,
                                                        backlog=1024))
    try:
        loop.run_forever()
    finally:
        server.close()


class _Response(asyncio.Protocol):
    """
    One keep-alive client connection: C{request(raw)} sends prebuilt bytes
    and resolves with C{(status, body bytes or None, seconds to first body
    byte, SSE events)} once the response (Content-Length or chunked) ended.
    Streamed bodies are counted, not kept.
    """

    def __init__(self) -> None:
        self.waiter: asyncio.Future | None = None
        self.connected: asyncio.Future = asyncio.get_event_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connected.set_result(None)

    def connection_lost(self, exc) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))

    def request(self, raw: bytes, keep: bool = True) -> asyncio.Future:
        self.waiter = asyncio.get_event_loop().create_future()
        self.head = b""
        self.status = 0
        self.length = -1
        self.chunked = False
        self.body: list[bytes] = []
        self.received = 0
        self.tail = b""
        self.pending = b""
        self.left = -1
        self.events = 0
        self.keep = keep
        self.start = time.perf_counter()
        self.first = 0.0
        self.transport.write(raw)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        if self.status == 0:
            self.head += data
            head, sep, rest = self.head.partition(b"\r\n\r\n")
            if not sep:
                return
            if head.startswith(b"HTTP/1.1 100"):
                self.head = rest
                if rest:
                    self.data_received(b"")
                return
            self.status = int(head[9:12])
            lower = head.lower()
            self.chunked = b"transfer-encoding: chunked" in lower
            at = lower.find(b"content-length:")
            if at >= 0:
                end = lower.find(b"\r\n", at)
                self.length = int(lower[at + 15:end if end > 0 else None])
            data = rest
            if not data and not (self.length == 0):
                return
        if data and not self.first:
            self.first = time.perf_counter() - self.start
        self.received += len(data)
        if self.chunked:
            if self.keep:
                self.body.append(data)
            if self._unchunk(data):
                self._done()
        else:
            self.body.append(data)
            if self.received >= self.length:
                self._done()

    def _unchunk(self, data: bytes) -> bool:
        """
        Count the SSE events of the next bytes of a chunked body (framing
        removed: a proxy may split an event across chunks).

        @return: whether the body ended.
        """
        data = self.pending + data
        self.pending = b""
        pos, size = 0, len(data)
        while pos < size:
            if self.left > 0:
                end = min(size, pos + self.left)
                piece = data[pos:end]
                joined = self.tail + piece
                self.events += joined.count(b"data: ") - self.tail.count(b"data: ")
                self.tail = joined[-5:]
                self.left -= end - pos
                pos = end
                if self.left == 0:
                    self.left = -2
            elif self.left == -2:
                if size - pos < 2:
                    self.pending = data[pos:]
                    return False
                pos += 2
                self.left = -1
            else:
                newline = data.find(b"\r\n", pos)
                if newline < 0:
                    self.pending = data[pos:]
                    return False
                n = int(data[pos:newline].split(b";")[0], 16)
                pos = newline + 2
                if n == 0:
                    return True
                self.left = n
        return False

    def _done(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            body = b"".join(self.body) if self.keep or not self.chunked else None
            waiter.set_result((self.status, body, self.first or time.perf_counter() - self.start,
                               self.events))


async def connect(port: int) -> _Response:
    loop = asyncio.get_event_loop()
    _, protocol = await loop.create_connection(_Response, "127.0.0.1", port)
    await protocol.connected
    return protocol


def rawPost(path: str, body: bytes, port: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body


def cpuSeconds(pid: int) -> float:
    """
    @return: the user + system CPU seconds process C{pid} has used.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peakRSS(pid: int) -> int:
    """
    @return: the peak resident set of process C{pid}, in bytes.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["upstream"]:
        serveFastUpstream(int(sys.argv[sys.argv.index("--port") + 1]))
