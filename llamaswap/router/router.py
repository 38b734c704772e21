"""
The router: the single owner of "which model runs, which request waits".

Every state change happens in L{RouterService._step}, called after every
event: a request arrived or was cancelled, a lease was released, an upstream
became ready, failed or exited, a TTL fired, an unload was asked.  Everything
runs in the reactor thread, so no locks are needed; C{_step} only guards
against re-entrancy.

This is the single-model form: at most one model is live at a time (the
reference's default for models outside any group).  A request for another
model waits until the in-flight requests of the live one have finished, then
the live one is stopped and the requested one started.  While such a swap is
pending, new requests for the live model queue behind it instead of taking
the fast path, so a steady stream for one model cannot starve another.
"""

from __future__ import annotations

from typing import Callable, Protocol

import attr
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from llamaswap.errors import (
    ModelStartFailed,
    ModelUnloaded,
    ShuttingDown,
    TooManyRequests,
    UnknownModel,
)


class Machine(Protocol):
    """
    What the router needs of one model's upstream (an UpstreamMachine).
    """

    modelId: str
    state: str
    pid: int | None

    def start(self) -> Deferred[None]:
        ...

    def stop(self, grace: float | None = None) -> Deferred[None]:
        ...


@attr.s(eq=False)
class Lease:
    """
    Permission to send one request to a ready upstream.

    @ivar modelId: the model the lease is for.
    @ivar baseURL: the upstream's base URL (the model's C{proxy}).
    """

    modelId: str = attr.ib()
    baseURL: str = attr.ib()
    _onRelease: Callable[["Lease"], None] = attr.ib(repr=False)
    released: bool = attr.ib(default=False)

    def release(self) -> None:
        """
        Give the lease back; idempotent.
        """
        if not self.released:
            self.released = True
            self._onRelease(self)


@attr.s(eq=False)
class _Pending:
    modelId: str = attr.ib()
    deferred: Deferred = attr.ib()
    arrived: float = attr.ib()


