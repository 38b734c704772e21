"""
Tests for L{llamaswap.upstream.process}: the output protocol, the launcher
(with a fake reactor and a fake killpg), and the /proc helpers (with a fake
/proc tree).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys

from zope.interface.verify import verifyObject

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from llamaswap.interfaces import ILauncher
from llamaswap.upstream.process import (
    Launcher,
    Leftovers,
    UpstreamProcessProtocol,
    procGroupAlive,
    reapOrphans,
    scanRun,
    zombieChildren,
)
from tests.fakes import FakeProcessReactor, InlineThreadPool


class ProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.lines: list[tuple[str, str, str]] = []
        self.proto = UpstreamProcessProtocol(
            "m1", onOutput=lambda *line: self.lines.append(line)
        )
        self.reactor = FakeProcessReactor()
        self.process = self.reactor.spawnProcess(self.proto, "x", ["x"])

    def test_lineBuffering(self) -> None:
        """
        Output is split into lines per stream; a partial line waits for the
        rest; CRLF endings lose the CR.
        """
        self.process.emit(b"one\ntw")
        self.process.emit(b"err\r\n", fd=2)
        self.assertEqual(self.lines, [("m1", "stdout", "one"), ("m1", "stderr", "err")])
        self.process.emit(b"o\nthree")
        self.assertEqual(self.lines[-1], ("m1", "stdout", "two"))
        self.assertEqual(len(self.lines), 3)

    def test_partialLineFlushedAtEnd(self) -> None:
        """
        An unfinished last line is delivered when the process ends.
        """
        self.process.emit(b"no newline")
        self.process.emit(b"nor here", fd=2)
        self.assertEqual(self.lines, [])
        self.process.exit(0)
        self.assertEqual(
            self.lines, [("m1", "stdout", "no newline"), ("m1", "stderr", "nor here")]
        )

    def test_longPartialLineIsCapped(self) -> None:
        """
        A line without newline longer than 64 KiB is delivered as it is,
        instead of being buffered without bound.
        """
        self.process.emit(b"." * (70 * 1024))
        self.assertEqual(len(self.lines), 1)
        self.assertEqual(len(self.lines[0][2]), 70 * 1024)

    def test_notLoggedWhenACallbackTakesThem(self) -> None:
        """
        Lines handed to C{onOutput} are not also logged: the callback decides
        where they go (the log buffers, and stdout per C{logToStdout}).
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.process.emit(b"hello\n")
        self.assertEqual(len(events), 0)
        self.assertEqual(self.lines, [("m1", "stdout", "hello")])

    def test_invalidUTF8(self) -> None:
        """
        Bytes that are not UTF-8 are replaced, not fatal.
        """
        self.process.emit(b"caf\xe9\n")
        self.assertEqual(self.lines, [("m1", "stdout", "caf\ufffd")])

    def test_loggedWithoutACallback(self) -> None:
        """
        Without an C{onOutput} callback, each line is logged with model,
        stream and line keys.
        """
        proto = UpstreamProcessProtocol("m1")
        process = self.reactor.spawnProcess(proto, "x", ["x"])
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        process.emit(b"hello\n", fd=2)
        [event] = events
        self.assertEqual(event["log_format"], "[{model}] {line}")
        self.assertEqual(
            (event["model"], event["stream"], event["line"]), ("m1", "stderr", "hello")
        )

    def test_outputTail(self) -> None:
        """
        outputTail returns the last lines of both streams in arrival order;
        only the last 50 are kept.
        """
        self.assertEqual(self.proto.outputTail(), "")
        for i in range(60):
            self.process.emit("line {}\n".format(i).encode(), fd=1 + i % 2)
        self.assertEqual(self.proto.outputTail(3), "line 57\nline 58\nline 59")
        self.assertEqual(self.proto.outputTail(), "\n".join("line {}".format(i) for i in range(40, 60)))
        self.assertEqual(self.proto.outputTail(100).splitlines()[0], "line 10")
        self.assertEqual(self.proto.outputTail(0), "")

    def test_outputCallbackFailure(self) -> None:
        """
        An onOutput that raises is logged and does not stop the output.
        """
        proto = UpstreamProcessProtocol("m1", onOutput=lambda *a: 1 / 0)
        process = self.reactor.spawnProcess(proto, "x", ["x"])
        process.emit(b"a\nb\n")
        self.assertEqual(proto.outputTail(), "a\nb")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)

    def test_whenExited(self) -> None:
        """
        whenExited gives each caller its own Deferred, fired with the exit
        reason value (not a Failure); after the exit it fires at once.
        """
        first, second = self.proto.whenExited(), self.proto.whenExited()
        self.assertIsNot(first, second)
        self.assertNoResult(first)
        first.addCallback(lambda reason: "changed by first's callback")
        self.process.exit(code=2)
        self.assertEqual(self.successResultOf(first), "changed by first's callback")
        reason = self.successResultOf(second)
        self.assertIsInstance(reason, ProcessTerminated)
        self.assertEqual(reason.exitCode, 2)  # type: ignore[attr-defined]
        later = self.successResultOf(self.proto.whenExited())
        self.assertIs(later, reason)
        self.assertIs(self.proto.exitReason, reason)

    def test_whenExitedClean(self) -> None:
        """
        A clean exit fires with ProcessDone.
        """
        exited = self.proto.whenExited()
        self.process.exit(0)
        self.assertIsInstance(self.successResultOf(exited), ProcessDone)

    def test_whenEnded(self) -> None:
        """
        whenEnded fires after processEnded, not on processExited alone.
        """
        ended = self.proto.whenEnded()
        self.proto.processExited(Failure(ProcessDone(0)))
        self.assertNoResult(ended)
        self.proto.processEnded(Failure(ProcessDone(0)))
        self.assertIsInstance(self.successResultOf(ended), ProcessDone)
        self.assertIsInstance(self.successResultOf(self.proto.whenEnded()), ProcessDone)

    def test_pidKept(self) -> None:
        """
        The pid is taken at connection and kept after the child is reaped.
        """
        self.assertEqual(self.proto.pid, 1000)
        self.process.exit(0)
        self.assertIsNone(self.process.pid)
        self.assertEqual(self.proto.pid, 1000)

    def test_processEndedWithoutExited(self) -> None:
        """
        processEnded alone also fires whenExited.
        """
        exited = self.proto.whenExited()
        self.proto.processEnded(Failure(ProcessDone(0)))
        self.assertIsInstance(self.successResultOf(exited), ProcessDone)


class LauncherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.killed: list[tuple[int, int]] = []

    def killpg(self, pgid: int, sig: int) -> None:
        self.killed.append((pgid, sig))

    def test_interface(self) -> None:
        """
        Launcher provides ILauncher.
        """
        self.assertTrue(verifyObject(ILauncher, Launcher(self.reactor)))

    def test_spawnWithSetsid(self) -> None:
        """
        The command is prefixed with setsid, gets exactly the env dict given
        (a copy), no working directory, and stdin closed; the transport is
        returned.
        """
        launcher = Launcher(self.reactor, setsid="/usr/bin/setsid")
        proto = UpstreamProcessProtocol("m1")
        env = {"PATH": "/bin", "A": "1"}
        transport = launcher.spawn("m1", ["llama-server", "-m", "x.gguf"], env, proto)
        [process] = self.reactor.spawned
        self.assertIs(transport, process)
        self.assertIs(proto.transport, process)
        self.assertEqual(
            self.reactor.spawnCalls,
            [("/usr/bin/setsid", ["/usr/bin/setsid", "llama-server", "-m", "x.gguf"], env, None)],
        )
        self.assertIsNot(process.env, env)
        self.assertTrue(process.stdinClosed)

    def test_setsidFoundOnPath(self) -> None:
        """
        By default setsid is looked up on PATH.
        """
        found = shutil.which("setsid")
        launcher = Launcher(self.reactor)
        if found is None:
            self.assertEqual(launcher.prefix[0], sys.executable)
        else:
            self.assertEqual(launcher.prefix, (found,))

    def test_setsidFallback(self) -> None:
        """
        Without setsid(1) a Python prefix calls setsid() and execs.
        """
        launcher = Launcher(self.reactor, setsid=None)
        launcher.spawn("m1", ["srv", "--x"], {}, UpstreamProcessProtocol("m1"))
        executable, argv, env, path = self.reactor.spawnCalls[0]
        self.assertEqual(executable, sys.executable)
        self.assertEqual(argv[:2], [sys.executable, "-c"])
        self.assertIn("os.setsid()", argv[2])
        self.assertEqual(argv[3:], ["srv", "--x"])

    def test_spawnError(self) -> None:
        """
        An error from spawnProcess propagates.
        """
        self.reactor.spawnError = OSError("no fork for you")
        launcher = Launcher(self.reactor)
        self.assertRaises(
            OSError, launcher.spawn, "m1", ["x"], {}, UpstreamProcessProtocol("m1")
        )

    def test_signalGroup(self) -> None:
        """
        signalGroup is killpg on the group.
        """
        launcher = Launcher(self.reactor, killpg=self.killpg)
        launcher.signalGroup(4321, signal.SIGTERM)
        self.assertEqual(self.killed, [(4321, signal.SIGTERM)])

    def test_signalGroupGone(self) -> None:
        """
        A group that no longer exists is not an error; neither is one we may
        not signal (logged).
        """

        def gone(pgid: int, sig: int) -> None:
            raise ProcessLookupError()

        def forbidden(pgid: int, sig: int) -> None:
            raise PermissionError()

        Launcher(self.reactor, killpg=gone).signalGroup(1, signal.SIGKILL)
        Launcher(self.reactor, killpg=forbidden).signalGroup(1, signal.SIGKILL)

    def test_groupAliveInjected(self) -> None:
        """
        An injected groupAlive is used as is.
        """
        asked: list[int] = []

        def alive(pgid: int) -> bool:
            asked.append(pgid)
            return True

        self.assertTrue(Launcher(self.reactor, groupAlive=alive).groupAlive(77))
        self.assertEqual(asked, [77])

    def test_groupAliveNoSuchGroup(self) -> None:
        """
        By default a group killpg(pgid, 0) cannot find is dead.
        """

        def gone(pgid: int, sig: int) -> None:
            raise ProcessLookupError()

        self.assertFalse(Launcher(self.reactor, killpg=gone).groupAlive(77))

    def test_groupAliveOwnGroup(self) -> None:
        """
        By default our own process group (with us running in it) is alive,
        and a group no process has is not.
        """
        launcher = Launcher(self.reactor)
        self.assertTrue(launcher.groupAlive(os.getpgrp()))
        self.assertFalse(launcher.groupAlive(2**22 + 12345))

    def test_reapOrphans(self) -> None:
        """
        Launcher.reapOrphans calls the reaper and counts what it reaped.
        """
        launcher = Launcher(self.reactor, reap=lambda: [5, 6])
        self.assertEqual(launcher.reapOrphans(), 2)

    def test_surveyRunsInTheThread(self) -> None:
        """
        survey reads nothing on the calling thread: it hands leftovers to
        the injected deferToThread, which looks at the groups, the run's
        cgroup and its escapees.
        """
        asked: list[int] = []
        calls: list[tuple] = []

        def alive(pgid: int) -> bool:
            asked.append(pgid)
            return pgid == 8

        def deferToThread(f, *args):  # type: ignore[no-untyped-def]
            calls.append((f, args))
            return Deferred()

        launcher = Launcher(self.reactor, groupAlive=alive, deferToThread=deferToThread)
        d = launcher.survey(None, 7, [7, 8])
        self.assertNoResult(d)
        self.assertEqual(asked, [])
        [(f, args)] = calls
        self.assertEqual(args, (None, 7, (7, 8)))
        left = f(*args)
        self.assertEqual(asked, [7, 8])
        self.assertIsInstance(left, Leftovers)
        self.assertTrue(left.alive)
        self.assertEqual(left.escapees, ())

    def test_surveyDefaultsToTheReactorThreadPool(self) -> None:
        """
        Without an injected deferToThread, survey runs in the reactor's
        thread pool.
        """
        pool = InlineThreadPool()
        self.reactor.getThreadPool = lambda: pool  # type: ignore[attr-defined]
        self.reactor.callFromThread = lambda f, *a, **kw: f(*a, **kw)  # type: ignore
        launcher = Launcher(self.reactor, groupAlive=lambda pgid: False)
        left = self.successResultOf(launcher.survey(None, 7, [7]))
        self.assertEqual(pool.ran, 1)
        self.assertFalse(left.alive)

    def test_reapOrphansOfASurvey(self) -> None:
        """
        reapOrphans(candidates) reaps the zombies a survey found, leaving
        Twisted's children alone.
        """
        from twisted.internet import process as twistedProcess

        launcher = Launcher(self.reactor, reap=lambda: self.fail("scanned again"))
        fakeChild = 2**22 + 4321
        twistedProcess.reapProcessHandlers[fakeChild] = object()
        self.addCleanup(twistedProcess.reapProcessHandlers.pop, fakeChild)
        self.assertEqual(launcher.reapOrphans([fakeChild]), 0)
        self.assertEqual(launcher.reapOrphans([]), 0)


