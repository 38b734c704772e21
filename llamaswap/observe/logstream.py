# -*- test-case-name: tests.test_observe_logs -*-
"""
C{GET /logs/stream[/<name>]}: a log's history, then each new write as it
happens, until the client goes away or the server shuts down (SPEC.md
section 3.8).
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from llamaswap.observe.logs import LogBuffer
from llamaswap.observe.streaming import StreamClient

#: Bytes a paused client may have queued before lines are dropped.
DEFAULT_MAX_QUEUED = 256 * 1024

#: Seconds a client may stay paused while its lines are being dropped
#: before it is disconnected.
DEFAULT_STALL_TIMEOUT = 60.0


def hasQueryFlag(request, name: bytes) -> bool:
    """
    @return: whether the query string names C{name}, with or without a
        value (C{?no-history}, C{?no-history=1}).  C{request.args} alone
        cannot tell: Twisted drops query items without C{=}.
    """
    if name in (getattr(request, "args", None) or {}):
        return True
    uri = getattr(request, "uri", b"") or b""
    _, _, query = uri.partition(b"?")
    for item in query.replace(b";", b"&").split(b"&"):
        key = item.split(b"=", 1)[0]
        if unquote_to_bytes(key.replace(b"+", b" ")) == name:
            return True
    return False


def droppedMarker(count: int) -> bytes:
    """
    @return: the line written in place of C{count} dropped lines.
    """
    return b"[... %d lines dropped ...]\n" % (count,)


class _LogStream(StreamClient):
    """
    One client of a L{LogStreamResource}.
    """

    headers = (
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"x-content-type-options", b"nosniff"),
        (b"x-accel-buffering", b"no"),
        (b"cache-control", b"no-cache"),
    )

    def __init__(self, owner: LogStreamResource, request, buffer: LogBuffer,
                 clock: IReactorTime, maxQueued: int, stallTimeout: float) -> None:
        super().__init__(request, owner._streams.discard)
        self.owner = owner
        self.buffer = buffer
        self.clock = clock
        self.maxQueued = maxQueued
        self.stallTimeout = stallTimeout
        self.queuedBytes = 0
        self.dropped = 0
        self._stall: IDelayedCall | None = None

    def start(self, history: bool) -> None:
        self.begin(self.buffer.history() if history else b"", self.buffer.subscribe)

    def written(self, data: bytes) -> None:
        self.deliver(data)

    def enqueue(self, data: bytes) -> None:
        if self.dropped == 0 and self.queuedBytes + len(data) <= self.maxQueued:
            self.queue.append(data)
            self.queuedBytes += len(data)
            return
        # Full: drop, and give up on a client that stays stuck.
        self.dropped += max(1, data.count(b"\n"))
        self.owner.droppedLines += max(1, data.count(b"\n"))
        if self._stall is None:
            self._stall = self.clock.callLater(self.stallTimeout, self._stalled)

    def dequeued(self, data: bytes) -> None:
        self.queuedBytes -= len(data)

    def resumeProducing(self) -> None:
        self._cancelStall()
        super().resumeProducing()

    def afterFlush(self) -> None:
        if self.dropped:
            marker, self.dropped = droppedMarker(self.dropped), 0
            self.request.write(marker)

    def released(self) -> None:
        self._cancelStall()
        self.queuedBytes = 0

    def _stalled(self) -> None:
        self._stall = None
        # Release first: the log line below may be written to this very log.
        self.release()
        self.disconnected = True
        self.log.info("dropping a log stream client that stopped reading")
        transport = getattr(self.request, "transport", None)
        if transport is not None:
            abort = getattr(transport, "abortConnection", None) or transport.loseConnection
            abort()

    def _cancelStall(self) -> None:
        if self._stall is not None:
            if self._stall.active():
                self._stall.cancel()
            self._stall = None


class LogStreamResource(Resource):
    """
    Streams one L{LogBuffer}: C{text/plain; charset=utf-8},
    C{X-Content-Type-Options: nosniff}, C{X-Accel-Buffering: no}, chunked
    (no C{Content-Length}).  The history comes first unless the query has
    C{no-history} (presence only); then every write of the buffer is one
    C{request.write}, at once, with no batching.  The subscription is
    released when the client disconnects and by L{close}.

    Slow readers: each client is a push producer registered with its
    request, so the transport says when the client's socket buffer is full.
    While paused, writes are queued for that client up to C{maxQueued}
    bytes; past that, whole writes are dropped and counted, and when the
    client resumes the queue is flushed followed by a line
    C{[... N lines dropped ...]}.  A client that stays paused for
    C{stallTimeout} seconds after it started dropping is disconnected.
    Other clients and the writer are never slowed down.

    @ivar droppedLines: how many lines were dropped for slow clients, over
        all clients.
    """

    isLeaf = True

    def __init__(self, buffer: LogBuffer, clock: IReactorTime,
                 maxQueued: int = DEFAULT_MAX_QUEUED,
                 stallTimeout: float = DEFAULT_STALL_TIMEOUT) -> None:
        """
        @param buffer: the log to stream.
        @param clock: schedules the stall timeout.
        @param maxQueued: bytes queued per paused client before dropping.
        @param stallTimeout: seconds of dropping before a client is
            disconnected.
        """
        super().__init__()
        self.buffer = buffer
        self.clock = clock
        self.maxQueued = maxQueued
        self.stallTimeout = stallTimeout
        self.droppedLines = 0
        self._streams: set[_LogStream] = set()

    def render_GET(self, request) -> object:
        stream = _LogStream(self, request, self.buffer, self.clock,
                            self.maxQueued, self.stallTimeout)
        self._streams.add(stream)
        stream.start(history=not hasQueryFlag(request, b"no-history"))
        return NOT_DONE_YET

    @property
    def clients(self) -> int:
        """
        How many clients are streaming now.
        """
        return len(self._streams)

    def close(self) -> None:
        """
        End every open stream and release its subscription (server
        shutdown).  Later requests are still served.
        """
        for stream in list(self._streams):
            stream.close()


class LogStreams:
    """
    One L{LogStreamResource} per buffer, made on first use, and one
    L{close} for all of them: what a web app keeps to serve
    C{/logs/stream[/<name>]} and end every stream at shutdown.
    """

    def __init__(self, clock: IReactorTime, maxQueued: int = DEFAULT_MAX_QUEUED,
                 stallTimeout: float = DEFAULT_STALL_TIMEOUT) -> None:
        self.clock = clock
        self.maxQueued = maxQueued
        self.stallTimeout = stallTimeout
        self._resources: dict[int, LogStreamResource] = {}

    def resourceFor(self, buffer: LogBuffer) -> LogStreamResource:
        """
        @return: the stream resource of C{buffer} (the same one each time).
        """
        resource = self._resources.get(id(buffer))
        if resource is None or resource.buffer is not buffer:
            resource = LogStreamResource(buffer, self.clock, self.maxQueued, self.stallTimeout)
            self._resources[id(buffer)] = resource
        return resource

    @property
    def clients(self) -> int:
        """
        How many clients stream any log now.
        """
        return sum(resource.clients for resource in self._resources.values())

    def close(self) -> None:
        """
        End every open stream of every log (server shutdown).
        """
        for resource in list(self._resources.values()):
            resource.close()
