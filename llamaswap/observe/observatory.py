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

import threading
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from zope.interface import implementer

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import (
    ILogObserver,
    formatEventAsClassicLogText,
    formatTime,
    Logger,
    LogLevel,
    globalLogPublisher,
)
from twisted.python import threadable

from llamaswap.interfaces import IRouterReport
from llamaswap.observe.captures import CaptureStore
from llamaswap.observe.events import (
    EventBus,
    EventsResource,
    initialBurst,
    publishActivity,
    publishLogs,
    publishPerformance,
)
from llamaswap.observe.exchange import ExchangeMeter
from llamaswap.observe.gpu import NvmlProbe
from llamaswap.observe.logs import LogHub, isUpstreamOutput, preformatted
from llamaswap.observe.logstream import LogStreams
from llamaswap.observe.performance import PerformanceMonitor
from llamaswap.observe.prom import Metrics, MetricsResource
from llamaswap.observe.system import SystemProbe
from llamaswap.observe.timing import PhaseTimer
from llamaswap.observe.activity import ActivityLog


class CoalescedFlush:
    """
    A text file written in bursts: the lines written to it are held and
    written (and the file flushed) together, C{delay} seconds after the
    first C{flush} since the last real one, at once when C{limit}
    characters are held, and at reactor shutdown.  Under load the access
    log's lines then leave in one C{write(2)} per burst, whether or not the
    file itself is buffered (with C{PYTHONUNBUFFERED}, as under many service
    managers, each write would be one).  Lines logged from other threads
    (the thread pool's work) are written at once.  A lock guards the held
    lines, so a line one thread appends while another takes them is never
    lost.
    """

    def __init__(self, wrapped, reactor, delay: float = 0.005, limit: int = 65536) -> None:
        self.wrapped = wrapped
        self.reactor = reactor
        self.delay = delay
        self.limit = limit
        self._pending = None
        self._held: list[str] = []
        self._size = 0
        self._lock = threading.Lock()
        trigger = getattr(reactor, "addSystemEventTrigger", None)
        if trigger is not None:
            trigger("after", "shutdown", self.flushNow)

    def write(self, data) -> Any:
        with self._lock:
            self._held.append(data)
            self._size += len(data)
            full = self._size >= self.limit
        if full:
            self._drain()
        return len(data)

    def flush(self) -> None:
        if self._pending is None:
            ioThread = threadable.ioThread
            if ioThread is not None and ioThread != threadable.getThreadID():
                # Not the reactor's thread: no timer can be set from here.
                self.flushNow()
                return
            self._pending = self.reactor.callLater(self.delay, self.flushNow)

    def _drain(self) -> None:
        with self._lock:
            held, self._held, self._size = self._held, [], 0
        if held:
            try:
                self.wrapped.write("".join(held))
            except (OSError, ValueError):
                pass

    def flushNow(self) -> None:
        """
        Write and flush what is held now.
        """
        pending, self._pending = self._pending, None
        if pending is not None and pending.active():
            pending.cancel()
        self._drain()
        try:
            self.wrapped.flush()
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


#: The runtime fields of a C{modelStatus} record, and their values while
#: nothing is known.
RUNTIME_DEFAULTS: dict[str, Any] = {
    "state": "stopped",
    "since": None,
    "inFlight": 0,
    "queued": 0,
    "pid": None,
    "port": None,
    "lastUsed": None,
    "unloadAt": None,
    "failure": None,
    "progress": None,
}

#: Load progress is published at most this often per model (seconds).
PROGRESS_INTERVAL = 0.5


#: Capability names the UI knows, and the spellings users write for them
#: in a model's C{metadata.capabilities} (config/config.example.yaml).
CAPABILITIES = {
    "chat": "chat", "completion": "chat", "completions": "chat", "text": "chat",
    "vision": "vision", "reasoning": "reasoning", "tools": "tools",
    "embedding": "embeddings", "embeddings": "embeddings",
    "image": "images", "images": "images", "image-generation": "images",
    "speech": "speech", "tts": "speech", "audio-speech": "speech",
    "transcription": "transcription", "stt": "transcription", "asr": "transcription",
    "rerank": "rerank", "reranking": "rerank",
}


