# -*- test-case-name: tests.test_upstream_process,tests.integration.test_upstream_real -*-
"""
Spawning upstream commands in their own process group, and watching them.

L{UpstreamProcessProtocol} line-buffers a child's output, remembers the last
lines, and tells any number of callers when the child has been reaped.
L{Launcher} starts a command in a new session (so that its pid is also its
process-group id) and signals or inspects the whole group, so that a wrapper
such as C{sh -c "server & ..."} cannot leave a grandchild behind.

See DESIGN.md "One upstream's lifecycle" and STYLE.md section 2, pitfalls 6
to 8.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

from zope.interface import implementer

from twisted.internet import process as _twistedProcess
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from llamaswap.interfaces import ILauncher

__all__ = [
    "UPSTREAM_TAG",
    "Leftovers",
    "findTagged",
    "scanRun",
    "UpstreamProcessProtocol",
    "Launcher",
    "becomeSubreaper",
    "reapOrphans",
    "procGroupAlive",
]

_STREAMS = {1: "stdout", 2: "stderr"}

# A child that writes a very long line without a newline (a progress bar,
# say) must not make us buffer without bound.
_MAX_PARTIAL = 64 * 1024

# prctl(2) option; see <linux/prctl.h>.
_PR_SET_CHILD_SUBREAPER = 36

# Used when util-linux setsid(1) is not installed: the same effect, with the
# interpreter we already run under.  sys.argv is ["-c", program, args...].
_SETSID_FALLBACK = "import os,sys; os.setsid(); os.execvp(sys.argv[1], sys.argv[1:])"

_PROC = "/proc"

#: The environment variable that marks every process of one upstream run:
#: descendants inherit it even when they leave the process group, so that a
#: stop finds them (unless one clears its environment).
UPSTREAM_TAG = "LLAMASWAP_UPSTREAM"

# Run by /bin/sh as the first program of a run with a cgroup: $0 is the
# cgroup's cgroup.procs, the rest is the command.
_JOIN_CGROUP = 'echo $$ > "$0"; exec "$@"'

# Default of Launcher(setsid=...): look it up with shutil.which.
_WHICH = object()


@dataclass(frozen=True)
class Leftovers:
    """
    What is left of one upstream run, as a L{Launcher.survey} found it.

    @ivar alive: whether one of its process groups, or its cgroup, still
        has a live (not zombie) process.
    @ivar escapees: live processes of the run that left its process group.
    @ivar orphans: zombie children of this process that Twisted does not
        own (orphans re-parented to us), to be reaped on the reactor thread.
    """

    alive: bool
    escapees: tuple[int, ...] = ()
    orphans: tuple[int, ...] = ()


class UpstreamProcessProtocol(ProcessProtocol):
    """
    The protocol of one upstream (or stop) command.

    Every complete line of stdout and stderr is handed to
    C{onOutput(model, stream, line)}, or, without one, logged with the
    C{model}, C{stream} and C{line} keys;
    the last lines of both streams, interleaved as they arrived, are kept for
    L{outputTail}.

    @ivar model: the model id the output is tagged with.
    @ivar pid: the child's pid (its process-group id when spawned by
        L{Launcher}), taken when the transport connects.  Unlike the
        transport's C{pid} it stays set after the child is reaped, which can
        happen before C{spawnProcess} even returns.
    @ivar exitReason: L{None} until the child has been reaped, then the exit
        reason value (L{twisted.internet.error.ProcessDone} or
        L{twisted.internet.error.ProcessTerminated}).
    @ivar endReason: the same, once the pipes are closed too.
    """

    log = Logger()

    def __init__(
        self,
        model: str,
        onOutput: Callable[[str, str, str], object] | None = None,
        keepLines: int = 50,
    ) -> None:
        """
        @param model: the model id to tag output with.
        @param onOutput: called as C{onOutput(model, stream, line)} for each
            complete line, C{stream} being C{"stdout"} or C{"stderr"}.
        @param keepLines: how many lines L{outputTail} can return at most.
        """
        self.model = model
        self.pid: int | None = None
        self.exitReason: object | None = None
        self.endReason: object | None = None
        self._onOutput = onOutput
        self._exited = False
        self._exitWaiters: list[Deferred[object]] = []
        self._ended = False
        self._endWaiters: list[Deferred[object]] = []
        self._partial: dict[int, bytes] = {}
        self._tail: deque[str] = deque(maxlen=keepLines)

    # -- public API ---------------------------------------------------------

    def whenExited(self) -> Deferred[object]:
        """
        Wait until the child has been reaped.

        @return: a new L{Deferred} for each caller that fires with the exit
            reason value (L{ProcessDone} or L{ProcessTerminated}, never a
            L{Failure}) once C{processExited} has run; at once if it already
            has.
        """
        if self._exited:
            return succeed(self.exitReason)
        d: Deferred[object] = Deferred()
        self._exitWaiters.append(d)
        return d

    def whenEnded(self) -> Deferred[object]:
        """
        Wait until the child has been reaped and every pipe to it is closed
        (C{processEnded}).  A grandchild that keeps the pipes open delays
        this; prefer L{whenExited} to learn that the process is gone.

        @return: a new L{Deferred} for each caller that fires with the end
            reason value (never a L{Failure}); at once if it already has.
        """
        if self._ended:
            return succeed(self.endReason)
        d: Deferred[object] = Deferred()
        self._endWaiters.append(d)
        return d

    def outputTail(self, lines: int = 20) -> str:
        """
        @return: the last C{lines} output lines (at most the number kept),
            joined with newlines; the empty string when there are none.
        """
        if lines <= 0:
            return ""
        kept = list(self._tail)
        return "\n".join(kept[-lines:])

    # -- ProcessProtocol ----------------------------------------------------

    def connectionMade(self) -> None:
        """
        Remember the pid: Twisted connects the protocol before it first tries
        to reap the child, so the pid is still known here.
        """
        self.pid = getattr(self.transport, "pid", None)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        """
        Split C{data} into lines, keeping an unfinished line for later.
        """
        buffered = self._partial.get(childFD, b"") + data
        *lines, rest = buffered.split(b"\n")
        if len(rest) > _MAX_PARTIAL:
            lines.append(rest)
            rest = b""
        self._partial[childFD] = rest
        stream = _STREAMS.get(childFD, "fd{}".format(childFD))
        for line in lines:
            self._emit(stream, line)

    def processExited(self, reason: Failure) -> None:
        """
        The child has been reaped: fire every L{whenExited} waiter with the
        exit reason value.
        """
        if self._exited:
            return
        self._exited = True
        self.exitReason = reason.value
        waiters, self._exitWaiters = self._exitWaiters, []
        for d in waiters:
            d.callback(reason.value)

    def processEnded(self, reason: Failure) -> None:
        """
        The child has been reaped and its pipes are closed: flush any
        unfinished lines.
        """
        for childFD, rest in sorted(self._partial.items()):
            if rest:
                self._partial[childFD] = b""
                self._emit(_STREAMS.get(childFD, "fd{}".format(childFD)), rest)
        self.processExited(reason)
        if self._ended:
            return
        self._ended = True
        self.endReason = reason.value
        waiters, self._endWaiters = self._endWaiters, []
        for d in waiters:
            d.callback(reason.value)

    # -- internals ----------------------------------------------------------

    def _emit(self, stream: str, raw: bytes) -> None:
        line = raw.rstrip(b"\r").decode("utf-8", "replace")
        self._tail.append(line)
        if self._onOutput is None:
            self.log.info("[{model}] {line}", model=self.model, stream=stream, line=line)
        else:
            try:
                self._onOutput(self.model, stream, line)
            except Exception:
                self.log.failure(
                    "[{model}] output callback failed", model=self.model
                )


def procGroupAlive(pgid: int, procRoot: str = _PROC) -> bool:
    """
    Scan C{procRoot} for a process of the group C{pgid} that is not a zombie.

    @return: C{True} while any process whose pgrp is C{pgid} is in a state
        other than C{Z} (zombie) or C{X}/C{x} (dead).
    """
    return any(pgrp == pgid and state not in ("Z", "X", "x")
               for _pid, state, _ppid, pgrp in processes(procRoot))


def processes(procRoot: str) -> Iterator[tuple[int, str, int, int]]:
    """
    Walk C{procRoot} once.  Blocking: run it in a thread.

    @return: C{(pid, state, ppid, pgrp)} of every process still readable;
        nothing when C{procRoot} cannot be listed.
    """
    try:
        names = os.listdir(procRoot)
    except OSError:
        return
    for name in names:
        if not name.isdigit():
            continue
        stat = _readStat(os.path.join(procRoot, name, "stat"))
        if stat is not None:
            yield (int(name), *stat)


def _readStat(path: str) -> tuple[str, int, int] | None:
    """
    @return: C{(state, ppid, pgrp)} from a C{/proc/<pid>/stat} file, or
        L{None} if it cannot be read (the process is gone).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces and
    # parentheses: the fields we want follow the last ")".
    end = data.rfind(b")")
    fields = data[end + 2 :].split()
    if end < 0 or len(fields) < 3:
        return None
    try:
        return fields[0].decode("ascii"), int(fields[1]), int(fields[2])
    except ValueError:
        return None