class FakeProcTests(SynchronousTestCase):
    """
    procGroupAlive and reapOrphans against a fake /proc tree.
    """

    def setUp(self) -> None:
        self.root = self.mktemp()
        os.makedirs(self.root)
        os.makedirs(os.path.join(self.root, "self"))

    def addProcess(self, pid: int, comm: str, state: str, ppid: int, pgrp: int) -> None:
        os.makedirs(os.path.join(self.root, str(pid)))
        with open(os.path.join(self.root, str(pid), "stat"), "w") as f:
            f.write("{} ({}) {} {} {} {} 0 0\n".format(pid, comm, state, ppid, pgrp, pgrp))

    def test_groupAlive(self) -> None:
        """
        A group is alive while one of its processes is not a zombie; odd
        command names are parsed right.
        """
        self.addProcess(100, "llama-server", "S", 1, 100)
        self.addProcess(101, "evil) Z 1 100 (", "R", 100, 200)
        self.addProcess(102, "zombie", "Z", 1, 300)
        self.addProcess(103, "dead", "X", 1, 300)
        self.assertTrue(procGroupAlive(100, self.root))
        self.assertTrue(procGroupAlive(200, self.root))
        self.assertFalse(procGroupAlive(300, self.root))
        self.assertFalse(procGroupAlive(400, self.root))
        self.assertFalse(procGroupAlive(100, os.path.join(self.root, "missing")))

    def test_reapOrphans(self) -> None:
        """
        Zombie children of ours are reaped, except Twisted's own; running
        children and others' zombies are left alone.
        """
        me = 50
        self.addProcess(60, "orphan", "Z", me, 60)
        self.addProcess(61, "twisted-child", "Z", me, 61)
        self.addProcess(62, "running", "S", me, 62)
        self.addProcess(63, "not-ours", "Z", 1, 63)
        self.addProcess(64, "raced", "Z", me, 64)
        waited: list[int] = []

        def waitpid(pid: int, options: int) -> tuple[int, int]:
            self.assertEqual(options, os.WNOHANG)
            waited.append(pid)
            if pid == 64:
                raise ChildProcessError()
            return pid, 0

        reaped = reapOrphans(
            procRoot=self.root,
            waitpid=waitpid,
            getpid=lambda: me,
            twistedChildren={61: object()},
        )
        self.assertEqual(reaped, [60])
        self.assertEqual(sorted(waited), [60, 64])

    def test_zombieChildren(self) -> None:
        """
        zombieChildren finds our zombie children only (Twisted's included:
        reapOrphans leaves those alone on the reactor thread).
        """
        me = 50
        self.addProcess(60, "orphan", "Z", me, 60)
        self.addProcess(62, "running", "S", me, 62)
        self.addProcess(63, "not-ours", "Z", 1, 63)
        self.assertEqual(zombieChildren(self.root, lambda: me), [60])
        self.assertEqual(zombieChildren(os.path.join(self.root, "missing")), [])

    def test_scanRun(self) -> None:
        """
        One walk finds the run's tagged processes outside its group (live
        only) and our zombie children.
        """
        me = 50
        tag = b"LLAMASWAP_UPSTREAM=run-1\0"
        processes = {
            70: ("S", 1, 70, b"A=1\0" + tag),   # escaped: tagged, own session
            71: ("S", 1, 99, tag),              # in the run's group
            72: ("S", 1, 72, b"LLAMASWAP_UPSTREAM=run-10\0"),  # another run
            73: ("Z", me, 73, tag),             # dead: a zombie of ours
            74: ("S", 1, 74, b""),
        }
        for pid, (state, ppid, pgrp, environ) in processes.items():
            self.addProcess(pid, "p", state, ppid, pgrp)
            with open(os.path.join(self.root, str(pid), "environ"), "wb") as f:
                f.write(environ)
        self.assertEqual(scanRun("run-1", 99, self.root, lambda: me), ([70], [73]))
        self.assertEqual(scanRun("run-1", 99, os.path.join(self.root, "missing")), ([], []))

    def test_reapOrphansNoProc(self) -> None:
        """
        Without /proc nothing is reaped.
        """
        self.assertEqual(reapOrphans(procRoot=os.path.join(self.root, "missing")), [])
