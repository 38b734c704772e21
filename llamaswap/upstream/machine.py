# -*- test-case-name: tests.test_upstream_machine,tests.integration.test_upstream_real -*-
"""
The lifecycle of one model's upstream process, as an Automat state machine.

Public states (L{UpstreamMachine.state}): C{stopped -> starting -> ready ->
stopping -> stopped}, plus C{failed}.  Internally C{stopping} is three
machine states that differ only in where they end: C{stopping} (a stop was
asked for, or the process exited with status 0: ends C{stopped}), C{failing}
(a failed start or a crash: ends C{failed}) and C{restarting} (a start was
asked for while stopping: ends C{stopped}, then starts again).

Every way out of a live process goes through a L{_Termination}, which ends
only when the group leader has been reaped and no live process is left in
its process group, so that the port and the GPU memory are free.

The layout follows Twisted's C{ClientService} machine
(C{twisted/application/_client_service.py}): an input protocol
(L{_Upstream}), a dataclass core holding the collaborators and the waiter
lists (L{_Core}), and a data-state factory that performs the entry action of
C{starting} (spawning the process and starting the readiness probe).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ClassVar, Mapping, Protocol

from automat import TypeMachineBuilder, pep614

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from llamaswap.upstream.process import UpstreamProcessProtocol
from llamaswap.upstream.ports import portInUse

if TYPE_CHECKING:  # pragma: no cover
    from llamaswap.config import ModelConfig
    from llamaswap.interfaces import IHealthProbe, ILauncher

__all__ = ["UpstreamMachine", "UpstreamStartError", "goDuration"]

#: Grace between SIGTERM and SIGKILL after a failed health check.
FAILED_START_GRACE = 5.0

#: Readiness probe backoff: the first probe goes out at once, then these.
#: The cap bounds how late a ready upstream is noticed (a refused connect on
#: loopback, or a 503 from a loading llama-server, costs microseconds).
PROBE_FIRST_DELAY = 0.005
PROBE_MAX_DELAY = 0.02

#: How often a stopping group is checked for live processes.
POLL_FIRST_DELAY = 0.005
POLL_MAX_DELAY = 0.05


class UpstreamStartError(Exception):
    """
    An upstream could not be made ready.

    @ivar message: what went wrong, in the reference's words (for example
        C{"upstream command exited prematurely (exit code 1)"}).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def goDuration(seconds: float) -> str:
    """
    Format a duration the way Go's C{time.Duration.String} does.

    @return: e.g. C{"15s"}, C{"2m0s"}, C{"1h0m0s"}, C{"1.5s"}, C{"500ms"}.
    """
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)

    def fraction(value: int, unit: int) -> str:
        whole, rest = divmod(value, unit)
        if not rest:
            return str(whole)
        digits = len(str(unit)) - 1
        return "{}.{}".format(whole, str(rest).rjust(digits, "0").rstrip("0"))

    if ns < 1000:
        return "{}{}ns".format(sign, ns)
    if ns < 1000_000:
        return "{}{}\u00b5s".format(sign, fraction(ns, 1000))
    if ns < 1000_000_000:
        return "{}{}ms".format(sign, fraction(ns, 1000_000))
    hours, ns = divmod(ns, 3600 * 1000_000_000)
    minutes, ns = divmod(ns, 60 * 1000_000_000)
    out = sign
    if hours:
        out += "{}h".format(hours)
    if hours or minutes:
        out += "{}m".format(minutes)
    return out + "{}s".format(fraction(ns, 1000_000_000))


def describeExit(reason: object) -> str:
    """
    @return: C{"exit code N"} or C{"signal N"} for an exit reason value.
    """
    if isinstance(reason, ProcessDone):
        return "exit code 0"
    if isinstance(reason, ProcessTerminated):
        if reason.exitCode is not None:
            return "exit code {}".format(reason.exitCode)
        if reason.signal is not None:
            return "signal {}".format(reason.signal)
    return str(reason)


