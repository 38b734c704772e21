# -*- test-case-name: tests.test_planners -*-
"""
Swap planners: which running models must stop before a target may run.

Three strategies, each an adapter from a frozen swap configuration to
L{ISwapPlanner}:

    - L{GroupPlanner} for a L{GroupsConfig} (SPEC.md section 2.5);
    - L{MatrixPlanner} for a L{MatrixConfig} (SPEC.md section 2.6);
    - L{llamaswap.memory.planner.MemorySwapPlanner} for a
      L{llamaswap.memory.planner.MemorySwap} (one of the two above, refined
      by what fits in GPU memory; the router builds one per plan).

Callers never name a planner class: they write C{ISwapPlanner(config.swap)}.
The adapters are registered at the bottom of this module, the only
C{registerAdapter} site of the codebase; C{llamaswap.router} imports this
module so that the registration happens exactly once.

Everything here is pure: no reactor, no I/O, no state that changes after
construction.  Besides L{ISwapPlanner.evictionFor} each planner offers
C{explain} (the log line of a decision) and C{allowed} (whether a set of
co-running models is one the configuration permits).  The planners keep the
invariant that, for every C{running} set that is C{allowed} and every known
C{target}, C{(running - evictionFor(target, running)) | {target}} is
C{allowed} again.
"""

from __future__ import annotations

import json
from typing import AbstractSet, Dict, FrozenSet, Iterable, List, Optional, Tuple

import attr
from twisted.python.components import registerAdapter
from zope.interface import implementer

from llamaswap.config.model import (
    ExpandedSet,
    GroupConfig,
    GroupsConfig,
    MatrixConfig,
)
from llamaswap.interfaces import ISwapPlanner
from llamaswap.memory.planner import MemorySwap, MemorySwapPlanner

__all__ = ["GroupPlanner", "MatrixPlanner", "MatrixDecision", "formatList"]


def formatList(modelIds: Iterable[str]) -> str:
    """
    Format model ids the way the reference's logs do (Go's C{%v} of a
    C{[]string}): sorted, space separated, in brackets.

    @return: for example C{"[gemma voxtral]"}, or C{"[]"}.
    """
    return "[" + " ".join(sorted(modelIds)) + "]"


def _quote(text: str) -> str:
    """
    @return: C{text} double-quoted with escapes, close to Go's C{%q}.
    """
    return json.dumps(text, ensure_ascii=False)


_UNKNOWN_GROUP = GroupConfig(id="", swap=False, exclusive=False, persistent=False)
"""
What L{GroupPlanner} assumes of a running model the configuration does not
know: a group of no consequence (the reference's zero value), never the
target's group, never persistent, never exclusive.
"""


