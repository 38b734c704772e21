# -*- test-case-name: tests.test_memory_planner -*-
"""
The memory-aware swap planner: load what fits, evict only what must go.

Two pieces, both pure:

    - L{MemoryFitPlanner} (an L{IMemoryPlanner}) answers, for a target, a
      running set and a L{MemorySituation} (each model's need, each
      device's budget, which models are busy, leaving or pinned, when each
      was last used), which models must go so that the target fits.
    - L{MemorySwapPlanner} (an L{ISwapPlanner}, adapted from a
      L{MemorySwap}: the configured strategy's planner plus a situation)
      is what the scheduler is given: its C{evictionFor} is the configured
      strategy's eviction set, then the memory plan for what remains.

The rules of a memory plan, per device (a model's memory is counted on the
device it is configured for; models of other devices never make room for
it):

    1. A target that is already running needs nothing.  Otherwise the
       target fits when the needs of the other running models of its device
       plus its own need are at most the device's budget.
    2. When it does not fit, models go in this order until it fits: those
       already leaving (stopping: they go anyway), then the idle ones, least
       recently used first (ties by id; a model with no last-used time
       counts as used just now).  Those are C{evict}.
    3. Never a busy model (requests in flight, or a start that requests wait
       for): when idle models are not enough, the busy models needed to make
       the target fit are listed in C{wait}, least recently used first.  The
       scheduler never stops a busy model; a swap whose eviction set holds
       one waits for it to drain (and closes it to new requests after
       C{maxQueueWait}), then plans again.
    4. Never a pinned model.  With groups, the members of C{persistent}
       groups are pinned against targets of other groups (the meaning
       C{persistent} has in the reference: no other group unloads them); a
       target of the same group may displace them.  When even evicting every
       other model cannot make room, C{fits} is false and the target runs
       with the pinned models only (its need may be overestimated; an
       out-of-memory failure is retried once, see L{llamaswap.memory.oom}).
    5. A model whose need is unknown counts as needing its device's whole
       budget: it runs alone, like a model in no set of a matrix.
    6. C{also} (an out-of-memory retry) names models that go for the
       target whatever the budget says (busy ones are waited for), before
       the rules above are applied to the rest.

How the strategies combine: the configured groups or matrix decide first
(C{swap: true} groups still swap their members, exclusive groups still stop
the others, a matrix still picks its set), and memory then evicts what must
go among the models they keep.  When neither groups nor a matrix is
configured, the implicit default group (one model at a time) is replaced
by no rule at all: memory alone decides.
"""

from __future__ import annotations

import math
from typing import AbstractSet, Dict, FrozenSet, List, Mapping, Optional, Tuple

import attr
from zope.interface import implementer

from llamaswap.interfaces import IMemoryPlanner, ISwapPlanner
from llamaswap.memory.estimate import formatBytes

__all__ = ["Fit", "MemoryFitPlanner", "MemorySituation", "MemorySwap", "MemorySwapPlanner",
           "NoEviction"]

DEFAULT_DEVICE = "0"


@attr.s(frozen=True, auto_attribs=True)
class MemorySituation:
    """
    Everything a memory plan depends on besides the target and the running
    set; frozen, built afresh by the router for each plan.

    @ivar needs: model id -> bytes it needs; a model missing here needs
        its device's whole budget.
    @ivar budgets: device -> bytes the models may use on it; a device
        missing here (a budget not yet read) has no limit.
    @ivar devices: model id -> its device (L{DEFAULT_DEVICE} when missing).
    @ivar busy: models with requests in flight (or waited-for starts).
    @ivar leaving: models already stopping.
    @ivar lastUsed: model id -> when it was last used (any clock); a model
        missing here counts as used just now.
    @ivar pinned: target id -> the models that must not be evicted for it.
    @ivar also: target id -> models that must go for it in any case (the
        out-of-memory retry's one more eviction).
    """

    needs: Mapping[str, int] = attr.Factory(dict)
    budgets: Mapping[str, int] = attr.Factory(dict)
    devices: Mapping[str, str] = attr.Factory(dict)
    busy: FrozenSet[str] = frozenset()
    leaving: FrozenSet[str] = frozenset()
    lastUsed: Mapping[str, float] = attr.Factory(dict)
    pinned: Mapping[str, FrozenSet[str]] = attr.Factory(dict)
    also: Mapping[str, FrozenSet[str]] = attr.Factory(dict)

    def device(self, modelId: str) -> str:
        return self.devices.get(modelId, DEFAULT_DEVICE)

    def need(self, modelId: str) -> int:
        """
        @return: the need of C{modelId}, its device's budget when unknown.
        """
        need = self.needs.get(modelId)
        if need is None:
            return self.budgets.get(self.device(modelId), 0)
        return need


@attr.s(frozen=True, auto_attribs=True)
class Fit:
    """
    A memory plan.

    @ivar evict: idle or leaving models to stop, in eviction order.
    @ivar wait: busy models that must drain and stop too, in order.
    @ivar fits: whether the target fits once they are gone.
    @ivar budget: the target's device budget (L{None}: no limit).
    @ivar used: the needs of what stays on the device, target included.
    """

    evict: Tuple[str, ...] = ()
    wait: Tuple[str, ...] = ()
    fits: bool = True
    budget: Optional[int] = None
    used: int = 0

    @property
    def stops(self) -> FrozenSet[str]:
        """
        @return: every model that must go (C{evict} and C{wait}).
        """
        return frozenset(self.evict) | frozenset(self.wait)


