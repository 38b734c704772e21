"""
The memory fit planner and its ISwapPlanner adapter: pure, so tested with
hypothesis over arbitrary needs, budgets, busy sets and last-used orders.
"""

from __future__ import annotations

import attr
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

import llamaswap.router  # noqa: F401  (registers the adapters)
from llamaswap.config.model import DEFAULT_GROUP, GroupConfig, GroupsConfig, MatrixConfig
from llamaswap.interfaces import IMemoryPlanner, ISwapPlanner
from llamaswap.memory.manager import basePlanner, pinnedFor
from llamaswap.memory.planner import (
    MemoryFitPlanner,
    MemorySituation,
    MemorySwap,
    MemorySwapPlanner,
    NoEviction,
)
from llamaswap.router.planners import GroupPlanner
from llamaswap.router.scheduler import ModelView, Pending, Start, Stop, decide

GiB = 1024 ** 3
NAMES = [f"m{i}" for i in range(8)]


@st.composite
def situations(draw):
    """
    A target, a running set whose idle part fits the budget, and a
    situation with random needs, busy models and last-used times.
    """
    budget = draw(st.integers(1, 100))
    needs = {m: draw(st.integers(0, 60)) for m in NAMES}
    target = draw(st.sampled_from(NAMES))
    running = frozenset(draw(st.sets(st.sampled_from([m for m in NAMES if m != target]))))
    busy = frozenset(draw(st.sets(st.sampled_from(sorted(running)))) if running else set())
    pinned = frozenset(draw(st.sets(st.sampled_from(sorted(running))))) if running else frozenset()
    lastUsed = {m: draw(st.floats(0, 1000)) for m in running}
    also = frozenset(draw(st.sets(st.sampled_from(sorted(running - pinned)), max_size=1))
                     if running - pinned else ())
    situation = MemorySituation(
        needs=needs, budgets={"0": budget}, busy=busy, lastUsed=lastUsed,
        pinned={target: pinned}, also={target: also} if also else {})
    return target, running, situation


def total(situation, models):
    return sum(situation.need(m) for m in models)


class FitPropertyTests(SynchronousTestCase):
    """
    The planner's invariants, for any situation.
    """

    planner = MemoryFitPlanner()

    def test_provides(self) -> None:
        self.assertTrue(IMemoryPlanner.providedBy(self.planner))

    @settings(max_examples=300, deadline=None)
    @given(situations())
    def test_neverExceedsTheBudgetWhenItFits(self, case) -> None:
        """
        When the plan fits, what stays plus the target is within budget;
        and it says it fits whenever the models it may not touch leave
        room.
        """
        target, running, situation = case
        fit = self.planner.fit(target, running, situation)
        kept = running - fit.stops
        budget = situation.budgets["0"]
        if fit.fits:
            self.assertLessEqual(total(situation, kept) + situation.need(target), budget)
        untouchable = running & situation.pinned[target]
        if total(situation, untouchable) + situation.need(target) <= budget:
            self.assertTrue(fit.fits)

    @settings(max_examples=300, deadline=None)
    @given(situations())
    def test_targetAlwaysRuns(self, case) -> None:
        """
        The target is never evicted nor waited for.
        """
        target, running, situation = case
        fit = self.planner.fit(target, running, situation)
        self.assertNotIn(target, fit.stops)
        fit = self.planner.fit(target, running | {target}, situation)
        self.assertEqual(fit.stops, frozenset())

    @settings(max_examples=300, deadline=None)
    @given(situations())
    def test_noBusyOrPinnedModelEvicted(self, case) -> None:
        """
        C{evict} never holds a busy model; busy ones are only waited for;
        pinned ones are neither.
        """
        target, running, situation = case
        fit = self.planner.fit(target, running, situation)
        self.assertFalse(set(fit.evict) & situation.busy)
        self.assertLessEqual(set(fit.wait), situation.busy)
        self.assertFalse(fit.stops & situation.pinned[target])
        self.assertLessEqual(fit.stops, running)

    @settings(max_examples=300, deadline=None)
    @given(situations())
    def test_leastRecentlyUsedFirst(self, case) -> None:
        """
        Every evicted idle model was used no later than every idle model
        kept, and busy models are only waited for once every idle one
        goes.
        """
        target, running, situation = case
        if situation.also:
            return
        fit = self.planner.fit(target, running, situation)
        idle = running - situation.busy - situation.pinned[target]
        kept = idle - set(fit.evict)
        for evicted in fit.evict:
            for other in kept:
                self.assertLessEqual(situation.lastUsed[evicted], situation.lastUsed[other])
        if fit.wait:
            self.assertEqual(kept, set())
        order = [situation.lastUsed[m] for m in fit.evict]
        self.assertEqual(order, sorted(order))

    @settings(max_examples=300, deadline=None)
    @given(situations())
    def test_evictsNoMoreThanNeeded(self, case) -> None:
        """
        Without an out-of-memory retry, giving back the last model chosen
        would no longer fit.
        """
        target, running, situation = case
        if situation.also:
            return
        fit = self.planner.fit(target, running, situation)
        chosen = list(fit.evict) + list(fit.wait)
        if fit.fits and chosen:
            kept = running - set(chosen[:-1])
            self.assertGreater(total(situation, kept) + situation.need(target),
                               situation.budgets["0"])


