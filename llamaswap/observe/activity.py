# -*- test-case-name: tests.test_observe_tokens -*-
"""
The activity log: the last finished requests on model routes, with their
token usage (SPEC.md section 6.2), and subscribers to new ones.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Dict, List

import attr
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from llamaswap.observe._time import rfc3339Nano
from llamaswap.observe.subscribers import Subscribers
from llamaswap.observe.usage import NO_TOKENS, TokenUsage

@attr.s(frozen=True, auto_attribs=True)
class ActivityRecord:
    """
    One entry of the activity log: a finished request on a model route.

    @ivar id: from 0, monotonic.
    @ivar timestamp: POSIX seconds when it was recorded.
    @ivar model: the real model id.
    @ivar reqPath: the request path.
    @ivar respContentType: the response's C{Content-Type}.
    @ivar respStatusCode: the response status.
    @ivar tokens: the L{TokenUsage}.
    @ivar durationMs: the duration to report (see L{TokenUsage.durationMs}).
    @ivar hasCapture: whether a capture was stored under C{id}.
    @ivar phases: our per-phase timings, seconds
        (L{llamaswap.observe.timing.PhaseTimer.phases}); empty if unknown.
    """

    id: int
    timestamp: float
    model: str
    reqPath: str
    respContentType: str
    respStatusCode: int
    tokens: TokenUsage = NO_TOKENS
    durationMs: int = 0
    hasCapture: bool = False
    phases: dict[str, float] = attr.ib(factory=dict)

    def asJSON(self, hasCapture: bool | None = None) -> dict[str, Any]:
        """
        @param hasCapture: overrides C{hasCapture} (a capture that was
            evicted since).
        @return: the reference's activity entry, plus C{phases}.
        """
        return {
            "id": self.id,
            "timestamp": rfc3339Nano(self.timestamp),
            "model": self.model,
            "req_path": self.reqPath,
            "resp_content_type": self.respContentType,
            "resp_status_code": self.respStatusCode,
            "tokens": self.tokens.asJSON(),
            "duration_ms": self.durationMs,
            "has_capture": self.hasCapture if hasCapture is None else hasCapture,
            "phases": dict(self.phases),
        }


class ActivityLog:
    """
    The last C{maxItems} activity entries, and subscribers to new ones
    (the C{/api/events} C{metrics} frames).

    @ivar nextId: the id of the next entry.
    """

    log = Logger()

    def __init__(self, maxItems: int = 1000, clock: IReactorTime | None = None,
                 captures: Any = None) -> None:
        """
        @param maxItems: C{metricsMaxInMemory}; 0 or less means 1000.
        @param clock: gives entries their timestamps (C{seconds()}).
        @param captures: a L{llamaswap.observe.captures.CaptureStore}: when
            given, C{has_capture} in JSON says whether the capture is still
            stored.
        """
        self.maxItems = maxItems if maxItems > 0 else 1000
        self.clock = clock
        self.captures = captures
        self.nextId = 0
        self._records: deque[ActivityRecord] = deque(maxlen=self.maxItems)
        self._subscribers = Subscribers()

    def add(self, model: str, reqPath: str, respContentType: str = "",
            respStatusCode: int = 0, tokens: TokenUsage | None = None,
            durationMs: int = 0, phases: dict[str, float] | None = None,
            capture: Callable[[int], bool] | None = None,
            timestamp: float | None = None) -> ActivityRecord:
        """
        Record one finished request and tell the subscribers.

        @param capture: called with the new entry's id before subscribers
            hear of it; returns whether a capture was stored under that id
            (e.g. C{recorder.commit}).
        @param timestamp: POSIX seconds; the clock's time by default.
        @return: the new L{ActivityRecord}.
        """
        recordId = self.nextId
        self.nextId += 1
        hasCapture = False
        if capture is not None:
            try:
                hasCapture = bool(capture(recordId))
            except Exception:
                self.log.failure("storing capture {id} failed", id=recordId)
        if timestamp is None:
            timestamp = self.clock.seconds() if self.clock is not None else 0.0
        record = ActivityRecord(
            id=recordId, timestamp=timestamp, model=model, reqPath=reqPath,
            respContentType=respContentType or "", respStatusCode=int(respStatusCode),
            tokens=tokens if tokens is not None else NO_TOKENS, durationMs=int(durationMs),
            hasCapture=hasCapture, phases=dict(phases or {}))
        self._records.append(record)
        for callback in list(self._subscribers):
            try:
                callback(record)
            except Exception:
                self.log.failure("activity subscriber failed")
        return record

    def list(self) -> list[ActivityRecord]:
        """
        @return: the stored entries, oldest first.
        """
        return list(self._records)

    def get(self, recordId: int) -> ActivityRecord | None:
        """
        @return: the stored entry C{recordId}, or L{None}.
        """
        if not self._records:
            return None
        offset = recordId - self._records[0].id
        if 0 <= offset < len(self._records):
            return self._records[offset]
        return None

    def asJSON(self, record: ActivityRecord) -> dict[str, Any]:
        """
        @return: C{record} as the reference's JSON entry, C{has_capture}
            telling whether its capture is still stored.
        """
        if self.captures is None or not record.hasCapture:
            return record.asJSON()
        return record.asJSON(hasCapture=self.captures.has(record.id))

    def listJSON(self) -> List[Dict[str, Any]]:
        """
        @return: C{GET /api/metrics}: every stored entry as JSON, oldest
            first (C{[]} when none).
        """
        return [self.asJSON(record) for record in self._records]

    def subscribe(self, callback: Callable[[ActivityRecord], object]) -> Callable[[], None]:
        """
        Call C{callback(record)} for each later entry.

        @return: a function that unsubscribes.
        """
        return self._subscribers.add(callback)

    def __len__(self) -> int:
        return len(self._records)
