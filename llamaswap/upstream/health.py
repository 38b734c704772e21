# -*- test-case-name: tests.integration.test_upstream_real -*-
"""
The readiness probe of an upstream: one C{GET} on its check endpoint.
"""

from __future__ import annotations

import ipaddress

from zope.interface import implementer

from typing import cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.interfaces import IPushProducer, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    _StandardEndpointFactory,
)
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IResponse

from llamaswap.httpclient import quietPool
from llamaswap.interfaces import IHealthProbe

__all__ = ["HealthProbe", "ProbeEndpoints"]

#: Delay between connection attempts to the addresses of a host name.
#: L{HostnameEndpoint}'s default (0.3 s) is also how long a refused
#: connection takes to fail, which a probe of a starting upstream pays on
#: every attempt before the upstream listens.
NAME_ATTEMPT_DELAY = 0.002


@implementer(IAgentEndpointFactory)
class ProbeEndpoints:
    """
    Endpoints for the probe's requests whose refused connection fails at
    once: a plain TCP endpoint for an IP literal (the usual C{127.0.0.1}),
    and for a host name a L{HostnameEndpoint} with a tiny attempt delay.
    """

    def __init__(self, reactor: object, timeout: float) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self._standard = _StandardEndpointFactory(
            reactor, BrowserLikePolicyForHTTPS(), timeout, None)

    def endpointForURI(self, uri) -> IStreamClientEndpoint:
        """
        @param uri: a L{twisted.web.client.URI} with an C{http} scheme.
        @return: the endpoint to connect to C{uri.host:uri.port}.
        """
        if uri.scheme != b"http":
            return self._standard.endpointForURI(uri)
        host = uri.host.decode("idna").strip("[]")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return HostnameEndpoint(
                self._reactor, uri.host, uri.port, timeout=self._timeout,
                attemptDelay=NAME_ATTEMPT_DELAY,
            )
        endpoint = TCP4ClientEndpoint if address.version == 4 else TCP6ClientEndpoint
        return endpoint(self._reactor, host, uri.port, timeout=self._timeout)


class _Discard(Protocol):
    """
    Reads a response body and throws it away; fires C{finished} with L{None}
    when the body ends, however it ends.
    """

    def __init__(self, finished: Deferred[None]) -> None:
        self.finished = finished

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        # The status line has already decided the answer; a body cut short
        # (PotentialDataLoss, a reset) does not change it.  Never callback()
        # with the Failure itself.
        self.finished.callback(None)

    def stop(self) -> None:
        """
        Drop the connection (used when the probe times out mid-body).
        """
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()


@implementer(IHealthProbe)
class HealthProbe:
    """
    Probes upstream readiness over its own non-persistent connection pool, so
    that a probe never holds a connection the proxy could reuse and nothing
    stays open between probes.
    """

    log = Logger()

    def __init__(
        self, reactor: object, timeout: float = 2.0, agent: IAgent | None = None
    ) -> None:
        """
        @param reactor: provides C{IReactorTCP} and C{IReactorTime}; also the
            clock of the per-probe timeout.
        @param timeout: seconds one probe may take, connecting included.
        @param agent: an L{IAgent} to use instead of the default L{Agent}
            (tests).
        """
        self._clock = reactor
        self._timeout = timeout
        self._pool = quietPool(reactor, persistent=False)
        self._agent: IAgent = (
            agent
            if agent is not None
            else Agent.usingEndpointFactory(
                reactor, ProbeEndpoints(reactor, timeout), pool=self._pool
            )
        )

    def check(self, url: str) -> Deferred[bool]:
        """
        Probe C{url} once.

        @return: a L{Deferred} that fires with C{True} when the upstream
            answered 200 (its body read and discarded), and with C{False} for
            any other status, a refused or failed connection, or no complete
            answer within the timeout.  It never errbacks, except with
            L{twisted.internet.defer.CancelledError} when the caller cancels.
        """
        requested = self._agent.request(b"GET", url.encode("utf-8"))
        requested.addCallback(self._readBody)
        # addTimeout turns its own cancellation into TimeoutError and leaves
        # a caller's cancel() a CancelledError.
        requested.addTimeout(self._timeout, self._clock)  # type: ignore[arg-type]

        def failed(reason: Failure) -> bool | Failure:
            if reason.check(CancelledError):
                return reason
            self.log.debug(
                "health probe {url} failed: {error}",
                url=url,
                error=reason.getErrorMessage(),
            )
            return False

        requested.addErrback(failed)
        return cast("Deferred[bool]", requested)

    def _readBody(self, response: IResponse) -> Deferred[bool]:
        done: Deferred[None] = Deferred(lambda _: body.stop())
        body = _Discard(done)
        response.deliverBody(body)
        code = response.code
        return done.addCallback(lambda _: code == 200)

    def close(self) -> Deferred[None]:
        """
        Close the pool's cached connections.

        @return: a L{Deferred} that fires when they are closed.
        """
        return self._pool.closeCachedConnections()
