"""
Every zope Interface of llamaswap, in one module.

Import interfaces from here so that adapters, implementations and tests all
agree on one set of names.
"""

from zope.interface import Attribute, Interface


class ILauncher(Interface):
    """
    Spawns an upstream command in its own process group and stops the group.
    """

    def spawn(model, argv, env, protocol):
        """
        Start C{argv} with the environment C{env} in a new session and
        process group, connected to C{protocol}.

        @return: the C{IProcessTransport}; its C{pid} is also the group id.
            A child that exits at once may already be reaped, leaving the
            transport's C{pid} as C{None}: the protocol records the pid when
            it is connected.
        """

    def signalGroup(pgid, signal):
        """
        Send C{signal} to every process of the group C{pgid}; a group that is
        already gone is not an error.
        """

    def groupAlive(pgid):
        """
        @return: whether any process of the group C{pgid} is still alive
            (zombies do not count).
        """

    def reapOrphans(candidates=None):
        """
        Reap the orphaned grandchildren that were re-parented to this process
        (see C{becomeSubreaper}), leaving Twisted's own children alone.

        @param candidates: the zombie children a L{survey} found, or L{None}
            to look for them here.
        @return: how many were reaped.
        """

    def survey(tag, pgid, pgids):
        """
        Look, off the reactor thread, at what is left of one run: whether
        the groups C{pgids} (or the run's cgroup) have a live process, the
        run's processes (tagged C{tag}) outside its group C{pgid}, and the
        zombie orphans to reap.

        @return: a L{Deferred} that fires with a
            L{llamaswap.upstream.process.Leftovers}.
        """

    def escapees(tag, pgid):
        """
        @return: the pids of live processes outside the group C{pgid} whose
            environment carries C{tag} (see C{UPSTREAM_TAG}): descendants of
            an upstream that left its process group (C{setsid}, a daemon's
            double fork).
        """

    def signalPids(pids, signal):
        """
        Send C{signal} to each of C{pids}; one that is gone is not an error.
        """


class IHealthProbe(Interface):
    """
    Asks an upstream whether it is ready to serve.
    """

    def check(url):
        """
        Probe C{url} once.

        @return: a L{Deferred} that fires with C{True} when the upstream
            answered 200, C{False} for any other answer or a refused
            connection.
        """


class IGroupsConfig(Interface):
    """
    Marker: a frozen swap configuration made of groups (SPEC.md section 2.5).
    """

    groups = Attribute("Mapping of group id to GroupConfig.")


class IMatrixConfig(Interface):
    """
    Marker: a frozen swap configuration made of a matrix (SPEC.md section 2.6).
    """

    matrix = Attribute("The MatrixConfig.")


class ISwapPlanner(Interface):
    """
    Decides which running models must stop before a target may run.
    """

    def evictionFor(target, running):
        """
        @param target: the model id that must run.
        @param running: the set of model ids that are live (starting, ready,
            stopping) or targets of other swaps in progress.

        @return: the frozenset of model ids that must stop first.  Pure and
            fast: no I/O, no reactor.
        """


class IMemoryPlanner(Interface):
    """
    Decides which models must make room, in GPU memory, for a target (the
    memory-aware strategy; see L{llamaswap.memory.planner}).

    Unlike L{ISwapPlanner}, whose decision depends on the configuration
    alone, a memory plan depends on what each model needs, on the budget,
    on which models are busy and on when each was last used: all of it is
    given in a C{MemorySituation}, so the planner stays pure.
    """

    def fit(target, running, situation):
        """
        @param target: the model id that must run.
        @param running: the model ids that hold (or will soon hold) memory:
            live ones and targets of other swaps in progress; may contain
            C{target}.
        @param situation: a L{llamaswap.memory.planner.MemorySituation}:
            needs, budgets, busy and leaving models, last-used times and
            the models that must not be evicted.

        @return: a L{llamaswap.memory.planner.Fit}: the idle models to
            evict (least recently used first), the busy models that must
            drain and go too, and whether the target then fits.  Never
            evicts a busy model.  Pure and fast: no I/O, no reactor.
        """


class IGpuProbe(Interface):
    """
    Reads GPU statistics; blocking, so callers run it in a thread.
    """

    def sample():
        """
        @return: a list of per-GPU dicts (blocking call).
        """

    def processes():
        """
        @return: the GPU memory used by each process, as a list of dicts
            with C{gpu} (the GPU's index), C{pid} and C{memoryUsed}
            (bytes); C{[]} when unavailable (blocking call).
        """


class IEventSink(Interface):
    """
    Receives structured events (model state changes, request records) for
    observers such as the UI event stream and metrics.
    """

    def emit(kind, **fields):
        """
        Record one event.  Must not block and must not raise.
        """


class IRouterReport(Interface):
    """
    What the router reports as it works, for metrics and the UI (the
    runtime half of each C{modelStatus} record).  Called in the reactor
    thread; must not block and should not raise (the router logs and
    ignores what an implementation raises).
    """

    def stopBegan(modelId, why):
        """
        C{modelId}'s upstream began stopping; C{why} is a short reason
        (C{"ttl"}, C{"unload"}, C{"making room for b"}, C{"shutdown"}...).
        """

    def stopEnded(modelId):
        """
        C{modelId}'s upstream is gone (its whole process group).
        """

    def loadBegan(modelId, pid, port):
        """
        C{modelId}'s upstream was spawned: C{pid} is its process-group id
        (or L{None} when it could not be spawned), C{port} its allocated
        C{${PORT}} or L{None}.
        """

    def ready(modelId, seconds):
        """
        C{modelId} became ready C{seconds} after its start began.
        """

    def failed(modelId, failure):
        """
        C{modelId}'s start failed: C{failure} is
        C{{"reason": str, "exitCode": int or None, "lastLines": [str]}}.
        """

    def inFlight(modelId, count, total):
        """
        C{modelId} now has C{count} requests in flight, C{total} over every
        model.
        """

    def queueDepth(modelId, queued, total):
        """
        C{queued} requests and loads now wait for C{modelId}, C{total} for
        any model.
        """

    def idle(modelId, lastUsed, unloadAt):
        """
        C{modelId}'s last request ended at C{lastUsed} (epoch seconds, or
        L{None}); its TTL will unload it at C{unloadAt} (epoch seconds) or
        never (L{None}).
        """

    def progress(modelId, progress):
        """
        How far C{modelId}'s load is: C{{"fraction": 0..1 or None,
        "bytesLoaded", "bytesTotal", "elapsed", "expected"}}, or L{None}
        once it is not loading.
        """

    def swapDone(modelId, seconds):
        """
        C{modelId} became ready, C{seconds} after the swap to it began.
        """


class IResponseSink(Interface):
    """
    Where L{llamaswap.proxy.client.UpstreamPool} hands an upstream's
    response as it arrives.
    """

    def responseStarted(status: int, phrase: bytes, headers: list) -> None:
        """
        The status line and headers arrived: C{headers} are
        C{(lower-case name, value)} byte pairs, in order.
        """

    def bodyData(data: bytes) -> None:
        """
        The next bytes of the body (transfer framing removed).
        """

    def readStarted() -> None:
        """
        The calls that one read from the upstream causes follow, up to
        L{readEnded}: what they write to the client may be held and sent
        together then.
        """

    def readEnded() -> None:
        """
        The calls of one read from the upstream are over.
        """

    def responseEnded(reason: object) -> None:
        """
        The exchange is over: C{None} when the response ended whole, else a
        L{twisted.python.failure.Failure}.
        """
