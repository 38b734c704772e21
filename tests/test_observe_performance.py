"""
Tests for L{llamaswap.observe.performance}: the monitor that polls the
system and GPU probes (through an injected C{deferToThread}, on a
L{Clock}), the JSON of C{GET /api/performance} and its resource.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from llamaswap.config import loadConfigText
from llamaswap.observe import performance as performanceModule
from llamaswap.observe.gpu import NvmlProbe
from llamaswap.observe.observatory import Observatory
from llamaswap.observe.performance import (
    INVALID_AFTER,
    NOT_AVAILABLE,
    PerformanceMonitor,
    _threadRunner,
    parseRFC3339,
)
from llamaswap.observe.system import SystemProbe
from llamaswap.web.performance import PerformanceResource
from tests.fakes import STAT_2, FakeNvml, FakeNVMLError, FakeProc, FakeThreads, FlakyProbe

MIB = 1048576

SYS_KEYS = {"timestamp", "cpu_util_per_core", "mem_total_mb", "mem_used_mb", "mem_free_mb",
            "swap_total_mb", "swap_used_mb", "load_avg_1", "load_avg_5", "load_avg_15",
            "net_io"}
_DEFAULT = object()

GPU_KEYS = {"timestamp", "id", "name", "uuid", "temp_c", "vram_temp_c", "gpu_util_pct",
            "mem_util_pct", "mem_used_mb", "mem_total_mb", "fan_speed_pct", "power_draw_w"}


class ThreadCheckingThreads(FakeThreads):
    """
    L{FakeThreads} that knows when a call runs "in a thread", so that the
    probes below can check they never run on the reactor thread.
    """

    inThread = False

    def __call__(self, f, *args, **kw):
        def inThread(*a, **k):
            self.inThread = True
            try:
                return f(*a, **k)
            finally:
                self.inThread = False

        inThread.wrapped = f
        return super().__call__(inThread, *args, **kw)

    def called(self):
        return [getattr(f, "wrapped", f) for f in self.calls]


class CheckedProbe:
    """
    Wraps a probe; fails the test when C{sample} runs outside the
    injected thread runner.
    """

    def __init__(self, probe, threads):
        self.probe = probe
        self.threads = threads

    @property
    def available(self):
        return self.probe.available

    @property
    def reason(self):
        return self.probe.reason

    def sample(self):
        assert self.threads.inThread, "sampled on the reactor thread"
        return self.probe.sample()

    def shutdown(self):
        assert self.threads.inThread, "shut down on the reactor thread"
        return self.probe.shutdown()


class MonitorTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1700000000)
        self.threads = ThreadCheckingThreads()
        self.proc = FakeProc(self.mktemp())
        self.nvml = FakeNvml()
        self.system = CheckedProbe(SystemProbe(self.proc.root, platform="linux"), self.threads)
        self.gpu = CheckedProbe(NvmlProbe(self.nvml), self.threads)

    def monitor(self, system=_DEFAULT, gpu=_DEFAULT, **kw):
        monitor = PerformanceMonitor(
            self.system if system is _DEFAULT else system, self.gpu if gpu is _DEFAULT else gpu,
            self.clock, every=kw.pop("every", 5.0), deferToThread=self.threads,
            tz=timezone.utc, **kw)
        self.addCleanup(lambda: monitor.running and monitor.stopService())
        return monitor

    def test_pollsThroughInjectedThread(self):
        """
        The first poll is at start, then one every C{every} seconds; every
        probe call (and the GPU probe's shutdown) goes through
        C{deferToThread}.
        """
        monitor = self.monitor(every=7.0)
        monitor.startService()
        self.assertEqual(self.threads.called(), [self.system.sample, self.gpu.sample])
        self.clock.advance(6)
        self.assertEqual(monitor.polls, 1)
        self.clock.advance(1)
        self.assertEqual(monitor.polls, 2)
        self.assertEqual(len(monitor.samples()), 2)
        self.successResultOf(monitor.stopService())
        self.assertEqual(self.threads.called()[-1], self.gpu.shutdown)
        self.assertEqual(self.nvml.calls, ["init", "shutdown"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_subscribersHearEachStoredSample(self):
        """
        Each stored sample goes to every subscriber as it is stored; a
        poll that stores nothing tells none; a subscriber that raises is
        logged and dropped, the others still hear; unsubscribing stops it.
        """
        monitor = self.monitor(gpu=None)
        heard, broken = [], []

        def fails(sample):
            broken.append(sample)
            raise RuntimeError("subscriber bug")

        unsubscribe = monitor.subscribe(heard.append)
        monitor.subscribe(fails)
        monitor.startService()
        self.assertEqual(len(heard), 1)
        self.assertEqual(heard[0], monitor.samples()[-1])
        self.assertEqual(heard[0].sysStat["timestamp"], "2023-11-14T22:13:20Z")
        self.assertEqual(len(broken), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.clock.advance(5)
        self.assertEqual(len(heard), 2)
        self.assertEqual(len(broken), 1, "a failing subscriber is dropped")
        unsubscribe()
        unsubscribe()
        self.clock.advance(5)
        self.assertEqual(len(heard), 2)

    def test_aPollThatStoresNothingTellsNoSubscriber(self):
        monitor = self.monitor(system=FlakyProbe([RuntimeError("no /proc")]), gpu=None)
        heard = []
        monitor.subscribe(heard.append)
        monitor.startService()
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual((monitor.polls, monitor.samples(), heard), (1, [], []))

    def test_snapshotShape(self):
        monitor = self.monitor()
        monitor.startService()
        self.proc.write("stat", STAT_2)
        self.nvml.gpus[0]["temp"] = 70
        self.clock.advance(5.25)
        snapshot = monitor.snapshot()
        self.assertEqual(set(snapshot), {"sys_stats", "gpu_stats"})
        first, second = snapshot["sys_stats"]
        for record in (first, second):
            self.assertEqual(set(record), SYS_KEYS)
        self.assertEqual(first, {
            "timestamp": "2023-11-14T22:13:20Z",
            "cpu_util_per_core": [15.0, 25.0],
            "mem_total_mb": 16384, "mem_used_mb": 9216, "mem_free_mb": 4096,
            "swap_total_mb": 2048, "swap_used_mb": 512,
            "load_avg_1": 1.5, "load_avg_5": 0.75, "load_avg_15": 0.25,
            "net_io": [{"name": "eth0", "bytes_recv": 1050485753, "bytes_sent": 1293827},
                       {"name": "wlan0", "bytes_recv": 123, "bytes_sent": 456}],
        })
        self.assertEqual(second["timestamp"], "2023-11-14T22:13:25.25Z")
        self.assertEqual(second["cpu_util_per_core"], [50.0, 75.0])
        gpus = snapshot["gpu_stats"]
        self.assertEqual([(g["timestamp"], g["id"]) for g in gpus], [
            ("2023-11-14T22:13:20Z", 0), ("2023-11-14T22:13:20Z", 1),
            ("2023-11-14T22:13:25.25Z", 0), ("2023-11-14T22:13:25.25Z", 1)])
        for record in gpus:
            self.assertEqual(set(record), GPU_KEYS)
        self.assertEqual(gpus[2], {
            "timestamp": "2023-11-14T22:13:25.25Z", "id": 0, "name": "NVIDIA H100",
            "uuid": "GPU-aaaa", "temp_c": 70.0, "vram_temp_c": 72.0, "gpu_util_pct": 87.0,
            "mem_util_pct": 40.0, "mem_used_mb": 30720, "mem_total_mb": 81920,
            "fan_speed_pct": 35.0, "power_draw_w": 312.5})
        # What a GPU does not report is 0 in the JSON, as in the reference.
        self.assertEqual((gpus[3]["power_draw_w"], gpus[3]["fan_speed_pct"],
                          gpus[3]["vram_temp_c"], gpus[3]["mem_used_mb"]), (0.0, 0.0, 0.0, 1))
        json.dumps(snapshot)

    def test_localTimestamps(self):
        """
        Without C{tz}, timestamps are RFC 3339 in the local zone, with its
        offset.
        """
        monitor = PerformanceMonitor(self.system, None, self.clock, deferToThread=self.threads)
        monitor.startService()
        text = monitor.snapshot()["sys_stats"][0]["timestamp"]
        self.assertEqual(parseRFC3339(text),
                         datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc))
        self.successResultOf(monitor.stopService())

    def test_after(self):
        """
        C{after} keeps the samples strictly after it, for both lists; a
        timestamp taken from a sample excludes that sample.
        """
        monitor = self.monitor()
        monitor.startService()
        for _ in range(3):
            self.clock.advance(5.000001)
        stamps = [s["timestamp"] for s in monitor.snapshot()["sys_stats"]]
        self.assertEqual(len(stamps), 4)
        later = monitor.snapshot(parseRFC3339(stamps[1]))
        self.assertEqual([s["timestamp"] for s in later["sys_stats"]], stamps[2:])
        self.assertEqual([g["timestamp"] for g in later["gpu_stats"]],
                         [stamps[2], stamps[2], stamps[3], stamps[3]])
        self.assertEqual(monitor.snapshot(parseRFC3339(stamps[3])),
                         {"sys_stats": [], "gpu_stats": []})
        # Nanoseconds beyond the samples' microseconds, another zone, a
        # naive datetime (read as UTC).
        self.assertEqual(len(monitor.snapshot(
            parseRFC3339(stamps[1][:-1] + "999Z"))["sys_stats"]), 2)
        at = datetime.fromtimestamp(1700000005.000001, timezone.utc)
        self.assertEqual(len(monitor.snapshot(
            at.astimezone(timezone(timedelta(hours=-7))))["sys_stats"]), 2)
        self.assertEqual(len(monitor.snapshot(at.replace(tzinfo=None))["sys_stats"]), 2)

    def test_oneHourKept(self):
        monitor = self.monitor()
        monitor.startService()
        self.clock.pump([5.0] * 720)
        self.assertEqual(len(monitor.samples()), 721)
        self.clock.advance(5)
        samples = monitor.samples()
        self.assertEqual(len(samples), 721)
        self.assertEqual(samples[0].when, 1700000005)
        self.assertEqual(samples[-1].when, 1700003605)
        # Reading prunes too, even when polling has stopped.
        self.successResultOf(monitor.stopService())
        self.clock.advance(1800)
        self.assertEqual(samples[-1].when - monitor.samples()[0].when, 1800)
        self.assertEqual(len(monitor.snapshot()["sys_stats"]), 361)

    def test_probeErrorsLoggedAndPollingGoesOn(self):
        """
        A failing sample is logged with its traceback the first time in a
        row; the other probe's sample is kept; polling goes on.
        """
        system = FlakyProbe([RuntimeError("proc hiccup"), RuntimeError("again"),
                             {"cpuPerCore": [1.0]}, {"cpuPerCore": [2.0]}])
        monitor = self.monitor(system=system)
        monitor.startService()
        self.clock.pump([5, 5, 5])
        self.assertEqual((monitor.polls, monitor.failures), (4, 2))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        snapshot = monitor.snapshot()
        self.assertEqual([s["cpu_util_per_core"] for s in snapshot["sys_stats"]],
                         [[1.0], [2.0]])
        self.assertEqual(len(snapshot["gpu_stats"]), 8)
        self.assertEqual(monitor.latest().system, {"cpuPerCore": [2.0]})

    def test_gpuErrorKeepsSystemSample(self):
        gpu = FlakyProbe([FakeNVMLError("GPU is lost"), [{"id": 0, "name": "g"}]])
        monitor = self.monitor(gpu=gpu)
        monitor.startService()
        self.assertEqual(len(self.flushLoggedErrors(FakeNVMLError)), 1)
        self.assertEqual(len(monitor.snapshot()["sys_stats"]), 1)
        self.assertEqual(monitor.snapshot()["gpu_stats"], [])
        self.assertEqual(monitor.latest().gpus, ())
        self.clock.advance(5)
        self.assertEqual([g["name"] for g in monitor.snapshot()["gpu_stats"]], ["g"])

    def test_sampleThatCannotStart(self):
        def broken(f):
            raise RuntimeError("no thread pool")

        monitor = PerformanceMonitor(FlakyProbe([]), None, self.clock, deferToThread=broken)
        self.successResultOf(monitor.poll())
        self.assertEqual(monitor.failures, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_unavailableGpuIsNotPolledAgain(self):
        gpu = CheckedProbe(NvmlProbe(FakeNvml(initError=FakeNVMLError("no driver"))),
                           self.threads)
        monitor = self.monitor(gpu=gpu)
        monitor.startService()
        self.clock.advance(5)
        self.assertEqual(self.threads.called(), [self.system.sample, gpu.sample,
                                                 self.system.sample])
        self.assertEqual(monitor.snapshot()["gpu_stats"], [])
        self.assertEqual(len(monitor.snapshot()["sys_stats"]), 2)

    def test_nothingAvailableStopsPolling(self):
        system = SystemProbe(self.proc.root, platform="win32")
        gpu = NvmlProbe(importModule=lambda name: FakeNvml(gpus=[]))
        monitor = self.monitor(system=system, gpu=gpu)
        monitor.startService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(monitor.snapshot(), {"sys_stats": [], "gpu_stats": []})
        self.assertIsNone(monitor.latest().system)
        self.assertEqual(monitor.latest().gpus, ())
        self.successResultOf(monitor.stopService())

    def test_noProbes(self):
        monitor = self.monitor(system=None, gpu=None)
        monitor.startService()
        self.assertEqual(self.threads.calls, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(monitor.snapshot(), {"sys_stats": [], "gpu_stats": []})
        self.successResultOf(monitor.stopService())

    def test_latest(self):
        monitor = self.monitor()
        self.assertIsNone(monitor.latest())
        monitor.startService()
        latest = monitor.latest()
        self.assertEqual(latest.when, 1700000000)
        self.assertEqual(latest.system["cpuPerCore"], [15.0, 25.0])
        self.assertEqual([g["uuid"] for g in latest.gpus], ["GPU-aaaa", "GPU-bbbb"])

    def test_stopWaitsForSampleInProgress(self):
        threads = FakeThreads(immediate=False)
        system = FlakyProbe([{"cpuPerCore": [1.0]}])
        gpu = FlakyProbe([[{"id": 0}]])
        monitor = PerformanceMonitor(system, gpu, self.clock, deferToThread=threads)
        monitor.startService()
        again = monitor.poll()         # one poll at a time: this one waits
        self.assertEqual((monitor.polls, len(threads.pending)), (1, 2))
        stopped = monitor.stopService()
        self.assertNoResult(stopped)
        self.assertNoResult(again)
        threads.runPending()           # the samples end...
        self.assertIsNone(self.successResultOf(again))
        self.assertNoResult(stopped)
        self.assertEqual(len(monitor.samples()), 1)
        threads.runPending()           # ...then the GPU probe's shutdown
        self.successResultOf(stopped)
        self.assertEqual(gpu.shutdowns, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_restart(self):
        monitor = self.monitor()
        monitor.startService()
        self.successResultOf(monitor.stopService())
        monitor.startService()
        self.assertEqual(self.nvml.calls, ["init", "shutdown", "init"])
        self.assertEqual(len(monitor.samples()), 2)

    def test_defaultThreadsUseTheReactorsPool(self):
        calls = []

        class Pool:
            def callInThreadWithCallback(self, onResult, f, *args, **kw):
                calls.append("thread")
                onResult(True, f(*args, **kw))

        class Reactor(Clock):
            def getThreadPool(self):
                return Pool()

            def callFromThread(self, f, *args, **kw):
                calls.append("reactor")
                f(*args, **kw)

        run = _threadRunner(Reactor())
        self.assertEqual(self.successResultOf(run(lambda x: x + 1, 1)), 2)
        self.assertEqual(calls, ["thread", "reactor"])


class ParseTests(SynchronousTestCase):
    def test_valid(self):
        utc = timezone.utc
        for text, expected in [
            ("2024-05-06T07:08:09Z", datetime(2024, 5, 6, 7, 8, 9, tzinfo=utc)),
            ("2024-05-06T07:08:09.5Z", datetime(2024, 5, 6, 7, 8, 9, 500000, tzinfo=utc)),
            ("2024-05-06T07:08:09.123456789Z",
             datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=utc)),
            ("2024-05-06T09:08:09+02:00", datetime(2024, 5, 6, 7, 8, 9, tzinfo=utc)),
            ("2024-05-06T09:08:09 02:00", datetime(2024, 5, 6, 7, 8, 9, tzinfo=utc)),
            ("2024-05-06T00:08:09-07:00", datetime(2024, 5, 6, 7, 8, 9, tzinfo=utc)),
        ]:
            self.assertEqual(parseRFC3339(text), expected, text)

    def test_invalid(self):
        for text in ["", "bad", "2024-05-06", "2024-05-06T07:08:09", "2024-05-06 07:08:09Z",
                     "2024-13-06T07:08:09Z", "2024-05-06T25:08:09Z", "2024-05-06T07:08:09+24:00",
                     "2024-05-06T07:08:09.Z", "1715000000", "2024-05-06T07:08:09Z "]:
            self.assertRaises(ValueError, parseRFC3339, text)


def render(resource, query=b""):
    request = DummyRequest([b""])
    request.method = b"GET"
    if query:
        name, _, value = query.partition(b"=")
        request.addArg(name, value)
    body = resource.render(request)
    return request, body


class ResourceTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1700000000)
        system = SystemProbe(FakeProc(self.mktemp()).root, platform="linux")
        self.monitor = PerformanceMonitor(system, NvmlProbe(FakeNvml()), self.clock,
                                          deferToThread=FakeThreads(), tz=timezone.utc)
        self.monitor.startService()
        self.clock.advance(5)
        self.addCleanup(self.monitor.stopService)

    def test_json(self):
        request, body = render(PerformanceResource(self.monitor))
        self.assertIn(request.responseCode, (None, 200))
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"),
                         [b"application/json"])
        self.assertEqual(json.loads(body), self.monitor.snapshot())
        self.assertEqual(len(json.loads(body)["sys_stats"]), 2)

    def test_after(self):
        request, body = render(PerformanceResource(self.monitor),
                               b"after=2023-11-14T22:13:20Z")
        found = json.loads(body)
        self.assertEqual([s["timestamp"] for s in found["sys_stats"]],
                         ["2023-11-14T22:13:25Z"])
        self.assertEqual(len(found["gpu_stats"]), 2)

    def test_emptyAfterIsNoFilter(self):
        request, body = render(PerformanceResource(self.monitor), b"after=")
        self.assertEqual(len(json.loads(body)["sys_stats"]), 2)

    def test_badAfter(self):
        request, body = render(PerformanceResource(self.monitor), b"after=bad")
        self.assertEqual(request.responseCode, 400)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"),
                         [b"application/json"])
        self.assertEqual(json.loads(body), {"error": {
            "message": INVALID_AFTER, "type": "invalid_request_error", "code": 400}})
        self.assertEqual(INVALID_AFTER, "invalid 'after' timestamp, use RFC3339 format")

    def test_disabled(self):
        request, body = render(PerformanceResource(None))
        self.assertEqual(request.responseCode, 503)
        self.assertEqual(json.loads(body)["error"]["message"], "performance monitor not available")
        self.assertEqual(NOT_AVAILABLE, "performance monitor not available")

    def test_disabledText(self):
        request = DummyRequest([b""])
        request.requestHeaders.setRawHeaders(b"accept", [b"text/plain"])
        body = PerformanceResource(None).render(request)
        self.assertEqual((request.responseCode, body),
                         (503, b"llama-swap: performance monitor not available"))


class ObservatoryTests(SynchronousTestCase):
    """
    How the observatory builds the monitor and both resources.
    """

    MODELS = "models:\n  m: {cmd: \"srv --port ${PORT}\"}\n"

    def test_enabled(self):
        config = loadConfigText("performance: {every: 7s}\n" + self.MODELS)
        system, gpu = SystemProbe(platform="win32"), NvmlProbe(FakeNvml())
        observatory = Observatory(config, Clock(), gpuProbe=gpu, systemProbe=system)
        monitor = observatory.performance
        self.assertIsInstance(monitor, PerformanceMonitor)
        self.assertIs(observatory.gpu, monitor)
        self.assertEqual((monitor.systemProbe, monitor.gpuProbe, monitor.every),
                         (system, gpu, 7.0))
        self.assertIs(observatory.metrics.performance.monitor, monitor)
        self.assertTrue(observatory.metricsResource.enabled)

    def test_disabled(self):
        config = loadConfigText("performance: {disabled: true}\n" + self.MODELS)
        observatory = Observatory(config, Clock())
        self.assertIsNone(observatory.performance)
        self.assertIsNone(observatory.gpu)
        request, body = render(observatory.metricsResource)
        self.assertEqual((request.responseCode, body),
                         (503, b"# performance monitor not available\n"))
        request, body = render(PerformanceResource(observatory.performance))
        self.assertEqual(request.responseCode, 503)
        self.assertIn(b"performance monitor not available", body)
        observatory.startService()
        self.successResultOf(observatory.stopService())


class PublishingTests(SynchronousTestCase):
    """
    The observatory publishes each new sample on the UI's event bus as a
    C{performance} message, only while a client follows the bus.
    """

    MODELS = ObservatoryTests.MODELS

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1700000000)
        self.patch(performanceModule, "_threadRunner", lambda reactor: FakeThreads())
        self.proc = FakeProc(self.mktemp())
        self.gpu = NvmlProbe(FakeNvml())
        self.observatory = Observatory(
            loadConfigText("performance: {every: 5s}\n" + self.MODELS), self.clock,
            gpuProbe=self.gpu, systemProbe=SystemProbe(self.proc.root, platform="linux"))
        self.observatory.performance.tz = timezone.utc
        self.observatory.startService()
        self.addCleanup(self.observatory.stopService)

    def messages(self, frames):
        out = []
        for frame in frames:
            outer = json.loads(frame.split(b"data:", 1)[1])
            out.append((outer["type"], json.loads(outer["data"])))
        return out

    def test_eachSampleIsPublishedWhileAClientListens(self):
        bus = self.observatory.bus
        self.assertEqual(bus.published, 0, "no client: nothing built")
        frames = []
        unsubscribe = bus.subscribe(frames.append)
        self.clock.advance(5)
        [(kind, data)] = self.messages(frames)
        self.assertEqual(kind, "performance")
        self.assertEqual(set(data), {"sys_stats", "gpu_stats"})
        [sysStat] = data["sys_stats"]
        self.assertEqual(set(sysStat), SYS_KEYS)
        self.assertEqual(sysStat["timestamp"], "2023-11-14T22:13:25Z")
        self.assertEqual([set(g) for g in data["gpu_stats"]], [GPU_KEYS] * len(data["gpu_stats"]))
        self.assertEqual(data, self.observatory.performance.snapshot(
            self.observatory.performance.samples()[-2].at))
        unsubscribe()
        published = bus.published
        self.clock.advance(5)
        self.assertEqual(bus.published, published, "the client left: nothing built")

    def test_aReloadedMonitorIsFollowed(self):
        old = self.observatory.performance
        self.observatory.reconfigure(loadConfigText("performance: {every: 6s}\n" + self.MODELS))
        new = self.observatory.performance
        self.assertIsNot(new, old)
        frames = []
        self.observatory.bus.subscribe(frames.append)
        self.clock.advance(6)
        kinds = [kind for kind, _ in self.messages(frames)]
        self.assertEqual(kinds, ["performance"], "the new monitor only")
        old._store(self.clock.seconds(), {"System": {"cpuPerCore": [1.0]}})
        self.assertEqual(len(frames), 1, "the replaced monitor is not followed")

    def test_stopEndsPublishing(self):
        frames = []
        self.observatory.bus.subscribe(frames.append)
        monitor = self.observatory.performance
        self.successResultOf(self.observatory.stopService())
        monitor._store(self.clock.seconds(), {"System": {"cpuPerCore": [1.0]}})
        self.assertEqual(frames, [])
