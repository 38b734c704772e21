"""
Builds the service tree of a running llamaswap from a validated config.
"""

from __future__ import annotations

from twisted.application import strports
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.web.server import Request, Site

from llamaswap.observe.observatory import Observatory
from llamaswap.proxy.relay import UpstreamAgents
from llamaswap.router.router import RouterService
from llamaswap.upstream import HealthProbe, Launcher, UpstreamMachine
from llamaswap.upstream.process import becomeSubreaper
from llamaswap.web.app import LlamaSwapAPI


class LlamaSwapRequest(Request):
    """
    A request that notes when it arrived (for the access log).
    """

    arrived: float | None = None


class AccessLoggingSite(Site):
    """
    A L{Site} that logs one line per request in the reference's format,
    C{Request <ip> "<METHOD> <path> <proto>" <status> <bytes> "<ua>" <dur>},
    where the IP is the first C{X-Forwarded-For} entry, else C{X-Real-IP},
    else the peer; requests for C{/wol-health}, C{/api/performance} and
    C{/metrics} are not logged (SPEC.md section 3.11).
    """

    accessLog = Logger(namespace="llamaswap.access")
    quietPrefixes = (b"/wol-health", b"/api/performance", b"/metrics")

    requestFactory = LlamaSwapRequest

    def __init__(self, resource, clock) -> None:
        # Leave bodies alone: twisted.web would otherwise parse every form
        # body into request.args (a multipart upload read whole into memory,
        # again); llamaswap reads the bodies it needs itself.
        super().__init__(resource, parsePOSTFormSubmission=False)
        self.clock = clock
        self.displayTracebacks = False
        self.noisy = False

    def getResourceFor(self, request):
        request.arrived = self.clock.seconds()
        return super().getResourceFor(request)

    def log(self, request) -> None:  # type: ignore[override]
        path = request.path or b""
        if path.startswith(self.quietPrefixes):
            return
        forwarded = (request.getHeader(b"x-forwarded-for") or b"").split(b",")[0].strip()
        ip = forwarded or (request.getHeader(b"x-real-ip") or b"").strip()
        if not ip:
            peer = request.getClientAddress()
            ip = getattr(peer, "host", "-")
        ip = ip.decode("latin-1") if isinstance(ip, bytes) else ip
        started = getattr(request, "arrived", None)
        duration = 0.0 if started is None else self.clock.seconds() - started
        method = request.method.decode("latin-1")
        uri = request.uri.decode("latin-1")
        agent = (request.getHeader(b"user-agent") or b"").decode("latin-1")
        # Formatted here once: every observer (stdout, /logs) formats the
        # event again, and a single field costs far less than eight.
        line = (
            f'Request {ip} "{method} {uri} {request.clientproto.decode("latin-1")}" '
            f'{request.code} {request.sentLength} "{agent}" {_goDuration(duration)}'
        )
        self.accessLog.info("{line}", line=line, ip=ip, method=method, uri=uri,
                            status=request.code, size=request.sentLength, duration=duration)


def _goDuration(seconds: float) -> str:
    """
    @return: C{seconds} written like Go's C{time.Duration}: C{812.5ms},
        C{1.2s}, C{45µs}.
    """
    if seconds >= 1:
        return f"{seconds:.3g}s"
    if seconds >= 0.001:
        return f"{seconds * 1e3:.4g}ms"
    return f"{seconds * 1e6:.4g}µs"


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


def makeRootService(
    config, reactor, listen: str, launcher: Launcher | None = None, daemon: bool = False
) -> MultiService:
    """
    @param config: a validated L{llamaswap.config.Config}.
    @param reactor: the reactor everything runs on.
    @param listen: a Twisted server endpoint description.
    @param launcher: spawns upstream processes (a real L{Launcher} unless
        given).
    @param daemon: this is the process's own llamaswap (run by twistd):
        C{logLevel} and C{logToStdout} then also shape twistd's log.

    @return: the root L{MultiService}: housekeeping, the observatory (logs,
        events, metrics), the router (which owns every upstream process)
        and the web server, started in that order and stopped in reverse,
        so the port closes first and the daemon exits only once every
        upstream process group is gone.
    """
    root = MultiService()
    launcher = launcher if launcher is not None else Launcher(reactor)
    probe = HealthProbe(reactor)
    agents = UpstreamAgents(reactor)
    _Housekeeping(launcher, agents, probe).setServiceParent(root)
    observatory = Observatory(config, reactor, shapeOwnLog=daemon)
    observatory.setServiceParent(root)

    def stateChanged(modelId: str, old: str, new: str) -> None:
        if new in ("stopped", "failed"):
            agents.reset(modelId)
        observatory.stateChanged(modelId, old, new)

    def machineFactory(model, onExit) -> UpstreamMachine:
        return UpstreamMachine(
            model,
            reactor=reactor,
            launcher=launcher,
            probe=probe,
            healthCheckTimeout=config.healthCheckTimeout,
            onStateChange=stateChanged,
            onOutput=observatory.upstreamOutput,
            onExit=onExit,
        )

    router = RouterService(
        config, reactor=reactor, machineFactory=machineFactory, observer=observatory)
    router.setServiceParent(root)
    api = LlamaSwapAPI(config, router, agents, clock=reactor, observatory=observatory)
    site = AccessLoggingSite(api.resource(), clock=reactor)
    web = strports.service(listen, site, reactor=reactor)
    web.setName("web")
    web.setServiceParent(root)
    return root
