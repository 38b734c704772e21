"""
The whole daemon with the memory planner, over real sockets, with the demo
responder as real upstream processes: what fits stays loaded, the least
recently used idle model makes room, a start that runs out of memory is
retried once with one more model evicted, and a reload's budget is the one
that plans.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from llamaswap.config import loadConfigText
from tests.integration.support import PROJECT_ROOT, InProcessDaemon, alive, demoModels

GiB = 1024 ** 3

# Fails the first time, saying what llama.cpp says when CUDA runs out of
# memory; then becomes the demo responder.
FLAKY = """
import os, sys
marker = sys.argv[1]
if not os.path.exists(marker):
    open(marker, "w").close()
    print("ggml_backend_cuda_buffer_type_alloc_buffer: allocating 9000.00 MiB on device 0: "
          "cudaMalloc failed: out of memory", file=sys.stderr, flush=True)
    sys.exit(1)
os.execv(sys.executable, [sys.executable, "-m", "llamaswap.demo", *sys.argv[2:]])
"""


class MemorySwapTests(TestCase):
    timeout = 60

    def memory(self, budget: str, needs: dict) -> str:
        state = os.path.abspath(self.mktemp())
        lines = "".join(f"    {m}: {n}\n" for m, n in needs.items())
        return f"memory:\n  budget: {budget}\n  stateFile: {json.dumps(state)}\n  models:\n{lines}"

    def test_lruIdleModelMakesRoom(self) -> Deferred[None]:
        config = demoModels(["a", "b", "c"], "--tokens 2") + self.memory(
            "8GiB", {"a": "4GiB", "b": "4GiB", "c": "4GiB"})
        daemon = InProcessDaemon(self, config)

        async def run() -> None:
            pidA = await daemon.chatPid("a")
            pidB = await daemon.chatPid("b")
            self.assertTrue(alive(pidA) and alive(pidB), "a and b fit together")
            pidC = await daemon.chatPid("c")
            self.assertFalse(alive(pidA), "a, the least recently used, was not evicted")
            self.assertTrue(alive(pidB) and alive(pidC))
            listing: Any = await daemon.getJSON("/running")
            running = listing["running"]
            self.assertEqual([r["model"] for r in running], ["b", "c"])
            self.assertEqual(running[0]["memory"], {
                "needBytes": 4 * GiB, "source": "declared", "budgetLeftBytes": 0})

        return Deferred.fromCoroutine(run())

    def test_outOfMemoryStartRetried(self) -> Deferred[None]:
        script = os.path.abspath(self.mktemp()) + ".py"
        with open(script, "w") as f:
            f.write(FLAKY)
        marker = os.path.abspath(self.mktemp())
        env = json.dumps(f"PYTHONPATH={PROJECT_ROOT}")
        config = demoModels(["a"], "--tokens 2") + (
            f"  flaky:\n    env: [{env}]\n    cmd: |\n"
            f"      {json.dumps(sys.executable)} {json.dumps(script)} {json.dumps(marker)}"
            f" --port ${{PORT}} --model flaky --tokens 2\n"
        ) + self.memory("100GiB", {"a": "4GiB", "flaky": "1GiB"})
        daemon = InProcessDaemon(self, config)

        async def run() -> None:
            pidA = await daemon.chatPid("a")
            response, body = await daemon.chat("flaky")
            self.assertEqual(response.code, 200, body)
            self.assertTrue(os.path.exists(marker), "the first start did not run")
            self.assertFalse(alive(pidA), "the retry did not evict one more model")

        return Deferred.fromCoroutine(run())

    def test_reloadedBudgetPlans(self) -> None:
        """
        a and b fit in 8GiB and keep running across a reload to a 4GiB
        budget; c then needs both gone.
        """
        needs = {"a": "4GiB", "b": "4GiB", "c": "4GiB"}
        models = demoModels(["a", "b", "c"], "--tokens 2")
        daemon = InProcessDaemon(self, models + self.memory("8GiB", needs))

        async def run() -> None:
            pidA = await daemon.chatPid("a")
            pidB = await daemon.chatPid("b")
            new = loadConfigText(f"startPort: {daemon.config.startPort}\n" + models
                                 + self.memory("4GiB", needs))
            report = await daemon.root.reload(new)
            self.assertEqual(list(report.kept), ["a", "b", "c"])
            self.assertTrue(alive(pidA) and alive(pidB), "the reload stopped a or b")
            await daemon.chatPid("c")
            self.assertFalse(alive(pidA) or alive(pidB), "the old 8GiB budget planned")
            listing: Any = await daemon.getJSON("/running")
            running = listing["running"]
            self.assertEqual([(r["model"], r["memory"]["budgetLeftBytes"]) for r in running],
                             [("c", 0)])

        return Deferred.fromCoroutine(run())
