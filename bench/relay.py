"""
Relay benchmark: the demo responder measured directly and through llamaswap,
in one run, on one upstream process.

    python bench/relay.py [--requests 2000] [--chunks 20000]

llamaswap runs as users run it (C{twistd -n llamaswap} in a child process);
the demo responder is the upstream it starts.  Both paths are measured
against that same upstream, alternating in rounds, and printed as ratios:

 - small non-streamed requests, one at a time on a keep-alive connection:
   p50 and p99 latency, and what llamaswap adds;
 - one long streamed chat completion (one SSE event per token): time to
   first chunk, chunks per second, lost chunks.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import tempfile
import time

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


async def fetch(agent: Agent, url: str, body: bytes, onData=None) -> bytes:
    from llamaswap.proxy.relay import BytesProducer

    response = await agent.request(
        b"POST", url.encode(), Headers({b"content-type": [b"application/json"]}),
        BytesProducer(body),
    )
    done: Deferred[bytes] = Deferred()
    response.deliverBody(_Collect(done, onData))
    data = await done
    if response.code != 200:
        raise RuntimeError(f"{url}: HTTP {response.code}: {data[:200]!r}")
    return data


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(p / 100 * (len(ordered) - 1)))))
    return ordered[index]


async def latency(agent: Agent, url: str, n: int) -> list[float]:
    body = json.dumps({"model": "bench", "max_tokens": 1,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        await fetch(agent, url, body)
        times.append(time.perf_counter() - start)
    return times


async def stream(agent: Agent, base: str, n: int) -> dict:
    """
    One streamed chat completion of C{n} tokens (one SSE event each).
    """
    url = f"{base}/v1/chat/completions"
    body = json.dumps({"model": "bench", "stream": True, "max_tokens": n,
                       "messages": [{"role": "user", "content": "count"}]}).encode()
    first: list[float] = []
    start = time.perf_counter()

    def onData(data: bytes) -> None:
        if not first:
            first.append(time.perf_counter())

    data = await fetch(agent, url, body, onData)
    end = time.perf_counter()
    events = [json.loads(e[6:]) for e in data.split(b"\n\n") if e.startswith(b"data: {")]
    tokens = sum(1 for e in events if e["choices"] and e["choices"][0]["delta"].get("content"))
    return {
        "ttfc": first[0] - start,
        "chunksPerSecond": len(events) / (end - start),
        "lost": n - tokens,
    }


class _Daemon(ProcessProtocol):
    def __init__(self) -> None:
        self.ended: Deferred = Deferred()
        self.output = b""

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value)


async def main(reactor, args) -> None:
    listen, upstream = freePort(), freePort()
    config = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    config.write(
        "models:\n"
        "  bench:\n"
        "    cmd: |\n"
        f"      {json.dumps(sys.executable)} -m llamaswap.demo --port {upstream}"
        f" --model bench --tokens {args.chunks}\n"
        f"    proxy: http://127.0.0.1:{upstream}\n"
    )
    config.close()
    daemon = _Daemon()
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "--pidfile=", "--logfile=/dev/null", "-n", "llamaswap",
            "-c", config.name, "--listen", f"127.0.0.1:{listen}"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    transport = reactor.spawnProcess(daemon, argv[0], argv, env=env, path=ROOT)
    try:
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 1
        agent = Agent(reactor, pool=pool)
        proxied, direct = f"http://127.0.0.1:{listen}", f"http://127.0.0.1:{upstream}"
        for _ in range(300):  # wait for the daemon, then load the model
            try:
                await fetch(agent, proxied + "/v1/chat/completions",
                            json.dumps({"model": "bench", "messages": [{"role": "user", "content": "hi"}]}).encode())
                break
            except Exception:
                await task.deferLater(reactor, 0.1, lambda: None)
        else:
            raise RuntimeError("llamaswap did not come up:\n" + daemon.output.decode())

        rounds = 5
        per = max(1, args.requests // rounds)
        d, p = [], []
        await latency(agent, direct + "/v1/chat/completions", 100)  # warm up
        await latency(agent, proxied + "/v1/chat/completions", 100)
        for _ in range(rounds):
            d += await latency(agent, direct + "/v1/chat/completions", per)
            p += await latency(agent, proxied + "/v1/chat/completions", per)
        dp50, dp99 = percentile(d, 50) * 1e3, percentile(d, 99) * 1e3
        pp50, pp99 = percentile(p, 50) * 1e3, percentile(p, 99) * 1e3
        print(f"small non-streamed request, {len(d)} each, one keep-alive connection")
        print(f"  direct     p50 {dp50:7.3f} ms   p99 {dp99:7.3f} ms")
        print(f"  llamaswap  p50 {pp50:7.3f} ms   p99 {pp99:7.3f} ms")
        print(f"  added      p50 {pp50 - dp50:7.3f} ms   p99 {pp99 - dp99:7.3f} ms")
        print(f"  ratio      p50 {pp50 / dp50:7.2f}x     p99 {pp99 / dp99:7.2f}x")

        ds, ps = [], []
        for _ in range(3):
            ds.append(await stream(agent, direct, args.chunks))
            ps.append(await stream(agent, proxied, args.chunks))

        def best(runs, key, fn=max):
            return fn(r[key] for r in runs)

        print(f"long stream: a chat completion of {args.chunks} tokens, one SSE event each,"
              " best of 3")
        for name, runs in (("direct", ds), ("llamaswap", ps)):
            print(f"  {name:10} first chunk {best(runs, 'ttfc', min) * 1e3:7.3f} ms"
                  f"   {best(runs, 'chunksPerSecond'):10.0f} chunks/s"
                  f"   lost {sum(r['lost'] for r in runs)}")
        print(f"  ratio      first chunk {best(ps, 'ttfc', min) / best(ds, 'ttfc', min):7.2f}x"
              f"   chunks/s {best(ps, 'chunksPerSecond') / best(ds, 'chunksPerSecond'):7.2f}x")
        await pool.closeCachedConnections()
    finally:
        if transport.pid is not None:
            os.kill(transport.pid, signal.SIGTERM)
        await daemon.ended
        os.unlink(config.name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--chunks", type=int, default=20000)
    sys.path.insert(0, ROOT)
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, parser.parse_args())))
