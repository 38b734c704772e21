# -*- test-case-name: tests.test_observe_observatory -*-
"""
Everything llamaswap shows about itself, in one service: log buffers and
streams, the UI's event bus, token metrics (activity), captures, Prometheus
metrics and the performance (system and GPU) monitor.

The service tree builds one L{Observatory} from the config and hands it to
the pieces that feed it (upstream machines, the router, the relay) and to
the web routes that read it.
"""

from __future__ import annotations

from typing import Any, Callable, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    Logger,
    LogLevel,
    PredicateResult,
    globalLogPublisher,
)

from llamaswap.observe.captures import CaptureStore
from llamaswap.observe.events import (
    EventBus,
    EventsResource,
    initialBurst,
    publishActivity,
    publishLogs,
)
from llamaswap.observe.exchange import ExchangeMeter
from llamaswap.observe.gpu import NvmlProbe
from llamaswap.observe.logs import LogHub, isUpstreamOutput
from llamaswap.observe.logstream import LogStreams
from llamaswap.observe.performance import PerformanceMonitor
from llamaswap.observe.prom import Metrics, MetricsResource
from llamaswap.observe.system import SystemProbe
from llamaswap.observe.timing import PhaseTimer
from llamaswap.observe.tokens import ActivityLog


class Observatory(Service):
    """
    Owns the observability state of one running llamaswap.

    @param config: the validated L{llamaswap.config.Config}.
    @param reactor: the clock, and the thread pool of the performance
        monitor.
    @param gpuProbe: an L{IGpuProbe} (NVML by default).
    @param publisher: where proxy log events come from (the global log
        publisher by default).
    @param shapeOwnLog: also apply C{logLevel} and C{logToStdout} to the
        observers already on C{publisher} (twistd's stdout or log file),
        for as long as the service runs; only the daemon asks for this.
    @param systemProbe: the host statistics probe (a
        L{SystemProbe} over C{/proc} by default).

    @ivar performance: the L{PerformanceMonitor}, or L{None} with
        C{performance.disabled}.
    @ivar gpu: the same monitor (it polls the GPUs), kept for callers of
        the former GPU-only monitor.
    """

    log = Logger()
    name = "observatory"  # type: ignore[assignment]  # Twisted types Service.name as None

    def __init__(self, config, reactor, gpuProbe=None, publisher=None,
                 shapeOwnLog: bool = False, systemProbe=None) -> None:
        self.config = config
        self.reactor = reactor
        self.hub = LogHub(config.logToStdout)
        self.bus = EventBus()
        self.captures = CaptureStore.fromConfig(config.captureBuffer)
        self.activity = ActivityLog(config.metricsMaxInMemory, reactor, self.captures)
        self.performance: PerformanceMonitor | None = None
        if not config.performance.disabled:
            self.performance = PerformanceMonitor(
                systemProbe if systemProbe is not None else SystemProbe(),
                gpuProbe if gpuProbe is not None else NvmlProbe(),
                reactor,
                every=config.performance.every,
            )
        self.gpu = self.performance
        self.metrics = Metrics(self.performance)
        self.streams = LogStreams(reactor)
        self.events = EventsResource(
            self.bus, initialBurst(self.hub, self.modelStatus, self.activity, self.inflight)
        )
        self.metricsResource = MetricsResource(
            self.metrics, enabled=self.performance is not None
        )
        self._publisher = publisher if publisher is not None else globalLogPublisher
        self.log = Logger(source=self, observer=self._publisher)
        self._observer = self.hub.proxyObserver(config.logLevel, config.logTimeFormat)
        self._unsubscribe: list[Callable[[], None]] = []
        self._shapeOwnLog = shapeOwnLog
        self._shaped: list[tuple[Any, Any]] = []
        self._states: dict[str, str] = {}
        self._inflight = 0

    # -- IService -----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self._shapeOwnLog:
            self._shapeObservers()
        self._publisher.addObserver(self._observer)
        self._unsubscribe = [
            publishLogs(self.bus, self.hub.proxy, self.hub.upstream),
            publishActivity(self.bus, self.activity),
        ]
        if self.performance is not None:
            self.performance.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._publisher.removeObserver(self._observer)
        for original, shaped in self._shaped:
            self._publisher.removeObserver(shaped)
            self._publisher.addObserver(original)
        self._shaped = []
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        self.streams.close()
        self.events.close()
        if self.performance is not None and self.performance.running:
            return self.performance.stopService()
        return succeed(None)

    def _shapeObservers(self) -> None:
        """
        Wrap the observers twistd installed so that they see what the
        reference's stdout would: with C{logToStdout} C{proxy} or C{both},
        llamaswap's lines at C{logLevel} or above; with C{upstream} or
        C{both}, model output (which L{upstreamOutput} logs only then).
        """
        level = LogLevel.levelWithName(
            {"warn": "warn", "error": "error", "debug": "debug"}.get(self.config.logLevel, "info"))
        proxyLines = self.config.logToStdout in ("proxy", "both")

        def wanted(event: dict) -> PredicateResult:
            if isUpstreamOutput(event):
                return PredicateResult.yes
            if proxyLines and event.get("log_level", LogLevel.info) >= level:
                return PredicateResult.maybe
            return PredicateResult.no

        for original in list(getattr(self._publisher, "_observers", [])):
            shaped = FilteringLogObserver(original, [cast(ILogFilterPredicate, wanted)])
            self._publisher.removeObserver(original)
            self._publisher.addObserver(shaped)
            self._shaped.append((original, shaped))

    def reconfigure(self, config) -> None:
        """
        A reload switched to C{config}: the UI's model list follows it.
        (Buffer sizes, captures and the performance monitor keep the
        settings they started with.)
        """
        self.config = config
        for modelId in list(self._states):
            if modelId not in config.models:
                del self._states[modelId]
        self.bus.publish("modelStatus", self.modelStatus())

    # -- fed by the upstream machines ---------------------------------------

    def upstreamOutput(self, modelId: str, stream: str, line: str) -> None:
        """
        One line of a model's output: into its log buffers, and into
        llamaswap's own log when C{logToStdout} asks for upstream output.
        """
        self.hub.writeUpstream(modelId, line)
        if self.config.logToStdout in ("upstream", "both"):
            self.log.info("[{model}] {line}", model=modelId, stream=stream, line=line)

    def stateChanged(self, modelId: str, old: str, new: str) -> None:
        """
        A model's upstream changed state: Prometheus and the UI hear of it.
        """
        self._states[modelId] = new
        self.metrics.stateChanged(modelId, new)
        self.bus.publish("modelStatus", self.modelStatus())

    # -- fed by the router (the methods of its RouterObserver) --------------

    def swapDone(self, modelId: str, seconds: float) -> None:
        self.metrics.swapDone(modelId, seconds)

    def inflightChanged(self, total: int) -> None:
        self._inflight = total
        self.bus.publish("inflight", {"total": total})

    def queueDepth(self, depth: int) -> None:
        self.metrics.queueDepth(depth)

    # -- read by the UI -------------------------------------------------------

    def inflight(self) -> int:
        return self._inflight

    def modelStatus(self) -> list[dict[str, Any]]:
        """
        @return: the UI's model list: local models sorted by id with their
            state, then peer models (SPEC.md section 3.9).
        """
        records = []
        for modelId, model in sorted(self.config.models.items()):
            record = {
                "id": modelId,
                "name": model.name,
                "description": model.description,
                "state": self._states.get(modelId, "stopped"),
                "unlisted": model.unlisted,
                "peerID": "",
            }
            if model.aliases:
                record["aliases"] = list(model.aliases)
            records.append(record)
        for peerId, peer in sorted(self.config.peers.items()):
            for name in peer.models:
                records.append({"id": name, "name": name, "description": "",
                                "state": "ready", "unlisted": False, "peerID": peerId})
        return records

    # -- fed by the relay -----------------------------------------------------

    def meter(self, modelId: str, path: str, route: str, headers, body: bytes | None,
              lease) -> ExchangeMeter:
        """
        @return: the L{ExchangeMeter} of one relayed request: token
            metrics, activity entry, capture, Prometheus series, and the
            phases of its C{Server-Timing} header (from its router C{lease}).
        """
        timer = PhaseTimer.fromLease(self.reactor, lease.arrived, lease.dispatched, lease.phases)
        return ExchangeMeter(
            modelId, path, self.reactor, self.activity, captures=self.captures,
            metrics=self.metrics, route=route, reqHeaders=headers, reqBody=body, timer=timer,
        )
