"""
Everything llamaswap shows about itself, in one service: log buffers and
streams, the UI's event bus, token metrics (activity), captures, Prometheus
metrics and the GPU monitor.

The service tree builds one L{Observatory} from the config and hands it to
the pieces that feed it (upstream machines, the router, the relay) and to
the web routes that read it.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger, globalLogPublisher

from llamaswap.observe.captures import CaptureStore
from llamaswap.observe.events import (
    EventBus,
    EventsResource,
    initialBurst,
    publishActivity,
    publishLogs,
)
from llamaswap.observe.exchange import ExchangeMeter
from llamaswap.observe.gpu import GpuMonitor, NvmlProbe
from llamaswap.observe.logs import LogHub
from llamaswap.observe.logstream import LogStreams
from llamaswap.observe.prom import Metrics, MetricsResource
from llamaswap.observe.timing import PhaseTimer
from llamaswap.observe.tokens import ActivityLog


class Observatory(Service):
    """
    Owns the observability state of one running llamaswap.

    @param config: the validated L{llamaswap.config.Config}.
    @param reactor: the clock, and the thread pool of the GPU monitor.
    @param gpuProbe: an L{IGpuProbe} (NVML by default).
    @param publisher: where proxy log events come from (the global log
        publisher by default).
    """

    log = Logger()
    name = "observatory"

    def __init__(self, config, reactor, gpuProbe=None, publisher=None) -> None:
        self.config = config
        self.reactor = reactor
        self.hub = LogHub(config.logToStdout)
        self.bus = EventBus()
        self.captures = CaptureStore.fromConfig(config.captureBuffer)
        self.activity = ActivityLog(config.metricsMaxInMemory, reactor, self.captures)
        self.gpu: GpuMonitor | None = None
        if not config.performance.disabled:
            self.gpu = GpuMonitor(
                gpuProbe if gpuProbe is not None else NvmlProbe(),
                reactor,
                interval=config.performance.every,
            )
        self.metrics = Metrics(gpu=self.gpu)
        self.streams = LogStreams(reactor)
        self.events = EventsResource(
            self.bus, initialBurst(self.hub, self.modelStatus, self.activity, self.inflight)
        )
        self.metricsResource = MetricsResource(
            self.metrics, enabled=not config.performance.disabled
        )
        self._publisher = publisher if publisher is not None else globalLogPublisher
        self._observer = self.hub.proxyObserver(config.logLevel, config.logTimeFormat)
        self._unsubscribe: list[Callable[[], None]] = []
        self._states: dict[str, str] = {}
        self._inflight = 0

    # -- IService -----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._publisher.addObserver(self._observer)
        self._unsubscribe = [
            publishLogs(self.bus, self.hub.proxy, self.hub.upstream),
            publishActivity(self.bus, self.activity),
        ]
        if self.gpu is not None:
            self.gpu.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._publisher.removeObserver(self._observer)
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        self.streams.close()
        self.events.close()
        if self.gpu is not None and self.gpu.running:
            return self.gpu.stopService()
        return succeed(None)

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
