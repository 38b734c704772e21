# -*- test-case-name: tests.test_tap,tests.integration.test_daemon -*-
"""
Builds the service tree of a running llamaswap from a validated config.
"""

from __future__ import annotations

import os
import signal
from typing import Sequence

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.logger import Logger
from twisted.web.server import Request, Site

from llamaswap.config import loadConfig
from llamaswap.listening import headDeadlineProtocol, listeningService
from llamaswap.observe.observatory import Observatory
from llamaswap.proxy.relay import UpstreamAgents
from llamaswap.router.router import RouterService
from llamaswap.upstream import HealthProbe, Launcher, UpstreamMachine
from llamaswap.upstream.process import becomeSubreaper
from llamaswap.web.app import LlamaSwapAPI
from llamaswap.web.ui import UIResource, staticPath


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
    protocol = headDeadlineProtocol  # a request head has a deadline of its own

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


def launchSettings(model) -> tuple:
    """
    @return: what decides how a model's process runs: two configs of a
        model with equal settings can share one running process across a
        reload.
    """
    return (model.argv, model.cmdStopArgv, model.proxy, model.env, model.checkEndpoint,
            model.unloadTimeout)


class _ReloadTriggers(Service):
    """
    What reloads the config of a running daemon: SIGHUP, and with
    C{--watch-config} a change of the file (checked every two seconds, off
    the reactor thread).
    """

    log = Logger()
    name = "reload-triggers"

    def __init__(self, owner: "LlamaSwapService", watch: bool, interval: float = 2.0) -> None:
        self.owner = owner
        self.watch = watch
        self.interval = interval
        self._previousHandler = None
        self._loop: LoopingCall | None = None
        self._seen: tuple | None = None

    def startService(self) -> None:
        super().startService()
        reactor = self.owner.reactor
        try:
            self._previousHandler = signal.signal(
                signal.SIGHUP, lambda *_: reactor.callFromThread(self._reload, "SIGHUP"))
        except (ValueError, AttributeError):  # not the main thread, or no SIGHUP
            self._previousHandler = None
        if self.watch and self.owner.configPath:
            self._loop = LoopingCall(self._check)
            self._loop.clock = reactor
            self._loop.start(self.interval, now=True).addErrback(
                lambda f: self.log.failure("watching the config file", f))

    def stopService(self) -> None:
        super().stopService()
        if self._previousHandler is not None:
            signal.signal(signal.SIGHUP, self._previousHandler)
            self._previousHandler = None
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _reload(self, why: str) -> None:
        self.log.info("reloading the config ({why})", why=why)
        self.owner.reload().addErrback(lambda f: self.log.failure("config reload", f))

    def _check(self) -> Deferred[None]:
        reactor = self.owner.reactor

        def stat() -> tuple | None:
            try:
                info = os.stat(self.owner.configPath)
            except OSError:
                return None
            return (info.st_mtime_ns, info.st_size, info.st_ino)

        def compare(seen: tuple | None) -> None:
            if self._seen is not None and seen is not None and seen != self._seen:
                self._reload("the config file changed")
            if seen is not None:
                self._seen = seen

        return deferToThreadPool(reactor, reactor.getThreadPool(), stat).addCallback(compare)