class LoadSequenceTests(SynchronousTestCase):
    """
    Loads one after the other, each plan applied: the running set stays
    within the budget and keeps the most recently used models.
    """

    @settings(max_examples=200, deadline=None)
    @given(st.integers(1, 50), st.lists(st.integers(0, 50), min_size=8, max_size=8),
           st.lists(st.sampled_from(NAMES), min_size=1, max_size=40))
    def test_withinBudget(self, budget, sizes, loads) -> None:
        needs = {m: min(size, budget) for m, size in zip(NAMES, sizes, strict=True)}
        running: set = set()
        lastUsed: dict = {}
        planner = MemoryFitPlanner()
        for clock, target in enumerate(loads):
            s = MemorySituation(needs=needs, budgets={"0": budget}, lastUsed=lastUsed)
            fit = planner.fit(target, running, s)
            self.assertTrue(fit.fits)
            self.assertEqual(fit.wait, ())
            running = (running - fit.stops) | {target}
            lastUsed[target] = clock
            self.assertLessEqual(sum(needs[m] for m in running), budget)
            self.assertIn(target, running)


class FitExampleTests(SynchronousTestCase):
    """
    Worked examples of the rules.
    """

    planner = MemoryFitPlanner()

    def test_fitsWithoutEviction(self) -> None:
        s = MemorySituation(needs={"a": 4, "b": 4}, budgets={"0": 8})
        fit = self.planner.fit("b", {"a"}, s)
        self.assertEqual((fit.evict, fit.wait, fit.fits, fit.used), ((), (), True, 8))

    def test_leavingModelsGoFirst(self) -> None:
        s = MemorySituation(needs={"a": 4, "b": 4, "c": 4}, budgets={"0": 8},
                            leaving=frozenset({"b"}), lastUsed={"a": 1, "b": 5})
        self.assertEqual(self.planner.fit("c", {"a", "b"}, s).evict, ("b",))

    def test_busyModelsAreWaitedFor(self) -> None:
        s = MemorySituation(needs={"a": 4, "b": 4, "c": 8}, budgets={"0": 8},
                            busy=frozenset({"a"}), lastUsed={"a": 1, "b": 5})
        fit = self.planner.fit("c", {"a", "b"}, s)
        self.assertEqual((fit.evict, fit.wait, fit.fits), (("b",), ("a",), True))

    def test_unknownNeedRunsAlone(self) -> None:
        s = MemorySituation(needs={"a": 1, "b": 1}, budgets={"0": 8}, lastUsed={"a": 1, "b": 2})
        fit = self.planner.fit("u", {"a", "b"}, s)
        self.assertEqual(fit.evict, ("a", "b"))

    def test_otherDevicesDoNotCount(self) -> None:
        s = MemorySituation(needs={"a": 8, "b": 8}, budgets={"0": 8, "1": 8},
                            devices={"a": "0", "b": "1"})
        self.assertEqual(self.planner.fit("b", {"a"}, s).stops, frozenset())

    def test_noBudgetNoLimit(self) -> None:
        s = MemorySituation(needs={"a": 8, "b": 8}, budgets={})
        fit = self.planner.fit("b", {"a"}, s)
        self.assertEqual((fit.stops, fit.fits, fit.budget), (frozenset(), True, None))

    def test_alsoEvicted(self) -> None:
        s = MemorySituation(needs={"a": 2, "b": 2, "c": 2}, budgets={"0": 8},
                            lastUsed={"a": 1, "b": 2}, also={"c": frozenset({"b"})})
        self.assertEqual(self.planner.fit("c", {"a", "b"}, s).evict, ("b",))
        self.assertEqual(self.planner.fit("c", {"a"}, s).evict, ())
        busy = attr.evolve(s, busy=frozenset({"b"}))
        self.assertEqual(self.planner.fit("c", {"a", "b"}, busy).wait, ("b",))

    def test_doesNotFitEvenAlone(self) -> None:
        s = MemorySituation(needs={"a": 2, "p": 2, "c": 9}, budgets={"0": 8},
                            pinned={"c": frozenset({"p"})})
        fit = self.planner.fit("c", {"a", "p"}, s)
        self.assertEqual((fit.evict, fit.fits), (("a",), False))

    def test_explain(self) -> None:
        s = MemorySituation(needs={"a": 4 * GiB, "b": 6 * GiB}, budgets={"0": 8 * GiB},
                            lastUsed={"a": 1})
        self.assertEqual(
            self.planner.explain("b", {"a"}, s),
            "memory: model=b need=6.0GiB budget=8.0GiB used=6.0GiB evict=[a] wait=[] fits=true")


