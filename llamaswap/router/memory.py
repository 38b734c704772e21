# -*- test-case-name: tests.test_memory_router -*-
"""
The router's side of the memory planner (L{llamaswap.memory}): the planner
of each plan, the out-of-memory retry of a failed start, and the C{memory}
field of C{/running} entries.

The L{MemoryManager <llamaswap.memory.manager.MemoryManager>} is asked for
anew at each use: a reload builds the next configuration's one (or none,
without a C{memory} section).  A manager that raises is logged and ignored:
the configured strategy then plans alone and a failed start stands.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, List, Mapping

from twisted.logger import Logger

__all__ = ["RouterMemory"]


class RouterMemory:
    """
    What the router asks of the memory manager of the moment.

    @ivar planner: the L{ISwapPlanner} the last plan used (its explanations
        are logged), or L{None} before the first plan.
    """

    log = Logger()

    def __init__(self, manager: object = None) -> None:
        """
        @param manager: a callable returning the current manager (or
            L{None} when the memory planner is off), the manager itself, or
            L{None} (the memory planner is off).
        """
        if manager is None or hasattr(manager, "plannerFor"):
            self._manager: Callable[[], Any] = lambda: manager
        elif callable(manager):
            self._manager = manager
        else:
            raise TypeError(f"not a memory manager or a callable: {manager!r}")
        self.planner: Any = None

    @property
    def manager(self) -> Any:
        """
        The current manager, or L{None}.
        """
        return self._manager()

    def plannerFor(self, planner: object, views: Mapping[str, Any],
                   wanted: Iterable[str]) -> object:
        """
        @param planner: the configured strategy's L{ISwapPlanner}.
        @param views: model id -> its L{ModelView
            <llamaswap.router.scheduler.ModelView>} (C{state}, C{inFlight},
            C{idleSince}).
        @param wanted: the models requests wait for.
        @return: the L{ISwapPlanner} of this plan: the manager's refinement
            of C{planner}, or C{planner} itself without a manager.
        """
        manager = self._manager()
        if manager is not None:
            try:
                planner = manager.plannerFor(planner, views, frozenset(wanted))
            except Exception:
                self.log.failure("memory: planning failed; the swap strategy plans alone")
        self.planner = planner
        return planner

    def retryAfterOom(self, modelId: str, failure: Mapping[str, Any]) -> bool:
        """
        A start of C{modelId} failed with C{failure} (an
        L{UpstreamStartError.record
        <llamaswap.upstream.exits.UpstreamStartError.record>}).

        @return: whether it is retried (its output says it ran out of
            memory; see L{MemoryManager.retryAfterOom
            <llamaswap.memory.manager.MemoryManager.retryAfterOom>}): its
            waiters then keep waiting.
        """
        manager = self._manager()
        if manager is None:
            return False
        lines: List[str] = [str(line) for line in failure.get("lastLines") or ()]
        try:
            return bool(manager.retryAfterOom(modelId, lines))
        except Exception:
            self.log.failure("[{model}] memory: deciding an out-of-memory retry", model=modelId)
            return False

    def withRecords(self, entries: List[dict]) -> List[dict]:
        """
        Add the manager's C{memory} record (C{needBytes}, C{source},
        C{budgetLeftBytes}) to each C{/running} entry; without a manager
        C{entries} are left as they are.

        @return: C{entries}.
        """
        manager = self._manager()
        if manager is None:
            return entries
        for entry in entries:
            try:
                entry["memory"] = manager.record(entry["model"])
            except Exception:
                self.log.failure("[{model}] memory: its record", model=entry["model"])
                entry["memory"] = None
        return entries
