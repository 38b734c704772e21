"""
Tests for L{llamaswap.router.scheduler}: the pure decision function.

Each test is a row of a table: a queue and a view of the models in, the
plan out.  The multi-step tests drive L{Simulation}, a tiny stand-in for the
router that applies the decisions to a fake state and completes starts,
stops and requests when told to.
"""

from __future__ import annotations

from zope.interface import implementer

from twisted.trial.unittest import SynchronousTestCase

from llamaswap.interfaces import ISwapPlanner
from llamaswap.router.scheduler import (
    Close,
    Dispatch,
    ModelView,
    Pending,
    Start,
    Stop,
    decide,
)


@implementer(ISwapPlanner)
class EvictOthers:
    """
    The default group: one model at a time.
    """

    def evictionFor(self, target, running):
        return frozenset(running) - {target}

    def explain(self, target, running):
        return f"evict-others: model={target} evict={sorted(set(running) - {target})}"


@implementer(ISwapPlanner)
class Groups:
    """
    Non-exclusive swap groups: a model evicts only the other members of its
    own group.
    """

    def __init__(self, groups):
        self.groupOf = {m: g for g, members in groups.items() for m in members}

    def evictionFor(self, target, running):
        return frozenset(
            m for m in running if m != target and self.groupOf.get(m) == self.groupOf[target]
        )

    def explain(self, target, running):
        return f"groups: model={target}"


@implementer(ISwapPlanner)
class BigEvictsAll:
    """
    Asymmetric, like an exclusive group next to a non-exclusive one: C{big}
    evicts everything, the others evict nothing.
    """

    def evictionFor(self, target, running):
        return frozenset(running) - {target} if target == "big" else frozenset()

    def explain(self, target, running):
        return "big"


def P(id, model, arrived=0.0, lease=True):
    return Pending(id, model, arrived, lease)


def V(state="stopped", inFlight=0, concurrency=10, ttl=0, idleSince=None):
    return ModelView(state, inFlight, concurrency, ttl, idleSince)


def models(**states):
    """
    @return: model id -> L{ModelView}; a value is a state name or a view.
    """
    return {m: (V(s) if isinstance(s, str) else s) for m, s in states.items()}


class Simulation:
    """
    Applies plans to a fake state, as the router does to its machines.

    @ivar served: the model of every dispatched request, in order.
    @ivar starts: every model started, in order.
    @ivar stops: every model stopped, in order.
    """

    def __init__(self, planner, names, maxQueueWait=0.0, concurrency=10, duration=None):
        self.planner = planner
        self.duration = duration
        self.ends: list[tuple[float, str]] = []
        self.maxQueueWait = maxQueueWait
        self.state = {m: "stopped" for m in names}
        self.inFlight = {m: 0 for m in names}
        self.concurrency = concurrency
        self.pending: list[Pending] = []
        self.now = 0.0
        self.served: list[str] = []
        self.servedIds: list[object] = []
        self.starts: list[str] = []
        self.stops: list[str] = []
        self.plan = None

    def arrive(self, id, model):
        self.pending.append(Pending(id, model, self.now))
        return self.step()

    def cancel(self, id):
        self.pending = [p for p in self.pending if p.id != id]
        return self.step()

    def step(self):
        views = {
            m: V(self.state[m], self.inFlight[m], self.concurrency) for m in self.state
        }
        self.plan = decide(self.pending, views, self.planner, self.now, self.maxQueueWait)
        for d in self.plan.decisions:
            if isinstance(d, Dispatch):
                self.pending = [p for p in self.pending if p.id != d.requestId]
                self.inFlight[d.model] += 1
                self.served.append(d.model)
                self.servedIds.append(d.requestId)
                if self.duration is not None:
                    self.ends.append((self.now + self.duration, d.model))
            elif isinstance(d, Start):
                assert self.state[d.model] in ("stopped", "failed"), d
                self.state[d.model] = "starting"
                self.starts.append(d.model)
            elif isinstance(d, Stop):
                assert self.state[d.model] in ("ready", "starting"), d
                self.state[d.model] = "stopping"
                self.stops.append(d.model)
        return self.plan.decisions

    def finishStarts(self):
        for m, s in self.state.items():
            if s == "starting":
                self.state[m] = "ready"
        return self.step()

    def finishStops(self):
        for m, s in self.state.items():
            if s == "stopping":
                self.state[m] = "stopped"
        return self.step()

    def finishRequests(self, model=None, count=None):
        for m in self.inFlight:
            if model is None or m == model:
                self.inFlight[m] -= self.inFlight[m] if count is None else count
        return self.step()

    def advanceTo(self, now):
        """
        Move the clock; requests whose C{duration} is over end.
        """
        self.now = now
        for end in [e for e in self.ends if e[0] <= now]:
            self.ends.remove(end)
            self.inFlight[end[1]] -= 1
        return self.step()

    def settle(self, limit=100):
        """
        Complete everything in turn until nobody waits.
        """
        for _ in range(limit):
            if not self.pending and not any(self.inFlight.values()):
                return
            self.finishStarts()
            self.finishRequests()
            self.finishStops()
        raise AssertionError("did not settle: %r" % (self.pending,))


