# -*- test-case-name: tests.test_memory_gguf -*-
"""
Estimate the GPU memory a llama-server command will need, before its first
load, from the GGUF file it names.

The estimate adds up:

    - B{weights}: the bytes of the file's tensors, from their ggml types
      and dimensions (exact), scaled by the share of layers offloaded when
      C{-ngl}/C{--n-gpu-layers} offloads fewer than all of them; plus the
      size of a C{--mmproj} projector file;
    - B{KV cache}: context x layers x key-value heads x (key length + value
      length) x the bytes of the cache type (C{-ctk}/C{-ctv}, f16 by
      default), where the context is C{-c}/C{--ctx-size} from the command,
      else (absent or 0) the model's trained C{context_length}; none when
      C{-nkvo}/C{--no-kv-offload} keeps the cache in host memory;
    - B{compute}: llama.cpp's compute buffer, approximated as a micro-batch
      (C{-ub}, 512 by default) of float32 logits and activations:
      C{ubatch x 4 x (vocabulary + feed-forward length + 4 x embedding)};
    - B{overhead}: a fixed allowance for the runtime (CUDA context and the
      like), from the configuration.

Sliding-window layers (Gemma 2 and 3, whose metadata name an
C{attention.sliding_window}) keep only C{window + ubatch} cells, as
llama.cpp's SWA cache does: one layer in L{SWA_PATTERNS} is global, the
others are windowed.  The figure is an estimate that errs high rather than
low (the compute buffer especially).  What a model really used is learned after
its first load (L{llamaswap.memory.manager}), and the learned figure wins
over this one from then on.

L{estimateFromHeader} is pure; L{estimateCommand} reads files (blocking:
call it in a thread).
"""

from __future__ import annotations

import os
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

import attr

from llamaswap.memory.gguf import GgufError, GgufHeader, readHeader

__all__ = ["Estimate", "EstimateError", "LaunchFlags", "estimateCommand",
           "estimateFromHeader", "parseFlags"]

#: Bytes per element of the KV cache types llama-server accepts.
CACHE_TYPE_BYTES: Dict[str, float] = {
    "f32": 4.0, "f16": 2.0, "bf16": 2.0,
    "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32,
    "iq4_nl": 18 / 32, "q5_0": 22 / 32, "q5_1": 24 / 32,
}

DEFAULT_UBATCH = 512

#: Architecture -> every how many layers one uses the full context (the
#: others use the sliding window), as llama.cpp sets it.
SWA_PATTERNS: Dict[str, int] = {"gemma2": 2, "gemma3": 6, "cohere2": 4}

_FLAGS: Dict[str, str] = {
    "-m": "model", "--model": "model",
    "-c": "ctx", "--ctx-size": "ctx",
    "-ngl": "ngl", "--n-gpu-layers": "ngl", "--gpu-layers": "ngl",
    "-ctk": "cacheK", "--cache-type-k": "cacheK",
    "-ctv": "cacheV", "--cache-type-v": "cacheV",
    "-ub": "ubatch", "--ubatch-size": "ubatch",
    "-mm": "mmproj", "--mmproj": "mmproj",
}
_SWITCHES = {"-nkvo": "noKvOffload", "--no-kv-offload": "noKvOffload"}


class EstimateError(Exception):
    """
    No estimate can be made: the command names no GGUF file, the file
    cannot be read, or its metadata lacks what the estimate needs.
    """


@attr.s(frozen=True, auto_attribs=True)
class LaunchFlags:
    """
    What of a llama-server command line matters to its memory.

    @ivar ctx: the C{-c} value, or L{None} when absent (0 also means "the
        model's trained context").
    @ivar ngl: the C{-ngl} value, or L{None} (all layers; C{auto} and
        C{all} read as L{None} too).
    """

    model: Optional[str] = None
    ctx: Optional[int] = None
    ngl: Optional[int] = None
    cacheK: str = "f16"
    cacheV: str = "f16"
    ubatch: int = DEFAULT_UBATCH
    mmproj: Optional[str] = None
    noKvOffload: bool = False


