"""
Tests for L{llamaswap.router.router}: the router service, with fake upstream
machines (L{tests.fakes.FakeMachine}) and a fake clock.
"""

from zope.interface import implementer

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from llamaswap.config import loadConfigText
from llamaswap.errors import (
    ModelStartFailed,
    ModelUnloaded,
    ShuttingDown,
    TooManyRequests,
    UnknownModel,
)
from llamaswap.interfaces import ISwapPlanner
from llamaswap.router.planners import GroupPlanner
from llamaswap.router.router import RouterService
from tests.fakes import FakeMachine

CONFIG = """
models:
  a:
    cmd: srv-a --port ${PORT}
    aliases: [alpha]
  b:
    cmd: srv-b --port ${PORT}
  c:
    cmd: srv-c --port ${PORT}
    ttl: 5
    concurrencyLimit: 2
"""


@implementer(ISwapPlanner)
class NeverEvict:
    """
    A planner that lets every model run beside every other.
    """

    def evictionFor(self, target, running):
        return frozenset()

    def explain(self, target, running):
        return f"never-evict: model={target}"


class RouterTestsBase(SynchronousTestCase):
    config = CONFIG
    planner = None

    def setUp(self):
        self.clock = Clock()
        self.log = []
        self.config = loadConfigText(self.config)
        self.router = RouterService(
            self.config,
            reactor=self.clock,
            machineFactory=lambda model, onExit: FakeMachine(model, onExit, self.log),
            planner=self.planner,
        )
        self.m = self.router.machines

    def ready(self, name):
        """
        Acquire C{name} and bring its machine up; return the lease.
        """
        d = self.router.acquire(name)
        self.m[self.config.resolve(name)].becomeReady()
        return self.successResultOf(d)

    def starts(self):
        return [m for (what, m) in self.log if what == "start"]

    def pump(self):
        """
        Complete every start and stop in progress.
        """
        for machine in self.m.values():
            if machine.state == "stopping":
                machine.finishStop()
        for machine in self.m.values():
            if machine.state == "starting":
                machine.becomeReady()