class FastPathTests(SynchronousTestCase):
    def test_readyModelIsDispatchedAtOnce(self):
        plan = decide([P(1, "a")], models(a="ready", b="stopped"), EvictOthers(), 0, 0)
        self.assertEqual(plan.decisions, (Dispatch(1, "a"),))
        self.assertEqual(plan.queued, ())

    def test_dispatchInArrivalOrder(self):
        plan = decide([P(2, "a"), P(1, "a")], models(a="ready"), EvictOthers(), 0, 0)
        self.assertEqual(plan.decisions, (Dispatch(2, "a"), Dispatch(1, "a")))

    def test_concurrencyCapsDispatch(self):
        plan = decide(
            [P(1, "a"), P(2, "a"), P(3, "a")],
            models(a=V("ready", inFlight=1, concurrency=2)),
            EvictOthers(), 0, 0,
        )
        self.assertEqual(plan.decisions, (Dispatch(1, "a"),))
        self.assertEqual(plan.queued, (2, 3))

    def test_loadsNeedNoSlot(self):
        plan = decide(
            [P(1, "a"), P(2, "a", lease=False)],
            models(a=V("ready", inFlight=1, concurrency=1)),
            EvictOthers(), 0, 0,
        )
        self.assertEqual(plan.decisions, (Dispatch(2, "a"),))


class StartTests(SynchronousTestCase):
    def test_threeConcurrentRequestsOneStart(self):
        pending = [P(1, "a"), P(2, "a"), P(3, "a")]
        plan = decide(pending, models(a="stopped"), EvictOthers(), 0, 0)
        self.assertEqual(plan.decisions, (Start("a"),))
        self.assertEqual(plan.queued, (), "waiting for their own model is not queued")
        plan = decide(pending, models(a="starting"), EvictOthers(), 0, 0)
        self.assertEqual(plan.decisions, ())
        plan = decide(pending, models(a="ready"), EvictOthers(), 0, 0)
        self.assertEqual(plan.decisions, tuple(Dispatch(i, "a") for i in (1, 2, 3)))

    def test_failedModelIsStartedAgainForNewRequests(self):
        plan = decide([P(1, "a")], models(a="failed"), EvictOthers(), 0, 0)
        self.assertEqual(plan.decisions, (Start("a"),))

    def test_nothingWaitingNothingStarted(self):
        plan = decide([], models(a="stopped", b="failed"), EvictOthers(), 0, 0)
        self.assertEqual(plan.decisions, ())

    def test_stoppingModelIsStartedOnceStopped(self):
        plan = decide([P(1, "a")], models(a="stopping"), EvictOthers(), 0, 0)
        self.assertEqual(plan.decisions, ())
        self.assertEqual(plan.queued, ())
        plan = decide([P(1, "a")], models(a="stopped"), EvictOthers(), 0, 0)
        self.assertEqual(plan.decisions, (Start("a"),))


