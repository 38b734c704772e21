# -*- test-case-name: tests.test_scheduler -*-
"""
The scheduler: a pure function from the router's state to decisions.

L{decide} is given the waiting requests (in arrival order), a view of every
model (its upstream's state, its in-flight requests, its limits), the swap
planner and the time, and answers with a L{Plan}: what to do now.  It keeps
no state between calls and does no I/O; the router calls it again after
every event (a request arrived or was cancelled, a lease was released, an
upstream became ready, failed, exited or stopped, a timer fired), so every
rule below is re-applied to the current state each time.

The rules, for each waiting request in arrival order (SPEC.md sections 5.3
and 5.4, plus the bounded wait that the reference lacks):

    1. B{Dispatch} it when its model is C{ready}, is not being stopped, has
       a free slot (in-flight plus dispatched below C{concurrency}; a
       C{load} needs no slot) and is not closed to it (rule 5).  Requests
       for a model that became ready are therefore all dispatched at once
       (B{collation}): A B C A B C on three exclusive models is served
       A A, B B, C C with three starts.

    2. Otherwise the first such request of a model makes that model a
       B{target}; targets are taken in the order of their oldest request,
       so the next model loaded is the model of the oldest request that
       cannot be served now.  A target that is C{starting} is simply
       joined.  For any other target T the planner gives the eviction set
       C{E = planner.evictionFor(T, running)}, where C{running} is every
       live model (starting, ready, stopping) plus the older targets of
       this pass (swaps in progress or about to be).

    3. B{Collision}: when E holds an older target, or T would be evicted by
       an older target that has not started yet, T waits for it.

    4. B{Draining}: when a model of E is busy (a ready model with requests
       in flight, or a starting one that some request waits for), T waits:
       a swap never stops a busy model.  Otherwise every live model of E
       that is not already stopping is stopped (in parallel), and once no
       model of E is live and T itself is stopped or failed, T is
       B{started}.  Starts therefore follow stops on a later call: the
       router re-runs the scheduler when each stop completes.  Swaps that
       do not collide proceed in parallel.

    5. B{Bounded waiting}: while T's oldest request has waited less than
       C{maxQueueWait} seconds, the busy models blocking it keep taking new
       requests (the reference's fast path).  Once it has waited that long
       every ready or starting model of E is B{closed}: requests for it
       that arrive from that moment on (the I{cutoff}) queue behind T
       instead of being dispatched, its in-flight requests drain, and the
       swap happens.  Requests that were already waiting before the cutoff
       are still served (so a model that took long to load still gets its
       collated requests).  A closed model whose requests have not drained
       once T's oldest request has waited twice C{maxQueueWait} is stopped
       anyway (B{forced}: a hung request must not keep two models out of
       service).  C{maxQueueWait = 0} turns this off.

    6. B{TTL}: a ready model with C{ttl > 0}, nothing in flight and no
       request waiting for it is stopped C{ttl} seconds after it last
       became idle.

Nobody-wants-it rules: a model is only ever started for a waiting request,
so a request that is cancelled before its model starts never causes a start
(the router removes it from the queue).  A start already in progress when
its last waiter goes is I{left to finish} (the model then stays loaded,
subject to its TTL), unless another target needs its room: a starting model
that no request waits for is not busy, so it is stopped (which aborts the
start) like any idle model.

Failed and stopped models that requests wait for are started again; the
router fails the waiters of a failed start before calling L{decide} again,
so only requests that arrived after the failure cause a new start.

Times within L{EPSILON} of a deadline count as having reached it, so that a
timer set for the deadline always finds it reached.
"""

from __future__ import annotations

from typing import Dict, Hashable, List, Mapping, Optional, Sequence, Union

import attr

__all__ = [
    "EPSILON",
    "LIVE",
    "Pending",
    "ModelView",
    "Dispatch",
    "Start",
    "Stop",
    "Close",
    "Swap",
    "Plan",
    "decide",
]

#: Upstream states in which a model holds (or may soon hold) its resources.
LIVE = frozenset({"starting", "ready", "stopping"})

#: Slack, in seconds, for comparing the time with a deadline.
EPSILON = 1e-6


