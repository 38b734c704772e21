"""
Tests for L{llamaswap.observe.gpu}: the NVML probe (with a fake C{pynvml},
without the library, and with the real library on a machine without a
driver) and the polling monitor.
"""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from llamaswap.interfaces import IGpuProbe
from llamaswap.observe.gpu import SAMPLE_KEYS, GpuMonitor, NvmlProbe


class FakeNVMLError(Exception):
    pass


class FakeNvml:
    """
    The parts of the C{pynvml} module that L{NvmlProbe} uses, over a list
    of fake GPUs.  Names come back as bytes (older bindings) for GPU 0 and
    text for the others.
    """

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, gpus=None, initError=None):
        self.gpus = gpus if gpus is not None else [
            {"name": b"NVIDIA H100", "uuid": "GPU-aaaa", "gpu": 87, "memory": 40,
             "used": 30 * 2**30, "total": 80 * 2**30, "temp": 61, "power": 312500, "fan": 35},
            {"name": "NVIDIA L4", "uuid": "GPU-bbbb", "gpu": 0, "memory": 0,
             "used": 2**20, "total": 24 * 2**30, "temp": 30, "power": None, "fan": None},
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
            "temperature": 61.0, "fanSpeed": 35.0, "powerDraw": 312.5})
        # What a GPU does not support is None, not an error.
        self.assertEqual((second["id"], second["name"], second["powerDraw"], second["fanSpeed"]),
                         (1, "NVIDIA L4", None, None))
        probe.sample()
        self.assertEqual(nvml.calls, ["init"])
        probe.shutdown()
        self.assertEqual(nvml.calls, ["init", "shutdown"])
        probe.shutdown()
        self.assertEqual(nvml.calls, ["init", "shutdown"])

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


class MonitorTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.threads = FakeThreads()

    def test_pollsThroughInjectedThread(self):
        nvml = FakeNvml()
        probe = NvmlProbe(nvml)
        monitor = GpuMonitor(probe, self.clock, interval=5.0, deferToThread=self.threads)
        monitor.start()
        self.assertEqual(self.threads.calls, [probe.sample])
        self.assertEqual([g["uuid"] for g in monitor.latest], ["GPU-aaaa", "GPU-bbbb"])
        self.assertEqual(monitor.latestAt, 0)
        nvml.gpus[0]["temp"] = 70
        self.clock.advance(5)
        self.assertEqual(monitor.latest[0]["temperature"], 70.0)
        self.assertEqual(len(monitor.samplesSince()), 2)
        self.assertEqual([t for t, _ in monitor.samplesSince(0)], [5])
        self.successResultOf(monitor.stop())
        self.assertEqual(self.threads.calls[-1], probe.shutdown)
        self.assertEqual(nvml.calls, ["init", "shutdown"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_errorsDoNotStopTheMonitor(self):
        gpu = [{"id": 0, "name": "g", "uuid": "u", "utilization": 1.0}]
        probe = FlakyProbe([RuntimeError("nvml hiccup"), gpu, RuntimeError("again"), gpu])
        monitor = GpuMonitor(probe, self.clock, interval=5.0, deferToThread=self.threads)
        monitor.startService()
        self.assertEqual(monitor.latest, [])
        for _ in range(3):
            self.clock.advance(5)
        self.assertEqual(probe.calls, 4)
        self.assertEqual((monitor.polls, monitor.failures), (4, 2))
        self.assertEqual(monitor.latest, gpu)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.successResultOf(monitor.stopService())
        self.assertEqual(probe.shutdowns, 1)

    def test_unavailableProbeStopsPolling(self):
        probe = NvmlProbe(FakeNvml(initError=FakeNVMLError("no driver")))
        monitor = GpuMonitor(probe, self.clock, deferToThread=self.threads)
        monitor.start()
        self.assertFalse(monitor.available)
        self.assertEqual(monitor.latest, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.successResultOf(monitor.stop())

    def test_stopWaitsForSampleInProgress(self):
        threads = FakeThreads(immediate=False)
        probe = FlakyProbe([[{"id": 0}]])
        monitor = GpuMonitor(probe, self.clock, deferToThread=threads)
        monitor.start()
        stopped = monitor.stop()
        self.assertNoResult(stopped)
        threads.runPending()           # the sample ends...
        self.assertNoResult(stopped)
        threads.runPending()           # ...then the probe's shutdown
        self.successResultOf(stopped)
        self.assertEqual(probe.shutdowns, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_sampleThatCannotStart(self):
        def broken(f):
            raise RuntimeError("no thread pool")

        monitor = GpuMonitor(FlakyProbe([]), self.clock, deferToThread=broken)
        self.successResultOf(monitor.poll())
        self.assertEqual(monitor.failures, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
