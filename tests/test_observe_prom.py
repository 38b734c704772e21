"""
Tests for L{llamaswap.observe.prom}: the Prometheus registry and
C{GET /metrics} (SPEC.md section 3.10).
"""

from __future__ import annotations

import re

from prometheus_client import (
    REGISTRY, CollectorRegistry, Counter, Histogram, disable_created_metrics,
    enable_created_metrics, generate_latest)
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from llamaswap.observe.gpu import NvmlProbe
from llamaswap.observe.performance import PerformanceMonitor
from llamaswap.observe import prom
from llamaswap.observe.prom import (
    MODEL_STATES, Metrics, MetricsResource, PerRequestCounter, PerRequestHistogram)
from llamaswap.observe.system import SystemProbe
from tests.fakes import FakeNvml, FakeProc, FakeThreads, samples, value

MIB = 1048576

#: SPEC.md section 6.4: sample name -> label names.
SYSTEM_SERIES = {
    "llamaswap_cpu_util_percent": {"core"},
    "llamaswap_memory_total_bytes": set(),
    "llamaswap_memory_used_bytes": set(),
    "llamaswap_memory_free_bytes": set(),
    "llamaswap_swap_total_bytes": set(),
    "llamaswap_swap_used_bytes": set(),
    "llamaswap_load_average": {"interval"},
    "llamaswap_network_bytes_total": {"interface", "direction"},
}
GPU_SERIES = ("llamaswap_gpu_temperature_celsius", "llamaswap_gpu_vram_temperature_celsius",
              "llamaswap_gpu_util_percent", "llamaswap_gpu_memory_util_percent",
              "llamaswap_gpu_memory_used_bytes", "llamaswap_gpu_memory_total_bytes",
              "llamaswap_gpu_fan_speed_percent", "llamaswap_gpu_power_draw_watts")


def families(metrics: Metrics) -> dict[str, str]:
    """
    @return: family name -> type, as parsed from the exposition.
    """
    text = metrics.render().decode("utf-8")
    return {f.name: f.type for f in text_string_to_metric_families(text)}


class MetricsTests(SynchronousTestCase):
    def test_everySeries(self):
        metrics = Metrics()
        metrics.requestDone("qwen", "/v1/chat/completions", 200, 1.5)
        metrics.requestDone("qwen", "/v1/chat/completions", 200, 0.5)
        metrics.requestDone("qwen", "/v1/chat/completions", 502, 0.1)
        metrics.swapDone("qwen", 12.5)
        metrics.stateChanged("qwen", "ready")
        metrics.tokens("qwen", 20, 50)
        metrics.tokens("qwen", -1, 0)
        metrics.queueDepth(3)
        metrics.phases("qwen", {"queue": 0.01, "stop": 0.0, "load": 0.8, "ttfb": 0.004,
                                "total": 0.9})
        found = samples(metrics)
        self.assertEqual(value(found, "llamaswap_requests_total", model="qwen",
                               route="/v1/chat/completions", status="200"), 2)
        self.assertEqual(value(found, "llamaswap_requests_total", status="502"), 1)
        self.assertEqual(value(found, "llamaswap_request_duration_seconds_count",
                               model="qwen"), 3)
        self.assertEqual(value(found, "llamaswap_request_duration_seconds_sum", model="qwen"),
                         2.1)
        self.assertEqual(value(found, "llamaswap_swaps_total", model="qwen"), 1)
        self.assertEqual(value(found, "llamaswap_swap_duration_seconds_sum", model="qwen"), 12.5)
        self.assertEqual(value(found, "llamaswap_model_state", model="qwen", state="ready"), 1)
        self.assertEqual(value(found, "llamaswap_tokens_total", model="qwen", kind="input"), 20)
        self.assertEqual(value(found, "llamaswap_tokens_total", model="qwen", kind="output"), 50)
        self.assertEqual(value(found, "llamaswap_queue_depth"), 3)
        for phase in ("queue", "stop", "load", "ttfb"):
            self.assertEqual(value(found, "llamaswap_phase_seconds_count", model="qwen",
                                   phase=phase), 1)
        self.assertNotIn("total", {labels["phase"]
                                   for labels, _ in found["llamaswap_phase_seconds_count"]})
        for name in GPU_SERIES + tuple(SYSTEM_SERIES):
            self.assertNotIn(name, found)

    def test_modelState(self):
        """
        Exactly the current state of each model is 1.
        """
        metrics = Metrics()
        metrics.stateChanged("a", "starting")
        metrics.stateChanged("a", "ready")
        metrics.stateChanged("b", "stopped")
        metrics.stateChanged("a", "stopping")
        found = samples(metrics)
        for model, current in (("a", "stopping"), ("b", "stopped")):
            states = {labels["state"]: v for labels, v in found["llamaswap_model_state"]
                      if labels["model"] == model}
            self.assertEqual(set(states), set(MODEL_STATES))
            self.assertEqual({s for s, v in states.items() if v == 1}, {current})

    def test_ownRegistry(self):
        first, second = Metrics(), Metrics()
        first.queueDepth(1)
        second.queueDepth(2)
        self.assertEqual(value(samples(first), "llamaswap_queue_depth"), 1)
        self.assertEqual(value(samples(second), "llamaswap_queue_depth"), 2)
        self.assertIsNone(REGISTRY.get_sample_value("llamaswap_queue_depth"))

    def test_labelEscaping(self):
        metrics = Metrics()
        metrics.requestDone('we"ird\\model\n', "/r", 200, 0.1)
        found = samples(metrics)
        self.assertEqual(value(found, "llamaswap_requests_total", model='we"ird\\model\n'), 1)


