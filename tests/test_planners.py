"""
Tests for L{llamaswap.router.planners}: the group and matrix swap planners.

Numbers in docstrings refer to the parity checklist of SPEC.md section 7.
"""

from __future__ import annotations

from textwrap import dedent
from typing import AbstractSet, Dict, FrozenSet, Iterable, List, Optional, Sequence, Set, Tuple

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.python import components
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from llamaswap.config import (
    DEFAULT_GROUP,
    Config,
    ConfigError,
    GroupsConfig,
    MatrixConfig,
    loadConfigText,
)
from llamaswap.interfaces import ISwapPlanner
from llamaswap.router.planners import GroupPlanner, MatrixPlanner, formatList


def load(text: str) -> Config:
    """
    Load dedented YAML.
    """
    return loadConfigText(dedent(text).lstrip("\n"), {})


def modelsYAML(names: Iterable[str]) -> str:
    """
    @return: a C{models:} block declaring C{names}.
    """
    return "models:\n" + "".join(f'  {name}: {{cmd: srv, proxy: "http://h"}}\n' for name in names)


def plannerFor(text: str):
    """
    @return: the L{ISwapPlanner} of the configuration C{text}.
    """
    return ISwapPlanner(load(text).swap)


def after(planner, target: str, running: AbstractSet[str]) -> FrozenSet[str]:
    """
    @return: the running set once C{target} has been loaded.
    """
    return (frozenset(running) - planner.evictionFor(target, running)) | {target}


def reachable(planner, universe: Sequence[str]) -> Set[FrozenSet[str]]:
    """
    @return: every running set that loads of models of C{universe}, in any
        order, can produce from nothing running.
    """
    seen: Set[FrozenSet[str]] = {frozenset()}
    todo: List[FrozenSet[str]] = [frozenset()]
    while todo:
        state = todo.pop()
        for target in universe:
            nxt = after(planner, target, state)
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def subsets(universe: Sequence[str]) -> List[FrozenSet[str]]:
    """
    @return: every subset of C{universe}.
    """
    return [
        frozenset(m for i, m in enumerate(universe) if mask & (1 << i))
        for mask in range(1 << len(universe))
    ]


# -- groups -----------------------------------------------------------------

GROUPS = modelsYAML(["a1", "a2", "b1", "b2", "c1", "c2", "p1", "q1", "q2", "d1", "d2"]) + dedent(
    """
    groups:
      swapper:    {members: [a1, a2]}
      together:   {swap: false, members: [b1, b2]}
      open:       {exclusive: false, members: [c1, c2]}
      pinned:     {persistent: true, members: [p1]}
      pinnedPair: {persistent: true, exclusive: false, members: [q1, q2]}
    """
)
"""
A group of each kind; d1 and d2 are in the implicit default group.
"""


class GroupPlannerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.config = loadConfigText(GROUPS, {})
        self.planner = ISwapPlanner(self.config.swap)

    def test_adapter(self) -> None:
        """
        C{ISwapPlanner(config.swap)} of a groups configuration is a
        L{GroupPlanner} that provides the interface.
        """
        self.assertIsInstance(self.config.swap, GroupsConfig)
        self.assertIsInstance(self.planner, GroupPlanner)
        self.assertTrue(verifyObject(ISwapPlanner, self.planner))
        self.assertIs(self.planner.config, self.config.swap)

    def test_rules(self) -> None:
        """
        SPEC.md section 2.5: same group and C{swap} -> evict; different
        group, target group exclusive, other group not persistent -> evict;
        otherwise keep.
        """
        table = [
            # target, running, evicted
            ("a1", {"a2"}, {"a2"}),  # same group, swap
            ("b1", {"b2"}, set()),  # same group, swap: false
            ("c1", {"c2"}, {"c2"}),  # same group, swap (non-exclusive)
            ("q1", {"q2"}, {"q2"}),  # persistent groups obey their own swap
            ("a1", {"b1", "b2"}, {"b1", "b2"}),  # exclusive target
            ("a1", {"c1"}, {"c1"}),  # exclusive target, non-exclusive other
            ("a1", {"d1"}, {"d1"}),  # the default group is not persistent
            ("a1", {"p1", "q1"}, set()),  # persistent others kept
            ("p1", {"a1", "q1"}, {"a1"}),  # a persistent group is exclusive too
            ("c1", {"a1", "b1", "d1"}, set()),  # non-exclusive target keeps others
            ("c1", {"a1", "c2"}, {"c2"}),
            ("q1", {"a1", "d1"}, set()),
            ("d1", {"d2", "a1", "p1", "c1"}, {"d2", "a1", "c1"}),
            ("b1", {"b2", "a1", "q1", "q2"}, {"a1"}),
        ]
        for target, running, evicted in table:
            self.assertEqual(
                self.planner.evictionFor(target, frozenset(running)),
                frozenset(evicted),
                (target, running),
            )

    def test_targetRunning(self) -> None:
        """
        66. The target itself is never evicted, whether or not its group
        swaps; C{running} may contain it.
        """
        for target in ("a1", "b1", "c1", "p1", "d1"):
            self.assertEqual(self.planner.evictionFor(target, {target}), frozenset())
        self.assertEqual(self.planner.evictionFor("a1", {"a1", "a2"}), frozenset({"a2"}))

    def test_nothingRunning(self) -> None:
        """
        67. With nothing running there is nothing to evict, and a request for
        a model that is already loading (counted in C{running}) evicts
        nothing either.
        """
        self.assertEqual(self.planner.evictionFor("a1", frozenset()), frozenset())
        self.assertEqual(self.planner.evictionFor("a1", {"a1"}), frozenset())

    def test_defaultGroupOneAtATime(self) -> None:
        """
        68. With no C{groups}, every model is in the implicit default group,
        and loading one stops every other.
        """
        planner = plannerFor(modelsYAML(["a", "b", "c"]))
        self.assertEqual(list(planner.config.groups), [DEFAULT_GROUP])
        self.assertEqual(planner.evictionFor("b", {"a"}), frozenset({"a"}))
        self.assertEqual(after(planner, "b", {"a"}), frozenset({"b"}))
        self.assertEqual(planner.evictionFor("c", {"a", "b"}), frozenset({"a", "b"}))
        self.assertFalse(planner.allowed({"a", "b"}))
        self.assertTrue(planner.allowed({"c"}))

    def test_swapFalse(self) -> None:
        """
        69. Members of a C{swap: false} group run together.
        """
        planner = plannerFor(
            modelsYAML(["a", "b"]) + "groups:\n  g: {swap: false, members: [a, b]}\n"
        )
        self.assertEqual(planner.evictionFor("b", {"a"}), frozenset())
        self.assertTrue(planner.allowed({"a", "b"}))

    def test_exclusiveGroups(self) -> None:
        """
        70. Loading b of exclusive group g2 stops a of exclusive group g1.
        """
        planner = plannerFor(
            modelsYAML(["a", "b"]) + "groups:\n  g1: {members: [a]}\n  g2: {members: [b]}\n"
        )
        self.assertEqual(planner.evictionFor("b", {"a"}), frozenset({"a"}))
        self.assertFalse(planner.allowed({"a", "b"}))

    def test_nonExclusiveLeavesOthers(self) -> None:
        """
        71. Loading b of a non-exclusive group leaves a of an exclusive group
        running; loading a the other way round stops b.
        """
        planner = plannerFor(
            modelsYAML(["a", "b"])
            + "groups:\n  g1: {members: [a]}\n  g2: {exclusive: false, members: [b]}\n"
        )
        self.assertEqual(planner.evictionFor("b", {"a"}), frozenset())
        self.assertEqual(planner.evictionFor("a", {"b"}), frozenset({"b"}))
        self.assertTrue(planner.allowed({"a", "b"}))

    def test_persistentKept(self) -> None:
        """
        72. Loading b of exclusive group C{other} leaves a of persistent group
        C{persist} running.
        """
        planner = plannerFor(
            modelsYAML(["a", "b"])
            + "groups:\n  persist: {persistent: true, members: [a]}\n  other: {members: [b]}\n"
        )
        self.assertEqual(planner.evictionFor("b", {"a"}), frozenset())
        self.assertTrue(planner.allowed({"a", "b"}))

    def test_configuredDefaultGroup(self) -> None:
        """
        An explicit C{(default)} group sets the flags of the implicit one,
        which also holds the ungrouped models.
        """
        planner = plannerFor(
            modelsYAML(["a", "b", "c"])
            + 'groups:\n  "(default)": {swap: false, members: [a]}\n  g: {members: [c]}\n'
        )
        self.assertEqual(planner.evictionFor("b", {"a"}), frozenset())
        self.assertEqual(planner.evictionFor("c", {"a", "b"}), frozenset({"a", "b"}))

    def test_unknownTarget(self) -> None:
        """
        A target that is not a configured model is a programming error.
        """
        self.assertRaises(KeyError, self.planner.evictionFor, "nope", {"a1"})
        self.assertRaises(KeyError, self.planner.explain, "nope", {"a1"})

    def test_unknownRunning(self) -> None:
        """
        A running id the configuration does not know is treated like a member
        of a non-persistent group of its own, as the reference does: an
        exclusive target stops it, a non-exclusive one keeps it.
        """
        self.assertEqual(self.planner.evictionFor("a1", {"ghost"}), frozenset({"ghost"}))
        self.assertEqual(self.planner.evictionFor("c1", {"ghost"}), frozenset())
        self.assertTrue(self.planner.allowed({"ghost", "a1"}))

    def test_allowed(self) -> None:
        """
        C{allowed}: at most one running member per C{swap} group, and the
        running members of exclusive non-persistent groups all in one group.
        """
        table = [
            (set(), True),
            ({"a1"}, True),
            ({"a1", "a2"}, False),
            ({"b1", "b2"}, True),
            ({"c1", "c2"}, False),
            ({"q1", "q2"}, False),
            ({"a1", "b1"}, False),
            ({"a1", "d1"}, False),
            ({"a1", "c1"}, True),
            ({"a1", "p1"}, True),
            ({"a1", "p1", "q1", "c1"}, True),
            ({"b1", "b2", "p1", "c2"}, True),
            ({"b1", "b2", "d1"}, False),
        ]
        for running, expected in table:
            self.assertEqual(self.planner.allowed(frozenset(running)), expected, running)

    def test_allowedIsReachable(self) -> None:
        """
        The sets C{allowed} accepts are exactly those that loads can reach
        from nothing running.
        """
        models = sorted(self.config.models)
        states = reachable(self.planner, models)
        self.assertEqual({s for s in subsets(models) if self.planner.allowed(s)}, states)

    def test_explain(self) -> None:
        """
        C{explain} names the target, its group, what is stopped and what is
        kept.
        """
        self.assertEqual(
            self.planner.explain("a1", {"a2", "p1"}),
            "groups: model=a1 group=swapper evict=[a2] keep=[p1]",
        )
        self.assertEqual(
            self.planner.explain("d1", {"b2", "b1"}),
            "groups: model=d1 group=(default) evict=[b1 b2] keep=[]",
        )
        self.assertEqual(
            self.planner.explain("c1", frozenset()),
            "groups: model=c1 group=open starting (no models running)",
        )
        self.assertEqual(
            self.planner.explain("c1", {"c1"}),
            "groups: model=c1 group=open evict=[] keep=[]",
        )


