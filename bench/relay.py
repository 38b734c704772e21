"""
Relay benchmark: a fast upstream measured directly and through llamaswap
(and through any other proxy given with C{--against}), in one run, printed
as ratios to the direct connection.

    python bench/relay.py [--repeat 3] [--sequential 500] [--parallel 4000]
                          [--streams 64] [--chunks 500]
                          [--against 'llama-swap --config {config} --listen 127.0.0.1:{port}']
                          [--only llamaswap|other] [--profile FILE]

llamaswap runs as users run it (C{twistd -n llamaswap} in a child process)
and starts the upstream itself: the cheap asyncio server of
C{bench/support.py} (prebuilt answers; the upstream must not be what is
measured).  The client is a lean asyncio load generator in this process.
An C{--against} command is run with C{{config}} (the same config file) and
C{{port}} filled in.  Scenarios, each run against DIRECT and then every
proxy, C{--repeat} times, medians printed:

 - C{--sequential} small chats one at a time on one keep-alive
   connection: p50 latency (the proxy's added p50) and the proxy's CPU per
   request;
 - 16 keep-alive connections firing C{--parallel} small chats in all:
   requests/s and the proxy's CPU per request;
 - C{--streams} concurrent streamed chats of C{--chunks} SSE events each:
   the proxy's CPU per chunk, time to first chunk p50, chunks/s;
 - the proxy's peak RSS at the end.

CPU is read from C{/proc/<pid>/stat} of the proxy process before and after
each scenario.  C{--profile FILE} runs C{py-spy record} on llamaswap during
the parallel and stream scenarios of the first round (raw folded stacks).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from support import (
    ROOT,
    connect,
    cpuSeconds,
    freePort,
    peakRSS,
    percentile,
    rawPost,
)

CHAT = b'{"model": "bench", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}'


def streamBody(chunks: int) -> bytes:
    return json.dumps({"model": "bench", "messages": [{"role": "user", "content": "hi"}],
                       "stream": True, "max_tokens": chunks}).encode()


async def sequential(port: int, n: int) -> list[float]:
    conn = await connect(port)
    raw = rawPost("/v1/chat/completions", CHAT, port)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        status, _, _, _ = await conn.request(raw)
        times.append(time.perf_counter() - start)
        if status != 200:
            raise RuntimeError(f"HTTP {status}")
    conn.transport.close()
    return times


async def parallel(port: int, connections: int, total: int) -> float:
    """
    @return: seconds for C{total} requests over C{connections} connections.
    """
    conns = [await connect(port) for _ in range(connections)]
    raw = rawPost("/v1/chat/completions", CHAT, port)
    left = [total]

    async def loop(conn) -> None:
        while left[0] > 0:
            left[0] -= 1
            status, _, _, _ = await conn.request(raw)
            if status != 200:
                raise RuntimeError(f"HTTP {status}")

    start = time.perf_counter()
    await asyncio.gather(*(loop(c) for c in conns))
    elapsed = time.perf_counter() - start
    for c in conns:
        c.transport.close()
    return elapsed


async def streams(port: int, n: int, chunks: int) -> tuple[float, list[float], int]:
    """
    @return: C{(seconds, time to first chunk of each, events received)}.
    """
    conns = [await connect(port) for _ in range(n)]
    raw = rawPost("/v1/chat/completions", streamBody(chunks), port)
    start = time.perf_counter()
    results = await asyncio.gather(*(c.request(raw, keep=False) for c in conns))
    elapsed = time.perf_counter() - start
    for c in conns:
        c.transport.close()
    for status, _, _, _ in results:
        if status != 200:
            raise RuntimeError(f"HTTP {status}")
    return elapsed, [r[2] for r in results], sum(r[3] for r in results)


class Proxy:
    """
    A proxy in a child process, started with C{argv}, serving on C{port}.
    """

    def __init__(self, name: str, argv: list[str], port: int, own: bool = True) -> None:
        """
        @param own: whether C{argv} runs this checkout's llamaswap.  Any
            other proxy runs in an empty directory, with the environment
            as it is: a C{python -c} command puts its working directory
            first on C{sys.path}, so one run from this checkout would
            import this checkout's llamaswap, whatever its C{PYTHONPATH}.
        """
        self.name = name
        self.argv = argv
        self.port = port
        self.own = own
        self.process: subprocess.Popen | None = None
        self.scratch: str | None = None
        self.log = tempfile.TemporaryFile()

    async def start(self) -> None:
        if self.own:
            env = dict(os.environ,
                       PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
            cwd = ROOT
        else:
            env, cwd = dict(os.environ), tempfile.mkdtemp(prefix="llamaswap-bench-")
            self.scratch = cwd
        self.process = subprocess.Popen(self.argv, env=env, cwd=cwd, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        for _ in range(600):
            try:
                conn = await connect(self.port)
                status, _, _, _ = await asyncio.wait_for(
                    conn.request(rawPost("/v1/chat/completions", CHAT, self.port)), 60)
                conn.transport.close()
                if status == 200:
                    return
            except (TimeoutError, OSError):
                pass
            if self.process.poll() is not None:
                break
            await asyncio.sleep(0.1)
        self.log.seek(0)
        raise RuntimeError(f"{self.name} did not come up:\n{self.log.read().decode()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None


async def measure(port: int, pid: int | None, args, profile: str | None = None) -> dict:
    """
    Every scenario against C{port}; C{pid} is the proxy's process (L{None}
    for the direct connection).
    """
    cpu = (lambda: cpuSeconds(pid)) if pid else (lambda: 0.0)
    out: dict = {}
    await sequential(port, 100)  # warm up
    before = cpu()
    times = await sequential(port, args.sequential)
    out["seqP50"] = percentile(times, 50) * 1e3
    out["seqCPU"] = (cpu() - before) / args.sequential * 1e6
    spy = None
    if profile and pid:
        spy = subprocess.Popen(["py-spy", "record", "-r", "200", "-f", "raw", "-o", profile,
                                "-p", str(pid)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        await asyncio.sleep(1.0)
    before = cpu()
    elapsed = await parallel(port, 16, args.parallel)
    out["parRPS"] = args.parallel / elapsed
    out["parCPU"] = (cpu() - before) / args.parallel * 1e6
    before = cpu()
    elapsed, ttfc, events = await streams(port, args.streams, args.chunks)
    out["sseCPU"] = (cpu() - before) / max(events, 1) * 1e6
    out["sseTTFC"] = statistics.median(ttfc) * 1e3
    out["sseRate"] = events / elapsed
    out["sseLost"] = args.streams * (args.chunks + 1) - events  # with [DONE]
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait()
    out["rss"] = peakRSS(pid) / 2**20 if pid else 0.0
    return out


ROWS = [
    ("sequential small chats: p50 (ms)", "seqP50", "added"),
    ("same: proxy CPU per request (µs)", "seqCPU", "abs"),
    ("16 connections, small JSON: req/s", "parRPS", "ratio"),
    ("same: proxy CPU per request (µs)", "parCPU", "abs"),
    ("SSE streams: proxy CPU per chunk (µs)", "sseCPU", "abs"),
    ("same: time to first chunk p50 (ms)", "sseTTFC", "ratio"),
    ("same: chunks/s", "sseRate", "ratio"),
    ("same: chunks lost", "sseLost", "abs"),
    ("peak RSS (MiB)", "rss", "abs"),
]


def table(rounds: list[dict[str, dict]], names: list[str]) -> str:
    med = {name: {key: statistics.median(r[name][key] for r in rounds) for key, _, in
                  [(k, None) for _, k, _ in ROWS]} for name in ["direct", *names]}
    lines = ["| scenario | DIRECT | " + " | ".join(names) + " |",
             "|---|---|" + "---|" * len(names)]
    for label, key, kind in ROWS:
        direct = med["direct"][key]
        cells = []
        for name in names:
            value = med[name][key]
            if kind == "added":
                cells.append(f"+{value - direct:.3f} ({value / direct:.2f}x)")
            elif kind == "ratio":
                cells.append(f"{value:,.1f} ({value / direct:.2f}x)" if direct else f"{value:,.1f}")
            else:
                cells.append(f"{value:,.1f}")
        shown = "—" if kind == "abs" and key != "sseLost" else f"{direct:,.3f}" \
            if kind == "added" else f"{direct:,.1f}"
        lines.append(f"| {label} | {shown} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


async def main(args) -> None:
    upstream = freePort()
    config = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    config.write(

        "models:\n"
        "  bench:\n"
        f"    cmd: {shlex.quote(sys.executable)} {shlex.quote(os.path.join(ROOT, 'bench', 'support.py'))}"
        f" upstream --port {upstream}\n"
        f"    proxy: http://127.0.0.1:{upstream}\n"
        "    concurrencyLimit: 1000\n")
    config.close()
    proxies: list[tuple[str, list[str]]] = []
    if args.only in (None, "llamaswap"):
        proxies.append(("llamaswap", [sys.executable, "-c",
                                      "from twisted.scripts.twistd import run; run()",
                                      "--pidfile=", "-n", "llamaswap", "-c", config.name,
                                      "--listen", "tcp:{port}:interface=127.0.0.1"]))
    if args.against:
        proxies.append(("other", shlex.split(args.against)))
    rounds: list[dict[str, dict]] = []
    try:
        for index in range(args.repeat):
            found: dict[str, dict] = {}
            for name, template in proxies:
                port = freePort()
                argv = [a.replace("{port}", str(port)).replace("{config}", config.name)
                        for a in template]
                proxy = Proxy(name, argv, port, own=name == "llamaswap")
                await proxy.start()
                try:
                    found["direct"] = await measure(upstream, None, args)
                    profile = args.profile if index == 0 and name == "llamaswap" else None
                    found[name] = await measure(port, proxy.process.pid, args, profile)
                finally:
                    proxy.stop()
            rounds.append(found)
            print(f"round {index + 1}: " + json.dumps(
                {k: {m: round(v, 2) for m, v in d.items()} for k, d in found.items()}),
                file=sys.stderr)
    finally:
        os.unlink(config.name)
    print(f"{args.sequential} sequential; 16 connections x {args.parallel} requests;"
          f" {args.streams} streams x {args.chunks} chunks; median of {args.repeat} rounds")
    print(table(rounds, [name for name, _ in proxies]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sequential", type=int, default=500)
    parser.add_argument("--parallel", type=int, default=4000)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--chunks", type=int, default=500)
    parser.add_argument("--against", help="another proxy's command line, with {config} and {port}")
    parser.add_argument("--only", choices=["llamaswap", "other"])
    parser.add_argument("--profile", help="py-spy raw output file (first round)")
    asyncio.run(main(parser.parse_args()))
