# -*- test-case-name: tests.test_relay -*-
"""
The streaming relay: one client request sent to an upstream, its answer
streamed back chunk by chunk with backpressure.

The upstream side is an L{llamaswap.proxy.client.UpstreamPool} (a lean
HTTP/1.1 client with keep-alive connections) or, for tests and odd
transports, any L{IAgent} behind L{AgentClient}.  The upstream's status and
headers go to the client as soon as they arrive; every body chunk is
written as it arrives (no batching); the upstream connection is the
request's push producer, so a slow client pauses the upstream socket and a
client that goes away aborts the upstream request.  Per-model limits end an
exchange whose upstream stalls: a 504 before the headers, a cut connection
after.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseNeverReceived, RequestNotSent
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from llamaswap.afterturn import Later, callNow
from llamaswap.errors import UpstreamTimeout, UpstreamUnreachable
from llamaswap.interfaces import IResponseSink
from llamaswap.observe.usage import filterAcceptEncoding
from llamaswap.proxy.client import NO_LIMITS, Limits, ResponseFailed, UpstreamPool
from llamaswap.proxy.sending import flushNow

#: A class attribute would log under its class's name, whatever namespace
#: it was given (a Logger read from a class is made anew for that class).
_log = Logger(namespace="llamaswap.proxy.relay")

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)

# The client writes its own framing and Host; C{Expect: 100-continue} is
# answered by llamaswap itself (twisted.web does), never forwarded.
REQUEST_DROP = frozenset({b"content-length", b"host", b"expect"})

#: The status an exchange whose client went away is recorded with.
CLIENT_CLOSED = 499


def endToEnd(headers: Headers, drop: frozenset[bytes] = frozenset()) -> Headers:
    """
    @return: a copy of C{headers} without hop-by-hop headers (RFC 9110
        section 7.6.1, including those named by C{Connection}) and without
        the lower-case names in C{drop}.  Repeated values are kept.
    """
    out = Headers()
    for name, value in endToEndPairs(headers.getAllRawHeaders(), drop):
        out.addRawHeader(name, value)
    return out


def endToEndPairs(pairs, drop: frozenset[bytes] = frozenset()) -> list[tuple[bytes, bytes]]:
    """
    @param pairs: C{(name, value)} or C{(name, [values])} header pairs.
    @return: the end-to-end ones as C{(name, value)} pairs, one per value.
    """
    out: list[tuple[bytes, bytes]] = []
    named: set[bytes] | None = None
    for name, values in pairs:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in drop:
            if lower == b"connection":
                for value in ([values] if isinstance(values, bytes) else values):
                    named = (named or set()) | {
                        t.strip().lower() for t in value.split(b",")}
            continue
        if isinstance(values, bytes):
            out.append((name, values))
        else:
            out.extend((name, value) for value in values)
    if named:
        out = [(n, v) for n, v in out if n.lower() not in named]
    return out


@implementer(IBodyProducer)
class BytesProducer:
    """
    A request body held in memory, written at once (no Cooperator).
    """

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class UpstreamClients:
    """
    One L{UpstreamPool} per upstream (a model or a peer), made on first use.

    @param reactor: the reactor the pools connect with.
    @param connectTimeout: seconds allowed to connect to an upstream.
    """

    def __init__(self, reactor, connectTimeout: float = 30.0) -> None:
        self._reactor = reactor
        self._connectTimeout = connectTimeout
        # key -> (the upstream's origin, its pool, the timeouts it was made with)
        self._pools: dict[str, tuple[bytes, UpstreamPool, Any]] = {}

    def clientFor(self, key: str, url: bytes, parallel: int = 10,
                  timeouts: Any = None) -> UpstreamPool:
        """
        @param url: a URL of the upstream (its scheme, host and port count).
        @param timeouts: the upstream's L{llamaswap.config.model.TimeoutsConfig}
            (its C{connect} and C{idleConn} apply), or L{None}: connects
            limited to this object's C{connectTimeout} (also used for a
            C{connect} of 0), idle connections kept as long as the upstream
            keeps them (also for an C{idleConn} of 0).
        @return: the pool of the upstream C{key}, creating it on first use
            (or when its address or timeouts changed) with room for
            C{parallel} idle keep-alive connections.
        """
        entry = self._pools.get(key)
        origin = _origin(url)
        if entry is not None and entry[0] == origin and (entry[2] is timeouts
                                                       or entry[2] == timeouts):
            return entry[1]
        if entry is not None:
            entry[1].close()
        scheme, _, rest = origin.partition(b"://")
        host, port = _hostPort(rest, 443 if scheme == b"https" else 80)
        connect = getattr(timeouts, "connect", 0) or self._connectTimeout
        pool = UpstreamPool(self._reactor, host, port, scheme=scheme,
                            maxIdle=max(parallel, 2), connectTimeout=connect,
                            idleTimeout=getattr(timeouts, "idleConn", 0) or 0)
        self._pools[key] = (origin, pool, timeouts)
        return pool

    def reset(self, key: str) -> Deferred[None]:
        """
        Close the idle connections to upstream C{key} (its process stopped,
        and the next one may listen on the same port).

        @return: a L{Deferred} that fires when they are closed.
        """
        entry = self._pools.pop(key, None)
        if entry is None:
            return succeed(None)
        return entry[1].close()

    def closeAll(self) -> Deferred[None]:
        """
        Close every idle connection.

        @return: a L{Deferred} that fires when they are all closed.
        """
        from twisted.internet.defer import gatherResults

        ds = [self.reset(key) for key in list(self._pools)]
        return gatherResults(ds).addCallback(lambda _: None)


#: The name other modules knew the pools by.
UpstreamAgents = UpstreamClients


def _origin(url: bytes) -> bytes:
    scheme, sep, rest = url.partition(b"://")
    if not sep:
        scheme, rest = b"http", url
    return scheme.lower() + b"://" + rest.partition(b"/")[0].partition(b"?")[0]


def _hostPort(netloc: bytes, default: int) -> tuple[str, int]:
    text = netloc.decode("idna").rpartition("@")[2]
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = text.partition(":")
    return host, int(port) if port else default


class AgentClient:
    """
    Any L{IAgent} (an in-memory one in tests) with the interface of an
    L{UpstreamPool}: C{request(method, url, headers, body, sink, limits)}.
    Limits are not applied.
    """

    def __init__(self, agent) -> None:
        self.agent = agent

    def request(self, method: bytes, url: bytes, headers, body: Any, sink,
                limits: Limits = NO_LIMITS) -> _AgentExchange:
        return _AgentExchange(self.agent, method, url, headers, body, sink)


class _AgentExchange:
    connection: Any = None

    def __init__(self, agent, method: bytes, url: bytes, headers, body, sink) -> None:
        self.sink = sink
        self.cancelled = False
        out = Headers()
        for name, value in headers:
            out.addRawHeader(name, value)
        producer = BytesProducer(body) if isinstance(body, bytes) else body
        if producer is None and method in (b"POST", b"PUT", b"PATCH"):
            producer = BytesProducer(b"")
        d = agent.request(method, url, out, producer)
        if producer is None or isinstance(producer, BytesProducer):
            def retryStale(f: Failure):
                if not f.check(ResponseNeverReceived, RequestNotSent) or self.cancelled:
                    return f
                return agent.request(method, url, out, producer)

            d.addErrback(retryStale)
        self._d = d
        d.addCallbacks(self._response, self._failed)

    def _response(self, response) -> None:
        if self.cancelled:
            response.deliverBody(Protocol())
            return
        response.deliverBody(_AgentBody(self, response))

    def _failed(self, f: Failure) -> None:
        if not self.cancelled:
            self.sink.responseEnded(f)

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._d.cancel()
            if self.connection is not None:
                self.connection.stopProducing()


class _AgentBody(Protocol):
    def __init__(self, exchange: _AgentExchange, response) -> None:
        self.exchange = exchange
        self.response = response

    def connectionMade(self) -> None:
        self.exchange.connection = self.transport
        pairs = [(name.lower(), value) for name, values in self.response.headers.getAllRawHeaders()
                 for value in values]
        self.exchange.sink.responseStarted(self.response.code, self.response.phrase, pairs)

    def dataReceived(self, data: bytes) -> None:
        if not self.exchange.cancelled:
            self.exchange.sink.bodyData(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.exchange.cancelled:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.exchange.sink.responseEnded(None)
        else:
            self.exchange.sink.responseEnded(Failure(ResponseFailed(reason.getErrorMessage(),
                                                                    False)))


@implementer(IResponseSink)
class _Relay:
    """
    One exchange: the upstream's response written to the client request.
    """

    def __init__(self, resource: RelayResource, request) -> None:
        self.resource = resource
        self.request = request
        self.meter = resource.meter
        self.status: int | None = None
        self.gone = False
        self.ended = False
        self.registered = False
        self.first = False
        self.exchange: Any = None
        # The client transport holding this read's writes, if it can.
        self.held: Any = None

    # -- IResponseSink ---------------------------------------------------

    def responseStarted(self, status: int, phrase: bytes, headers: list) -> None:
        self.status = status
        meter = self.meter
        if meter is not None:
            meter.response(status, headers)
        if self.gone:
            return
        request = self.request
        if not self.resource.headersSent:
            request.setResponseCode(status, phrase or None)
            out = request.responseHeaders
            stream = False
            for name, value in endToEndPairs(headers):
                out.addRawHeader(name, value)
                if name == b"content-type" and b"text/event-stream" in value:
                    stream = True
            if stream:
                out.setRawHeaders(b"x-accel-buffering", [b"no"])
            self.first = stream
            if meter is not None:
                out.setRawHeaders(b"server-timing", [meter.timer.serverTimingHeader()])
        producer = getattr(self.exchange, "connection", None)
        if producer is not None:
            # A slow client now pauses the upstream socket; a client that
            # goes away stops it (the channel stops its producer).
            request.registerProducer(producer, True)
            self.registered = True
        if not self.resource.headersSent:
            # The status and headers go out now, not with the first body
            # byte: an upstream that answers and then thinks is visible.
            request.write(b"")
            if self.first:
                # A stream's head and first event leave at once (a small
                # JSON answer leaves whole, at the reactor's next write).
                self._flush()

    def bodyData(self, data: bytes) -> None:
        meter = self.meter
        if meter is not None:
            meter.data(data)
        if not self.gone:
            self.request.write(data)
            if self.first:
                self.first = False
                self._flush()

    def readStarted(self) -> None:
        if self.gone or self.held is not None:
            return
        transport = getattr(getattr(self.request, "channel", None), "transport", None)
        gather = getattr(transport, "gather", None)
        if gather is not None and gather():
            self.held = transport

    def readEnded(self) -> None:
        held, self.held = self.held, None
        if held is not None:
            held.release()

    def _flush(self, last: bool = False) -> None:
        """
        Send what was written to the client now: at the end of the read
        when writes are held (at once if this is the C{last} of them), else
        straight from the transport's buffer.
        """
        if self.held is not None:
            if last:
                self.readEnded()
            return
        channel = getattr(self.request, "channel", None)
        transport = getattr(channel, "transport", None)
        if transport is not None:
            flushNow(transport)

    def responseEnded(self, reason: Any) -> None:
        if self.registered and not self.gone:
            self.registered = False
            self.request.unregisterProducer()
        if reason is None:
            if not self.gone:
                self.gone = True
                self.request.finish()
                self._flush(last=True)  # the answer's last bytes leave now
            self._end(self.status, None)
            return
        self._failed(reason)
        self.readEnded()

    # -- the rest ----------------------------------------------------------

    def clientGone(self, reason: Failure) -> None:
        if self.gone:
            return
        self.gone = True
        if self.exchange is not None:
            self.exchange.cancel()
        self._end(CLIENT_CLOSED, reason, clientClosed=True)

    def _end(self, status: int | None, failure: Failure | None, clientClosed: bool = False,
             clientStatus: int | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        meter = self.meter
        if meter is not None:
            meter.timer.end()  # now, however late the bookkeeping runs
        self.resource.later(self._settle, status, failure, clientClosed, clientStatus)
        # The exchange refers back to this relay (its sink).  With that
        # cycle broken, the request's objects are freed by reference
        # counting as soon as it ends, not by the collector later (under
        # load the collector's runs over them cost a tenth of a request's
        # CPU).
        self.exchange = None

    def _settle(self, status: int | None, failure: Failure | None, clientClosed: bool,
                clientStatus: int | None) -> None:
        """
        The bookkeeping of the ended exchange: its meter, and the caller's
        C{onDone} (which releases the lease).
        """
        meter = self.meter
        if meter is not None:
            if clientClosed:
                meter.done(CLIENT_CLOSED, clientClosed=True)
            else:
                meter.done(status if status is not None else (clientStatus or 502))
        self.resource.onDone(self.status, failure)

    def _failed(self, f: Failure) -> None:
        resource = self.resource
        timedOut = f.check(UpstreamTimeout) is not None
        if self.gone:
            self._end(self.status, f)
            return
        request = self.request
        if self.status is not None:
            # Mid-stream: cut the connection rather than end cleanly, so
            # the client sees a failure and not a truncated success.
            _log.warn("[{model}] upstream failed mid-response: {why}",
                      model=resource.modelId, why=f.getErrorMessage())
            self._end(self.status, f)
            self.gone = True
            transport = getattr(request, "transport", None)
            if transport is not None:
                transport.abortConnection()
            return
        _log.warn("[{model}] upstream {what}: {why}", model=resource.modelId,
                  what="timed out" if timedOut else "unreachable", why=f.getErrorMessage())
        self._end(None, f, clientStatus=504 if timedOut else 502)
        self.gone = True
        error = f.value
        if not timedOut:
            message = getattr(error, "message", None) or f.getErrorMessage()
            if not message.startswith("upstream unreachable"):
                message = f"upstream unreachable: {message}"
            error = UpstreamUnreachable(message)
        resource.writeError(request, error)


class RelayResource(Resource):
    """
    Sends one request upstream and streams the answer back.

    @param client: the upstream's L{UpstreamPool}, or an L{IAgent}
        (wrapped in an L{AgentClient}).
    @param url: the full upstream URL (bytes).
    @param method: the HTTP method (bytes).
    @param headers: the client's request headers (hop-by-hop headers are
        removed here).
    @param body: the request body to send: bytes, an L{IBodyProducer}
        (a large upload streamed from its spool file), or L{None}.
    @param writeError: answers a request with an error and finishes it;
        used when the upstream cannot be reached or times out.
    @param meter: observes the exchange, or L{None}: C{response(status,
        headers)} when the upstream answers, C{data(chunk)} for every chunk
        relayed, C{done(status, clientClosed=False)} at the end, and
        C{timer} (a L{llamaswap.observe.timing.PhaseTimer}) whose phases go
        out in a C{Server-Timing} header.  Metered requests ask the
        upstream only for the codings the meter can read.
    @param headersSent: the client already has a status and headers (a
        loading-state stream was written): append the upstream's body only.
    @param onDone: called once with C{(status or None, failure or None)}
        when the exchange has ended, whatever the outcome: the caller
        releases its lease there.  It and the meter's C{done} are called
        through C{later}.
    @param limits: the model's L{Limits} (time to headers, idle time).
    @param later: runs the bookkeeping of the ended exchange (an
        L{llamaswap.afterturn.AfterTurn} puts it off until the answers of
        the reactor's turn have left); at once by default.
    """

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        client,
        url: bytes,
        method: bytes,
        headers: Headers,
        body: Any,
        onDone: Callable[[int | None, Failure | None], None],
        writeError: Callable[[object, Exception], None],
        modelId: str = "",
        headersSent: bool = False,
        meter=None,
        limits: Limits = NO_LIMITS,
        later: Later = callNow,
    ) -> None:
        super().__init__()
        if not isinstance(client, (UpstreamPool, AgentClient)):
            client = AgentClient(client)  # an IAgent
        self.client = client
        self.url = url
        self.method = method
        self.headers = headers
        self.body = body
        self.onDone = onDone
        self.writeError = writeError
        self.modelId = modelId
        self.headersSent = headersSent
        self.meter = meter
        self.limits = limits
        self.later = later

    def upstreamHeaders(self, request) -> list[tuple[bytes, bytes]]:
        """
        @return: the header pairs sent upstream for C{request}: end-to-end
            only, the codings a meter can read, and C{X-Forwarded-For}.
        """
        pairs = endToEndPairs(self.headers.getAllRawHeaders(), REQUEST_DROP)
        forwarded: list[bytes] = []
        out: list[tuple[bytes, bytes]] = []
        for name, value in pairs:
            lower = name.lower()
            if lower == b"x-forwarded-for":
                forwarded.append(value)
                continue
            if lower == b"accept-encoding" and self.meter is not None:
                readable = filterAcceptEncoding(value)
                if not readable:
                    continue
                value = readable.encode("latin-1")
            out.append((name, value))
        peer = request.getClientAddress()
        host = getattr(peer, "host", None)
        if host:
            forwarded.append(host.encode("ascii"))
        if forwarded:
            out.append((b"X-Forwarded-For", b", ".join(forwarded)))
        return out

    def render(self, request) -> object:
        relay = _Relay(self, request)
        transport = getattr(request, "transport", None)
        if transport is not None and not getattr(transport, "_llamaswapNoDelay", False):
            setNoDelay = getattr(transport, "setTcpNoDelay", None)
            if setNoDelay is not None:
                try:
                    setNoDelay(True)
                    transport._llamaswapNoDelay = True
                except (OSError, AttributeError):
                    pass
        body = self.body
        if IBodyProducer.providedBy(body):
            pass
        elif not body and self.method not in (b"POST", b"PUT", b"PATCH"):
            body = None
        relay.exchange = self.client.request(
            self.method, self.url, self.upstreamHeaders(request), body, relay, self.limits)
        if not relay.ended:
            request.notifyFinish().addErrback(relay.clientGone)
        return NOT_DONE_YET
