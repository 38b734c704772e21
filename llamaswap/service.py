"""
Builds the service tree of a running llamaswap from a validated config.
"""

from __future__ import annotations

from twisted.application import strports
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.web.server import Site

from llamaswap.proxy.relay import UpstreamAgents
from llamaswap.router.router import RouterService
from llamaswap.upstream import HealthProbe, Launcher, UpstreamMachine
from llamaswap.upstream.process import becomeSubreaper
from llamaswap.web.app import LlamaSwapAPI


class _Housekeeping(Service):
    """
    Process-wide chores: become the reaper of orphaned grandchildren on
    start; close idle upstream connections on stop.
    """

    log = Logger()
    name = "housekeeping"

    def __init__(self, launcher: Launcher, agents: UpstreamAgents, probe: HealthProbe) -> None:
        self._launcher = launcher
        self._agents = agents
        self._probe = probe

    def startService(self) -> None:
        super().startService()
        if becomeSubreaper():
            self.log.debug("reaping orphaned upstream processes as a subreaper")

    def stopService(self) -> Deferred[None]:
        super().stopService()
        ds = [self._agents.closeAll()]
        closed = self._probe.close()
        if isinstance(closed, Deferred):
            ds.append(closed)
        return gatherResults(ds, consumeErrors=True).addCallback(lambda _: None)


def makeRootService(config, reactor, listen: str, launcher: Launcher | None = None) -> MultiService:
    """
    @param config: a validated L{llamaswap.config.Config}.
    @param reactor: the reactor everything runs on.
    @param listen: a Twisted server endpoint description.
    @param launcher: spawns upstream processes (a real L{Launcher} unless
        given).

    @return: the root L{MultiService}: housekeeping, the router (which owns
        every upstream process) and the web server, started in that order
        and stopped in reverse, so the port closes first and the daemon
        exits only once every upstream process group is gone.
    """
    root = MultiService()
    launcher = launcher if launcher is not None else Launcher(reactor)
    probe = HealthProbe(reactor)
    agents = UpstreamAgents(reactor)
    _Housekeeping(launcher, agents, probe).setServiceParent(root)

    def stateChanged(modelId: str, old: str, new: str) -> None:
        if new in ("stopped", "failed"):
            agents.reset(modelId)

    def machineFactory(model, onExit) -> UpstreamMachine:
        return UpstreamMachine(
            model,
            reactor=reactor,
            launcher=launcher,
            probe=probe,
            healthCheckTimeout=config.healthCheckTimeout,
            onStateChange=stateChanged,
            onExit=onExit,
        )

    router = RouterService(config, reactor=reactor, machineFactory=machineFactory)
    router.setServiceParent(root)
    api = LlamaSwapAPI(config, router, agents, clock=reactor)
    site = Site(api.resource())
    site.displayTracebacks = False
    web = strports.service(listen, site, reactor=reactor)
    web.setName("web")
    web.setServiceParent(root)
    return root