# -- matrix -----------------------------------------------------------------

SPEC_MODELS = ["gemma", "qwen", "mistral", "voxtral", "rerank", "llama70", "sdxl"]
SPEC_MATRIX = modelsYAML(SPEC_MODELS) + dedent(
    """
    matrix:
      vars:        { g: gemma, q: qwen, m: mistral, v: voxtral, e: rerank, L: llama70, sd: sdxl }
      evict_costs: { v: 50, L: 30 }
      sets:
        standard:    "(g | q | m) & v"
        with_rerank: "(g | q) & v & e"
        creative:    "(g | q) & sd"
        full:        "L"
    """
)


class MatrixPlannerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.config = loadConfigText(SPEC_MATRIX, {})
        self.planner = ISwapPlanner(self.config.swap)

    def test_adapter(self) -> None:
        """
        C{ISwapPlanner(config.swap)} of a matrix configuration is a
        L{MatrixPlanner} that provides the interface.
        """
        self.assertIsInstance(self.config.swap, MatrixConfig)
        self.assertIsInstance(self.planner, MatrixPlanner)
        self.assertTrue(verifyObject(ISwapPlanner, self.planner))
        self.assertIs(self.planner.config, self.config.swap)

    def assertDecision(
        self,
        running: Iterable[str],
        target: str,
        setName: Optional[str],
        setModels: Optional[Iterable[str]],
        evict: Iterable[str],
        cost: int,
        planner: Optional[MatrixPlanner] = None,
    ) -> None:
        planner = planner or self.planner
        decision = planner.decide(target, frozenset(running))
        if setName is None:
            self.assertIsNone(decision.chosen)
        else:
            assert decision.chosen is not None
            self.assertEqual(decision.chosen.name, setName)
            self.assertEqual(decision.chosen.models, frozenset(setModels or ()))
        self.assertEqual(decision.evict, frozenset(evict))
        self.assertEqual(decision.cost, cost)
        self.assertEqual(planner.evictionFor(target, frozenset(running)), frozenset(evict))

    def test_workedExamples(self) -> None:
        """
        Every row of the worked-examples table of SPEC.md section 2.6.
        """
        # - | g -> standard [g,v]; start g only
        self.assertDecision([], "gemma", "standard", ["gemma", "voxtral"], [], 0)
        # g | v -> [g,v]=0: keep g, start v
        self.assertDecision(["gemma"], "voxtral", "standard", ["gemma", "voxtral"], [], 0)
        # g, v | sd -> [g,sd]=50, [q,sd]=51: evict v
        self.assertDecision(
            ["gemma", "voxtral"], "sdxl", "creative", ["gemma", "sdxl"], ["voxtral"], 50
        )
        # g, v | q -> [q,v]=1, [q,e,v]=1, [q,sd]=51: tie -> standard, evict g
        self.assertDecision(
            ["gemma", "voxtral"], "qwen", "standard", ["qwen", "voxtral"], ["gemma"], 1
        )
        # g, v | L -> [L]=51: evict g, v
        self.assertDecision(
            ["gemma", "voxtral"], "llama70", "full", ["llama70"], ["gemma", "voxtral"], 51
        )

    def test_expandedOrder(self) -> None:
        """
        The planner searches the expanded sets in the SPEC's order.
        """
        self.assertEqual(
            [(e.name, e.varIds) for e in self.config.swap.expanded],
            [
                ("standard", ("g", "v")),
                ("standard", ("q", "v")),
                ("standard", ("m", "v")),
                ("with_rerank", ("e", "g", "v")),
                ("with_rerank", ("e", "q", "v")),
                ("creative", ("g", "sd")),
                ("creative", ("q", "sd")),
                ("full", ("L",)),
            ],
        )

    def test_workedExampleCosts(self) -> None:
        """
        The cost column of the table: each candidate's cost is the sum of the
        evict costs of the running models outside it.
        """
        planner = self.planner
        running = frozenset({"gemma", "voxtral"})
        costs = {
            (e.name, e.varIds): sum(self.config.swap.evictCost(m) for m in running - e.models)
            for e in self.config.swap.expanded
        }
        self.assertEqual(costs[("creative", ("g", "sd"))], 50)
        self.assertEqual(costs[("creative", ("q", "sd"))], 51)
        self.assertEqual(costs[("standard", ("q", "v"))], 1)
        self.assertEqual(costs[("with_rerank", ("e", "q", "v"))], 1)
        self.assertEqual(costs[("full", ("L",))], 51)
        self.assertEqual(planner.decide("sdxl", running).cost, 50)

    def test_startsOnlyTarget(self) -> None:
        """
        Nothing of the chosen set but the target is preloaded: the running
        set afterwards is the kept models plus the target.
        """
        self.assertEqual(after(self.planner, "gemma", frozenset()), frozenset({"gemma"}))
        self.assertEqual(
            after(self.planner, "rerank", {"gemma", "voxtral"}),
            frozenset({"gemma", "voxtral", "rerank"}),
        )

    def test_firstSetWins(self) -> None:
        """
        79. Sets C{first: a & b}, C{second: a & c}; nothing running; a request
        for a chooses C{first}.
        """
        planner = plannerFor(
            modelsYAML(["a", "b", "c"])
            + 'matrix:\n  vars: {a: a, b: b, c: c}\n'
            + '  sets:\n    first: "a & b"\n    second: "a & c"\n'
        )
        self.assertDecision([], "a", "first", ["a", "b"], [], 0, planner)

    def test_cheapestEviction(self) -> None:
        """
        80. Sets C{a_with_c}, C{a_with_b}, costs b=10 c=1, running b and c: a
        request for a evicts only c.
        """
        planner = plannerFor(
            modelsYAML(["a", "b", "c"])
            + dedent(
                """
                matrix:
                  vars: {a: a, b: b, c: c}
                  evict_costs: {b: 10, c: 1}
                  sets:
                    a_with_c: "a & c"
                    a_with_b: "a & b"
                """
            )
        )
        self.assertDecision(["b", "c"], "a", "a_with_b", ["a", "b"], ["c"], 1, planner)

    def test_modelInNoSet(self) -> None:
        """
        81. A model in no set runs alone: everything running is stopped.
        Both a model no var names and one whose var no set uses are in no
        set.
        """
        planner = plannerFor(
            modelsYAML(["x", "y", "z", "w"])
            + "matrix:\n  vars: {x: x, y: y, w: w}\n  evict_costs: {y: 4}\n"
            + '  sets:\n    s: "x & y"\n'
        )
        self.assertDecision(["x"], "z", None, None, ["x"], 1, planner)
        self.assertDecision(["x", "y"], "w", None, None, ["x", "y"], 5, planner)
        self.assertDecision([], "z", None, None, [], 0, planner)
        # and loading a set member stops the lone model
        self.assertDecision(["z"], "x", "s", ["x", "y"], ["z"], 1, planner)
        self.assertTrue(planner.allowed({"z"}))
        self.assertFalse(planner.allowed({"z", "x"}))

    def test_alreadyRunning(self) -> None:
        """
        82. A target already running evicts nothing, even beside models no
        set puts with it.
        """
        self.assertDecision(["gemma"], "gemma", None, None, [], 0)
        self.assertDecision(["gemma", "llama70"], "gemma", None, None, [], 0)

    def test_tieBreakReferencedFirst(self) -> None:
        """
        Ties go to the earliest expanded set, and a referenced set's
        combinations come before those of the set that references it, even
        when it is defined later.
        """
        planner = plannerFor(
            modelsYAML(["a", "b", "c"])
            + 'matrix:\n  vars: {a: a, b: b, c: c}\n'
            + '  sets:\n    outer: "a & c | +inner"\n    inner: "a & b"\n'
        )
        self.assertEqual(
            [(e.name, e.varIds) for e in planner.config.expanded],
            [("inner", ("a", "b")), ("outer", ("a", "c")), ("outer", ("a", "b"))],
        )
        self.assertDecision([], "a", "inner", ["a", "b"], [], 0, planner)
        self.assertDecision(["b"], "a", "inner", ["a", "b"], [], 0, planner)
        self.assertDecision(["c"], "a", "outer", ["a", "c"], [], 0, planner)
        # b and c cost the same: the earliest set, inner, keeps b
        self.assertDecision(["b", "c"], "a", "inner", ["a", "b"], ["c"], 1, planner)

    def test_modelNamedBySeveralVars(self) -> None:
        """
        A model named by several vars costs the highest of their evict costs
        and is one model in every set.
        """
        planner = plannerFor(
            modelsYAML(["a", "c", "d"])
            + dedent(
                """
                matrix:
                  vars: {x: a, y: a, c: c, d: d}
                  evict_costs: {x: 5, y: 7, d: 6}
                  sets:
                    keepD: "c & d"
                    keepA: "c & x"
                    twice: "x & y"
                """
            )
        )
        # evicting a costs 7 (not 5): keeping a and evicting d (6) is cheaper
        self.assertDecision(["a", "d"], "c", "keepA", ["a", "c"], ["d"], 6, planner)
        self.assertDecision([], "a", "keepA", ["a", "c"], [], 0, planner)
        self.assertEqual(planner.config.expanded[2].models, frozenset({"a"}))
        self.assertTrue(planner.allowed({"a", "c"}))
        self.assertFalse(planner.allowed({"a", "c", "d"}))

    def test_unknownRunningCostsOne(self) -> None:
        """
        A running id the matrix does not name is in no set and costs 1.
        """
        self.assertDecision(
            ["ghost", "gemma"], "voxtral", "standard", ["gemma", "voxtral"], ["ghost"], 1
        )

    def test_allowed(self) -> None:
        """
        C{allowed}: empty, a single model, or a subset of some expanded set.
        """
        table = [
            (set(), True),
            ({"llama70"}, True),
            ({"gemma", "voxtral"}, True),
            ({"gemma", "voxtral", "rerank"}, True),
            ({"gemma", "rerank"}, True),
            ({"gemma", "qwen"}, False),
            ({"llama70", "voxtral"}, False),
            ({"sdxl", "voxtral"}, False),
        ]
        for running, expected in table:
            self.assertEqual(self.planner.allowed(frozenset(running)), expected, running)

    def test_allowedIsReachable(self) -> None:
        """
        The sets C{allowed} accepts are exactly those that loads can reach
        from nothing running.
        """
        models = sorted(self.config.models)
        states = reachable(self.planner, models)
        self.assertEqual({s for s in subsets(models) if self.planner.allowed(s)}, states)

    def test_explain(self) -> None:
        """
        C{explain} gives the reference's INFO lines, and readable lines for
        the other cases.
        """
        planner = self.planner
        self.assertEqual(
            planner.explain("sdxl", {"gemma", "voxtral"}),
            'matrix: model=sdxl set=creative dsl="(g | q) & sd" evict=[voxtral] '
            "target=[gemma sdxl] cost=50",
        )
        self.assertEqual(
            planner.explain("llama70", {"gemma", "voxtral"}),
            'matrix: model=llama70 set=full dsl="L" evict=[gemma voxtral] target=[llama70] cost=51',
        )
        self.assertEqual(
            planner.explain("gemma", frozenset()),
            "matrix: model=gemma starting (no models running)",
        )
        self.assertEqual(planner.explain("gemma", {"gemma"}), "matrix: model=gemma already running")
        self.assertEqual(
            planner.explain("voxtral", {"gemma"}),
            'matrix: model=voxtral already running in set=standard dsl="(g | q | m) & v"',
        )
        self.assertEqual(
            planner.explain("outside", {"gemma", "voxtral"}),
            'matrix: model=outside set=(none) dsl="" evict=[gemma voxtral] '
            "target=[outside] cost=51",
        )

    def test_formatList(self) -> None:
        """
        Lists are logged as Go's C{%v} prints a C{[]string}, sorted.
        """
        self.assertEqual(formatList([]), "[]")
        self.assertEqual(formatList(["b", "a"]), "[a b]")


