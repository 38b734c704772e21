# -*- test-case-name: tests.test_memory_gguf -*-
"""
A small reader of GGUF file headers (the format of llama.cpp's weights).

Only the header is read: the magic C{GGUF}, the version (2 or 3; version 1
used 32-bit counts and is read as well), the tensor and key-value counts,
the typed metadata key-values and the tensor infos (name, dimensions, ggml
type, offset).  Tensor data is never read, so a header of a 20 GB file
costs a few megabytes of reading (most of it the tokenizer's vocabulary,
which is skipped without being decoded unless asked for).

Every function here blocks on file I/O: call them in a thread.

Values are decoded little-endian (the format's default; big-endian files
are refused with a clear error).
"""

from __future__ import annotations

import struct
from typing import Any, BinaryIO, Callable, Dict, List, Tuple

import attr

__all__ = [
    "GGMLTypeSize",
    "GgufError",
    "GgufHeader",
    "TensorInfo",
    "readHeader",
    "tensorBytes",
]

MAGIC = b"GGUF"

#: Metadata values larger than this many elements are skipped (left out of
#: L{GgufHeader.metadata} as their length only) unless the caller asks for
#: everything: the tokenizer's token lists are hundreds of thousands long.
DEFAULT_ARRAY_LIMIT = 1024


class GgufError(Exception):
    """
    The file is no GGUF file, or its header is truncated or malformed.
    """


# ggml type id -> (name, elements per block, bytes per block), from ggml.h
# and ggml.c's type traits.
GGMLTypeSize: Dict[int, Tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}


@attr.s(frozen=True, auto_attribs=True)
class TensorInfo:
    """
    One tensor of the file, as its header describes it.

    @ivar dims: the dimensions, innermost first (as stored).
    @ivar ggmlType: the ggml type id (see L{GGMLTypeSize}).
    @ivar offset: where its data begins, relative to the data section.
    """

    name: str
    dims: Tuple[int, ...]
    ggmlType: int
    offset: int

    @property
    def elements(self) -> int:
        count = 1
        for dim in self.dims:
            count *= dim
        return count

    @property
    def nbytes(self) -> int:
        """
        @return: the size of its data in bytes.
        @raise GgufError: for a ggml type this reader does not know.
        """
        return tensorBytes(self.ggmlType, self.elements)


