"""
Tests for L{llamaswap.upstream.machine}: the lifecycle of one upstream,
driven with a fake clock, launcher and probe (no real process, no reactor).
"""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from llamaswap.upstream import UpstreamMachine, UpstreamStartError
from llamaswap.upstream.machine import (
    FAILED_START_GRACE,
    PROBE_MAX_DELAY,
    PUBLIC_STATE,
    _makeUpstream,
    automatState,
    goDuration,
)
from llamaswap.upstream.process import UPSTREAM_TAG
from tests.fakes import FakeLauncher, FakeProbe, StubModelConfig

TERM = signal.SIGTERM
KILL = signal.SIGKILL

BASE_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/home/llama", "SHARED": "base"}


class MachineTestCase(SynchronousTestCase):
    """
    Builds machines against a fake clock, launcher and probe, records every
    callback, and checks that no delayed call is left over.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.launcher = FakeLauncher()
        self.probe = FakeProbe()
        self.transitions: list[tuple[str, str]] = []
        self.outputs: list[tuple[str, str, str]] = []
        self.exits: list[tuple[str, object]] = []

    def tearDown(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def machine(
        self,
        healthCheckTimeout: float = 15,
        environ: dict[str, str] | None = BASE_ENV,
        portInUse: Any = lambda url: False,
        **modelFields: Any,
    ) -> UpstreamMachine:
        model = StubModelConfig(**modelFields)
        return UpstreamMachine(
            model,
            portInUse=portInUse,
            reactor=self.clock,
            launcher=self.launcher,
            probe=self.probe,
            healthCheckTimeout=healthCheckTimeout,
            environ=environ,
            onStateChange=lambda model, old, new: self.transitions.append((old, new)),
            onOutput=lambda model, stream, line: self.outputs.append(
                (model, stream, line)
            ),
            onExit=lambda model, reason: self.exits.append((model, reason)),
        )

    def readyMachine(self, **kw: Any) -> UpstreamMachine:
        machine = self.machine(**kw)
        started = machine.start()
        self.probe.answer(True)
        self.successResultOf(started)
        self.assertEqual(machine.state, "ready")
        return machine

    def startError(self, d: Deferred[None]) -> str:
        failure = self.failureResultOf(d, UpstreamStartError)
        self.assertEqual(str(failure.value), failure.value.message)
        return failure.value.message

    def probeDelays(self) -> list[float]:
        """
        @return: the delay until each scheduled probe (the health deadline
            excluded).
        """
        now = self.clock.seconds()
        return [
            round(call.getTime() - now, 6)
            for call in self.clock.getDelayedCalls()
            if call.func.__name__ == "_probe"
        ]


class StartTests(MachineTestCase):
    def test_noHealthCheck(self) -> None:
        """
        Without a check endpoint the upstream is ready as soon as it is
        spawned: stopped -> starting -> ready, with the command's argv, its
        process group id as pid, and stdin closed.
        """
        machine = self.machine(checkEndpoint=None)
        self.assertEqual((machine.state, machine.pid), ("stopped", None))
        self.assertIsNone(self.successResultOf(machine.start()))
        self.assertEqual(machine.state, "ready")
        self.assertEqual(self.transitions, [("stopped", "starting"), ("starting", "ready")])
        [process] = self.launcher.spawned
        self.assertEqual(self.launcher.spawns[0][:2], ("m1", ["llama-server", "--port", "5800"]))
        self.assertEqual(machine.pid, process.pid)
        self.assertEqual(self.probe.checks, [])
        self.assertEqual(machine.modelId, "m1")

    def test_probeImmediatelyThenBackoff(self) -> None:
        """
        The first probe goes out at once, the next ones after 5 ms doubling
        up to 10 ms; a 200 makes the upstream ready.
        """
        machine = self.machine()
        started = machine.start()
        self.assertEqual(self.probe.urls, ["http://localhost:5800/health"])
        self.assertEqual(machine.state, "starting")
        delays = []
        for _ in range(8):
            self.probe.answer(False)
            [delay] = self.probeDelays()
            delays.append(delay)
            self.clock.advance(delay)
        self.assertEqual(delays, [0.005, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01])
        self.assertEqual(len(self.probe.checks), 9)
        self.assertNoResult(started)
        self.probe.answer(True)
        self.assertIsNone(self.successResultOf(started))
        self.assertEqual(self.transitions, [("stopped", "starting"), ("starting", "ready")])
        self.assertEqual(self.probeDelays(), [])

    def test_probeURLJoin(self) -> None:
        """
        The check endpoint is joined to the proxy URL with a single slash.
        """
        machine = self.machine(proxy="http://127.0.0.1:9000/", checkEndpoint="v1/models")
        machine.start()
        self.assertEqual(self.probe.urls, ["http://127.0.0.1:9000/v1/models"])
        self.probe.answer(True)

    def test_probeErrorIsNotReady(self) -> None:
        """
        A probe that errbacks counts as "not ready yet".
        """
        machine = self.machine()
        started = machine.start()
        self.probe.pending[0].errback(ConnectionRefusedError())
        self.assertEqual(self.probeDelays(), [0.005])
        self.clock.advance(0.005)
        self.probe.answer(True)
        self.successResultOf(started)

    def test_probeRaisingIsNotReady(self) -> None:
        """
        A probe that raises counts as "not ready yet".
        """
        calls = []

        def check(url: str) -> Deferred[bool]:
            calls.append(url)
            if len(calls) == 1:
                raise RuntimeError("probe broke")
            return fail(ValueError("still broken")) if len(calls) == 2 else Deferred.fromCoroutine(_true())

        async def _true() -> bool:
            return True

        self.probe.check = check  # type: ignore[method-assign]
        machine = self.machine()
        started = machine.start()
        self.clock.advance(0.005)
        self.clock.advance(0.01)
        self.successResultOf(started)
        self.assertEqual(len(calls), 3)

    def test_readyLogged(self) -> None:
        """
        Becoming ready is logged with the time it took and the URL.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        machine = self.machine()
        machine.start()
        self.clock.advance(0.25)
        self.probe.answer(True)
        [event] = [e for e in events if "ready in" in e["log_format"]]
        self.assertEqual(
            event["log_format"],
            "[{model}] ready in {seconds:.3f}s (health check passed on {url})",
        )
        self.assertEqual(event["model"], "m1")
        self.assertAlmostEqual(event["seconds"], 0.25)
        self.assertEqual(event["url"], "http://localhost:5800/health")

    def test_startJoins(self) -> None:
        """
        A start while starting joins it: one spawn, every waiter fires.
        """
        machine = self.machine()
        first, second = machine.start(), machine.start()
        self.assertEqual(len(self.launcher.spawned), 1)
        self.assertEqual(len(self.probe.checks), 1)
        self.probe.answer(True)
        self.successResultOf(first)
        self.successResultOf(second)

    def test_startWhenReady(self) -> None:
        """
        A start when ready fires at once and spawns nothing.
        """
        machine = self.readyMachine()
        self.successResultOf(machine.start())
        self.assertEqual(len(self.launcher.spawned), 1)
        self.assertEqual(self.transitions, [("stopped", "starting"), ("starting", "ready")])

    def test_cancelOneWaiter(self) -> None:
        """
        Cancelling one start waiter removes only that waiter; the start goes
        on and the other waiters fire.
        """
        machine = self.machine()
        first, second = machine.start(), machine.start()
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertNoResult(second)
        self.assertEqual(machine.state, "starting")
        self.probe.answer(True)
        self.successResultOf(second)
        self.assertEqual(machine.state, "ready")

    def test_cancelEveryWaiter(self) -> None:
        """
        With every waiter cancelled the start still goes on to ready.
        """
        machine = self.machine()
        started = machine.start()
        started.cancel()
        self.failureResultOf(started, CancelledError)
        self.probe.answer(True)
        self.assertEqual(machine.state, "ready")

    def test_environment(self) -> None:
        """
        The command gets an explicit dict: the base environment plus the
        model's env entries, which win, plus the run's tag (unique to it).
        """
        machine = self.machine(
            checkEndpoint=None, env=(("SHARED", "model"), ("CUDA_VISIBLE_DEVICES", "1"))
        )
        self.successResultOf(machine.start())
        env = dict(self.launcher.spawns[0][2])
        tag = env.pop(UPSTREAM_TAG)
        self.assertTrue(tag.endswith("-m1-" + tag.rsplit("-", 1)[1]))
        self.assertEqual(
            env,
            {
                "PATH": "/usr/bin:/bin",
                "HOME": "/home/llama",
                "SHARED": "model",
                "CUDA_VISIBLE_DEVICES": "1",
            },
        )

    def test_environmentDefaultsToOsEnviron(self) -> None:
        """
        Without C{environ} the base environment is C{os.environ}.
        """
        machine = self.machine(checkEndpoint=None, environ=None, env=(("X_LLAMA", "1"),))
        self.successResultOf(machine.start())
        expected = dict(os.environ, X_LLAMA="1")
        env = dict(self.launcher.spawns[0][2])
        env.pop(UPSTREAM_TAG)
        self.assertEqual(env, expected)

    def test_emptyCommand(self) -> None:
        """
        An empty argv fails with "empty command" without spawning.
        """
        machine = self.machine(argv=(), cmd="")
        self.assertEqual(self.startError(machine.start()), "empty command")
        self.assertEqual(self.launcher.spawned, [])
        self.assertEqual(machine.state, "failed")
        self.assertEqual(self.transitions, [("stopped", "starting"), ("starting", "failed")])

    def test_proxyMissing(self) -> None:
        """
        An empty proxy fails with "upstream proxy missing".
        """
        machine = self.machine(proxy="")
        self.assertEqual(self.startError(machine.start()), "upstream proxy missing")
        self.assertEqual(self.launcher.spawned, [])

    def test_spawnFailure(self) -> None:
        """
        A launcher that raises fails the start with the reference's message.
        """
        self.launcher.spawnError = OSError("no such thing")
        machine = self.machine()
        message = "failed to start command 'llama-server --port 5800': no such thing"
        self.assertEqual(self.startError(machine.start()), message)
        self.assertEqual(machine.state, "failed")
        self.assertIsNone(machine.pid)
        self.assertEqual(self.transitions, [("stopped", "starting"), ("starting", "failed")])

    def test_startAfterFailure(self) -> None:
        """
        From failed, a start spawns again.
        """
        self.launcher.spawnError = OSError("not yet")
        machine = self.machine()
        self.startError(machine.start())
        self.launcher.spawnError = None
        started = machine.start()
        self.probe.answer(True)
        self.successResultOf(started)
        self.assertEqual(
            self.transitions,
            [
                ("stopped", "starting"),
                ("starting", "failed"),
                ("failed", "starting"),
                ("starting", "ready"),
            ],
        )

    def test_output(self) -> None:
        """
        Output lines go to onOutput with the model id and the stream, and
        are kept for outputTail, also after the process is gone.
        """
        machine = self.machine(checkEndpoint=None)
        machine.start()
        process = self.launcher.last
        process.emit(b"loading model\nlayer 1")
        process.emit(b"/2\n")
        process.emit(b"oops\n", fd=2)
        self.assertEqual(
            self.outputs,
            [
                ("m1", "stdout", "loading model"),
                ("m1", "stdout", "layer 1/2"),
                ("m1", "stderr", "oops"),
            ],
        )
        self.assertEqual(machine.outputTail(2), "layer 1/2\noops")
        stopped = machine.stop(grace=0)
        process.exit(signal=9)
        self.successResultOf(stopped)
        self.assertEqual(machine.outputTail(), "loading model\nlayer 1/2\noops")