def findTagged(tag: str, pgid: int | None = None, procRoot: str = _PROC) -> list[int]:
    """
    Scan C{procRoot} for live processes whose environment holds
    C{UPSTREAM_TAG=tag} and whose process group is not C{pgid}.

    Only processes of our own user can be read; that is every process an
    upstream we spawned can have started (unless it changed user).

    @return: their pids.
    """
    return scanRun(tag, pgid, procRoot)[0]


def scanRun(
    tag: str,
    pgid: int | None = None,
    procRoot: str = _PROC,
    getpid: Callable[[], int] = os.getpid,
) -> tuple[list[int], list[int]]:
    """
    One walk of C{procRoot} for what a stop looks for: the live processes
    tagged C{UPSTREAM_TAG=tag} outside the group C{pgid} (L{findTagged}) and
    our zombie children (L{zombieChildren}).  Blocking: run it in a thread.

    @return: C{(tagged, zombies)}, pids.
    """
    needle = "{}={}".format(UPSTREAM_TAG, tag).encode("utf-8") + b"\0"
    me = getpid()
    tagged: list[int] = []
    zombies: list[int] = []
    for pid, state, ppid, pgrp in processes(procRoot):
        if pid == me:
            continue
        if state in ("Z", "X", "x"):
            if state == "Z" and ppid == me:
                zombies.append(pid)
            continue
        if pgrp == pgid:
            continue
        try:
            with open(os.path.join(procRoot, str(pid), "environ"), "rb") as f:
                environ = f.read()
        except OSError:
            continue
        if environ.startswith(needle) or (b"\0" + needle) in environ:
            tagged.append(pid)
    return tagged, zombies