def tensorBytes(ggmlType: int, elements: int) -> int:
    """
    @return: the bytes that C{elements} values of the ggml type
        C{ggmlType} take (whole blocks, as ggml stores them).
    @raise GgufError: for an unknown type.
    """
    try:
        _, block, size = GGMLTypeSize[ggmlType]
    except KeyError:
        raise GgufError(f"unknown ggml tensor type {ggmlType}") from None
    return -(-elements // block) * size


@attr.s(frozen=True, auto_attribs=True)
class GgufHeader:
    """
    The header of a GGUF file.

    @ivar metadata: key -> value: integers, floats, booleans, strings, or
        lists of those; an array longer than the read's C{arrayLimit} is
        represented by its length only, as an L{int} in C{arrayLengths}.
    @ivar arrayLengths: key -> element count, for every array value.
    @ivar tensors: the tensor infos, in file order.
    @ivar dataOffset: where the tensor data begins in the file (aligned).
    """

    version: int
    metadata: Dict[str, Any]
    arrayLengths: Dict[str, int]
    tensors: Tuple[TensorInfo, ...]
    dataOffset: int

    @property
    def weightsBytes(self) -> int:
        """
        @return: the bytes of every tensor together.
        """
        return sum(t.nbytes for t in self.tensors)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch(self, key: str, default: Any = None) -> Any:
        """
        @return: the metadata value C{<architecture>.<key>}, or C{default}.
        """
        return self.metadata.get(f"{self.architecture}.{key}", default)


class _Reader:
    def __init__(self, f: BinaryIO, arrayLimit: int) -> None:
        self._f = f
        self.arrayLimit = arrayLimit
        self.position = 0

    def read(self, count: int) -> bytes:
        data = self._f.read(count)
        if len(data) != count:
            raise GgufError("truncated GGUF header")
        self.position += count
        return data

    def skip(self, count: int) -> None:
        if count < 0:
            raise GgufError("malformed GGUF header (negative length)")
        self._f.seek(count, 1)
        self.position += count

    def unpack(self, fmt: str) -> Any:
        return struct.unpack("<" + fmt, self.read(struct.calcsize("<" + fmt)))[0]

    def string(self) -> str:
        length = self.unpack("Q")
        if length > 1 << 30:
            raise GgufError("malformed GGUF header (string too long)")
        return self.read(length).decode("utf-8", "replace")

    def skipString(self) -> None:
        self.skip(self.unpack("Q"))


_SCALARS: Dict[int, str] = {
    0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d",
}
_STRING = 8
_ARRAY = 9


def _value(r: _Reader, kind: int) -> Any:
    if kind in _SCALARS:
        return r.unpack(_SCALARS[kind])
    if kind == _STRING:
        return r.string()
    raise GgufError(f"malformed GGUF header (value type {kind})")


def _array(r: _Reader, key: str, lengths: Dict[str, int]) -> Any:
    kind = r.unpack("I")
    count = r.unpack("Q")
    lengths[key] = count
    if count <= r.arrayLimit:
        return [_value(r, kind) for _ in range(count)]
    if kind in _SCALARS:
        r.skip(count * struct.calcsize("<" + _SCALARS[kind]))
    elif kind == _STRING:
        for _ in range(count):
            r.skipString()
    else:
        raise GgufError(f"malformed GGUF header (array of type {kind} at {key})")
    return count


def readHeader(path: str, arrayLimit: int = DEFAULT_ARRAY_LIMIT,
               opener: Callable[[str], BinaryIO] = lambda p: open(p, "rb")) -> GgufHeader:
    """
    Read the header of the GGUF file at C{path} (blocking).

    @param arrayLimit: arrays with more elements than this are skipped
        (see L{GgufHeader.metadata}).
    @return: the L{GgufHeader}.
    @raise OSError: the file cannot be read.
    @raise GgufError: it is no GGUF file, or its header is malformed.
    """
    with opener(path) as f:
        r = _Reader(f, arrayLimit)
        magic = f.read(4)
        r.position = len(magic)
        if magic != MAGIC:
            raise GgufError(f"{path}: not a GGUF file (magic {magic!r})")
        version = r.unpack("I")
        if version not in (1, 2, 3):
            if struct.unpack(">I", struct.pack("<I", version))[0] in (1, 2, 3):
                raise GgufError(f"{path}: big-endian GGUF files are not supported")
            raise GgufError(f"{path}: unsupported GGUF version {version}")
        count = "I" if version == 1 else "Q"
        tensorCount = r.unpack(count)
        kvCount = r.unpack(count)
        if tensorCount > 1 << 24 or kvCount > 1 << 24:
            raise GgufError(f"{path}: malformed GGUF header (counts too large)")
        metadata: Dict[str, Any] = {}
        lengths: Dict[str, int] = {}
        for _ in range(kvCount):
            key = r.string()
            kind = r.unpack("I")
            metadata[key] = _array(r, key, lengths) if kind == _ARRAY else _value(r, kind)
        tensors: List[TensorInfo] = []
        for _ in range(tensorCount):
            name = r.string()
            nDims = r.unpack("I")
            if nDims > 8:
                raise GgufError(f"{path}: malformed GGUF header ({nDims} dimensions)")
            dims = tuple(r.unpack("Q") for _ in range(nDims))
            tensors.append(TensorInfo(name, dims, r.unpack("I"), r.unpack("Q")))
        alignment = metadata.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0:
            alignment = 32
        dataOffset = -(-r.position // alignment) * alignment
    return GgufHeader(version, metadata, lengths, tuple(tensors), dataOffset)
