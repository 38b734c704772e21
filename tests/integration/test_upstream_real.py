"""
Integration tests for L{llamaswap.upstream}: real processes, real sockets,
the real reactor.  Each test takes a few seconds at most and cleans up every
process it started, also when it fails.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.threadable import isInIOThread
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from llamaswap.upstream import HealthProbe, Launcher, UpstreamMachine
from llamaswap.upstream.process import UpstreamProcessProtocol, becomeSubreaper
from tests.fakes import StubModelConfig
from tests.integration.support import freePort


def _procState(pid: int) -> str | None:
    """
    @return: the state letter of C{pid} from /proc, or L{None} if it is
        gone.
    """
    try:
        with open("/proc/{}/stat".format(pid), "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].split()[0].decode()


def _procName(pid: int) -> str | None:
    try:
        with open("/proc/{}/comm".format(pid)) as f:
            return f.read().strip()
    except OSError:
        return None


def _alive(pid: int) -> bool:
    return _procState(pid) not in (None, "Z", "X", "x")


async def _eventually(
    condition: Callable[[], object], timeout: float = 5.0, step: float = 0.01
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within {}s".format(timeout))
        await deferLater(reactor, step)


class _RecordingLauncher(Launcher):
    """
    The real launcher, keeping every protocol it spawned, so that tests can
    wait for the pipes to close and kill leftovers in cleanup.
    """

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.protocols: list[UpstreamProcessProtocol] = []
        self.pids: list[int] = []
        self.lookedFrom: list[bool] = []

    def leftovers(self, *a: Any) -> Any:
        self.lookedFrom.append(isInIOThread())
        return super().leftovers(*a)

    def spawn(self, model: str, argv: Any, env: Any, protocol: Any) -> Any:
        transport = super().spawn(model, argv, env, protocol)
        self.protocols.append(protocol)
        # transport.pid is None already if the child was reaped during spawn.
        if protocol.pid is not None:
            self.pids.append(protocol.pid)
        return transport

    async def allEnded(self) -> None:
        for protocol in self.protocols:
            await protocol.whenEnded()

    def killEverything(self) -> None:
        for pid in self.pids:
            self.signalGroup(pid, signal.SIGKILL)


class UpstreamMachineRealTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.launcher = _RecordingLauncher(reactor)
        self.lines: list[str] = []
        self.subreaper = becomeSubreaper()
        if self.subreaper:
            self.addCleanup(becomeSubreaper, False)
        # Cleanups run last-in first-out: this one runs last.
        self.addCleanup(self.launcher.killEverything)

    def machine(self, **modelFields: Any) -> UpstreamMachine:
        probe = HealthProbe(reactor)
        self.addCleanup(probe.close)
        machine = UpstreamMachine(
            StubModelConfig(**modelFields),
            reactor=reactor,
            launcher=self.launcher,
            probe=probe,
            healthCheckTimeout=10,
            onOutput=lambda model, stream, line: self.lines.append(line),
        )

        async def stopAndWait() -> None:
            await machine.stop(grace=0)
            await self.launcher.allEnded()

        self.addCleanup(lambda: ensureDeferred(stopAndWait()))
        return machine

    def test_stopKillsTheWholeGroup(self) -> Deferred[None]:
        """
        A shell that ignores SIGTERM and forks a grandchild that ignores it
        too: stop(grace=0.5) fires once both are dead, and (as a subreaper)
        both were reaped.
        """
        return self._stopKillsTheWholeGroup()

    def test_stopKillsTheWholeGroupWithoutSetsid(self) -> Deferred[None]:
        """
        The same with the Python fallback for setsid(1).
        """
        self.launcher = _RecordingLauncher(reactor, setsid=None)
        self.addCleanup(self.launcher.killEverything)
        return self._stopKillsTheWholeGroup()

    def _stopKillsTheWholeGroup(self) -> Deferred[None]:
        script = (
            "trap '' TERM; sleep 30 & echo \"pids $$ $!\"; "
            "while :; do sleep 0.05; done"
        )
        machine = self.machine(
            id="shell", argv=("sh", "-c", script), cmd="sh -c ...", checkEndpoint=None
        )

        async def run() -> None:
            await machine.start()
            self.assertEqual(machine.state, "ready")
            await _eventually(lambda: any(x.startswith("pids ") for x in self.lines))
            [line] = [x for x in self.lines if x.startswith("pids ")]
            child, grandchild = (int(p) for p in line.split()[1:])
            self.assertEqual(child, machine.pid)
            self.assertEqual(os.getpgid(grandchild), child)
            self.assertTrue(_alive(child) and _alive(grandchild))

            started = time.monotonic()
            await machine.stop(grace=0.5)
            elapsed = time.monotonic() - started
            self.assertGreaterEqual(elapsed, 0.5)
            self.assertLess(elapsed, 3)
            self.assertEqual(machine.state, "stopped")
            self.assertFalse(_alive(child))
            self.assertFalse(_alive(grandchild))
            if self.subreaper:
                self.assertIsNone(_procState(grandchild))
            self.assertIsNone(_procState(child))

        return ensureDeferred(run())

    def test_httpUpstream(self) -> Deferred[None]:
        """
        A real HTTP server is seen ready soon after it listens, through the
        real probe; after stop() its port is closed.
        """
        port = freePort()
        machine = self.machine(
            id="http",
            argv=(sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)),
            cmd="python -m http.server",
            proxy="http://127.0.0.1:{}".format(port),
            checkEndpoint="/",
        )
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=2)

        async def run() -> None:
            started = time.monotonic()
            await machine.start()
            self.assertLess(time.monotonic() - started, 5)
            self.assertEqual(machine.state, "ready")
            connection = await endpoint.connect(Factory.forProtocol(Protocol))
            connection.transport.abortConnection()

            await machine.stop(grace=5)
            self.assertEqual(machine.state, "stopped")
            with self.assertRaises(ConnectionRefusedError):
                await endpoint.connect(Factory.forProtocol(Protocol))

        return ensureDeferred(run())

    def test_missingCommand(self) -> Deferred[None]:
        """
        A command that does not exist fails the start quickly, with setsid's
        complaint in the output.
        """
        machine = self.machine(
            id="missing",
            argv=("/nonexistent/llama-server",),
            cmd="/nonexistent/llama-server",
            checkEndpoint="/health",
            proxy="http://127.0.0.1:{}".format(freePort()),
        )

        async def run() -> None:
            from llamaswap.upstream import UpstreamStartError

            with self.assertRaises(UpstreamStartError) as caught:
                await machine.start()
            error = caught.exception
            self.assertIn("exited prematurely", error.message)
            # Told only once nothing is left of it, with the reason.
            self.assertEqual(machine.state, "failed")
            self.assertEqual(error.exitCode, 127)
            self.assertIn("nonexistent", " ".join(error.lastLines))
            self.assertIn("No such file or directory", error.clientMessage())
            self.assertEqual(machine.failure["exitCode"], 127)
            await self.launcher.allEnded()
            self.assertIn("nonexistent", machine.outputTail(), (
                machine.state, machine._core.run, self.lines, error.lastLines,
                machine._core.lastProtocol._tail))

        return ensureDeferred(run())

    def test_cgroupKillsWhatNoTagFinds(self) -> Deferred[None]:
        """
        With a writable cgroup v2 (root, or systemd's Delegate=yes), a run
        gets its own cgroup: a helper that left the group and cleared its
        environment is still killed by cgroup.kill, and the leaf is removed.
        """
        from llamaswap.upstream.cgroups import CgroupTree

        tree = CgroupTree.find()
        if tree is None:
            raise SkipTest("no writable cgroup v2 with cgroup.kill here")
        self.addCleanup(tree.close)
        self.launcher.useCgroups(tree)
        script = (
            "env -i setsid sh -c \"trap '' TERM; echo hidden \\$\\$; exec sleep 300\" & "
            "while :; do sleep 0.05; done"
        )
        machine = self.machine(
            id="hider", argv=("sh", "-c", script), cmd="sh -c ...", checkEndpoint=None
        )

        async def run() -> None:
            await machine.start()
            await _eventually(lambda: any(ln.startswith("hidden ") for ln in self.lines))
            [line] = [ln for ln in self.lines if ln.startswith("hidden ")]
            helper = int(line.split()[1])
            self.addCleanup(lambda: _alive(helper) and os.kill(helper, signal.SIGKILL))
            await _eventually(lambda: _procName(helper) == "sleep")
            with open("/proc/{}/environ".format(helper), "rb") as f:
                self.assertNotIn(b"LLAMASWAP_UPSTREAM", f.read())
            [leaf] = [d for d in os.listdir(tree.path) if "hider" in d]
            with open(os.path.join(tree.path, leaf, "cgroup.procs")) as f:
                self.assertIn(str(helper), f.read().split())
            await machine.stop(grace=0.3)
            self.assertFalse(_alive(helper))
            self.assertFalse(os.path.exists(os.path.join(tree.path, leaf)))

        return ensureDeferred(run())

    def test_stopKillsDescendantsThatLeftTheGroup(self) -> Deferred[None]:
        """
        A helper started with setsid (a new session, outside the upstream's
        process group) is found by the run's tag and killed with it, even
        when it ignores SIGTERM.
        """
        script = (
            "setsid sh -c \"trap '' TERM; echo escaped \\$\\$; exec sleep 300\" & "
            "while :; do sleep 0.05; done"
        )
        machine = self.machine(
            id="escaper", argv=("sh", "-c", script), cmd="sh -c ...", checkEndpoint=None
        )

        async def run() -> None:
            await machine.start()
            await _eventually(lambda: any(ln.startswith("escaped ") for ln in self.lines))
            [line] = [ln for ln in self.lines if ln.startswith("escaped ")]
            helper = int(line.split()[1])
            self.addCleanup(lambda: _alive(helper) and os.kill(helper, signal.SIGKILL))
            self.assertNotEqual(os.getpgid(helper), machine.pid)
            await _eventually(lambda: _procName(helper) == "sleep")
            started = time.monotonic()
            await machine.stop(grace=0.5)
            self.assertLess(time.monotonic() - started, 5)
            self.assertFalse(_alive(helper))
            self.assertTrue(self.launcher.lookedFrom)
            self.assertNotIn(True, self.launcher.lookedFrom, "a /proc walk on the reactor thread")

        return ensureDeferred(run())


class _Hello(Resource):
    isLeaf = True

    def __init__(self, code: int) -> None:
        super().__init__()
        self.code = code

    def render_GET(self, request: Any) -> bytes:
        request.setResponseCode(self.code)
        return b"hello"


class _Silent(Protocol):
    """
    Accepts a connection and never answers.
    """

    def connectionMade(self) -> None:
        self.factory.connections.append(self)  # type: ignore[attr-defined]


class HealthProbeRealTests(TestCase):
    timeout = 10

    def setUp(self) -> None:
        self.probe = HealthProbe(reactor, timeout=0.3)
        self.addCleanup(self.probe.close)

    def listen(self, factory: Any) -> int:
        listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        return int(listening.getHost().port)

    def serve(self, code: int) -> str:
        site = Site(_Hello(code))
        site.timeOut = None  # no idle timer left behind
        port = self.listen(site)
        return "http://127.0.0.1:{}/health".format(port)

    async def settle(self) -> None:
        # Let both ends of the probe's connection finish closing.
        await deferLater(reactor, 0.05)

    def test_ok(self) -> Deferred[None]:
        """
        200 is ready.
        """
        url = self.serve(200)

        async def run() -> None:
            self.assertIs(await self.probe.check(url), True)
            await self.settle()

        return ensureDeferred(run())

    def test_notOk(self) -> Deferred[None]:
        """
        Any other status is not ready.
        """
        url = self.serve(503)

        async def run() -> None:
            self.assertIs(await self.probe.check(url), False)
            await self.settle()

        return ensureDeferred(run())

    def test_refused(self) -> Deferred[None]:
        """
        A refused connection is not ready.
        """
        url = "http://127.0.0.1:{}/health".format(freePort())
        return ensureDeferred(self._expectFalse(url))

    async def _expectFalse(self, url: str) -> None:
        self.assertIs(await self.probe.check(url), False)

    def test_timeout(self) -> Deferred[None]:
        """
        An upstream that accepts and never answers is not ready, after the
        probe timeout.
        """
        factory = Factory.forProtocol(_Silent)
        factory.connections = []  # type: ignore[attr-defined]
        port = self.listen(factory)

        def dropAll() -> None:
            for connection in factory.connections:  # type: ignore[attr-defined]
                connection.transport.abortConnection()

        self.addCleanup(dropAll)

        async def run() -> None:
            started = time.monotonic()
            self.assertIs(
                await self.probe.check("http://127.0.0.1:{}/".format(port)), False
            )
            self.assertLess(time.monotonic() - started, 2)
            await self.settle()

        return ensureDeferred(run())