class RegistrationTests(SynchronousTestCase):
    def test_registeredOnce(self) -> None:
        """
        Importing L{llamaswap.router} registers each planner once, for its
        configuration class; registering again is refused.
        """
        import llamaswap.router  # noqa: F401

        self.assertIs(components.getAdapterFactory(GroupsConfig, ISwapPlanner, None), GroupPlanner)
        self.assertIs(components.getAdapterFactory(MatrixConfig, ISwapPlanner, None), MatrixPlanner)
        self.assertRaises(
            ValueError, components.registerAdapter, GroupPlanner, GroupsConfig, ISwapPlanner
        )


# -- properties -------------------------------------------------------------


@st.composite
def groupsYAML(draw) -> str:
    """
    A configuration of 1-6 models, 0-3 groups with random flags, some
    models left to the default group (whose flags are sometimes set too).
    """
    models = [f"m{i}" for i in range(draw(st.integers(1, 6)))]
    names = [f"g{i}" for i in range(draw(st.integers(0, 3)))]
    if names and draw(st.booleans()):
        names[0] = DEFAULT_GROUP
    members: Dict[str, List[str]] = {name: [] for name in names}
    for model in models:
        choice = draw(st.sampled_from([None, *names]))
        if choice is not None:
            members[choice].append(model)
    lines = [modelsYAML(models), "groups:\n" if names else ""]
    for name in names:
        swap, exclusive, persistent = draw(st.tuples(st.booleans(), st.booleans(), st.booleans()))
        lines.append(
            f'  "{name}": {{swap: {str(swap).lower()}, exclusive: {str(exclusive).lower()}, '
            f"persistent: {str(persistent).lower()}, members: [{', '.join(members[name])}]}}\n"
        )
    return "".join(lines)


