# -*- test-case-name: tests.test_upstream_progress,tests.integration.test_upstream_real -*-
"""
How far an upstream's load is, read from C{/proc}.

While a model starts, L{LoadProgress} polls (in a thread, every half
second) how much of the model file named in its command (or by its C{loadFile:}
setting) its processes have brought in: the resident size of the file's mappings in
C{/proc/<pid>/smaps} for loaders that C{mmap} it (llama.cpp), and the bytes
read through C{read()} (C{rchar} of C{/proc/<pid>/io}) for those that read
it.  With no model file it reports the elapsed time against the model's
last load time.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from llamaswap.upstream.process import processes

__all__ = ["modelFile", "namedFile", "bytesLoaded", "LoadProgress"]

_PROC = "/proc"

#: Options that name the model file, as llama.cpp and its kin spell them.
MODEL_OPTIONS = ("-m", "--model")

#: Seconds between two samples of the loads in progress.
INTERVAL = 0.5


def namedFile(path: str) -> Optional[str]:
    """
    @return: C{path} resolved when it is a file, else L{None}.
    """
    return os.path.realpath(path) if os.path.isfile(path) else None


def modelFile(argv: Sequence[str]) -> Optional[str]:
    """
    @return: the file C{argv} names with C{-m}, C{--model} or
        C{--model=...} when it exists (resolved), else L{None}.
    """
    for i, arg in enumerate(argv):
        path = None
        if arg in MODEL_OPTIONS and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--model="):
            path = arg[len("--model="):]
        if path and os.path.isfile(path):
            return os.path.realpath(path)
    return None


def _groupPids(pgid: int, procRoot: str) -> List[str]:
    return [str(pid) for pid, _state, _ppid, pgrp in processes(procRoot) if pgrp == pgid]


def _mappedRss(smaps: bytes, path: bytes) -> int:
    """
    @return: the resident bytes of C{path}'s mappings in one smaps text.
    """
    total = 0
    inFile = False
    for line in smaps.split(b"\n"):
        if not line:
            continue
        first = line.split(None, 1)[0]
        if b"-" in first and not first.endswith(b":"):  # a mapping's header
            inFile = line.rstrip().endswith(b" " + path)
        elif inFile and first == b"Rss:":
            total += int(line.split()[1]) * 1024
    return total


def bytesLoaded(pgid: int, path: str, procRoot: str = _PROC) -> int:
    """
    Blocking: reads C{/proc}.  Run it in a thread.

    @return: how much of C{path} the processes of the group C{pgid} hold
        in memory (mapped and resident) or have read, whichever is more.
    """
    mapped = 0
    read = 0
    target = path.encode("utf-8")
    for pid in _groupPids(pgid, procRoot):
        try:
            with open(os.path.join(procRoot, pid, "smaps"), "rb") as f:
                mapped += _mappedRss(f.read(), target)
        except (OSError, ValueError):
            pass
        try:
            with open(os.path.join(procRoot, pid, "io"), "rb") as f:
                for line in f.read().split(b"\n"):
                    if line.startswith(b"rchar:"):
                        read += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return max(mapped, read)


class _Load:
    def __init__(self, pgid: int, path: Optional[str], size: int, began: float) -> None:
        self.pgid = pgid
        self.path = path
        self.size = size
        self.began = began
        self.loaded = 0


class LoadProgress:
    """
    Watches the loads in progress and reports each one's progress:
    C{{"fraction", "bytesLoaded", "bytesTotal", "elapsed", "expected"}}.
    """

    log = Logger()

    def __init__(
        self,
        reactor,
        report: Callable[[str, Optional[dict]], None],
        deferToThread: Optional[Callable[..., Deferred]] = None,
        sample: Callable[[int, str], int] = bytesLoaded,
        interval: float = INTERVAL,
    ) -> None:
        """
        @param reactor: the clock, and the thread pool of the samples.
        @param report: called as C{report(modelId, progress)}; with L{None}
            once a load is over.
        @param deferToThread: runs a blocking call in a thread (tests run
            it in place).
        @param sample: reads the bytes loaded (L{bytesLoaded}).
        """
        self._reactor = reactor
        self._report = report
        self._sample = sample
        self._interval = interval
        if deferToThread is None:
            from twisted.internet.threads import deferToThreadPool

            def deferToThread(f, *args):
                return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)

        self._deferToThread = deferToThread
        self._loads: Dict[str, _Load] = {}
        self._lastLoad: Dict[str, float] = {}
        self._loop: Optional[LoopingCall] = None
        self._sampling = False

    def began(
        self,
        modelId: str,
        pgid: Optional[int],
        argv: Sequence[str],
        loadFile: Optional[str] = None,
    ) -> None:
        """
        C{modelId}'s process group C{pgid} started loading.

        @param argv: its command, where C{-m}/C{--model} names the file.
        @param loadFile: the file to watch instead (the model's
            C{loadFile:} setting), for backends that name it otherwise.
        """
        if pgid is None:
            return
        path = namedFile(loadFile) if loadFile else modelFile(argv)
        size = 0
        if path is not None:
            try:
                size = os.path.getsize(path)
            except OSError:
                path = None
        self._loads[modelId] = _Load(pgid, path, size, self._reactor.seconds())
        self._publish(modelId)
        if self._loop is None:
            self._loop = LoopingCall(self._poll)
            self._loop.clock = self._reactor
            self._loop.start(self._interval, now=False).addErrback(
                lambda f: self.log.failure("polling load progress", f))

    def ended(self, modelId: str, ready: bool) -> None:
        """
        C{modelId}'s load is over; when it became C{ready}, its duration is
        the next load's expectation.
        """
        load = self._loads.pop(modelId, None)
        if load is None:
            return
        if ready:
            self._lastLoad[modelId] = self._reactor.seconds() - load.began
        self._report(modelId, None)
        if not self._loads and self._loop is not None:
            if self._loop.running:
                self._loop.stop()
            self._loop = None

    def stop(self) -> None:
        """
        Stop polling (shutdown).
        """
        for modelId in list(self._loads):
            self.ended(modelId, False)

    def progressOf(self, modelId: str) -> Optional[dict]:
        """
        @return: C{modelId}'s progress now, or L{None} when it is not loading.
        """
        load = self._loads.get(modelId)
        if load is None:
            return None
        elapsed = max(0.0, self._reactor.seconds() - load.began)
        expected = self._lastLoad.get(modelId)
        fraction: Optional[float] = None
        if load.size:
            fraction = min(1.0, load.loaded / load.size)
        elif expected:
            fraction = min(0.99, elapsed / expected)
        return {
            "fraction": None if fraction is None else round(fraction, 4),
            "bytesLoaded": load.loaded,
            "bytesTotal": load.size,
            "elapsed": round(elapsed, 3),
            "expected": None if expected is None else round(expected, 3),
        }

    def _publish(self, modelId: str) -> None:
        try:
            self._report(modelId, self.progressOf(modelId))
        except Exception:
            self.log.failure("[{model}] reporting load progress", model=modelId)

    def _poll(self) -> Optional[Deferred]:
        if self._sampling:
            return None  # the last sample is still being read
        work: List[Tuple[str, int, str]] = [
            (m, load.pgid, load.path) for m, load in self._loads.items() if load.path]
        if not work:
            for modelId in list(self._loads):
                self._publish(modelId)
            return None
        self._sampling = True
        d = self._deferToThread(self._sampleAll, work)
        d.addCallback(self._sampled)
        d.addErrback(lambda f: self.log.failure("sampling load progress", f))

        def done(result: object) -> None:
            self._sampling = False

        d.addBoth(done)
        return None

    def _sampleAll(self, work: Iterable[Tuple[str, int, str]]) -> Dict[str, int]:
        return {modelId: self._sample(pgid, path) for modelId, pgid, path in work}

    def _sampled(self, loaded: Dict[str, int]) -> None:
        for modelId in list(self._loads):
            load = self._loads[modelId]
            if modelId in loaded:
                load.loaded = min(load.size, max(load.loaded, loaded[modelId]))
            self._publish(modelId)
