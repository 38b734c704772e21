# -*- test-case-name: tests.test_tap,tests.integration.test_daemon -*-
"""
Builds the service tree of a running llamaswap from a validated config.
"""

from __future__ import annotations

import functools
import os
import signal
from typing import Any, Sequence

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.logger import Logger

from llamaswap.afterturn import AfterTurn
from llamaswap.config import loadConfig
from llamaswap.memory.wiring import MemoryWiring
from llamaswap.listening import listeningService
from llamaswap.observe.observatory import Observatory
from llamaswap.proxy.relay import UpstreamClients
from llamaswap.reload import ReloadReport
from llamaswap.router.router import RouterService
from llamaswap.upstream import HealthProbe, Launcher, UpstreamMachine
from llamaswap.upstream.cgroups import CgroupTree
from llamaswap.upstream.process import becomeSubreaper
from llamaswap.upstream.progress import LoadProgress
from llamaswap.web.app import LlamaSwapAPI
from llamaswap.web.auth import StreamTokens
from llamaswap.web.site import AccessLoggingSite
from llamaswap.web.ui import UIResource, staticPath

#: Why a reload was refused without reading a file.
RELOAD_BUSY = "another reload is in progress"
RELOAD_NO_FILE = "no config file to reload (the config was given in code)"


class _Housekeeping(Service):
    """
    Process-wide chores: become the reaper of orphaned grandchildren on
    start; close idle upstream connections on stop.
    """

    log = Logger()
    name = "housekeeping"  # type: ignore[assignment]  # Twisted types Service.name as None

    def __init__(self, launcher: Launcher, agents: UpstreamClients, probe: HealthProbe) -> None:
        self._launcher = launcher
        self._agents = agents
        self._probe = probe
        self._tree: CgroupTree | None = None

    def startService(self) -> None:
        super().startService()
        if becomeSubreaper():
            self.log.debug("reaping orphaned upstream processes as a subreaper")
        if self._launcher.cgroups is None:
            self._tree = CgroupTree.find()
            self._launcher.useCgroups(self._tree)
        cgroups: Any = self._launcher.cgroups
        if cgroups is not None:
            self.log.info("each upstream runs in its own cgroup under {path}",
                          path=cgroups.path)
        else:
            self.log.info("no writable cgroup v2: upstream descendants are tracked by process "
                          "group and environment tag")

    def releaseCgroups(self) -> None:
        """
        Every upstream is gone: remove the cgroups made at start.
        """
        if self._tree is not None:
            self._launcher.useCgroups(None)
            self._tree.close()
            self._tree = None

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
    name = "reload-triggers"  # type: ignore[assignment]  # Twisted types Service.name as None

    def __init__(self, owner: "LlamaSwapService", watch: bool, interval: float = 2.0) -> None:
        self.owner = owner
        self.watch = watch
        self.interval = interval
        self._previousHandler: Any = None  # what signal.signal gave back
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
        path = self.owner.configPath

        def stat() -> tuple | None:
            if path is None:
                return None
            try:
                info = os.stat(path)
            except OSError:
                return None
            return (info.st_mtime_ns, info.st_size, info.st_ino)

        def compare(seen: tuple | None) -> None:
            if self._seen is not None and seen is not None and seen != self._seen:
                self._reload("the config file changed")
            if seen is not None:
                self._seen = seen

        return deferToThreadPool(reactor, reactor.getThreadPool(), stat).addCallback(compare)


