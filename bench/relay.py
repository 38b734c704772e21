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
import time

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.web.client import Agent

from support import PYTHON, Daemon, chatBody, fetch, percentile
from support import agent as makeAgent


async def latency(agent: Agent, url: str, n: int) -> list[float]:
    body = chatBody("bench", max_tokens=1)
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
    body = chatBody("bench", stream=True, max_tokens=n)
    start = time.perf_counter()
    _, data, ttfc = await fetch(agent, f"{base}/v1/chat/completions", body)
    elapsed = time.perf_counter() - start
    events = [json.loads(e[6:]) for e in data.split(b"\n\n") if e.startswith(b"data: {")]
    tokens = sum(1 for e in events if e["choices"] and e["choices"][0]["delta"].get("content"))
    return {"ttfc": ttfc, "chunksPerSecond": len(events) / elapsed, "lost": n - tokens}


async def main(reactor, args) -> None:
    from support import freePort

    upstream = freePort()
    daemon = Daemon(
        reactor,
        "models:\n"
        "  bench:\n"
        "    cmd: |\n"
        f"      {PYTHON} -m llamaswap.demo --port {upstream} --model bench --tokens {args.chunks}\n"
        f"    proxy: http://127.0.0.1:{upstream}\n",
    )
    await daemon.start()
    try:
        client, pool = makeAgent(reactor)
        proxied, direct = daemon.base, f"http://127.0.0.1:{upstream}"
        await fetch(client, proxied + "/v1/chat/completions", chatBody("bench", max_tokens=1))

        rounds = 5
        per = max(1, args.requests // rounds)
        d, p = [], []
        await latency(client, direct + "/v1/chat/completions", 100)  # warm up
        await latency(client, proxied + "/v1/chat/completions", 100)
        for _ in range(rounds):
            d += await latency(client, direct + "/v1/chat/completions", per)
            p += await latency(client, proxied + "/v1/chat/completions", per)
        dp50, dp99 = percentile(d, 50) * 1e3, percentile(d, 99) * 1e3
        pp50, pp99 = percentile(p, 50) * 1e3, percentile(p, 99) * 1e3
        print(f"small non-streamed request, {len(d)} each, one keep-alive connection")
        print(f"  direct     p50 {dp50:7.3f} ms   p99 {dp99:7.3f} ms")
        print(f"  llamaswap  p50 {pp50:7.3f} ms   p99 {pp99:7.3f} ms")
        print(f"  added      p50 {pp50 - dp50:7.3f} ms   p99 {pp99 - dp99:7.3f} ms")
        print(f"  ratio      p50 {pp50 / dp50:7.2f}x     p99 {pp99 / dp99:7.2f}x")

        ds, ps = [], []
        for _ in range(3):
            ds.append(await stream(client, direct, args.chunks))
            ps.append(await stream(client, proxied, args.chunks))

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
        await daemon.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--chunks", type=int, default=20000)
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, parser.parse_args())))