def dslTexts(varIds: Sequence[str], refs: Sequence[str]):
    """
    @return: a strategy for DSL texts over C{varIds} and C{+ref}s.
    """
    leaf = st.sampled_from(list(varIds))
    if refs:
        leaf = leaf | st.sampled_from([f"+{r}" for r in refs])
    return st.recursive(
        leaf,
        lambda inner: st.tuples(inner, st.sampled_from(["&", "|"]), inner).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        max_leaves=4,
    )


@st.composite
def matrixYAML(draw) -> str:
    """
    A matrix of 1-6 models, 1-6 vars (several may name one model, some
    models are named by none), random evict costs, and 1-4 sets, each a
    random DSL that may inline earlier sets.
    """
    models = [f"m{i}" for i in range(draw(st.integers(1, 6)))]
    varIds = [f"v{i}" for i in range(draw(st.integers(1, 6)))]
    variables = {v: draw(st.sampled_from(models)) for v in varIds}
    costs = {}
    for v in varIds:
        cost = draw(st.one_of(st.none(), st.integers(1, 60)))
        if cost is not None:
            costs[v] = cost
    sets: List[Tuple[str, str]] = []
    for i in range(draw(st.integers(1, 4))):
        sets.append((f"s{i}", draw(dslTexts(varIds, [name for name, _ in sets]))))
    lines = [
        modelsYAML(models),
        "matrix:\n",
        "  vars: {" + ", ".join(f"{k}: {m}" for k, m in variables.items()) + "}\n",
        "  evict_costs: {" + ", ".join(f"{k}: {c}" for k, c in costs.items()) + "}\n",
        "  sets:\n",
    ]
    lines.extend(f'    {name}: "{dsl}"\n' for name, dsl in sets)
    return "".join(lines)


