"""
The router with the memory planner: fake machines and clock, a real
L{MemoryManager} with a fake GPU probe and threads run inline.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from llamaswap.config import loadConfigText
from llamaswap.errors import ModelStartFailed
from llamaswap.memory.manager import MemoryManager
from llamaswap.memory.store import NeedStore
from llamaswap.router.memory import RouterMemory
from llamaswap.router.router import RouterService
from llamaswap.upstream.exits import UpstreamStartError
from tests.fakes import FakeGpuProbe, inlineThread
from tests.fakes import FakeMachine

GiB = 1024 ** 3

CONFIG = """
models:
  a:
    cmd: srv-a --port ${PORT}
  b:
    cmd: srv-b --port ${PORT}
  c:
    cmd: srv-c --port ${PORT}
memory:
  budget: %s
  models:
    a: 4GiB
    b: 4GiB
    c: %s
"""

OOM = "ggml_backend_cuda_buffer_type_alloc_buffer: cudaMalloc failed: out of memory"


class ReportingMachine(FakeMachine):
    """
    A L{FakeMachine} that tells the memory manager of the moment of its
    state changes (as the daemon's machines do through the service), and
    whose failed start carries C{output} as its last lines.
    """

    tell: Optional[Callable[[str, str], None]] = None
    output = "oops"

    @property
    def state(self) -> str:
        return self._state

    @state.setter
    def state(self, new: str) -> None:
        self._state = new
        if self.tell is not None:
            self.tell(self.modelId, new)

    def failStart(self, message: str, linger: bool = False) -> None:
        self.state = "stopping" if linger else "failed"
        starting, self.starting = self.starting, None
        lines = tuple(self.output.splitlines())
        self.failure = {"reason": message, "exitCode": 1, "lastLines": list(lines)}
        assert starting is not None
        starting.errback(UpstreamStartError(message, 1, lines))


class RouterFixture:
    """
    a and b need 4GiB each; c and the budget as the test class says.  The
    router is given a callable returning C{self.manager}, which a test may
    replace (as a reload does).
    """

    budget = "8GiB"
    c = "4GiB"
    memory = True
    mktemp: Any
    successResultOf: Any

    def setUp(self) -> None:
        self.clock = Clock()
        self.log: list = []
        self.config = loadConfigText(CONFIG % (self.budget, self.c))
        self.store = NeedStore(os.path.abspath(self.mktemp()), inlineThread)
        self.manager: Optional[MemoryManager] = self.managerFor(self.config)

        def factory(model: Any, onExit: Any) -> ReportingMachine:
            machine = ReportingMachine(model, onExit, self.log)
            machine.tell = self.tell
            return machine

        self.router = RouterService(self.config, reactor=self.clock, machineFactory=factory,
                                    memory=(lambda: self.manager) if self.memory else None)
        self.m = self.router.machines

    def managerFor(self, config: Any, previous: Optional[MemoryManager] = None) -> MemoryManager:
        manager = MemoryManager(config, self.store, FakeGpuProbe(), inlineThread,
                                lambda m: None, previous=previous)
        manager.start()
        return manager

    def tell(self, modelId: str, state: str) -> None:
        if self.manager is not None:
            self.manager.stateChanged(modelId, state)

    def ready(self, name: str) -> Any:
        d = self.router.acquire(name)
        self.m[name].becomeReady()
        return self.successResultOf(d)


class MemoryRouterTests(RouterFixture, SynchronousTestCase):
    def test_loadsWhatFitsEvictsLru(self) -> None:
        """
        a and b fit together; c evicts the least recently used, a.
        """
        self.ready("a").release()
        self.clock.advance(1)
        self.ready("b").release()
        self.assertEqual(self.log, [("start", "a"), ("start", "b")])
        self.clock.advance(1)
        d = self.router.acquire("c")
        self.assertEqual(self.log[2:], [("stop", "a")])
        self.m["a"].finishStop()
        self.assertEqual(self.log[3:], [("start", "c")])
        self.m["c"].becomeReady()
        self.successResultOf(d).release()
        self.assertEqual(self.m["b"].state, "ready")

    def test_lruFollowsUse(self) -> None:
        self.ready("a").release()
        self.clock.advance(1)
        self.ready("b").release()
        self.clock.advance(1)
        self.successResultOf(self.router.acquire("a")).release()  # a used last now
        self.clock.advance(1)
        self.router.acquire("c")
        self.assertEqual(self.log[-1], ("stop", "b"))

    def test_runningEntriesShowMemory(self) -> None:
        self.ready("a").release()
        [entry] = self.router.runningModels()
        self.assertEqual(entry["memory"], {"needBytes": 4 * GiB, "source": "declared",
                                           "budgetLeftBytes": 4 * GiB})

    def test_explanationLogged(self) -> None:
        """
        A swap is explained by the planner its plan used: memory's.
        """
        self.ready("a").release()
        self.ready("b").release()
        with capturedLogs() as events:
            self.router.acquire("c")
        text = [formatEvent(e) for e in events]
        self.assertIn("memory: model=c need=4.0GiB budget=8.0GiB used=8.0GiB evict=[a] "
                      "wait=[] fits=true", text)
        self.assertIsNotNone(self.router.memory.planner)

    def test_reloadedManagerPlans(self) -> None:
        """
        The router asks for the manager at each plan: after a reload to a
        4GiB budget, c needs both a and b gone.
        """
        self.ready("a").release()
        self.clock.advance(1)
        self.ready("b").release()
        new = loadConfigText(CONFIG % ("4GiB", "4GiB"))
        self.manager = self.managerFor(new, previous=self.manager)
        done = self.router.reconfigure(new, lambda old, new: old == new)
        self.assertEqual(done.running, ("a", "b"))
        self.log.clear()
        d = self.router.acquire("c")
        self.assertEqual(sorted(self.log), [("stop", "a"), ("stop", "b")])
        self.m["a"].finishStop()
        self.m["b"].finishStop()
        self.m["c"].becomeReady()
        self.successResultOf(d).release()
        [entry] = self.router.runningModels()
        self.assertEqual(entry["memory"]["budgetLeftBytes"], 0)

    def test_reloadWithoutMemory(self) -> None:
        """
        A reload to a configuration without a C{memory} section (no
        manager) leaves the configured strategy alone and drops the
        C{memory} field.
        """
        self.ready("a").release()
        self.manager = None
        [entry] = self.router.runningModels()
        self.assertNotIn("memory", entry)
        self.router.acquire("b")
        self.assertEqual(self.log[-1], ("stop", "a"), "the default group runs one at a time")

    def test_brokenManagerIgnored(self) -> None:
        """
        A manager that raises is logged; the configured strategy then plans
        alone, and a failed start stands.
        """
        assert self.manager is not None

        def broken(*args: object) -> None:
            raise RuntimeError("boom")

        self.manager.plannerFor = broken  # type: ignore[method-assign,assignment]
        self.manager.retryAfterOom = broken  # type: ignore[method-assign,assignment]
        self.ready("a").release()
        d = self.router.acquire("b")
        self.assertEqual(self.log[-1], ("stop", "a"))
        self.m["a"].finishStop()
        self.m["b"].output = OOM
        self.m["b"].failStart("exited")
        self.failureResultOf(d, ModelStartFailed)
        self.assertTrue(self.flushLoggedErrors(RuntimeError))


class BusyTests(RouterFixture, SynchronousTestCase):
    c = "8GiB"

    def test_busyModelDrainsFirst(self) -> None:
        """
        c needs everything: idle b is not stopped while busy a (its lease
        counted in flight by the ledger) drains; then both go and c starts.
        """
        lease = self.ready("a")
        self.clock.advance(1)
        self.ready("b").release()
        self.log.clear()
        d = self.router.acquire("c")
        self.assertEqual(self.router.ledger.inFlight("a"), 1)
        self.assertEqual(self.log, [])
        self.assertEqual((self.m["a"].state, self.m["b"].state), ("ready", "ready"))
        lease.release()
        self.assertEqual(sorted(self.log), [("stop", "a"), ("stop", "b")])
        self.m["a"].finishStop()
        self.m["b"].finishStop()
        self.m["c"].becomeReady()
        self.successResultOf(d).release()


class OomRetryTests(RouterFixture, SynchronousTestCase):
    budget = "10GiB"
    c = "2GiB"

    def test_retriedOnceWithOneMoreEviction(self) -> None:
        """
        c fits beside a and b by the plan, but its start runs out of
        memory: the router evicts one more model (a, the least recently
        used) and starts c again; the request is served.
        """
        self.ready("a").release()
        self.clock.advance(1)
        self.ready("b").release()
        self.log.clear()
        d = self.router.acquire("c")
        self.assertEqual(self.log, [("start", "c")])
        self.m["c"].output = "loading\n" + OOM + "\n"
        self.m["c"].failStart("upstream command exited prematurely (exit code 1)")
        self.assertNoResult(d)
        self.assertEqual(self.router.ledger.queued("c"), 1)
        self.assertEqual(self.log[1:], [("stop", "a")])
        self.m["a"].finishStop()
        self.assertEqual(self.log[2:], [("start", "c")])
        self.m["c"].becomeReady()
        self.assertEqual(self.successResultOf(d).modelId, "c")
        self.assertEqual(self.m["b"].state, "ready")

    def test_failedProcessStillGoingStopped(self) -> None:
        """
        A failed start whose process is still going away (C{stopping}) is
        stopped; c starts again once it and the evicted a are gone.
        """
        self.ready("a").release()
        d = self.router.acquire("c")
        self.m["c"].output = OOM
        self.m["c"].failStart("exited", linger=True)
        self.assertEqual(self.log[2:], [("stop", "c")])
        self.m["c"].finishStop("failed")
        self.assertEqual(self.log[3:], [("stop", "a")])
        self.m["a"].finishStop()
        self.assertEqual(self.log[4:], [("start", "c")])
        self.m["c"].becomeReady()
        self.assertEqual(self.successResultOf(d).modelId, "c")

    def test_secondFailureStands(self) -> None:
        self.ready("a").release()
        d = self.router.acquire("c")
        self.m["c"].output = OOM
        self.m["c"].failStart("exited")
        self.m["a"].finishStop()
        self.assertEqual(self.log[-1], ("start", "c"))
        self.m["c"].failStart("exited")
        failure = self.failureResultOf(d, ModelStartFailed)
        self.assertIn("out of memory", failure.getErrorMessage())

    def test_otherFailuresNotRetried(self) -> None:
        self.ready("a").release()
        d = self.router.acquire("c")
        self.m["c"].output = "error: unknown argument --bogus"
        self.m["c"].failStart("exited")
        self.failureResultOf(d, ModelStartFailed)
        self.assertEqual(self.m["a"].state, "ready")

    def test_nothingToEvictNotRetried(self) -> None:
        d = self.router.acquire("c")
        self.m["c"].output = OOM
        self.m["c"].failStart("exited")
        self.failureResultOf(d, ModelStartFailed)


class NoMemoryTests(RouterFixture, SynchronousTestCase):
    memory = False

    def test_noMemoryField(self) -> None:
        self.ready("a").release()
        [entry] = self.router.runningModels()
        self.assertNotIn("memory", entry)

    def test_outOfMemoryNotRetried(self) -> None:
        d = self.router.acquire("a")
        self.m["a"].output = OOM
        self.m["a"].failStart("exited")
        self.failureResultOf(d, ModelStartFailed)


class RouterMemoryTests(SynchronousTestCase):
    def test_managerOrCallable(self) -> None:
        manager = MemoryManager(loadConfigText(CONFIG % ("8GiB", "4GiB")),
                                NeedStore(os.path.abspath(self.mktemp()), inlineThread),
                                FakeGpuProbe(), inlineThread, lambda m: None)
        self.assertIs(RouterMemory(manager).manager, manager)
        self.assertIs(RouterMemory(lambda: manager).manager, manager)
        self.assertIsNone(RouterMemory(None).manager)
        self.assertRaises(TypeError, RouterMemory, 42)
