"""
Tests for L{llamaswap.observe.prom}: the Prometheus registry and
C{GET /metrics} (SPEC.md section 3.10).
"""

from __future__ import annotations

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from llamaswap.observe.gpu import GpuMonitor, NvmlProbe
from llamaswap.observe.prom import MODEL_STATES, Metrics, MetricsResource
from tests.test_observe_gpu import FakeNvml, FakeThreads

GPU_SERIES = ("llamaswap_gpu_utilization_percent", "llamaswap_gpu_memory_used_bytes",
              "llamaswap_gpu_memory_total_bytes", "llamaswap_gpu_temperature_celsius",
              "llamaswap_gpu_power_watts")


def samples(metrics: Metrics) -> dict[str, list]:
    """
    Parse the exposition; map each sample name to its C{(labels, value)}
    pairs.
    """
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(metrics.render().decode("utf-8")):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def value(found, sampleName, **labels):
    matches = [v for l, v in found[sampleName]
               if all(l.get(k) == w for k, w in labels.items())]
    assert len(matches) == 1, (sampleName, labels, found.get(sampleName))
    return matches[0]


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
        self.assertNotIn("total", {l["phase"] for l, _ in found["llamaswap_phase_seconds_count"]})
        for name in GPU_SERIES:
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
            states = {l["state"]: v for l, v in found["llamaswap_model_state"]
                      if l["model"] == model}
            self.assertEqual(set(states), set(MODEL_STATES))
            self.assertEqual({s for s, v in states.items() if v == 1}, {current})

    def test_ownRegistry(self):
        first, second = Metrics(), Metrics()
        first.queueDepth(1)
        second.queueDepth(2)
        self.assertEqual(value(samples(first), "llamaswap_queue_depth"), 1)
        self.assertEqual(value(samples(second), "llamaswap_queue_depth"), 2)
        self.assertIsNone(REGISTRY.get_sample_value("llamaswap_queue_depth"))

    def test_gpuGaugesWithFakeProbe(self):
        clock = Clock()
        monitor = GpuMonitor(NvmlProbe(FakeNvml()), clock, deferToThread=FakeThreads())
        metrics = Metrics(monitor)
        self.assertNotIn("llamaswap_gpu_temperature_celsius", samples(metrics))
        monitor.start()
        found = samples(metrics)
        for name in GPU_SERIES:
            self.assertIn(name, found)
        self.assertEqual(value(found, "llamaswap_gpu_utilization_percent", gpu="0",
                               name="NVIDIA H100", uuid="GPU-aaaa"), 87)
        self.assertEqual(value(found, "llamaswap_gpu_memory_total_bytes", gpu="1"), 24 * 2**30)
        self.assertEqual(value(found, "llamaswap_gpu_power_watts", gpu="0"), 312.5)
        # GPU 1 reports no power draw: no sample for it.
        self.assertEqual([l["gpu"] for l, _ in found["llamaswap_gpu_power_watts"]], ["0"])
        self.successResultOf(monitor.stop())

    def test_gpuGaugesAbsentWithoutGpu(self):
        clock = Clock()
        monitor = GpuMonitor(NvmlProbe(FakeNvml(gpus=[])), clock, deferToThread=FakeThreads())
        metrics = Metrics()
        metrics.attachGpu(monitor)
        monitor.start()
        found = samples(metrics)
        for name in GPU_SERIES:
            self.assertNotIn(name, found)
        self.successResultOf(monitor.stop())

    def test_labelEscaping(self):
        metrics = Metrics()
        metrics.requestDone('we"ird\\model\n', "/r", 200, 0.1)
        found = samples(metrics)
        self.assertEqual(value(found, "llamaswap_requests_total", model='we"ird\\model\n'), 1)


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