class _ShutdownSignals(Service):
    """
    SIGTERM and SIGINT: the first stops the reactor, which stops the
    service tree gracefully (L{LlamaSwapService.stopService} drains first);
    a second one forces the stop at once.  The handlers stay installed for
    the whole shutdown (that is when the second signal matters).
    """

    log = Logger()
    name = "shutdown-signals"  # type: ignore[assignment]  # Twisted types Service.name as None

    def __init__(self, owner: "LlamaSwapService") -> None:
        self.owner = owner
        self.received = 0

    def startService(self) -> None:
        super().startService()
        reactor = self.owner.reactor
        # After the reactor installed its own handlers, which run() does.
        reactor.callWhenRunning(lambda: reactor.callLater(0, self._install))

    def _install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                previous = signal.getsignal(signum)
                signal.signal(signum, functools.partial(self._handle, previous=previous))
            except ValueError:  # not the main thread
                return

    def _handle(self, signum: int, frame: object, previous: object) -> None:
        # In signal context: only callFromThread, and the reactor's own
        # handler (which stops it and makes twistd exit by this signal).
        self.received += 1
        if self.received == 1 and callable(previous):
            previous(signum, frame)
        self.owner.reactor.callFromThread(self.signalled, signum, self.received)

    def signalled(self, signum: int, count: int) -> None:
        """
        C{signum} arrived, the C{count}th time: a graceful stop began the
        first time; later ones force it.
        """
        name = signal.Signals(signum).name
        if count == 1:
            self.log.info(
                "{signal}: shutting down; requests in flight get up to {timeout}s "
                "(another {signal} stops at once)",
                signal=name, timeout=self.owner.config.shutdownTimeout)
        else:
            self.log.warn("{signal} again: stopping every upstream now", signal=name)
            self.owner.force()


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
        self.agents = UpstreamClients(reactor)
        self.housekeeping = _Housekeeping(self.launcher, self.agents, self.probe)
        self.housekeeping.setServiceParent(self)
        self.observatory = Observatory(config, reactor, shapeOwnLog=daemon)
        self.observatory.setServiceParent(self)
        self.ui = UIResource(staticPath())
        self.streamTokens = StreamTokens(reactor)
        self.memory = MemoryWiring(reactor, configPath)
        self.observatory.memoryRecord = self.memory.record
        self.router = RouterService(config, reactor=self.reactor,
                                    machineFactory=self._machine, observer=self.observatory,
                                    memory=lambda: self.memory.manager)
        self._memoryFor(config)
        self.progress = LoadProgress(reactor, self.router.loadProgress)
        self.router.setServiceParent(self)
        # The access lines, activity entries and lease releases of the
        # requests that end in one turn run together after it.
        self.afterTurn = AfterTurn(reactor)
        self.site = AccessLoggingSite(self._api(config).resource(), clock=reactor,
                                      later=self.afterTurn)
        self.site.bodyLimit = config.maxRequestBodyMB * 1024 * 1024
        listeningService(listen, self.site, reactor,
                         config.maxConnections).setServiceParent(self)
        if daemon:
            _ReloadTriggers(self, watchConfig).setServiceParent(self)
            _ShutdownSignals(self).setServiceParent(self)
        self._reloading = False

    def startService(self) -> None:
        self.memory.start()
        super().startService()

    def stopService(self) -> Deferred[None]:
        """
        Shut down gracefully: stop accepting connections, answer new
        requests on open ones with 503, let the requests in flight and
        those waiting for a model finish for up to C{shutdownTimeout}
        seconds (or until L{force}), then stop every child in reverse
        order; the router stops every upstream.

        @return: a L{Deferred} that fires once every upstream process group
            is gone.
        """
        return Deferred.fromCoroutine(self._shutdown())

    async def _shutdown(self) -> None:
        self.memory.stop()
        drained = self.router.drain(self.config.shutdownTimeout)
        web = self.getServiceNamed("web")
        try:
            await web.stopService()
        except Exception:
            self.log.failure("closing the listening port")
        if await drained:
            self.log.info("shutdown: every request finished")
        try:
            await MultiService.stopService(self)
        finally:
            self.progress.stop()
            self.housekeeping.releaseCgroups()

    def force(self) -> None:
        """
        Cut a graceful shutdown short: stop every upstream now (no drain,
        no grace).
        """
        self.router.force()

    def _stateChanged(self, modelId: str, old: str, new: str) -> None:
        if new in ("stopped", "failed"):
            self.agents.reset(modelId)
        if new == "starting":
            machine = self.router.machines.get(modelId)
            model = self.config.models.get(modelId)
            if machine is not None and model is not None:
                self.progress.began(modelId, machine.pid, model.argv, model.loadFile)
        elif old == "starting":
            self.progress.ended(modelId, new == "ready")
        self.memory.stateChanged(modelId, new)
        self.observatory.stateChanged(modelId, old, new)

    def _machine(self, model, onExit) -> UpstreamMachine:
        return UpstreamMachine(
            model,
            reactor=self.reactor,
            launcher=self.launcher,
            probe=self.probe,
            healthCheckTimeout=self.config.healthCheckTimeout,
            onStateChange=self._stateChanged,
            onOutput=self.observatory.upstreamOutput,
            onExit=onExit,
        )

    def _memoryFor(self, config) -> None:
        """
        Build the memory manager of C{config} (none without a C{memory}
        section).
        """
        self.memory.managerFor(
            config, lambda m: getattr(self.router.machines.get(m), "pid", None),
            self.observatory.modelsChanged, start=bool(self.running))

    def _api(self, config) -> LlamaSwapAPI:
        return LlamaSwapAPI(config, self.router, self.agents, clock=self.reactor,
                            observatory=self.observatory, ui=self.ui,
                            reload=self.reload, streamTokens=self.streamTokens,
                            later=self.afterTurn)

    def reload(self, config=None) -> Deferred[ReloadReport]:
        """
        Switch to a new config without a restart: read and validate it
        first (a bad file changes nothing and is logged); then models whose
        launch settings are unchanged keep running and serving (their
        in-flight and waiting requests included), changed running ones are
        restarted, changed idle ones start with the new settings next time,
        and removed ones stopped (see
        L{RouterService.reconfigure}).  A model keeps its C{${PORT}}.

        @param config: the new config; by default the config file is read
            again (in a thread).
        @return: a L{Deferred} that fires with a L{ReloadReport} once the
            new config serves (models it stops may still be stopping), or
            with one whose C{applied} is C{False} when it was refused.
        """
        if self._reloading:
            self.log.warn("config reload already in progress; this one is dropped")
            return succeed(ReloadReport(applied=False, reason=RELOAD_BUSY))
        path = self.configPath
        if config is None and path is None:
            return succeed(ReloadReport(applied=False, reason=RELOAD_NO_FILE))
        self._reloading = True
        if config is not None:
            d = succeed(config)
        else:
            assert path is not None  # a reload without a file was refused above
            ports = {m.id: m.port for m in self.config.models.values() if m.port is not None}
            d = deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                  loadConfig, path, None, ports)

        def refused(f: Failure) -> ReloadReport:
            self.log.error("config reload refused, the old config keeps serving: {why}",
                           why=f.getErrorMessage())
            return ReloadReport(applied=False, reason=f.getErrorMessage())

        def switch(new) -> ReloadReport:
            if not self.running or self.router.draining:
                return ReloadReport(applied=False, reason="llamaswap is shutting down")
            for warning in new.warnings:
                self.log.warn("config: {warning}", warning=warning)
            self.config = new  # before the router builds new machines
            self._memoryFor(new)
            done = self.router.reconfigure(
                new, lambda a, b: launchSettings(a) == launchSettings(b))
            self.observatory.reconfigure(new)
            self.site.resource = self._api(new).resource()
            self.site.bodyLimit = new.maxRequestBodyMB * 1024 * 1024
            self.log.info(
                "config reloaded: {count} models, {kept} kept running, {restarted} restarted, "
                "{changed} changed while not running, {added} added, {removed} removed",
                count=len(new.models), kept=len(done.running), restarted=len(done.restarted),
                changed=len(done.changed), added=len(done.added), removed=len(done.removed))
            return ReloadReport(applied=True, kept=done.kept, restarted=done.restarted,
                                changed=done.changed, added=done.added, removed=done.removed)

        def done(result):
            self._reloading = False
            return result

        return d.addCallbacks(switch, refused).addBoth(done)


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