@implementer(ISwapPlanner)
class GroupPlanner:
    """
    The legacy group strategy (SPEC.md section 2.5).

    Loading a target C{T} of group C{GT} stops every other running model C{M}
    of group C{GM} when:

        - C{GM} is C{GT} and C{GT.swap}; or
        - C{GM} is not C{GT}, C{GT.exclusive}, and C{GM} is not
          C{persistent}.

    Every other running model is kept.  The rule is deliberately asymmetric
    (kept for backward compatibility with the reference): loading from a
    I{non-exclusive} group never stops other groups, even exclusive ones.

    @ivar config: the adapted L{GroupsConfig}.
    """

    def __init__(self, config: GroupsConfig) -> None:
        self.config = config
        self._groupOfModel: Dict[str, GroupConfig] = {
            member: group for group in config.groups.values() for member in group.members
        }

    def _group(self, modelId: str) -> GroupConfig:
        return self._groupOfModel.get(modelId, _UNKNOWN_GROUP)

    def _targetGroup(self, target: str) -> GroupConfig:
        try:
            return self._groupOfModel[target]
        except KeyError:
            raise KeyError(f"model {target!r} is in no group of this configuration") from None

    def _evicts(self, targetGroup: GroupConfig, other: GroupConfig) -> bool:
        if other is targetGroup:
            return targetGroup.swap
        return targetGroup.exclusive and not other.persistent

    def evictionFor(self, target: str, running: AbstractSet[str]) -> FrozenSet[str]:
        """
        @param target: a configured model id.
        @param running: the model ids that are live or targets of other
            swaps in progress; may contain C{target}.  Ids the configuration
            does not know are treated as members of a non-persistent group
            of their own (the reference does the same).

        @return: the models of C{running} that must stop before C{target}
            may run; never C{target}.
        @raise KeyError: when C{target} is not a configured model.
        """
        targetGroup = self._targetGroup(target)
        return frozenset(
            modelId
            for modelId in running
            if modelId != target and self._evicts(targetGroup, self._group(modelId))
        )

    def explain(self, target: str, running: AbstractSet[str]) -> str:
        """
        @return: the log line for the decision L{evictionFor} makes, for
            example C{groups: model=b group=g2 evict=[a] keep=[]}, or
            C{groups: model=a group=g1 starting (no models running)}.
        @raise KeyError: when C{target} is not a configured model.
        """
        group = self._targetGroup(target)
        others = frozenset(running) - {target}
        if not others and target not in running:
            return f"groups: model={target} group={group.id} starting (no models running)"
        evict = self.evictionFor(target, running)
        return (
            f"groups: model={target} group={group.id} "
            f"evict={formatList(evict)} keep={formatList(others - evict)}"
        )

    def allowed(self, running: AbstractSet[str]) -> bool:
        """
        Whether the models of C{running} may run together.

        Two distinct running models C{A} (group C{GA}) and C{B} (group
        C{GB}) conflict when:

            - C{GA} is C{GB} and that group has C{swap: true}; or
            - C{GA} is not C{GB}, and both groups are C{exclusive} and not
              C{persistent}.

        C{running} is allowed when no two of its models conflict; that is,
        every C{swap} group has at most one running member, and all the
        running members of exclusive, non-persistent groups belong to one
        group.

        These are exactly the running sets that loads, planned by
        L{evictionFor}, can reach from nothing running.  Two models of
        different groups stay together only if the one loaded second is
        from a non-exclusive group or the one loaded first is from a
        persistent group, so two exclusive non-persistent groups never run
        together (whichever loads second stops the other), while any other
        pair can, given a suitable order of loads.  The definition is
        symmetric although the eviction rule is not: loading an exclusive
        model stops a running non-exclusive one, but loading them the other
        way round keeps both (SPEC.md section 2.5's backward-compatible
        asymmetry).

        Ids the configuration does not know never conflict (see
        L{evictionFor}).
        """
        groups = [self._group(modelId) for modelId in set(running)]
        seenSwap: List[GroupConfig] = []
        soleExclusive: Optional[GroupConfig] = None
        for group in groups:
            if group.swap:
                if any(group is seen for seen in seenSwap):
                    return False
                seenSwap.append(group)
            if group.exclusive and not group.persistent:
                if soleExclusive is None:
                    soleExclusive = group
                elif soleExclusive is not group:
                    return False
        return True


@attr.s(frozen=True, auto_attribs=True)
class MatrixDecision:
    """
    What the matrix solver decided for one request.

    @ivar target: the requested model id.
    @ivar running: the running set it was decided for.
    @ivar chosen: the expanded set chosen, or L{None} when C{target} is
        already running or is in no set.
    @ivar evict: the models to stop.
    @ivar cost: the sum of the evict costs of C{evict}.
    """

    target: str
    running: FrozenSet[str]
    chosen: Optional[ExpandedSet]
    evict: FrozenSet[str]
    cost: int