def becomeSubreaper(enable: bool = True) -> bool:
    """
    Make this process a child subreaper (Linux C{PR_SET_CHILD_SUBREAPER}), so
    that the orphaned grandchildren of our upstreams are re-parented to us and
    can be reaped by L{reapOrphans} rather than by an init that may not reap.

    @param enable: C{False} undoes it (tests).

    @return: C{True} if the setting was applied, C{False} where that is not
        supported.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return False
    prctl.argtypes = [
        ctypes.c_int,
        ctypes.c_ulong,
        ctypes.c_ulong,
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]
    prctl.restype = ctypes.c_int
    return prctl(_PR_SET_CHILD_SUBREAPER, int(enable), 0, 0, 0) == 0


def zombieChildren(
    procRoot: str = _PROC, getpid: Callable[[], int] = os.getpid
) -> list[int]:
    """
    Scan C{procRoot} for zombie children of this process.  Blocking (reads
    C{/proc}): safe in a thread, as it only reads.

    @return: their pids.
    """
    me = getpid()
    return [pid for pid, state, ppid, _pgrp in processes(procRoot)
            if ppid == me and state == "Z"]


def reapOrphans(
    procRoot: str = _PROC,
    waitpid: Callable[[int, int], tuple[int, int]] = os.waitpid,
    getpid: Callable[[], int] = os.getpid,
    twistedChildren: Mapping[int, object] | None = None,
    candidates: Sequence[int] | None = None,
) -> list[int]:
    """
    Reap every zombie child of this process that Twisted does not own.

    When we are a subreaper (L{becomeSubreaper}) the orphans of our upstreams
    become our children; nobody else waits for them.  Children that Twisted
    spawned (the pids in C{twisted.internet.process.reapProcessHandlers}) are
    left alone: Twisted reaps them and reports their exit status.  Call it on
    the reactor thread, where that table is current.

    @param candidates: the zombie children to consider, as
        L{zombieChildren} found them (in a thread); by default C{procRoot}
        is scanned here.
    @return: the pids that were reaped.
    """
    if twistedChildren is None:
        twistedChildren = _twistedProcess.reapProcessHandlers
    if candidates is None:
        candidates = zombieChildren(procRoot, getpid)
    reaped = []
    for pid in candidates:
        if pid in twistedChildren:
            continue
        try:
            donePid, _status = waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        if donePid == pid:
            reaped.append(pid)
    return reaped


@implementer(ILauncher)
class Launcher:
    """
    Spawns commands in a new session and process group, and signals groups.

    The command is prefixed with util-linux C{setsid}: the spawned child is
    not a group leader, so C{setsid} calls C{setsid()} and execs in place and
    the transport's C{pid} is the new group's id.  Without C{setsid(1)} a tiny
    Python prefix does the same.
    """

    log = Logger()

    def __init__(
        self,
        reactor: object,
        *,
        killpg: Callable[[int, int], None] = os.killpg,
        groupAlive: Callable[[int], bool] | None = None,
        setsid: str | None | object = _WHICH,
        reap: Callable[[], Sequence[int]] = reapOrphans,
        cgroups: object | None = None,
        deferToThread: Callable[..., Deferred] | None = None,
    ) -> None:
        """
        @param reactor: an C{IReactorProcess} provider.
        @param killpg: C{os.killpg} or a test double.
        @param groupAlive: overrides L{groupAlive}; by default a C{/proc}
            scan on Linux, C{killpg(pgid, 0)} elsewhere.
        @param setsid: the path of C{setsid(1)}; by default found with
            C{shutil.which("setsid")}; L{None} forces the Python fallback.
        @param reap: overrides L{reapOrphans} (tests).
        @param cgroups: a L{llamaswap.upstream.cgroups.CgroupTree}: each
            tagged run gets its own cgroup (see L{useCgroups}).
        @param deferToThread: runs a blocking call off the reactor thread
            and returns a L{Deferred} of its result (L{survey}); by default
            the reactor's thread pool.
        """
        if deferToThread is None:

            def deferToThread(f: Callable[..., object], *args: object) -> Deferred:
                return deferToThreadPool(
                    reactor, reactor.getThreadPool(), f, *args  # type: ignore[attr-defined, arg-type]
                )

        self._deferToThread = deferToThread
        self._reactor = reactor
        self._killpg = killpg
        self._groupAlive = groupAlive
        self._reap = reap
        if setsid is _WHICH:
            setsid = shutil.which("setsid")
        if setsid is None:
            self.prefix: tuple[str, ...] = (sys.executable, "-c", _SETSID_FALLBACK)
        else:
            self.prefix = (str(setsid),)
        self._useProc = os.path.exists(os.path.join(_PROC, "self", "stat"))
        self.cgroups = cgroups

    def useCgroups(self, tree: object | None) -> None:
        """
        Put every tagged run spawned from now on into its own cgroup of
        C{tree} (a L{llamaswap.upstream.cgroups.CgroupTree}), or stop.
        """
        self.cgroups = tree

    def spawn(
        self,
        model: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        protocol: ProcessProtocol,
    ) -> object:
        """
        Start C{argv} in a new session and process group, with exactly the
        environment C{env}, stdin closed.

        @return: the C{IProcessTransport}; its C{pid} is the group id.  A
            child that exits at once may already have been reaped when this
            returns, and then the transport's C{pid} is L{None}; an
            L{UpstreamProcessProtocol} keeps it in its C{pid} attribute.
        @raise OSError: if the process cannot be spawned at all.  (A missing
            command is reported by C{setsid} instead: it exits with status
            127 and says why on stderr.)
        """
        fullArgv = [*self.prefix, *argv]
        tag = env.get(UPSTREAM_TAG)
        procs = None
        if self.cgroups is not None and tag:
            procs = self.cgroups.prepare(tag)  # type: ignore[attr-defined]
        if procs is not None:
            # The child joins its cgroup itself, before it can fork.
            fullArgv = ["/bin/sh", "-c", _JOIN_CGROUP, procs, *fullArgv]
        transport = self._reactor.spawnProcess(  # type: ignore[attr-defined]
            protocol, fullArgv[0], fullArgv, env=dict(env), path=None
        )
        transport.closeStdin()
        pgid = transport.pid
        if pgid is None:
            pgid = getattr(protocol, "pid", None)
        self.log.info(
            "[{model}] spawned process group {pgid}: {argv}",
            model=model,
            pgid=pgid,
            argv=list(argv),
        )
        return transport

    def signalGroup(self, pgid: int, signal: int) -> None:
        """
        Send C{signal} to every process of the group C{pgid}; a group that is
        already gone is not an error.
        """
        try:
            self._killpg(pgid, signal)
        except ProcessLookupError:
            pass
        except PermissionError:
            self.log.warn(
                "not allowed to send signal {signal} to process group {pgid}",
                signal=signal,
                pgid=pgid,
            )

    def groupAlive(self, pgid: int) -> bool:
        """
        @return: C{True} while any process of the group C{pgid} is alive;
            zombies count as dead.
        """
        if self._groupAlive is not None:
            return self._groupAlive(pgid)
        try:
            self._killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        if not self._useProc:
            return True
        return procGroupAlive(pgid)

    def escapees(self, tag: str, pgid: int | None) -> list[int]:
        """
        @return: the live processes tagged C{tag} outside the group C{pgid}
            (see L{findTagged}); none where there is no C{/proc}.
        """
        tree = self.cgroups
        if tree is not None and tree.has(tag):  # type: ignore[attr-defined]
            out = []
            for pid in tree.pids(tag):  # type: ignore[attr-defined]
                stat = _readStat(os.path.join(_PROC, str(pid), "stat"))
                if stat is not None and stat[0] not in ("Z", "X", "x") and stat[2] != pgid:
                    out.append(pid)
            return out
        if not self._useProc:
            return []
        return findTagged(tag, pgid)

    def killRun(self, tag: str) -> None:
        """
        SIGKILL every process of the run C{tag}'s cgroup, if it has one.
        """
        if self.cgroups is not None:
            self.cgroups.kill(tag)  # type: ignore[attr-defined]

    def runAlive(self, tag: str) -> bool:
        """
        @return: whether the run C{tag}'s cgroup still holds a process.
        """
        return self.cgroups is not None and self.cgroups.populated(tag)  # type: ignore

    def releaseRun(self, tag: str) -> None:
        """
        The run C{tag} is over: remove its cgroup.
        """
        if self.cgroups is not None:
            self.cgroups.release(tag)  # type: ignore[attr-defined]

    def signalPids(self, pids: Sequence[int], signal: int) -> None:
        """
        Send C{signal} to each of C{pids}.
        """
        for pid in pids:
            try:
                os.kill(pid, signal)
            except ProcessLookupError:
                pass
            except PermissionError:
                self.log.warn("not allowed to send signal {signal} to {pid}",
                              signal=signal, pid=pid)

    def survey(self, tag: str | None, pgid: int | None, pgids: Sequence[int]) -> Deferred:
        """
        Look, off the reactor thread, at what is left of a run: whether the
        groups C{pgids} or the run's cgroup still have a live process, the
        run's processes outside its group C{pgid} (tagged C{tag}), and the
        zombie orphans to reap.

        @return: a L{Deferred} that fires with a L{Leftovers}.
        """
        return self._deferToThread(self.leftovers, tag, pgid, tuple(pgids))

    def leftovers(self, tag: str | None, pgid: int | None, pgids: Sequence[int]) -> Leftovers:
        """
        Blocking (reads C{/proc} and cgroup files): what L{survey} runs in a
        thread.  It only reads, and sends signal 0.

        @return: a L{Leftovers}.
        """
        alive = any(self.groupAlive(group) for group in pgids)
        tree = self.cgroups
        if tag is not None:
            alive = alive or self.runAlive(tag)
        if not self._useProc:
            return Leftovers(alive)
        if tag is None or (tree is not None and tree.has(tag)):  # type: ignore[attr-defined]
            escapees = tuple(self.escapees(tag, pgid)) if tag is not None else ()
            return Leftovers(alive, escapees, tuple(zombieChildren()))
        tagged, zombies = scanRun(tag, pgid)
        return Leftovers(alive, tuple(tagged), tuple(zombies))

    def reapOrphans(self, candidates: Sequence[int] | None = None) -> int:
        """
        Reap the zombie orphans re-parented to us (see L{reapOrphans}).

        @param candidates: the zombie children a L{survey} found; by
            default C{/proc} is scanned here (and the C{reap} given to the
            constructor is used).
        @return: how many were reaped.
        """
        reaped = self._reap() if candidates is None else reapOrphans(candidates=candidates)
        if reaped:
            self.log.debug("reaped orphaned processes {pids}", pids=list(reaped))
        return len(reaped)
