# -*- test-case-name: tests.test_observe_gpu -*-
"""
GPU statistics: L{NvmlProbe} reads NVIDIA GPUs through NVML (the
C{nvidia-ml-py} package, C{import pynvml}); L{GpuMonitor} polls a probe off
the reactor thread and keeps the latest sample (and an hour of history)
for C{/metrics} and C{/api/performance}.

Without the library, without an NVIDIA driver, or without a GPU, the probe
says it is unavailable and returns no samples; nothing raises.
"""

from __future__ import annotations

import importlib
from collections import deque
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from llamaswap.interfaces import IGpuProbe

#: Keys of one GPU's sample.
SAMPLE_KEYS = ("id", "name", "uuid", "utilization", "memoryUtilization", "memoryUsed",
               "memoryTotal", "temperature", "fanSpeed", "powerDraw")


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


@implementer(IGpuProbe)
class NvmlProbe:
    """
    An L{IGpuProbe} over NVML.  Every method blocks (calls into the
    driver): run them in a thread (L{GpuMonitor} does).

    C{pynvml} is imported, and C{nvmlInit} called, on first use, so that
    nothing happens before twistd has daemonised.

    @ivar available: L{None} until first used; then whether NVML works and
        sees at least one GPU.
    @ivar reason: why it is unavailable.
    """

    log = Logger()

    def __init__(self, nvml: Any = None,
                 importModule: Callable[[str], Any] = importlib.import_module) -> None:
        """
        @param nvml: the C{pynvml} module or a stand-in (tests); imported
            on first use when L{None}.
        @param importModule: imports C{pynvml} (tests make it fail).
        """
        self._nvml = nvml
        self._import = importModule
        self._initialized = False
        self.available: bool | None = None
        self.reason = ""

    def init(self) -> bool:
        """
        Load NVML once (blocking).

        @return: whether GPUs can be sampled.
        """
        if self.available is not None:
            return self.available
        nvml = self._nvml
        if nvml is None:
            try:
                nvml = self._nvml = self._import("pynvml")
            except Exception as e:
                return self._unavailable("pynvml is not installed ({})".format(e))
        try:
            nvml.nvmlInit()
        except Exception as e:
            return self._unavailable("NVML could not start: {}".format(e))
        self._initialized = True
        try:
            count = nvml.nvmlDeviceGetCount()
        except Exception as e:
            return self._unavailable("NVML could not count GPUs: {}".format(e))
        if count < 1:
            return self._unavailable("no GPU found")
        self.available = True
        return True

    def _unavailable(self, reason: str) -> bool:
        self.available = False
        self.reason = reason
        return False

    def sample(self) -> list[dict[str, Any]]:
        """
        Read every GPU (blocking).

        @return: one dict per GPU with the keys L{SAMPLE_KEYS}: C{id} (the
            index), C{name}, C{uuid}, C{utilization} and
            C{memoryUtilization} (percent), C{memoryUsed} and
            C{memoryTotal} (bytes), C{temperature} (Celsius), C{fanSpeed}
            (percent), C{powerDraw} (watts).  A value the GPU does not
            report is L{None}.  C{[]} when unavailable.
        @raise Exception: an NVML error that concerns the whole sample
            (the monitor logs it).
        """
        if not self.init():
            return []
        nvml = self._nvml
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)

            def read(call: Callable[[], Any]) -> Any:
                try:
                    return call()
                except Exception:
                    return None

            rates = read(lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
            memory = read(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
            power = read(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
            name = read(lambda: nvml.nvmlDeviceGetName(handle))
            uuid = read(lambda: nvml.nvmlDeviceGetUUID(handle))
            gpus.append({
                "id": index,
                "name": "" if name is None else _text(name),
                "uuid": "" if uuid is None else _text(uuid),
                "utilization": None if rates is None else float(rates.gpu),
                "memoryUtilization": None if rates is None else float(rates.memory),
                "memoryUsed": None if memory is None else int(memory.used),
                "memoryTotal": None if memory is None else int(memory.total),
                "temperature": read(lambda: float(nvml.nvmlDeviceGetTemperature(
                    handle, getattr(nvml, "NVML_TEMPERATURE_GPU", 0)))),
                "fanSpeed": read(lambda: float(nvml.nvmlDeviceGetFanSpeed(handle))),
                "powerDraw": None if power is None else power / 1000.0,
            })
        return gpus

    def shutdown(self) -> None:
        """
        Unload NVML (blocking); the next L{sample} loads it again.
        """
        if self._initialized:
            self._initialized = False
            self.available = None
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass


class GpuMonitor(Service):
    """
    Polls an L{IGpuProbe} every C{interval} seconds in a thread and keeps
    the latest sample.  A failing sample is logged and the polling goes on;
    a probe that reports itself unavailable (C{probe.available is False})
    after a poll ends the polling, logged once.

    A service: C{startService}/C{stopService} (also L{start}/L{stop}).

    @ivar latest: the latest sample (a list of per-GPU dicts); C{[]} before
        the first one or without GPUs.
    @ivar latestAt: its time (the clock's seconds), or L{None}.
    @ivar polls: polls done; @ivar failures: polls that failed.
    """

    log = Logger()

    def __init__(self, probe: IGpuProbe, clock: IReactorTime, interval: float = 5.0,
                 deferToThread: Callable[..., Deferred] | None = None,
                 keepSeconds: float = 3600.0) -> None:
        """
        @param probe: what to poll.
        @param clock: schedules the polls.
        @param interval: seconds between polls (C{performance.every}).
        @param deferToThread: runs a blocking call in a thread and returns
            a L{Deferred} of its result; Twisted's
            L{twisted.internet.threads.deferToThread} by default.
        @param keepSeconds: how much history L{samplesSince} can return.
        """
        self.probe = probe
        self.clock = clock
        self.interval = interval
        if deferToThread is None:
            from twisted.internet.threads import deferToThread as _deferToThread

            deferToThread = _deferToThread
        self._deferToThread = deferToThread
        self.latest: list[dict[str, Any]] = []
        self.latestAt: float | None = None
        self.polls = 0
        self.failures = 0
        keep = max(1, int(keepSeconds / max(interval, 0.001)) + 1)
        self._history: deque[tuple[float, list[dict[str, Any]]]] = deque(maxlen=keep)
        self._loop: LoopingCall | None = None
        self._inFlight: Deferred | None = None

    @property
    def available(self) -> bool:
        """
        Whether the probe has (or may have) GPUs to report.
        """
        return getattr(self.probe, "available", True) is not False

    def startService(self) -> None:
        """
        Poll now, then every C{interval} seconds.
        """
        super().startService()
        if self._loop is not None and self._loop.running:
            return
        self._loop = LoopingCall(self.poll)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: self.log.failure("GPU polling stopped", f))

    def stopService(self) -> Deferred[None]:
        """
        Stop polling.

        @return: a L{Deferred} that fires once a poll in progress has ended
            and the probe has been shut down (in a thread).
        """
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        done: Deferred[None] = Deferred()
        if self._inFlight is None:
            done.callback(None)
        else:
            def settled(result: object) -> object:
                done.callback(None)
                return result

            self._inFlight.addBoth(settled)

        def shutdown(_: object) -> object:
            shutdownProbe = getattr(self.probe, "shutdown", None)
            if shutdownProbe is None:
                return None
            return self._deferToThread(shutdownProbe)

        done.addCallback(shutdown)
        done.addErrback(lambda f: self.log.failure("GPU probe shutdown failed", f))
        done.addCallback(lambda _: None)
        return done

    start = startService
    stop = stopService

    def poll(self) -> Deferred[None]:
        """
        Sample once, in a thread.

        @return: a L{Deferred} that fires with L{None} when the sample is
            stored or its failure logged; it never fails.
        """
        self.polls += 1
        try:
            d = self._deferToThread(self.probe.sample)
        except Exception:
            self.failures += 1
            self.log.failure("GPU sample could not start")
            return succeed(None)
        self._inFlight = d

        def got(gpus: list[dict[str, Any]]) -> None:
            self.latest = list(gpus or [])
            self.latestAt = self.clock.seconds()
            if self.latest:
                self._history.append((self.latestAt, self.latest))
            if not self.available:
                self.log.info("GPU monitoring off: {reason}",
                              reason=getattr(self.probe, "reason", "") or "no GPU")
                if self._loop is not None and self._loop.running:
                    self._loop.stop()

        def failed(failure: Any) -> None:
            self.failures += 1
            self.log.failure("GPU sample failed", failure)

        def settled(result: object) -> object:
            if self._inFlight is d:
                self._inFlight = None
            return result

        d.addCallbacks(got, failed)
        d.addBoth(settled)
        return d

    def samplesSince(self, after: float | None = None) -> list[tuple[float, list[dict[str, Any]]]]:
        """
        @param after: clock seconds; L{None} for all kept samples.
        @return: C{(time, gpus)} pairs strictly after C{after}, oldest
            first (at most C{keepSeconds} of them).
        """
        return [(t, gpus) for t, gpus in self._history if after is None or t > after]