def groups(*specs):
    return GroupsConfig({g.id: g for g in specs})


class SwapPlannerTests(SynchronousTestCase):
    """
    L{MemorySwapPlanner}: the configured strategy first, then memory.
    """

    def test_adapter(self) -> None:
        planner = ISwapPlanner(MemorySwap(NoEviction(), MemorySituation()))
        self.assertIsInstance(planner, MemorySwapPlanner)

    def test_groupsSwapStillApplies(self) -> None:
        """
        A C{swap: true} group still swaps its members even when memory
        would fit both; memory then evicts what else must go.
        """
        config = groups(GroupConfig("g", swap=True, exclusive=False, members=("a", "b")),
                        GroupConfig("h", swap=False, exclusive=False, members=("c",)))
        s = MemorySituation(needs={"a": 1, "b": 5, "c": 4}, budgets={"0": 8},
                            lastUsed={"a": 1, "c": 2})
        planner = ISwapPlanner(MemorySwap(GroupPlanner(config), s))
        self.assertEqual(planner.evictionFor("b", {"a", "c"}), {"a", "c"})
        s2 = MemorySituation(needs={"a": 1, "b": 4, "c": 4}, budgets={"0": 8})
        planner = ISwapPlanner(MemorySwap(GroupPlanner(config), s2))
        self.assertEqual(planner.evictionFor("b", {"a", "c"}), {"a"})
        self.assertIn("groups: model=b", planner.explain("b", {"a", "c"}))
        self.assertIn("memory: model=b", planner.explain("b", {"a", "c"}))

    def test_persistentGroupsPinned(self) -> None:
        """
        Members of persistent groups are never evicted for memory by a
        target of another group; a target of their own group may displace
        them.
        """
        config = groups(GroupConfig("p", swap=False, exclusive=False, persistent=True,
                                    members=("p1", "p2")),
                        GroupConfig("o", swap=False, exclusive=False, members=("o1", "o2")))

        class Cfg:
            swap = config
        pinned = pinnedFor(Cfg)
        s = MemorySituation(needs={"p1": 4, "p2": 4, "o1": 4, "o2": 4}, budgets={"0": 8},
                            lastUsed={"p1": 0, "o1": 5}, pinned=pinned)
        planner = ISwapPlanner(MemorySwap(GroupPlanner(config), s))
        self.assertEqual(planner.evictionFor("o2", {"p1", "o1"}), {"o1"})
        self.assertEqual(planner.evictionFor("p2", {"p1", "o1"}), {"p1"})

    def test_implicitDefaultGroupIsReplaced(self) -> None:
        class Implicit:
            swap = GroupsConfig({DEFAULT_GROUP: GroupConfig(DEFAULT_GROUP, members=("a",))})

        class Explicit:
            swap = groups(GroupConfig("g", members=("a",)))

        class Matrix:
            swap = MatrixConfig()
        base = object()
        self.assertIsInstance(basePlanner(Implicit, base), NoEviction)
        self.assertIs(basePlanner(Explicit, base), base)
        self.assertIs(basePlanner(Matrix, base), base)


class SchedulerTests(SynchronousTestCase):
    """
    The scheduler given a memory planner: busy models drain before anything
    of the swap is stopped, idle ones go least recently used first.
    """

    def plan(self, views, situation, target="c"):
        planner = ISwapPlanner(MemorySwap(NoEviction(), situation))
        return decide([Pending(1, target, 0.0)], views, planner, 1.0, 0)

    def test_idleLruEvictedThenStarted(self) -> None:
        views = {"a": ModelView("ready", idleSince=1.0), "b": ModelView("ready", idleSince=0.5),
                 "c": ModelView("stopped")}
        s = MemorySituation(needs={"a": 4, "b": 4, "c": 4}, budgets={"0": 8},
                            lastUsed={"a": 1.0, "b": 0.5})
        self.assertEqual(self.plan(views, s).decisions, (Stop("b", "c"),))
        views["b"] = ModelView("stopped")
        self.assertEqual(self.plan(views, s).decisions, (Start("c"),))

    def test_busyNeverStopped(self) -> None:
        views = {"a": ModelView("ready", inFlight=1, idleSince=0.0),
                 "b": ModelView("ready", idleSince=0.5), "c": ModelView("stopped")}
        s = MemorySituation(needs={"a": 4, "b": 4, "c": 8}, budgets={"0": 8},
                            busy=frozenset({"a"}), lastUsed={"a": 0.0, "b": 0.5})
        plan = self.plan(views, s)
        self.assertEqual(plan.decisions, ())
        self.assertEqual(plan.queued, (1,))
