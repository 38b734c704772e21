# -*- test-case-name: tests.test_upstream_client -*-
"""
A lean HTTP/1.1 client for the relay: one keep-alive pool per upstream, a
request written as one head and its body, and the response handed to an
L{IResponseSink} as it comes: the status and headers as soon as they are
read, then each piece of the body (chunked framing removed), then the end.

Compared with L{twisted.web.client.Agent} it builds no L{Headers}, no
C{Response}, no Deferred per chunk or per response, and it resolves no
name for a numeric host.  It is meant for upstreams we start ourselves or
peers we are configured for; it is not a general HTTP client.

    pool = UpstreamPool(reactor, "127.0.0.1", 8080)
    exchange = pool.request(b"POST", b"/v1/chat/completions", headers, body, sink,
                            limits=Limits(responseHeader=600, idle=600))
    exchange.cancel()     # the client went away: abort the upstream request
"""

from __future__ import annotations

import ipaddress
from typing import Any, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from llamaswap.errors import UpstreamTimeout, UpstreamUnreachable
from llamaswap.proxy.sending import sendNow

HeaderPairs = Sequence[tuple[bytes, bytes]]

_log = Logger(namespace="llamaswap.proxy.client")

_NO_BODY = frozenset({204, 304})
_CONNECTION_DONE = Failure(ConnectionDone())

#: Bytes read from an upstream socket at a time (Twisted's default: 64 KiB).
READ_SIZE = 16384


class Limits:
    """
    How long an exchange may wait on its upstream, in seconds (C{0}: no
    limit): C{responseHeader} from the request sent to the status line and
    headers, C{idle} for any silence of the upstream (before the headers,
    and between body bytes).

    @ivar sweep: how often exchanges under these limits are checked: a
        tenth of the shortest limit, at most every second (C{0}: never).
    """

    __slots__ = ("responseHeader", "idle", "sweep")

    def __init__(self, responseHeader: float = 0, idle: float = 0) -> None:
        self.responseHeader = responseHeader
        self.idle = idle
        shortest = min((w for w in (idle, responseHeader) if w), default=0)
        self.sweep = min(1.0, shortest / 10)


NO_LIMITS = Limits()


class ResponseFailed(UpstreamUnreachable):
    """
    The upstream connection failed or closed before the response ended.

    @ivar beforeResponse: nothing of a response had arrived yet (a stale
        keep-alive connection, for one).
    """

    def __init__(self, message: str, beforeResponse: bool) -> None:
        super().__init__(message)
        self.beforeResponse = beforeResponse


class _Exchange:
    """
    One request in flight: what L{UpstreamPool.request} returns.
    """

    __slots__ = ("pool", "method", "head", "body", "sink", "limits", "connection",
                 "retried", "cancelled", "connecting", "sentAt")

    def __init__(self, pool: UpstreamPool, method: bytes, head: bytes, body: Any, sink,
                 limits: Limits) -> None:
        self.pool = pool
        self.method = method
        self.head = head
        self.body = body
        self.sink = sink
        self.limits = limits
        self.connection: _Connection | None = None
        self.retried = False
        self.cancelled = False
        self.connecting: Deferred | None = None
        self.sentAt = pool.reactor.seconds()

    def cancel(self) -> None:
        """
        Abort the upstream request (its connection is closed, not reused);
        the sink is not told anything more.
        """
        if self.cancelled:
            return
        self.cancelled = True
        if self.connecting is not None:
            self.connecting.cancel()
        connection = self.connection
        if connection is not None and connection.exchange is self:
            connection.exchange = None
            connection.reusable = False
            connection.abort()

    @property
    def replayable(self) -> bool:
        return self.body is None or isinstance(self.body, bytes)


