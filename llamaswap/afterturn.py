# -*- test-case-name: tests.test_afterturn -*-
"""
Work put off until the reactor has handled the I/O of its current turn.

The end of a request carries bookkeeping its client does not wait for: the
access-log line, the activity entry (tokens, capture, Prometheus series) and
the release of the router's lease.  Done as each answer ends, it runs between
the answers of one turn.  Put off, every answer of the turn leaves first, and
the bookkeeping of all the requests that ended in it runs together
afterwards.  Under load that costs less CPU per request, since the same code
runs many times in a row (C{bench/README.md}, "Seventh round").

    later = AfterTurn(reactor)
    later(site.writeAccessLine, request, 200, 0.012, time.time())
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

_log = Logger(namespace="llamaswap.afterturn")

#: What a component is given to put a call off: C{later(f, *args)}.
Later = Callable[..., None]


def callNow(f: Callable[..., object], *args: object) -> None:
    """
    The L{Later} of components built without an L{AfterTurn} (tests, tools):
    call C{f(*args)} at once.
    """
    f(*args)


class AfterTurn:
    """
    A L{Later} that runs its calls once the reactor's current turn is over:
    the calls queued during one turn run together at the start of the next,
    in the order they were queued, from one timed call.  A call that raises
    is logged and the others still run.  A call queued by one of them runs
    in the turn after.

    At reactor shutdown, once the connections are closed (their requests'
    bookkeeping queued), whatever is queued runs at once: the last
    requests' access lines and activity entries are not lost.
    """

    def __init__(self, reactor: IReactorTime) -> None:
        """
        @param reactor: schedules the runs (C{callLater(0, ...)}); its
            C{shutdown} event, if it has one, runs what is left.
        """
        self._reactor = reactor
        self._calls: list[tuple[Callable[..., object], tuple]] = []
        self._pending: IDelayedCall | None = None
        trigger = getattr(reactor, "addSystemEventTrigger", None)
        if trigger is not None:
            # "during": after the reactor's own disconnectAll, which closes
            # the connections (registered when the reactor was made), and
            # before the "after" phase flushes the log files.
            trigger("during", "shutdown", self.runNow)

    def __call__(self, f: Callable[..., object], *args: object) -> None:
        """
        Queue C{f(*args)} for the end of this turn.
        """
        self._calls.append((f, args))
        if self._pending is None:
            self._pending = self._reactor.callLater(0, self._turnEnded)

    def __len__(self) -> int:
        return len(self._calls)

    def _turnEnded(self) -> None:
        self._pending = None
        calls, self._calls = self._calls, []
        self._run(calls)

    def runNow(self) -> None:
        """
        Run every queued call now, and any they queue, until none is left.
        """
        while True:
            # A call run here may queue another, and with it a timed call.
            pending, self._pending = self._pending, None
            if pending is not None and pending.active():
                pending.cancel()
            if not self._calls:
                return
            calls, self._calls = self._calls, []
            self._run(calls)

    @staticmethod
    def _run(calls: list[tuple[Callable[..., object], tuple]]) -> None:
        for f, args in calls:
            try:
                f(*args)
            except Exception:
                _log.failure("a call put off to the end of the turn failed: {call!r}", call=f)