def loadOrReject(text: str) -> Config:
    """
    Load generated YAML; reject the example when the matrix expands past
    the reference's limits.
    """
    try:
        return loadConfigText(text, {})
    except ConfigError as e:
        assume("exceed" not in e.message)
        raise


@st.composite
def scenarios(draw, configs):
    """
    A configuration, its planner, a running set it allows, and a target.

    The running set is either the result of a random sequence of loads from
    nothing running, or a random subset of the models that C{allowed}
    accepts.
    """
    text = draw(configs)
    config = loadOrReject(text)
    planner = ISwapPlanner(config.swap)
    models = sorted(config.models)
    if draw(st.booleans()):
        running: FrozenSet[str] = frozenset()
        for target in draw(st.lists(st.sampled_from(models), max_size=8)):
            running = after(planner, target, running)
    else:
        running = frozenset(draw(st.sets(st.sampled_from(models))))
        assume(planner.allowed(running))
    return text, config, planner, running, draw(st.sampled_from(models))


def groupsOracle(config: Config, target: str, running: AbstractSet[str]) -> FrozenSet[str]:
    """
    SPEC.md section 2.5's rule, written out directly.
    """
    groups = config.swap
    tg = groups.groupOf(target)
    evict = set()
    for m in running:
        if m == target:
            continue
        og = groups.groupOf(m)
        if og.id == tg.id and tg.swap:
            evict.add(m)
        elif og.id != tg.id and tg.exclusive and not og.persistent:
            evict.add(m)
    return frozenset(evict)


