"""
The GGUF header reader and the memory estimate: on headers built here, and
on the project's real SmolLM2 and Gemma 3 files (skipped, saying why, when
scripts/fetch-models has not fetched them).
"""

from __future__ import annotations

import os
import struct

from twisted.trial.unittest import SynchronousTestCase

from llamaswap.memory.estimate import (
    EstimateError,
    LaunchFlags,
    estimateCommand,
    estimateFromHeader,
    formatBytes,
    parseFlags,
)
from llamaswap.memory.gguf import GgufError, readHeader
from tests.fakes import LLAMA, TENSORS, buildGguf
from tests.integration.support import GEMMA3, SMOLLM2

MiB = 1024 ** 2


class ReaderTests(SynchronousTestCase):
    """
    L{readHeader} on headers built by the test.
    """

    def write(self, data: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_metadataAndTensors(self) -> None:
        header = readHeader(self.write(buildGguf(LLAMA, TENSORS)))
        self.assertEqual(header.version, 3)
        self.assertEqual(header.architecture, "llama")
        self.assertEqual(header.arch("block_count"), 2)
        self.assertIs(header.metadata["general.flag"], True)
        self.assertAlmostEqual(header.metadata["llama.rope.freq_base"], 10000.0)
        # The long token list is skipped, its length kept.
        self.assertEqual(header.metadata["tokenizer.ggml.tokens"], 2000)
        self.assertEqual(header.arrayLengths["tokenizer.ggml.tokens"], 2000)
        self.assertEqual([t.name for t in header.tensors], [t[0] for t in TENSORS])
        self.assertEqual(header.tensors[0].dims, (64, 1000))
        # Q8_0: 34 bytes per 32; Q4_K: 144 per 256; F32: 4 each.
        self.assertEqual(header.weightsBytes, 64000 // 32 * 34 + 4096 // 256 * 144 + 64 * 4)
        self.assertEqual(header.dataOffset % 32, 0)

    def test_shortArraysRead(self) -> None:
        header = readHeader(self.write(buildGguf({"a.list": ["x", "y"]}, [])))
        self.assertEqual(header.metadata["a.list"], ["x", "y"])

    def test_version2(self) -> None:
        self.assertEqual(readHeader(self.write(buildGguf(LLAMA, TENSORS, version=2))).version, 2)

    def test_notGguf(self) -> None:
        e = self.assertRaises(GgufError, readHeader, self.write(b"PK\x03\x04rest"))
        self.assertIn("not a GGUF file", str(e))

    def test_truncated(self) -> None:
        data = buildGguf(LLAMA, TENSORS)
        for cut in (6, 30, len(data) - 3):
            e = self.assertRaises(GgufError, readHeader, self.write(data[:cut]))
            self.assertIn("truncated", str(e))

    def test_bigEndian(self) -> None:
        data = b"GGUF" + struct.pack(">I", 3) + b"\0" * 16
        e = self.assertRaises(GgufError, readHeader, self.write(data))
        self.assertIn("big-endian", str(e))

    def test_unknownTensorType(self) -> None:
        header = readHeader(self.write(buildGguf(LLAMA, [("x", (32,), 200)])))
        self.assertRaises(GgufError, lambda: header.weightsBytes)


class FlagsTests(SynchronousTestCase):
    def test_flags(self) -> None:
        flags = parseFlags(["llama-server", "--model", "/m.gguf", "-c", "8192", "-ngl=20",
                            "-ctk", "q8_0", "--cache-type-v", "Q4_0", "-nkvo", "-ub", "256",
                            "--mmproj", "/p.gguf"])
        self.assertEqual(flags, LaunchFlags(model="/m.gguf", ctx=8192, ngl=20, cacheK="q8_0",
                                            cacheV="q4_0", ubatch=256, mmproj="/p.gguf",
                                            noKvOffload=True))

    def test_defaults(self) -> None:
        self.assertEqual(parseFlags(["x", "-m", "a", "-c", "0", "-ngl", "all"]),
                         LaunchFlags(model="a"))

    def test_badNumber(self) -> None:
        e = self.assertRaises(EstimateError, parseFlags, ["x", "-c", "lots"])
        self.assertIn("-c 'lots'", str(e))


class EstimateTests(SynchronousTestCase):
    """
    L{estimateFromHeader} on a built header.
    """

    def header(self, metadata=LLAMA):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(buildGguf(metadata, TENSORS))
        return readHeader(path)

    def test_parts(self) -> None:
        header = self.header()
        e = estimateFromHeader(header, LaunchFlags(ctx=1024), overhead=100)
        self.assertEqual(e.weights, header.weightsBytes)
        # ctx x layers x kv heads x (16 + 16 per head) x 2 bytes (f16).
        self.assertEqual(e.kvCache, 1024 * 2 * 2 * (16 + 16) * 2)
        self.assertEqual(e.compute, 512 * 4 * (1000 + 128 + 4 * 64))
        self.assertEqual(e.total, e.weights + e.kvCache + e.compute + 100)
        self.assertEqual((e.context, e.trainedContext), (1024, 4096))

    def test_trainedContextByDefault(self) -> None:
        e = estimateFromHeader(self.header(), LaunchFlags(), overhead=0)
        self.assertEqual(e.context, 4096)
        self.assertEqual(e.kvCache, 4096 * 2 * 2 * 32 * 2)

    def test_quantisedCacheAndPartialOffload(self) -> None:
        header = self.header()
        e = estimateFromHeader(header, LaunchFlags(ctx=1024, ngl=1, cacheK="q8_0"), overhead=0)
        self.assertEqual(e.kvCache, int(1024 * 1 * 2 * (16 * 34 / 32 + 16 * 2)))
        self.assertEqual(e.weights, header.weightsBytes * 1 // 3)
        cpu = estimateFromHeader(header, LaunchFlags(ngl=0), overhead=100)
        self.assertEqual((cpu.kvCache, cpu.compute, cpu.overhead, cpu.weights), (0, 0, 0, 0))

    def test_missingMetadata(self) -> None:
        metadata = dict(LLAMA)
        del metadata["llama.block_count"]
        e = self.assertRaises(EstimateError, estimateFromHeader, self.header(metadata),
                              LaunchFlags(), 0)
        self.assertIn("llama.block_count", str(e))

    def test_commandWithoutModel(self) -> None:
        e = self.assertRaises(EstimateError, estimateCommand, ["vllm", "serve", "x"], 0)
        self.assertIn("names no model file", str(e))

    def test_missingFile(self) -> None:
        e = self.assertRaises(EstimateError, estimateCommand, ["x", "-m", self.mktemp()], 0)
        self.assertIn("cannot read", str(e))

    def test_formatBytes(self) -> None:
        self.assertEqual([formatBytes(n) for n in (12, 1536, 5 * MiB, 3 * 1024 ** 4)],
                         ["12B", "1.5KiB", "5.0MiB", "3072.0GiB"])


class RealFileTests(SynchronousTestCase):
    """
    The project's real GGUF files.  The figures were compared with what
    llama-server itself reports loading them (its "model buffer size" and
    "KV buffer size" lines; tests.integration.test_memory_llama_server
    repeats that comparison with the binary when it is there).
    """

    def gguf(self, path, name):
        if path is None:
            self.skipTest(f"the {name} GGUF is absent: run scripts/fetch-models, or set "
                          f"LLAMASWAP_{name}_GGUF")
        return path

    def test_smollm2(self) -> None:
        path = self.gguf(SMOLLM2, "SMOLLM2")
        header = readHeader(path)
        self.assertEqual(header.architecture, "llama")
        self.assertEqual((header.arch("block_count"), header.arch("attention.head_count"),
                          header.arch("attention.head_count_kv"), header.arch("context_length")),
                         (30, 9, 3, 8192))
        # The tensors fill the file exactly after the header.
        self.assertEqual(header.weightsBytes, os.path.getsize(path) - header.dataOffset)
        last = max(header.tensors, key=lambda t: t.offset)
        self.assertEqual(last.offset + last.nbytes, header.weightsBytes)
        e, used = estimateCommand(["llama-server", "-m", path, "-c", "2048"], overhead=0)
        self.assertEqual(used, path)
        self.assertEqual(formatBytes(e.weights), "92.1MiB")   # llama-server: 92.10 MiB
        self.assertEqual(e.kvCache, 45 * MiB)                 # llama-server: 45.00 MiB
        trained, _ = estimateCommand(["llama-server", "-m", path], overhead=0)
        self.assertEqual(trained.kvCache, 45 * MiB * 4)       # 8192 cells

    def test_gemma3(self) -> None:
        path = self.gguf(GEMMA3, "GEMMA3")
        header = readHeader(path)
        self.assertEqual(header.architecture, "gemma3")
        self.assertEqual((header.arch("block_count"), header.arch("attention.head_count_kv"),
                          header.arch("attention.key_length"), header.arch("context_length")),
                         (18, 1, 256, 32768))
        self.assertEqual(header.weightsBytes, os.path.getsize(path) - header.dataOffset)
        self.assertEqual(header.arrayLengths["tokenizer.ggml.tokens"], 262144)
        e, _ = estimateCommand(["llama-server", "--model", path, "--ctx-size", "4096"], 0)
        self.assertEqual(formatBytes(e.weights), "235.2MiB")  # llama-server: 235.16 MiB
        # llama-server: 12.00 MiB (3 full layers) + 15.00 MiB (15 windowed).
        self.assertEqual(e.kvCache, 27 * MiB)
