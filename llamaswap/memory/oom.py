# -*- test-case-name: tests.test_memory_oom -*-
"""
Recognising an out-of-memory failure in a failed start's output.

llama.cpp, CUDA, ROCm, Vulkan, Metal, PyTorch (vLLM) and the kernel all word
it differently; L{isOutOfMemory} knows the usual phrasings.  Pure.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional

__all__ = ["isOutOfMemory", "outOfMemoryLine"]

_PATTERNS = re.compile(
    "|".join([
        r"out of memory",                       # CUDA/ROCm "out of memory", HIP, generic
        r"\boom\b",
        r"cudaMalloc failed",
        r"cudaErrorMemoryAllocation",
        r"CUDA_ERROR_OUT_OF_MEMORY",
        r"hipErrorOutOfMemory",
        r"ErrorOutOfDeviceMemory",               # Vulkan
        r"VK_ERROR_OUT_OF_DEVICE_MEMORY",
        r"failed to allocate .*buffer",          # llama.cpp: ggml_backend_*_buffer
        r"unable to allocate .*buffer",
        r"insufficient memory",                  # Metal
        r"not enough (?:device |gpu |video )?memory",
        r"CUBLAS_STATUS_ALLOC_FAILED",
        r"torch\.OutOfMemoryError",
        r"torch\.cuda\.OutOfMemoryError",
        r"No available memory for the cache blocks",  # vLLM
    ]),
    re.IGNORECASE,
)


def outOfMemoryLine(lines: Iterable[str]) -> Optional[str]:
    """
    @param lines: a failed start's output lines (its last ones suffice).
    @return: the first line that reports an out-of-memory error, stripped,
        or L{None}.
    """
    for line in lines:
        if _PATTERNS.search(line):
            return line.strip()
    return None


def isOutOfMemory(lines: Iterable[str]) -> bool:
    """
    @return: whether C{lines} report an out-of-memory error.
    """
    return outOfMemoryLine(lines) is not None
