# -*- test-case-name: tests.test_observe_prom -*-
"""
Prometheus metrics of one llamaswap server, in a registry of its own (never
C{prometheus_client}'s global one), and C{GET /metrics} (SPEC.md section
3.10).

Series of llamaswap itself::

    llamaswap_requests_total{model,route,status}             counter
    llamaswap_request_duration_seconds{model,route}          histogram
    llamaswap_swaps_total{model}                             counter
    llamaswap_swap_duration_seconds{model}                   histogram
    llamaswap_model_state{model,state}                       gauge, 1 = current
    llamaswap_tokens_total{model,kind="input|output"}        counter
    llamaswap_queue_depth                                    gauge
    llamaswap_phase_seconds{model,phase="queue|stop|load|ttfb"} histogram

and, from the performance monitor's latest sample (SPEC.md section 6.4;
L{PerformanceCollector})::

    llamaswap_cpu_util_percent{core}                         gauge
    llamaswap_memory_total_bytes                             gauge
    llamaswap_memory_used_bytes                              gauge
    llamaswap_memory_free_bytes                              gauge
    llamaswap_swap_total_bytes                               gauge
    llamaswap_swap_used_bytes                                gauge
    llamaswap_load_average{interval="1m|5m|15m"}             gauge
    llamaswap_network_bytes_total{interface,direction="recv|sent"} counter
    llamaswap_gpu_temperature_celsius{id,name[,uuid]}        gauge
    llamaswap_gpu_vram_temperature_celsius{id,name[,uuid]}   gauge
    llamaswap_gpu_util_percent{id,name[,uuid]}               gauge
    llamaswap_gpu_memory_util_percent{id,name[,uuid]}        gauge
    llamaswap_gpu_memory_used_bytes{id,name[,uuid]}          gauge
    llamaswap_gpu_memory_total_bytes{id,name[,uuid]}         gauge
    llamaswap_gpu_fan_speed_percent{id,name[,uuid]}          gauge
    llamaswap_gpu_power_draw_watts{id,name[,uuid]}           gauge

Byte values are the reference's whole MB times 1048576.  The system series
are absent while the system probe is unavailable (not Linux) or before its
first sample; the network counter without interfaces; the GPU series
without GPUs, and a GPU's series for a value it does not report.  C{uuid}
is a label only when known.
C{route} should be the route's pattern (C{/v1/chat/completions}), never a
raw client path, to keep the number of series bounded.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from typing import Any, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric)
from prometheus_client.utils import floatToGoString
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

MB = 1048576

#: (system gauge name, sample key, help): unlabelled byte gauges.
SYSTEM_BYTES = (
    ("llamaswap_memory_total_bytes", "memoryTotal", "Memory in all, bytes."),
    ("llamaswap_memory_used_bytes", "memoryUsed", "Memory in use, bytes."),
    ("llamaswap_memory_free_bytes", "memoryFree", "Memory free, bytes."),
    ("llamaswap_swap_total_bytes", "swapTotal", "Swap in all, bytes."),
    ("llamaswap_swap_used_bytes", "swapUsed", "Swap in use, bytes."),
)

#: (GPU gauge name, sample key, help, whether the value is bytes).
GPU_GAUGES = (
    ("llamaswap_gpu_temperature_celsius", "temperature", "GPU temperature, Celsius.", False),
    ("llamaswap_gpu_vram_temperature_celsius", "vramTemperature",
     "GPU memory (VRAM) temperature, Celsius.", False),
    ("llamaswap_gpu_util_percent", "utilization", "GPU utilization in percent.", False),
    ("llamaswap_gpu_memory_util_percent", "memoryUtilization",
     "GPU memory (bandwidth) utilization in percent.", False),
    ("llamaswap_gpu_memory_used_bytes", "memoryUsed", "GPU memory in use, bytes.", True),
    ("llamaswap_gpu_memory_total_bytes", "memoryTotal", "GPU memory in all, bytes.", True),
    ("llamaswap_gpu_fan_speed_percent", "fanSpeed", "GPU fan speed in percent.", False),
    ("llamaswap_gpu_power_draw_watts", "powerDraw", "GPU power draw, watts.", False),
)


def _bytes(value: Any) -> float:
    """
    @return: C{value} bytes as the reference exports them: whole MB times
        1048576.
    """
    return float((int(value) // MB) * MB)


def systemFamilies(system: Mapping[str, Any] | None) -> Iterator[Metric]:
    """
    @param system: a L{llamaswap.observe.system.SystemProbe.sample} dict, or
        L{None}.
    @return: the system series of SPEC.md section 6.4 (none for L{None}).
    """
    if not system:
        return
    cpu = GaugeMetricFamily("llamaswap_cpu_util_percent", "CPU utilization per core, percent.",
                            labels=["core"])
    for core, value in enumerate(system.get("cpuPerCore") or []):
        cpu.add_metric([str(core)], float(value))
    if cpu.samples:
        yield cpu
    for name, key, doc in SYSTEM_BYTES:
        value = system.get(key)
        if value is not None:
            yield GaugeMetricFamily(name, doc, value=_bytes(value))
    load = system.get("load")
    if load:
        family = GaugeMetricFamily("llamaswap_load_average", "System load average.",
                                   labels=["interval"])
        for interval, value in zip(("1m", "5m", "15m"), load):
            family.add_metric([interval], float(value))
        yield family
    network = system.get("network") or []
    if network:
        counter = CounterMetricFamily("llamaswap_network_bytes",
                                      "Bytes received and sent per network interface.",
                                      labels=["interface", "direction"])
        for interface in network:
            counter.add_metric([str(interface["name"]), "recv"], float(interface["recv"]))
            counter.add_metric([str(interface["name"]), "sent"], float(interface["sent"]))
        yield counter


def gpuFamilies(gpus: Iterable[Mapping[str, Any]]) -> Iterator[Metric]:
    """
    @param gpus: the per-GPU dicts of a L{llamaswap.observe.gpu.NvmlProbe}
        sample.
    @return: the GPU gauges of SPEC.md section 6.4, labelled C{id},
        C{name} and, when known, C{uuid}; a value a GPU does not report
        has no sample, a gauge no GPU reports no family.
    """
    gpus = list(gpus)
    for name, key, doc, isBytes in GPU_GAUGES:
        family = Metric(name, doc, "gauge")
        for gpu in gpus:
            value = gpu.get(key)
            if value is None:
                continue
            labels = {"id": str(gpu.get("id", "")), "name": str(gpu.get("name") or "")}
            if gpu.get("uuid"):
                labels["uuid"] = str(gpu["uuid"])
            family.add_sample(name, labels, _bytes(value) if isBytes else float(value))
        if family.samples:
            yield family


class PerformanceCollector:
    """
    A custom collector: the system and GPU series from a performance
    monitor's latest sample (an object with a C{latest()} method returning
    L{None} or something with C{system} and C{gpus}, such as
    L{llamaswap.observe.performance.PerformanceMonitor}); nothing without
    one.
    """

    def __init__(self, monitor: Any = None) -> None:
        self.monitor = monitor

    def describe(self) -> list:
        # Names are dynamic (absent without a sample): nothing to check for
        # duplicates at registration.
        return []

    def collect(self) -> Iterator[Metric]:
        if self.monitor is None:
            return
        latest = self.monitor.latest()
        if latest is None:
            return
        yield from systemFamilies(latest.system)
        yield from gpuFamilies(latest.gpus or ())


def _createdSeries() -> bool:
    """
    @return: whether C{_created} series are exported, as
        C{prometheus_client} decides it (its
        C{PROMETHEUS_DISABLE_CREATED_SERIES} environment variable).
    """
    return os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False").lower() not in (
        "true", "1", "t")


class _Count:
    """
    One labelled child of a L{PerRequestCounter}.
    """

    __slots__ = ("value", "created")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class _Observed:
    """
    One labelled child of a L{PerRequestHistogram}: a count per bucket
    (the last one C{+Inf}) and the sum.
    """

    __slots__ = ("bounds", "counts", "sum", "created")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        # The first bucket whose bound is >= value: prometheus_client's
        # "le" rule; past every bound, +Inf.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class _PerRequestSeries:
    """
    What L{PerRequestCounter} and L{PerRequestHistogram} share: labelled
    children made on first use, collected as one family.  These series are
    fed on every request and read by C{GET /metrics}, both on the reactor's
    thread: their children are plain numbers, without the lock and checks
    C{prometheus_client}'s take per observation, and are exposed exactly as
    C{prometheus_client}'s own counter or histogram would be.
    """

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str):
        """
        @return: the child of label C{values}, made on first use.
        """
        child = self.children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}")
            child = self.children[values] = self._child()
        return child

    def _child(self) -> Any:
        raise NotImplementedError()

    def describe(self) -> list[Metric]:
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        raise NotImplementedError()


class PerRequestCounter(_PerRequestSeries):
    """
    A labelled counter (C{<name>_total}, and C{<name>_created}).
    """

    def _child(self) -> _Count:
        return _Count()

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        created = _createdSeries()
        for values, child in self.children.items():
            family.add_metric(values, child.value, created=child.created if created else None)
        yield family


class PerRequestHistogram(_PerRequestSeries):
    """
    A labelled histogram (C{_bucket} per bound and C{+Inf}, C{_count},
    C{_sum}, and C{<name>_created}).
    """

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str],
                 buckets: Iterable[float]) -> None:
        super().__init__(name, documentation, labelnames)
        self.bounds = tuple(float(b) for b in buckets)
        self._les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]

    def _child(self) -> _Observed:
        return _Observed(self.bounds)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        created = _createdSeries()
        for values, child in self.children.items():
            cumulative, total = [], 0.0
            for le, count in zip(self._les, child.counts):
                total += count
                cumulative.append((le, total))
            family.add_metric(values, cumulative, child.sum)
            if created:
                family.add_sample(self.name + "_created",
                                  dict(zip(self.labelnames, values)), child.created)
        yield family


class Metrics:
    """
    The Prometheus metrics of one server.  Every method is cheap and never
    raises into its caller's flow for ordinary values.

    @ivar registry: the L{CollectorRegistry} this object owns.
    """

    def __init__(self, monitor: Any = None) -> None:
        """
        @param monitor: the performance monitor whose latest sample is
            exported (see L{PerformanceCollector}); also settable later with
            L{attachMonitor}.
        """
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # The series fed on every request are plain numbers (see
        # _PerRequestSeries); the others are prometheus_client's own.
        self._requests = PerRequestCounter(
            "llamaswap_requests", "Requests on model routes, by answer status.",
            ["model", "route", "status"])
        r.register(self._requests)
        self._requestSeconds = PerRequestHistogram(
            "llamaswap_request_duration_seconds", "Request durations, arrival to last byte.",
            ["model", "route"], REQUEST_BUCKETS)
        r.register(self._requestSeconds)
        self._swaps = Counter(
            "llamaswap_swaps", "Model loads (swaps) completed.", ["model"], registry=r)
        self._swapSeconds = Histogram(
            "llamaswap_swap_duration_seconds", "Time from swap start to model ready.",
            ["model"], buckets=SWAP_BUCKETS, registry=r)
        self._state = Gauge(
            "llamaswap_model_state", "1 for the state each model is in, 0 for the others.",
            ["model", "state"], registry=r)
        self._tokens = PerRequestCounter(
            "llamaswap_tokens", "Tokens processed (input) and generated (output).",
            ["model", "kind"])
        r.register(self._tokens)
        self._queue = Gauge(
            "llamaswap_queue_depth", "Requests waiting for a model.", registry=r)
        self._phases = PerRequestHistogram(
            "llamaswap_phase_seconds", "Per-request phase durations.",
            ["model", "phase"], PHASE_BUCKETS)
        r.register(self._phases)
        self._states: dict[str, str] = {}
        self._requestChildren: dict[tuple, tuple] = {}
        self.performance = PerformanceCollector(monitor)
        r.register(self.performance)

    def attachMonitor(self, monitor: Any) -> None:
        """
        Export the system and GPU series of C{monitor} (L{None} to stop).
        """
        self.performance.monitor = monitor

    def requestDone(self, model: str, route: str, status: int | str, seconds: float) -> None:
        """
        A request on a model route ended with C{status} after C{seconds}.
        """
        key = (model, route, status)
        children = self._requestChildren.get(key)
        if children is None:
            children = self._requestChildren[key] = (
                self._requests.labels(model, route, str(status)),
                self._requestSeconds.labels(model, route))
        children[0].inc()
        children[1].observe(max(0.0, float(seconds)))

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
