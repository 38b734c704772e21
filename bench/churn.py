"""
Swap benchmarks: churn over several models, and the overhead of one swap.

    python bench/churn.py [--models 3] [--requests 60] [--changes 40] [--swaps 10]

Churn: C{--requests} chat requests over C{--models} demo models on a
one-at-a-time config, sent in an arrival order with C{--changes} model
changes, each request 20 ms after the previous one.  Printed: process starts
(distinct upstream pids), total time, and each request's wait (time to its
first byte minus the upstream's own time for that request), p50/p99.  The
same workload on a config where every model may run at once (no swaps) is
the baseline.

Swap overhead: C{--swaps} times, a request for a cold model is timed to its
first byte, with nothing loaded (after an unload) and with the other model
loaded (which must stop first), minus the upstream's own time from spawn to
ready, and from SIGTERM to exit, measured directly right before each one
(the demo started by hand, its /health polled every 2 ms), p50, and
as ratios.  The upstream's own first request (its time to first byte on a
fresh process, measured directly too) is printed beside them, and the
overhead without it: what llamaswap itself adds.
"""

from __future__ import annotations

import argparse
import random
import time

from twisted.internet import task
from twisted.internet.defer import Deferred, gatherResults

from support import (
    PYTHON,
    ROOT,
    Daemon,
    DirectServer,
    agent,
    chatBody,
    fetch,
    freePort,
    percentile,
)

TOKENS = 8
TOKEN_DELAY = 0.005  # each request keeps its upstream busy about 40 ms


def arrivalOrder(models: list[str], requests: int, changes: int, rng: random.Random) -> list[str]:
    """
    @return: C{requests} model names in which the model changes C{changes}
        times, every model appearing.
    """
    order = [models[0]]
    changeAt = set(rng.sample(range(1, requests), changes))
    for i in range(1, requests):
        if i in changeAt:
            order.append(rng.choice([m for m in models if m != order[-1]]))
        else:
            order.append(order[-1])
    return order


def config(models: list[str], together: bool) -> str:
    lines = ["healthCheckTimeout: 30", "models:"]
    for name in models:
        lines += [
            f"  {name}:",
            "    cmd: |",
            f"      {PYTHON} -m llamaswap.demo --port ${{PORT}} --model {name}"
            f" --tokens {TOKENS} --token-delay {TOKEN_DELAY}",
            "    concurrencyLimit: 100",
        ]
    if together:
        lines += ["groups:", "  all:", "    swap: false", "    members: [" + ", ".join(models) + "]"]
    return "\n".join(lines) + "\n"


async def churn(reactor, models: list[str], order: list[str], together: bool) -> dict:
    daemon = Daemon(reactor, config(models, together))
    await daemon.start()
    try:
        client, pool = agent(reactor, perHost=len(order))
        if together:  # the baseline starts with everything loaded
            for name in models:
                await fetch(client, daemon.base + "/v1/chat/completions", chatBody(name))
        upstreamTime = TOKENS * TOKEN_DELAY
        start = time.perf_counter()

        async def one(i: int, name: str):
            await task.deferLater(reactor, i * 0.02, lambda: None)
            response, _, ttfb = await fetch(
                client, daemon.base + "/v1/chat/completions", chatBody(name))
            return response.headers.getRawHeaders(b"x-demo-pid")[0], ttfb

        results = await gatherResults(
            [Deferred.fromCoroutine(one(i, name)) for i, name in enumerate(order)])
        total = time.perf_counter() - start
        await pool.closeCachedConnections()
        waits = [max(0.0, ttfb - upstreamTime) for _, ttfb in results]
        return {
            "starts": len({pid for pid, _ in results}),
            "total": total,
            "p50": percentile(waits, 50),
            "p99": percentile(waits, 99),
        }
    finally:
        await daemon.stop()


async def directOnce(reactor) -> tuple[float, float, float]:
    """
    @return: the demo's own spawn-to-ready, first request (time to first
        byte) and SIGTERM-to-exit times, measured by hand once.
    """
    import sys

    port = freePort()
    # The same arguments as the models of config(), so that its first
    # request costs what theirs do.
    argv = [sys.executable, "-m", "llamaswap.demo", "--port", str(port),
            "--tokens", str(TOKENS), "--token-delay", str(TOKEN_DELAY)]
    demo = DirectServer(reactor, argv, port, path=ROOT)
    ready = await demo.start()
    client, pool = agent(reactor)
    _, _, first = await fetch(client, f"http://127.0.0.1:{port}/v1/chat/completions",
                              chatBody("direct", max_tokens=1))
    await pool.closeCachedConnections()
    return ready, await demo.stop(), first


