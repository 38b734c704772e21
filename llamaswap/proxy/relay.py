# -*- test-case-name: tests.test_relay -*-
"""
The streaming relay: one client request sent to an upstream, its answer
streamed back chunk by chunk with backpressure.

Built on L{Agent} with a persistent connection pool per upstream, a
C{deliverBody} protocol and C{registerProducer}: a slow client pauses the
upstream socket, a client that goes away closes it, and every chunk the
upstream writes is written to the client as it arrives (no batching).
"""

from __future__ import annotations

from typing import Callable, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    RequestNotSent,
    ResponseDone,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from llamaswap.errors import UpstreamUnreachable
from llamaswap.httpclient import quietPool
from llamaswap.observe.tokens import filterAcceptEncoding

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

# Agent writes its own framing (Content-Length or chunked, from the body
# producer) and adds Host only when absent: drop the client's on the way up.
REQUEST_DROP = frozenset({b"content-length", b"host"})


def endToEnd(headers: Headers, drop: frozenset[bytes] = frozenset()) -> Headers:
    """
    @return: a copy of C{headers} without hop-by-hop headers (RFC 9110
        section 7.6.1, including those named by C{Connection}) and without
        the lower-case names in C{drop}.  Repeated values are kept.
    """
    named = {
        token.strip().lower()
        for value in headers.getRawHeaders(b"connection", [])
        for token in value.split(b",")
    }
    out = Headers()
    for name, values in headers.getAllRawHeaders():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in named or lower in drop:
            continue
        out.setRawHeaders(name, values)
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


@implementer(IAgentEndpointFactory)
class _CachedEndpoints:
    """
    One client endpoint per upstream address, made once: L{Agent} would
    otherwise build (and IDNA-encode the host of) a new endpoint for every
    request, even one that reuses a pooled connection.
    """

    def __init__(self, reactor, connectTimeout: float) -> None:
        self._reactor = reactor
        self._connectTimeout = connectTimeout
        self._policy = BrowserLikePolicyForHTTPS()
        self._endpoints: dict[tuple[bytes, bytes, int], object] = {}

    def endpointForURI(self, uri):
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            host = uri.host.decode("ascii") if isinstance(uri.host, bytes) else uri.host
            endpoint = HostnameEndpoint(
                self._reactor, host, uri.port, timeout=self._connectTimeout)
            if uri.scheme == b"https":
                endpoint = wrapClientTLS(
                    self._policy.creatorForNetloc(uri.host, uri.port), endpoint)
            self._endpoints[key] = endpoint
        return endpoint


class UpstreamAgents:
    """
    One L{Agent} with its own persistent L{HTTPConnectionPool} per upstream.

    @param reactor: the reactor the agents connect with.
    @param connectTimeout: seconds allowed to connect to an upstream.
    """

    def __init__(self, reactor, connectTimeout: float = 30.0) -> None:
        self._reactor = reactor
        self._connectTimeout = connectTimeout
        self._agents: dict[str, tuple[Agent, HTTPConnectionPool]] = {}

    def agentFor(self, key: str, parallel: int = 10) -> Agent:
        """
        @return: the agent of the upstream C{key}, creating it on first use
            with room for C{parallel} idle keep-alive connections.
        """
        entry = self._agents.get(key)
        if entry is None:
            pool = quietPool(self._reactor)
            pool.maxPersistentPerHost = max(parallel, 2)
            pool.retryAutomatically = False
            agent = Agent.usingEndpointFactory(
                self._reactor, _CachedEndpoints(self._reactor, self._connectTimeout), pool=pool)
            entry = self._agents[key] = (agent, pool)
        return entry[0]

    def reset(self, key: str) -> Deferred[None]:
        """
        Close the idle connections to upstream C{key} (its process stopped,
        and the next one may listen on the same port).

        @return: a L{Deferred} that fires when they are closed.
        """
        entry = self._agents.pop(key, None)
        if entry is None:
            return succeed(None)
        return entry[1].closeCachedConnections()

    def closeAll(self) -> Deferred[None]:
        """
        Close every idle connection.

        @return: a L{Deferred} that fires when they are all closed.
        """
        from twisted.internet.defer import gatherResults

        ds = [self.reset(key) for key in list(self._agents)]
        return gatherResults(ds).addCallback(lambda _: None)


class _BodyRelay(Protocol):
    """
    Writes each chunk of an upstream body to the client request as it
    arrives; the upstream transport is the request's producer.
    """

    def __init__(self, request, done: Deferred[None], isGone: Callable[[], bool],
                 meter=None) -> None:
        self.request = request
        self.done = done
        self.isGone = isGone
        self.meter = meter
        self.registered = False

    def connectionMade(self) -> None:
        if not self.isGone():
            # A TransportProxyProducer: the client socket's pause/resume now
            # throttles the upstream socket, and a disconnect stops it.
            self.request.registerProducer(self.transport, True)
            self.registered = True

    def dataReceived(self, data: bytes) -> None:
        if self.meter is not None:
            self.meter.data(data)
        if not self.isGone():
            self.request.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.registered and not self.isGone():
            self.request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)


