"""
Tests for L{llamaswap.afterturn}: calls put off to the end of the reactor's
turn.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from llamaswap.afterturn import AfterTurn, callNow


class AfterTurnTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.later = AfterTurn(self.reactor)
        self.calls: list = []

    def shutdown(self) -> None:
        """
        Fire what the later registered for the reactor's shutdown.
        """
        for f, args, kwargs in self.reactor.triggers["during"]["shutdown"]:
            f(*args, **kwargs)

    def test_theCallsOfATurnRunTogetherOnceItIsOver(self) -> None:
        """
        Calls queued in one turn wait for it to end, and then run in the
        order they were queued, from one timed call.
        """
        self.later(self.calls.append, 1)
        self.later(self.calls.append, 2)
        self.later(lambda *args: self.calls.append(args), 3, 4)
        self.assertEqual(self.calls, [])
        self.assertEqual(len(self.later), 3)
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.reactor.advance(0)
        self.assertEqual(self.calls, [1, 2, (3, 4)])
        self.assertEqual(len(self.later), 0)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_aCallQueuedByACallRunsAfterTheTurnsOthers(self) -> None:
        """
        A call queued while the turn's calls run waits for a timed call of
        its own, after every call queued before it.
        """
        def queueAnother() -> None:
            self.later(self.calls.append, "second")
            self.calls.append(len(self.reactor.getDelayedCalls()))

        self.later(queueAnother)
        self.later(self.calls.append, "first")
        self.reactor.advance(0)
        self.assertEqual(self.calls, [1, "first", "second"])

    def test_aFailingCallIsLoggedAndTheOthersStillRun(self) -> None:
        self.later(lambda: 1 / 0)
        self.later(self.calls.append, "after")
        self.reactor.advance(0)
        self.assertEqual(self.calls, ["after"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_shutdownRunsWhatIsLeftAndWhatThatQueues(self) -> None:
        """
        Once the reactor's connections are closed at shutdown, every call
        still queued runs at once, with those it queues, and no timed call
        is left behind.
        """
        self.later(lambda: self.later(self.calls.append, "queued by a call"))
        self.later(self.calls.append, "queued")
        self.shutdown()
        self.assertEqual(self.calls, ["queued", "queued by a call"])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_aClockWithoutShutdownEventsWillDo(self) -> None:
        clock = Clock()
        later = AfterTurn(clock)
        later(self.calls.append, 1)
        clock.advance(0)
        self.assertEqual(self.calls, [1])

    def test_callNowCallsAtOnce(self) -> None:
        callNow(self.calls.append, 1)
        self.assertEqual(self.calls, [1])
