# -*- test-case-name: tests.test_upstream_machine,tests.integration.test_upstream_real -*-
"""
Taking one run of an upstream down: its process group, its stop command,
and its descendants that left the group.

What is left of a run is read off the reactor thread (L{ILauncher.survey}:
a C{/proc} walk and cgroup files); signals, cgroup kills and reaping are
done on it.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from llamaswap.upstream.exits import describeExit, goDuration
from llamaswap.upstream.process import Leftovers, UpstreamProcessProtocol

__all__ = ["Termination", "POLL_FIRST_DELAY", "POLL_MAX_DELAY"]

#: How long a stop waits, once no process is left, for the last output on
#: the pipes (held open only by a process we could not find).
PIPE_GRACE = 1.0

#: How often a stopping group is checked for live processes.
POLL_FIRST_DELAY = 0.005
POLL_MAX_DELAY = 0.05


class Termination:
    """
    Takes one run's process group down: ask (C{cmdStop} or SIGTERM), wait up
    to the grace period, force (SIGKILL to the group), and keep waiting until
    the leader is reaped and the group is empty; then feed C{_groupGone}.

    A stop command is spawned through the launcher as well, and is waited
    for (and killed past the grace) in the same way.
    """

    log = Logger()

    def __init__(
        self, core: Any, upstream: Any, run: Any, grace: float, force: bool
    ) -> None:
        """
        @param core: the machine's core: its C{model}, C{clock}, C{launcher},
            C{onOutput} and C{environment()} are used.
        @param upstream: fed C{_groupGone()} once the group is gone.
        @param run: the run to end: its C{pgid}, C{protocol} and C{tag}.
        """
        self._core = core
        self._upstream = upstream
        self._run = run
        self._grace = grace
        self._force = force
        self._groups: list[tuple[int, UpstreamProcessProtocol]] = []
        self._waitingFor = 0
        self._killCall: IDelayedCall | None = None
        self._pollCall: IDelayedCall | None = None
        self._pollDelay = POLL_FIRST_DELAY
        self._killed = False
        self._warnedEscapees = False
        self._surveying = False
        self.done = False

    def begin(self) -> None:
        """
        Send the first signal (or run C{cmdStop}) and start waiting.
        """
        core, run = self._core, self._run
        if run.pgid is not None:
            self._groups.append((run.pgid, run.protocol))
        if self._force or self._grace <= 0:
            self._kill()
        else:
            self._ask()
            self._killCall = core.clock.callLater(self._grace, self._graceExpired)
        for pgid, protocol in list(self._groups):
            self._waitingFor += 1
            protocol.whenExited().addCallback(self._leaderExited, pgid).addErrback(
                lambda f: self.log.failure(
                    "[{model}] watching process group failed",
                    f,
                    model=core.model.id,
                )
            )
        if not self._groups:
            self._check()

    def _survey(self) -> Deferred[Leftovers]:
        """
        Ask the launcher, which looks off the reactor thread, what is left
        of the run.

        @return: a L{Deferred} that fires with a L{Leftovers}; a failure to
            look is logged and taken as nothing left (so a stop cannot hang
            on a bug), as the process groups' own exits were seen.
        """
        run = self._run
        pgids = [pgid for pgid, _ in self._groups]
        d = maybeDeferred(self._core.launcher.survey, run.tag, run.pgid, pgids)

        def failed(reason: Failure) -> Leftovers:
            self.log.failure("[{model}] looking for what is left of the upstream failed",
                             reason, model=self._core.model.id)
            return Leftovers(False)

        return d.addErrback(failed)

    def _signalEscapeesSoon(self, signum: int) -> None:
        """
        Look for the run's escaped descendants (off the reactor thread) and
        signal them, unless the termination is over by then.
        """

        def found(left: Leftovers) -> None:
            if not self.done:
                self._signalEscapees(left.escapees, signum)

        self._survey().addCallback(found).addErrback(
            lambda f: self.log.failure("[{model}] signalling escaped processes failed", f,
                                       model=self._core.model.id))

    def _runCall(self, name: str) -> bool:
        """
        Call the launcher's C{name(tag)} (its per-run cgroup), when it has
        one.

        @return: what it returned, as a bool.
        """
        method = getattr(self._core.launcher, name, None)
        if method is None or self._run.tag is None:
            return False
        try:
            return bool(method(self._run.tag))
        except Exception:
            self.log.failure("[{model}] {name} failed", model=self._core.model.id, name=name)
            return False

    def _signalEscapees(self, pids: tuple[int, ...], signum: int) -> bool:
        """
        Signal the run's escaped descendants C{pids}.

        @return: whether there were any.
        """
        pids = tuple(pids)
        if pids:
            if signum == signal.SIGKILL or not self._warnedEscapees:
                self.log.warn(
                    "[{model}] processes {pids} left the upstream's process group; "
                    "sending them signal {signal}",
                    model=self._core.model.id, pids=list(pids), signal=int(signum))
                self._warnedEscapees = True
            self._core.launcher.signalPids(pids, signum)
        return bool(pids)

    def hurry(self, grace: float) -> None:
        """
        A later stop asked for a shorter grace period: honour it.
        """
        if self.done or self._killed:
            return
        if grace <= 0:
            self._kill()
            return
        if self._killCall is not None and self._killCall.active():
            remaining = self._killCall.getTime() - self._core.clock.seconds()
            if grace < remaining:
                self._killCall.reset(grace)

    def _ask(self) -> None:
        core, run = self._core, self._run
        model = core.model
        stopArgv = tuple(model.cmdStopArgv or ())
        if stopArgv:
            pid = str(run.pgid)
            argv = [arg.replace("${PID}", pid) for arg in stopArgv]
            protocol = UpstreamProcessProtocol(model.id, onOutput=core.onOutput)
            try:
                transport = core.launcher.spawn(
                    model.id, argv, core.environment(), protocol
                )
            except Exception as e:
                self.log.error(
                    "[{model}] could not run cmdStop {argv}: {error}; "
                    "sending SIGTERM instead",
                    model=model.id,
                    argv=argv,
                    error=str(e),
                )
            else:
                self.log.info(
                    "[{model}] stopping with cmdStop {argv}", model=model.id, argv=argv
                )
                protocol.whenExited().addCallback(self._stopCommandExited, argv)
                stopPid = protocol.pid if protocol.pid is not None else transport.pid
                if stopPid is not None:
                    self._groups.append((stopPid, protocol))
                return
        if run.pgid is not None:
            core.launcher.signalGroup(run.pgid, signal.SIGTERM)
        self._signalEscapeesSoon(signal.SIGTERM)

    def _stopCommandExited(self, reason: object, argv: list[str]) -> None:
        if not isinstance(reason, ProcessDone):
            self.log.warn(
                "[{model}] cmdStop {argv} failed ({why})",
                model=self._core.model.id,
                argv=argv,
                why=describeExit(reason),
            )

    def _graceExpired(self) -> None:
        self._killCall = None
        self.log.warn(
            "[{model}] still running after {grace}; killing its process group",
            model=self._core.model.id,
            grace=goDuration(self._grace),
        )
        self._kill()

    def _kill(self) -> None:
        self._killed = True
        if self._killCall is not None and self._killCall.active():
            self._killCall.cancel()
        self._killCall = None
        for pgid, _ in self._groups:
            self._core.launcher.signalGroup(pgid, signal.SIGKILL)
        self._runCall("killRun")
        self._signalEscapeesSoon(signal.SIGKILL)

    def _leaderExited(self, reason: object, pgid: int) -> None:
        self._waitingFor -= 1
        self._check()

    def _check(self) -> None:
        """
        Every leader has exited: look (off the reactor thread) at what is
        left, and end only once a look begun after that finds nothing.
        """
        self._pollCall = None
        if self.done or self._waitingFor or self._surveying:
            return
        self._surveying = True
        self._survey().addCallback(self._surveyed).addErrback(
            lambda f: self.log.failure("[{model}] checking the stop failed", f,
                                       model=self._core.model.id))

    def _surveyed(self, left: Leftovers) -> None:
        self._surveying = False
        if self.done:
            return
        signum = signal.SIGKILL if self._killed else signal.SIGTERM
        if self._signalEscapees(left.escapees, signum) or left.alive:
            self._pollCall = self._core.clock.callLater(self._pollDelay, self._check)
            self._pollDelay = min(self._pollDelay * 2, POLL_MAX_DELAY)
            return
        self.done = True
        if self._killCall is not None and self._killCall.active():
            self._killCall.cancel()
        self._killCall = None
        self._runCall("releaseRun")
        try:
            self._core.launcher.reapOrphans(left.orphans)
        except Exception:
            self.log.failure("[{model}] reaping orphans failed", model=self._core.model.id)
        self._afterPipes()

    def _afterPipes(self) -> None:
        """
        Feed C{_groupGone} once the run's pipes are closed (its last output
        read, for a failed start's report), or after L{PIPE_GRACE}.
        """
        fired: list[bool] = []
        timer: list[IDelayedCall] = []

        def gone(_: object = None) -> None:
            if fired:
                return
            fired.append(True)
            if timer and timer[0].active():
                timer[0].cancel()
            self._upstream._groupGone()

        ended = self._run.protocol.whenEnded()
        if ended.called:
            gone()
            return
        timer.append(self._core.clock.callLater(PIPE_GRACE, gone))
        ended.addCallback(gone)