@attr.s(frozen=True, auto_attribs=True)
class Pending:
    """
    One request waiting for its model.

    @ivar id: the router's identifier for it (any hashable).
    @ivar model: the real model id it waits for.
    @ivar arrived: when it arrived (the clock's seconds).
    @ivar lease: whether it will occupy one of the model's C{concurrency}
        slots once dispatched (C{False} for a C{load}, which only waits
        for the model to be ready).
    """

    id: Hashable
    model: str
    arrived: float
    lease: bool = True


@attr.s(frozen=True, auto_attribs=True)
class ModelView:
    """
    What the scheduler knows of one model.

    @ivar state: its upstream's state: C{stopped}, C{starting}, C{ready},
        C{stopping} or C{failed}.
    @ivar inFlight: requests dispatched to it and not yet released.
    @ivar concurrency: the most requests it may have in flight.
    @ivar ttl: idle seconds before it is stopped; C{0} never.
    @ivar idleSince: when it last became ready or idle (its last in-flight
        request ended), or L{None} if unknown (then no TTL applies).
    """

    state: str
    inFlight: int = 0
    concurrency: int = 10
    ttl: float = 0
    idleSince: Optional[float] = None


@attr.s(frozen=True, auto_attribs=True)
class Dispatch:
    """
    Grant the waiting request C{requestId} its (ready) C{model}.
    """

    requestId: Hashable
    model: str


@attr.s(frozen=True, auto_attribs=True)
class Start:
    """
    Start C{model}'s upstream (it is stopped or failed, and nothing that
    must make room for it is live).
    """

    model: str


@attr.s(frozen=True, auto_attribs=True)
class Stop:
    """
    Stop C{model}'s upstream.

    @ivar forModel: the target it makes room for, or L{None} when its TTL
        expired.
    @ivar forced: its in-flight requests did not drain within a second
        C{maxQueueWait} after it was closed: they are cut.
    """

    model: str
    forModel: Optional[str] = None
    forced: bool = False


@attr.s(frozen=True, auto_attribs=True)
class Close:
    """
    C{model} takes no request that arrives at or after C{since}: such
    requests queue until C{forModel}'s swap has happened.  Valid for this
    plan only; it is re-derived on every call.

    @ivar forModel: the target whose oldest request has waited
        C{maxQueueWait} seconds.
    @ivar since: the cutoff (that request's arrival plus C{maxQueueWait}).
    """

    model: str
    forModel: str
    since: float


Decision = Union[Dispatch, Start, Stop, Close]


@attr.s(frozen=True, auto_attribs=True)
class Swap:
    """
    A swap that acted in this plan (it stopped models or started its
    target), for the router's logs.

    @ivar target: the model being made ready.
    @ivar evict: the planner's eviction set.
    @ivar running: the set the planner was asked about.
    """

    target: str
    evict: frozenset
    running: frozenset


@attr.s(frozen=True, auto_attribs=True)
class Plan:
    """
    The answer of L{decide}.

    @ivar decisions: L{Dispatch}, L{Stop}, L{Start} and L{Close} decisions,
        in the order they were made (Stops of one swap sorted by model).
    @ivar queued: the ids of the requests that wait behind others (for a
        swap that cannot begin yet, a closed model, a full model), in
        arrival order; a request's queue position is its index plus one.
        Requests that only wait for their own model to stop, start or
        become ready (a swap in progress) are not queued.
    @ivar swaps: the L{Swap}s that acted, for logging.
    @ivar wakeAt: the earliest time at which the plan may change with no
        other event (a request reaching C{maxQueueWait}, a TTL expiring),
        or L{None}.
    """

    decisions: tuple = ()
    queued: tuple = ()
    swaps: tuple = ()
    wakeAt: Optional[float] = None


def _earliest(a: Optional[float], b: float) -> float:
    return b if a is None or b < a else a