def _int(flag: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise EstimateError(f"{flag} {text!r} is not an integer") from None


def parseFlags(argv: Sequence[str]) -> LaunchFlags:
    """
    @param argv: the command's words (a L{ModelConfig}'s C{argv}).
    @return: the L{LaunchFlags} they set; the last occurrence of a flag
        wins, C{--flag=value} is understood.
    @raise EstimateError: for a numeric flag whose value is not a number.
    """
    values: Dict[str, str] = {}
    switches = set()
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        flag, eq, inline = word.partition("=")
        if flag in _SWITCHES:
            switches.add(_SWITCHES[flag])
        elif flag in _FLAGS:
            if eq:
                values[_FLAGS[flag]] = inline
            elif i + 1 < len(words):
                values[_FLAGS[flag]] = words[i + 1]
                i += 1
        i += 1
    ctx = _int("-c", values["ctx"]) if "ctx" in values else None
    ngl: Optional[int] = None
    if "ngl" in values and values["ngl"].lower() not in ("auto", "all"):
        ngl = _int("-ngl", values["ngl"])
    return LaunchFlags(
        model=values.get("model"),
        ctx=ctx if ctx else None,
        ngl=None if ngl is not None and ngl < 0 else ngl,
        cacheK=values.get("cacheK", "f16").lower(),
        cacheV=values.get("cacheV", "f16").lower(),
        ubatch=_int("-ub", values["ubatch"]) if "ubatch" in values else DEFAULT_UBATCH,
        mmproj=values.get("mmproj"),
        noKvOffload="noKvOffload" in switches,
    )


@attr.s(frozen=True, auto_attribs=True)
class Estimate:
    """
    An estimated GPU memory need, in bytes, with its parts.

    @ivar context: the context size the KV cache was sized for.
    @ivar trainedContext: the model's C{context_length}.
    """

    weights: int
    kvCache: int
    compute: int
    overhead: int
    context: int
    trainedContext: int
    layers: int
    kvHeads: int

    @property
    def total(self) -> int:
        return self.weights + self.kvCache + self.compute + self.overhead

    def describe(self) -> str:
        """
        @return: a log line, for example C{weights=92.1MiB kv=90.0MiB
            (ctx 8192, 30 layers, 3 kv heads) compute=... overhead=...}.
        """
        return (
            f"weights={formatBytes(self.weights)} kv={formatBytes(self.kvCache)} "
            f"(ctx {self.context}, {self.layers} layers, {self.kvHeads} kv heads) "
            f"compute={formatBytes(self.compute)} overhead={formatBytes(self.overhead)}"
        )


def formatBytes(count: float) -> str:
    """
    @return: C{count} bytes with a binary unit, for example C{1.5GiB}.
    """
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _positive(header: GgufHeader, key: str, default: Optional[int] = None) -> int:
    value = header.arch(key, default)
    if isinstance(value, list):  # per-layer values (some architectures)
        value = max(value) if value else default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise EstimateError(
            f"the GGUF metadata has no usable {header.architecture}.{key} ({value!r})")
    return value


def estimateFromHeader(header: GgufHeader, flags: LaunchFlags, overhead: int,
                       extraWeights: int = 0) -> Estimate:
    """
    The estimate for one model; pure.

    @param header: the GGUF header of the model's file.
    @param flags: its command's L{LaunchFlags}.
    @param overhead: the runtime allowance, in bytes.
    @param extraWeights: bytes of other files it loads (a projector).
    @return: the L{Estimate}.
    @raise EstimateError: the metadata lacks the layer or head counts.
    """
    layers = _positive(header, "block_count")
    heads = _positive(header, "attention.head_count")
    kvHeads = _positive(header, "attention.head_count_kv", heads)
    embedding = _positive(header, "embedding_length")
    keyLength = _positive(header, "attention.key_length", max(1, embedding // heads))
    valueLength = _positive(header, "attention.value_length", keyLength)
    trained = _positive(header, "context_length")
    context = flags.ctx if flags.ctx else trained
    weights = header.weightsBytes
    if flags.ngl is not None and flags.ngl < layers + 1:
        # llama.cpp offloads the repeating layers first, then the output.
        weights = weights * flags.ngl // (layers + 1)
    kvBytes = 0
    if not flags.noKvOffload and flags.ngl != 0:
        perToken = kvHeads * (keyLength * _cacheBytes(flags.cacheK)
                              + valueLength * _cacheBytes(flags.cacheV))
        offloaded = layers if flags.ngl is None else min(flags.ngl, layers)
        kvBytes = int(_cells(header, layers, offloaded, context, flags.ubatch) * perToken)
    vocabulary = header.arch("vocab_size") or header.arrayLengths.get("tokenizer.ggml.tokens", 0)
    feedForward = header.arch("feed_forward_length", 0)
    if isinstance(feedForward, list):
        feedForward = max(feedForward) if feedForward else 0
    compute = 0 if flags.ngl == 0 else int(
        flags.ubatch * 4 * (int(vocabulary) + int(feedForward) + 4 * embedding))
    return Estimate(
        weights=weights + extraWeights,
        kvCache=kvBytes,
        compute=compute,
        overhead=overhead if flags.ngl != 0 else 0,
        context=context,
        trainedContext=trained,
        layers=layers,
        kvHeads=kvHeads,
    )


def _cells(header: GgufHeader, layers: int, offloaded: int, context: int, ubatch: int) -> int:
    """
    @return: the KV cells of the C{offloaded} layers, all together.
    """
    window = header.arch("attention.sliding_window")
    pattern = SWA_PATTERNS.get(header.architecture)
    if not isinstance(window, int) or window <= 0 or pattern is None:
        return context * offloaded
    full = layers // pattern
    windowed = layers - full
    # The windowed cache is padded to 256 cells, as llama.cpp pads it.
    cells = min(context, -(-(window + ubatch) // 256) * 256)
    share = offloaded / layers
    return int((full * context + windowed * cells) * share)


def _cacheBytes(kind: str) -> float:
    try:
        return CACHE_TYPE_BYTES[kind]
    except KeyError:
        raise EstimateError(f"unknown KV cache type {kind!r}") from None


def estimateCommand(
    argv: Iterable[str],
    overhead: int,
    read: Callable[[str], GgufHeader] = readHeader,
    size: Callable[[str], int] = os.path.getsize,
) -> Tuple[Estimate, str]:
    """
    Estimate the need of the command C{argv} (blocking: reads files).

    @param overhead: the runtime allowance, in bytes.
    @return: the L{Estimate} and the GGUF path it was made from.
    @raise EstimateError: why no estimate can be made.
    """
    flags = parseFlags(tuple(argv))
    if not flags.model:
        raise EstimateError("the command names no model file (-m/--model)")
    try:
        header = read(flags.model)
        extra = size(flags.mmproj) if flags.mmproj else 0
    except (OSError, GgufError) as e:
        raise EstimateError(f"cannot read {flags.model}: {e}") from None
    return estimateFromHeader(header, flags, overhead, extra), flags.model