def capabilitiesOf(metadata: Any) -> list[str]:
    """
    @param metadata: a model's C{metadata} mapping.
    @return: the capabilities it declares under C{capabilities} (a list,
        or a comma- or space-separated string), normalised by
        L{CAPABILITIES} (unknown names kept, lower-cased), in order.
    """
    declared = metadata.get("capabilities") if isinstance(metadata, dict) else None
    if isinstance(declared, str):
        declared = declared.replace(",", " ").split()
    if not isinstance(declared, (list, tuple)):
        return []
    out: list[str] = []
    for name in declared:
        key = str(name).strip().lower()
        if key:
            value = CAPABILITIES.get(key, key)
            if value not in out:
                out.append(value)
    return out


def _portOf(url: str) -> int | None:
    try:
        return urlsplit(url).port
    except ValueError:
        return None


_stamp: list = [None, "-"]


def _secondStamp(when: float | None) -> str:
    """
    @return: L{formatTime}'s default (RFC 3339, to the second) of C{when},
        computed once per second.
    """
    if when is None:
        return "-"
    second = int(when // 1)
    if _stamp[0] != second:
        _stamp[:] = [second, formatTime(when)]
    return _stamp[1]


def classicLogLine(event: dict) -> str | None:
    """
    @return: what twistd's text log observer writes for C{event}
        (L{formatEventAsClassicLogText} with its default time format).
        An event that carries its message formatted already (the access
        log's, one per request) is laid out here, without formatting it
        again: twisted's formatter parses the format string of every event.
    """
    text = preformatted(event)
    if text is None:
        return formatEventAsClassicLogText(event, formatTime=_secondStamp)
    system = event.get("log_system")
    if system is None:
        level = event.get("log_level")
        system = f"{event.get('log_namespace', '-')}#{level.name if level is not None else '-'}"
    text = f"{_secondStamp(event.get('log_time'))} [{system}] {text}"
    return text.replace("\n", "\n\t") + "\n"


def staticFacts(config, modelId: str) -> dict[str, Any]:
    """
    @return: the facts of a model's C{modelStatus} record that come from
        the config: C{ttl} (seconds, 0 never), C{group} (its swap group's
        id, or L{None} under a matrix), C{matrixSets} (names of the matrix
        sets it belongs to), C{proxy}, C{proxyPort}, C{capabilities}
        (L{capabilitiesOf}) and C{metadata}.
    """
    model = config.models[modelId]
    swap = config.swap
    group = None
    sets: list[str] = []
    if hasattr(swap, "groupOf"):
        group = swap.groupOf(modelId).id
    else:
        sets = sorted({s.name for s in getattr(swap, "expanded", ()) if modelId in s.models})
    return {
        "ttl": model.ttl,
        "group": group,
        "matrixSets": sets,
        "proxy": model.proxy,
        "proxyPort": model.port if model.port is not None else _portOf(model.proxy),
        "capabilities": capabilitiesOf(model.metadata),
        "metadata": model.metadata,
    }


@implementer(ILogObserver)
class _Shaped:
    """
    An observer twistd installed, given only the events C{wanted} lets
    through (one predicate, so no L{twisted.logger.FilteringLogObserver}).
    """

    __slots__ = ("original", "wanted")

    def __init__(self, original: Callable[[dict], None], wanted: Callable[[dict], bool]) -> None:
        self.original = original
        self.wanted = wanted

    def __call__(self, event: dict) -> None:
        if self.wanted(event):
            self.original(event)


@implementer(IRouterReport)
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
        self._probes = (systemProbe, gpuProbe)
        self.performance = self._monitor(config)
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
        self._unsubscribePerformance: Callable[[], None] | None = None
        self._shapeOwnLog = shapeOwnLog
        self._shaped: list[tuple[Any, Any]] = []
        self._runtime: dict[str, dict[str, Any]] = {}
        self._progressAt: dict[str, float] = {}
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
            self._followPerformance()
            self.performance.startService()

    def _followPerformance(self) -> None:
        """
        Publish the current monitor's samples on the bus (and no longer
        those of a monitor it replaced).
        """
        self._unfollowPerformance()
        if self.performance is not None:
            self._unsubscribePerformance = publishPerformance(self.bus, self.performance)

    def _unfollowPerformance(self) -> None:
        unsubscribe, self._unsubscribePerformance = self._unsubscribePerformance, None
        if unsubscribe is not None:
            unsubscribe()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._publisher.removeObserver(self._observer)
        for original, shaped in self._shaped:
            self._publisher.removeObserver(shaped)
            self._publisher.addObserver(original)
            outFile = getattr(original, "_outFile", None)
            if isinstance(outFile, CoalescedFlush):
                outFile.flushNow()
                original._outFile = outFile.wrapped
        self._shaped = []
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        self._unfollowPerformance()
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

        def wanted(event: dict) -> bool:
            if isUpstreamOutput(event):
                return True
            return proxyLines and event.get("log_level", LogLevel.info) >= level

        for original in list(getattr(self._publisher, "_observers", [])):
            outFile = getattr(original, "_outFile", None)
            if outFile is not None and not isinstance(outFile, CoalescedFlush):
                # twistd's stdout observer flushes after every line: one
                # write(2) per access-log line under load.  Flush at most
                # every few milliseconds instead.
                original._outFile = CoalescedFlush(outFile, self.reactor)
            if getattr(getattr(original, "formatEvent", None), "__qualname__", "") == \
                    "textFileLogObserver.<locals>.formatEvent":
                # twistd's default format, its timestamp made once a second.
                original.formatEvent = classicLogLine
            shaped = _Shaped(original, wanted)
            self._publisher.removeObserver(original)
            self._publisher.addObserver(shaped)
            self._shaped.append((original, shaped))

    def reconfigure(self, config) -> None:
        """
        A reload switched to C{config}: the UI's model list follows it, and
        so do C{captureBuffer} and C{performance} (the monitor is replaced
        when its settings changed).  Log buffer sizes keep what they
        started with.
        """
        old, self.config = self.config, config
        for modelId in list(self._runtime):
            if modelId not in config.models:
                del self._runtime[modelId]
        if config.captureBuffer != old.captureBuffer:
            self.captures.resize(max(0, int(config.captureBuffer)) * 1048576)
        if config.performance != old.performance:
            self._replacePerformance(config)
        self._publishStatus()

    def _monitor(self, config) -> PerformanceMonitor | None:
        if config.performance.disabled:
            return None
        systemProbe, gpuProbe = self._probes
        return PerformanceMonitor(
            systemProbe if systemProbe is not None else SystemProbe(),
            gpuProbe if gpuProbe is not None else NvmlProbe(),
            self.reactor,
            every=config.performance.every,
        )

    def _replacePerformance(self, config) -> None:
        previous = self.performance
        if previous is not None and previous.running:
            previous.stopService().addErrback(
                lambda f: self.log.failure("stopping the performance monitor", f))
        self._unfollowPerformance()
        self.performance = self._monitor(config)
        if self.performance is not None and self.running:
            self._followPerformance()
            self.performance.startService()
        self.gpu = self.performance
        self.metrics.attachMonitor(self.performance)
        self.metricsResource.enabled = self.performance is not None

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
        fields: dict[str, Any] = {"state": new, "since": self.reactor.seconds()}
        if new in ("stopped", "failed"):
            fields.update(pid=None, progress=None, unloadAt=None, inFlight=0)
        if new == "starting":
            fields["failure"] = None
        self.metrics.stateChanged(modelId, new)
        self._update(modelId, **fields)

    def runtime(self, modelId: str) -> dict[str, Any]:
        """
        @return: the runtime fields of C{modelId}'s C{modelStatus} record
            (see L{RUNTIME_DEFAULTS}), a copy.
        """
        return {**RUNTIME_DEFAULTS, **self._runtime.get(modelId, {})}

    def _update(self, modelId: str, publish: bool = True, **fields: Any) -> None:
        changed = False
        for field, value in fields.items():
            changed = self._set(modelId, field, value) or changed
        if changed and publish:
            self._publishStatus()

    def _publishStatus(self) -> None:
        """
        Publish the UI's model list (not even built while no UI listens).
        """
        if self.bus.listening:
            self.bus.publish("modelStatus", self.modelStatus())

    # -- fed by the router (IRouterReport) -----------------------------------

    def stopBegan(self, modelId: str, why: str) -> None:
        self._update(modelId, stopReason=why, publish=False)

    def stopEnded(self, modelId: str) -> None:
        self._update(modelId, pid=None, progress=None, unloadAt=None)

    def loadBegan(self, modelId: str, pid: Optional[int], port: Optional[int]) -> None:
        self._progressAt.pop(modelId, None)
        self._update(modelId, pid=pid, port=port, failure=None)

    def ready(self, modelId: str, seconds: float) -> None:
        self._update(modelId, progress=None, lastLoad=seconds, publish=False)
        self._publishStatus()

    def failed(self, modelId: str, failure: dict) -> None:
        self._update(modelId, failure=failure, progress=None)

    def _set(self, modelId: str, field: str, value: Any) -> bool:
        """
        Set one runtime field of C{modelId} (L{_update} sets several; the
        reports every request makes set one or two, without its keywords).

        @return: whether it changed.
        """
        record = self._runtime.get(modelId)
        if record is None:
            record = self._runtime[modelId] = {}
        old = record.get(field, RUNTIME_DEFAULTS.get(field))
        record[field] = value
        return old != value

    def inFlight(self, modelId: str, count: int, total: int) -> None:
        if self._set(modelId, "inFlight", count):
            self._publishStatus()
        if total != self._inflight:
            self._inflight = total
            if self.bus.listening:
                self.bus.publish("inflight", {"total": total})

    def queueDepth(self, modelId: str, queued: int, total: int) -> None:
        self.metrics.queueDepth(total)
        self._update(modelId, queued=queued)

    def idle(self, modelId: str, lastUsed: Optional[float], unloadAt: Optional[float]) -> None:
        changed = self._set(modelId, "lastUsed", lastUsed)
        if self._set(modelId, "unloadAt", unloadAt) or changed:
            self._publishStatus()

    def progress(self, modelId: str, progress: Optional[dict]) -> None:
        """
        Published at most every L{PROGRESS_INTERVAL} seconds per model
        (always when it ends).
        """
        now = self.reactor.seconds()
        last = self._progressAt.get(modelId)
        throttled = progress is not None and last is not None and now - last < PROGRESS_INTERVAL
        self._update(modelId, progress=progress, publish=not throttled)
        if not throttled:
            self._progressAt[modelId] = now

    def swapDone(self, modelId: str, seconds: float) -> None:
        self.metrics.swapDone(modelId, seconds)

    # -- read by the UI -------------------------------------------------------

    def inflight(self) -> int:
        return self._inflight

    #: Returns a local model's C{memory} field (C{needBytes}, C{source},
    #: C{budgetLeftBytes}) or L{None}; set when the memory planner is on.
    memoryRecord: Callable[[str], dict[str, Any] | None] | None = None

    def modelsChanged(self) -> None:
        """
        Something shown in the model list changed (a model's memory need
        or the budget left): publish it again.
        """
        self._publishStatus()

    def modelStatus(self) -> list[dict[str, Any]]:
        """
        @return: the UI's model list: local models sorted by id with their
            state (and, with the memory planner, their C{memory} field),
            then peer models (SPEC.md section 3.9).
        """
        records = []
        for modelId, model in sorted(self.config.models.items()):
            runtime = self.runtime(modelId)
            record = {
                "id": modelId,
                "name": model.name,
                "description": model.description,
                "unlisted": model.unlisted,
                "peerID": "",
            }
            record.update((k, runtime[k]) for k in RUNTIME_DEFAULTS)
            if model.aliases:
                record["aliases"] = list(model.aliases)
            record.update(staticFacts(self.config, modelId))
            memory = self.memoryRecord(modelId) if self.memoryRecord is not None else None
            if memory is not None:
                record["memory"] = memory
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