class SwapTests(SynchronousTestCase):
    def test_idleModelIsStoppedThenTargetStarted(self):
        plan = decide([P(1, "b")], models(a="ready", b="stopped"), EvictOthers(), 0, 0)
        self.assertEqual(plan.decisions, (Stop("a", "b"),))
        [swap] = plan.swaps
        self.assertEqual((swap.target, swap.evict), ("b", frozenset({"a"})))
        plan = decide([P(1, "b")], models(a="stopping", b="stopped"), EvictOthers(), 0, 0)
        self.assertEqual(plan.decisions, (), "no second stop, no start before it ends")
        plan = decide([P(1, "b")], models(a="stopped", b="stopped"), EvictOthers(), 0, 0)
        self.assertEqual(plan.decisions, (Start("b"),))

    def test_busyModelIsNotStopped(self):
        plan = decide(
            [P(1, "b")], models(a=V("ready", inFlight=1), b="stopped"), EvictOthers(), 0, 0
        )
        self.assertEqual(plan.decisions, ())
        self.assertEqual(plan.queued, (1,))
        plan = decide([P(1, "b")], models(a="ready", b="stopped"), EvictOthers(), 0, 0)
        self.assertEqual(plan.decisions, (Stop("a", "b"),))

    def test_requestDispatchedInThisPlanMakesTheModelBusy(self):
        plan = decide([P(1, "a"), P(2, "b")], models(a="ready", b="stopped"), EvictOthers(), 0, 0)
        self.assertEqual(plan.decisions, (Dispatch(1, "a"),))

    def test_olderSwapStopsTheModelBeforeYoungerRequestsForIt(self):
        plan = decide([P(1, "b"), P(2, "a")], models(a="ready", b="stopped"), EvictOthers(), 0, 0)
        self.assertEqual(plan.decisions, (Stop("a", "b"),))
        self.assertEqual(plan.queued, (2,))

    def test_evictionSetComesFromThePlanner(self):
        planner = Groups({"g1": ["a", "b"], "g2": ["c"]})
        plan = decide([P(1, "b")], models(a="ready", b="stopped", c="ready"), planner, 0, 0)
        self.assertEqual(plan.decisions, (Stop("a", "b"),))
        plan = decide([P(1, "b")], models(a="stopped", b="stopped", c="ready"), planner, 0, 0)
        self.assertEqual(plan.decisions, (Start("b"),))

    def test_plannerMayLetModelsRunTogether(self):
        planner = Groups({"g1": ["a"], "g2": ["b"]})
        plan = decide([P(1, "b")], models(a=V("ready", inFlight=3), b="stopped"), planner, 0, 0)
        self.assertEqual(plan.decisions, (Start("b"),))

    def test_nonConflictingSwapsRunInParallel(self):
        planner = Groups({"x": ["a1", "a2"], "y": ["b1", "b2"]})
        pending = [P(1, "a2"), P(2, "b2")]
        plan = decide(
            pending, models(a1="ready", a2="stopped", b1="ready", b2="stopped"), planner, 0, 0
        )
        self.assertEqual(plan.decisions, (Stop("a1", "a2"), Stop("b1", "b2")))
        plan = decide(
            pending, models(a1="stopped", a2="stopped", b1="stopped", b2="stopped"), planner, 0, 0
        )
        self.assertEqual(plan.decisions, (Start("a2"), Start("b2")))

    def test_aDrainingSwapDoesNotHoldUpAnUnrelatedOne(self):
        planner = Groups({"x": ["a1", "a2"], "y": ["b1", "b2"]})
        views = models(a1=V("ready", inFlight=1), a2="stopped", b1="ready", b2="stopped")
        plan = decide([P(1, "a2"), P(2, "b2")], views, planner, 0, 0)
        self.assertEqual(plan.decisions, (Stop("b1", "b2"),))
        self.assertEqual(plan.queued, (1,))

    def test_youngerTargetWaitsForAnOlderOneItWouldEvict(self):
        plan = decide([P(1, "a"), P(2, "b")], models(a="stopped", b="stopped"), EvictOthers(), 0, 0)
        self.assertEqual(plan.decisions, (Start("a"),))
        self.assertEqual(plan.queued, (2,))
        views = models(a="starting", b="stopped")
        plan = decide([P(1, "a"), P(2, "b")], views, EvictOthers(), 0, 0)
        self.assertEqual(plan.decisions, ())

    def test_youngerTargetWaitsForAnOlderOneThatWouldEvictIt(self):
        # s2 evicts nothing, but starting it now would only make big's
        # eviction set larger: it waits for big.
        views = models(big="stopped", s1=V("ready", inFlight=1), s2="stopped")
        plan = decide([P(1, "big"), P(2, "s2")], views, BigEvictsAll(), 0, 0)
        self.assertEqual(plan.decisions, ())
        self.assertEqual(plan.queued, (1, 2))

    def test_collationABCABC(self):
        sim = Simulation(EvictOthers(), "abc")
        for i, m in enumerate("abcabc"):
            sim.arrive(i, m)
        self.assertEqual(sim.starts, ["a"])
        sim.settle()
        self.assertEqual(sim.served, list("aabbcc"))
        self.assertEqual(sim.starts, ["a", "b", "c"])

    def test_collationWhileTheFirstModelServes(self):
        sim = Simulation(EvictOthers(), "abc")
        sim.arrive(0, "a")
        sim.finishStarts()
        for i, m in enumerate("bcabc", 1):
            sim.arrive(i, m)
        self.assertEqual(sim.served, ["a", "a"], "the ready model's requests take the fast path")
        sim.settle()
        self.assertEqual(sim.served, list("aabbcc"))
        self.assertEqual(sim.starts, ["a", "b", "c"])