@implementer(ISwapPlanner)
class MatrixPlanner:
    """
    The solver strategy (SPEC.md section 2.6).

    For target C{X} and running set C{R}:

        - C{X} in C{R}: evict nothing;
        - C{X} in no expanded set: evict all of C{R} (it runs alone);
        - otherwise, of the expanded sets C{S} that contain C{X}, choose the
          one of least cost C{sum(evictCost(m) for m in R - S)}, ties going
          to the earliest in expanded order, and evict C{R - S}.

    Only C{X} is started; the rest of the chosen set is not preloaded.
    A running model the matrix does not name is in no set and costs 1.

    @ivar config: the adapted L{MatrixConfig}.
    """

    def __init__(self, config: MatrixConfig) -> None:
        self.config = config
        containing: Dict[str, List[ExpandedSet]] = {}
        for expanded in config.expanded:
            for modelId in expanded.models:
                containing.setdefault(modelId, []).append(expanded)
        self._containing: Dict[str, Tuple[ExpandedSet, ...]] = {
            modelId: tuple(sets) for modelId, sets in containing.items()
        }

    def _cost(self, modelIds: Iterable[str]) -> int:
        return sum(self.config.evictCost(modelId) for modelId in modelIds)

    def decide(self, target: str, running: AbstractSet[str]) -> MatrixDecision:
        """
        Run the solver.

        @param target: the requested model id.
        @param running: the model ids that are live or targets of other
            swaps in progress; may contain C{target}.

        @return: the L{MatrixDecision}.
        """
        running = frozenset(running)
        if target in running:
            return MatrixDecision(target, running, None, frozenset(), 0)
        candidates = self._containing.get(target, ())
        if not candidates:
            return MatrixDecision(target, running, None, running, self._cost(running))
        best: Optional[ExpandedSet] = None
        bestCost = 0
        for expanded in candidates:
            cost = self._cost(running - expanded.models)
            if best is None or cost < bestCost:
                best, bestCost = expanded, cost
                if cost == 0:
                    break
        assert best is not None
        return MatrixDecision(target, running, best, running - best.models, bestCost)

    def evictionFor(self, target: str, running: AbstractSet[str]) -> FrozenSet[str]:
        """
        @param target: the requested model id.
        @param running: the model ids that are live or targets of other
            swaps in progress; may contain C{target}.

        @return: the models of C{running} that must stop before C{target}
            may run; never C{target}.
        """
        return self.decide(target, running).evict

    def explain(self, target: str, running: AbstractSet[str]) -> str:
        """
        @return: the log line of the decision.  The reference logs two of
            these at INFO::

                matrix: model=X set=NAME dsl="..." evict=[...] target=[...] cost=N
                matrix: model=X starting (no models running)

            (the first when something is evicted; C{target} lists the models
            of the chosen set).  The other cases, which the reference logs
            at DEBUG, read::

                matrix: model=X already running
                matrix: model=X already running in set=NAME dsl="..."
                matrix: model=X set=(none) dsl="" evict=[...] target=[X] cost=N

            the second when X joins running models without evicting any,
            the third when X is in no set and others must stop.
        """
        decision = self.decide(target, running)
        if target in decision.running:
            return f"matrix: model={target} already running"
        if not decision.running:
            return f"matrix: model={target} starting (no models running)"
        chosen = decision.chosen
        if chosen is None:
            return (
                f'matrix: model={target} set=(none) dsl="" evict={formatList(decision.evict)} '
                f"target={formatList([target])} cost={decision.cost}"
            )
        if not decision.evict:
            return (
                f"matrix: model={target} already running in set={chosen.name} "
                f"dsl={_quote(chosen.dsl)}"
            )
        return (
            f"matrix: model={target} set={chosen.name} dsl={_quote(chosen.dsl)} "
            f"evict={formatList(decision.evict)} target={formatList(chosen.models)} "
            f"cost={decision.cost}"
        )

    def allowed(self, running: AbstractSet[str]) -> bool:
        """
        Whether the models of C{running} may run together: C{running} is
        empty, or a subset of the models of some expanded set, or a single
        model (one in no set runs alone).
        """
        running = frozenset(running)
        if len(running) <= 1:
            return True
        first = next(iter(running))
        return any(running <= expanded.models for expanded in self._containing.get(first, ()))


# The only registration site in the codebase: import this module (through
# llamaswap.router) and never register again.
registerAdapter(GroupPlanner, GroupsConfig, ISwapPlanner)
registerAdapter(MatrixPlanner, MatrixConfig, ISwapPlanner)
registerAdapter(MemorySwapPlanner, MemorySwap, ISwapPlanner)
