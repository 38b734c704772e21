# -*- test-case-name: tests.test_observe_performance -*-
"""
The performance monitor (SPEC.md sections 2.1, 3.9, 6.4): one poller that
samples the host (L{llamaswap.observe.system.SystemProbe}) and the GPUs
(L{llamaswap.observe.gpu.NvmlProbe}) every C{performance.every} seconds,
off the reactor thread, and keeps one hour of samples for
C{GET /api/performance} (L{llamaswap.web.performance.PerformanceResource}) and the latest one for
C{/metrics} (L{llamaswap.observe.prom.PerformanceCollector}).  Subscribers
(L{PerformanceMonitor.subscribe}) hear of each new sample as it is stored:
the UI's event stream carries them as C{performance} messages.

With C{performance.disabled} there is no monitor at all; both routes answer
503.
"""

from __future__ import annotations

import re
from collections import deque
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, Callable

import attr
from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from llamaswap.observe._time import rfc3339Nano
from llamaswap.observe.subscribers import Subscribers

#: Bytes in the reference's "MB".
MB = 1048576

#: How long samples are kept (SPEC.md section 2.1).
KEEP_SECONDS = 3600.0

INVALID_AFTER = "invalid 'after' timestamp, use RFC3339 format"
NOT_AVAILABLE = "performance monitor not available"

_FAILED = object()

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?"
    r"(?:(Z)|([+\- ])(\d{2}):(\d{2}))\Z")


def toMB(n: int | float | None) -> int:
    """
    @return: C{n} bytes in whole MB (MiB, rounded down); 0 for L{None}.
    """
    if n is None:
        return 0
    return int(n) // MB


def parseRFC3339(text: str) -> datetime:
    """
    Parse an RFC 3339 timestamp as Go's C{time.Parse(time.RFC3339, …)}
    does: a date, C{T}, a time with optional fraction (digits beyond
    microseconds are dropped, so that "strictly after" still holds for
    samples, which have microsecond precision), and C{Z} or an offset.  A
    space where the offset's C{+} should be is read as C{+}: that is what an
    unescaped C{+} in a query string becomes.

    @return: an aware L{datetime}.
    @raise ValueError: C{text} is not such a timestamp.
    """
    m = _RFC3339.match(text)
    if m is None:
        raise ValueError("not an RFC 3339 timestamp: {!r}".format(text))
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    fraction = m.group(7) or ""
    micro = int((fraction + "000000")[:6])
    if m.group(8):
        zone: tzinfo = timezone.utc
    else:
        hours, minutes = int(m.group(10)), int(m.group(11))
        if hours > 23 or minutes > 59:
            raise ValueError("bad zone offset in {!r}".format(text))
        offset = timedelta(hours=hours, minutes=minutes)
        zone = timezone(-offset if m.group(9) == "-" else offset)
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=zone)


def systemStat(timestamp: str, system: dict[str, Any]) -> dict[str, Any]:
    """
    @param system: a L{SystemProbe.sample
        <llamaswap.observe.system.SystemProbe.sample>} dict.
    @return: its C{sys_stats} record (SPEC.md section 6.4).
    """
    load = tuple(system.get("load") or (0.0, 0.0, 0.0))
    return {
        "timestamp": timestamp,
        "cpu_util_per_core": [float(v) for v in system.get("cpuPerCore") or []],
        "mem_total_mb": toMB(system.get("memoryTotal")),
        "mem_used_mb": toMB(system.get("memoryUsed")),
        "mem_free_mb": toMB(system.get("memoryFree")),
        "swap_total_mb": toMB(system.get("swapTotal")),
        "swap_used_mb": toMB(system.get("swapUsed")),
        "load_avg_1": float(load[0]),
        "load_avg_5": float(load[1]),
        "load_avg_15": float(load[2]),
        "net_io": [{"name": n["name"], "bytes_recv": int(n["recv"]),
                    "bytes_sent": int(n["sent"])} for n in system.get("network") or []],
    }


def _number(value: Any) -> float:
    return 0.0 if value is None else float(value)


