"""
Real-model benchmark: llama.cpp's llama-server measured directly and through
llamaswap, in one run.

    python bench/llama_server.py [--streams 4] [--tokens 128] [--rounds 6] [--swaps 10]
                                 [--threads 1]

Needs a llama-server binary and GGUF weights: C{LLAMASWAP_LLAMA_SERVER},
C{LLAMASWAP_SMOLLM2_GGUF}, C{LLAMASWAP_GEMMA3_GGUF}, or the cache that
C{scripts/build-llama-server} and C{scripts/fetch-models} fill
(C{$LLAMASWAP_CACHE}, default C{~/.cache/llamaswap}).

llamaswap runs as users run it (C{twistd -n llamaswap} in a child process).
llama-server gets one thread by default: with as many threads as cores, its
threads spin at each barrier and any other process that wants a core (this
client, llamaswap, anything else on the machine) stalls a whole step, so the
figures measure CPU contention (wildly: 0.6x to 8x between rounds on two
busy cores) rather than the relay.  C{--threads 2} shows it.

Throughput: C{--streams} concurrent streamed chat completions of
C{--tokens} tokens each (llama-server with as many slots), sent directly to
the llama-server llamaswap started and through llamaswap, alternating, for
C{--rounds} rounds: generated tokens per second over all rounds, each
stream's time to its first byte, p50, and the ratio of the two paths' rates
in each round (the two halves of a round run back to back, so this ratio is
the one that machine noise disturbs least).

Swap: C{--swaps} times, a one-token chat for the model that is not loaded
(SmolLM2 and Gemma 3 alternately, one at a time), timed to its answer; from
it are subtracted llama-server's own times measured by hand on the same
models: spawn to ready (its /health polled every 2 ms), the first
one-token request on the fresh server, and SIGTERM to exit for the model
that was stopped.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time

from twisted.internet import task
from twisted.internet.defer import Deferred, gatherResults

from support import Daemon, DirectServer, agent, fetch, freePort, percentile

CACHE = os.environ.get("LLAMASWAP_CACHE") or os.path.join(
    os.path.expanduser("~"), ".cache", "llamaswap")
THREADS = ["--threads", "1"]  # --threads sets it
PROMPT = [{"role": "user", "content": "Write a short story about a robot."}]


def findLlamaServer() -> str | None:
    if os.environ.get("LLAMASWAP_LLAMA_SERVER"):
        return os.environ["LLAMASWAP_LLAMA_SERVER"]
    built = sorted(glob.glob(os.path.join(CACHE, "llama-server-*", "bin", "llama-server")),
                   key=os.path.getmtime)
    return built[-1] if built else None


def findGGUF(name: str, fileName: str) -> str | None:
    path = os.environ.get(f"LLAMASWAP_{name}_GGUF") or os.path.join(CACHE, "models", fileName)
    return path if os.path.isfile(path) else None


def argv(binary: str, gguf: str, port: int | str, *extra: str) -> list[str]:
    return [binary, "--host", "127.0.0.1", "--port", str(port), "--model", gguf,
            *THREADS, "--seed", "42", "--temp", "0", *extra]


def cmd(*args: str) -> str:
    return " ".join(json.dumps(a) for a in args)


def body(model: str, tokens: int, stream: bool) -> bytes:
    return json.dumps({"model": model, "messages": PROMPT, "stream": stream,
                       "max_tokens": tokens, "temperature": 0, "ignore_eos": True}).encode()


def countTokens(data: bytes) -> int:
    count = 0
    for event in data.split(b"\n\n"):
        if event.startswith(b"data: {"):
            choices = json.loads(event[6:]).get("choices") or [{}]
            if choices[0].get("delta", {}).get("content"):
                count += 1
    return count


async def streams(client, url: str, n: int, tokens: int) -> tuple[int, float, list[float]]:
    """
    @return: tokens received, wall seconds, and each stream's time to its
        first byte, for C{n} concurrent streams of C{tokens} tokens.
    """
    start = time.perf_counter()
    results = await gatherResults([
        Deferred.fromCoroutine(fetch(client, url, body("bench", tokens, True)))
        for _ in range(n)])
    elapsed = time.perf_counter() - start
    return sum(countTokens(data) for _, data, _ in results), elapsed, [t for *_, t in results]


async def throughput(reactor, args, binary: str, gguf: str) -> None:
    upstream = freePort()
    slots = ("--parallel", str(args.streams), "--ctx-size", str(512 * args.streams))
    daemon = Daemon(reactor, (
        "models:\n"
        "  bench:\n"
        "    cmd: |\n"
        f"      {cmd(*argv(binary, gguf, upstream, *slots))}\n"
        f"    proxy: http://127.0.0.1:{upstream}\n"))
    await daemon.start()
    try:
        # A connection per request, on both paths: llama-server closes
        # idle keep-alive connections after 5 s, and a POST is not retried.
        client, pool = agent(reactor, persistent=False)
        proxied = daemon.base + "/v1/chat/completions"
        direct = f"http://127.0.0.1:{upstream}/v1/chat/completions"
        await fetch(client, proxied, body("bench", 4, False))  # loads it
        await streams(client, direct, args.streams, 16)  # warm up both paths
        await streams(client, proxied, args.streams, 16)
        totals = {"direct": [0, 0.0, []], "llamaswap": [0, 0.0, []]}
        order = [("direct", direct), ("llamaswap", proxied)]
        ratios = []
        for i in range(args.rounds):
            # Alternate which path goes first, so that neither always
            # follows the other.
            rate = {}
            for name, url in (order if i % 2 == 0 else order[::-1]):
                count, elapsed, firsts = await streams(client, url, args.streams, args.tokens)
                totals[name][0] += count
                totals[name][1] += elapsed
                totals[name][2] += firsts
                rate[name] = count / elapsed
            ratios.append(rate["llamaswap"] / rate["direct"])
        await pool.closeCachedConnections()
    finally:
        await daemon.stop()
    expected = args.rounds * args.streams * args.tokens
    print(f"{args.streams} concurrent streams of {args.tokens} tokens, {args.rounds} rounds"
          f" (llama-server, SmolLM2-135M Q4_1, --threads {THREADS[1]}, {args.streams} slots)")
    rates = {}
    for name, (count, elapsed, firsts) in totals.items():
        rates[name] = count / elapsed
        print(f"  {name:10} {rates[name]:8.1f} tokens/s   first byte p50"
              f" {percentile(firsts, 50) * 1e3:7.1f} ms   lost {expected - count}")
    ratio = rates["llamaswap"] / rates["direct"]
    print(f"  ratio      {ratio:8.3f}x tokens/s   per round: p50 {percentile(ratios, 50):.3f}x"
          f" min {min(ratios):.3f}x max {max(ratios):.3f}x   (target >= 0.98)")


async def direct(reactor, binary: str, gguf: str, extra: tuple[str, ...],
                 runs: int) -> dict[str, list[float]]:
    """
    @return: llama-server's own spawn-to-ready, first one-token request and
        SIGTERM-to-exit times, measured by hand C{runs} times.
    """
    times: dict[str, list[float]] = {"ready": [], "first": [], "stop": []}
    for _ in range(runs):
        port = freePort()
        server = DirectServer(reactor, argv(binary, gguf, port, *extra), port)
        times["ready"].append(await server.start())
        probe, _ = agent(reactor, persistent=False)
        first = time.perf_counter()
        await fetch(probe, f"http://127.0.0.1:{port}/v1/chat/completions", body("m", 1, False))
        times["first"].append(time.perf_counter() - first)
        times["stop"].append(await server.stop())
    return times


async def swaps(reactor, args, binary: str, models: dict[str, tuple]) -> None:
    names = list(models)
    config = "healthCheckTimeout: 60\nunloadTimeout: 10\nmodels:\n"
    for name, (gguf, extra, _) in models.items():
        port = freePort()  # not ${PORT}: startPort's run may be taken here
        config += (f"  {name}:\n"
                   "    cmd: |\n"
                   f"      {cmd(*argv(binary, gguf, port, *extra))}\n"
                   f"    proxy: http://127.0.0.1:{port}\n")
    daemon = Daemon(reactor, config)
    await daemon.start()
    timed: dict[str, list[float]] = {name: [] for name in names}
    try:
        client, pool = agent(reactor)
        for i in range(args.swaps + 1):
            name = names[i % 2]
            start = time.perf_counter()
            await fetch(client, daemon.base + "/v1/chat/completions", body(name, 1, False))
            if i:  # the first is a start, not a swap
                timed[name].append(time.perf_counter() - start)
        await pool.closeCachedConnections()
    finally:
        await daemon.stop()
    own = {name: await direct(reactor, binary, gguf, extra, max(3, args.swaps // 2))
           for name, (gguf, extra, _) in models.items()}
    print(f"swap between two llama-servers, {args.swaps} swaps"
          " (stop the loaded one, start the other, one-token chat)")
    for name, other in ((names[0], names[1]), (names[1], names[0])):
        p = {k: percentile(v, 50) for k, v in own[name].items()}
        stop = percentile(own[other]["stop"], 50)
        swap = percentile(timed[name], 50)
        print(f"  to {name} ({models[name][2]}), {len(timed[name])} swaps")
        print(f"    llama-server's own spawn-to-ready          p50 {p['ready'] * 1e3:7.1f} ms")
        print(f"    llama-server's own first request           p50 {p['first'] * 1e3:7.1f} ms")
        print(f"    llama-server's own SIGTERM-to-exit         p50 {stop * 1e3:7.1f} ms"
              f" ({other})")
        print(f"    request to answer                          p50 {swap * 1e3:7.1f} ms")
        print(f"    overhead beyond spawn-to-ready             p50"
              f" {(swap - p['ready'] - p['first']) * 1e3:7.1f} ms (and first request)")
        print(f"    overhead beyond llama-server's own         p50"
              f" {(swap - p['ready'] - p['first'] - stop) * 1e3:7.1f} ms (start, request, stop)")


async def main(reactor, args) -> None:
    THREADS[1] = str(args.threads)
    binary = args.llama_server or findLlamaServer()
    smollm2 = args.smollm2 or findGGUF("SMOLLM2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    gemma3 = args.gemma3 or findGGUF("GEMMA3", "gemma-3-270m-q4_k_m.gguf")
    if not binary or not smollm2:
        raise SystemExit("needs llama-server and the SmolLM2 GGUF: run scripts/build-llama-server"
                         " and scripts/fetch-models (or set LLAMASWAP_LLAMA_SERVER and"
                         " LLAMASWAP_SMOLLM2_GGUF)")
    if not args.swaps_only:
        await throughput(reactor, args, binary, smollm2)
    second = ((gemma3, ("--ctx-size", "1024"), "Gemma 3 270M Q4_K_M") if gemma3 else
              (smollm2, ("--ctx-size", "512"), "SmolLM2-135M Q4_1, another context size"))
    await swaps(reactor, args, binary, {
        "smollm2": (smollm2, ("--ctx-size", "1024"), "SmolLM2-135M Q4_1"),
        "second": second,
    })


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--swaps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1,
                        help="llama-server's --threads (default 1, see above)")
    parser.add_argument("--swaps-only", action="store_true", help="skip the throughput part")
    parser.add_argument("--llama-server")
    parser.add_argument("--smollm2")
    parser.add_argument("--gemma3")
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, parser.parse_args())))