class RouterTests(RouterTestsBase):
    def test_firstRequestStartsTheModel(self):
        d = self.router.acquire("a")
        self.assertNoResult(d)
        self.assertEqual(self.log, [("start", "a")])
        self.m["a"].becomeReady()
        lease = self.successResultOf(d)
        self.assertEqual((lease.modelId, lease.baseURL), ("a", "http://localhost:5800"))

    def test_aliasResolvesToTheModel(self):
        lease = self.ready("alpha")
        self.assertEqual(lease.modelId, "a")

    def test_unknownModelIsRefused(self):
        self.assertRaises(UnknownModel, self.router.acquire, "nope")

    def test_concurrentRequestsShareOneStart(self):
        ds = [self.router.acquire("a") for _ in range(3)]
        self.m["a"].becomeReady()
        self.assertEqual([self.successResultOf(d).modelId for d in ds], ["a"] * 3)
        self.assertEqual(self.log, [("start", "a")])

    def test_readyModelIsServedWithoutSwap(self):
        self.ready("a").release()
        self.log.clear()
        self.successResultOf(self.router.acquire("a"))
        self.assertEqual(self.log, [])

    def test_readyModelWithRoomIsGrantedWithoutAPlan(self):
        """
        A request alone in the queue for a ready model with a free slot is
        granted at once, and a release that leaves requests in flight and
        nothing waiting plans nothing; a full model, a waiting request or
        the last release go through the scheduler.
        """
        first = self.ready("c")
        plans = []
        original = self.router._plan
        self.router._plan = lambda: plans.append(1) or original()
        second = self.successResultOf(self.router.acquire("c"))
        self.assertEqual(plans, [])
        self.assertEqual(self.router.ledger.inFlight("c"), 2)
        third = self.router.acquire("c", limited=False)  # full: queued by a plan
        self.assertEqual(len(plans), 1)
        self.assertNoResult(third)
        second.release()
        last = self.successResultOf(third)
        self.assertEqual(last.modelId, "c")
        del plans[:]
        first.release()
        self.assertEqual(plans, [])
        last.release()
        self.assertEqual(len(plans), 1)  # idle now: its TTL is planned
        self.clock.advance(5)
        self.assertEqual(self.m["c"].state, "stopping")

    def test_swapWaitsForInFlightRequestsToDrain(self):
        lease = self.ready("a")
        self.log.clear()
        d = self.router.acquire("b")
        self.assertEqual(self.log, [])
        self.assertNoResult(d)
        lease.release()
        self.assertEqual(self.log, [("stop", "a")])
        self.m["a"].finishStop()
        self.assertEqual(self.log, [("stop", "a"), ("start", "b")])
        self.m["b"].becomeReady()
        self.assertEqual(self.successResultOf(d).modelId, "b")
        self.assertEqual(self.m["a"].state, "stopped")

    def test_requestsForLiveModelTakeTheFastPathUntilTheBound(self):
        lease = self.ready("a")
        waitingB = self.router.acquire("b")
        laterA = self.router.acquire("a")
        self.successResultOf(laterA).release()
        self.clock.advance(self.config.maxQueueWait)
        lastA = self.router.acquire("a")
        self.assertNoResult(lastA)
        lease.release()
        self.m["a"].finishStop()
        self.m["b"].becomeReady()
        self.successResultOf(waitingB).release()
        self.m["b"].finishStop()
        self.m["a"].becomeReady()
        self.assertEqual(self.successResultOf(lastA).modelId, "a")

    def test_pendingRequestsForTheStartedModelAreCollated(self):
        lease = self.ready("a")
        b1 = self.router.acquire("b")
        c1 = self.router.acquire("c")
        b2 = self.router.acquire("b")
        lease.release()
        self.m["a"].finishStop()
        self.m["b"].becomeReady()
        self.successResultOf(b1)
        self.successResultOf(b2)
        self.assertNoResult(c1)

    def test_releaseIsIdempotent(self):
        lease = self.ready("a")
        lease.release()
        lease.release()
        self.assertEqual(self.router.ledger.inFlight("a"), 0)

    def test_cancelledWaiterLeavesTheQueue(self):
        lease = self.ready("a")
        d = self.router.acquire("b")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        lease.release()
        self.assertNotIn(("stop", "a"), self.log)
        self.assertEqual(self.m["a"].state, "ready")

    def test_startFailureFailsEveryWaiter(self):
        ds = [self.router.acquire("a") for _ in range(2)]
        self.m["a"].failStart("upstream command exited prematurely")
        for d in ds:
            f = self.failureResultOf(d, ModelStartFailed)
            self.assertIn("upstream command exited prematurely", f.value.message)

    def test_nextRequestAfterFailureStartsAgain(self):
        d = self.router.acquire("a")
        self.m["a"].failStart("boom")
        self.failureResultOf(d)
        d = self.router.acquire("a")
        self.assertEqual(self.log, [("start", "a"), ("start", "a")])
        self.m["a"].becomeReady()
        self.successResultOf(d)

    def test_crashedModelIsStartedAgain(self):
        self.ready("a").release()
        self.m["a"].crash()
        d = self.router.acquire("a")
        self.assertEqual(self.log[-1], ("start", "a"))
        self.m["a"].becomeReady()
        self.successResultOf(d)

    def test_concurrencyLimitRefusesTheExcess(self):
        self.ready("c")
        self.successResultOf(self.router.acquire("c"))
        self.assertRaises(TooManyRequests, self.router.acquire, "c")

    def test_ttlUnloadsAnIdleModel(self):
        self.ready("c").release()
        self.clock.advance(4.9)
        self.assertNotIn(("stop", "c"), self.log)
        self.clock.advance(0.2)
        self.assertIn(("stop", "c"), self.log)
        self.m["c"].finishStop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_ttlDoesNotCutALongRequest(self):
        lease = self.ready("c")
        self.clock.advance(60)
        self.assertNotIn(("stop", "c"), self.log)
        lease.release()
        self.clock.advance(5.1)
        self.assertIn(("stop", "c"), self.log)

    def test_requestResetsTheTtl(self):
        self.ready("c").release()
        self.clock.advance(4)
        self.successResultOf(self.router.acquire("c")).release()
        self.clock.advance(4)
        self.assertNotIn(("stop", "c"), self.log)

    def test_unloadFailsWaitersAndStops(self):
        d = self.router.acquire("a")
        done = self.router.unload("a")
        f = self.failureResultOf(d, ModelUnloaded)
        self.assertIn("model unloaded", f.value.message)
        self.m["a"].finishStop()
        self.successResultOf(done)

    def test_unloadAllStopsEverything(self):
        self.ready("a").release()
        done = self.router.unload()
        self.assertNoResult(done)
        self.m["a"].finishStop()
        self.successResultOf(done)
        self.assertEqual(self.router.runningModels(), [])

    def test_runningShowsLiveModels(self):
        self.ready("a")
        [record] = self.router.runningModels()
        self.assertEqual(record["model"], "a")
        self.assertEqual(record["state"], "ready")
        self.assertEqual(record["inFlight"], 1)
        self.assertEqual(record["proxy"], "http://localhost:5800")

    def test_stopServiceFailsWaitersAndStopsEveryModel(self):
        self.router.startService()
        self.ready("a")
        waiting = self.router.acquire("b")
        stopped = self.router.stopService()
        self.failureResultOf(waiting, ShuttingDown)
        self.assertNoResult(stopped)
        self.m["a"].finishStop()
        self.successResultOf(stopped)
        self.assertRaises(ShuttingDown, self.router.acquire, "a")


