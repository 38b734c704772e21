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