class CancelTests(SynchronousTestCase):
    def test_cancelledRequestsCauseNoStart(self):
        sim = Simulation(EvictOthers(), "ab")
        sim.arrive(1, "a")
        sim.finishStarts()
        sim.arrive(2, "b")
        self.assertEqual(sim.stops, [], "a is busy")
        sim.cancel(2)
        sim.finishRequests()
        self.assertEqual((sim.stops, sim.starts), ([], ["a"]))

    def test_swapAbandonedWhileStopping(self):
        sim = Simulation(EvictOthers(), "ab")
        sim.arrive(1, "a")
        sim.finishStarts()
        sim.finishRequests()
        sim.arrive(2, "b")
        self.assertEqual(sim.stops, ["a"])
        sim.cancel(2)
        sim.finishStops()
        self.assertEqual(sim.starts, ["a"], "nobody wants b any more")

    def test_unwantedStartIsLeftToFinish(self):
        plan = decide([], models(a="starting"), EvictOthers(), 0, 0)
        self.assertEqual(plan.decisions, ())

    def test_unwantedStartIsAbortedWhenItsRoomIsNeeded(self):
        plan = decide([P(1, "b")], models(a="starting", b="stopped"), EvictOthers(), 0, 0)
        self.assertEqual(plan.decisions, (Stop("a", "b"),))

    def test_wantedStartIsNotAborted(self):
        plan = decide(
            [P(1, "b"), P(2, "a")], models(a="starting", b="stopped"), EvictOthers(), 0, 0
        )
        self.assertEqual(plan.decisions, ())
        self.assertEqual(plan.queued, (1,))