def matrixOracle(
    config: Config, target: str, running: AbstractSet[str]
) -> Tuple[Optional[int], FrozenSet[str]]:
    """
    SPEC.md section 2.6's solver, written out directly.

    @return: the index of the chosen expanded set (or L{None}) and the
        evicted models.
    """
    matrix = config.swap
    running = frozenset(running)
    if target in running:
        return None, frozenset()
    candidates = [
        (sum(matrix.evictCost(m) for m in running - e.models), i)
        for i, e in enumerate(matrix.expanded)
        if target in e.models
    ]
    if not candidates:
        return None, running
    _, index = min(candidates)
    return index, running - matrix.expanded[index].models


class PlannerPropertyTests(SynchronousTestCase):
    def checkCommon(
        self, text: str, planner, running: FrozenSet[str], target: str
    ) -> FrozenSet[str]:
        """
        The properties every planner has; returns the running set after.
        """
        self.assertTrue(planner.allowed(running))
        evict = planner.evictionFor(target, running)
        self.assertIsInstance(evict, frozenset)
        self.assertNotIn(target, evict)
        self.assertTrue(evict <= running)
        result = after(planner, target, running)
        self.assertIn(target, result)
        self.assertTrue(planner.allowed(result), (target, running, evict))
        # deterministic: again, from a set, reversed, and from a fresh load
        self.assertEqual(planner.evictionFor(target, running), evict)
        self.assertEqual(planner.evictionFor(target, set(sorted(running, reverse=True))), evict)
        fresh = ISwapPlanner(loadConfigText(text, {}).swap)
        self.assertEqual(fresh.evictionFor(target, running), evict)
        self.assertIsInstance(planner.explain(target, running), str)
        return result

    @settings(max_examples=150, deadline=None)
    @given(scenarios(groupsYAML()))
    def test_groupsProperties(self, scenario) -> None:
        """
        Groups: the common properties; the decision is SPEC.md section 2.5's
        rule; a persistent group's model is never evicted by another group's
        load; loading from an exclusive group leaves no model of another
        non-persistent group running.
        """
        text, config, planner, running, target = scenario
        result = self.checkCommon(text, planner, running, target)
        evict = planner.evictionFor(target, running)
        self.assertEqual(evict, groupsOracle(config, target, running))
        tg = config.swap.groupOf(target)
        for m in evict:
            og = config.swap.groupOf(m)
            self.assertFalse(og.persistent and og.id != tg.id, m)
        if tg.exclusive:
            for m in result:
                og = config.swap.groupOf(m)
                self.assertTrue(og.id == tg.id or og.persistent, m)

    @settings(max_examples=150, deadline=None)
    @given(scenarios(matrixYAML()))
    def test_matrixProperties(self, scenario) -> None:
        """
        Matrix: the common properties, and the decision is SPEC.md section
        2.6's solver (cheapest set, earliest on ties).
        """
        text, config, planner, running, target = scenario
        self.checkCommon(text, planner, running, target)
        index, evict = matrixOracle(config, target, running)
        decision = planner.decide(target, running)
        self.assertEqual(decision.evict, evict)
        self.assertEqual(decision.cost, sum(config.swap.evictCost(m) for m in evict))
        if index is None:
            self.assertIsNone(decision.chosen)
        else:
            self.assertIs(decision.chosen, config.swap.expanded[index])

    @settings(max_examples=40, deadline=None)
    @given(groupsYAML())
    def test_groupsAllowedIsReachable(self, text: str) -> None:
        """
        Groups: C{allowed} accepts exactly the running sets that loads reach
        from nothing running.
        """
        config = loadConfigText(text, {})
        planner = ISwapPlanner(config.swap)
        models = sorted(config.models)
        allowed = {s for s in subsets(models) if planner.allowed(s)}
        self.assertEqual(allowed, reachable(planner, models))

    @settings(max_examples=40, deadline=None)
    @given(matrixYAML())
    def test_matrixAllowedIsReachable(self, text: str) -> None:
        """
        Matrix: C{allowed} accepts exactly the running sets that loads reach
        from nothing running.
        """
        config = loadOrReject(text)
        planner = ISwapPlanner(config.swap)
        models = sorted(config.models)
        allowed = {s for s in subsets(models) if planner.allowed(s)}
        self.assertEqual(allowed, reachable(planner, models))