class LlamaSwapService(MultiService):
    """
    The root service: housekeeping, the observatory (logs, events,
    metrics), the router (which owns every upstream process) and the web
    server, started in that order and stopped in reverse, so the port
    closes first and the daemon exits only once every upstream process
    group is gone.

    L{reload} replaces the config while running.
    """

    log = Logger()

    def __init__(self, config, reactor, listen: str | Sequence[str], launcher: Launcher | None = None,
                 daemon: bool = False, configPath: str | None = None,
                 watchConfig: bool = False) -> None:
        super().__init__()
        self.config = config
        self.configPath = configPath
        self.reactor = reactor
        self.launcher = launcher if launcher is not None else Launcher(reactor)
        self.probe = HealthProbe(reactor)
        self.agents = UpstreamAgents(reactor)
        _Housekeeping(self.launcher, self.agents, self.probe).setServiceParent(self)
        self.observatory = Observatory(config, reactor, shapeOwnLog=daemon)
        self.observatory.setServiceParent(self)
        self.ui = UIResource(staticPath())
        self.router = self._router(config, {})
        self.router.setServiceParent(self)
        self.site = AccessLoggingSite(self._api(config).resource(), clock=reactor)
        listeningService(listen, self.site, reactor,
                         config.maxConnections).setServiceParent(self)
        if daemon:
            _ReloadTriggers(self, watchConfig).setServiceParent(self)
        self._reloading = False
        self._retiring: set[Deferred[None]] = set()

    def stopService(self) -> Deferred[None]:
        """
        Stop every child in reverse order, and wait as well for the models
        a reload is still stopping.
        """
        stopping = super().stopService()
        return gatherResults([stopping, *self._retiring], consumeErrors=True).addCallback(
            lambda _: None)

    def _stateChanged(self, modelId: str, old: str, new: str) -> None:
        if new in ("stopped", "failed"):
            self.agents.reset(modelId)
        self.observatory.stateChanged(modelId, old, new)

    def _router(self, config, adopted, startAfter=None) -> RouterService:
        def machineFactory(model, onExit) -> UpstreamMachine:
            return UpstreamMachine(
                model,
                reactor=self.reactor,
                launcher=self.launcher,
                probe=self.probe,
                healthCheckTimeout=config.healthCheckTimeout,
                onStateChange=self._stateChanged,
                onOutput=self.observatory.upstreamOutput,
                onExit=onExit,
            )

        return RouterService(config, reactor=self.reactor, machineFactory=machineFactory,
                             observer=self.observatory, adopted=adopted,
                             startAfter=startAfter)

    def _api(self, config) -> LlamaSwapAPI:
        return LlamaSwapAPI(config, self.router, self.agents, clock=self.reactor,
                            observatory=self.observatory, ui=self.ui)

    def reload(self, config=None) -> Deferred[bool]:
        """
        Switch to a new config without a restart: read and validate it
        first (a bad file changes nothing and is logged); then models whose
        launch settings are unchanged keep running and serving (their
        in-flight requests included), removed or changed ones are stopped,
        and requests waiting for a model fail so that clients retry.

        @param config: the new config; by default the config file is read
            again (in a thread).
        @return: a L{Deferred} that fires with C{True} once the new config
            serves (models it stops may still be stopping), C{False} when it
            was refused or another reload was in progress.
        """
        if self._reloading:
            self.log.warn("config reload already in progress; this one is dropped")
            return succeed(False)
        self._reloading = True
        if config is not None:
            d = succeed(config)
        elif self.configPath is None:
            self._reloading = False
            return succeed(False)
        else:
            d = deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                  loadConfig, self.configPath)

        def refused(f: Failure):
            self.log.error("config reload refused, the old config keeps serving: {why}",
                           why=f.getErrorMessage())
            return None

        def switch(new) -> bool:
            if new is None or not self.running:
                return False
            for warning in new.warnings:
                self.log.warn("config: {warning}", warning=warning)
            old = self.router
            adopted = old.handOver(new, lambda a, b: launchSettings(a) == launchSettings(b))
            # Nothing new starts before the old processes are gone: a new
            # model may well get a port an old one still holds.
            oldStopped: Deferred[None] = Deferred()
            self.router = self._router(new, adopted, startAfter=oldStopped)
            self.config = new
            self.observatory.reconfigure(new)
            # The new router takes the old one's place in the tree (and so
            # in the stop order); the old one stops what it kept, and a
            # shutdown meanwhile waits for that too.
            index = self.services.index(old)
            old.disownServiceParent()
            self.router.setServiceParent(self)
            self.services.remove(self.router)
            self.services.insert(index, self.router)
            self.site.resource = self._api(new).resource()
            retiring = old.adoptLeases(self.router)
            self._retiring.add(retiring)

            def retired(result: object) -> None:
                self._retiring.discard(retiring)
                oldStopped.callback(None)

            retiring.addBoth(retired)
            self.log.info("config reloaded: {count} models, {kept} kept running",
                          count=len(new.models), kept=len(adopted))
            return True

        d.addErrback(refused)
        d.addCallback(switch)

        def done(result):
            self._reloading = False
            return result

        return d.addBoth(done)


def makeRootService(
    config, reactor, listen: str | Sequence[str], launcher: Launcher | None = None,
    daemon: bool = False,
    configPath: str | None = None, watchConfig: bool = False,
) -> LlamaSwapService:
    """
    @param config: a validated L{llamaswap.config.Config}.
    @param reactor: the reactor everything runs on.
    @param listen: a Twisted server endpoint description, or several.
    @param launcher: spawns upstream processes (a real L{Launcher} unless
        given).
    @param daemon: this is the process's own llamaswap (run by twistd):
        C{logLevel} and C{logToStdout} then also shape twistd's log.
    @param configPath: the file C{config} came from, read again by a
        reload (SIGHUP, or with C{watchConfig} when it changes).
    @param watchConfig: reload when the config file changes.

    @return: the root L{LlamaSwapService}.
    """
    return LlamaSwapService(config, reactor, listen, launcher=launcher, daemon=daemon,
                            configPath=configPath, watchConfig=watchConfig)