class SwapTests(RouterTestsBase):
    def test_collationABCABC(self):
        served = []
        for m in "abcabc":
            self.router.acquire(m).addCallback(served.append)
        for _ in range(10):
            self.pump()
            for lease in served:
                lease.release()
        self.assertEqual([lease.modelId for lease in served], list("aabbcc"))
        self.assertEqual(self.starts(), ["a", "b", "c"])

    def test_plannerComesFromTheConfig(self):
        self.assertIsInstance(self.router.planner, GroupPlanner)

    def test_cancelledWaiterForAModelNotYetStartedNeverStartsIt(self):
        self.ready("a").release()
        d = self.router.acquire("b")
        self.assertEqual(self.log[-1], ("stop", "a"), "a is idle: the swap begins")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.m["a"].finishStop()
        self.assertEqual(self.starts(), ["a"])
        self.assertEqual(self.router.ledger.admitted("b"), 0)

    def test_unwantedStartIsLeftToFinish(self):
        d = self.router.acquire("a")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.m["a"].becomeReady()
        self.assertEqual(self.log, [("start", "a")])
        self.assertTrue(self.router.isReady("a"))

    def test_unwantedStartIsAbortedWhenAnotherModelNeedsTheRoom(self):
        d = self.router.acquire("a")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        b = self.router.acquire("b")
        self.assertEqual(self.log, [("start", "a"), ("stop", "a")])
        self.m["a"].finishStop()
        self.assertEqual(self.log[-1], ("start", "b"))
        self.m["b"].becomeReady()
        self.assertEqual(self.successResultOf(b).modelId, "b")

    def test_lingeringCrashIsRestartedOnceGone(self):
        self.ready("a").release()
        self.log.clear()
        self.m["a"].crash(linger=True)
        self.assertEqual(self.log, [("stop", "a")], "the router waits for it to be gone")
        d = self.router.acquire("a")
        self.assertEqual(self.starts(), [])
        self.m["a"].finishStop("failed")
        self.assertEqual(self.starts(), ["a"])
        self.m["a"].becomeReady()
        self.successResultOf(d)

    def test_lingeringStartFailureIsRestartedOnceGone(self):
        d = self.router.acquire("a")
        self.m["a"].failStart("health check timed out after 15s", linger=True)
        self.failureResultOf(d, ModelStartFailed)
        d = self.router.acquire("a")
        self.assertEqual(self.starts(), ["a"])
        self.m["a"].finishStop("failed")
        self.assertEqual(self.starts(), ["a", "a"])

    def test_queuedRequestsForOtherModelsProceedAfterAFailure(self):
        a = self.router.acquire("a")
        b = self.router.acquire("b")
        self.m["a"].failStart("boom")
        self.failureResultOf(a, ModelStartFailed)
        self.assertEqual(self.starts(), ["a", "b"])
        self.m["b"].becomeReady()
        self.successResultOf(b)