class PerformanceSeriesTests(SynchronousTestCase):
    """
    The system and GPU series of SPEC.md section 6.4, from a monitor over a
    fake C{/proc} and a fake NVML.
    """

    def monitor(self, system=None, gpus=None):
        clock = Clock()
        if system is None:
            system = SystemProbe(FakeProc(self.mktemp()).root, platform="linux")
        monitor = PerformanceMonitor(system, NvmlProbe(FakeNvml(gpus=gpus)), clock,
                                     deferToThread=FakeThreads())
        self.addCleanup(lambda: monitor.running and monitor.stopService())
        return monitor

    def test_everySeries(self):
        monitor = self.monitor()
        metrics = Metrics(monitor)
        self.assertEqual(set(samples(metrics)), {"llamaswap_queue_depth"})
        monitor.startService()
        found = samples(metrics)
        for name, labels in SYSTEM_SERIES.items():
            self.assertIn(name, found)
            for sampleLabels, _ in found[name]:
                self.assertEqual(set(sampleLabels), labels, name)
        for name in GPU_SERIES:
            self.assertIn(name, found)
            for sampleLabels, _ in found[name]:
                self.assertEqual(set(sampleLabels), {"id", "name", "uuid"}, name)
        types = families(metrics)
        self.assertEqual(types["llamaswap_network_bytes"], "counter")
        for name in set(SYSTEM_SERIES) - {"llamaswap_network_bytes_total"}:
            self.assertEqual(types[name], "gauge", name)
        for name in GPU_SERIES:
            self.assertEqual(types[name], "gauge", name)

    def test_systemValues(self):
        monitor = self.monitor()
        monitor.startService()
        found = samples(Metrics(monitor))
        self.assertEqual(value(found, "llamaswap_cpu_util_percent", core="0"), 15.0)
        self.assertEqual(value(found, "llamaswap_cpu_util_percent", core="1"), 25.0)
        self.assertEqual(value(found, "llamaswap_memory_total_bytes"), 16384 * MIB)
        self.assertEqual(value(found, "llamaswap_memory_used_bytes"), 9216 * MIB)
        self.assertEqual(value(found, "llamaswap_memory_free_bytes"), 4096 * MIB)
        self.assertEqual(value(found, "llamaswap_swap_total_bytes"), 2048 * MIB)
        self.assertEqual(value(found, "llamaswap_swap_used_bytes"), 512 * MIB)
        self.assertEqual([(labels["interval"], v) for labels, v in found["llamaswap_load_average"]],
                         [("1m", 1.5), ("5m", 0.75), ("15m", 0.25)])
        self.assertEqual(value(found, "llamaswap_network_bytes_total", interface="eth0",
                               direction="recv"), 1050485753)
        self.assertEqual(value(found, "llamaswap_network_bytes_total", interface="eth0",
                               direction="sent"), 1293827)
        self.assertEqual({labels["interface"]
                          for labels, _ in found["llamaswap_network_bytes_total"]},
                         {"eth0", "wlan0"})

    def test_gpuValues(self):
        monitor = self.monitor()
        monitor.startService()
        found = samples(Metrics(monitor))
        h100 = {"id": "0", "name": "NVIDIA H100", "uuid": "GPU-aaaa"}
        self.assertEqual(value(found, "llamaswap_gpu_util_percent", **h100), 87)
        self.assertEqual(value(found, "llamaswap_gpu_memory_util_percent", **h100), 40)
        self.assertEqual(value(found, "llamaswap_gpu_temperature_celsius", **h100), 61)
        self.assertEqual(value(found, "llamaswap_gpu_vram_temperature_celsius", **h100), 72)
        self.assertEqual(value(found, "llamaswap_gpu_fan_speed_percent", **h100), 35)
        self.assertEqual(value(found, "llamaswap_gpu_power_draw_watts", **h100), 312.5)
        self.assertEqual(value(found, "llamaswap_gpu_memory_used_bytes", **h100), 30 * 2**30)
        self.assertEqual(value(found, "llamaswap_gpu_memory_total_bytes", id="1"), 24 * 2**30)
        # GPU 1 reports no power draw, fan speed or memory temperature: no
        # sample for it.
        for name in ("llamaswap_gpu_power_draw_watts", "llamaswap_gpu_fan_speed_percent",
                     "llamaswap_gpu_vram_temperature_celsius"):
            self.assertEqual([labels["id"] for labels, _ in found[name]], ["0"], name)

    def test_bytesAreWholeMB(self):
        """
        Bytes are exported as the reference does: whole MB times 1048576.
        """
        gpus = FakeNvml().gpus
        gpus[1]["used"] = 5 * MIB + 12345
        monitor = self.monitor(gpus=gpus)
        monitor.startService()
        found = samples(Metrics(monitor))
        self.assertEqual(value(found, "llamaswap_gpu_memory_used_bytes", id="1"), 5 * MIB)

    def test_uuidOnlyWhenKnown(self):
        gpus = FakeNvml().gpus
        gpus[1]["uuid"] = ""
        monitor = self.monitor(gpus=gpus)
        monitor.startService()
        found = samples(Metrics(monitor))
        self.assertEqual([labels for labels, _ in found["llamaswap_gpu_util_percent"]],
                         [{"id": "0", "name": "NVIDIA H100", "uuid": "GPU-aaaa"},
                          {"id": "1", "name": "NVIDIA L4"}])

    def test_gpuSeriesAbsentWithoutGpu(self):
        monitor = self.monitor(gpus=[])
        monitor.startService()
        found = samples(Metrics(monitor))
        for name in GPU_SERIES:
            self.assertNotIn(name, found)
        for name in SYSTEM_SERIES:
            self.assertIn(name, found)

    def test_systemSeriesAbsentWhenUnavailable(self):
        monitor = self.monitor(system=SystemProbe(platform="darwin"))
        monitor.startService()
        found = samples(Metrics(monitor))
        for name in SYSTEM_SERIES:
            self.assertNotIn(name, found)
        self.assertIn("llamaswap_gpu_util_percent", found)

    def test_noInterfaces(self):
        netDev = "Inter-|\n face |\n    lo: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n"
        proc = FakeProc(self.mktemp(), netDev=netDev)
        monitor = self.monitor(system=SystemProbe(proc.root, platform="linux"))
        monitor.startService()
        found = samples(Metrics(monitor))
        self.assertNotIn("llamaswap_network_bytes_total", found)
        self.assertIn("llamaswap_load_average", found)

    def test_attachMonitor(self):
        monitor = self.monitor()
        monitor.startService()
        metrics = Metrics()
        metrics.attachMonitor(monitor)
        self.assertIn("llamaswap_gpu_util_percent", samples(metrics))
        metrics.attachMonitor(None)
        self.assertEqual(set(samples(metrics)), {"llamaswap_queue_depth"})

    def test_gpuLabelEscaping(self):
        gpus = FakeNvml().gpus[:1]
        gpus[0]["name"] = 'GPU "x"\\y\nz'
        monitor = self.monitor(gpus=gpus)
        monitor.startService()
        found = samples(Metrics(monitor))
        self.assertEqual(value(found, "llamaswap_gpu_util_percent", name='GPU "x"\\y\nz'), 87)


