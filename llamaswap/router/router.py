# -*- test-case-name: tests.test_router,tests.test_web -*-
"""
The router: the single owner of "which model runs, which request waits".

L{RouterService} owns all of the routing state: the waiting requests with
their arrival times, the upstream machines, the in-flight count of every
model, the models closed to new requests, the swaps and stops in progress
and the one timer that wakes it (for a request reaching C{maxQueueWait} or
a model's TTL).  Every event handler records its event in one line or two
and calls L{RouterService._step}, which asks the pure
L{llamaswap.router.scheduler.decide} what to do and applies its decisions to
the machines.  Everything runs in the reactor thread, so no locks are
needed; C{_step} only guards against re-entrancy (an event that happens
while decisions are being applied makes it run the scheduler once more).

The events: a request arrived (L{RouterService.acquire},
L{RouterService.load}) or was cancelled; a lease was released; an upstream
became ready, failed to start, exited on its own or finished stopping; the
wake-up timer fired; an unload was asked; the service stops.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Callable, Deque, Dict, List, Optional, Protocol

import attr
from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from llamaswap.errors import (
    ModelStartFailed,
    ModelUnloaded,
    ShuttingDown,
    TooManyRequests,
    UnknownModel,
)
from llamaswap.interfaces import ISwapPlanner
from llamaswap.router.scheduler import (
    LIVE,
    Close,
    Dispatch,
    ModelView,
    Pending,
    Plan,
    Start,
    Stop,
    decide,
)

__all__ = ["Machine", "Lease", "RouterService"]


class Machine(Protocol):
    """
    What the router needs of one model's upstream (an
    L{llamaswap.upstream.UpstreamMachine}).
    """

    modelId: str
    state: str
    pid: Optional[int]

    def start(self) -> Deferred[None]:
        ...

    def stop(self, grace: Optional[float] = None) -> Deferred[None]:
        ...


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


class RouterObserver:
    """
    What the router reports as it works; this one ignores it all.
    """

    def swapDone(self, modelId: str, seconds: float) -> None:
        """
        C{modelId} became ready, C{seconds} after its swap began.
        """

    def inflightChanged(self, total: int) -> None:
        """
        C{total} requests are now in flight, over every model.
        """

    def queueDepth(self, depth: int) -> None:
        """
        C{depth} requests (and loads) now wait for their models.
        """


@attr.s(eq=False)
class _Waiter:
    """
    A request (or a load) waiting for its model.

    @ivar lease: C{True} for L{RouterService.acquire} (it will hold a slot),
        C{False} for L{RouterService.load}.
    @ivar position: the queue position last reported, or L{None}.
    """

    id: int = attr.ib()
    modelId: str = attr.ib()
    arrived: float = attr.ib()
    lease: bool = attr.ib()
    onQueuePosition: Optional[Callable[[int], None]] = attr.ib(repr=False)
    deferred: Deferred = attr.ib(default=None, repr=False)
    position: Optional[int] = attr.ib(default=None)


@attr.s(eq=False)
class _StopInProgress:
    """
    One stop of one machine, however many callers wait for it.
    """

    began: float = attr.ib()
    why: str = attr.ib()
    waiters: List[Deferred] = attr.ib(factory=list)
    windows: List[list] = attr.ib(factory=list)  # [began, ended] stop windows to close


class RouterService(Service):
    """
    Owns the upstream machines of every local model and grants leases.

    @ivar machines: model id -> its machine.
    @ivar planner: the L{ISwapPlanner} in use.
    """

    log = Logger()
    name = "router"

    def __init__(
        self,
        config,
        *,
        reactor: IReactorTime,
        machineFactory: Callable[[object, Callable[[str, object], None]], Machine],
        planner: object = None,
        observer: object = None,
        adopted: Optional[Dict[str, tuple]] = None,
        startAfter: Optional[Deferred] = None,
    ) -> None:
        """
        @param config: the validated L{llamaswap.config.Config}.
        @param reactor: provides C{IReactorTime}.
        @param machineFactory: called as C{machineFactory(model, onExit)} to
            build the machine of one L{ModelConfig}; the machine calls
            C{onExit(modelId, reason)} when its process exits on its own.
        @param planner: the L{ISwapPlanner} to use; by default
            C{ISwapPlanner(config.swap)}.
        @param adopted: machines taken over from the previous router (see
            L{handOver}): model id -> C{(machine, exit cell)}.
        @param startAfter: fires once the previous router's machines are
            stopped (their ports free); no machine starts before.
        @param observer: told what happens, for metrics and the UI:
            C{swapDone(modelId, seconds)}, C{inflightChanged(total)} and
            C{queueDepth(n)}; see L{RouterObserver}.
        """
        self.config = config
        self._reactor = reactor
        self.observer = observer if observer is not None else RouterObserver()
        self.planner = planner if planner is not None else ISwapPlanner(config.swap)
        adopted = adopted or {}
        # Each machine reports its exits through a cell naming its router,
        # so that a machine handed to the next router (a config reload)
        # reports to that one.
        self._exitCells: Dict[str, list] = {}
        self.machines: Dict[str, Machine] = {}
        for modelId, model in config.models.items():
            if modelId in adopted:
                machine, cell = adopted[modelId]
                cell[0] = self
            else:
                cell = [self]
                machine = machineFactory(
                    model, lambda m, reason, cell=cell: cell[0].upstreamExited(m, reason))
            self.machines[modelId] = machine
            self._exitCells[modelId] = cell
        self._startAfter = startAfter
        if startAfter is not None:
            startAfter.addBoth(lambda _: self._step())
        self._ids = itertools.count(1)
        self._pending: List[_Waiter] = []
        self._leases: set = set()
        self._lastDepth = 0
        self._inFlight: Dict[str, int] = {m: 0 for m in self.machines}
        self._admitted: Dict[str, int] = {m: 0 for m in self.machines}
        self._idleSince: Dict[str, float] = {
            modelId: reactor.seconds() for modelId in adopted
            if self.machines[modelId].state == "ready"
        }
        self._closed: Dict[str, Close] = {}
        self._swaps: Dict[str, float] = {}  # target -> when its swap began
        self._starts: Dict[str, float] = {}  # model -> when its start began
        # Recent [began, ended] windows, for the phases of each lease: other
        # models stopping to make room for a model, and the model loading.
        self._stopWindows: Dict[str, Deque[list]] = {}
        self._loadWindows: Dict[str, Deque[list]] = {}
        self._aborted: set = set()  # starts that our own stop aborted
        self._stops: Dict[str, _StopInProgress] = {}
        self._wake: Optional[IDelayedCall] = None
        self._wakeAt: Optional[float] = None
        self._stepping = False
        self._again = False
        self._shuttingDown = False
        self._preloading: Optional[Deferred] = None
        self._lastPlan = Plan()

    # -- public API -------------------------------------------------------

    def acquire(
        self,
        name: str,
        onQueuePosition: Optional[Callable[[int], None]] = None,
        limited: bool = True,
    ) -> Deferred[Lease]:
        """
        Wait until the model called C{name} (an id or an alias) is ready and
        may take one more request.

        @param limited: whether the model's C{concurrencyLimit} applies
            (C{/upstream/...} passthrough requests are not limited).
        @param onQueuePosition: called with the request's 1-based position
            in the queue each time it changes while the request waits behind
            others (not while it only waits for its own model to load).

        @return: a cancellable L{Deferred} that fires with a L{Lease}, or
            fails with L{ModelStartFailed} (the upstream could not be made
            ready; the message holds why), L{ModelUnloaded} or
            L{ShuttingDown}.  Cancelling it (the client went away) removes
            the request from the queue; a model no other request wants is
            then never started for it.

        @raise UnknownModel: C{name} is no local model.
        @raise ShuttingDown: the router is stopping.
        @raise TooManyRequests: the model's C{concurrencyLimit} requests are
            already admitted (waiting or in flight).
        """
        modelId = self.config.resolve(name)
        if modelId is None or modelId not in self.machines:
            raise UnknownModel("no router for requested model")
        if self._shuttingDown:
            raise ShuttingDown("llamaswap is shutting down")
        if limited and self._admitted[modelId] >= self.config.models[modelId].concurrencyLimit:
            raise TooManyRequests("Too many requests")
        self._admitted[modelId] += 1
        return self._enqueue(modelId, True, onQueuePosition)

    def load(self, name: str) -> Deferred[None]:
        """
        Make the model called C{name} ready the way a request would (it
        queues, swaps and drains like one), without holding a lease.

        @return: a cancellable L{Deferred} that fires with L{None} once the
            model is ready, or fails like L{acquire}'s.

        @raise UnknownModel: C{name} is no local model (C{model not found}).
        @raise ShuttingDown: the router is stopping.
        """
        modelId = self.config.resolve(name)
        if modelId is None or modelId not in self.machines:
            raise UnknownModel("model not found")
        if self._shuttingDown:
            raise ShuttingDown("llamaswap is shutting down")
        return self._enqueue(modelId, False, None)

    def unload(self, modelId: Optional[str] = None) -> Deferred[None]:
        """
        Stop one model (an id or an alias), or every model.  Requests and
        loads waiting for it fail with L{ModelUnloaded}; in-flight requests
        are not waited for; the queue is then re-evaluated.

        @return: a L{Deferred} that fires with L{None} once the processes
            are gone (each stopped with its C{unloadTimeout} grace).

        @raise UnknownModel: C{modelId} is no local model.
        """
        if modelId is None:
            targets = sorted(self.machines)
        else:
            resolved = self.config.resolve(modelId)
            if resolved is None or resolved not in self.machines:
                raise UnknownModel("model not found")
            targets = [resolved]
        live = [t for t in targets if self.machines[t].state != "stopped"]
        if live:
            self.log.info("unloading {models}", models=" ".join(live))
        # Stop first, so that a waiter's callback that asks for the model
        # again finds it going away and waits for it.
        stops = [self._stopModel(target, "unload") for target in targets]
        for target in targets:
            self._failWaiters(target, ModelUnloaded(f"unspecific error: {target}: model unloaded"))
        self._step()
        return gatherResults(stops, consumeErrors=True).addCallback(lambda _: None)

    def isReady(self, modelId: str) -> bool:
        """
        @return: whether the model C{modelId}'s upstream is ready.
        """
        machine = self.machines.get(modelId)
        return machine is not None and machine.state == "ready"

    def runningModels(self) -> List[dict]:
        """
        @return: one record per model that is not stopped, sorted by id, in
            the shape of the reference's C{/running} plus C{inFlight} and
            C{pid}.
        """
        out = []
        for modelId, machine in sorted(self.machines.items()):
            if machine.state == "stopped":
                continue
            model = self.config.models[modelId]
            out.append(
                {
                    "model": modelId,
                    "state": machine.state,
                    "cmd": model.cmd,
                    "proxy": model.proxy,
                    "ttl": model.ttl,
                    "name": model.name,
                    "description": model.description,
                    "inFlight": self._inFlight[modelId],
                    "pid": machine.pid,
                }
            )
        return out

    # -- IService ---------------------------------------------------------

    def startService(self) -> None:
        """
        Start, and load the models of C{hooks.on_startup.preload} one after
        the other, in the background (a failure is logged, never raised).
        """
        super().startService()
        preload = tuple(self.config.hooks.preload)
        if preload:
            d = Deferred.fromCoroutine(self._preload(preload))
            d.addErrback(lambda f: self.log.failure("preload", f))
            self._preloading = d

    async def _preload(self, modelIds) -> None:
        for modelId in modelIds:
            if self._shuttingDown:
                return
            began = self._reactor.seconds()
            try:
                await self.load(modelId)
            except ShuttingDown:
                return
            except Exception as e:
                self.log.error(
                    "failed to preload model {model}: {why}",
                    model=modelId,
                    why=getattr(e, "message", None) or repr(e),
                )
            else:
                self.log.info(
                    "preloaded model {model} in {seconds:.3f}s",
                    model=modelId,
                    seconds=self._reactor.seconds() - began,
                )

    def stopService(self) -> Deferred[None]:
        """
        Fail every waiting request with L{ShuttingDown} and stop every
        upstream in parallel.

        @return: a L{Deferred} that fires with L{None} once every process
            group is gone.
        """
        super().stopService()
        for waiter in self._retire():
            waiter.deferred.errback(ShuttingDown("llamaswap is shutting down"))
        stops = [self._stopModel(m, "shutdown") for m in sorted(self.machines)]
        d = gatherResults(stops, consumeErrors=True)
        d.addCallback(lambda _: self.log.info("all upstreams stopped"))
        return d

    def _retire(self) -> List[_Waiter]:
        """
        Take no more requests and make no more decisions.

        @return: the requests that were waiting (their slots given back),
            for the caller to fail.
        """
        self._shuttingDown = True
        self._setWake(None)
        pending, self._pending = self._pending, []
        for waiter in pending:
            if waiter.lease:
                self._admitted[waiter.modelId] -= 1
        return pending

    def handOver(self, config, keep: Callable[[object, object], bool]) -> Dict[str, tuple]:
        """
        Retire this router for a new config (a reload): it takes no new
        requests and makes no more decisions; waiting requests fail with
        L{ModelUnloaded}; machines the new config keeps are handed over,
        with their in-flight requests; the others are stopped.

        @param config: the new config.
        @param keep: C{keep(old, new)} says whether the machine of a model
            whose config went from C{old} to C{new} may keep running.

        @return: the C{adopted} mapping for the next router's constructor.
            Once that router exists, call L{adoptLeases} with it.
        """
        pending = self._retire()
        adopted = {}
        for modelId, machine in list(self.machines.items()):
            new = config.models.get(modelId)
            if new is not None and keep(self.config.models[modelId], new) and (
                    modelId not in self._stops):
                adopted[modelId] = (machine, self._exitCells[modelId])
                del self.machines[modelId]
        self._handedOver = set(adopted)
        for waiter in pending:
            waiter.deferred.errback(ModelUnloaded(
                f"unspecific error: {waiter.modelId}: the configuration was reloaded"))
        return adopted

    def adoptLeases(self, successor: "RouterService") -> Deferred[None]:
        """
        Give C{successor} the in-flight requests of the machines it adopted
        (their release now counts there), and stop every machine this
        router kept.

        @return: a L{Deferred} that fires once those are stopped.
        """
        for lease in list(self._leases):
            if lease.modelId in getattr(self, "_handedOver", ()):
                self._leases.discard(lease)
                self._inFlight[lease.modelId] -= 1
                successor._takeLease(lease)
        stops = [self._stopModel(m, "reload") for m in sorted(self.machines)]
        return gatherResults(stops, consumeErrors=True).addCallback(lambda _: None)

    def _takeLease(self, lease: Lease) -> None:
        lease._onRelease = self._releaseLease
        self._leases.add(lease)
        self._inFlight[lease.modelId] += 1
        self._admitted[lease.modelId] += 1
        self._tell("inflightChanged", sum(self._inFlight.values()))

    # -- events -----------------------------------------------------------

    def _enqueue(
        self, modelId: str, lease: bool, onQueuePosition: Optional[Callable[[int], None]]
    ) -> Deferred:
        waiter = _Waiter(
            next(self._ids), modelId, self._reactor.seconds(), lease, onQueuePosition
        )
        waiter.deferred = Deferred(lambda d: self._cancelled(waiter))
        self._pending.append(waiter)
        self._step()
        return waiter.deferred

    def _cancelled(self, waiter: _Waiter) -> None:
        if waiter not in self._pending:
            return
        self._pending.remove(waiter)
        if waiter.lease:
            self._admitted[waiter.modelId] -= 1
        self.log.debug(
            "[{model}] waiting request cancelled after {seconds:.3f}s",
            model=waiter.modelId,
            seconds=self._reactor.seconds() - waiter.arrived,
        )
        self._step()

    def _tell(self, what: str, *args: object) -> None:
        try:
            getattr(self.observer, what)(*args)
        except Exception:
            self.log.failure("router observer {what}", what=what)

    def _release(self, lease: Lease) -> None:
        modelId = lease.modelId
        self._inFlight[modelId] -= 1
        self._tell("inflightChanged", sum(self._inFlight.values()))
        self._admitted[modelId] -= 1
        if self._inFlight[modelId] == 0:
            self._idleSince[modelId] = self._reactor.seconds()
        self._step()

    def _closeLoadWindow(self, modelId: str, now: float) -> None:
        windows = self._loadWindows.get(modelId)
        if windows and windows[-1][1] is None:
            windows[-1][1] = now

    def _started(self, _: object, modelId: str, startedAt: float, swapBegan: float) -> None:
        self._starts.pop(modelId, None)
        now = self._reactor.seconds()
        self._closeLoadWindow(modelId, now)
        self._idleSince[modelId] = now
        self.log.info(
            "[{model}] ready: start took {start:.3f}s, swap {swap:.3f}s",
            model=modelId,
            start=now - startedAt,
            swap=now - swapBegan,
        )
        self._step()

    def _startFailed(
        self, reason: Failure, modelId: str, startedAt: float, swapBegan: float
    ) -> None:
        self._starts.pop(modelId, None)
        self._closeLoadWindow(modelId, self._reactor.seconds())
        if modelId in self._aborted:
            self._aborted.discard(modelId)
            self.log.info("[{model}] start aborted by a stop", model=modelId)
            self._step()
            return
        message = getattr(reason.value, "message", None) or reason.getErrorMessage()
        self.log.error(
            "[{model}] failed to start after {seconds:.3f}s: {why}",
            model=modelId,
            seconds=self._reactor.seconds() - startedAt,
            why=message,
        )
        if self.machines[modelId].state in LIVE:
            # Still taking the failed process down: learn when it is gone.
            self._stopModel(modelId, "failed start")
        # Last: the waiters' callbacks may well ask for the model again.
        self._failWaiters(modelId, ModelStartFailed(f"unspecific error: {message}"))
        self._step()

    def upstreamExited(self, modelId: str, reason: object) -> None:
        """
        The process of C{modelId} exited on its own (it crashed).  Its
        in-flight requests fail on their own (the relay sees the connection
        drop); the model no longer counts as live once its process group is
        gone, and the next request for it starts it again.
        """
        self.log.warn(
            "[{model}] upstream exited unexpectedly: {reason}", model=modelId, reason=reason
        )
        if self.machines[modelId].state in LIVE:
            self._stopModel(modelId, "exited")
        self._step()

    def _woke(self) -> None:
        self._wake = None
        self._wakeAt = None
        self._step()

    # -- the one place decisions are applied ------------------------------

    def _step(self) -> None:
        """
        Ask the scheduler what to do and do it, until no event happened
        meanwhile.
        """
        if self._stepping:
            self._again = True
            return
        self._stepping = True
        try:
            self._again = True
            while self._again and not self._shuttingDown:
                self._again = False
                self._apply(self._plan())
                if not self._again:
                    self._reportPositions(self._lastPlan)
        finally:
            self._stepping = False

    def _plan(self) -> Plan:
        now = self._reactor.seconds()
        views = {}
        for modelId, machine in self.machines.items():
            model = self.config.models[modelId]
            views[modelId] = ModelView(
                state=machine.state,
                inFlight=self._inFlight[modelId],
                concurrency=model.concurrencyLimit,
                ttl=model.ttl,
                idleSince=self._idleSince.get(modelId),
            )
        pending = [Pending(w.id, w.modelId, w.arrived, w.lease) for w in self._pending]
        plan = decide(pending, views, self.planner, now, self.config.maxQueueWait)
        self._lastPlan = plan
        return plan

    def _apply(self, plan: Plan) -> None:
        now = self._reactor.seconds()
        byId = {w.id: w for w in self._pending}
        grants = []
        closed: Dict[str, Close] = {}
        machineWork = []
        for decision in plan.decisions:
            if isinstance(decision, Dispatch):
                waiter = byId.pop(decision.requestId, None)
                if waiter is not None:
                    grants.append(self._grant(waiter, now))
            elif isinstance(decision, Close):
                closed[decision.model] = decision
            else:
                machineWork.append(decision)
        if grants:
            granted = {id(w) for w, _ in grants}
            self._pending = [w for w in self._pending if id(w) not in granted]
        self._updateClosed(closed, now)
        for swap in plan.swaps:
            if swap.target not in self._swaps:
                self._swaps[swap.target] = now
                self._explain(swap.target, swap.running)
        for decision in machineWork:
            if isinstance(decision, Stop):
                if decision.forModel is None:
                    self.log.info(
                        "[{model}] Unloading model, TTL of {ttl}s reached",
                        model=decision.model,
                        ttl=self.config.models[decision.model].ttl,
                    )
                    why = "ttl"
                else:
                    why = f"making room for {decision.forModel}"
                self._stopModel(decision.model, why)
                stop = self._stops.get(decision.model)
                if decision.forModel is not None and stop is not None:
                    window = [now, None]
                    self._stopWindows.setdefault(
                        decision.forModel, deque(maxlen=8)).append(window)
                    stop.windows.append(window)
            elif isinstance(decision, Start):
                self._startModel(decision.model, now)
        wanted = {w.modelId for w in self._pending}
        for target in [t for t in self._swaps if t not in wanted]:
            del self._swaps[target]
        self._setWake(plan.wakeAt)
        if len(self._pending) != self._lastDepth:
            self._lastDepth = len(self._pending)
            self._tell("queueDepth", self._lastDepth)
        for waiter, lease in grants:
            waiter.deferred.callback(lease)

    def _grant(self, waiter: _Waiter, now: float):
        modelId = waiter.modelId
        waited = now - waiter.arrived
        if waited >= 0.001:
            self.log.info(
                "[{model}] request waited {seconds:.3f}s", model=modelId, seconds=waited
            )
        if not waiter.lease:
            # A load holds nothing: plan again (the model may now be idle,
            # with a TTL to run), and count its idle time from now.
            if self._inFlight[modelId] == 0:
                self._idleSince[modelId] = now
            self._again = True
            return waiter, None
        self._inFlight[modelId] += 1
        self._tell("inflightChanged", sum(self._inFlight.values()))
        lease = Lease(
            modelId,
            self.config.models[modelId].proxy,
            self._releaseLease,
            arrived=waiter.arrived,
            dispatched=now,
            phases=self._phases(modelId, waiter.arrived, now),
        )
        self._leases.add(lease)
        return waiter, lease

    def _releaseLease(self, lease: Lease) -> None:
        self._leases.discard(lease)
        self._release(lease)

    def _phases(self, modelId: str, arrived: float, dispatched: float) -> Dict[str, float]:
        """
        @return: how a request for C{modelId} that waited from C{arrived}
            to C{dispatched} spent that time: other models stopping for
            C{modelId}, C{modelId} loading, and the rest queueing.
        """

        def overlap(windows) -> float:
            total = 0.0
            for began, ended in windows:
                ended = dispatched if ended is None else ended
                total += max(0.0, min(ended, dispatched) - max(began, arrived))
            return total

        stop = overlap(self._stopWindows.get(modelId, ()))
        load = overlap(self._loadWindows.get(modelId, ()))
        waited = max(0.0, dispatched - arrived)
        stop, load = min(stop, waited), min(load, max(0.0, waited - stop))
        return {"queue": max(0.0, waited - stop - load), "stop": stop, "load": load}

    def _explain(self, target: str, running) -> None:
        try:
            line = self.planner.explain(target, running)
        except Exception:
            self.log.failure("[{model}] explaining a swap", model=target)
            return
        self.log.info("{explanation}", explanation=line, model=target)

    def _updateClosed(self, closed: Dict[str, Close], now: float) -> None:
        for modelId, close in closed.items():
            if modelId not in self._closed:
                self.log.info(
                    "[{model}] closed to new requests: a request for {target} "
                    "has waited {seconds:.3f}s (maxQueueWait {limit}s)",
                    model=modelId,
                    target=close.forModel,
                    seconds=now - (close.since - self.config.maxQueueWait),
                    limit=self.config.maxQueueWait,
                )
        for modelId in self._closed:
            if modelId not in closed and self.machines[modelId].state == "ready":
                self.log.info("[{model}] open to new requests again", model=modelId)
        self._closed = closed

    def _reportPositions(self, plan: Plan) -> None:
        positions = {requestId: i + 1 for i, requestId in enumerate(plan.queued)}
        for waiter in list(self._pending):
            position = positions.get(waiter.id)
            if position == waiter.position:
                continue
            waiter.position = position
            if position is not None and waiter.onQueuePosition is not None:
                try:
                    waiter.onQueuePosition(position)
                except Exception:
                    self.log.failure("[{model}] onQueuePosition", model=waiter.modelId)

    def _setWake(self, at: Optional[float]) -> None:
        if at == self._wakeAt and (at is None or self._wake is not None):
            return
        if self._wake is not None and self._wake.active():
            self._wake.cancel()
        self._wake = None
        self._wakeAt = at
        if at is not None:
            delay = max(0.0, at - self._reactor.seconds())
            self._wake = self._reactor.callLater(delay, self._woke)

    # -- machines ---------------------------------------------------------

    def _startModel(self, modelId: str, now: float) -> None:
        if self._startAfter is not None and not self._startAfter.called:
            return  # the previous config's processes are still stopping
        machine = self.machines[modelId]
        if machine.state not in ("stopped", "failed") or modelId in self._starts:
            return
        swapBegan = self._swaps.pop(modelId, now)
        self._starts[modelId] = now
        window = [now, None]
        self._loadWindows.setdefault(modelId, deque(maxlen=4)).append(window)
        self._aborted.discard(modelId)
        self.log.info("[{model}] starting", model=modelId)
        d = machine.start()
        d.addCallbacks(
            self._started,
            self._startFailed,
            callbackArgs=(modelId, now, swapBegan),
            errbackArgs=(modelId, now, swapBegan),
        )
        d.addErrback(lambda f: self.log.failure("[{model}] handling a start", f, model=modelId))

    def _stopModel(self, modelId: str, why: str) -> Deferred[None]:
        """
        Stop C{modelId}'s machine with its C{unloadTimeout} grace, or join
        the stop in progress.

        @return: a L{Deferred} that fires with L{None} once the machine's
            process group is gone (at once when it is stopped or failed).
        """
        machine = self.machines[modelId]
        stop = self._stops.get(modelId)
        waiter: Deferred[None] = Deferred()
        if stop is not None:
            stop.waiters.append(waiter)
            return waiter
        if machine.state in ("stopped", "failed"):
            return succeed(None)
        if modelId in self._starts:
            self._aborted.add(modelId)
        stop = _StopInProgress(self._reactor.seconds(), why, [waiter])
        self._stops[modelId] = stop
        self.log.info("[{model}] stopping ({why})", model=modelId, why=why)
        d = machine.stop()
        d.addBoth(self._stopped, modelId, stop)
        d.addErrback(lambda f: self.log.failure("[{model}] handling a stop", f, model=modelId))
        return waiter

    def _stopped(self, result: object, modelId: str, stop: _StopInProgress) -> None:
        if self._stops.get(modelId) is stop:
            del self._stops[modelId]
        for window in stop.windows:
            window[1] = self._reactor.seconds()
        if isinstance(result, Failure):
            self.log.failure("[{model}] stopping failed", result, model=modelId)
        self._idleSince.pop(modelId, None)
        self.log.info(
            "[{model}] stopped in {seconds:.3f}s ({why})",
            model=modelId,
            seconds=self._reactor.seconds() - stop.began,
            why=stop.why,
        )
        for waiter in stop.waiters:
            waiter.callback(None)
        self._step()

    def _failWaiters(self, modelId: str, error: Exception) -> None:
        failed = [w for w in self._pending if w.modelId == modelId]
        if not failed:
            return
        self._pending = [w for w in self._pending if w.modelId != modelId]
        for waiter in failed:
            if waiter.lease:
                self._admitted[modelId] -= 1
        for waiter in failed:
            waiter.deferred.errback(error)
