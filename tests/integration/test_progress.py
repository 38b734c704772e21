"""
Real load progress: an upstream that reads its model file slowly (with
read()) is seen loading, in /running and in the observatory's modelStatus
records, with a fraction that grows; llama-server (mmap) when it is built.
"""

from __future__ import annotations

import json
import os
import sys

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.integration.support import PROJECT_ROOT, InProcessDaemon, asyncTest, eventually

READER = (
    "import sys, time\n"
    "with open(sys.argv[sys.argv.index('-m') + 1], 'rb') as f:\n"
    "    while f.read(65536):\n"
    "        time.sleep(0.05)\n"
)


class ProgressTests(TestCase):
    timeout = 60

    @asyncTest
    async def test_slowReaderShowsGrowingProgress(self) -> None:
        model = os.path.abspath(self.mktemp())
        with open(model, "wb") as f:
            f.write(os.urandom(64 * 1024 * 40))  # 40 reads: about 2 s
        reader = os.path.abspath(self.mktemp())
        with open(reader, "w") as f:
            f.write(READER)
        python = json.dumps(sys.executable)
        env = json.dumps(f"PYTHONPATH={PROJECT_ROOT}")
        config = (
            "models:\n  slow:\n"
            f"    env: [{env}]\n"
            "    cmd: |\n"
            f"      sh -c '{python} {reader} -m {model} && exec {python} -m llamaswap.demo"
            " --port ${PORT} --model slow' -m " + model + "\n"
        )
        daemon = InProcessDaemon(self, config)
        answered = Deferred.fromCoroutine(daemon.chat("slow"))
        seen: list[float] = []

        async def loading() -> bool:
            running = await daemon.getJSON("/running")
            for record in running["running"]:
                progress = record.get("progress")
                if progress and progress["fraction"] is not None:
                    seen.append(progress["fraction"])
                    status = {r["id"]: r for r in daemon.root.observatory.modelStatus()}
                    self.assertEqual(status["slow"]["state"], "starting")
                    self.assertIsNotNone(status["slow"]["progress"])
            return len([f for f in seen if 0 < f < 1]) >= 2 and seen[-1] > seen[0]

        await eventually(loading, timeout=30, step=0.2)
        self.assertEqual(seen, sorted(seen))
        response, _ = await answered
        self.assertEqual(response.code, 200)
        [record] = (await daemon.getJSON("/running"))["running"]
        self.assertEqual((record["state"], record["progress"]), ("ready", None))
        status = {r["id"]: r for r in daemon.root.observatory.modelStatus()}
        self.assertEqual((status["slow"]["state"], status["slow"]["progress"]), ("ready", None))
        self.assertEqual(status["slow"]["port"], daemon.config.models["slow"].port)

    @asyncTest
    async def test_loadFileNamesTheWeightsOfOtherBackends(self) -> None:
        """
        A backend whose command names its weights otherwise than with -m
        shows byte progress through the model's loadFile.
        """
        model = os.path.abspath(self.mktemp())
        with open(model, "wb") as f:
            f.write(os.urandom(64 * 1024 * 40))
        reader = os.path.abspath(self.mktemp())
        with open(reader, "w") as f:
            f.write(READER.replace("sys.argv.index('-m') + 1", "1"))
        python = json.dumps(sys.executable)
        env = json.dumps(f"PYTHONPATH={PROJECT_ROOT}")
        config = (
            "models:\n  other:\n"
            f"    env: [{env}]\n"
            f"    loadFile: {model}\n"
            "    cmd: |\n"
            f"      sh -c '{python} {reader} {model} && exec {python} -m llamaswap.demo"
            " --port ${PORT} --model other'\n"
        )
        daemon = InProcessDaemon(self, config)
        answered = Deferred.fromCoroutine(daemon.chat("other"))
        seen: list[int] = []

        async def loading() -> bool:
            for record in (await daemon.getJSON("/running"))["running"]:
                progress = record.get("progress")
                if progress and progress["bytesLoaded"]:
                    self.assertEqual(progress["bytesTotal"], 64 * 1024 * 40)
                    seen.append(progress["bytesLoaded"])
            return len(seen) >= 2 and seen[-1] > seen[0]

        await eventually(loading, timeout=30, step=0.2)
        response, _ = await answered
        self.assertEqual(response.code, 200)
