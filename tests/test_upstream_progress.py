"""
Tests for L{llamaswap.upstream.progress}: finding the model file, reading
how much of it a process group holds from a fake C{/proc}, and reporting
progress with a fake clock.
"""

from __future__ import annotations

import os

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from llamaswap.upstream.progress import LoadProgress, bytesLoaded, modelFile

SMAPS = """\
55d0c0000000-55d0c0001000 r--p 00000000 08:01 100 /usr/bin/llama-server
Size:                  4 kB
Rss:                   4 kB
7f0000000000-7f0000100000 r--s 00000000 08:01 200 {path}
Size:               1024 kB
Rss:                 300 kB
Pss:                 300 kB
7f0000200000-7f0000300000 r--s 00100000 08:01 200 {path}
Size:               1024 kB
Rss:                 100 kB
7fff00000000-7fff00001000 rw-p 00000000 00:00 0 [stack]
Rss:                   4 kB
"""


class ModelFileTests(SynchronousTestCase):
    def test_optionSpellings(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"gguf")
        real = os.path.realpath(path)
        self.assertEqual(modelFile(["llama-server", "-m", path, "--port", "1"]), real)
        self.assertEqual(modelFile(["llama-server", "--model", path]), real)
        self.assertEqual(modelFile(["llama-server", f"--model={path}"]), real)

    def test_missingFileIsNone(self) -> None:
        self.assertIsNone(modelFile(["llama-server", "-m", "/nonexistent.gguf"]))
        self.assertIsNone(modelFile(["vllm", "serve"]))


class BytesLoadedTests(SynchronousTestCase):
    def proc(self, pids: dict) -> str:
        root = self.mktemp()
        os.mkdir(root)
        for pid, (pgid, smaps, rchar) in pids.items():
            os.mkdir(os.path.join(root, str(pid)))
            with open(os.path.join(root, str(pid), "stat"), "w") as f:
                f.write(f"{pid} (llama server) S 1 {pgid} {pgid} 0 -1\n")
            with open(os.path.join(root, str(pid), "smaps"), "w") as f:
                f.write(smaps)
            with open(os.path.join(root, str(pid), "io"), "w") as f:
                f.write(f"rchar: {rchar}\nwchar: 0\nread_bytes: 0\n")
        return root

    def test_mappedRssOfTheFileInTheGroup(self) -> None:
        path = "/models/qwen.gguf"
        root = self.proc({
            10: (10, SMAPS.format(path=path), 4096),
            11: (10, "", 0),
            12: (99, SMAPS.format(path=path), 0),  # another group
        })
        self.assertEqual(bytesLoaded(10, path, root), 400 * 1024)

    def test_readBytesForReadLoaders(self) -> None:
        root = self.proc({10: (10, "", 5_000_000), 11: (10, "", 1_000_000)})
        self.assertEqual(bytesLoaded(10, "/models/x.bin", root), 6_000_000)


class LoadProgressTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(100)
        self.reports: list = []
        self.loaded = {"value": 0}
        self.path = self.mktemp()
        with open(self.path, "wb") as f:
            f.write(b"x" * 1000)
        self.progress = LoadProgress(
            self.clock, lambda m, p: self.reports.append((m, p)),
            deferToThread=lambda f, *a: succeed(f(*a)),
            sample=lambda pgid, path: self.loaded["value"])

    def test_fractionOfTheModelFile(self) -> None:
        self.progress.began("qwen", 42, ["llama-server", "-m", self.path])
        self.assertEqual(self.reports[-1][1]["fraction"], 0.0)
        self.loaded["value"] = 430
        self.clock.advance(0.5)
        self.assertEqual(self.reports[-1], ("qwen", {
            "fraction": 0.43, "bytesLoaded": 430, "bytesTotal": 1000,
            "elapsed": 0.5, "expected": None}))
        self.progress.ended("qwen", ready=True)
        self.assertEqual(self.reports[-1], ("qwen", None))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_loadFileNamesTheFile(self) -> None:
        """
        A model's loadFile is watched instead of what -m names, for
        backends whose command does not name the weights.
        """
        watched: list = []
        self.progress._sample = lambda pgid, path: watched.append(path) or 250  # type: ignore
        self.progress.began("vllm", 42, ["vllm", "serve", "org/model"], loadFile=self.path)
        self.clock.advance(0.5)
        self.assertEqual(watched, [os.path.realpath(self.path)])
        self.assertEqual(self.reports[-1][1]["fraction"], 0.25)
        self.assertEqual(self.reports[-1][1]["bytesTotal"], 1000)
        self.progress.stop()

    def test_missingLoadFileShowsElapsedOnly(self) -> None:
        """
        A loadFile that is not a file wins over -m: no bytes, elapsed only.
        """
        self.progress.began("vllm", 42, ["vllm", "-m", self.path], loadFile="/nonexistent.bin")
        self.assertEqual(self.reports[-1][1]["bytesTotal"], 0)
        self.assertIsNone(self.reports[-1][1]["fraction"])
        self.progress.stop()

    def test_withoutAFileElapsedAgainstTheLastLoad(self) -> None:
        self.progress.began("svc", 42, ["server"])
        self.assertIsNone(self.reports[-1][1]["fraction"])
        self.clock.advance(4)
        self.progress.ended("svc", ready=True)
        self.progress.began("svc", 43, ["server"])
        self.clock.advance(1)
        self.assertEqual(self.reports[-1][1]["fraction"], 0.25)
        self.assertEqual(self.reports[-1][1]["expected"], 4)
        self.progress.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
