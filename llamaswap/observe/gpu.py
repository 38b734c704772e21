# -*- test-case-name: tests.test_observe_gpu -*-
"""
GPU statistics: L{NvmlProbe} reads NVIDIA GPUs through NVML (the
C{nvidia-ml-py} package, C{import pynvml}).
L{llamaswap.observe.performance.PerformanceMonitor} polls it off the reactor
thread, with the system probe, for C{/metrics} and C{/api/performance}.

Without the library, without an NVIDIA driver, or without a GPU, the probe
says it is unavailable and returns no samples; nothing raises.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from twisted.logger import Logger
from zope.interface import implementer

from llamaswap.interfaces import IGpuProbe

#: Keys of one GPU's sample.
SAMPLE_KEYS = ("id", "name", "uuid", "utilization", "memoryUtilization", "memoryUsed",
               "memoryTotal", "temperature", "vramTemperature", "fanSpeed", "powerDraw")

#: NVML's field id of the memory (HBM) temperature, and its "success".
_FI_DEV_MEMORY_TEMP = 82
_NVML_SUCCESS = 0


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


@implementer(IGpuProbe)
class NvmlProbe:
    """
    An L{IGpuProbe} over NVML.  Every method blocks (calls into the
    driver): run them in a thread (the performance monitor does).

    C{pynvml} is imported, and C{nvmlInit} called, on first use, so that
    nothing happens before twistd has daemonised.

    @ivar available: L{None} until first used; then whether NVML works and
        sees at least one GPU.
    @ivar reason: why it is unavailable.
    """

    log = Logger()

    def __init__(self, nvml: Any = None,
                 importModule: Callable[[str], Any] = importlib.import_module) -> None:
        """
        @param nvml: the C{pynvml} module or a stand-in (tests); imported
            on first use when L{None}.
        @param importModule: imports C{pynvml} (tests make it fail).
        """
        self._nvml = nvml
        self._import = importModule
        self._initialized = False
        self.available: bool | None = None
        self.reason = ""

    def init(self) -> bool:
        """
        Load NVML once (blocking).

        @return: whether GPUs can be sampled.
        """
        if self.available is not None:
            return self.available
        nvml = self._nvml
        if nvml is None:
            try:
                nvml = self._nvml = self._import("pynvml")
            except Exception as e:
                return self._unavailable("pynvml is not installed ({})".format(e))
        try:
            nvml.nvmlInit()
        except Exception as e:
            return self._unavailable("NVML could not start: {}".format(e))
        self._initialized = True
        try:
            count = nvml.nvmlDeviceGetCount()
        except Exception as e:
            return self._unavailable("NVML could not count GPUs: {}".format(e))
        if count < 1:
            return self._unavailable("no GPU found")
        self.available = True
        return True

    def _unavailable(self, reason: str) -> bool:
        self.available = False
        self.reason = reason
        return False

    def sample(self) -> list[dict[str, Any]]:
        """
        Read every GPU (blocking).

        @return: one dict per GPU with the keys L{SAMPLE_KEYS}: C{id} (the
            index), C{name}, C{uuid}, C{utilization} and
            C{memoryUtilization} (percent), C{memoryUsed} and
            C{memoryTotal} (bytes), C{temperature} and
            C{vramTemperature} (Celsius; the latter is the memory's, which
            NVML reports through its field values on GPUs with HBM),
            C{fanSpeed} (percent), C{powerDraw} (watts).  A value the GPU
            does not report is L{None}.  C{[]} when unavailable.
        @raise Exception: an NVML error that concerns the whole sample
            (the monitor logs it).
        """
        if not self.init():
            return []
        nvml = self._nvml
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)

            def read(call: Callable[[], Any]) -> Any:
                try:
                    return call()
                except Exception:
                    return None

            rates = read(lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
            memory = read(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
            power = read(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
            name = read(lambda: nvml.nvmlDeviceGetName(handle))
            uuid = read(lambda: nvml.nvmlDeviceGetUUID(handle))
            gpus.append({
                "id": index,
                "name": "" if name is None else _text(name),
                "uuid": "" if uuid is None else _text(uuid),
                "utilization": None if rates is None else float(rates.gpu),
                "memoryUtilization": None if rates is None else float(rates.memory),
                "memoryUsed": None if memory is None else int(memory.used),
                "memoryTotal": None if memory is None else int(memory.total),
                "temperature": read(lambda: float(nvml.nvmlDeviceGetTemperature(
                    handle, getattr(nvml, "NVML_TEMPERATURE_GPU", 0)))),
                "vramTemperature": read(lambda: self._vramTemperature(handle)),
                "fanSpeed": read(lambda: float(nvml.nvmlDeviceGetFanSpeed(handle))),
                "powerDraw": None if power is None else power / 1000.0,
            })
        return gpus

    def processes(self) -> list[dict[str, Any]]:
        """
        Read the GPU memory of every compute process (blocking).

        @return: one dict per process and GPU: C{gpu} (the index), C{pid}
            and C{memoryUsed} (bytes; processes whose usage NVML cannot
            read are left out).  C{[]} when unavailable.
        """
        if not self.init():
            return []
        nvml = self._nvml
        found = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            try:
                running = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except Exception:
                continue
            for process in running:
                used = getattr(process, "usedGpuMemory", None)
                if isinstance(used, int) and 0 <= used < 1 << 60:
                    found.append({"gpu": index, "pid": int(process.pid), "memoryUsed": used})
        return found

    def _vramTemperature(self, handle: Any) -> float | None:
        """
        @return: the memory temperature of the GPU at C{handle} (blocking),
            or L{None} where NVML does not report one (no such field in an
            old binding or driver, an error for the field, or 0).
        """
        nvml = self._nvml
        getFieldValues = getattr(nvml, "nvmlDeviceGetFieldValues", None)
        if getFieldValues is None:
            return None
        field = getattr(nvml, "NVML_FI_DEV_MEMORY_TEMP", _FI_DEV_MEMORY_TEMP)
        value = getFieldValues(handle, [field])[0]
        if getattr(value, "nvmlReturn", _NVML_SUCCESS) != _NVML_SUCCESS:
            return None
        member = {
            getattr(nvml, "NVML_VALUE_TYPE_DOUBLE", 0): "dVal",
            getattr(nvml, "NVML_VALUE_TYPE_UNSIGNED_INT", 1): "uiVal",
            getattr(nvml, "NVML_VALUE_TYPE_UNSIGNED_LONG", 2): "ulVal",
            getattr(nvml, "NVML_VALUE_TYPE_UNSIGNED_LONG_LONG", 3): "ullVal",
            getattr(nvml, "NVML_VALUE_TYPE_SIGNED_LONG_LONG", 4): "sllVal",
            getattr(nvml, "NVML_VALUE_TYPE_SIGNED_INT", 5): "siVal",
            getattr(nvml, "NVML_VALUE_TYPE_UNSIGNED_SHORT", 6): "usVal",
        }.get(getattr(value, "valueType", 1), "uiVal")
        temperature = float(getattr(value.value, member))
        # Drivers answer 0 rather than an error on some boards without a
        # memory sensor; nothing runs at 0 Celsius.
        return temperature if temperature > 0 else None

    def shutdown(self) -> None:
        """
        Unload NVML (blocking); the next L{sample} loads it again.
        """
        if self._initialized:
            self._initialized = False
            self.available = None
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