class StartFailureTests(MachineTestCase):
    def test_healthTimeout(self) -> None:
        """
        Past healthCheckTimeout probing stops, the group gets SIGTERM and,
        5 s later, SIGKILL; the state is failed only once the group is gone,
        and only then do the waiters get "health check timed out after
        15s" (nothing is left of the start when a client hears of it).
        """
        machine = self.machine(healthCheckTimeout=15)
        started = machine.start()
        pid = machine.pid
        while self.clock.seconds() < 15:
            if self.probe.pending:
                self.probe.answer(False)
            self.clock.advance(min(PROBE_MAX_DELAY, 15 - self.clock.seconds()))
        self.assertNoResult(started)
        self.assertEqual(self.probe.pending, [])
        self.assertEqual(self.probeDelays(), [])
        self.assertEqual(machine.state, "stopping")
        self.assertEqual(self.launcher.signalsTo(pid), [TERM])
        self.clock.advance(FAILED_START_GRACE - 0.001)
        self.assertEqual(self.launcher.signalsTo(pid), [TERM])
        self.clock.advance(0.001)
        self.assertEqual(self.launcher.signalsTo(pid), [TERM, KILL])
        self.assertEqual(machine.state, "stopping")
        self.launcher.last.exit(signal=9)
        self.assertEqual(machine.state, "failed")
        self.assertEqual(self.startError(started), "health check timed out after 15s")
        self.assertIsNone(machine.pid)
        self.assertEqual(
            self.transitions,
            [("stopped", "starting"), ("starting", "stopping"), ("stopping", "failed")],
        )
        self.assertEqual(self.launcher.reaps, 1)
        self.assertEqual(self.exits, [])

    def test_healthTimeoutCancelsProbeInFlight(self) -> None:
        """
        A probe still in flight at the deadline is cancelled; the group
        exiting on SIGTERM ends the failure without SIGKILL.
        """
        machine = self.machine(healthCheckTimeout=120)
        started = machine.start()
        self.assertEqual(len(self.probe.pending), 1)
        self.clock.advance(120)
        self.assertEqual(self.probe.cancelled, ["http://localhost:5800/health"])
        self.assertEqual(self.probe.pending, [])
        self.launcher.last.exit(signal=15)
        self.assertEqual(machine.state, "failed")
        self.assertEqual(self.startError(started), "health check timed out after 2m0s")
        self.assertEqual(self.launcher.signalsTo(machine.pid or 4000), [TERM])

    def test_failureLogsOutputTail(self) -> None:
        """
        A failed start logs the last output lines at error level with the
        model id.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        machine = self.machine()
        started = machine.start()
        self.launcher.last.emit(b"error: cannot open model.gguf\n", fd=2)
        self.launcher.last.exit(code=1)
        self.startError(started)
        errors = [e for e in events if e["log_level"] == LogLevel.error]
        self.assertTrue(errors)
        self.assertTrue(all(e["model"] == "m1" for e in errors))
        self.assertIn(
            "error: cannot open model.gguf", [e.get("tail") for e in errors]
        )

    def test_exitedWhileStarting(self) -> None:
        """
        The command exiting before it is ready fails the start with
        "upstream command exited prematurely (exit code 1)"; whatever is
        left of its group is killed, probing stops.
        """
        machine = self.machine()
        started = machine.start()
        pid = machine.pid
        self.assertEqual(len(self.probe.pending), 1)
        self.launcher.last.exit(code=1)
        self.assertEqual(
            self.startError(started), "upstream command exited prematurely (exit code 1)"
        )
        self.assertEqual(len(self.probe.cancelled), 1)
        self.assertEqual(self.probe.pending, [])
        self.assertEqual(self.launcher.signalsTo(pid), [KILL])
        self.assertEqual(machine.state, "failed")
        self.assertEqual(
            self.transitions,
            [("stopped", "starting"), ("starting", "stopping"), ("stopping", "failed")],
        )
        self.assertEqual(self.exits, [])

    def test_failureSaysExitCodeAndLastLines(self) -> None:
        """
        A failed start's error carries the exit code and the last lines the
        command printed; its client message says that the upstream failed
        to start; the machine keeps it as its failure until the next start.
        """
        machine = self.machine()
        started = machine.start()
        self.launcher.last.emit(
            b"setsid: failed to execute /nonexistent/bin: No such file or directory\n", fd=2)
        self.launcher.last.exit(code=127)
        error = self.failureResultOf(started, UpstreamStartError).value
        self.assertEqual(error.exitCode, 127)
        self.assertEqual(
            error.lastLines,
            ("setsid: failed to execute /nonexistent/bin: No such file or directory",))
        self.assertEqual(
            error.clientMessage(),
            "upstream failed to start: upstream command exited prematurely (exit code 127);"
            " last output: setsid: failed to execute /nonexistent/bin: No such file or directory")
        self.assertEqual(machine.failure, error.record())
        machine.start()
        self.assertIsNone(machine.failure)
        self.probe.answer(True)

    def test_exitedDuringSpawn(self) -> None:
        """
        A child reaped before spawn() returns (its transport's pid already
        None) still fails the start, and its group is still killed by its
        id.
        """
        self.launcher.exitDuringSpawn = 127
        machine = self.machine()
        started = machine.start()
        self.assertEqual(
            self.startError(started),
            "upstream command exited prematurely (exit code 127)",
        )
        process = self.launcher.last
        self.assertIsNone(process.pid)
        self.assertEqual(self.launcher.signals, [(process.originalPid, KILL)])
        self.assertEqual(machine.state, "failed")
        self.assertEqual(self.probe.pending, [])
        self.assertEqual(len(self.probe.cancelled), 1)

    def test_exitedDuringSpawnWithoutCheck(self) -> None:
        """
        Without a readiness check such a child is ready, then crashed.
        """
        self.launcher.exitDuringSpawn = 1
        machine = self.machine(checkEndpoint=None)
        self.successResultOf(machine.start())
        self.assertEqual(machine.state, "failed")
        self.assertEqual(len(self.exits), 1)
        self.assertEqual(
            self.transitions,
            [
                ("stopped", "starting"),
                ("starting", "ready"),
                ("ready", "stopping"),
                ("stopping", "failed"),
            ],
        )

    def test_exitedWhileStartingBySignal(self) -> None:
        """
        A signal is named in the message; exit code 0 is premature too.
        """
        machine = self.machine()
        started = machine.start()
        self.launcher.last.exit(signal=11)
        self.assertEqual(
            self.startError(started), "upstream command exited prematurely (signal 11)"
        )
        started = machine.start()
        self.launcher.last.exit(code=0)
        self.assertEqual(
            self.startError(started), "upstream command exited prematurely (exit code 0)"
        )

    def test_exitedWhileStartingGroupLingers(self) -> None:
        """
        After a premature exit the state stays stopping until the rest of
        the group is gone.
        """
        machine = self.machine()
        started = machine.start()
        pid = machine.pid
        assert pid is not None
        self.launcher.lingering.add(pid)
        self.launcher.last.exit(code=1)
        self.assertNoResult(started)
        self.assertEqual(machine.state, "stopping")
        self.assertEqual(machine.pid, pid)
        self.clock.advance(0.005)
        self.clock.advance(0.01)
        self.assertEqual(machine.state, "stopping")
        self.assertNoResult(started)
        self.launcher.lingering.discard(pid)
        self.clock.advance(0.02)
        self.assertEqual(machine.state, "failed")
        self.startError(started)

    def test_startFromWaiterCallback(self) -> None:
        """
        A waiter's errback may call start() again: the new start waits until
        the failed group is gone, then spawns afresh.
        """
        machine = self.machine()
        retried: list[Deferred[None]] = []
        first = machine.start()
        first.addErrback(lambda f: retried.append(machine.start()))
        self.launcher.last.exit(code=1)
        self.assertEqual(len(retried), 1)
        self.assertEqual(len(self.launcher.spawned), 2)
        self.assertEqual(machine.state, "starting")
        self.assertEqual(
            self.transitions,
            [
                ("stopped", "starting"),
                ("starting", "stopping"),
                ("stopping", "failed"),
                ("failed", "starting"),
            ],
        )
        self.probe.answer(True)
        self.successResultOf(retried[0])


class ReentrancyTests(MachineTestCase):
    def test_stopFromStateChange(self) -> None:
        """
        onStateChange may call stop(): the stop is handled once the current
        transition is over.
        """
        stops: list[Deferred[None]] = []

        def onStateChange(model: str, old: str, new: str) -> None:
            self.transitions.append((old, new))
            if new == "ready":
                stops.append(machine.stop(grace=1))

        machine = UpstreamMachine(
            StubModelConfig(checkEndpoint=None),
            reactor=self.clock,
            launcher=self.launcher,
            probe=self.probe,
            healthCheckTimeout=15,
            onStateChange=onStateChange,
        )
        started = machine.start()
        self.successResultOf(started)
        self.assertEqual(machine.state, "stopping")
        self.launcher.last.exit(signal=15)
        self.successResultOf(stops[0])
        self.assertEqual(
            self.transitions,
            [
                ("stopped", "starting"),
                ("starting", "ready"),
                ("ready", "stopping"),
                ("stopping", "stopped"),
            ],
        )

    def test_startFromStopCallback(self) -> None:
        """
        A stop waiter's callback may start again.
        """
        machine = self.readyMachine()
        restarted: list[Deferred[None]] = []
        machine.stop(grace=1).addCallback(lambda _: restarted.append(machine.start()))
        self.launcher.last.exit(signal=15)
        self.assertEqual(machine.state, "starting")
        self.probe.answer(True)
        self.successResultOf(restarted[0])

    def test_onStateChangeRaises(self) -> None:
        """
        A failing onStateChange is logged and does not break the machine.
        """

        def broken(model: str, old: str, new: str) -> None:
            raise RuntimeError("observer bug")

        machine = UpstreamMachine(
            StubModelConfig(checkEndpoint=None),
            reactor=self.clock,
            launcher=self.launcher,
            probe=self.probe,
            healthCheckTimeout=15,
            onStateChange=broken,
        )
        self.successResultOf(machine.start())
        self.assertEqual(machine.state, "ready")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)


class StateOwnerTests(MachineTestCase):
    """
    Automat's state is the one owner of the lifecycle state: the public
    state is read off it, never kept beside it.
    """

    def test_everyAutomatStateIsPublic(self) -> None:
        """
        Every state of the built machine has a public name.
        """
        automaton = _makeUpstream.__automat_automaton__  # type: ignore[attr-defined]
        names = {state.name for state in automaton.states()}
        self.assertEqual(names, set(PUBLIC_STATE))
        self.assertEqual(
            set(PUBLIC_STATE.values()),
            {"stopped", "starting", "ready", "stopping", "failed"},
        )

    def test_stateIsReadOffAutomat(self) -> None:
        """
        Through a start, a restart asked for while stopping, and a stop, the
        public state is Automat's state mapped, also inside onStateChange.
        """
        seen: list[tuple[str, str, str]] = []

        def onStateChange(model: str, old: str, new: str) -> None:
            seen.append((new, machine.state, automatState(machine._upstream)))

        machine = UpstreamMachine(
            StubModelConfig(),
            reactor=self.clock,
            launcher=self.launcher,
            probe=self.probe,
            healthCheckTimeout=15,
            onStateChange=onStateChange,
        )
        self.assertEqual(automatState(machine._upstream), "stopped")
        started = machine.start()
        self.probe.answer(True)
        self.successResultOf(started)
        stopped = machine.stop(grace=1)
        again = machine.start()
        self.assertEqual(automatState(machine._upstream), "restarting")
        self.assertEqual(machine.state, "stopping")
        self.launcher.last.exit(signal=15)
        self.successResultOf(stopped)
        self.probe.answer(True)
        self.successResultOf(again)
        self.assertEqual(machine.state, "ready")
        self.assertEqual(
            [(new, state) for new, state, _ in seen],
            [(new, new) for new, _, _ in seen],
        )
        self.assertEqual(
            [automat for _, _, automat in seen],
            ["starting", "ready", "stopping", "stopped", "starting", "ready"],
        )
        final = machine.stop(grace=0)
        self.launcher.last.exit(signal=9)
        self.successResultOf(final)
        self.assertEqual(automatState(machine._upstream), "stopped")


class OffThreadSurveyTests(MachineTestCase):
    """
    What is left of a stopping run (escaped descendants, live group members,
    the run's cgroup) is read off the reactor thread; the stop still fires
    only once a look begun after the leader's exit finds nothing.
    """

    def test_stopWaitsForTheSurvey(self) -> None:
        machine = self.readyMachine()
        self.launcher.holdSurveys = True
        stopped = machine.stop(grace=5)
        self.assertEqual(len(self.launcher.heldSurveys), 1, "the ask looks for escapees")
        self.launcher.answerSurvey()
        self.launcher.last.exit(signal=15)
        self.assertEqual(len(self.launcher.heldSurveys), 1, "the leader's exit looks again")
        self.assertNoResult(stopped)
        self.assertEqual(machine.state, "stopping")
        self.launcher.answerSurvey()
        self.successResultOf(stopped)
        self.assertEqual(machine.state, "stopped")

    def test_escapeesAreSignalledAndWaitedFor(self) -> None:
        """
        Escapees a survey finds get SIGTERM with the ask, SIGKILL once the
        grace is over; the stop fires only after a survey finds none.
        """
        machine = self.readyMachine()
        pid = machine.pid
        assert pid is not None
        self.launcher.escaped = [9001]
        self.launcher.holdSurveys = True
        stopped = machine.stop(grace=5)
        self.assertEqual(self.launcher.pidSignals, [], "nothing read on the reactor thread")
        self.launcher.answerSurvey()
        self.assertEqual(self.launcher.pidSignals, [(9001, TERM)])
        self.launcher.last.exit(signal=15)
        self.launcher.answerSurvey()
        self.assertEqual(self.launcher.pidSignals, [(9001, TERM)] * 2)
        self.assertNoResult(stopped)
        self.clock.advance(5)
        self.assertEqual(self.launcher.signalsTo(pid), [TERM, KILL])
        # The kill's own look and the poll's look race; either may come first.
        while self.launcher.heldSurveys:
            self.launcher.answerSurvey()
            self.clock.advance(1)
        self.assertIn((9001, KILL), self.launcher.pidSignals)
        self.assertEqual(self.launcher.escaped, [])
        self.successResultOf(stopped)
        self.assertEqual(machine.state, "stopped")

    def test_surveyAnsweredAfterTheEndIsIgnored(self) -> None:
        """
        A look that comes back after the stop is over signals nothing.
        """
        machine = self.readyMachine()
        self.launcher.holdSurveys = True
        stopped = machine.stop(grace=5)
        self.launcher.last.exit(signal=15)
        ask, check = self.launcher.heldSurveys
        self.launcher.heldSurveys = [check, ask]
        self.launcher.answerSurvey()
        self.successResultOf(stopped)
        self.launcher.escaped = [9002]
        self.launcher.answerSurvey()
        self.assertEqual(self.launcher.pidSignals, [])

    def test_failingSurveyDoesNotHangTheStop(self) -> None:
        machine = self.readyMachine()
        self.launcher.survey = lambda tag, pgid, pgids: fail(OSError("no /proc"))  # type: ignore
        stopped = machine.stop(grace=5)
        self.launcher.last.exit(signal=15)
        self.successResultOf(stopped)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 2)


class CrashTests(MachineTestCase):
    def test_crashWhileReady(self) -> None:
        """
        A ready upstream that dies: its group is killed, onExit is called
        with the exit reason, the state ends failed, and the next start
        spawns again.
        """
        machine = self.readyMachine()
        pid = machine.pid
        self.launcher.last.exit(code=3)
        self.assertEqual(len(self.exits), 1)
        model, reason = self.exits[0]
        self.assertEqual(model, "m1")
        self.assertIsInstance(reason, ProcessTerminated)
        self.assertEqual(reason.exitCode, 3)  # type: ignore[attr-defined]
        self.assertEqual(self.launcher.signalsTo(pid), [KILL])
        self.assertEqual(machine.state, "failed")
        self.assertEqual(
            self.transitions[2:], [("ready", "stopping"), ("stopping", "failed")]
        )
        started = machine.start()
        self.assertEqual(len(self.launcher.spawned), 2)
        self.probe.answer(True)
        self.successResultOf(started)

    def test_cleanExitWhileReady(self) -> None:
        """
        Exit code 0 while ready ends in stopped.
        """
        machine = self.readyMachine()
        self.launcher.last.exit(code=0)
        [(model, reason)] = self.exits
        self.assertIsInstance(reason, ProcessDone)
        self.assertEqual(machine.state, "stopped")

    def test_crashWaitsForGroup(self) -> None:
        """
        After a crash the state is failed only once the group is empty;
        a stop in the meantime waits for that too.
        """
        machine = self.readyMachine()
        pid = machine.pid
        assert pid is not None
        self.launcher.lingering.add(pid)
        self.launcher.last.exit(code=1)
        self.assertEqual(machine.state, "stopping")
        stopped = machine.stop()
        self.clock.advance(0.005)
        self.assertNoResult(stopped)
        self.launcher.lingering.clear()
        self.clock.advance(0.01)
        self.successResultOf(stopped)
        self.assertEqual(machine.state, "failed")


class StopTests(MachineTestCase):
    def test_stopWhenStopped(self) -> None:
        """
        Stopping a stopped (or failed) upstream succeeds at once.
        """
        machine = self.machine()
        self.assertIsNone(self.successResultOf(machine.stop()))
        self.launcher.spawnError = OSError("x")
        self.startError(machine.start())
        self.successResultOf(machine.stop(grace=0))
        self.assertEqual(self.launcher.signals, [])
        self.assertEqual(machine.state, "failed")

    def test_stopTermGraceKill(self) -> None:
        """
        stop() sends SIGTERM to the group, SIGKILL after the grace, and fires
        once the group is gone.
        """
        machine = self.readyMachine()
        pid = machine.pid
        stopped = machine.stop(grace=3)
        self.assertEqual(machine.state, "stopping")
        self.assertEqual(self.launcher.signalsTo(pid), [TERM])
        self.clock.advance(2.999)
        self.assertEqual(self.launcher.signalsTo(pid), [TERM])
        self.clock.advance(0.001)
        self.assertEqual(self.launcher.signalsTo(pid), [TERM, KILL])
        self.assertNoResult(stopped)
        self.launcher.last.exit(signal=9)
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(machine.state, "stopped")
        self.assertIsNone(machine.pid)
        self.assertEqual(
            self.transitions[2:], [("ready", "stopping"), ("stopping", "stopped")]
        )
        self.assertEqual(self.exits, [])
        self.assertEqual(self.launcher.reaps, 1)

    def test_stopExitsWithinGrace(self) -> None:
        """
        A process that exits on SIGTERM is never sent SIGKILL.
        """
        machine = self.readyMachine()
        pid = machine.pid
        stopped = machine.stop(grace=3)
        self.clock.advance(1)
        self.launcher.last.exit(signal=15)
        self.successResultOf(stopped)
        self.assertEqual(self.launcher.signalsTo(pid), [TERM])

    def test_stopDefaultsToUnloadTimeout(self) -> None:
        """
        stop() without a grace uses the model's unloadTimeout.
        """
        machine = self.readyMachine(unloadTimeout=2)
        pid = machine.pid
        stopped = machine.stop()
        self.clock.advance(1.999)
        self.assertEqual(self.launcher.signalsTo(pid), [TERM])
        self.clock.advance(0.001)
        self.assertEqual(self.launcher.signalsTo(pid), [TERM, KILL])
        self.launcher.last.exit(signal=9)
        self.successResultOf(stopped)

    def test_stopWaitsForEmptyGroup(self) -> None:
        """
        The leader being reaped is not enough: stop() fires once no live
        process is left in the group, polled every few ms, and the grace
        still applies to the rest of the group.
        """
        machine = self.readyMachine()
        pid = machine.pid
        assert pid is not None
        self.launcher.lingering.add(pid)
        stopped = machine.stop(grace=1)
        self.launcher.last.exit(signal=15)
        self.assertNoResult(stopped)
        self.assertEqual(machine.state, "stopping")
        self.clock.advance(0.5)
        self.assertNoResult(stopped)
        self.clock.advance(0.5)
        self.assertEqual(self.launcher.signalsTo(pid), [TERM, KILL])
        self.assertEqual(self.launcher.reaps, 0)
        self.launcher.lingering.clear()
        self.clock.advance(0.05)
        self.successResultOf(stopped)
        self.assertEqual(machine.state, "stopped")
        self.assertEqual(self.launcher.reaps, 1)

    def test_graceZero(self) -> None:
        """
        grace=0 sends SIGKILL at once, no SIGTERM.
        """
        machine = self.readyMachine()
        pid = machine.pid
        stopped = machine.stop(grace=0)
        self.assertEqual(self.launcher.signalsTo(pid), [KILL])
        self.launcher.last.exit(signal=9)
        self.successResultOf(stopped)

    def test_stopIdempotent(self) -> None:
        """
        A second stop joins the first: one SIGTERM, both fire.
        """
        machine = self.readyMachine()
        pid = machine.pid
        first, second = machine.stop(grace=5), machine.stop(grace=5)
        self.assertEqual(self.launcher.signalsTo(pid), [TERM])
        self.launcher.last.exit(signal=15)
        self.successResultOf(first)
        self.successResultOf(second)

    def test_shorterGraceHurries(self) -> None:
        """
        A second stop with a shorter grace brings the SIGKILL forward;
        grace=0 kills at once.
        """
        machine = self.readyMachine()
        pid = machine.pid
        machine.stop(grace=10)
        machine.stop(grace=2)
        self.clock.advance(2)
        self.assertEqual(self.launcher.signalsTo(pid), [TERM, KILL])
        self.launcher.last.exit(signal=9)

        machine.start()
        self.probe.answer(True)
        pid = machine.pid
        machine.stop(grace=10)
        machine.stop(grace=0)
        self.assertEqual(self.launcher.signalsTo(pid), [TERM, KILL])
        machine.stop(grace=20)
        self.launcher.last.exit(signal=9)
        self.assertEqual(machine.state, "stopped")

    def test_cmdStop(self) -> None:
        """
        With cmdStop, it is run (${PID} replaced, same environment) instead
        of SIGTERM, and stop() fires once both it and the upstream are gone.
        """
        machine = self.readyMachine(
            cmdStopArgv=("docker", "stop", "--pid=${PID}", "${PID}"),
            env=(("A", "1"),),
        )
        upstream = self.launcher.last
        pid = machine.pid
        stopped = machine.stop(grace=5)
        stopper = self.launcher.last
        self.assertIsNot(stopper, upstream)
        self.assertEqual(
            self.launcher.spawns[1][1], ["docker", "stop", "--pid={}".format(pid), str(pid)]
        )
        startEnv = dict(self.launcher.spawns[0][2])
        startEnv.pop(UPSTREAM_TAG)
        self.assertEqual(self.launcher.spawns[1][2], startEnv, "cmdStop is not tagged")
        self.assertEqual(self.launcher.signals, [])
        upstream.exit(code=0)
        self.assertNoResult(stopped)
        stopper.exit(code=0)
        self.successResultOf(stopped)
        self.assertEqual(self.launcher.signals, [])
        self.assertEqual(machine.state, "stopped")

    def test_cmdStopPastGrace(self) -> None:
        """
        Past the grace both the upstream's and the stop command's groups are
        killed.
        """
        machine = self.readyMachine(cmdStopArgv=("stopper", "${PID}"))
        upstream = self.launcher.last
        stopped = machine.stop(grace=5)
        stopper = self.launcher.last
        stopper.exit(code=1)
        self.clock.advance(5)
        assert upstream.originalPid is not None
        self.assertEqual(
            self.launcher.signals, [(upstream.originalPid, KILL), (stopper.originalPid, KILL)]
        )
        upstream.exit(signal=9)
        self.successResultOf(stopped)

    def test_cmdStopSpawnFails(self) -> None:
        """
        If cmdStop cannot be spawned, SIGTERM is sent instead.
        """
        machine = self.readyMachine(cmdStopArgv=("stopper",))
        pid = machine.pid
        self.launcher.spawnError = OSError("gone")
        stopped = machine.stop(grace=5)
        self.assertEqual(self.launcher.signalsTo(pid), [TERM])
        self.launcher.last.exit(signal=15)
        self.successResultOf(stopped)

    def test_stopWhileStarting(self) -> None:
        """
        A stop while starting aborts the start: its waiters get "aborted",
        probing stops, the group is stopped as usual.
        """
        machine = self.machine()
        started = machine.start()
        pid = machine.pid
        self.assertEqual(len(self.probe.pending), 1)
        stopped = machine.stop(grace=3)
        self.assertEqual(self.startError(started), "aborted")
        self.assertEqual(len(self.probe.cancelled), 1)
        self.assertEqual(self.probeDelays(), [])
        self.assertEqual(self.launcher.signalsTo(pid), [TERM])
        self.assertNoResult(stopped)
        self.launcher.last.exit(signal=15)
        self.successResultOf(stopped)
        self.assertEqual(
            self.transitions,
            [("stopped", "starting"), ("starting", "stopping"), ("stopping", "stopped")],
        )

    def test_startWhileStopping(self) -> None:
        """
        A start while stopping waits for the stop, then spawns again.
        """
        machine = self.readyMachine()
        stopped = machine.stop(grace=3)
        started = machine.start()
        self.assertEqual(machine.state, "stopping")
        self.assertEqual(len(self.launcher.spawned), 1)
        self.launcher.last.exit(signal=15)
        self.successResultOf(stopped)
        self.assertEqual(len(self.launcher.spawned), 2)
        self.assertEqual(machine.state, "starting")
        self.probe.answer(True)
        self.successResultOf(started)
        self.assertEqual(
            self.transitions,
            [
                ("stopped", "starting"),
                ("starting", "ready"),
                ("ready", "stopping"),
                ("stopping", "stopped"),
                ("stopped", "starting"),
                ("starting", "ready"),
            ],
        )

    def test_stopCancelsQueuedStart(self) -> None:
        """
        A stop after a start queued behind a stop aborts that start.
        """
        machine = self.readyMachine()
        machine.stop(grace=3)
        started = machine.start()
        stopped = machine.stop(grace=3)
        self.assertEqual(self.startError(started), "aborted")
        self.launcher.last.exit(signal=15)
        self.successResultOf(stopped)
        self.assertEqual(machine.state, "stopped")
        self.assertEqual(len(self.launcher.spawned), 1)

    def test_startWhileFailing(self) -> None:
        """
        A start while a failed start is being cleaned up waits for the group
        to be gone, then spawns again.
        """
        machine = self.machine(healthCheckTimeout=1)
        first = machine.start()
        self.probe.answer(False)
        self.clock.advance(1)
        second = machine.start()
        self.assertEqual(len(self.launcher.spawned), 1)
        self.launcher.last.exit(signal=15)
        self.startError(first)
        self.assertEqual(len(self.launcher.spawned), 2)
        self.probe.answer(True)
        self.successResultOf(second)


class GoDurationTests(SynchronousTestCase):
    def test_formats(self) -> None:
        """
        Durations read as Go prints them.
        """
        cases = {
            0: "0s",
            15: "15s",
            120: "2m0s",
            90: "1m30s",
            3600: "1h0m0s",
            3723.5: "1h2m3.5s",
            1.5: "1.5s",
            0.5: "500ms",
            0.0015: "1.5ms",
            0.000002: "2\u00b5s",
            -15: "-15s",
        }
        self.assertEqual({k: goDuration(k) for k in cases}, cases)


class PortInUseTests(MachineTestCase):
    """
    A model whose C{${PORT}} already has a listener fails to start, without
    spawning anything: the probe would otherwise take the squatter for it.
    """

    def test_takenPortFailsTheStart(self) -> None:
        checked: list[str] = []

        def taken(url: str) -> bool:
            checked.append(url)
            return True

        machine = self.machine(port=5800, portInUse=taken)
        message = self.startError(machine.start())
        self.assertIn("port 5800 is already in use", message)
        self.assertEqual(checked, ["http://localhost:5800"])
        self.assertEqual(self.launcher.spawned, [])
        self.assertEqual(machine.state, "failed")

    def test_fixedPortsAreNotChecked(self) -> None:
        machine = self.machine(checkEndpoint=None, portInUse=lambda url: self.fail("checked"))
        machine.start()
        self.assertEqual(len(self.launcher.spawned), 1)
