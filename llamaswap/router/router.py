# -*- test-case-name: tests.test_router,tests.test_web -*-
"""
The router: the single owner of "which model runs, which request waits".

L{RouterService} owns the upstream machines, and trusts each machine's own
state; its L{Ledger} holds the waiting requests, the admission counts and the
leases.  Every event (a request arrived or was cancelled, a lease was
released, an upstream became ready, failed, exited or stopped, the wake-up
timer fired, an unload, a reconfigure, a shutdown) is recorded in a line or
two and followed by L{RouterService._step}, which asks the pure
L{llamaswap.router.scheduler.decide} what to do and applies its decisions.
Everything runs in the reactor thread; C{_step} only guards against
re-entrancy.  What happens is told to an L{IRouterReport}.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Dict, Hashable, List, Optional, Set

import attr
from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from llamaswap.errors import (
    ModelStartFailed, ModelUnloaded, ShuttingDown, TooManyRequests, UnknownModel)
from llamaswap.interfaces import ISwapPlanner
from llamaswap.router.ledger import Drain, Lease, Ledger, Waiter
from llamaswap.router.memory import RouterMemory
from llamaswap.router.phases import PhaseBook
from llamaswap.router.report import (
    Machine, Reconfigured, RouterObserver, preloadAll, runningRecords)
from llamaswap.router.scheduler import (
    LIVE, Close, Dispatch, ModelView, Pending, Plan, Start, Stop, decide)
from llamaswap.upstream.exits import StartAborted, UpstreamStartError

__all__ = ["Machine", "Lease", "RouterService", "RouterObserver", "Reconfigured"]


@attr.s(eq=False)
class _StopInProgress:
    """One stop of one machine, however many callers wait for it."""

    began: float = attr.ib()
    why: str = attr.ib()
    waiters: List[Deferred] = attr.ib(factory=list)
    windows: List[list] = attr.ib(factory=list)  # [began, ended] stop windows to close


class RouterService(Service):
    """
    Owns the upstream machines of every local model and grants leases.

    @ivar machines: model id -> its machine.
    @ivar planner: the L{ISwapPlanner} in use.
    @ivar ledger: the L{Ledger} of waiting requests and leases (read it,
        never write it).
    @ivar observer: the L{IRouterReport} told what happens.
    @ivar memory: the L{RouterMemory} (the memory planner's manager).
    """

    log = Logger()
    name = "router"  # type: ignore[assignment]  # Twisted types Service.name as None

    def __init__(
        self,
        config,
        *,
        reactor: IReactorTime,
        machineFactory: Callable[[object, Callable[[str, object], None]], Machine],
        planner: object = None,
        observer: object = None,
        memory: object = None,
    ) -> None:
        """
        @param config: the validated L{llamaswap.config.Config}.
        @param reactor: provides C{IReactorTime}; its C{seconds()} are also
            the epoch seconds reported to the observer.
        @param machineFactory: called as C{machineFactory(model, onExit)} to
            build the machine of one L{ModelConfig}; the machine calls
            C{onExit(modelId, reason)} when its process exits on its own.
        @param planner: the L{ISwapPlanner} to use; by default
            C{ISwapPlanner(config.swap)}.
        @param observer: an L{IRouterReport}, told what happens (metrics
            and the UI); by default a L{RouterObserver} that ignores it.
        @param memory: the L{MemoryManager
            <llamaswap.memory.manager.MemoryManager>}, or a callable that
            returns the current one (a reload replaces it), or L{None}: see
            L{RouterMemory}.
        """
        self.config = config
        self._reactor = reactor
        self._machineFactory = machineFactory
        self.observer = observer if observer is not None else RouterObserver()
        self.planner = planner if planner is not None else ISwapPlanner(config.swap)
        self.memory = RouterMemory(memory)
        self.machines: Dict[str, Machine] = {}
        self.ledger = Ledger()
        for modelId, model in config.models.items():
            self.machines[modelId] = self._build(model)
            self.ledger.addModel(modelId)
        # Machines of models a reconfigure removed or replaced, still
        # stopping: nothing starts before they are gone (their ports).
        self._retiring: Set[Machine] = set()
        self._retired: List[Deferred[None]] = []
        self._ids = itertools.count(1)
        self._depths: Dict[str, int] = {}
        self._idleSince: Dict[str, float] = {}
        self._lastUsed: Dict[str, float] = {}
        self._progress: Dict[str, dict] = {}
        self._closed: Dict[str, Close] = {}
        self._swaps: Dict[str, float] = {}  # target -> when its swap began
        self.phaseBook = PhaseBook()
        self._stops: Dict[str, _StopInProgress] = {}
        self._wake: Optional[IDelayedCall] = None
        self._wakeAt: Optional[float] = None
        self._stepping = False
        self._again = False
        self._drain = Drain(reactor, self.ledger)
        self._forced = False
        self._shuttingDown = False
        self._preloading: Optional[Deferred] = None
        self._lastPlan = Plan()

    def _build(self, model) -> Machine:
        cell: List[Machine] = []
        machine = self._machineFactory(
            model, lambda modelId, reason: self.upstreamExited(modelId, reason, cell[0]))
        cell.append(machine)
        return machine

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
        @raise ShuttingDown: the router is stopping or draining.
        @raise TooManyRequests: the model's C{concurrencyLimit} requests are
            already admitted (waiting or in flight).
        """
        modelId = self.config.resolve(name)
        if modelId is None or modelId not in self.machines:
            raise UnknownModel("no router for requested model")
        if self.draining:
            raise ShuttingDown("llamaswap is shutting down")
        limit = self.config.models[modelId].concurrencyLimit
        if limited and self.ledger.admitted(modelId) >= limit:
            raise TooManyRequests("Too many requests")
        return self._enqueue(modelId, True, onQueuePosition)

    def load(self, name: str) -> Deferred[None]:
        """
        Make the model called C{name} ready the way a request would (it
        queues, swaps and drains like one), without holding a lease.

        @return: a cancellable L{Deferred} that fires with L{None} once the
            model is ready, or fails like L{acquire}'s.

        @raise UnknownModel: C{name} is no local model (C{model not found}).
        @raise ShuttingDown: the router is stopping or draining.
        """
        modelId = self.config.resolve(name)
        if modelId is None or modelId not in self.machines:
            raise UnknownModel("model not found")
        if self.draining:
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

    def unloadAt(self, modelId: str) -> Optional[float]:
        """
        @return: when C{modelId}'s TTL will stop it (reactor seconds), or
            L{None} (no TTL, not ready, busy or wanted).
        """
        machine = self.machines.get(modelId)
        ttl = self.config.models[modelId].ttl if modelId in self.config.models else 0
        since = self._idleSince.get(modelId)
        if (machine is None or machine.state != "ready" or ttl <= 0 or since is None
                or self.ledger.inFlight(modelId) or self.ledger.queued(modelId)):
            return None
        return since + ttl

    def loadProgress(self, modelId: str, progress: Optional[dict]) -> None:
        """
        How far C{modelId}'s load is (see L{IRouterReport.progress}), or
        L{None} once it is over: kept for L{runningModels} and reported.
        """
        if progress is None:
            if self._progress.pop(modelId, None) is None:
                return
        else:
            self._progress[modelId] = progress
        self._tell("progress", modelId, progress)

    @property
    def clock(self) -> IReactorTime:
        return self._reactor

    def lastUsed(self, modelId: str) -> Optional[float]:
        """
        @return: when C{modelId} last took or finished a request, or L{None}.
        """
        return self._lastUsed.get(modelId)

    def progressOf(self, modelId: str) -> Optional[dict]:
        """
        @return: C{modelId}'s load progress, or L{None} when not loading.
        """
        return self._progress.get(modelId)

    def runningModels(self) -> List[dict]:
        """
        @return: one record per model with a process (starting, ready or
            stopping: not stopped or failed), sorted by id, in the shape of
            the reference's C{/running} plus C{inFlight}, C{queued}, C{pid},
            C{port}, C{since}, C{lastUsed}, C{unloadAt}, C{failure},
            C{progress} and, with the memory planner, C{memory}.
        """
        return self.memory.withRecords(runningRecords(self))

    def reconfigure(self, config, keep: Callable[[object, object], bool]) -> Reconfigured:
        """
        Switch to C{config} in place (a reload).  A model whose launch
        settings did not change keeps its machine, running or not, with its
        in-flight and waiting requests.  A running model whose settings
        changed is stopped (its requests in flight are cut, as a stop cuts
        them) and gets a new machine, started on its next request; so does a
        model that is not running.  A removed model is stopped and its
        waiting requests fail with L{ModelUnloaded}.  Until every stopped
        process is gone, nothing starts: a new or changed model may well get
        a port an old process still holds.  A changed model that was not
        running is reported as C{changed}, a running one as C{restarted}.

        @param keep: C{keep(old, new)} says whether the machine of a model
            whose config went from C{old} to C{new} may keep running.
        @return: what was done, as a L{Reconfigured}.
        """
        old = self.config
        kept, restarted, changed, added, removed, running = [], [], [], [], [], []
        for modelId in sorted(set(old.models) | set(config.models)):
            machine = self.machines.get(modelId)
            new = config.models.get(modelId)
            if new is None:
                removed.append(modelId)
                self._retire(modelId)
                self._failWaiters(modelId, ModelUnloaded(
                    f"unspecific error: {modelId}: the model was removed from the configuration"))
                self.ledger.removeModel(modelId)
                continue
            if machine is None:
                added.append(modelId)
            elif keep(old.models[modelId], new) and modelId not in self._stops:
                kept.append(modelId)
                if machine.state not in ("stopped", "failed"):
                    running.append(modelId)
                continue
            elif machine.state not in ("stopped", "failed"):
                restarted.append(modelId)
                self._retire(modelId)
            else:
                changed.append(modelId)
            self.machines[modelId] = self._build(new)
            self.ledger.addModel(modelId)
        self.config = config
        self.planner = ISwapPlanner(config.swap)
        self._closed = {}
        self._step()
        return Reconfigured(tuple(kept), tuple(restarted), tuple(added), tuple(removed),
                            tuple(running), tuple(changed))

    def _retire(self, modelId: str) -> None:
        """
        Take C{modelId}'s machine out of service: stop it (joining a stop
        in progress), its leases in flight no longer count.
        """
        machine = self.machines.pop(modelId)
        self.ledger.detach(modelId)
        self._idleSince.pop(modelId, None)
        stop = self._stops.pop(modelId, None)
        if machine.state in ("stopped", "failed") and stop is None:
            return
        self._retiring.add(machine)
        self.log.info("[{model}] stopping (reload)", model=modelId)
        self._tell("stopBegan", modelId, "reload")
        d: Deferred = machine.stop()

        def gone(result: object) -> None:
            self._retiring.discard(machine)
            self._retired.remove(d)
            if isinstance(result, Failure):
                self.log.failure("[{model}] stopping failed", result, model=modelId)
            self._step()

        self._retired.append(d)
        d.addBoth(gone)

    def drain(self, timeout: float) -> Deferred[bool]:
        """
        Take no new requests, and let those in flight and those waiting
        (for a model that is starting, say) finish, for at most C{timeout}
        seconds.

        @return: a L{Deferred} that fires with C{True} once nothing waits
            and nothing is in flight, or with C{False} after C{timeout}
            seconds or on L{force}.
        """
        return self._drain.begin(timeout)

    @property
    def draining(self) -> bool:
        """
        Whether a L{drain} (a shutdown) began: no new request is taken.
        """
        return self._drain.began or self._shuttingDown

    def force(self) -> None:
        """
        End a L{drain} now, and make the shutdown's stops kill at once (no
        C{unloadTimeout} grace), those in progress included.
        """
        self._forced = True
        self._drain.end(False)
        if self._shuttingDown:
            for machine in [*self.machines.values(), *self._retiring]:
                if machine.state in LIVE:
                    machine.stop(0).addErrback(
                        lambda f: self.log.failure("forcing a stop", f))

    # -- IService ---------------------------------------------------------

    def startService(self) -> None:
        """
        Start, and load the models of C{hooks.on_startup.preload} one after
        the other, in the background (a failure is logged, never raised).
        """
        super().startService()
        preload = tuple(self.config.hooks.preload)
        if preload:
            d = Deferred.fromCoroutine(preloadAll(self, preload))
            d.addErrback(lambda f: self.log.failure("preload", f))
            self._preloading = d

    def stopService(self) -> Deferred[None]:
        """
        Fail every waiting request with L{ShuttingDown} and stop every
        upstream in parallel.

        @return: a L{Deferred} that fires with L{None} once every process
            group is gone (those a reconfigure was stopping included).
        """
        super().stopService()
        self._shuttingDown = True
        self._setWake(None)
        self._drain.end(False)
        for waiter in self.ledger.withdrawAll():
            waiter.deferred.errback(ShuttingDown("llamaswap is shutting down"))
        stops = [self._stopModel(m, "shutdown") for m in sorted(self.machines)]
        d = gatherResults([*stops, *self._retired], consumeErrors=True)
        return d.addCallback(lambda _: self.log.info("all upstreams stopped"))

    # -- events -----------------------------------------------------------

    def _enqueue(
        self, modelId: str, lease: bool, onQueuePosition: Optional[Callable[[int], None]]
    ) -> Deferred:
        now = self._reactor.seconds()
        if lease and self._quiet(modelId, 0):
            # Nothing waits, its model ready with room: decide's rule 1,
            # without a queue entry.
            self.ledger.admit(modelId)
            return succeed(self._lend(modelId, now, now))
        waiter = Waiter(next(self._ids), modelId, now, lease, onQueuePosition)
        waiter.deferred = Deferred(lambda d: self._cancelled(waiter))
        self.ledger.enqueue(waiter)
        self._step()
        return waiter.deferred

    def _quiet(self, modelId: str, queued: int) -> bool:
        """
        @return: whether C{queued} requests wait, and C{modelId} is ready,
            open and has a free slot: a plan would only dispatch it.
        """
        return (not self._stepping and self.ledger.queued() == queued and not self._closed
                and self.machines[modelId].state == "ready" and modelId not in self._stops
                and self.ledger.inFlight(modelId) < self.config.models[modelId].concurrencyLimit)

    def _cancelled(self, waiter: Waiter) -> None:
        if not self.ledger.withdraw(waiter):
            return
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

    def _releaseLease(self, lease: Lease) -> None:
        modelId = lease.modelId
        if not self.ledger.release(lease):
            self._step()  # a lease of a replaced machine: counts nowhere
            return
        now = self._reactor.seconds()
        self._lastUsed[modelId] = now
        self._tell("inFlight", modelId, self.ledger.inFlight(modelId), self.ledger.inFlight())
        if self.ledger.inFlight(modelId) == 0:
            self._idleSince[modelId] = now
        if self.ledger.inFlight(modelId) and self._quiet(modelId, 0):
            self._drain.check()  # nothing waits, no TTL runs: no plan changes
        else:
            self._step()
        self._tell("idle", modelId, now, self.unloadAt(modelId))

    def _started(self, _: object, machine: Machine, startedAt: float, swapBegan: float) -> None:
        modelId = machine.modelId
        if self.machines.get(modelId) is not machine:
            return
        now = self._reactor.seconds()
        self.phaseBook.loadEnded(modelId, now)
        self._idleSince[modelId] = now
        self.log.info(
            "[{model}] ready: start took {start:.3f}s, swap {swap:.3f}s",
            model=modelId,
            start=now - startedAt,
            swap=now - swapBegan,
        )
        self._tell("ready", modelId, now - startedAt)
        self._tell("swapDone", modelId, now - swapBegan)
        self._step()
        self._tell("idle", modelId, self._lastUsed.get(modelId), self.unloadAt(modelId))

    def _startFailed(
        self, reason: Failure, machine: Machine, startedAt: float, swapBegan: float
    ) -> None:
        modelId = machine.modelId
        if self.machines.get(modelId) is not machine:
            return
        self.phaseBook.loadEnded(modelId, self._reactor.seconds())
        if reason.check(StartAborted):
            self.log.info("[{model}] start aborted by a stop", model=modelId)
            self._step()
            return
        error = reason.value
        message = getattr(error, "message", None) or reason.getErrorMessage()
        self.log.error(
            "[{model}] failed to start after {seconds:.3f}s: {why}",
            model=modelId,
            seconds=self._reactor.seconds() - startedAt,
            why=message,
        )
        record = error.record() if isinstance(error, UpstreamStartError) else {
            "reason": message, "exitCode": None, "lastLines": []}
        self._tell("failed", modelId, record)
        if machine.state in LIVE:
            # Still taking the failed process down: learn when it is gone.
            self._stopModel(modelId, "failed start")
        if self.memory.retryAfterOom(modelId, record):
            self._swaps.setdefault(modelId, swapBegan)  # its waiters keep waiting
            self._step()
            return
        client = error.clientMessage() if isinstance(error, UpstreamStartError) else (
            f"upstream failed to start: {message}")
        # Last: the waiters' callbacks may well ask for the model again.
        self._failWaiters(modelId, ModelStartFailed(client))
        self._step()

    def upstreamExited(self, modelId: str, reason: object,
                       machine: Optional[Machine] = None) -> None:
        """
        The process of C{modelId} exited on its own (it crashed).  Its
        in-flight requests fail on their own (the relay sees the connection
        drop); the model no longer counts as live once its process group is
        gone, and the next request for it starts it again.

        @param machine: the machine that reported it; the exit of a machine
            a reconfigure replaced is ignored.
        """
        current = self.machines.get(modelId)
        if current is None or (machine is not None and machine is not current):
            return
        self.log.warn(
            "[{model}] upstream exited unexpectedly: {reason}", model=modelId, reason=reason
        )
        if current.state in LIVE:
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
                    self.ledger.tellPositions(self._lastPlan.queued)
        finally:
            self._stepping = False
        self._drain.check()

    def _plan(self) -> Plan:
        now = self._reactor.seconds()
        views = {}
        for modelId, machine in self.machines.items():
            model = self.config.models[modelId]
            views[modelId] = ModelView(
                state=machine.state,
                inFlight=self.ledger.inFlight(modelId),
                concurrency=model.concurrencyLimit,
                ttl=model.ttl,
                idleSince=self._idleSince.get(modelId),
            )
        pending = [Pending(w.id, w.modelId, w.arrived, w.lease) for w in self.ledger.waiting()]
        planner = self.memory.plannerFor(self.planner, views, {p.model for p in pending})
        plan = decide(pending, views, planner, now, self.config.maxQueueWait,
                      retiring=bool(self._retiring))
        self._lastPlan = plan
        return plan

    def _apply(self, plan: Plan) -> None:
        now = self._reactor.seconds()
        byId: Dict[Hashable, Waiter] = {w.id: w for w in self.ledger.waiting()}
        grants = []
        closed: Dict[str, Close] = {}
        machineWork = []
        for decision in plan.decisions:
            if isinstance(decision, Dispatch):
                waiter = byId.pop(decision.requestId, None)
                if waiter is not None:
                    grants.append(waiter)
            elif isinstance(decision, Close):
                closed[decision.model] = decision
            else:
                machineWork.append(decision)
        self.ledger.granted(grants)
        granted = [(waiter, self._grant(waiter, now)) for waiter in grants]
        self._updateClosed(closed, now)
        for swap in plan.swaps:
            if swap.target not in self._swaps:
                self._swaps[swap.target] = now
                self._explain(swap.target, swap.running)
        for decision in machineWork:
            if isinstance(decision, Stop):
                self._applyStop(decision, now)
            elif isinstance(decision, Start):
                self._startModel(decision.model, now)
        wanted = {w.modelId for w in self.ledger.waiting()}
        for target in [t for t in self._swaps if t not in wanted]:
            del self._swaps[target]
        self._setWake(plan.wakeAt)
        self._reportDepths()
        for waiter, lease in granted:
            waiter.deferred.callback(lease)

    def _applyStop(self, decision: Stop, now: float) -> None:
        if decision.forModel is None:
            self.log.info(
                "[{model}] Unloading model, TTL of {ttl}s reached",
                model=decision.model,
                ttl=self.config.models[decision.model].ttl,
            )
            why = "ttl"
        elif decision.forced:
            self.log.warn(
                "[{model}] closed for {target} but its {count} requests in flight did not "
                "drain within another {limit}s: stopping it anyway",
                model=decision.model, target=decision.forModel,
                count=self.ledger.inFlight(decision.model), limit=self.config.maxQueueWait)
            why = f"making room for {decision.forModel}; requests in flight did not drain"
        else:
            why = f"making room for {decision.forModel}"
        self._stopModel(decision.model, why)
        stop = self._stops.get(decision.model)
        if decision.forModel is not None and stop is not None:
            stop.windows.append(self.phaseBook.stopBegan(decision.forModel, now))

    def _reportDepths(self) -> None:
        depths: Dict[str, int] = {}
        for waiter in self.ledger.waiting():
            depths[waiter.modelId] = depths.get(waiter.modelId, 0) + 1
        total = sum(depths.values())
        for modelId in sorted(set(depths) | set(self._depths)):
            if depths.get(modelId, 0) != self._depths.get(modelId, 0):
                self._tell("queueDepth", modelId, depths.get(modelId, 0), total)
        self._depths = depths

    def _grant(self, waiter: Waiter, now: float) -> Optional[Lease]:
        modelId = waiter.modelId
        waited = now - waiter.arrived
        if waited >= 0.001:
            self.log.info(
                "[{model}] request waited {seconds:.3f}s", model=modelId, seconds=waited
            )
        if not waiter.lease:
            # A load holds nothing: plan again (the model may now be idle,
            # with a TTL to run), and count its idle time from now.
            if self.ledger.inFlight(modelId) == 0:
                self._idleSince[modelId] = now
            self._again = True
            return None
        return self._lend(modelId, waiter.arrived, now)

    def _lend(self, modelId: str, arrived: float, now: float) -> Lease:
        """
        @return: a new lease on C{modelId} for a request that arrived at
            C{arrived} and is dispatched C{now}, counted in flight.
        """
        lease = Lease(
            modelId,
            self.config.models[modelId].proxy,
            self._releaseLease,
            arrived=arrived,
            dispatched=now,
            phases=self.phaseBook.phases(modelId, arrived, now),
        )
        self.ledger.lend(lease)
        self._lastUsed[modelId] = now
        self._tell("inFlight", modelId, self.ledger.inFlight(modelId), self.ledger.inFlight())
        self._tell("idle", modelId, now, None)  # busy: no TTL runs
        return lease

    def _explain(self, target: str, running) -> None:
        planner: Any = self.memory.planner or self.planner
        try:
            line = planner.explain(target, running)
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
            machine = self.machines.get(modelId)
            if modelId not in closed and machine is not None and machine.state == "ready":
                self.log.info("[{model}] open to new requests again", model=modelId)
        self._closed = closed

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
        machine = self.machines[modelId]
        if machine.state not in ("stopped", "failed"):
            return
        swapBegan = self._swaps.pop(modelId, now)
        self.phaseBook.loadBegan(modelId, now)
        self.log.info("[{model}] starting", model=modelId)
        d = machine.start()
        self._tell("loadBegan", modelId, machine.pid,
                   getattr(self.config.models[modelId], "port", None))
        d.addCallbacks(
            self._started,
            self._startFailed,
            callbackArgs=(machine, now, swapBegan),
            errbackArgs=(machine, now, swapBegan),
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
        stop = _StopInProgress(self._reactor.seconds(), why, [waiter])
        self._stops[modelId] = stop
        self.log.info("[{model}] stopping ({why})", model=modelId, why=why)
        self._tell("stopBegan", modelId, why)
        d = machine.stop(0 if self._forced else None)
        d.addBoth(self._stopped, modelId, stop)
        d.addErrback(lambda f: self.log.failure("[{model}] handling a stop", f, model=modelId))
        return waiter

    def _stopped(self, result: object, modelId: str, stop: _StopInProgress) -> None:
        for window in stop.windows:
            window[1] = self._reactor.seconds()
        if isinstance(result, Failure):
            self.log.failure("[{model}] stopping failed", result, model=modelId)
        for waiter in stop.waiters:
            waiter.callback(None)
        if self._stops.get(modelId) is not stop:
            return  # retired by a reconfigure, which reports its end
        del self._stops[modelId]
        self._idleSince.pop(modelId, None)
        self.log.info(
            "[{model}] stopped in {seconds:.3f}s ({why})",
            model=modelId,
            seconds=self._reactor.seconds() - stop.began,
            why=stop.why,
        )
        self._tell("stopEnded", modelId)
        self._step()

    def _failWaiters(self, modelId: str, error: Exception) -> None:
        for waiter in self.ledger.withdrawAll(modelId):
            waiter.deferred.errback(error)