def decide(
    pending: Sequence[Pending],
    models: Mapping[str, ModelView],
    planner,
    now: float,
    maxQueueWait: float,
    retiring: bool = False,
) -> Plan:
    """
    Decide what to do now; see the module docstring for the rules.

    @param pending: the waiting requests, in arrival order.
    @param models: every model id the requests may name -> its L{ModelView}.
    @param planner: an L{llamaswap.interfaces.ISwapPlanner}.
    @param now: the current time, on the clock of C{Pending.arrived}.
    @param maxQueueWait: seconds the oldest request of a target may wait
        before the models blocking it are closed; C{0} for no bound.
    @param retiring: processes of a previous configuration are still
        stopping (they may hold any port): nothing is started.

    @return: a L{Plan}.
    @raise KeyError: when a request names a model missing from C{models}.
    """
    decisions: List[Decision] = []
    queued: List[Hashable] = []
    swaps: List[Swap] = []
    wakeAt: Optional[float] = None

    wanted = {p.model for p in pending}
    live = frozenset(m for m, view in models.items() if view.state in LIVE)
    # Models being stopped: already stopping, or stopped by this plan.
    stopping = {m for m, view in models.items() if view.state == "stopping"}
    dispatched: Dict[str, int] = {}
    # Targets of this pass, oldest first -> whether their start is under
    # way (starting, or Start decided).
    targets: Dict[str, bool] = {}
    # A target's first request decides for all its others: joined or queued.
    joined: Dict[str, bool] = {}
    closed: Dict[str, Close] = {}

    def busy(m: str) -> bool:
        view = models[m]
        if m in stopping:
            return False
        if view.state == "ready":
            return view.inFlight + dispatched.get(m, 0) > 0
        if view.state == "starting":
            return m in wanted
        return False

    for p in pending:
        m = p.model
        view = models[m]

        # Rule 1: the fast path.
        if view.state == "ready" and m not in stopping:
            cutoff = closed[m].since if m in closed else None
            open_ = cutoff is None or p.arrived < cutoff
            free = not p.lease or view.inFlight + dispatched.get(m, 0) < view.concurrency
            if open_ and free:
                decisions.append(Dispatch(p.id, m))
                if p.lease:
                    dispatched[m] = dispatched.get(m, 0) + 1
            else:
                queued.append(p.id)
            continue
        if view.state == "ready":
            # Being stopped by an older target's swap: wait for it to go.
            queued.append(p.id)
            continue

        # Later requests of a target share its first request's fate.
        if m in joined:
            if not joined[m]:
                queued.append(p.id)
            continue

        # Rule 2: a new target.
        if view.state == "starting":
            targets[m] = True
            joined[m] = True
            continue
        running = live | frozenset(targets)
        evict = frozenset(planner.evictionFor(m, running)) - {m}

        # Rule 3: collisions with older targets.
        collides = any(e in targets for e in evict) or any(
            not started and m in planner.evictionFor(other, running | {m})
            for other, started in targets.items()
        )
        targets[m] = False
        if collides:
            joined[m] = False
            queued.append(p.id)
            continue

        # Rule 4: drain, stop, start.
        forced = False
        if any(busy(e) for e in evict):
            # Rule 5: the bound on waiting, and on draining.
            forced = maxQueueWait > 0 and now + EPSILON >= p.arrived + 2 * maxQueueWait
        if any(busy(e) for e in evict) and not forced:
            joined[m] = False
            queued.append(p.id)
            if maxQueueWait > 0:
                deadline = p.arrived + maxQueueWait
                if now + EPSILON >= deadline:
                    for e in sorted(evict):
                        if models[e].state in ("ready", "starting") and e not in stopping:
                            if e not in closed or closed[e].since > deadline:
                                closed[e] = Close(e, m, deadline)
                    wakeAt = _earliest(wakeAt, deadline + maxQueueWait)
                else:
                    wakeAt = _earliest(wakeAt, deadline)
            continue
        joined[m] = True
        toStop = sorted(
            e for e in evict if models[e].state in ("ready", "starting") and e not in stopping
        )
        for e in toStop:
            decisions.append(Stop(e, m, forced=forced and busy(e)))
            stopping.add(e)
        started = (
            not retiring
            and view.state not in LIVE
            and not any(models[e].state in LIVE for e in evict)
        )
        if started:
            decisions.append(Start(m))
            targets[m] = True
        if toStop or started:
            swaps.append(Swap(m, evict, running))

    decisions.extend(closed[m] for m in sorted(closed))

    # Rule 6: TTL.
    for m in sorted(models):
        view = models[m]
        if (
            view.state != "ready"
            or view.ttl <= 0
            or view.idleSince is None
            or view.inFlight
            or m in wanted
            or m in stopping
        ):
            continue
        expires = view.idleSince + view.ttl
        if now + EPSILON >= expires:
            decisions.append(Stop(m, None))
            stopping.add(m)
        else:
            wakeAt = _earliest(wakeAt, expires)

    return Plan(tuple(decisions), tuple(queued), tuple(swaps), wakeAt)