class BoundedWaitTests(SynchronousTestCase):
    def views(self, inFlight=1):
        return models(a=V("ready", inFlight=inFlight), b="stopped")

    def test_beforeTheBoundTheBusyModelTakesNewRequests(self):
        plan = decide([P(1, "b", 0), P(2, "a", 5)], self.views(), EvictOthers(), 5, 10)
        self.assertEqual(plan.decisions, (Dispatch(2, "a"),))
        self.assertEqual(plan.wakeAt, 10)

    def test_pastTheBoundTheBusyModelIsClosed(self):
        plan = decide([P(1, "b", 0), P(2, "a", 10)], self.views(), EvictOthers(), 10, 10)
        self.assertEqual(plan.decisions, (Close("a", "b", 10),))
        self.assertEqual(plan.queued, (1, 2))
        self.assertEqual(plan.wakeAt, 20, "the drain is bounded too")

    def test_aClosedModelThatDoesNotDrainIsStoppedAnyway(self):
        """
        A request hung on a: a second maxQueueWait after a was closed for b,
        a is stopped with its request in flight (forced), and b starts once
        it is gone: one hung client cannot keep two models out of service.
        """
        pending = [P(1, "b", 0)]
        plan = decide(pending, self.views(), EvictOthers(), 19.9, 10)
        self.assertEqual(plan.decisions, (Close("a", "b", 10),))
        plan = decide(pending, self.views(), EvictOthers(), 20, 10)
        self.assertEqual(plan.decisions, (Stop("a", "b", forced=True),))
        plan = decide(pending, models(a=V("stopped", inFlight=1), b="stopped"),
                      EvictOthers(), 20.5, 10)
        self.assertEqual(plan.decisions, (Start("b"),))

    def test_nothingStartsWhileAPreviousConfigRetires(self):
        """
        With processes of a previous config still stopping, the target
        waits; idle models in its way are stopped meanwhile.
        """
        plan = decide([P(1, "b")], models(a="ready", b="stopped"), EvictOthers(), 0, 0,
                      retiring=True)
        self.assertEqual(plan.decisions, (Stop("a", "b"),))
        plan = decide([P(1, "b")], models(a="stopped", b="stopped"), EvictOthers(), 0, 0,
                      retiring=True)
        self.assertEqual(plan.decisions, ())

    def test_requestsWaitingBeforeTheCutoffAreStillServed(self):
        # a took 12 s to load; b's request passed the bound meanwhile.  a's
        # requests that were already waiting at the cutoff (10.5) are
        # collated; the one that came later waits for b.
        pending = [P(1, "a", 0), P(2, "b", 0.5), P(3, "a", 9), P(4, "a", 11)]
        plan = decide(pending, models(a="ready", b="stopped"), EvictOthers(), 12, 10)
        self.assertEqual(
            plan.decisions, (Dispatch(1, "a"), Dispatch(3, "a"), Close("a", "b", 10.5))
        )
        self.assertEqual(plan.queued, (2, 4))

    def test_closedModelDrainsThenSwaps(self):
        pending = [P(1, "b", 0), P(2, "a", 11)]
        plan = decide(pending, self.views(inFlight=0), EvictOthers(), 12, 10)
        self.assertEqual(plan.decisions, (Stop("a", "b"),))
        plan = decide(pending, models(a="stopped", b="stopped"), EvictOthers(), 12, 10)
        self.assertEqual(plan.decisions, (Start("b"),))

    def streamOfA(self, maxQueueWait, seconds):
        """
        Every second a request for a arrives, each takes 2 seconds, so a is
        never idle; a request for b arrives at 0.5.

        @return: the L{Simulation} after C{seconds}.
        """
        sim = Simulation(EvictOthers(), "ab", maxQueueWait=maxQueueWait, duration=2)
        sim.arrive("a0", "a")
        sim.finishStarts()
        for tick in range(1, seconds * 2 + 1):
            sim.advanceTo(tick / 2)
            if tick == 1:
                sim.arrive("b", "b")
            if tick % 2 == 0:
                sim.arrive(f"a{tick // 2}", "a")
            sim.finishStops()
            sim.finishStarts()
        return sim

    def test_withoutABoundASteadyStreamStarvesTheOtherModel(self):
        sim = self.streamOfA(0, 100)
        self.assertNotIn("b", sim.served)
        self.assertEqual(sim.starts, ["a"])
        self.assertIsNone(sim.plan.wakeAt)

    def test_withABoundTheOtherModelIsServed(self):
        sim = self.streamOfA(10, 30)
        self.assertIn("b", sim.served)
        self.assertEqual(sim.starts[:2], ["a", "b"])
        servedBeforeB = sim.servedIds[: sim.servedIds.index("b")]
        # a's requests up to 10.5 s went first, none that arrived later.
        self.assertEqual(servedBeforeB, [f"a{i}" for i in range(11)])


class TTLTests(SynchronousTestCase):
    def test_idleModelStopsWhenItsTTLExpires(self):
        views = models(a=V("ready", ttl=5, idleSince=100))
        plan = decide([], views, EvictOthers(), 104, 0)
        self.assertEqual((plan.decisions, plan.wakeAt), ((), 105))
        plan = decide([], views, EvictOthers(), 105, 0)
        self.assertEqual(plan.decisions, (Stop("a", None),))

    def test_noTTLWhileBusyOrWanted(self):
        views = models(a=V("ready", inFlight=1, ttl=5, idleSince=0))
        self.assertEqual(decide([], views, EvictOthers(), 50, 0).decisions, ())
        views = models(a=V("ready", inFlight=10, concurrency=10, ttl=5, idleSince=0))
        plan = decide([P(1, "a")], views, EvictOthers(), 50, 0)
        self.assertEqual((plan.decisions, plan.wakeAt), ((), None))

    def test_noTTLStopForAModelThatIsDispatchedTo(self):
        views = models(a=V("ready", ttl=5, idleSince=0))
        plan = decide([P(1, "a")], views, EvictOthers(), 10, 0)
        self.assertEqual(plan.decisions, (Dispatch(1, "a"),))

    def test_ttlZeroNeverStops(self):
        views = models(a=V("ready", ttl=0, idleSince=0))
        plan = decide([], views, EvictOthers(), 10**6, 0)
        self.assertEqual((plan.decisions, plan.wakeAt), ((), None))


class QueuePositionTests(SynchronousTestCase):
    def test_positionsCountQueuedRequestsOnly(self):
        views = models(a=V("ready", inFlight=1), b="stopped", c="stopped")
        plan = decide(
            [P(1, "b"), P(2, "a"), P(3, "c"), P(4, "b")], views, EvictOthers(), 0, 0
        )
        self.assertEqual(plan.decisions, (Dispatch(2, "a"),))
        self.assertEqual(plan.queued, (1, 3, 4))