class _Upstream(Protocol):
    """
    The inputs of the machine.  Every input returns L{None}, so that Automat
    can queue one that arrives while another is being handled (a waiter's
    callback calling L{UpstreamMachine.start}, say) instead of raising.
    """

    def start(self) -> None:
        "Someone wants the upstream ready; their waiter is in startWaiters."

    def stop(self, grace: float) -> None:
        "Someone wants the upstream gone; their waiter is in stopWaiters."

    def _healthy(self) -> None:
        "The readiness probe answered 200 (or there is no probe)."

    def _timedOut(self) -> None:
        "healthCheckTimeout passed while starting."

    def _spawnFailed(self, message: str) -> None:
        "The command could not be spawned at all."

    def _exited(self, reason: object) -> None:
        "The group leader was reaped after a failure exit or a signal."

    def _finished(self, reason: object) -> None:
        "The group leader was reaped after exiting with status 0."

    def _groupGone(self) -> None:
        "The leader is reaped and the process group has no live process."


class _Termination:
    """
    Takes one run's process group down: ask (C{cmdStop} or SIGTERM), wait up
    to the grace period, force (SIGKILL to the group), and keep waiting until
    the leader is reaped and the group is empty; then feed C{_groupGone}.

    A stop command is spawned through the launcher as well, and is waited
    for (and killed past the grace) in the same way.
    """

    log = Logger()

    def __init__(
        self, core: _Core, upstream: _Upstream, run: _Run, grace: float, force: bool
    ) -> None:
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

    def _leaderExited(self, reason: object, pgid: int) -> None:
        self._waitingFor -= 1
        self._check()

    def _check(self) -> None:
        self._pollCall = None
        if self.done or self._waitingFor:
            return
        launcher = self._core.launcher
        if any(launcher.groupAlive(pgid) for pgid, _ in self._groups):
            self._pollCall = self._core.clock.callLater(self._pollDelay, self._check)
            self._pollDelay = min(self._pollDelay * 2, POLL_MAX_DELAY)
            return
        self.done = True
        if self._killCall is not None and self._killCall.active():
            self._killCall.cancel()
        self._killCall = None
        try:
            launcher.reapOrphans()
        except Exception:
            self.log.failure("[{model}] reaping orphans failed", model=self._core.model.id)
        self._upstream._groupGone()


@dataclass(eq=False)
class _Run:
    """
    One spawned upstream: its protocol, group id and the timers watching it.
    """

    protocol: UpstreamProcessProtocol
    startedAt: float
    pgid: int | None = None
    url: str | None = None
    probing: bool = False
    probeAttempts: int = 0
    probeCall: IDelayedCall | None = None
    probeInFlight: Deferred[bool] | None = None
    deadline: IDelayedCall | None = None
    termination: _Termination | None = None


