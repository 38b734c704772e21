"""
Tests for L{llamaswap.observe.gpu}: the NVML probe (with a fake C{pynvml},
without the library, and with the real library on a machine without a
driver).  The monitor that polls it is tested in
L{tests.test_observe_performance}.
"""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from llamaswap.interfaces import IGpuProbe
from llamaswap.observe.gpu import SAMPLE_KEYS, NvmlProbe


class FakeNVMLError(Exception):
    pass


class FakeNvml:
    """
    The parts of the C{pynvml} module that L{NvmlProbe} uses, over a list
    of fake GPUs.  Names come back as bytes (older bindings) for GPU 0 and
    text for the others.  GPU 0 reports its memory temperature, GPU 1 does
    not (C{NVML_ERROR_NOT_SUPPORTED} for the field).
    """

    NVML_TEMPERATURE_GPU = 0
    NVML_FI_DEV_MEMORY_TEMP = 82
    NVML_VALUE_TYPE_DOUBLE = 0
    NVML_VALUE_TYPE_UNSIGNED_INT = 1

    def __init__(self, gpus=None, initError=None):
        self.gpus = gpus if gpus is not None else [
            {"name": b"NVIDIA H100", "uuid": "GPU-aaaa", "gpu": 87, "memory": 40,
             "used": 30 * 2**30, "total": 80 * 2**30, "temp": 61, "power": 312500, "fan": 35,
             "vram": 72},
            {"name": "NVIDIA L4", "uuid": "GPU-bbbb", "gpu": 0, "memory": 0,
             "used": 2**20, "total": 24 * 2**30, "temp": 30, "power": None, "fan": None,
             "vram": None},
        ]
        self.initError = initError
        self.calls: list[str] = []

    def nvmlInit(self):
        self.calls.append("init")
        if self.initError is not None:
            raise self.initError

    def nvmlShutdown(self):
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        return self.gpus[index]

    def nvmlDeviceGetName(self, handle):
        return handle["name"]

    def nvmlDeviceGetUUID(self, handle):
        return handle["uuid"]

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=handle["gpu"], memory=handle["memory"])

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=handle["used"], total=handle["total"],
                               free=handle["total"] - handle["used"])

    def nvmlDeviceGetTemperature(self, handle, sensor):
        assert sensor == self.NVML_TEMPERATURE_GPU
        return handle["temp"]

    def nvmlDeviceGetPowerUsage(self, handle):
        if handle["power"] is None:
            raise FakeNVMLError("Not Supported")
        return handle["power"]

    def nvmlDeviceGetFanSpeed(self, handle):
        if handle["fan"] is None:
            raise FakeNVMLError("Not Supported")
        return handle["fan"]

    def nvmlDeviceGetFieldValues(self, handle, fieldIds):
        assert fieldIds == [self.NVML_FI_DEV_MEMORY_TEMP]
        vram = handle["vram"]
        if isinstance(vram, float):
            return [SimpleNamespace(nvmlReturn=0, valueType=self.NVML_VALUE_TYPE_DOUBLE,
                                    value=SimpleNamespace(dVal=vram))]
        return [SimpleNamespace(nvmlReturn=3 if vram is None else 0,
                                valueType=self.NVML_VALUE_TYPE_UNSIGNED_INT,
                                value=SimpleNamespace(uiVal=vram or 0))]


class OldNvml(FakeNvml):
    """
    A binding without field values.
    """

    nvmlDeviceGetFieldValues = None