class InjectedPlannerTests(RouterTestsBase):
    planner = NeverEvict()

    def test_injectedPlannerIsUsed(self):
        lease = self.ready("a")
        d = self.router.acquire("b")
        self.assertEqual(self.log, [("start", "a"), ("start", "b")])
        self.m["b"].becomeReady()
        self.successResultOf(d)
        self.assertEqual([r["model"] for r in self.router.runningModels()], ["a", "b"])
        lease.release()

    def test_stopServiceStopsEveryModelInParallel(self):
        self.router.startService()
        self.ready("a")
        self.ready("b")
        stopped = self.router.stopService()
        self.assertEqual(self.log[-2:], [("stop", "a"), ("stop", "b")])
        self.m["a"].finishStop()
        self.assertNoResult(stopped)
        self.m["b"].finishStop()
        self.successResultOf(stopped)


GROUPS_CONFIG = CONFIG + """
groups:
  together:
    swap: false
    members: [a, b]
"""


class GroupConfigTests(RouterTestsBase):
    config = GROUPS_CONFIG

    def test_swapFalseGroupRunsItsMembersTogether(self):
        self.ready("a")
        self.ready("b")
        self.assertNotIn(("stop", "a"), self.log)

    def test_exclusiveGroupEvictsTheOther(self):
        self.ready("a").release()
        d = self.router.acquire("c")
        self.assertEqual(self.log[-1], ("stop", "a"))
        self.m["a"].finishStop()
        self.m["c"].becomeReady()
        self.successResultOf(d)


STARVATION_CONFIG = """
maxQueueWait: {bound}
models:
  a:
    cmd: srv-a --port ${{PORT}}
  b:
    cmd: srv-b --port ${{PORT}}
"""


class BoundedWaitTests(SynchronousTestCase):
    """
    A steady stream of requests for a: one a second, each lasting 2 s, so
    a always has one in flight; a request for b arrives at 0.5 s.
    """

    def stream(self, bound, seconds):
        clock = Clock()
        log = []
        config = loadConfigText(STARVATION_CONFIG.format(bound=bound))
        router = RouterService(
            config,
            reactor=clock,
            machineFactory=lambda model, onExit: FakeMachine(model, onExit, log),
        )
        machines = router.machines
        leases = []  # (end, lease)

        def acquireA():
            router.acquire("a").addCallback(
                lambda lease: leases.append((clock.seconds() + 2, lease))
            )

        acquireA()
        machines["a"].becomeReady()
        clock.advance(0.5)
        servedB = []
        router.acquire("b").addCallback(lambda lease: servedB.append(clock.seconds()))
        for t in range(1, seconds + 1):
            clock.advance(1 if t > 1 else 0.5)
            for end, lease in [x for x in leases if x[0] <= clock.seconds()]:
                leases.remove((end, lease))
                lease.release()
            acquireA()
            for machine in machines.values():
                if machine.state == "stopping":
                    machine.finishStop()
                elif machine.state == "starting":
                    machine.becomeReady()
            if servedB:
                break
        return router, clock, log, servedB

    def test_withoutABoundTheOtherModelStarves(self):
        router, clock, log, servedB = self.stream("off", 100)
        self.assertEqual(servedB, [])
        self.assertEqual(log, [("start", "a")])

    def test_withABoundTheOtherModelIsServed(self):
        router, clock, log, servedB = self.stream(10, 100)
        # At 10.5 s a closes; the request that arrived at 10 s ends at 12 s.
        self.assertEqual(servedB, [12])
        self.assertEqual(log, [("start", "a"), ("stop", "a"), ("start", "b")])
        self.assertEqual(router.ledger.admitted("a"), 2,
                         "the requests that came at 11 and 12 s wait")


