# -*- test-case-name: tests.test_router -*-
"""
The router's books: the requests waiting for their models, how many each
model has admitted, and the leases in flight.

L{Ledger} only counts (and tells waiters their queue positions);
L{llamaswap.router.router.RouterService} decides.
Its read API (L{Ledger.inFlight}, L{Ledger.admitted}, L{Ledger.queued},
L{Ledger.waiting}, L{Ledger.leases}) is what tests, the C{/running} JSON
and the observatory read.
"""

from __future__ import annotations

from typing import Callable, Dict, FrozenSet, Iterable, List, Optional, Tuple

import attr
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

__all__ = ["Lease", "Waiter", "Ledger", "Drain"]


@attr.s(eq=False)
class Lease:
    """
    Permission to send one request to a ready upstream.

    @ivar modelId: the model the lease is for.
    @ivar baseURL: the upstream's base URL (the model's C{proxy}).
    @ivar released: whether L{release} was called.
    @ivar arrived: when the request reached the router (reactor seconds).
    @ivar dispatched: when it was granted this lease.
    @ivar phases: how the wait between the two was spent, in seconds:
        C{queue} (waiting behind others), C{stop} (other models stopping to
        make room for this one) and C{load} (this model starting); they add
        up to C{dispatched - arrived}.
    """

    modelId: str = attr.ib()
    baseURL: str = attr.ib()
    _onRelease: Callable[["Lease"], None] = attr.ib(repr=False)
    released: bool = attr.ib(default=False)
    arrived: float = attr.ib(default=0.0)
    dispatched: float = attr.ib(default=0.0)
    phases: Dict[str, float] = attr.ib(factory=lambda: {"queue": 0.0, "stop": 0.0, "load": 0.0})

    def release(self) -> None:
        """
        Give the lease back (the request is over); idempotent.
        """
        if not self.released:
            self.released = True
            self._onRelease(self)


@attr.s(eq=False)
class Waiter:
    """
    A request (or a load) waiting for its model.

    @ivar lease: C{True} for a request (it will hold a slot), C{False} for
        a load.
    @ivar position: the queue position last reported, or L{None}.
    """

    id: int = attr.ib()
    modelId: str = attr.ib()
    arrived: float = attr.ib()
    lease: bool = attr.ib()
    onQueuePosition: Optional[Callable[[int], None]] = attr.ib(repr=False)
    deferred: Deferred = attr.ib(default=None, repr=False)
    position: Optional[int] = attr.ib(default=None)