class ProbeTests(SynchronousTestCase):
    def test_sample(self):
        nvml = FakeNvml()
        probe = NvmlProbe(nvml)
        verifyObject(IGpuProbe, probe)
        self.assertIsNone(probe.available)
        first, second = probe.sample()
        self.assertTrue(probe.available)
        self.assertEqual(set(first), set(SAMPLE_KEYS))
        self.assertEqual(first, {
            "id": 0, "name": "NVIDIA H100", "uuid": "GPU-aaaa", "utilization": 87.0,
            "memoryUtilization": 40.0, "memoryUsed": 30 * 2**30, "memoryTotal": 80 * 2**30,
            "temperature": 61.0, "vramTemperature": 72.0, "fanSpeed": 35.0, "powerDraw": 312.5})
        # What a GPU does not support is None, not an error.
        self.assertEqual((second["id"], second["name"], second["powerDraw"], second["fanSpeed"],
                          second["vramTemperature"]),
                         (1, "NVIDIA L4", None, None, None))
        probe.sample()
        self.assertEqual(nvml.calls, ["init"])
        probe.shutdown()
        self.assertEqual(nvml.calls, ["init", "shutdown"])
        probe.shutdown()
        self.assertEqual(nvml.calls, ["init", "shutdown"])

    def test_vramTemperature(self):
        """
        The memory temperature comes from NVML's field values, of whatever
        value type; 0, an error for the field, or a binding without field
        values give L{None}.
        """
        nvml = FakeNvml()
        nvml.gpus[0]["vram"] = 70.5
        nvml.gpus[1]["vram"] = 0
        first, second = NvmlProbe(nvml).sample()
        self.assertEqual((first["vramTemperature"], second["vramTemperature"]), (70.5, None))
        first, second = NvmlProbe(OldNvml()).sample()
        self.assertEqual((first["vramTemperature"], first["temperature"]), (None, 61.0))

    def test_libraryAbsent(self):
        def noModule(name):
            raise ImportError("No module named " + name)

        probe = NvmlProbe(importModule=noModule)
        self.assertEqual(probe.sample(), [])
        self.assertFalse(probe.available)
        self.assertIn("not installed", probe.reason)
        probe.shutdown()

    def test_initFails(self):
        nvml = FakeNvml(initError=FakeNVMLError("Driver Not Loaded"))
        probe = NvmlProbe(nvml)
        self.assertEqual(probe.sample(), [])
        self.assertFalse(probe.available)
        self.assertIn("Driver Not Loaded", probe.reason)
        self.assertEqual(probe.sample(), [])
        self.assertEqual(nvml.calls, ["init"])

    def test_noGpu(self):
        probe = NvmlProbe(FakeNvml(gpus=[]))
        self.assertEqual(probe.sample(), [])
        self.assertFalse(probe.available)

    def test_realLibraryWithoutDriver(self):
        """
        The installed C{nvidia-ml-py}, on a machine without an NVIDIA driver
        (this one), makes an unavailable probe; nothing raises.  Where a GPU
        exists, it samples it.
        """
        probe = NvmlProbe()
        try:
            gpus = probe.sample()
        finally:
            probe.shutdown()
        if probe.available is False:
            self.assertEqual(gpus, [])
            self.assertTrue(probe.reason)
        else:
            self.assertTrue(gpus)
            self.assertEqual(set(gpus[0]), set(SAMPLE_KEYS))


class FakeThreads:
    """
    An injected C{deferToThread}: records each call and either runs it at
    once or leaves it pending until the test fires it.
    """

    def __init__(self, immediate=True):
        self.immediate = immediate
        self.calls = []
        self.pending: list[tuple[Deferred, object]] = []

    def __call__(self, f, *args, **kw):
        self.calls.append(f)
        if not self.immediate:
            d = Deferred()
            self.pending.append((d, lambda: f(*args, **kw)))
            return d
        try:
            return succeed(f(*args, **kw))
        except Exception:
            return fail()

    def runPending(self):
        pending, self.pending = self.pending, []
        for d, call in pending:
            try:
                d.callback(call())
            except Exception:
                d.errback()


class FlakyProbe:
    """
    A probe whose next samples the test scripts: a list, or an exception
    to raise.
    """

    available = True

    def __init__(self, results):
        self.results = list(results)
        self.calls = 0
        self.shutdowns = 0

    def sample(self):
        self.calls += 1
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    def shutdown(self):
        self.shutdowns += 1