@implementer(IPushProducer)
class _Connection(Protocol):
    """
    One upstream connection: sends the head and body of one exchange at a
    time and parses the response into its sink.  It is also the push
    producer the relay registers with the client's request, so a slow
    client pauses the upstream socket.
    """

    transport: Any  # a TCP (or TLS) transport once connected

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.clock: IReactorTime = pool.reactor
        self.exchange: _Exchange | None = None
        self.reusable = True
        self.paused = False
        self.used = 0
        self.idleSince = 0.0
        self._last = 0.0
        self.onLost: Deferred[None] | None = None
        self.sending: Any = None
        self._reset()

    # -- producer (the client's request pauses and resumes us) -------------

    def pauseProducing(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.cancel()

    # -- sending -------------------------------------------------------------

    def _reset(self) -> None:
        self.buffer = b""
        self.status = 0
        self.headersDone = False
        self.bodyMode = 0  # 0 length, 1 chunked, 2 until close
        self.remaining = 0
        # >0: chunk bytes left; -1: at a chunk-size line; -2: in the trailer;
        # -3: at the CRLF after chunk data; -4: the body ended
        self.chunkLeft = -1
        self.received = False

    def send(self, exchange: _Exchange) -> None:
        self.exchange = exchange
        self.used += 1
        self._reset()
        exchange.connection = self
        transport = self.transport
        body = exchange.body
        self._last = self.clock.seconds()
        self._arm()
        if body is None or isinstance(body, bytes):
            sendNow(transport, exchange.head + body if body else exchange.head)
            return
        transport.write(exchange.head)
        consumer = _BodyConsumer(transport, chunked=body.length is UNKNOWN_LENGTH)
        transport.registerProducer(body, True)
        self.sending = body

        def sent(_: object) -> None:
            self.sending = None
            transport.unregisterProducer()
            if consumer.chunked:
                transport.write(b"0\r\n\r\n")

        def failed(f: Failure) -> None:
            self.sending = None
            transport.unregisterProducer()
            if self.exchange is exchange:
                self._fail(f.value if isinstance(f.value, Exception) else
                           UpstreamUnreachable(f.getErrorMessage()))
                self.abort()

        body.startProducing(consumer).addCallbacks(sent, failed)

    # -- timeouts ------------------------------------------------------------

    def _arm(self) -> None:
        exchange = self.exchange
        if exchange is not None and exchange.limits.sweep:
            self.pool._watch(self, exchange.limits)

    def _check(self, now: float) -> None:
        """
        Called by the pool's sweep: end the exchange if its upstream is
        past a limit.
        """
        exchange = self.exchange
        if exchange is None:
            return
        limits = exchange.limits
        if not self.headersDone and limits.responseHeader and \
                now - exchange.sentAt >= limits.responseHeader:
            self._timeout(f"no response headers after {limits.responseHeader:g}s")
        elif limits.idle and now - self._last >= limits.idle:
            self._timeout(f"upstream silent for {limits.idle:g}s")

    def _timeout(self, why: str) -> None:
        self.reusable = False
        self._fail(UpstreamTimeout(why))
        self.abort()

    def _disarm(self) -> None:
        self.pool._unwatch(self)

    # -- receiving -----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            # Bytes on an idle connection: nothing can be trusted on it.
            self.reusable = False
            self.abort()
            return
        self.received = True
        self._last = self.clock.seconds()
        sink = exchange.sink
        # What this read makes the sink write to its client leaves in one
        # go, at the end of the read.
        sink.readStarted()
        try:
            if self.headersDone:
                self._body(data)
            else:
                self._headAndBody(data, exchange)
        finally:
            sink.readEnded()

    def _headAndBody(self, data: bytes, exchange: _Exchange) -> None:
        self.buffer += data
        while not self.headersDone:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > 65536:
                    self.reusable = False
                    self._fail(UpstreamUnreachable("upstream sent an oversized response head"))
                    self.abort()
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4:]
            if not self._head(head):
                return
        rest, self.buffer = self.buffer, b""
        if self.exchange is exchange and (rest or self.bodyMode == 0):
            self._body(rest)

    def _head(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        try:
            if not parts[0].startswith(b"HTTP/1."):
                raise ValueError(parts[0])
            status = int(parts[1])
        except (ValueError, IndexError):
            self.reusable = False
            self._fail(UpstreamUnreachable(f"bad status line from upstream: {lines[0][:80]!r}"))
            self.abort()
            return False
        if 100 <= status < 200 and status != 101:
            return True  # an interim answer: the real one follows
        phrase = parts[2] if len(parts) > 2 else b""
        headers: list[tuple[bytes, bytes]] = []
        length = -1
        chunked = False
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                continue
            name = name.strip().lower()
            value = value.strip()
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = -1
            elif name == b"transfer-encoding":
                chunked = value.lower().endswith(b"chunked")
            elif name == b"connection" and b"close" in value.lower():
                self.reusable = False
            headers.append((name, value))
        if parts[0] == b"HTTP/1.0":
            self.reusable = False
        self.status = status
        self.headersDone = True
        exchange = self.exchange
        assert exchange is not None
        if exchange.method == b"HEAD" or status in _NO_BODY:
            self.bodyMode, self.remaining = 0, 0
        elif chunked:
            self.bodyMode = 1
        elif length >= 0:
            self.bodyMode, self.remaining = 0, length
        else:
            self.bodyMode = 2
            self.reusable = False
        exchange.sink.responseStarted(status, phrase, headers)
        return self.exchange is exchange

    def _body(self, data: bytes) -> None:
        mode = self.bodyMode
        if mode == 0:
            remaining = self.remaining
            if len(data) >= remaining:
                extra = data[remaining:]
                if remaining:
                    self._deliver(data[:remaining])
                if extra:
                    self.reusable = False
                self._finish()
            else:
                self.remaining = remaining - len(data)
                self._deliver(data)
        elif mode == 1:
            self._chunked(data)
        else:
            self._deliver(data)

    def _chunked(self, data: bytes) -> None:
        """
        Remove the chunked framing of C{data}; the payload of every chunk
        this read holds is delivered at once (one write to the client, one
        meter step, not one per chunk).
        """
        pieces: list[bytes] = []
        try:
            self._unchunk(data, pieces)
        finally:
            if pieces and self.exchange is not None:
                self._deliver(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        if self.chunkLeft == -4:
            self._finish()

    def _unchunk(self, data: bytes, pieces: list[bytes]) -> None:
        if self.buffer:
            data, self.buffer = self.buffer + data, b""
        pos = 0
        size = len(data)
        exchange = self.exchange
        while pos < size and self.exchange is exchange:
            left = self.chunkLeft
            if left > 0:
                end = min(size, pos + left)
                self.chunkLeft = left - (end - pos)
                pieces.append(data[pos:end])
                pos = end
                if self.chunkLeft == 0:
                    self.chunkLeft = -3  # the CRLF after the data
            elif left == -3:
                if size - pos < 2:
                    self.buffer = data[pos:]
                    return
                pos += 2
                self.chunkLeft = -1
            else:
                newline = data.find(b"\r\n", pos)
                if newline < 0:
                    self.buffer = data[pos:]
                    if len(self.buffer) > 4096:
                        self._bad("an oversized chunk header")
                    return
                line = data[pos:newline]
                pos = newline + 2
                if left == -2:
                    if not line:
                        if pos < size:
                            self.reusable = False
                        self.chunkLeft = -4  # the end: finished after delivery
                        return
                    continue  # a trailer field: ignored
                try:
                    chunk = int(line.partition(b";")[0].strip(), 16)
                except ValueError:
                    self._bad("a bad chunk header")
                    return
                self.chunkLeft = chunk if chunk else -2

    def _bad(self, what: str) -> None:
        self.reusable = False
        self._fail(ResponseFailed(f"upstream sent {what}", beforeResponse=False))
        self.abort()

    def _deliver(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.sink.bodyData(data)

    def _finish(self) -> None:
        exchange = self.exchange
        self.exchange = None
        self._disarm()
        if self.sending is not None:
            # Answered before the whole body went up: the connection is
            # mid-request, not reusable.
            self.reusable = False
            producer, self.sending = self.sending, None
            producer.stopProducing()
        if exchange is not None:
            exchange.connection = None
            if self.paused:
                self.paused = False
                self.transport.resumeProducing()
            self.pool._release(self)
            exchange.sink.responseEnded(None)

    def _fail(self, error: Exception) -> None:
        exchange = self.exchange
        self.exchange = None
        self.reusable = False
        self._disarm()
        if exchange is not None:
            exchange.connection = None
            if not exchange.cancelled:
                exchange.sink.responseEnded(Failure(error))

    def abort(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self.reusable = False
        self.pool._lost(self)
        exchange = self.exchange
        if exchange is None:
            self._disarm()
            return
        if self.headersDone and self.bodyMode == 2:
            self._finish()
            return
        if not self.received and self.used > 1 and exchange.replayable and \
                not exchange.retried and not exchange.cancelled:
            # A pooled keep-alive connection the upstream closed just as it
            # was reused: nothing was answered, the body can be sent again.
            self.exchange = None
            self._disarm()
            exchange.retried = True
            exchange.connection = None
            self.pool._retry(exchange, reason.getErrorMessage())
            return
        before = not self.headersDone
        what = "before answering" if before else "mid-response"
        self._fail(ResponseFailed(f"upstream closed the connection {what}:"
                                  f" {reason.getErrorMessage()}", beforeResponse=before))


class _BodyConsumer:
    """
    Writes a streamed request body to the upstream transport, in chunked
    framing when its length is unknown.
    """

    def __init__(self, transport, chunked: bool) -> None:
        self.transport = transport
        self.chunked = chunked

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self.chunked:
            self.transport.writeSequence([b"%x\r\n" % len(data), data, b"\r\n"])
        else:
            self.transport.write(data)

    def registerProducer(self, producer, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


class _ConnectionFactory(Factory):
    noisy = False

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool

    def buildProtocol(self, addr) -> _Connection:
        return _Connection(self.pool)


def _endpoint(reactor, scheme: bytes, host: str, port: int, connectTimeout: float):
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        endpoint: Any = HostnameEndpoint(reactor, host, port, timeout=connectTimeout)
    else:
        kind = TCP6ClientEndpoint if address.version == 6 else TCP4ClientEndpoint
        endpoint = kind(reactor, str(address), port, timeout=connectTimeout)
    if scheme == b"https":
        from twisted.web.client import BrowserLikePolicyForHTTPS

        creator = BrowserLikePolicyForHTTPS().creatorForNetloc(host.encode("idna"), port)
        endpoint = wrapClientTLS(creator, endpoint)
    return endpoint


class UpstreamPool:
    """
    The keep-alive connections to one upstream (C{scheme://host:port}).

    @param maxIdle: idle connections kept for reuse.
    @param connectTimeout: seconds allowed to connect (C{timeouts.connect}).
    @param idleTimeout: seconds an idle keep-alive connection is kept
        (C{timeouts.idleConn}); C{0}: for as long as the upstream keeps it.
    """

    def __init__(self, reactor, host: str, port: int, scheme: bytes = b"http",
                 maxIdle: int = 10, connectTimeout: float = 30.0,
                 idleTimeout: float = 0) -> None:
        self.reactor = reactor
        self.connectTimeout = connectTimeout
        self.idleTimeout = idleTimeout
        self._idleTimer: Any = None
        self.host = host
        self.port = port
        self.scheme = scheme
        self.maxIdle = maxIdle
        named = f"[{host}]" if ":" in host else host
        self.hostHeader = (named if port == (443 if scheme == b"https" else 80)
                           else f"{named}:{port}").encode("idna")
        self.base = scheme + b"://" + self.hostHeader
        self._endpoint = _endpoint(reactor, scheme, host, port, connectTimeout)
        self._factory = _ConnectionFactory(self)
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._watched: set[_Connection] = set()
        self._sweep: Any = None
        self.closed = False

    def request(self, method: bytes, url: bytes, headers: HeaderPairs, body: Any, sink,
                limits: Limits = NO_LIMITS) -> _Exchange:
        """
        Send one request.

        @param url: the full URL (of this pool's upstream), or the request
            target alone (path and query).
        @param headers: the header pairs to send; C{Host}, and the framing
            (C{Content-Length} or C{Transfer-Encoding}) are added here.
        @param body: bytes, an L{IBodyProducer}, or L{None}.
        @param sink: an L{llamaswap.interfaces.IResponseSink}: told of the
            response as it comes, and of its end (a L{Failure} of
            L{ResponseFailed}, L{UpstreamTimeout} or a connect error when it
            fails).
        @return: the exchange; its C{cancel()} aborts the request.
        """
        if url.startswith(self.base):
            target = url[len(self.base):] or b"/"
        elif url.startswith(b"/"):
            target = url
        else:
            target = b"/" + url.split(b"://", 1)[-1].partition(b"/")[2]
        lines = [method, b" ", target, b" HTTP/1.1\r\nHost: ", self.hostHeader, b"\r\n"]
        for name, value in headers:
            lines += [name, b": ", value, b"\r\n"]
        if body is None:
            if method in (b"POST", b"PUT", b"PATCH"):
                lines.append(b"Content-Length: 0\r\n")
        elif isinstance(body, bytes):
            lines += [b"Content-Length: ", b"%d" % len(body), b"\r\n"]
        elif IBodyProducer.providedBy(body):
            if body.length is UNKNOWN_LENGTH:
                lines.append(b"Transfer-Encoding: chunked\r\n")
            else:
                lines += [b"Content-Length: ", b"%d" % body.length, b"\r\n"]
        lines.append(b"\r\n")
        exchange = _Exchange(self, method, b"".join(lines), body, sink, limits)
        self._dispatch(exchange)
        return exchange

    def _dispatch(self, exchange: _Exchange) -> None:
        while self._idle:
            connection = self._idle.pop()
            if connection.transport is not None and connection.reusable:
                connection.send(exchange)
                return
        d = self._endpoint.connect(self._factory)
        exchange.connecting = d

        def connected(connection: _Connection) -> None:
            exchange.connecting = None
            self._all.add(connection)
            if exchange.cancelled:
                connection.abort()
                return
            transport = connection.transport
            if READ_SIZE:
                # Smaller reads from each upstream: one busy stream cannot
                # hold the reactor for long, so a new stream's first chunk
                # is not kept waiting behind 64 KiB of every other one.
                transport.bufferSize = READ_SIZE
            setNoDelay = getattr(transport, "setTcpNoDelay", None)
            if setNoDelay is not None:
                try:
                    setNoDelay(True)
                except OSError:
                    pass
            connection.send(exchange)

        def failed(f: Failure) -> None:
            exchange.connecting = None
            if not exchange.cancelled:
                exchange.sink.responseEnded(Failure(ResponseFailed(
                    f"cannot connect: {f.getErrorMessage()}", beforeResponse=True)))

        d.addCallbacks(connected, failed).addErrback(
            lambda f: _log.failure("relaying to {host}:{port}", f, host=self.host, port=self.port))

    # -- limits: one sweep per pool, not one timer per exchange ------------

    def _watch(self, connection: _Connection, limits: Limits) -> None:
        self._watched.add(connection)
        every = limits.sweep
        if self._sweep is None:
            self._sweep = self.reactor.callLater(every, self._sweepNow)
        elif self._sweep.getTime() > self.reactor.seconds() + every:
            self._sweep.reset(every)

    def _unwatch(self, connection: _Connection) -> None:
        self._watched.discard(connection)
        if self.closed and not self._watched and self._sweep is not None:
            if self._sweep.active():
                self._sweep.cancel()
            self._sweep = None

    def _sweepNow(self) -> None:
        self._sweep = None
        now = self.reactor.seconds()
        for connection in list(self._watched):
            connection._check(now)
        every = [c.exchange.limits.sweep for c in self._watched
                 if c.exchange is not None]
        if every:
            self._sweep = self.reactor.callLater(min(every), self._sweepNow)

    def _retry(self, exchange: _Exchange, why: str) -> None:
        _log.info("{host}:{port}: retrying on a fresh connection: {why}",
                  host=self.host, port=self.port, why=why)
        self._dispatch(exchange)

    def _release(self, connection: _Connection) -> None:
        if connection.reusable and not self.closed and len(self._idle) < self.maxIdle:
            connection.idleSince = self.reactor.seconds()
            self._idle.append(connection)
            if self.idleTimeout and self._idleTimer is None:
                self._idleTimer = self.reactor.callLater(self.idleTimeout, self._closeIdle)
        else:
            connection.abort()

    def _closeIdle(self) -> None:
        """
        Close the connections idle for C{idleTimeout} seconds; look again
        when the oldest of the others will be.
        """
        self._idleTimer = None
        if self.closed:
            return
        deadline = self.reactor.seconds() - self.idleTimeout + 1e-6
        expired = [c for c in self._idle if c.idleSince <= deadline]
        if expired:
            self._idle = [c for c in self._idle if c.idleSince > deadline]
            for connection in expired:
                connection.reusable = False
                if connection.transport is not None:
                    connection.transport.loseConnection()
        if self._idle:
            oldest = min(c.idleSince for c in self._idle)
            self._idleTimer = self.reactor.callLater(
                max(0.0, oldest + self.idleTimeout - self.reactor.seconds()), self._closeIdle)

    def _lost(self, connection: _Connection) -> None:
        self._all.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)
        onLost = connection.onLost
        if onLost is not None:
            connection.onLost = None
            onLost.callback(None)

    def close(self) -> Deferred[None]:
        """
        Close the idle connections, and every connection once its exchange
        is over.

        @return: a L{Deferred} that fires once the idle ones are closed.
        """
        self.closed = True
        if self._idleTimer is not None:
            if self._idleTimer.active():
                self._idleTimer.cancel()
            self._idleTimer = None
        if self._sweep is not None and not self._watched:
            if self._sweep.active():
                self._sweep.cancel()
            self._sweep = None
        idle, self._idle = self._idle, []
        waiting = [c for c in idle if c.transport is not None and c in self._all]
        d: Deferred[None] = Deferred()
        if not waiting:
            d.callback(None)
        else:
            pending = [len(waiting)]

            def one(_: object) -> None:
                pending[0] -= 1
                if pending[0] == 0:
                    d.callback(None)

            for connection in waiting:
                lost: Deferred[None] = Deferred()
                lost.addCallback(one)
                connection.onLost = lost
                connection.transport.loseConnection()
        return d
