# -*- test-case-name: tests.test_router -*-
"""
How a request's wait was spent: queueing, other models stopping to make
room for its model, and its model loading (the phases of C{Server-Timing}).
"""

from __future__ import annotations

from collections import deque
from typing import Deque, Dict, List, Optional

__all__ = ["PhaseBook"]


class PhaseBook:
    """
    Recent C{[began, ended]} windows per model: stops made for it and its
    loads; a window still open has C{ended} L{None}.
    """

    def __init__(self) -> None:
        self._stops: Dict[str, Deque[List[Optional[float]]]] = {}
        self._loads: Dict[str, Deque[List[Optional[float]]]] = {}

    def stopBegan(self, forModel: str, now: float) -> List[Optional[float]]:
        """
        A model began stopping to make room for C{forModel}.

        @return: the window; set its second item when the stop ends.
        """
        window: List[Optional[float]] = [now, None]
        self._stops.setdefault(forModel, deque(maxlen=8)).append(window)
        return window

    def loadBegan(self, modelId: str, now: float) -> None:
        self._loads.setdefault(modelId, deque(maxlen=4)).append([now, None])

    def loadEnded(self, modelId: str, now: float) -> None:
        windows = self._loads.get(modelId)
        if windows and windows[-1][1] is None:
            windows[-1][1] = now

    def phases(self, modelId: str, arrived: float, dispatched: float) -> Dict[str, float]:
        """
        @return: how a request for C{modelId} that waited from C{arrived}
            to C{dispatched} spent that time: C{stop} (other models stopping
            for C{modelId}), C{load} (C{modelId} loading) and C{queue} (the
            rest); they add up to the wait.
        """

        if dispatched <= arrived:  # granted at once: no wait to share out
            return {"queue": 0.0, "stop": 0.0, "load": 0.0}

        def overlap(windows) -> float:
            total = 0.0
            for began, ended in windows:
                ended = dispatched if ended is None else ended
                total += max(0.0, min(ended, dispatched) - max(began, arrived))
            return total

        stop = overlap(self._stops.get(modelId, ()))
        load = overlap(self._loads.get(modelId, ()))
        waited = max(0.0, dispatched - arrived)
        stop, load = min(stop, waited), min(load, max(0.0, waited - stop))
        return {"queue": max(0.0, waited - stop - load), "stop": stop, "load": load}