class RouterService(Service):
    """
    Owns the upstream machines of every local model and grants leases.

    @param config: the validated L{llamaswap.config.Config}.
    @param reactor: provides C{IReactorTime}.
    @param machineFactory: called as C{machineFactory(model, onExit)} to
        build the machine of one L{ModelConfig}; the machine calls
        C{onExit(modelId, reason)} when its process exits on its own.
    """

    log = Logger()
    name = "router"

    def __init__(
        self,
        config,
        *,
        reactor: IReactorTime,
        machineFactory: Callable[[object, Callable[[str, object], None]], Machine],
    ) -> None:
        self.config = config
        self._reactor = reactor
        self.machines: dict[str, Machine] = {
            modelId: machineFactory(model, self.upstreamExited)
            for modelId, model in config.models.items()
        }
        self._pending: list[_Pending] = []
        self._inFlight: dict[str, int] = {m: 0 for m in self.machines}
        self._admitted: dict[str, int] = {m: 0 for m in self.machines}
        self._ttlTimers: dict[str, object] = {}
        self._active: str | None = None
        self._busy = False  # a start or stop is in progress
        self._stepping = False
        self._again = False
        self._shuttingDown = False
        self._stopping: dict[str, Deferred[None]] = {}

    # -- public API -------------------------------------------------------

    def acquire(self, name: str) -> Deferred[Lease]:
        """
        Wait until the model called C{name} (an id or an alias) is ready and
        may take one more request.

        @return: a cancellable L{Deferred} that fires with a L{Lease}, or
            fails with L{UnknownModel}, L{TooManyRequests} (at once, when
            the model's C{concurrencyLimit} is reached), L{ModelStartFailed},
            L{ModelUnloaded} or L{ShuttingDown}.  Cancelling it (the client
            went away) removes the request from the queue.
        """
        modelId = self.config.resolve(name)
        if modelId is None or modelId not in self.machines:
            raise UnknownModel("no router for requested model")
        if self._shuttingDown:
            raise ShuttingDown("llamaswap is shutting down")
        model = self.config.models[modelId]
        if self._admitted[modelId] >= model.concurrencyLimit:
            raise TooManyRequests("Too many requests")
        self._admitted[modelId] += 1
        self._cancelTTL(modelId)

        def cancel(d: Deferred[Lease]) -> None:
            self._pending = [p for p in self._pending if p.deferred is not d]
            self._admitted[modelId] -= 1
            self._scheduleTTL(modelId)
            self._step()

        d: Deferred[Lease] = Deferred(cancel)
        self._pending.append(_Pending(modelId, d, self._reactor.seconds()))
        self._step()
        return d

    def runningModels(self) -> list[dict]:
        """
        @return: one record per model that is not stopped, sorted by id, in
            the shape of the reference's C{/running} plus C{inFlight}.
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

    def unload(self, modelId: str | None = None) -> Deferred[None]:
        """
        Stop one model, or every model.  Requests waiting for a model that
        is being unloaded fail with L{ModelUnloaded}; in-flight requests are
        not waited for.

        @return: a L{Deferred} that fires once the processes are gone.
        """
        targets = list(self.machines) if modelId is None else [modelId]
        for target in targets:
            self._cancelTTL(target)
            self._failPending(
                target, ModelUnloaded(f"unspecific error: {target}: model unloaded")
            )
        ds = [self._stopModel(target) for target in targets]
        return gatherResults(ds, consumeErrors=True).addCallback(lambda _: None)

    # -- IService ---------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        """
        Fail every waiting request and stop every upstream.

        @return: a L{Deferred} that fires once every process group is gone.
        """
        super().stopService()
        self._shuttingDown = True
        for modelId in list(self._ttlTimers):
            self._cancelTTL(modelId)
        pending, self._pending = self._pending, []
        for p in pending:
            p.deferred.errback(ShuttingDown("llamaswap is shutting down"))
        ds = [self._stopModel(m) for m in self.machines]
        d = gatherResults(ds, consumeErrors=True)
        d.addCallback(lambda _: self.log.info("all upstreams stopped"))
        return d

    # -- events -----------------------------------------------------------

    def _release(self, lease: Lease) -> None:
        modelId = lease.modelId
        self._inFlight[modelId] -= 1
        self._admitted[modelId] -= 1
        self._scheduleTTL(modelId)
        self._step()

    def upstreamExited(self, modelId: str, reason: object) -> None:
        """
        The process of C{modelId} exited on its own (it crashed): forget it
        so that the next request starts it again.
        """
        self.log.warn("[{model}] upstream exited unexpectedly: {reason}",
                      model=modelId, reason=reason)
        if self._active == modelId and not self._busy:
            self._active = None
        self._step()

    # -- decisions --------------------------------------------------------

    def _step(self) -> None:
        if self._stepping:
            self._again = True
            return
        self._stepping = True
        try:
            self._again = True
            while self._again:
                self._again = False
                self._decide()
        finally:
            self._stepping = False

    def _decide(self) -> None:
        if self._shuttingDown or self._busy:
            return
        active = self._active
        if active is not None and self.machines[active].state != "ready":
            # It crashed or was unloaded behind our back.
            self._active = active = None
        # Dispatch to the ready model, unless an older request for another
        # model is waiting: then the ready model takes no new requests.
        if active is not None:
            oldest = self._pending[0] if self._pending else None
            if oldest is None:
                return
            if oldest.modelId == active:
                self._dispatchAll(active)
                return
        if not self._pending:
            return
        target = self._pending[0].modelId
        if active is not None and active != target:
            if self._inFlight[active] > 0:
                return  # wait for it to drain
            self._swap(active, target)
            return
        # Nothing is live except perhaps a leftover (crashed or unloaded)
        # machine: start the target.
        self._swap(None, target)

    def _dispatchAll(self, modelId: str) -> None:
        model = self.config.models[modelId]
        keep = []
        for p in self._pending:
            if p.modelId == modelId:
                self._inFlight[modelId] += 1
                p.deferred.callback(Lease(modelId, model.proxy, self._release))
            else:
                keep.append(p)
        self._pending = keep

    def _swap(self, old: str | None, target: str) -> None:
        self._busy = True
        self._active = None
        others = [m for m, machine in self.machines.items()
                  if m != target and (m == old or machine.state != "stopped")]
        if others:
            self.log.info("swapping {old} -> {new}", old=",".join(others), new=target)
        stops = [self._stopModel(m) for m in others]
        d = gatherResults(stops, consumeErrors=True)
        d.addCallback(lambda _: self.machines[target].start())

        def started(_: object) -> None:
            self._busy = False
            self._active = target
            self._step()

        def failed(f: Failure) -> None:
            self._busy = False
            self._active = None
            if f.check(CancelledError):
                self._step()
                return
            message = getattr(f.value, "message", None) or str(f.value)
            self.log.error("[{model}] failed to start: {why}", model=target, why=message)
            self._failPending(target, ModelStartFailed(f"unspecific error: {message}"))
            self._step()

        d.addCallbacks(started, failed)
        d.addErrback(lambda f: self.log.failure("router swap", f))

    def _failPending(self, modelId: str, error: Exception) -> None:
        keep = []
        failed = []
        for p in self._pending:
            (failed if p.modelId == modelId else keep).append(p)
        self._pending = keep
        for p in failed:
            p.deferred.errback(error)

    def _stopModel(self, modelId: str) -> Deferred[None]:
        self._cancelTTL(modelId)
        if modelId in self._stopping:
            return self._stopping[modelId]
        machine = self.machines[modelId]
        if machine.state in ("stopped", "failed"):
            return succeed(None)
        if self._active == modelId:
            self._active = None
        d = machine.stop()
        self._stopping[modelId] = d

        def done(result: object) -> object:
            self._stopping.pop(modelId, None)
            self._step()
            return result

        d.addBoth(done)
        return d

    # -- TTL --------------------------------------------------------------

    def _scheduleTTL(self, modelId: str) -> None:
        ttl = self.config.models[modelId].ttl
        if ttl <= 0 or self._admitted[modelId] > 0 or self._shuttingDown:
            return
        self._cancelTTL(modelId)
        self._ttlTimers[modelId] = self._reactor.callLater(ttl, self._ttlExpired, modelId)

    def _cancelTTL(self, modelId: str) -> None:
        timer = self._ttlTimers.pop(modelId, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _ttlExpired(self, modelId: str) -> None:
        self._ttlTimers.pop(modelId, None)
        machine = self.machines[modelId]
        if self._admitted[modelId] > 0 or machine.state != "ready":
            return
        self.log.info("[{model}] Unloading model, TTL of {ttl}s reached",
                      model=modelId, ttl=self.config.models[modelId].ttl)
        self._stopModel(modelId).addErrback(
            lambda f: self.log.failure("[{model}] TTL unload", f, model=modelId))
