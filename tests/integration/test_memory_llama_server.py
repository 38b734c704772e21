"""
The memory estimate against what llama-server itself reports when it loads
the project's real GGUF files (on the CPU: its "model buffer size", "KV
buffer size" and "compute buffer size" lines).  Skipped, saying why, without
the binary or the files (see tests.integration.test_llama_server).
"""

from __future__ import annotations

import re

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from llamaswap.memory.estimate import estimateCommand
from tests.integration.support import asyncTest, freePort
from tests.integration.support import GEMMA3, LLAMA_SERVER, SMOLLM2

MiB = 1024 ** 2
BUFFER = re.compile(r"(model|KV|compute) buffer size\s*=\s*([0-9.]+) MiB")


class _Loading(ProcessProtocol):
    """
    Collects llama-server's output until its compute buffer is reported.
    """

    def __init__(self) -> None:
        self.text = ""
        self.loaded: Deferred[str] = Deferred()
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.text += data.decode("utf-8", "replace")
        if "compute buffer size" in self.text and not self.loaded.called:
            self.loaded.callback(self.text)

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        if not self.loaded.called:
            self.loaded.errback(RuntimeError(f"llama-server exited: {self.text[-2000:]}"))
        self.ended.callback(None)


class EstimateAgainstLlamaServerTests(TestCase):
    timeout = 120

    def reported(self, gguf: str, ctx: int) -> Deferred[dict]:
        if LLAMA_SERVER is None or gguf is None:
            self.skipTest("needs a llama-server binary and the GGUF files: run "
                          "scripts/build-llama-server and scripts/fetch-models")
        protocol = _Loading()
        argv = [LLAMA_SERVER, "--host", "127.0.0.1", "--port", str(freePort()), "-m", gguf,
                "-c", str(ctx), "--threads", "2", "-ngl", "0"]
        transport = reactor.spawnProcess(protocol, LLAMA_SERVER, argv, env=None)

        def stop():
            if protocol.ended.called:
                return None
            transport.signalProcess("KILL")
            return protocol.ended

        self.addCleanup(stop)

        def parse(text: str) -> dict:
            sizes: dict = {"model": 0.0, "KV": 0.0, "compute": 0.0}
            for kind, mib in BUFFER.findall(text):
                if kind == "model":  # the mapped file; others are repacked copies
                    sizes[kind] = max(sizes[kind], float(mib))
                else:  # the full and the sliding-window caches add up
                    sizes[kind] += float(mib)
            return sizes

        return protocol.loaded.addCallback(parse)

    async def compare(self, gguf: str, ctx: int) -> None:
        sizes = await self.reported(gguf, ctx)
        estimate, _ = estimateCommand(["llama-server", "-m", gguf, "-c", str(ctx)], 0)
        # Weights: the mapped model buffer, to llama-server's two decimals.
        self.assertLess(abs(estimate.weights / MiB - sizes["model"]), 0.01, sizes)
        # The KV cache, both windowed and full layers: exactly.
        self.assertLess(abs(estimate.kvCache / MiB - sizes["KV"]), 0.01, sizes)
        # The compute buffer: an estimate that errs high, within 25%.
        self.assertGreaterEqual(estimate.compute / MiB, sizes["compute"], sizes)
        self.assertLessEqual(estimate.compute / MiB, sizes["compute"] * 1.25, sizes)

    @asyncTest
    async def test_smollm2(self) -> None:
        await self.compare(SMOLLM2, 2048)

    @asyncTest
    async def test_gemma3(self) -> None:
        await self.compare(GEMMA3, 4096)
