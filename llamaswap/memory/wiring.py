# -*- test-case-name: tests.test_memory_wiring -*-
"""
How the daemon holds its L{MemoryManager}: one per configuration (a reload
builds the next from the last), one L{NeedStore} per state file for the
daemon's whole life, threads from the reactor's pool, NVML through the
L{llamaswap.observe.gpu.NvmlProbe}.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from llamaswap.memory.manager import MemoryManager, statePath
from llamaswap.memory.store import NeedStore

__all__ = ["MemoryWiring", "threadRunner"]


def threadRunner(reactor: Any) -> Callable[..., Deferred]:
    """
    @return: C{inThread(f, *args)} running C{f} in C{reactor}'s thread pool
        (the global reactor's when C{reactor} has none, such as a test
        clock).
    """
    if not hasattr(reactor, "getThreadPool"):
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor

    def inThread(f: Callable[..., Any], *args: Any) -> Deferred:
        return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)

    return inThread


class MemoryWiring:
    """
    Builds the L{MemoryManager} of each configuration.

    @ivar manager: the current one, or L{None} without a C{memory} section.
    """

    def __init__(self, reactor: Any, configPath: Optional[str],
                 probe: Any = None, inThread: Optional[Callable[..., Deferred]] = None) -> None:
        """
        @param probe: an L{IGpuProbe} with C{processes()}; an
            L{NvmlProbe <llamaswap.observe.gpu.NvmlProbe>} by default.
        @param inThread: runs blocking calls; the reactor's pool by default.
        """
        if probe is None:
            from llamaswap.observe.gpu import NvmlProbe

            probe = NvmlProbe()
        self.reactor = reactor
        self.configPath = configPath
        self.probe = probe
        self.inThread = inThread if inThread is not None else threadRunner(reactor)
        self.manager: Optional[MemoryManager] = None
        self._stores: Dict[str, NeedStore] = {}

    def managerFor(self, config: Any, pgidOfModel: Callable[[str], Optional[int]],
                   onChange: Callable[[], None], start: bool) -> Optional[MemoryManager]:
        """
        Build (and with C{start}, start) the manager of C{config}, which
        becomes L{manager}.

        @return: it, or L{None} when C{config} has no C{memory} section.
        """
        if config.memory is None:
            self.manager = None
            return None
        path = statePath(config.memory, self.configPath)
        store = self._stores.get(path)
        if store is None:
            store = self._stores[path] = NeedStore(path, self.inThread)
        previous = self.manager
        if previous is not None:
            previous.stop()
        clock = self.reactor if hasattr(self.reactor, "callLater") else None
        self.manager = MemoryManager(config, store, self.probe, self.inThread, pgidOfModel,
                                     onChange=onChange, previous=previous, clock=clock)
        if start:
            self.manager.start()
        return self.manager

    def start(self) -> None:
        """
        Start the current manager (the daemon started).
        """
        if self.manager is not None:
            self.manager.start()

    def stop(self) -> None:
        """
        Stop the current manager's scheduled measurements (the daemon
        stops).
        """
        if self.manager is not None:
            self.manager.stop()

    def stateChanged(self, modelId: str, new: str) -> None:
        """
        An upstream changed state: the current manager hears of it.
        """
        if self.manager is not None:
            self.manager.stateChanged(modelId, new)

    def record(self, modelId: str) -> Optional[Dict[str, Any]]:
        """
        @return: the C{memory} field of C{modelId}, or L{None} without a
            manager.
        """
        return None if self.manager is None else self.manager.record(modelId)