class ResourceTests(SynchronousTestCase):
    def render(self, resource):
        request = DummyRequest([b""])
        request.method = b"GET"
        body = resource.render(request)
        return request, body

    def test_metrics(self):
        metrics = Metrics()
        metrics.queueDepth(4)
        request, body = self.render(MetricsResource(metrics))
        self.assertEqual(request.responseCode, None)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"),
                         [b"text/plain; version=0.0.4; charset=utf-8"])
        self.assertIn(b"llamaswap_queue_depth 4.0", body)

    def test_disabled(self):
        request, body = self.render(MetricsResource(Metrics(), enabled=False))
        self.assertEqual(request.responseCode, 503)
        self.assertEqual(body, b"# performance monitor not available\n")


class PerRequestSeriesTests(SynchronousTestCase):
    """
    The counters and histograms fed on every request are plain numbers,
    exposed as C{prometheus_client}'s own would be.
    """

    def feed(self) -> tuple[CollectorRegistry, CollectorRegistry]:
        """
        @return: a registry of our series and one of C{prometheus_client}'s
            counter and histogram, fed the same values.
        """
        ours, theirs = CollectorRegistry(), CollectorRegistry()
        counter = PerRequestCounter("x_requests", "Requests.", ["model", "status"])
        histogram = PerRequestHistogram("x_seconds", "Seconds.", ["model"], (0.005, 0.1, 1.0))
        ours.register(counter)
        ours.register(histogram)
        nativeCounter = Counter("x_requests", "Requests.", ["model", "status"], registry=theirs)
        nativeHistogram = Histogram("x_seconds", "Seconds.", ["model"],
                                    buckets=(0.005, 0.1, 1.0), registry=theirs)
        for model, status, seconds in [("a", "200", 0.0), ("a", "200", 0.005),
                                       ("b", "502", 0.0051), ("a", "200", 7.5),
                                       ("b", "502", 1.0), ('q"\\\n', "200", 0.1)]:
            counter.labels(model, status).inc()
            nativeCounter.labels(model, status).inc()
            histogram.labels(model).observe(seconds)
            nativeHistogram.labels(model).observe(seconds)
        counter.labels("a", "200").inc(2.5)
        nativeCounter.labels("a", "200").inc(2.5)
        return ours, theirs

    def text(self, registry: CollectorRegistry) -> bytes:
        """
        @return: the exposition, C{_created} timestamps blanked.
        """
        return re.sub(rb"(_created\{[^}]*\}) \S+", rb"\1 T", generate_latest(registry))

    def test_exposedAsPrometheusClientsOwn(self) -> None:
        ours, theirs = self.feed()
        self.assertEqual(self.text(ours), self.text(theirs))
        self.assertIn(b'x_seconds_bucket{le="+Inf",model="a"} 3.0', self.text(ours))
        self.assertIn(b'x_requests_created{model="a",status="200"}', self.text(ours))

    def test_noCreatedSeriesWhenPrometheusClientHasNone(self) -> None:
        disable_created_metrics()
        self.addCleanup(enable_created_metrics)
        self.patch(prom.os, "environ", {"PROMETHEUS_DISABLE_CREATED_SERIES": "true"})
        ours, theirs = self.feed()
        self.assertEqual(generate_latest(ours), generate_latest(theirs))
        self.assertNotIn(b"_created", generate_latest(ours))

    def test_theLabelsMustMatch(self) -> None:
        counter = PerRequestCounter("x_requests", "Requests.", ["model", "status"])
        self.assertRaises(ValueError, counter.labels, "a")
