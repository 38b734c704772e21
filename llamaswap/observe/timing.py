# -*- test-case-name: tests.test_observe_timing -*-
"""
Where the time of one request went: waiting in the router's queue,
stopping the models a swap evicts, loading the target, and the upstream's
time to first byte.  Reported in the C{Server-Timing} header, the activity
entry's C{phases}, and the C{llamaswap_phase_seconds} histogram.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

#: The marks, in the order they happen.  Each marks the END of a phase.
MARKS = ("queued", "stopDone", "loadDone", "dispatched", "firstByte", "end")


class PhaseTimer:
    """
    Marks of one request's life, timed with an injected clock.

    The timer starts when it is made (the request's arrival).  Marks, each
    recorded once (later calls are ignored):

        - C{queued}: the router stopped queueing the request (its swap
          began, or it took the fast path);
        - C{stopDone}: the models the swap evicts have stopped;
        - C{loadDone}: the target model is ready;
        - C{dispatched}: the request was sent upstream;
        - C{firstByte}: the first byte of the answer arrived;
        - C{end}: the exchange is over.

    A mark that was never made counts as made at the previous mark's time
    (its phase lasted 0): a request served by the fast path has no
    C{stopDone} and no C{loadDone}.  Marks are also made monotonic, so every
    phase is >= 0 and C{queue + stop + load + ttfb <= total}.
    """

    def __init__(self, clock: IReactorTime, start: float | None = None) -> None:
        """
        @param clock: gives the time (C{seconds()}).
        @param start: the arrival time; now by default.
        """
        self.clock = clock
        self.start = clock.seconds() if start is None else start
        self.marks: dict[str, float] = {}

    @classmethod
    def fromLease(cls, clock: IReactorTime, arrived: float, dispatched: float,
                  phases: dict) -> "PhaseTimer":
        """
        A timer for a request the router has dispatched: its C{queue},
        C{stop} and C{load} phases (seconds, from the router's lease) become
        the C{queued}, C{stopDone} and C{loadDone} marks, and C{dispatched}
        is when the lease was granted.
        """
        timer = cls(clock, start=arrived)
        queued = arrived + phases.get("queue", 0.0)
        stopDone = queued + phases.get("stop", 0.0)
        loadDone = stopDone + phases.get("load", 0.0)
        timer.marks.update(queued=queued, stopDone=stopDone, loadDone=loadDone,
                           dispatched=max(loadDone, dispatched))
        return timer

    def mark(self, name: str) -> None:
        """
        Record mark C{name} (one of L{MARKS}) now, unless already recorded.
        """
        if name not in MARKS:
            raise ValueError("unknown mark {!r}".format(name))
        self.marks.setdefault(name, self.clock.seconds())

    def queued(self) -> None:
        self.mark("queued")

    def stopDone(self) -> None:
        self.mark("stopDone")

    def loadDone(self) -> None:
        self.mark("loadDone")

    def dispatched(self) -> None:
        self.mark("dispatched")

    def firstByte(self) -> None:
        self.mark("firstByte")

    def end(self) -> None:
        self.mark("end")

    def _resolved(self) -> tuple[float, ...]:
        """
        @return: the time of each of L{MARKS}, in order, made monotonic.
        """
        marks = self.marks
        times = []
        previous = self.start
        for name in MARKS:
            at = marks.get(name)
            if at is None:
                at = self.clock.seconds() if name == "end" else previous
            if at < previous:
                at = previous
            times.append(at)
            previous = at
        return tuple(times)

    def phases(self) -> dict[str, float]:
        """
        @return: seconds: C{queue} (arrival to C{queued}), C{stop}
            (C{queued} to C{stopDone}), C{load} (C{stopDone} to
            C{loadDone}), C{ttfb} (C{dispatched} to C{firstByte}) and
            C{total} (arrival to C{end}, or to now before the end).
        """
        queued, stopDone, loadDone, dispatched, firstByte, end = self._resolved()
        return {
            "queue": queued - self.start,
            "stop": stopDone - queued,
            "load": loadDone - stopDone,
            "ttfb": firstByte - dispatched,
            "total": end - self.start,
        }

    def serverTimingHeader(self) -> bytes:
        """
        @return: a C{Server-Timing} value, milliseconds with one decimal:
            C{queue;dur=12.3, stop;dur=0.0, load;dur=812.5, ttfb;dur=4.1,
            total;dur=830.2}.  Sent with the response headers, before the
            end: C{total} is then the time so far.
        """
        queued, stopDone, loadDone, dispatched, firstByte, end = self._resolved()
        return b"queue;dur=%.1f, stop;dur=%.1f, load;dur=%.1f, ttfb;dur=%.1f, total;dur=%.1f" % (
            (queued - self.start) * 1000.0, (stopDone - queued) * 1000.0,
            (loadDone - stopDone) * 1000.0, (firstByte - dispatched) * 1000.0,
            (end - self.start) * 1000.0)