@dataclass(eq=False)
class _Core:
    """
    What the machine works with: configuration, collaborators, callbacks,
    the current run and the waiters.
    """

    model: ModelConfig
    clock: IReactorTime
    launcher: ILauncher
    probe: IHealthProbe
    healthCheckTimeout: float
    environ: Mapping[str, str] | None
    onStateChange: Callable[[str, str, str], None]
    onOutput: Callable[[str, str, str], None] | None
    onExit: Callable[[str, object], None]
    portInUse: Callable[[str], bool]
    state: str = "stopped"
    run: _Run | None = None
    lastProtocol: UpstreamProcessProtocol | None = None
    startWaiters: list[Deferred[None]] = field(default_factory=list)
    stopWaiters: list[Deferred[None]] = field(default_factory=list)
    log: ClassVar[Logger] = Logger()

    # -- state and waiters --------------------------------------------------

    def setState(self, new: str) -> None:
        old = self.state
        if old == new:
            return
        self.state = new
        self.log.debug(
            "[{model}] {old} -> {new}", model=self.model.id, old=old, new=new
        )
        try:
            self.onStateChange(self.model.id, old, new)
        except Exception:
            self.log.failure("[{model}] onStateChange failed", model=self.model.id)

    def newStartWaiter(self) -> Deferred[None]:
        def cancel(d: Deferred[None]) -> None:
            if d in self.startWaiters:
                self.startWaiters.remove(d)

        d: Deferred[None] = Deferred(cancel)
        self.startWaiters.append(d)
        return d

    def newStopWaiter(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.stopWaiters.append(d)
        return d

    def succeedStarts(self) -> None:
        waiters, self.startWaiters = self.startWaiters, []
        for d in waiters:
            d.callback(None)

    def failStarts(self, message: str) -> None:
        waiters, self.startWaiters = self.startWaiters, []
        for d in waiters:
            d.errback(Failure(UpstreamStartError(message)))

    def finishStops(self) -> None:
        waiters, self.stopWaiters = self.stopWaiters, []
        for d in waiters:
            d.callback(None)

    # -- the process --------------------------------------------------------

    def environment(self) -> dict[str, str]:
        env = dict(self.environ if self.environ is not None else os.environ)
        env.update(dict(self.model.env))
        return env

    def launch(self, upstream: _Upstream) -> _Run:
        """
        Spawn the command and start the readiness probe; a failure to spawn
        is fed back as C{_spawnFailed} (Automat runs it right after this
        transition).
        """
        model = self.model
        protocol = UpstreamProcessProtocol(model.id, onOutput=self.onOutput)
        run = _Run(protocol=protocol, startedAt=self.clock.seconds())
        self.run = run
        argv = list(model.argv)
        if not argv:
            upstream._spawnFailed("empty command")
            return run
        if not model.proxy:
            upstream._spawnFailed("upstream proxy missing")
            return run
        port = getattr(model, "port", None)
        if port is not None and self.portInUse(model.proxy):
            upstream._spawnFailed(
                "port {} is already in use by another process (is another llamaswap or "
                "llama-swap running with the same startPort?)".format(port)
            )
            return run
        try:
            transport = self.launcher.spawn(model.id, argv, self.environment(), protocol)
        except Exception as e:
            upstream._spawnFailed(
                "failed to start command '{}': {}".format(model.cmd, e)
            )
            return run
        run.pgid = protocol.pid if protocol.pid is not None else transport.pid
        if model.checkEndpoint is None:
            upstream._healthy()
        else:
            run.url = healthURL(model.proxy, model.checkEndpoint)
            run.probing = True
            run.deadline = self.clock.callLater(
                self.healthCheckTimeout, self._deadlinePassed, upstream, run
            )
            self._probe(upstream, run)
        # Last: a child that is already gone makes this fire at once, and
        # Automat handles its _exited after what was fed above.
        protocol.whenExited().addCallback(self._leaderExited, upstream, run).addErrback(
            self._bug, "handling the exit"
        )
        return run

    def _leaderExited(self, reason: object, upstream: _Upstream, run: _Run) -> None:
        if self.run is not run:
            return
        if isinstance(reason, ProcessDone):
            upstream._finished(reason)
        else:
            upstream._exited(reason)

    def _bug(self, reason: Failure, doing: str) -> None:
        self.log.failure(
            "[{model}] unexpected error {doing}", reason, model=self.model.id, doing=doing
        )

    def _deadlinePassed(self, upstream: _Upstream, run: _Run) -> None:
        run.deadline = None
        if run.probing:
            upstream._timedOut()

    def _probe(self, upstream: _Upstream, run: _Run) -> None:
        run.probeCall = None
        if not run.probing:
            return
        assert run.url is not None
        try:
            checked = self.probe.check(run.url)
        except Exception as e:
            self.log.debug(
                "[{model}] health probe raised {error}", model=self.model.id, error=e
            )
            self._probed(False, upstream, run, None)
            return
        run.probeInFlight = checked
        checked.addCallbacks(
            self._probed,
            self._probeFailed,
            callbackArgs=(upstream, run, checked),
            errbackArgs=(upstream, run, checked),
        ).addErrback(self._bug, "handling a health probe")

    def _probeFailed(
        self, reason: Failure, upstream: _Upstream, run: _Run, checked: Deferred[bool]
    ) -> None:
        if not run.probing:
            return None  # cancelled by stopProbing
        self.log.debug(
            "[{model}] health probe failed: {error}",
            model=self.model.id,
            error=reason.getErrorMessage(),
        )
        self._probed(False, upstream, run, checked)

    def _probed(
        self,
        healthy: bool,
        upstream: _Upstream,
        run: _Run,
        checked: Deferred[bool] | None,
    ) -> None:
        if run.probeInFlight is checked:
            run.probeInFlight = None
        if not run.probing:
            return
        if healthy is True:
            run.probing = False
            upstream._healthy()
            return
        delay = min(PROBE_FIRST_DELAY * (2**run.probeAttempts), PROBE_MAX_DELAY)
        run.probeAttempts += 1
        run.probeCall = self.clock.callLater(delay, self._probe, upstream, run)

    def stopProbing(self, run: _Run) -> None:
        """
        Cancel every timer and probe of C{run}'s start.
        """
        run.probing = False
        for call in (run.probeCall, run.deadline):
            if call is not None and call.active():
                call.cancel()
        run.probeCall = run.deadline = None
        inFlight, run.probeInFlight = run.probeInFlight, None
        if inFlight is not None:
            # _probeFailed swallows the CancelledError: probing is off.
            inFlight.cancel()

    def terminate(
        self, upstream: _Upstream, run: _Run, grace: float, force: bool = False
    ) -> None:
        """
        Start taking C{run}'s process group down; C{_groupGone} follows.
        """
        run.termination = _Termination(self, upstream, run, grace, force)
        run.termination.begin()

    def hurry(self, grace: float) -> None:
        if self.run is not None and self.run.termination is not None:
            self.run.termination.hurry(grace)

    def endRun(self) -> None:
        if self.run is not None:
            self.lastProtocol = self.run.protocol
        self.run = None

    def outputTail(self, lines: int) -> str:
        protocol = self.run.protocol if self.run is not None else self.lastProtocol
        return protocol.outputTail(lines) if protocol is not None else ""

    def failStart(
        self, upstream: _Upstream, run: _Run, message: str, grace: float, force: bool
    ) -> None:
        """
        A start failed while its process may still be alive.
        """
        self.stopProbing(run)
        self.setState("stopping")
        self.log.error("[{model}] {message}", model=self.model.id, message=message)
        self.failStarts(message)
        self.terminate(upstream, run, grace, force)

    def logTail(self) -> None:
        tail = self.outputTail(20)
        if tail:
            self.log.error(
                "[{model}] last output lines:\n{tail}", model=self.model.id, tail=tail
            )


def healthURL(proxy: str, checkEndpoint: str) -> str:
    """
    @return: C{checkEndpoint} joined to the C{proxy} base URL.
    """
    return proxy.rstrip("/") + "/" + checkEndpoint.lstrip("/")


def _buildMachine() -> Callable[[_Core], _Upstream]:
    machine = TypeMachineBuilder(_Upstream, _Core)

    def launch(upstream: _Upstream, core: _Core) -> _Run:
        run = core.launch(upstream)
        core.setState("starting")
        return run

    stopped = machine.state("stopped")
    failed = machine.state("failed")
    starting = machine.state("starting", launch)
    ready = machine.state("ready")
    stopping = machine.state("stopping")
    failing = machine.state("failing")
    restarting = machine.state("restarting")

    # Behaviour-less transitions: the waiter is already queued on the core,
    # and the entry action of "starting" is its data factory.
    stopped.upon(_Upstream.start).to(starting).returns(None)
    failed.upon(_Upstream.start).to(starting).returns(None)
    starting.upon(_Upstream.start).loop().returns(None)
    stopping.upon(_Upstream.start).to(restarting).returns(None)
    failing.upon(_Upstream.start).to(restarting).returns(None)
    restarting.upon(_Upstream.start).loop().returns(None)
    # The termination watches the leader itself.
    for state in (stopping, failing, restarting):
        state.upon(_Upstream._exited).loop().returns(None)
        state.upon(_Upstream._finished).loop().returns(None)

    @pep614(stopped.upon(_Upstream.stop).loop())
    @pep614(failed.upon(_Upstream.stop).loop())
    def alreadyStopped(upstream: _Upstream, core: _Core, grace: float) -> None:
        core.finishStops()

    @pep614(starting.upon(_Upstream._healthy).to(ready))
    def becomeReady(upstream: _Upstream, core: _Core, run: _Run) -> None:
        core.stopProbing(run)
        elapsed = core.clock.seconds() - run.startedAt
        if run.url is None:
            core.log.info(
                "[{model}] ready in {seconds:.3f}s (no health check)",
                model=core.model.id,
                seconds=elapsed,
            )
        else:
            core.log.info(
                "[{model}] ready in {seconds:.3f}s (health check passed on {url})",
                model=core.model.id,
                seconds=elapsed,
                url=run.url,
            )
        core.setState("ready")
        core.succeedStarts()

    @pep614(starting.upon(_Upstream._spawnFailed).to(failed))
    def spawnFailed(upstream: _Upstream, core: _Core, run: _Run, message: str) -> None:
        core.stopProbing(run)
        core.endRun()
        core.log.error("[{model}] {message}", model=core.model.id, message=message)
        core.setState("failed")
        core.failStarts(message)

    @pep614(starting.upon(_Upstream._exited).to(failing))
    @pep614(starting.upon(_Upstream._finished).to(failing))
    def exitedEarly(upstream: _Upstream, core: _Core, run: _Run, reason: object) -> None:
        message = "upstream command exited prematurely ({})".format(describeExit(reason))
        core.failStart(upstream, run, message, 0, force=True)

    @pep614(starting.upon(_Upstream._timedOut).to(failing))
    def healthTimedOut(upstream: _Upstream, core: _Core, run: _Run) -> None:
        message = "health check timed out after {}".format(
            goDuration(core.healthCheckTimeout)
        )
        core.failStart(upstream, run, message, FAILED_START_GRACE, force=False)

    @pep614(starting.upon(_Upstream.stop).to(stopping))
    def abortStart(upstream: _Upstream, core: _Core, run: _Run, grace: float) -> None:
        core.stopProbing(run)
        core.setState("stopping")
        core.log.info("[{model}] start aborted by a stop", model=core.model.id)
        core.failStarts("aborted")
        core.terminate(upstream, run, grace)

    @pep614(ready.upon(_Upstream.start).loop())
    def alreadyReady(upstream: _Upstream, core: _Core) -> None:
        core.succeedStarts()

    @pep614(ready.upon(_Upstream.stop).to(stopping))
    def stopReady(upstream: _Upstream, core: _Core, grace: float) -> None:
        assert core.run is not None
        core.setState("stopping")
        core.terminate(upstream, core.run, grace)

    @pep614(ready.upon(_Upstream._exited).to(failing))
    @pep614(ready.upon(_Upstream._finished).to(stopping))
    def exitedOnItsOwn(upstream: _Upstream, core: _Core, reason: object) -> None:
        assert core.run is not None
        core.log.error(
            "[{model}] upstream exited on its own ({why})",
            model=core.model.id,
            why=describeExit(reason),
        )
        core.setState("stopping")
        try:
            core.onExit(core.model.id, reason)
        except Exception:
            core.log.failure("[{model}] onExit failed", model=core.model.id)
        core.terminate(upstream, core.run, 0, force=True)

    @pep614(stopping.upon(_Upstream.stop).loop())
    @pep614(failing.upon(_Upstream.stop).loop())
    def joinStop(upstream: _Upstream, core: _Core, grace: float) -> None:
        core.hurry(grace)

    @pep614(restarting.upon(_Upstream.stop).to(stopping))
    def cancelRestart(upstream: _Upstream, core: _Core, grace: float) -> None:
        core.failStarts("aborted")
        core.hurry(grace)

    @pep614(stopping.upon(_Upstream._groupGone).to(stopped))
    def becomeStopped(upstream: _Upstream, core: _Core) -> None:
        core.endRun()
        core.log.info("[{model}] stopped", model=core.model.id)
        core.setState("stopped")
        core.finishStops()

    @pep614(failing.upon(_Upstream._groupGone).to(failed))
    def becomeFailed(upstream: _Upstream, core: _Core) -> None:
        core.logTail()
        core.endRun()
        core.setState("failed")
        core.finishStops()

    @pep614(restarting.upon(_Upstream._groupGone).to(stopped))
    def stoppedThenRestart(upstream: _Upstream, core: _Core) -> None:
        core.endRun()
        core.setState("stopped")
        # Queued by Automat: runs once this transition is over.
        upstream.start()
        core.finishStops()

    return machine.build()


_makeUpstream = _buildMachine()


class UpstreamMachine:
    """
    One model's upstream process: start it, wait until it is ready, stop it
    and wait until its whole process group is gone.

    @ivar modelId: the model id.
    """

    def __init__(
        self,
        model: ModelConfig,
        *,
        reactor: IReactorTime,
        launcher: ILauncher,
        probe: IHealthProbe,
        healthCheckTimeout: float,
        environ: Mapping[str, str] | None = None,
        onStateChange: Callable[[str, str, str], None] = lambda model, old, new: None,
        onOutput: Callable[[str, str, str], None] | None = None,
        onExit: Callable[[str, object], None] = lambda model, reason: None,
        portInUse: Callable[[str], bool] = portInUse,
    ) -> None:
        """
        @param model: the model's configuration (C{id}, C{argv}, C{cmd},
            C{cmdStopArgv}, C{proxy}, C{checkEndpoint}, C{env},
            C{unloadTimeout}, and C{port} when there is one, are used).
        @param reactor: provides C{IReactorTime} (the machine's clock); the
            launcher and probe do the I/O.
        @param launcher: spawns and signals process groups (an L{ILauncher}
            that also has C{groupAlive(pgid)} and C{reapOrphans()}).
        @param probe: the readiness probe.
        @param healthCheckTimeout: seconds a start may take to become ready.
        @param environ: the base environment of the command; L{None} means
            C{os.environ}.  The model's C{env} entries are added to it.
        @param onStateChange: called as C{(modelId, old, new)} on every
            change of L{state}, in order.
        @param onOutput: called as C{(modelId, stream, line)} for every line
            the command writes; without one, each line is logged.
        @param onExit: called as C{(modelId, reason)} when a ready upstream
            exits without being asked to (C{reason} is the exit reason value).
        @param portInUse: tells whether a C{proxy} URL's port already has a
            listener; checked before spawning a model whose port llamaswap
            allocated (C{${PORT}}), so that a squatter is an error rather
            than a server the readiness probe mistakes for ours.
        """
        self.modelId: str = model.id
        self._core = _Core(
            model=model,
            clock=reactor,
            launcher=launcher,
            probe=probe,
            healthCheckTimeout=healthCheckTimeout,
            environ=environ,
            onStateChange=onStateChange,
            onOutput=onOutput,
            onExit=onExit,
            portInUse=portInUse,
        )
        self._upstream = _makeUpstream(self._core)

    def __repr__(self) -> str:
        return "<UpstreamMachine {} {}>".format(self.modelId, self.state)

    @property
    def state(self) -> str:
        """
        C{"stopped"}, C{"starting"}, C{"ready"}, C{"stopping"} or C{"failed"}.
        """
        return self._core.state

    @property
    def pid(self) -> int | None:
        """
        The process-group id of the current process while there is one
        (until its group is gone), else L{None}.
        """
        run = self._core.run
        return run.pgid if run is not None else None

    def start(self) -> Deferred[None]:
        """
        Make the upstream ready: spawn it when stopped or failed, join a
        start in progress, wait for a stop in progress and then start again.

        @return: a L{Deferred} that fires with L{None} once the upstream is
            ready (at once if it is), or errbacks with L{UpstreamStartError}
            if it cannot be made ready or a stop aborts the start.  Cancelling
            it removes only this waiter; the start goes on.
        """
        waiter = self._core.newStartWaiter()
        self._upstream.start()
        return waiter

    def stop(self, grace: float | None = None) -> Deferred[None]:
        """
        Stop the upstream: run C{cmdStop} or send SIGTERM to its process
        group, SIGKILL the group after C{grace} seconds, and wait until the
        group is gone.  Idempotent; a start in progress is aborted (its
        waiters get C{UpstreamStartError("aborted")}).

        @param grace: seconds between asking and killing; L{None} means the
            model's C{unloadTimeout}; C{0} kills at once.  A stop in progress
            with a longer grace is hurried to this one.

        @return: a L{Deferred} that fires with L{None} once the group leader
            has been reaped and no live process is left in its group (at once
            when stopped or failed).
        """
        if grace is None:
            grace = self._core.model.unloadTimeout
        waiter = self._core.newStopWaiter()
        self._upstream.stop(float(grace))
        return waiter

    def outputTail(self, lines: int = 20) -> str:
        """
        @return: the last C{lines} lines the current (or last) process
            wrote, joined with newlines.
        """
        return self._core.outputTail(lines)
