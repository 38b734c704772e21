"""
Tests for L{llamaswap.web.site}: the access-log line of each request.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from llamaswap.web.site import AccessLoggingSite


def loggedRequest(clock: Clock, path: bytes = b"/v1/chat/completions") -> DummyRequest:
    """
    @return: a finished POST to C{path} that arrived now, as the access log
        reads it.
    """
    request = DummyRequest(path.strip(b"/").split(b"/"))
    request.method = b"POST"
    request.uri = request.path = path
    request.clientproto = b"HTTP/1.1"
    request.code = 200
    request.sentLength = 123
    request.requestHeaders.setRawHeaders(b"user-agent", [b"curl/8"])
    request.requestHeaders.setRawHeaders(b"x-forwarded-for", [b"10.0.0.7, 10.0.0.1"])
    request.arrived = clock.seconds()
    return request


class AccessLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(100)
        self.site = AccessLoggingSite(Resource(), clock=self.clock)
        self.events: list[dict] = []
        self.site.accessLog = Logger(namespace="llamaswap.access", observer=self.events.append)

    def request(self, path: bytes = b"/v1/chat/completions") -> DummyRequest:
        return loggedRequest(self.clock, path)

    def test_oneLineInTheReferencesFormat(self) -> None:
        request = self.request()
        self.clock.advance(0.0125)
        self.site.log(request)
        [event] = self.events
        self.assertEqual(
            formatEvent(event),
            'Request 10.0.0.7 "POST /v1/chat/completions HTTP/1.1" 200 123 "curl/8" 12.5ms')
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertEqual(event["log_namespace"], "llamaswap.access")
        self.assertEqual((event["ip"], event["status"], event["size"]), ("10.0.0.7", 200, 123))
        self.assertIsInstance(event["log_time"], float)

    def test_theSitesOwnLoggerIsInTheAccessNamespace(self) -> None:
        """
        Without a logger given, the access lines go out in the
        C{llamaswap.access} namespace, from one logger made with the site.
        """
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        site = AccessLoggingSite(Resource(), clock=self.clock)
        self.assertIs(site.accessLog, site.accessLog)
        site.log(self.request())
        [event] = [e for e in events if e.get("log_format") == "{line}"]
        self.assertEqual(event["log_namespace"], "llamaswap.access")
        self.assertIs(event["log_source"], site)

    def test_loggedOnceAnd499WhenTheClientClosed(self) -> None:
        request = self.request()
        self.site.log(request, clientClosed=True)
        self.site.log(request)
        [event] = self.events
        self.assertEqual(event["status"], 499)

    def test_theClientsAddressComesFromItsHeadersOrItsPeer(self) -> None:
        """
        The first C{X-Forwarded-For} entry, else C{X-Real-IP}, else the
        peer's address.
        """
        realIP = self.request()
        realIP.requestHeaders.removeHeader(b"x-forwarded-for")
        realIP.requestHeaders.setRawHeaders(b"x-real-ip", [b" 10.0.0.9 "])
        peer = self.request()
        peer.requestHeaders.removeHeader(b"x-forwarded-for")
        peer.requestHeaders.removeHeader(b"user-agent")
        peer.client = IPv4Address("TCP", "192.0.2.1", 5000)
        unknown = self.request()
        unknown.requestHeaders.removeHeader(b"x-forwarded-for")
        for request in (realIP, peer, unknown):
            self.site.log(request)
        self.assertEqual([e["ip"] for e in self.events], ["10.0.0.9", "192.0.2.1", "-"])
        self.assertIn('"" ', formatEvent(self.events[1]))

    def test_quietPathsAreNotLogged(self) -> None:
        self.site.log(self.request(b"/metrics"))
        self.site.log(self.request(b"/wol-health"))
        self.assertEqual(self.events, [])


class AccessLogLaterTests(SynchronousTestCase):
    """
    An access log whose lines are put off (to the end of the reactor's
    turn, in the daemon).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(100)
        self.queued: list = []
        self.site = AccessLoggingSite(Resource(), clock=self.clock,
                                      later=lambda f, *args: self.queued.append((f, args)))
        self.events: list[dict] = []
        self.site.accessLog = Logger(namespace="llamaswap.access", observer=self.events.append)

    def test_theLineIsWrittenLaterWithItsEndTime(self) -> None:
        """
        The line waits for the later call; its duration and time are those
        of the request's end, and a client that closed is still a 499.
        """
        request = loggedRequest(self.clock)
        self.clock.advance(0.25)
        self.site.log(request)
        closed = loggedRequest(self.clock)
        self.site.log(closed, clientClosed=True)
        self.site.log(closed)
        self.assertEqual(self.events, [])
        self.clock.advance(5)
        for f, args in self.queued:
            f(*args)
        first, second = self.events
        self.assertTrue(formatEvent(first).endswith(" 200 123 \"curl/8\" 250ms"), formatEvent(first))
        self.assertEqual(first["duration"], 0.25)
        self.assertLess(abs(first["log_time"] - second["log_time"]), 1)
        self.assertEqual((second["status"], second["duration"]), (499, 0))

    def test_quietPathsQueueNothing(self) -> None:
        self.site.log(AccessLogTests.request(self, b"/metrics"))  # type: ignore[arg-type]
        self.assertEqual(self.queued, [])
