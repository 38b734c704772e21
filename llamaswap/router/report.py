# -*- test-case-name: tests.test_router -*-
"""
What the router works with and reports: the machine protocol, the
L{IRouterReport} that ignores everything, and what a reconfigure did.
"""

from __future__ import annotations

from typing import Optional, Protocol

import attr
from twisted.internet.defer import Deferred
from zope.interface import implementer

from llamaswap.errors import ShuttingDown
from llamaswap.interfaces import IRouterReport
from llamaswap.router.scheduler import LIVE

__all__ = ["Machine", "RouterObserver", "Reconfigured", "runningRecords", "preloadAll"]


class Machine(Protocol):
    """
    What the router needs of one model's upstream (an
    L{llamaswap.upstream.UpstreamMachine}).
    """

    # Read-only: the machine's own properties.
    @property
    def modelId(self) -> str:
        ...

    @property
    def state(self) -> str:
        ...

    @property
    def pid(self) -> Optional[int]:
        ...

    @property
    def failure(self) -> Optional[dict]:
        ...

    def start(self) -> Deferred[None]:
        ...

    def stop(self, grace: Optional[float] = None) -> Deferred[None]:
        ...


@implementer(IRouterReport)
class RouterObserver:
    """
    What the router reports as it works (see L{IRouterReport}); this one
    ignores it all.
    """

    def stopBegan(self, modelId: str, why: str) -> None:
        pass

    def stopEnded(self, modelId: str) -> None:
        pass

    def loadBegan(self, modelId: str, pid: Optional[int], port: Optional[int]) -> None:
        pass

    def ready(self, modelId: str, seconds: float) -> None:
        pass

    def failed(self, modelId: str, failure: dict) -> None:
        pass

    def inFlight(self, modelId: str, count: int, total: int) -> None:
        pass

    def queueDepth(self, modelId: str, queued: int, total: int) -> None:
        pass

    def idle(self, modelId: str, lastUsed: Optional[float], unloadAt: Optional[float]) -> None:
        pass

    def progress(self, modelId: str, progress: Optional[dict]) -> None:
        pass

    def swapDone(self, modelId: str, seconds: float) -> None:
        pass


@attr.s(frozen=True, auto_attribs=True)
class Reconfigured:
    """
    What L{RouterService.reconfigure} did, by model id.

    @ivar kept: models whose machine was kept (those running keep running,
        with their in-flight and waiting requests).
    @ivar restarted: running models whose launch settings changed: stopped,
        and started again on their next request.
    @ivar added: models new to the config.
    @ivar removed: models the config no longer has (stopped if running).
    @ivar running: the kept models that are running (not stopped or failed).
    @ivar changed: models not running (stopped or failed) whose launch
        settings changed: they got a new machine, which starts with the new
        settings on their next request.
    """

    kept: tuple = ()
    restarted: tuple = ()
    added: tuple = ()
    removed: tuple = ()
    running: tuple = ()
    changed: tuple = ()


def runningRecords(router) -> list:
    """
    @return: the C{/running} records of a L{RouterService}: one per model
        with a process (starting, ready or stopping), sorted by id.
    """
    out = []
    for modelId, machine in sorted(router.machines.items()):
        if machine.state not in LIVE:
            continue
        model = router.config.models[modelId]
        out.append(
            {
                "model": modelId,
                "state": machine.state,
                "cmd": model.cmd,
                "proxy": model.proxy,
                "ttl": model.ttl,
                "name": model.name,
                "description": model.description,
                "inFlight": router.ledger.inFlight(modelId),
                "queued": router.ledger.queued(modelId),
                "pid": machine.pid,
                "port": getattr(model, "port", None),
                "since": getattr(machine, "since", None),
                "lastUsed": router.lastUsed(modelId),
                "unloadAt": router.unloadAt(modelId),
                "failure": getattr(machine, "failure", None),
                "progress": router.progressOf(modelId),
            }
        )
    return out


async def preloadAll(router, modelIds) -> None:
    """
    Load C{modelIds} one after the other through C{router} (a failure is
    logged and the next is loaded), until the router shuts down.
    """
    log = router.log
    for modelId in modelIds:
        if router.draining:
            return
        began = router.clock.seconds()
        try:
            await router.load(modelId)
        except ShuttingDown:
            return
        except Exception as e:
            log.error("failed to preload model {model}: {why}", model=modelId,
                      why=getattr(e, "message", None) or repr(e))
        else:
            log.info("preloaded model {model} in {seconds:.3f}s", model=modelId,
                     seconds=router.clock.seconds() - began)
