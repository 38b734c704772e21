"""
Tests for L{llamaswap.observe.timing}: per-request phases and the
C{Server-Timing} header.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from llamaswap.observe.timing import MARKS, PhaseTimer


class PhaseTimerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(100)

    def test_swapPath(self):
        timer = PhaseTimer(self.clock)
        for name, step in [("queued", 0.0123), ("stopDone", 0.0), ("loadDone", 0.8125),
                           ("dispatched", 0.0002), ("firstByte", 0.0041), ("end", 0.0008)]:
            self.clock.advance(step)
            timer.mark(name)
        phases = timer.phases()
        expected = {"queue": 0.0123, "stop": 0.0, "load": 0.8125, "ttfb": 0.0041,
                    "total": 0.8299}
        for key, seconds in expected.items():
            self.assertAlmostEqual(phases[key], seconds, places=9)
        self.assertEqual(timer.serverTimingHeader(),
                         b"queue;dur=12.3, stop;dur=0.0, load;dur=812.5, ttfb;dur=4.1, "
                         b"total;dur=829.9")

    def test_fastPath(self):
        """
        No C{stopDone}, no C{loadDone}: both phases are 0.
        """
        timer = PhaseTimer(self.clock)
        self.clock.advance(0.001)
        timer.queued()
        timer.dispatched()
        self.clock.advance(0.02)
        timer.firstByte()
        self.clock.advance(1)
        timer.end()
        phases = timer.phases()
        self.assertEqual((phases["stop"], phases["load"]), (0.0, 0.0))
        self.assertAlmostEqual(phases["queue"], 0.001)
        self.assertAlmostEqual(phases["ttfb"], 0.02)
        self.assertAlmostEqual(phases["total"], 1.021)

    def test_beforeTheEndTotalIsSoFar(self):
        timer = PhaseTimer(self.clock)
        self.clock.advance(0.5)
        timer.queued()
        timer.loadDone()
        timer.dispatched()
        timer.firstByte()
        self.assertEqual(timer.phases()["total"], 0.5)
        self.assertTrue(timer.serverTimingHeader().endswith(b"total;dur=500.0"))
        self.clock.advance(1.5)
        self.assertEqual(timer.phases()["total"], 2.0)

    def test_marksOnce(self):
        timer = PhaseTimer(self.clock)
        self.clock.advance(1)
        timer.firstByte()
        self.clock.advance(1)
        timer.firstByte()
        self.assertEqual(timer.marks["firstByte"], 101)
        self.assertRaises(ValueError, timer.mark, "bogus")

    def test_explicitStart(self):
        timer = PhaseTimer(self.clock, start=99.0)
        timer.queued()
        self.assertEqual(timer.phases()["queue"], 1.0)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from(MARKS), st.floats(0, 10)), max_size=10))
    def test_invariants(self, steps):
        """
        Whatever marks are made, in whatever order: every phase >= 0 and
        C{queue + stop + load + ttfb <= total}.
        """
        clock = Clock()
        timer = PhaseTimer(clock)
        for name, step in steps:
            clock.advance(step)
            timer.mark(name)
        phases = timer.phases()
        for key, seconds in phases.items():
            self.assertGreaterEqual(seconds, 0, key)
        parts = phases["queue"] + phases["stop"] + phases["load"] + phases["ttfb"]
        self.assertLessEqual(parts, phases["total"] + 1e-9)
