# -*- test-case-name: tests.test_upstream_machine,tests.integration.test_upstream_real -*-
"""
The lifecycle of one model's upstream process, as an Automat state machine.

Public states (L{UpstreamMachine.state}): C{stopped -> starting -> ready ->
stopping -> stopped}, plus C{failed}.  Internally C{stopping} is three
machine states that differ only in where they end: C{stopping} (a stop was
asked for, or the process exited with status 0: ends C{stopped}), C{failing}
(a failed start or a crash: ends C{failed}) and C{restarting} (a start was
asked for while stopping: ends C{stopped}, then starts again).

Every way out of a live process goes through a L{Termination}, which ends
only when the group leader has been reaped and no live process is left in
its process group, so that the port and the GPU memory are free.

The layout follows Twisted's C{ClientService} machine
(C{twisted/application/_client_service.py}): an input protocol
(L{_Upstream}), a dataclass core holding the collaborators and the waiter
lists (L{_Core}), and a data-state factory that performs the entry action of
C{starting} (spawning the process and starting the readiness probe).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ClassVar, Mapping, Protocol

from automat import TypeMachineBuilder, pep614

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from llamaswap.upstream.exits import (
    StartAborted,
    UpstreamStartError,
    describeExit,
    exitCodeOf,
    goDuration,
)
from llamaswap.upstream.ports import portInUse
from llamaswap.upstream.process import UPSTREAM_TAG, UpstreamProcessProtocol
from llamaswap.upstream.termination import Termination

if TYPE_CHECKING:  # pragma: no cover
    from llamaswap.config import ModelConfig
    from llamaswap.interfaces import IHealthProbe, ILauncher

__all__ = ["UpstreamMachine", "UpstreamStartError", "StartAborted", "goDuration"]

#: How many of its last output lines a failed start reports.
FAILURE_LINES = 5

#: Grace between SIGTERM and SIGKILL after a failed health check.
FAILED_START_GRACE = 5.0

#: Readiness probe backoff: the first probe goes out at once, then these.
#: The cap bounds how late a ready upstream is noticed (a refused connect on
#: loopback, or a 503 from a loading llama-server, costs microseconds).
PROBE_FIRST_DELAY = 0.005
PROBE_MAX_DELAY = 0.01

_runs = itertools.count(1)



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


@dataclass(eq=False)
class _Run:
    """
    One spawned upstream: its protocol, group id and the timers watching it.
    """

    protocol: UpstreamProcessProtocol
    startedAt: float
    pgid: int | None = None
    tag: str | None = None
    url: str | None = None
    probing: bool = False
    probeAttempts: int = 0
    probeCall: IDelayedCall | None = None
    probeInFlight: Deferred[bool] | None = None
    deadline: IDelayedCall | None = None
    termination: Termination | None = None


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
    # Reads the public state off the Automat machine (set once it is built).
    currentState: Callable[[], str] = lambda: "stopped"
    # The state onStateChange last announced: a cursor for the callback's
    # "old" argument, never read as the state itself.
    announced: str = "stopped"
    since: float | None = None
    run: _Run | None = None
    lastProtocol: UpstreamProcessProtocol | None = None
    startWaiters: list[Deferred[None]] = field(default_factory=list)
    stopWaiters: list[Deferred[None]] = field(default_factory=list)
    # A failed start's waiters hear why only once its group is gone, so
    # that nothing of it is left when the client is told.
    failedWaiters: list[Deferred[None]] = field(default_factory=list)
    failing: tuple[str, int | None] | None = None
    failure: UpstreamStartError | None = None
    log: ClassVar[Logger] = Logger()

    # -- state and waiters --------------------------------------------------

    def announce(self) -> None:
        """
        Tell C{onStateChange} about the public state Automat has just
        entered, if it differs from the last one told.
        """
        old, new = self.announced, self.currentState()
        if old == new:
            return
        self.announced = new
        self.since = self.clock.seconds()
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
        error = StartAborted() if message == "aborted" else UpstreamStartError(message)
        for d in waiters:
            d.errback(Failure(error))

    def takeFailure(self) -> Callable[[], None]:
        """
        The group of a failed start is gone: note why it failed, with the
        last lines it printed (L{failure}).

        @return: a callable that tells the start's waiters; call it once the
            new state is set.
        """
        if self.failing is None:
            return lambda: None
        message, exitCode = self.failing
        self.failing = None
        tail = self.outputTail(FAILURE_LINES)
        error = UpstreamStartError(message, exitCode, tuple(tail.splitlines()) if tail else ())
        self.failure = error
        waiters, self.failedWaiters = self.failedWaiters, []

        def tell() -> None:
            for d in waiters:
                d.errback(Failure(error))

        return tell

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
        self.failure = None
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
        run.tag = "{}-{}-{}".format(os.getpid(), model.id, next(_runs))
        env = self.environment()
        env[UPSTREAM_TAG] = run.tag
        try:
            transport = self.launcher.spawn(model.id, argv, env, protocol)
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
        delay = min(PROBE_FIRST_DELAY * (2 ** min(run.probeAttempts, 16)), PROBE_MAX_DELAY)
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
        run.termination = Termination(self, upstream, run, grace, force)
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
        self,
        upstream: _Upstream,
        run: _Run,
        message: str,
        grace: float,
        force: bool,
        exitCode: int | None = None,
    ) -> None:
        """
        A start failed while its process may still be alive: take its group
        down; its waiters are told once it is gone (L{reportFailure}).
        """
        self.stopProbing(run)
        self.announce()
        self.log.error("[{model}] {message}", model=self.model.id, message=message)
        self.failing = (message, exitCode)
        self.failedWaiters.extend(self.startWaiters)
        self.startWaiters = []
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


#: The public state (L{UpstreamMachine.state}) of each Automat state.
PUBLIC_STATE: Mapping[str, str] = {
    "stopped": "stopped",
    "failed": "failed",
    "starting": "starting",
    "ready": "ready",
    "stopping": "stopping",
    "failing": "stopping",
    "restarting": "stopping",
}


def automatState(upstream: _Upstream) -> str:
    """
    @return: the name of the state Automat holds C{upstream} in: the one
        owner of the lifecycle state.  Automat sets it before a transition's
        behaviour runs, so a behaviour (and any callback it makes) reads the
        state being entered.
    """
    transitioner = upstream.__automat_transitioner__  # type: ignore[attr-defined]
    return str(transitioner._state.name)


def _buildMachine() -> Callable[[_Core], _Upstream]:
    machine = TypeMachineBuilder(_Upstream, _Core)

    def launch(upstream: _Upstream, core: _Core) -> _Run:
        run = core.launch(upstream)
        core.announce()
        return run

    # Each name is a key of PUBLIC_STATE.
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
        core.announce()
        core.succeedStarts()

    @pep614(starting.upon(_Upstream._spawnFailed).to(failed))
    def spawnFailed(upstream: _Upstream, core: _Core, run: _Run, message: str) -> None:
        core.stopProbing(run)
        core.endRun()
        core.log.error("[{model}] {message}", model=core.model.id, message=message)
        core.failure = UpstreamStartError(message)
        core.announce()
        core.failStarts(message)

    @pep614(starting.upon(_Upstream._exited).to(failing))
    @pep614(starting.upon(_Upstream._finished).to(failing))
    def exitedEarly(upstream: _Upstream, core: _Core, run: _Run, reason: object) -> None:
        message = "upstream command exited prematurely ({})".format(describeExit(reason))
        core.failStart(upstream, run, message, 0, force=True, exitCode=exitCodeOf(reason))

    @pep614(starting.upon(_Upstream._timedOut).to(failing))
    def healthTimedOut(upstream: _Upstream, core: _Core, run: _Run) -> None:
        message = "health check timed out after {}".format(
            goDuration(core.healthCheckTimeout)
        )
        core.failStart(upstream, run, message, FAILED_START_GRACE, force=False)

    @pep614(starting.upon(_Upstream.stop).to(stopping))
    def abortStart(upstream: _Upstream, core: _Core, run: _Run, grace: float) -> None:
        core.stopProbing(run)
        core.announce()
        core.log.info("[{model}] start aborted by a stop", model=core.model.id)
        core.failStarts("aborted")
        core.terminate(upstream, run, grace)

    @pep614(ready.upon(_Upstream.start).loop())
    def alreadyReady(upstream: _Upstream, core: _Core) -> None:
        core.succeedStarts()

    @pep614(ready.upon(_Upstream.stop).to(stopping))
    def stopReady(upstream: _Upstream, core: _Core, grace: float) -> None:
        assert core.run is not None
        core.announce()
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
        core.announce()
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
        tell = core.takeFailure()
        core.endRun()
        core.log.info("[{model}] stopped", model=core.model.id)
        core.announce()
        tell()
        core.finishStops()

    @pep614(failing.upon(_Upstream._groupGone).to(failed))
    def becomeFailed(upstream: _Upstream, core: _Core) -> None:
        core.logTail()
        tell = core.takeFailure()
        core.endRun()
        core.announce()
        tell()
        core.finishStops()

    @pep614(restarting.upon(_Upstream._groupGone).to(stopped))
    def stoppedThenRestart(upstream: _Upstream, core: _Core) -> None:
        tell = core.takeFailure()
        core.endRun()
        core.announce()
        tell()
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
            whose C{survey} tells, off the reactor thread, what a stopping run left).
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
        upstream = self._upstream
        self._core.currentState = lambda: PUBLIC_STATE[automatState(upstream)]

    def __repr__(self) -> str:
        return "<UpstreamMachine {} {}>".format(self.modelId, self.state)

    @property
    def state(self) -> str:
        """
        C{"stopped"}, C{"starting"}, C{"ready"}, C{"stopping"} or C{"failed"}.
        """
        return self._core.currentState()

    @property
    def since(self) -> float | None:
        """
        When L{state} was entered (the clock's seconds), L{None} before the
        first change.
        """
        return self._core.since

    @property
    def pid(self) -> int | None:
        """
        The process-group id of the current process while there is one
        (until its group is gone), else L{None}.
        """
        run = self._core.run
        return run.pgid if run is not None else None

    @property
    def failure(self) -> dict | None:
        """
        Why the last start failed (C{{"reason", "exitCode", "lastLines"}}),
        until the next start; else L{None}.
        """
        error = self._core.failure
        return error.record() if error is not None else None

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