def gpuStat(timestamp: str, gpu: dict[str, Any]) -> dict[str, Any]:
    """
    @param gpu: one GPU of an L{NvmlProbe.sample
        <llamaswap.observe.gpu.NvmlProbe.sample>}.
    @return: its C{gpu_stats} record (SPEC.md section 6.4).  A value the
        GPU does not report is 0, as in the reference (the UI shows the
        VRAM temperature chart only when some C{vram_temp_c > 0}).
    """
    return {
        "timestamp": timestamp,
        "id": int(gpu.get("id") or 0),
        "name": str(gpu.get("name") or ""),
        "uuid": str(gpu.get("uuid") or ""),
        "temp_c": _number(gpu.get("temperature")),
        "vram_temp_c": _number(gpu.get("vramTemperature")),
        "gpu_util_pct": _number(gpu.get("utilization")),
        "mem_util_pct": _number(gpu.get("memoryUtilization")),
        "mem_used_mb": toMB(gpu.get("memoryUsed")),
        "mem_total_mb": toMB(gpu.get("memoryTotal")),
        "fan_speed_pct": _number(gpu.get("fanSpeed")),
        "power_draw_w": _number(gpu.get("powerDraw")),
    }


@attr.s(frozen=True, auto_attribs=True)
class PerformanceSample:
    """
    One poll's results.

    @ivar when: the clock's seconds (POSIX time) when the poll began.
    @ivar at: C{when} as an aware UTC L{datetime} (microseconds).
    @ivar system: the system probe's dict, or L{None} (unavailable, or
        its sample failed).
    @ivar gpus: the GPU probe's per-GPU dicts (empty without GPUs).
    @ivar sysStat: C{system} as a C{sys_stats} record, or L{None}.
    @ivar gpuStats: C{gpus} as C{gpu_stats} records.
    """

    when: float
    at: datetime
    system: dict[str, Any] | None
    gpus: tuple[dict[str, Any], ...]
    sysStat: dict[str, Any] | None
    gpuStats: tuple[dict[str, Any], ...]


class _Source:
    """
    One probe polled by the monitor, and how its samples have gone.
    """

    def __init__(self, what: str, probe: Any) -> None:
        self.what = what
        self.probe = probe
        self.off = probe is None
        self.failing = 0

    @property
    def unavailable(self) -> bool:
        return getattr(self.probe, "available", True) is False