PRELOAD_CONFIG = CONFIG + """
hooks:
  on_startup:
    preload: [a, alpha, b]
"""


class LoadTests(RouterTestsBase):
    config = PRELOAD_CONFIG

    def test_loadStartsTheModelAndHoldsNoLease(self):
        d = self.router.load("c")
        self.assertEqual(self.log, [("start", "c")])
        self.assertNoResult(d)
        self.m["c"].becomeReady()
        self.assertIsNone(self.successResultOf(d))
        ledger = self.router.ledger
        self.assertEqual((ledger.inFlight("c"), ledger.admitted("c")), (0, 0))

    def test_loadOfAReadyModelFiresAtOnce(self):
        self.ready("a").release()
        self.successResultOf(self.router.load("alpha"))
        self.assertEqual(self.starts(), ["a"])

    def test_loadSwapsLikeARequest(self):
        lease = self.ready("a")
        d = self.router.load("b")
        self.assertNotIn(("stop", "a"), self.log, "a is busy")
        lease.release()
        self.m["a"].finishStop()
        self.m["b"].becomeReady()
        self.successResultOf(d)

    def test_loadUnknownModel(self):
        self.assertRaises(UnknownModel, self.router.load, "nope")

    def test_ttlCountsFromALoad(self):
        d = self.router.load("c")
        self.m["c"].becomeReady()
        self.successResultOf(d)
        self.clock.advance(5)
        self.assertEqual(self.log[-1], ("stop", "c"))

    def test_preloadIsSequential(self):
        self.router.startService()
        self.assertEqual(self.log, [("start", "a")])
        self.m["a"].becomeReady()
        # alpha is a again: already ready; then b evicts a.
        self.assertEqual(self.log, [("start", "a"), ("stop", "a")])
        self.m["a"].finishStop()
        self.m["b"].becomeReady()
        self.assertTrue(self.router.isReady("b"))
        self.assertEqual(self.starts(), ["a", "b"])
        self.assertEqual(self.router.runningModels()[0]["model"], "b")

    def test_preloadFailureDoesNotStopTheNext(self):
        self.router.startService()
        self.m["a"].failStart("boom")
        self.assertEqual(self.starts(), ["a", "a"], "alpha tries a again")
        self.m["a"].failStart("boom")
        self.m["b"].becomeReady()
        self.assertTrue(self.router.isReady("b"))

    def test_shutdownDuringPreload(self):
        self.router.startService()
        stopped = self.router.stopService()
        self.assertEqual(self.log, [("start", "a"), ("stop", "a")])
        self.m["a"].finishStop()
        self.successResultOf(stopped)
        self.assertEqual(self.starts(), ["a"])