class RelayResource(Resource):
    """
    Sends one request upstream and streams the answer back.

    @param agent: the upstream's L{Agent}.
    @param url: the full upstream URL (bytes).
    @param method: the HTTP method (bytes).
    @param headers: the client's request headers (hop-by-hop headers are
        removed here).
    @param body: the request body to send: bytes, an L{IBodyProducer}
        (a large upload streamed from its spool file), or L{None}.
    @param writeError: answers a request with an error and finishes it;
        used when the upstream cannot be reached.
    @param meter: observes the exchange, or L{None}: C{response(status,
        headers)} when the upstream answers, C{data(chunk)} for every chunk
        relayed, C{done(status)} at the end, and C{timer} (a
        L{llamaswap.observe.timing.PhaseTimer}) whose phases go out in a
        C{Server-Timing} header.  Metered requests ask the upstream only
        for the codings the meter can read.
    @param headersSent: the client already has a status and headers (a
        loading-state stream was written): append the upstream's body only.
    @param onDone: called once with C{(status or None, failure or None)}
        when the exchange has ended, whatever the outcome: the caller
        releases its lease there.
    """

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        agent: Agent,
        url: bytes,
        method: bytes,
        headers: Headers,
        body: bytes,
        onDone: Callable[[int | None, Failure | None], None],
        writeError: Callable[[object, Exception], None],
        modelId: str = "",
        headersSent: bool = False,
        meter=None,
    ) -> None:
        super().__init__()
        self.agent = agent
        self.url = url
        self.method = method
        self.headers = headers
        self.body = body
        self.onDone = onDone
        self.writeError = writeError
        self.modelId = modelId
        self.headersSent = headersSent
        self.meter = meter
        self._ended = False

    def _end(self, status: int | None, failure: Failure | None) -> None:
        if not self._ended:
            self._ended = True
            if self.meter is not None:
                self.meter.done(status if status is not None else 502)
            self.onDone(status, failure)

    def render(self, request) -> object:
        gone = [False]
        relay: list[_BodyRelay] = []

        def clientGone(_: object) -> None:
            gone[0] = True
            # The channel stops its registered producer on disconnect; do it
            # here too, so that the upstream stops generating whatever the
            # request's transport is.
            if relay and relay[0].transport is not None:
                cast(IPushProducer, relay[0].transport).stopProducing()

        request.notifyFinish().addErrback(clientGone)
        transport = getattr(request, "transport", None)
        setNoDelay = getattr(transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            setNoDelay(True)

        headers = endToEnd(self.headers, REQUEST_DROP)
        if self.meter is not None and headers.hasHeader(b"accept-encoding"):
            readable = filterAcceptEncoding((headers.getRawHeaders(b"accept-encoding") or [b""])[0])
            if readable:
                headers.setRawHeaders(b"accept-encoding", [readable.encode("latin-1")])
            else:
                headers.removeHeader(b"accept-encoding")
        peer = request.getClientAddress()
        host = getattr(peer, "host", None)
        if host:
            prior = headers.getRawHeaders(b"x-forwarded-for", [])
            value = b", ".join([*prior, host.encode("ascii")])
            headers.setRawHeaders(b"x-forwarded-for", [value])
        producer: IBodyProducer | None
        if IBodyProducer.providedBy(self.body):
            producer = self.body
        elif self.body or self.method in (b"POST", b"PUT", b"PATCH"):
            producer = BytesProducer(self.body or b"")
        else:
            producer = None
        d = self.agent.request(self.method, self.url, headers, producer)
        if producer is None or isinstance(producer, BytesProducer):
            # A pooled keep-alive connection the upstream closed just as it
            # was reused fails before any answer; Agent retries only
            # idempotent methods, so retry once here: nothing reached the
            # client yet, and an in-memory body can be sent again.
            def retryStale(f: Failure):
                if not f.check(ResponseNeverReceived, RequestNotSent) or gone[0]:
                    return f
                self.log.info("[{model}] retrying on a fresh connection: {why}",
                              model=self.modelId, why=f.getErrorMessage())
                return self.agent.request(self.method, self.url, headers, producer)

            d.addErrback(retryStale)
        request.notifyFinish().addErrback(lambda _: d.cancel())
        status: list[int | None] = [None]

        def gotResponse(response) -> Deferred[None]:
            status[0] = response.code
            if self.meter is not None:
                self.meter.response(response.code, response.headers)
            if gone[0]:
                response.deliverBody(_Discard())
                return succeed(None)
            if not self.headersSent:
                request.setResponseCode(response.code, response.phrase)
                for name, values in endToEnd(response.headers).getAllRawHeaders():
                    request.responseHeaders.setRawHeaders(name, values)
                contentType = response.headers.getRawHeaders(b"content-type", [b""])[0]
                if b"text/event-stream" in contentType:
                    request.responseHeaders.setRawHeaders(b"x-accel-buffering", [b"no"])
                if self.meter is not None:
                    request.responseHeaders.setRawHeaders(
                        b"server-timing", [self.meter.timer.serverTimingHeader()])
            done: Deferred[None] = Deferred()
            relay.append(_BodyRelay(request, done, lambda: gone[0], self.meter))
            response.deliverBody(relay[0])
            return done

        def finished(_: object) -> None:
            if not gone[0]:
                gone[0] = True
                request.finish()
            self._end(status[0], None)

        def failed(f: Failure) -> None:
            self._end(status[0], f)
            if gone[0]:
                return
            if status[0] is not None:
                # Mid-stream: cut the connection rather than end cleanly, so
                # the client sees a failure and not a truncated success.
                self.log.warn("[{model}] upstream failed mid-response: {why}",
                              model=self.modelId, why=f.getErrorMessage())
                transport = getattr(request, "transport", None)
                if transport is not None:
                    transport.abortConnection()
                return
            self.log.warn("[{model}] upstream unreachable: {why}",
                          model=self.modelId, why=f.getErrorMessage())
            self.writeError(request, UpstreamUnreachable(
                f"upstream unreachable: {f.getErrorMessage()}"))

        d.addCallback(gotResponse).addCallbacks(finished, failed)
        d.addErrback(lambda f: self.log.failure("relay", f))
        return NOT_DONE_YET


class _Discard(Protocol):
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        pass
