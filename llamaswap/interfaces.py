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

    def reapOrphans():
        """
        Reap the orphaned grandchildren that were re-parented to this process
        (see C{becomeSubreaper}), leaving Twisted's own children alone.

        @return: how many were reaped.
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


class IGpuProbe(Interface):
    """
    Reads GPU statistics; blocking, so callers run it in a thread.
    """

    def sample():
        """
        @return: a list of per-GPU dicts (blocking call).
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

    def responseEnded(reason: object) -> None:
        """
        The exchange is over: C{None} when the response ended whole, else a
        L{twisted.python.failure.Failure}.
        """
