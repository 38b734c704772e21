"""
Out-of-memory messages in a failed start's output (llamaswap.memory.oom).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from llamaswap.memory.oom import isOutOfMemory, outOfMemoryLine

OOM_LINES = [
    # llama.cpp on CUDA
    "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 9216.00 MiB on device 0: "
    "cudaMalloc failed: out of memory",
    "alloc_tensor_range: failed to allocate CUDA0 buffer of size 9663676416",
    "llama_kv_cache_unified: failed to allocate buffer for kv cache",
    "CUDA error: out of memory",
    # ROCm, Vulkan, Metal
    "hipErrorOutOfMemory",
    "ggml_vulkan: Device memory allocation of size 4294967296 failed. "
    "vk::Device::allocateMemory: ErrorOutOfDeviceMemory",
    "ggml_metal_graph_compute: command buffer 0 failed with status 5 (Insufficient Memory)",
    # vLLM / PyTorch
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.",
    "ValueError: No available memory for the cache blocks. Try increasing "
    "`gpu_memory_utilization` when initializing the engine.",
    "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
]

OTHER_LINES = [
    "error: unknown argument: --flash-attn-typo",
    "llama_model_load: error loading model: tensor 'blk.0.attn_q.weight' not found",
    "main: server is listening on http://127.0.0.1:8080 - starting the main loop",
    "srv  load_model: loading model 'room-temperature.gguf'",
    "gguf_init_from_file: failed to open GGUF file 'models/x.gguf' (No such file)",
    "",
]


class OomTests(SynchronousTestCase):
    def test_recognised(self) -> None:
        for line in OOM_LINES:
            self.assertTrue(isOutOfMemory(["starting", line, "exiting"]), line)

    def test_notRecognised(self) -> None:
        for line in OTHER_LINES:
            self.assertFalse(isOutOfMemory([line]), line)
        self.assertFalse(isOutOfMemory([]))

    def test_firstLineReported(self) -> None:
        self.assertEqual(outOfMemoryLine(["ok", "  CUDA error: out of memory  ", OOM_LINES[0]]),
                         "CUDA error: out of memory")
