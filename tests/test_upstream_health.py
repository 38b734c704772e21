"""
Tests for L{llamaswap.upstream.health.ProbeEndpoints}: the probe connects to
an IP literal directly, so that a refused connection fails at once.
"""

from __future__ import annotations

from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI

from llamaswap.upstream.health import NAME_ATTEMPT_DELAY, ProbeEndpoints


class ProbeEndpointsTests(SynchronousTestCase):
    def endpoint(self, url: bytes):
        return ProbeEndpoints(MemoryReactorClock(), 2.0).endpointForURI(URI.fromBytes(url))

    def test_ipv4Literal(self) -> None:
        """
        C{127.0.0.1} gets a plain TCP4 endpoint (no attempt delay).
        """
        endpoint = self.endpoint(b"http://127.0.0.1:5800/health")
        self.assertIsInstance(endpoint, TCP4ClientEndpoint)
        self.assertEqual((endpoint._host, endpoint._port), ("127.0.0.1", 5800))

    def test_ipv6Literal(self) -> None:
        """
        C{[::1]} gets a TCP6 endpoint.
        """
        endpoint = self.endpoint(b"http://[::1]:5801/health")
        self.assertIsInstance(endpoint, TCP6ClientEndpoint)
        self.assertEqual(endpoint._port, 5801)

    def test_hostName(self) -> None:
        """
        A host name is resolved by a L{HostnameEndpoint} whose attempt delay
        is tiny (its default, 0.3 s, is what a refused connection cost).
        """
        endpoint = self.endpoint(b"http://localhost:5802/health")
        self.assertIsInstance(endpoint, HostnameEndpoint)
        self.assertEqual(endpoint._attemptDelay, NAME_ATTEMPT_DELAY)