class Ledger:
    """
    Waiting requests in arrival order, admission counts (waiting plus in
    flight, what C{concurrencyLimit} bounds) and leases in flight, per model.
    """

    log = Logger()

    def __init__(self, models: Iterable[str] = ()) -> None:
        self._waiting: List[Waiter] = []
        self._leases: set = set()
        self._inFlight: Dict[str, int] = {}
        self._admitted: Dict[str, int] = {}
        for modelId in models:
            self.addModel(modelId)

    # -- read API -----------------------------------------------------------

    def inFlight(self, modelId: Optional[str] = None) -> int:
        """
        @return: leases in flight for C{modelId}, or over every model.
        """
        if modelId is None:
            return sum(self._inFlight.values())
        return self._inFlight.get(modelId, 0)

    def admitted(self, modelId: str) -> int:
        """
        @return: requests of C{modelId} waiting or in flight.
        """
        return self._admitted.get(modelId, 0)

    def queued(self, modelId: Optional[str] = None) -> int:
        """
        @return: requests and loads waiting for C{modelId}, or for any model.
        """
        if modelId is None:
            return len(self._waiting)
        return sum(1 for w in self._waiting if w.modelId == modelId)

    def waiting(self) -> Tuple[Waiter, ...]:
        """
        @return: the waiting requests and loads, oldest first.
        """
        return tuple(self._waiting)

    def leases(self) -> FrozenSet[Lease]:
        """
        @return: the leases in flight.
        """
        return frozenset(self._leases)

    def idle(self) -> bool:
        """
        @return: whether nothing waits and nothing is in flight.
        """
        return not self._waiting and not self._leases

    # -- written by the router -----------------------------------------------

    def addModel(self, modelId: str) -> None:
        self._inFlight.setdefault(modelId, 0)
        self._admitted.setdefault(modelId, 0)

    def removeModel(self, modelId: str) -> None:
        """
        Forget C{modelId}: its leases still in flight no longer count.
        """
        self.detach(modelId)
        self._inFlight.pop(modelId, None)
        self._admitted.pop(modelId, None)

    def admit(self, modelId: str) -> None:
        """
        A request granted at once, never queued, takes its slot (until its
        lease is released).
        """
        self._admitted[modelId] += 1

    def enqueue(self, waiter: Waiter) -> None:
        self._waiting.append(waiter)
        if waiter.lease:
            self._admitted[waiter.modelId] += 1

    def withdraw(self, waiter: Waiter) -> bool:
        """
        Take C{waiter} out of the queue, giving its slot back.

        @return: whether it was waiting.
        """
        if waiter not in self._waiting:
            return False
        self._waiting.remove(waiter)
        if waiter.lease:
            self._admitted[waiter.modelId] -= 1
        return True

    def withdrawAll(self, modelId: Optional[str] = None) -> List[Waiter]:
        """
        Take every waiter of C{modelId} (or of every model) out of the queue.

        @return: them, oldest first, for the caller to fail.
        """
        out = [w for w in self._waiting if modelId is None or w.modelId == modelId]
        for waiter in out:
            self.withdraw(waiter)
        return out

    def granted(self, waiters: List[Waiter]) -> None:
        """
        C{waiters} leave the queue, dispatched (their slots stay taken
        until their leases are released).
        """
        done = {id(w) for w in waiters}
        self._waiting = [w for w in self._waiting if id(w) not in done]

    def tellPositions(self, queued: Iterable[object]) -> None:
        """
        Tell each waiter whose 1-based position in C{queued} (the ids of
        the requests waiting behind others, in queue order) changed, through
        its C{onQueuePosition}; a waiter no longer in C{queued} is told
        nothing (its model is loading for it).
        """
        positions = {requestId: i + 1 for i, requestId in enumerate(queued)}
        for waiter in self._waiting:
            position = positions.get(waiter.id)
            if position == waiter.position:
                continue
            waiter.position = position
            if position is not None and waiter.onQueuePosition is not None:
                try:
                    waiter.onQueuePosition(position)
                except Exception:
                    self.log.failure("[{model}] onQueuePosition", model=waiter.modelId)

    def lend(self, lease: Lease) -> None:
        self._leases.add(lease)
        self._inFlight[lease.modelId] = self._inFlight.get(lease.modelId, 0) + 1

    def release(self, lease: Lease) -> bool:
        """
        @return: whether C{lease} counted (it was lent and not detached).
        """
        if lease not in self._leases:
            return False
        self._leases.discard(lease)
        self._inFlight[lease.modelId] -= 1
        self._admitted[lease.modelId] -= 1
        return True

    def detach(self, modelId: str) -> int:
        """
        The leases of C{modelId} stop counting (its process is being
        replaced; their release changes nothing).

        @return: how many there were.
        """
        gone = [lease for lease in self._leases if lease.modelId == modelId]
        for lease in gone:
            self.release(lease)
        return len(gone)


class Drain:
    """
    Waits, for a bounded time, until a L{Ledger} is idle (a shutdown's
    drain).

    @ivar began: whether L{begin} was called (no new request is taken).
    """

    log = Logger()

    def __init__(self, clock, ledger: Ledger) -> None:
        self._clock = clock
        self._ledger = ledger
        self._waiters: List[Deferred[bool]] = []
        self.began = False

    def begin(self, timeout: float) -> Deferred[bool]:
        """
        @return: a L{Deferred} that fires with C{True} once the ledger is
            idle (at once if it is), or with C{False} after C{timeout}
            seconds or on L{end}.
        """
        self.began = True
        if self._ledger.idle():
            return succeed(True)
        d: Deferred[bool] = Deferred()
        self._waiters.append(d)
        call = self._clock.callLater(timeout, self.end, False)

        def cancel(result: bool) -> bool:
            if call.active():
                call.cancel()
            return result

        d.addBoth(cancel)
        self.log.info(
            "draining: {inflight} requests in flight, {queued} waiting; up to {timeout}s",
            inflight=self._ledger.inFlight(), queued=self._ledger.queued(), timeout=timeout)
        return d

    def check(self) -> None:
        """
        The ledger changed: end the drain if it is idle.
        """
        if self._waiters and self._ledger.idle():
            self.end(True)

    def end(self, clean: bool) -> None:
        """
        End the drain: C{clean} when nothing was left.
        """
        waiters, self._waiters = self._waiters, []
        if waiters and not clean:
            self.log.warn("drain ended with {inflight} requests in flight, {queued} waiting",
                          inflight=self._ledger.inFlight(), queued=self._ledger.queued())
        for d in waiters:
            d.callback(clean)