async def swapOverhead(reactor, runs: int):
    """
    Each measurement through llamaswap is paired with a direct start and
    stop of the demo right before it, so that both see the same machine.

    @return: C{(swaps, colds)}: lists of C{(through llamaswap, direct
        spawn-to-ready, direct SIGTERM-to-exit, direct first request)} for swaps (the other model
        loaded) and for cold starts (nothing loaded, after an unload).
    """
    daemon = Daemon(reactor, config(["cold-a", "cold-b"], together=False))
    await daemon.start()
    try:
        client, pool = agent(reactor)
        url = daemon.base + "/v1/chat/completions"
        await fetch(client, url, chatBody("cold-b", max_tokens=1))
        swaps = []
        for i in range(runs):
            direct = await directOnce(reactor)
            name = "cold-a" if i % 2 == 0 else "cold-b"
            _, _, ttfb = await fetch(client, url, chatBody(name, max_tokens=1))
            swaps.append((ttfb, *direct))
        colds = []
        for i in range(runs):
            await fetch(client, daemon.base + "/api/models/unload", b"")
            direct = await directOnce(reactor)
            _, _, ttfb = await fetch(client, url, chatBody("cold-a", max_tokens=1))
            colds.append((ttfb, *direct))
        await pool.closeCachedConnections()
    finally:
        await daemon.stop()
    return swaps, colds


async def main(reactor, args) -> None:
    models = [f"model-{chr(ord('a') + i)}" for i in range(args.models)]
    order = arrivalOrder(models, args.requests, args.changes, random.Random(7))
    changes = sum(1 for a, b in zip(order, order[1:]) if a != b)
    swapped = await churn(reactor, models, order, together=False)
    baseline = await churn(reactor, models, order, together=True)
    print(f"churn: {len(order)} requests over {len(models)} models, {changes} model changes"
          " in arrival order, 20 ms apart")
    for name, r in (("one at a time", swapped), ("no swaps", baseline)):
        print(f"  {name:14} starts {r['starts']:3}   total {r['total']:6.2f} s"
              f"   wait p50 {r['p50'] * 1e3:7.1f} ms   p99 {r['p99'] * 1e3:7.1f} ms")
    swaps, colds = await swapOverhead(reactor, args.swaps)

    def p50(rows, f):
        return percentile([f(*row[:3]) for row in rows], 50) * 1e3

    def own(rows, f):
        return percentile([f(*row) for row in rows], 50) * 1e3

    print(f"cold start, {args.swaps} times (nothing loaded: unload, then a request), each paired"
          " with a direct start just before it")
    print(f"  upstream's own spawn-to-ready       p50 {p50(colds, lambda t, r, s: r):7.1f} ms")
    print(f"  request to first byte               p50 {p50(colds, lambda t, r, s: t):7.1f} ms")
    print(f"  overhead beyond spawn-to-ready      p50 {p50(colds, lambda t, r, s: t - r):7.1f} ms")
    print(f"  ratio to the direct start           p50 {p50(colds, lambda t, r, s: t / r) / 1e3:7.2f}")
    print(f"  upstream's own first request        p50 {own(colds, lambda t, r, s, f: f):7.1f} ms")
    print(f"  overhead beyond ready + first req.  p50"
          f" {own(colds, lambda t, r, s, f: t - r - f):7.1f} ms")
    print(f"swap to a cold model, {args.swaps} swaps (stop the loaded one, start the other),"
          " each paired with a direct start and stop")
    print(f"  upstream's own spawn-to-ready       p50 {p50(swaps, lambda t, r, s: r):7.1f} ms")
    print(f"  upstream's own SIGTERM-to-exit      p50 {p50(swaps, lambda t, r, s: s):7.1f} ms")
    print(f"  request to first byte               p50 {p50(swaps, lambda t, r, s: t):7.1f} ms")
    print(f"  overhead beyond the upstream's own  p50 {p50(swaps, lambda t, r, s: t - r - s):7.1f} ms"
          " (start and stop)")
    print(f"  ratio to direct start + stop        p50"
          f" {p50(swaps, lambda t, r, s: t / (r + s)) / 1e3:7.2f}")
    print(f"  upstream's own first request        p50 {own(swaps, lambda t, r, s, f: f):7.1f} ms")
    print(f"  overhead beyond start, stop, 1st r. p50"
          f" {own(swaps, lambda t, r, s, f: t - r - s - f):7.1f} ms")
    print(f"  ratio to direct start+stop+1st req. p50"
          f" {own(swaps, lambda t, r, s, f: t / (r + s + f)) / 1e3:7.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--changes", type=int, default=40)
    parser.add_argument("--swaps", type=int, default=10)
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, parser.parse_args())))