class QueueTests(RouterTestsBase):
    def test_queuePositionsAreReported(self):
        lease = self.ready("a")
        positions = {"b": [], "c": []}
        b = self.router.acquire("b", positions["b"].append)
        self.router.acquire("c", positions["c"].append)
        self.assertEqual(positions, {"b": [1], "c": [2]})
        b.cancel()
        self.failureResultOf(b, CancelledError)
        self.assertEqual(positions, {"b": [1], "c": [2, 1]})
        lease.release()
        self.m["a"].finishStop()
        self.assertEqual(positions["c"], [2, 1], "loading, no longer queued")

    def test_modelLoadingForARequestIsNoQueue(self):
        positions = []
        self.router.acquire("a", positions.append)
        self.assertEqual(positions, [])

    def test_unloadOfAStartingModelFailsItsWaiters(self):
        a = self.router.acquire("a")
        b = self.router.acquire("b")
        done = self.router.unload("a")
        f = self.failureResultOf(a, ModelUnloaded)
        self.assertIn("model unloaded", f.value.message)
        self.assertEqual(self.log, [("start", "a"), ("stop", "a")])
        self.assertNoResult(done)
        self.m["a"].finishStop()
        self.successResultOf(done)
        self.assertEqual(self.log[-1], ("start", "b"), "the queue moves on")
        self.m["b"].becomeReady()
        self.successResultOf(b)

    def test_unloadDoesNotWaitForInFlightRequests(self):
        lease = self.ready("a")
        done = self.router.unload("alpha")
        self.assertEqual(self.log[-1], ("stop", "a"))
        self.m["a"].finishStop()
        self.successResultOf(done)
        lease.release()
        ledger = self.router.ledger
        self.assertEqual((ledger.inFlight("a"), ledger.admitted("a")), (0, 0))

    def test_unloadUnknownModel(self):
        self.assertRaises(UnknownModel, self.router.unload, "nope")

    def test_ttlZeroNeverUnloads(self):
        self.ready("a").release()
        self.clock.advance(10000)
        self.assertNotIn(("stop", "a"), self.log)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_newRequestsAfterShutdownAreRefused(self):
        self.router.startService()
        self.successResultOf(self.router.stopService())
        self.assertRaises(ShuttingDown, self.router.acquire, "a")
        self.assertRaises(ShuttingDown, self.router.load, "a")

    def test_waiterAskingAgainAfterUnloadWaitsForTheStop(self):
        again = []

        def askAgain(failure):
            failure.trap(ModelUnloaded)
            again.append(self.router.acquire("a"))

        self.router.acquire("a").addErrback(askAgain)
        done = self.router.unload("a")
        self.assertNoResult(again[0])
        self.assertEqual(self.log, [("start", "a"), ("stop", "a")])
        self.m["a"].finishStop()
        self.successResultOf(done)
        self.assertEqual(self.log[-1], ("start", "a"))
        self.m["a"].becomeReady()
        self.successResultOf(again[0])


class PhaseTests(SynchronousTestCase):
    """
    Each lease says how its wait was spent: queueing, other models
    stopping for it, its model loading.
    """

    def setUp(self):
        self.clock = Clock()
        self.log = []
        self.router = RouterService(
            loadConfigText(CONFIG),
            reactor=self.clock,
            machineFactory=lambda model, onExit: FakeMachine(model, onExit, self.log),
        )
        self.m = self.router.machines

    def test_readyModelHasNoWait(self):
        d = self.router.acquire("a")
        self.m["a"].becomeReady()
        self.successResultOf(d).release()
        lease = self.successResultOf(self.router.acquire("a"))
        self.assertEqual(lease.phases, {"queue": 0.0, "stop": 0.0, "load": 0.0})

    def test_swapIsSplitIntoQueueStopAndLoad(self):
        d = self.router.acquire("a")
        self.m["a"].becomeReady()
        busy = self.successResultOf(d)
        waiting = self.router.acquire("b")
        self.clock.advance(2)  # b queues behind a's request
        busy.release()
        self.clock.advance(3)  # a stops
        self.m["a"].finishStop()
        self.clock.advance(5)  # b loads
        self.m["b"].becomeReady()
        lease = self.successResultOf(waiting)
        self.assertEqual(lease.phases, {"queue": 2.0, "stop": 3.0, "load": 5.0})
        self.assertEqual(lease.dispatched - lease.arrived, 10.0)