class PerformanceMonitor(Service):
    """
    Polls a system probe and a GPU probe every C{every} seconds, each in a
    thread, starting when the service starts; keeps an hour of samples.

    A failing sample is logged (with its traceback the first time in a
    row, then at debug level until it succeeds again) and the polling goes
    on.  A probe that reports itself unavailable (C{probe.available is
    False}) after a poll is not polled again until the next start, logged
    once; when neither is left, the polling stops.

    @ivar polls: polls done.  @ivar failures: probe samples that failed.
    """

    log = Logger()

    def __init__(self, systemProbe: Any, gpuProbe: Any, reactor: IReactorTime,
                 every: float = 5.0,
                 deferToThread: Callable[..., Deferred] | None = None,
                 keepSeconds: float = KEEP_SECONDS, tz: tzinfo | None = None) -> None:
        """
        @param systemProbe: a L{llamaswap.observe.system.SystemProbe} (or
            anything with a blocking C{sample()} returning such a dict or
            L{None}); L{None} for none.
        @param gpuProbe: an L{IGpuProbe <llamaswap.interfaces.IGpuProbe>};
            L{None} for none.  Its C{shutdown()}, if any, runs (in a
            thread) when the service stops.
        @param reactor: schedules the polls and gives their time; its
            thread pool runs the probes unless C{deferToThread} is given.
        @param every: seconds between polls (C{performance.every}).
        @param deferToThread: runs a blocking call in a thread and returns
            a L{Deferred} of its result.
        @param keepSeconds: how old a kept sample may get.
        @param tz: the zone of the C{timestamp} texts; the local zone by
            default, as the reference prints them.
        """
        self.reactor = reactor
        self.every = every
        self.keepSeconds = keepSeconds
        self.tz = tz
        if deferToThread is None:
            deferToThread = _threadRunner(reactor)
        self._deferToThread = deferToThread
        self._system = _Source("System", systemProbe)
        self._gpu = _Source("GPU", gpuProbe)
        self._samples: deque[PerformanceSample] = deque()
        self._latestSystem: dict[str, Any] | None = None
        self._latestGpus: tuple[dict[str, Any], ...] = ()
        self._latestWhen: float | None = None
        self._loop: LoopingCall | None = None
        self._inFlight: Deferred[None] | None = None
        self._subscribers = Subscribers()
        self.polls = 0
        self.failures = 0

    @property
    def systemProbe(self) -> Any:
        return self._system.probe

    @property
    def gpuProbe(self) -> Any:
        return self._gpu.probe

    # -- IService -------------------------------------------------------------

    def startService(self) -> None:
        """
        Poll now, then every C{every} seconds.
        """
        super().startService()
        if self._loop is not None and self._loop.running:
            return
        for source in (self._system, self._gpu):
            source.off = source.probe is None
        self._loop = LoopingCall(self.poll)
        self._loop.clock = self.reactor
        self._loop.start(self.every, now=True).addErrback(
            lambda f: self.log.failure("Performance polling stopped", f))

    def stopService(self) -> Deferred[None]:
        """
        Stop polling.

        @return: a L{Deferred} that fires with L{None} once a poll in
            progress has ended and the GPU probe has been shut down (in a
            thread); it never fails.
        """
        super().stopService()
        self._stopLoop()
        done = self._whenSettled()

        def shutdown(_: object) -> object:
            shutdownProbe = getattr(self._gpu.probe, "shutdown", None)
            if shutdownProbe is None:
                return None
            return self._deferToThread(shutdownProbe)

        done.addCallback(shutdown)
        done.addErrback(lambda f: self.log.failure("GPU probe shutdown failed", f))
        done.addCallback(lambda _: None)
        return done

    def _whenSettled(self) -> Deferred[None]:
        """
        @return: a new L{Deferred} that fires with L{None} once the poll in
            progress (if any) has ended.
        """
        settled: Deferred[None] = Deferred()
        if self._inFlight is None:
            settled.callback(None)
        else:
            def fire(result: object) -> object:
                settled.callback(None)
                return result

            self._inFlight.addBoth(fire)
        return settled

    def _stopLoop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    # -- polling --------------------------------------------------------------

    def poll(self) -> Deferred[None]:
        """
        Sample every probe still on, each in a thread, and store the
        results as one sample stamped with the time the poll began.

        @return: a L{Deferred} that fires with L{None} once the sample is
            stored (failures logged); it never fails.  While a poll is in
            progress, no other starts: the L{Deferred} fires when that one
            ends.
        """
        if self._inFlight is not None:
            return self._whenSettled()
        self.polls += 1
        when = self.reactor.seconds()
        sources = [s for s in (self._system, self._gpu) if not s.off]
        d: Deferred[Any] = gatherResults([self._sample(s) for s in sources])
        names = [s.what for s in sources]
        d.addCallback(lambda results: self._store(when, dict(zip(names, results))))
        d.addCallback(lambda _: self._checkAvailability(sources))
        d.addErrback(lambda f: self.log.failure("Performance poll failed", f))
        d.addBoth(self._settled)
        if not d.called:
            self._inFlight = d
        return d

    def _settled(self, _: object) -> None:
        self._inFlight = None

    def _sample(self, source: _Source) -> Deferred:
        """
        @return: a L{Deferred} of C{source}'s sample, or of L{_FAILED}
            (logged); it never fails.
        """
        try:
            d = self._deferToThread(source.probe.sample)
        except Exception:
            d = Deferred()
            d.errback(Failure())

        def ok(result: Any) -> Any:
            if source.failing:
                self.log.info("{what} samples resumed after {n} failures",
                              what=source.what, n=source.failing)
                source.failing = 0
            return result

        def failed(failure: Failure) -> object:
            self.failures += 1
            source.failing += 1
            if source.failing == 1:
                self.log.failure("{what} sample failed", failure, what=source.what)
            else:
                self.log.debug("{what} sample failed again ({n} in a row): {error}",
                               what=source.what, n=source.failing, error=failure.value)
            return _FAILED

        return d.addCallbacks(ok, failed)

    def _store(self, when: float, results: dict[str, Any]) -> None:
        system = results.get("System", _FAILED)
        gpus = results.get("GPU", _FAILED)
        if system is not _FAILED:
            self._latestSystem = system
        if gpus is not _FAILED:
            self._latestGpus = tuple(gpus or ())
        self._latestWhen = when
        system = None if system is _FAILED else system
        gpus = () if gpus is _FAILED else tuple(gpus or ())
        self._prune(when)
        if system is None and not gpus:
            return
        timestamp = rfc3339Nano(when, self.tz)
        sample = PerformanceSample(
            when=when,
            at=datetime.fromtimestamp(when, timezone.utc),
            system=system,
            gpus=gpus,
            sysStat=None if system is None else systemStat(timestamp, system),
            gpuStats=tuple(gpuStat(timestamp, gpu) for gpu in gpus),
        )
        self._samples.append(sample)
        self._notify(sample)

    def _notify(self, sample: PerformanceSample) -> None:
        for callback in list(self._subscribers):
            try:
                callback(sample)
            except Exception:
                self._subscribers.discard(callback)
                self.log.failure("performance subscriber failed; unsubscribed")

    def subscribe(self, callback: Callable[[PerformanceSample], object]) -> Callable[[], None]:
        """
        Call C{callback(sample)} with every later L{PerformanceSample} as
        it is stored (a poll in which every probe failed stores none).  A
        callback that raises is logged and unsubscribed.

        @return: a function that unsubscribes; calling it again does
            nothing.
        """
        return self._subscribers.add(callback)

    def _checkAvailability(self, sources: list[_Source]) -> None:
        for source in sources:
            if source.unavailable and not source.off:
                source.off = True
                if source is self._gpu:
                    self._latestGpus = ()
                else:
                    self._latestSystem = None
                self.log.info("{what} monitoring off: {reason}", what=source.what,
                              reason=getattr(source.probe, "reason", "") or "unavailable")
        if self._system.off and self._gpu.off:
            self._stopLoop()

    def _prune(self, now: float) -> None:
        samples = self._samples
        while samples and now - samples[0].when > self.keepSeconds:
            samples.popleft()

    # -- reading ---------------------------------------------------------------

    def samples(self, after: datetime | None = None) -> list[PerformanceSample]:
        """
        @param after: an aware L{datetime} (a naive one is read as UTC), or
            L{None} for every kept sample.
        @return: the kept samples strictly after C{after}, oldest first.
        """
        self._prune(self.reactor.seconds())
        if after is None:
            return list(self._samples)
        if after.tzinfo is None:
            after = after.replace(tzinfo=timezone.utc)
        return [s for s in self._samples if s.at > after]

    def snapshot(self, after: datetime | None = None) -> dict[str, list[dict[str, Any]]]:
        """
        @param after: see L{samples}.
        @return: C{{"sys_stats": [...], "gpu_stats": [...]}}, the body of
            C{GET /api/performance} (SPEC.md sections 3.9 and 6.4): the
            kept samples strictly after C{after}, oldest first, one
            C{gpu_stats} record per GPU per sample.  The records are shared
            with the monitor: do not change them.
        """
        sysStats = []
        gpuStats: list[dict[str, Any]] = []
        for sample in self.samples(after):
            if sample.sysStat is not None:
                sysStats.append(sample.sysStat)
            gpuStats.extend(sample.gpuStats)
        return {"sys_stats": sysStats, "gpu_stats": gpuStats}

    def latest(self) -> PerformanceSample | None:
        """
        @return: the latest reading of each probe, for C{/metrics}: a
            L{PerformanceSample} whose C{system} is the latest successful
            system sample (L{None} if none, or the probe is unavailable)
            and whose C{gpus} the latest GPU sample (empty without GPUs);
            L{None} before the first poll has ended.
        """
        if self._latestWhen is None:
            return None
        when = self._latestWhen
        return PerformanceSample(
            when=when, at=datetime.fromtimestamp(when, timezone.utc),
            system=self._latestSystem, gpus=self._latestGpus,
            sysStat=None, gpuStats=())


def _threadRunner(reactor: Any) -> Callable[..., Deferred]:
    """
    @return: a C{deferToThread} that uses C{reactor}'s thread pool (the
        global reactor's when C{reactor} has none, such as a L{Clock}).
    """
    from twisted.internet import threads

    getThreadPool = getattr(reactor, "getThreadPool", None)
    if getThreadPool is None:
        return threads.deferToThread

    def deferToThread(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        return threads.deferToThreadPool(reactor, getThreadPool(), f, *args, **kwargs)

    return deferToThread
