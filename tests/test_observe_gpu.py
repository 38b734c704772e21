"""
Tests for L{llamaswap.observe.gpu}: the NVML probe (with a fake C{pynvml},
without the library, and with the real library on a machine without a
driver).  The monitor that polls it is tested in
L{tests.test_observe_performance}.
"""

from __future__ import annotations


from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from llamaswap.interfaces import IGpuProbe
from llamaswap.observe.gpu import SAMPLE_KEYS, NvmlProbe
from tests.fakes import FakeNvml, FakeNVMLError


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