class ReconfigureTests(SynchronousTestCase):
    """
    A reload reconfigures the router in place: machines whose launch
    settings did not change are kept with their requests; changed running
    ones are stopped and replaced; removed ones are stopped; nothing starts
    before what was stopped is gone.
    """

    NEW = """
models:
  a:
    cmd: srv-a --port ${PORT}
    aliases: [alpha]
  b:
    cmd: srv-b --changed --port ${PORT}
  d:
    cmd: srv-d --port ${PORT}
"""

    def setUp(self):
        self.clock = Clock()
        self.log = []
        self.factory = lambda model, onExit: FakeMachine(model, onExit, self.log)
        self.router = RouterService(loadConfigText(CONFIG), reactor=self.clock,
                                    machineFactory=self.factory)

    def reconfigure(self):
        return self.router.reconfigure(loadConfigText(self.NEW), lambda a, b: a.argv == b.argv)

    def ready(self, name):
        d = self.router.acquire(name)
        self.router.machines[name].becomeReady()
        return self.successResultOf(d)

    def test_unchangedReadyModelKeepsServing(self):
        lease = self.ready("a")
        machine = self.router.machines["a"]
        done = self.reconfigure()
        self.assertEqual((done.kept, done.running), (("a",), ("a",)))
        self.assertIs(self.router.machines["a"], machine)
        self.assertTrue(self.router.isReady("a"))
        self.assertEqual(self.router.ledger.inFlight("a"), 1)
        self.assertNotIn(("stop", "a"), self.log)
        lease.release()
        self.assertEqual(self.router.ledger.inFlight("a"), 0)
        self.successResultOf(self.router.acquire("a"))
        self.assertEqual(self.log.count(("start", "a")), 1)

    def test_keptMachineStillReportsItsExits(self):
        self.ready("a").release()
        self.reconfigure()
        self.router.machines["a"].crash()
        self.router.acquire("a")
        self.assertEqual(self.log[-1], ("start", "a"))

    def test_reportSaysWhatHappened(self):
        self.ready("b").release()
        done = self.reconfigure()
        self.assertEqual(done.kept, ("a",))
        self.assertEqual(done.restarted, ("b",))
        self.assertEqual(done.added, ("d",))
        self.assertEqual(done.removed, ("c",))
        self.assertEqual(done.running, (), "a was not running")
        self.assertEqual(done.changed, ())

    def test_changedIdleModelIsReportedChanged(self):
        """
        A model whose settings changed while it was not running is listed
        as changed, not restarted: nothing was stopped, and its next start
        runs the new command.
        """
        old = self.router.machines["b"]
        done = self.reconfigure()
        self.assertEqual((done.restarted, done.changed), ((), ("b",)))
        self.assertNotIn(("stop", "b"), self.log)
        self.assertIsNot(self.router.machines["b"], old)
        self.ready("b").release()
        self.assertIn("--changed", self.router.machines["b"].model.cmd)

    def test_changedFailedModelIsReportedChanged(self):
        d = self.router.acquire("b")
        self.router.machines["b"].failStart("boom")
        self.failureResultOf(d)
        done = self.reconfigure()
        self.assertEqual((done.restarted, done.changed), ((), ("b",)))

    def test_waitingRequestsForKeptModelsKeepWaiting(self):
        d = self.router.acquire("a")
        self.reconfigure()
        self.assertNoResult(d)
        self.router.machines["a"].becomeReady()
        self.successResultOf(d)

    def test_waitingRequestsForRemovedModelsFail(self):
        d = self.router.acquire("c")
        self.reconfigure()
        f = self.failureResultOf(d, ModelUnloaded)
        self.assertIn("removed", f.value.message)
        self.assertRaises(UnknownModel, self.router.acquire, "c")

    def test_changedModelIsStoppedAndReplaced(self):
        lease = self.ready("b")
        old = self.router.machines["b"]
        self.reconfigure()
        self.assertIsNot(self.router.machines["b"], old)
        self.assertIn(("stop", "b"), self.log)
        self.assertEqual(self.router.ledger.inFlight("b"), 0, "its lease no longer counts")
        lease.release()
        self.assertEqual(self.router.ledger.admitted("b"), 0)
        stopped = self.router.stopService()
        self.assertNoResult(stopped)
        old.finishStop()
        self.successResultOf(stopped)

    def test_nothingStartsBeforeTheReplacedProcessesAreGone(self):
        self.ready("b").release()
        old = self.router.machines["b"]
        self.reconfigure()
        d = self.router.acquire("d")
        self.assertNotIn(("start", "d"), self.log)
        old.finishStop()
        self.assertEqual(self.log[-1], ("start", "d"))
        self.router.machines["d"].becomeReady()
        self.successResultOf(d)

    def test_oldMachineExitIsIgnored(self):
        self.ready("b").release()
        old = self.router.machines["b"]
        self.reconfigure()
        old.crash()
        old.finishStop()
        self.assertEqual(self.router.machines["b"].state, "stopped")
        self.assertNotIn(("start", "b"), self.log[2:])


