# -*- test-case-name: tests.test_observe_prom -*-
"""
Prometheus metrics of one llamaswap server, in a registry of its own (never
C{prometheus_client}'s global one), and C{GET /metrics} (SPEC.md section
3.10).

Series::

    llamaswap_requests_total{model,route,status}             counter
    llamaswap_request_duration_seconds{model,route}          histogram
    llamaswap_swaps_total{model}                             counter
    llamaswap_swap_duration_seconds{model}                   histogram
    llamaswap_model_state{model,state}                       gauge, 1 = current
    llamaswap_tokens_total{model,kind="input|output"}        counter
    llamaswap_queue_depth                                    gauge
    llamaswap_phase_seconds{model,phase="queue|stop|load|ttfb"} histogram
    llamaswap_gpu_utilization_percent{gpu,name,uuid}         gauge  } from the
    llamaswap_gpu_memory_used_bytes{gpu,name,uuid}           gauge  } GPU
    llamaswap_gpu_memory_total_bytes{gpu,name,uuid}          gauge  } monitor's
    llamaswap_gpu_temperature_celsius{gpu,name,uuid}         gauge  } latest
    llamaswap_gpu_power_watts{gpu,name,uuid}                 gauge  } sample

The GPU gauges are absent when there is no GPU monitor or no sample.
C{route} should be the route's pattern (C{/v1/chat/completions}), never a
raw client path, to keep the number of series bounded.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from twisted.web.resource import Resource

#: The states a model can be in (upstream machine and SPEC.md 4.1).
MODEL_STATES = ("stopped", "starting", "ready", "stopping", "failed", "shutdown")

#: The phases of L{llamaswap.observe.timing.PhaseTimer} exported.
PHASES = ("queue", "stop", "load", "ttfb")

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 120.0, 300.0, 600.0)
SWAP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
PHASE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

#: (GPU gauge name, sample key, help).
GPU_GAUGES = (
    ("llamaswap_gpu_utilization_percent", "utilization", "GPU utilization in percent."),
    ("llamaswap_gpu_memory_used_bytes", "memoryUsed", "GPU memory in use, bytes."),
    ("llamaswap_gpu_memory_total_bytes", "memoryTotal", "GPU memory in all, bytes."),
    ("llamaswap_gpu_temperature_celsius", "temperature", "GPU temperature, Celsius."),
    ("llamaswap_gpu_power_watts", "powerDraw", "GPU power draw, watts."),
)


class GpuCollector:
    """
    A custom collector: the GPU gauges from a monitor's latest sample (an
    object with a C{latest} list of per-GPU dicts, such as
    L{llamaswap.observe.gpu.GpuMonitor}); nothing without one.
    """

    def __init__(self, monitor: Any = None) -> None:
        self.monitor = monitor

    def describe(self) -> list:
        # Names are dynamic (absent without a GPU): nothing to check for
        # duplicates at registration.
        return []

    def collect(self) -> Iterable[GaugeMetricFamily]:
        gpus = list(getattr(self.monitor, "latest", None) or [])
        if not gpus:
            return
        for name, key, doc in GPU_GAUGES:
            family = GaugeMetricFamily(name, doc, labels=["gpu", "name", "uuid"])
            for gpu in gpus:
                value = gpu.get(key)
                if value is None:
                    continue
                family.add_metric(
                    [str(gpu.get("id", "")), str(gpu.get("name") or ""),
                     str(gpu.get("uuid") or "")], float(value))
            if family.samples:
                yield family


class Metrics:
    """
    The Prometheus metrics of one server.  Every method is cheap and never
    raises into its caller's flow for ordinary values.

    @ivar registry: the L{CollectorRegistry} this object owns.
    """

    def __init__(self, gpu: Any = None) -> None:
        """
        @param gpu: the GPU monitor whose latest sample is exported (see
            L{GpuCollector}); also settable later with L{attachGpu}.
        """
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = Counter(
            "llamaswap_requests", "Requests on model routes, by answer status.",
            ["model", "route", "status"], registry=r)
        self._requestSeconds = Histogram(
            "llamaswap_request_duration_seconds", "Request durations, arrival to last byte.",
            ["model", "route"], buckets=REQUEST_BUCKETS, registry=r)
        self._swaps = Counter(
            "llamaswap_swaps", "Model loads (swaps) completed.", ["model"], registry=r)
        self._swapSeconds = Histogram(
            "llamaswap_swap_duration_seconds", "Time from swap start to model ready.",
            ["model"], buckets=SWAP_BUCKETS, registry=r)
        self._state = Gauge(
            "llamaswap_model_state", "1 for the state each model is in, 0 for the others.",
            ["model", "state"], registry=r)
        self._tokens = Counter(
            "llamaswap_tokens", "Tokens processed (input) and generated (output).",
            ["model", "kind"], registry=r)
        self._queue = Gauge(
            "llamaswap_queue_depth", "Requests waiting for a model.", registry=r)
        self._phases = Histogram(
            "llamaswap_phase_seconds", "Per-request phase durations.",
            ["model", "phase"], buckets=PHASE_BUCKETS, registry=r)
        self._states: dict[str, str] = {}
        self.gpu = GpuCollector(gpu)
        r.register(self.gpu)

    def attachGpu(self, monitor: Any) -> None:
        """
        Export the GPU gauges of C{monitor} (L{None} to stop).
        """
        self.gpu.monitor = monitor

    def requestDone(self, model: str, route: str, status: int | str, seconds: float) -> None:
        """
        A request on a model route ended with C{status} after C{seconds}.
        """
        self._requests.labels(model, route, str(status)).inc()
        self._requestSeconds.labels(model, route).observe(max(0.0, float(seconds)))

    def swapDone(self, model: str, seconds: float) -> None:
        """
        Model C{model} became ready C{seconds} after its swap started.
        """
        self._swaps.labels(model).inc()
        self._swapSeconds.labels(model).observe(max(0.0, float(seconds)))

    def stateChanged(self, model: str, state: str) -> None:
        """
        Model C{model} is now in C{state}: its gauge for C{state} is 1, for
        every other known state 0.
        """
        previous = self._states.get(model)
        if previous is None:
            for known in MODEL_STATES:
                self._state.labels(model, known).set(0)
        elif previous != state:
            self._state.labels(model, previous).set(0)
        self._states[model] = state
        self._state.labels(model, state).set(1)

    def tokens(self, model: str, inputTokens: int = 0, outputTokens: int = 0) -> None:
        """
        Count a request's tokens (negative or missing counts add nothing).
        """
        if inputTokens and inputTokens > 0:
            self._tokens.labels(model, "input").inc(inputTokens)
        if outputTokens and outputTokens > 0:
            self._tokens.labels(model, "output").inc(outputTokens)

    def queueDepth(self, n: int) -> None:
        """
        C{n} requests are waiting now.
        """
        self._queue.set(n)

    def phases(self, model: str, phases: Mapping[str, float]) -> None:
        """
        Observe a request's C{queue}, C{stop}, C{load} and C{ttfb} phases
        (seconds; other keys, such as C{total}, are ignored).
        """
        for phase in PHASES:
            value = phases.get(phase)
            if value is not None:
                self._phases.labels(model, phase).observe(max(0.0, float(value)))

    def render(self) -> bytes:
        """
        @return: the Prometheus text exposition of the registry.
        """
        return generate_latest(self.registry)


class MetricsResource(Resource):
    """
    C{GET /metrics}: the registry's text, C{text/plain; version=0.0.4;
    charset=utf-8}.  When the performance monitor is disabled
    (C{performance.disabled}), 503 C{# performance monitor not available}.
    """

    isLeaf = True

    def __init__(self, metrics: Metrics, enabled: bool = True) -> None:
        super().__init__()
        self.metrics = metrics
        self.enabled = enabled

    def render_GET(self, request) -> bytes:
        if not self.enabled:
            request.setResponseCode(503)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"# performance monitor not available\n"
        request.setHeader(b"content-type", CONTENT_TYPE)
        return self.metrics.render()