@implementer(IMemoryPlanner)
class MemoryFitPlanner:
    """
    The rules of the module docstring, as an L{IMemoryPlanner}.
    """

    def fit(self, target: str, running: AbstractSet[str], situation: MemorySituation) -> Fit:
        """
        @return: the L{Fit} of C{target} among C{running}; see
            L{IMemoryPlanner.fit}.
        """
        device = situation.device(target)
        budget = situation.budgets.get(device)
        others = sorted(m for m in running if m != target and situation.device(m) == device)
        used = sum(situation.need(m) for m in others)
        if target in running or budget is None:
            return Fit(budget=budget, used=used + situation.need(target))
        need = situation.need(target)
        also = situation.also.get(target, frozenset())
        pinned = situation.pinned.get(target, frozenset())
        now = math.inf

        def order(m: str) -> Tuple[int, float, str]:
            return (0 if m in situation.leaving else 1, situation.lastUsed.get(m, now), m)

        candidates = sorted((m for m in others if m not in pinned), key=order)
        evict: List[str] = []
        wait: List[str] = []

        def isIdle(m: str) -> bool:
            return m not in situation.busy or m in situation.leaving

        for m in [m for m in candidates if m in also]:
            (evict if isIdle(m) else wait).append(m)
            used -= situation.need(m)
        candidates = [m for m in candidates if m not in also]
        idle = [m for m in candidates if isIdle(m)]
        busy = [m for m in candidates if not isIdle(m)]
        for group, chosen in ((idle, evict), (busy, wait)):
            for m in group:
                if used + need <= budget:
                    break
                chosen.append(m)
                used -= situation.need(m)
        return Fit(tuple(evict), tuple(wait), used + need <= budget, budget, used + need)

    def explain(self, target: str, running: AbstractSet[str], situation: MemorySituation) -> str:
        """
        @return: the log line of the plan, for example C{memory: model=b
            need=4.0GiB budget=8.0GiB evict=[a] wait=[] fits=true}.
        """
        fit = self.fit(target, running, situation)
        budget = "unlimited" if fit.budget is None else formatBytes(fit.budget)
        return (
            f"memory: model={target} need={formatBytes(situation.need(target))} "
            f"budget={budget} used={formatBytes(fit.used)} "
            f"evict=[{' '.join(fit.evict)}] wait=[{' '.join(fit.wait)}] "
            f"fits={'true' if fit.fits else 'false'}"
        )


@implementer(ISwapPlanner)
class NoEviction:
    """
    The base strategy when neither groups nor a matrix is configured: no
    rule of its own (memory alone decides).
    """

    def evictionFor(self, target: str, running: AbstractSet[str]) -> FrozenSet[str]:
        return frozenset()

    def explain(self, target: str, running: AbstractSet[str]) -> str:
        return f"memory: model={target}"


@attr.s(frozen=True, auto_attribs=True)
class MemorySwap:
    """
    What L{MemorySwapPlanner} adapts: the configured strategy's planner and
    the memory situation of this moment.

    @ivar base: an L{ISwapPlanner} (groups, matrix or L{NoEviction}).
    """

    base: object
    situation: MemorySituation
    memory: object = attr.Factory(MemoryFitPlanner)


@implementer(ISwapPlanner)
class MemorySwapPlanner:
    """
    The configured strategy first, then memory (see the module docstring).

    @ivar swap: the adapted L{MemorySwap}.
    """

    def __init__(self, swap: MemorySwap) -> None:
        self.swap = swap
        self._fits: Dict[Tuple[str, FrozenSet[str]], Tuple[FrozenSet[str], Fit]] = {}

    def decide(self, target: str, running: AbstractSet[str]) -> Tuple[FrozenSet[str], Fit]:
        """
        @return: the base strategy's eviction set and the memory L{Fit}
            among the models it keeps.
        """
        key = (target, frozenset(running))
        cached = self._fits.get(key)
        if cached is None:
            base = frozenset(self.swap.base.evictionFor(target, running)) - {target}  # type: ignore[attr-defined]
            fit = self.swap.memory.fit(target, key[1] - base, self.swap.situation)  # type: ignore[attr-defined]
            cached = self._fits[key] = (base, fit)
        return cached

    def evictionFor(self, target: str, running: AbstractSet[str]) -> FrozenSet[str]:
        """
        @return: the base strategy's evictions, the memory plan's C{evict}
            and its C{wait} (busy models: the scheduler waits for them to
            drain before it stops any of them).
        """
        base, fit = self.decide(target, running)
        return base | fit.stops

    def explain(self, target: str, running: AbstractSet[str]) -> str:
        """
        @return: the base strategy's log line, then the memory plan's.
        """
        base = getattr(self.swap.base, "explain", None)
        kept = frozenset(running) - self.decide(target, running)[0]
        memory = self.swap.memory.explain(target, kept, self.swap.situation)  # type: ignore[attr-defined]
        if base is None or isinstance(self.swap.base, NoEviction):
            return memory
        return f"{base(target, running)}; {memory}"