class DrainTests(RouterTestsBase):
    """
    A shutdown drains first: no new requests, those in flight and those
    waiting for a model finish, bounded in time; force() cuts it short.
    """

    def test_drainWaitsForRequestsInFlight(self):
        lease = self.ready("a")
        drained = self.router.drain(10)
        self.assertTrue(self.router.draining)
        self.assertRaises(ShuttingDown, self.router.acquire, "a")
        self.assertNoResult(drained)
        lease.release()
        self.assertIs(self.successResultOf(drained), True)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_drainServesRequestsWaitingForAStartingModel(self):
        waiting = self.router.acquire("b")
        drained = self.router.drain(10)
        self.assertEqual(self.m["b"].state, "starting")
        self.m["b"].becomeReady()
        lease = self.successResultOf(waiting)
        self.assertNoResult(drained)
        lease.release()
        self.assertIs(self.successResultOf(drained), True)

    def test_drainIsBounded(self):
        self.ready("a")
        drained = self.router.drain(10)
        self.clock.advance(9.9)
        self.assertNoResult(drained)
        self.clock.advance(0.1)
        self.assertIs(self.successResultOf(drained), False)

    def test_idleRouterDrainsAtOnce(self):
        self.assertIs(self.successResultOf(self.router.drain(10)), True)

    def test_forceEndsTheDrainAndKillsAtOnce(self):
        self.ready("a")
        drained = self.router.drain(10)
        self.router.force()
        self.assertIs(self.successResultOf(drained), False)
        stopped = self.router.stopService()
        self.assertEqual(self.m["a"].graces, [0])
        self.m["a"].finishStop()
        self.successResultOf(stopped)

    def test_forceDuringTheStopsHurriesThem(self):
        self.ready("a")
        stopped = self.router.stopService()
        self.assertEqual(self.m["a"].graces, [None])
        self.router.force()
        self.assertEqual(self.m["a"].graces, [None, 0])
        self.m["a"].finishStop()
        self.successResultOf(stopped)


class RecordingReport:
    """
    An IRouterReport that records every call as C{(method, args...)}.
    """

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args: self.calls.append((name, *args))


class ReportTests(RouterTestsBase):
    """
    What the router tells its IRouterReport, in order.
    """

    def setUp(self):
        super().setUp()
        self.report = RecordingReport()
        self.router.observer = self.report

    def said(self, *names):
        return [c for c in self.report.calls if c[0] in names]

    def test_startServeRelease(self):
        self.clock.advance(100)
        d = self.router.acquire("c")
        self.assertEqual(self.said("queueDepth"), [("queueDepth", "c", 1, 1)])
        self.clock.advance(2)
        self.m["c"].becomeReady()
        lease = self.successResultOf(d)
        self.assertEqual(self.said("loadBegan", "ready", "swapDone"), [
            ("loadBegan", "c", None, self.config.models["c"].port),
            ("ready", "c", 2.0), ("swapDone", "c", 2.0)])
        self.assertEqual(self.said("inFlight")[-1], ("inFlight", "c", 1, 1))
        self.assertEqual(self.said("queueDepth")[-1], ("queueDepth", "c", 0, 0))
        self.clock.advance(1)
        lease.release()
        self.assertEqual(self.said("inFlight")[-1], ("inFlight", "c", 0, 0))
        self.assertEqual(self.said("idle")[-1], ("idle", "c", 103.0, 108.0), "ttl 5")
        self.clock.advance(5)
        self.assertEqual(self.said("stopBegan"), [("stopBegan", "c", "ttl")])
        self.m["c"].finishStop()
        self.assertEqual(self.said("stopEnded"), [("stopEnded", "c")])

    def test_failedStart(self):
        d = self.router.acquire("a")
        self.m["a"].failStart("upstream command exited prematurely (exit code 1)")
        f = self.failureResultOf(d, ModelStartFailed)
        self.assertEqual(
            f.value.message,
            "upstream failed to start: upstream command exited prematurely (exit code 1);"
            " last output: oops")
        self.assertEqual(self.said("failed"), [("failed", "a", {
            "reason": "upstream command exited prematurely (exit code 1)", "exitCode": 1,
            "lastLines": ["oops"]})])
