"""
Tests for L{llamaswap.listening}: the request-head deadline and the client
connection cap, on memory transports and a fake clock.
"""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.static import Data

from llamaswap.config import loadConfigText
from llamaswap.listening import (
    ConnectionCap,
    automaticConnectionCap,
    headDeadlineProtocol,
    listeningService,
)
from llamaswap.service import AccessLoggingSite

ADDRESS = IPv4Address("TCP", "127.0.0.1", 40000)


class DeadlineSite(Site):
    protocol = headDeadlineProtocol
    headDeadline = 3.0


def makeSite(clock: MemoryReactorClock) -> Site:
    root = Resource()
    root.putChild(b"health", Data(b"OK", "text/plain"))
    return DeadlineSite(root, reactor=clock)


class HeadDeadlineTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.site = makeSite(self.clock)

    def connect(self):
        protocol = self.site.buildProtocol(ADDRESS)
        transport = StringTransport(peerAddress=ADDRESS)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_trickledHeadIsCutOff(self) -> None:
        """
        One byte every 2 s resets the idle timeout each time, but not the
        head's deadline: 3 s after the first byte the client gets a 408
        and the connection is closed.
        """
        protocol, transport = self.connect()
        head = b"GET /health HTTP/1.1\r\nHost: x\r\n"
        protocol.dataReceived(head[:1])
        self.clock.advance(2)
        protocol.dataReceived(head[1:2])
        self.clock.advance(0.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n"))
        self.assertIn(b'"type": "invalid_request_error"', transport.value())
        self.assertTrue(transport.disconnecting)

    def test_headInTimeIsServedAndTheNextHeadHasItsOwnDeadline(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        self.clock.advance(2.5)
        protocol.dataReceived(b"\r\n")
        self.assertIn(b"200 OK", transport.value())
        self.clock.advance(10)  # idle between requests: not the head's deadline
        self.assertFalse(transport.disconnecting)
        transport.clear()
        protocol.dataReceived(b"GET /health HT")
        self.clock.advance(3.1)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408"))

    def test_slowBodyIsNotTheHeadsBusiness(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab"
        )
        self.clock.advance(5)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_closedConnectionLeavesNoTimer(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /")
        protocol.connectionLost(None)
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.getTime() == 3.0], [])

    def test_wholeHeadInOneReadSetsNoTimer(self) -> None:
        """
        A head that arrives in one read is never timed: no head timer is
        made for it (twisted.web serves thousands of those a second).
        """
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"200 OK", transport.value())
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.getTime() == 3.0], [])

    def test_malformedRequestGetsAJSON400(self) -> None:
        """
        A request line or header twisted.web refuses is answered with an
        OpenAI-style JSON 400 and the connection is closed.
        """
        for head in (b"GET /v1/\xff HTTP/1.1\r\nHost: x\r\n\r\n",
                     b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
                     b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"):
            protocol, transport = self.connect()
            protocol.dataReceived(head)
            answer = transport.value()
            self.assertTrue(answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), head)
            error = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
            self.assertEqual((error["code"], error["type"]), (400, "invalid_request_error"))
            self.assertTrue(transport.disconnecting)

    def test_daemonSiteHasTheDeadline(self) -> None:
        site = AccessLoggingSite(Resource(), clock=self.clock)
        self.assertIs(type(site).protocol, headDeadlineProtocol)


class Recorder(Resource):
    """
    Answers C{ok} (C{post}) and keeps what twisted.web made of each request.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple] = []

    def render(self, request) -> bytes:
        self.seen.append((
            request.method, request.uri, request.path, request.args, request.clientproto,
            sorted(request.requestHeaders.getAllRawHeaders()), request.content.read(),
            request.received_cookies))
        return b"ok"


class WholeRequestTests(SynchronousTestCase):
    """
    A plain request that arrives whole is taken apart in one step: the
    resource sees exactly what the line parser would have given it.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.recorder = Recorder()
        self.site = AccessLoggingSite(self.recorder, clock=self.clock)
        self.site.reactor = self.clock
        self.site.bodyLimit = 64
        self.site.accessLog = Logger(observer=lambda event: None)

    def connect(self, lineParser: bool = True):
        protocol = self.site.buildProtocol(ADDRESS)
        transport = StringTransport(peerAddress=ADDRESS)
        protocol.makeConnection(transport)
        if not lineParser:
            def refused(line: bytes) -> None:
                raise AssertionError(f"the line parser got {line!r}")
            protocol._channel.lineReceived = refused
        return protocol, transport

    def answers(self, transport) -> list[bytes]:
        """
        @return: the responses written, without their C{Date} headers.
        """
        lines = transport.value().split(b"\r\n")
        return [line for line in lines if not line.startswith(b"Date:")]

    REQUESTS = [
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
        b"\r\nContent-Length: 13\r\nX-Many: a\r\nx-many:  b \r\nCookie: k=v\r\n\r\n"
        b'{"model":"m"}',
        b"POST /v1/embeddings?a=1&b=2 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /upstream/m/%2Fx HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        # What httpx and requests send.
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n"
        b"Content-Length: 2\r\n\r\n{}",
    ]

    def test_wholeRequestIsWhatTheLineParserMakes(self) -> None:
        for raw in self.REQUESTS:
            protocol, whole = self.connect(lineParser=False)
            protocol.dataReceived(raw)
            protocol, parsed = self.connect()
            for i in range(len(raw)):
                protocol.dataReceived(raw[i:i + 1])
            first, second = self.recorder.seen[-2:]
            self.assertEqual(first, second, raw)
            self.assertEqual(self.answers(whole), self.answers(parsed), raw)
            self.assertIn(b"HTTP/1.1 200 OK", whole.value())
            self.assertFalse(whole.disconnecting)

    def test_theIdleTimeoutWaitsForTheAnswerThenCounts(self) -> None:
        """
        A request taken whole is never timed out while it is answered,
        however long that takes; once answered, its connection is closed
        after the site's idle timeout, as a parsed one's is.
        """
        held: list = []

        class Slow(Resource):
            isLeaf = True

            def render(self, request):
                held.append(request)
                return NOT_DONE_YET

        self.site.resource = Slow()
        for lineParser in (False, True):
            del held[:]
            protocol, transport = self.connect(lineParser=lineParser)
            raw = self.REQUESTS[0]
            if lineParser:
                for i in range(len(raw)):
                    protocol.dataReceived(raw[i:i + 1])
            else:
                protocol.dataReceived(raw)
            self.clock.advance(self.site.timeOut * 3 + 1)
            self.assertFalse(transport.disconnecting, lineParser)
            [request] = held
            request.write(b"late")
            request.finish()
            self.clock.advance(self.site.timeOut - 1)
            self.assertFalse(transport.disconnecting, lineParser)
            self.clock.advance(2)
            self.assertTrue(transport.disconnecting, lineParser)

    def test_requestsInOneReadAreAnsweredInTurn(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b"".join(self.REQUESTS))
        self.assertEqual([seen[1] for seen in self.recorder.seen],
                         [b"/v1/chat/completions", b"/v1/embeddings?a=1&b=2",
                          b"/upstream/m/%2Fx", b"/v1/embeddings"])
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 4)

    def test_otherRequestsAreTheLineParsers(self) -> None:
        """
        What the one-step path leaves alone is answered as twisted.web
        always answers it.
        """
        post = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        protocol, transport = self.connect()
        protocol.dataReceived(post + b"Content-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        self.assertEqual(transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        protocol.dataReceived(b"{}")
        self.assertEqual(self.recorder.seen[-1][6], b"{}")

        protocol, transport = self.connect()
        protocol.dataReceived(post + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
        self.assertEqual(self.recorder.seen[-1][6], b"{}")

        for closing in (b"Connection: close\r\n", b"Connection: keep-alive\r\nConnection: close\r\n",
                        b"Connection: Upgrade CLOSE\r\n"):
            protocol, transport = self.connect()
            protocol.dataReceived(post + closing + b"Content-Length: 0\r\n\r\n")
            self.assertEqual(b"Connection: close" in transport.value(),
                             b"keep-alive" not in closing, closing)
            self.assertEqual(transport.disconnecting, b"keep-alive" not in closing, closing)

        # A body over the limit (whole or not) is the request's to refuse.
        for split in (False, True):
            protocol, transport = self.connect()
            raw = post + b"Content-Length: 65\r\n\r\n" + b"x" * 65
            for piece in ([raw[:-1], raw[-1:]] if split else [raw]):
                protocol.dataReceived(piece)
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "), split)
            self.assertTrue(transport.disconnecting)

        for bad in (post + b"Content-Length: 1\r\nContent-Length: 1\r\n\r\nx",
                    post + b"Bad\x00Header: x\r\n\r\n",
                    b"POST /a\xff HTTP/1.1\r\n\r\n"):
            protocol, transport = self.connect()
            protocol.dataReceived(bad)
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 Bad Request"), bad)

        protocol, transport = self.connect()
        protocol.dataReceived(post + b" folded\r\n\r\n")  # an obsolete continuation line
        self.assertIn((b"Host", [b"x folded"]), self.recorder.seen[-1][5])

        seen = len(self.recorder.seen)
        protocol, transport = self.connect()
        protocol.dataReceived(post + b"Content-Length: 4\r\n\r\n{}")  # body still to come
        self.assertEqual(len(self.recorder.seen), seen)
        protocol.dataReceived(b"{}")
        self.assertEqual(self.recorder.seen[-1][6], b"{}{}")


class ConnectionCapTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.cap = ConnectionCap(makeSite(self.clock), 2, self.clock)
        self.cap.reserve = 2

    def connect(self):
        protocol = self.cap.buildProtocol(ADDRESS)
        transport = StringTransport(peerAddress=ADDRESS)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_pastTheCapOnlyHealthIsServed(self) -> None:
        """
        Past the cap, a connection of the reserve that asks for anything
        but C{/health} gets a 503 and is closed; C{/health} is answered,
        and the connection closed after it.
        """
        self.connect()
        self.connect()
        self.assertEqual(self.cap.open, 2)
        other, otherTransport = self.connect()
        other.dataReceived(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(
            otherTransport.value().startswith(b"HTTP/1.1 503 Service Unavailable\r\n"))
        self.assertIn(b"too many client connections", otherTransport.value())
        self.assertTrue(otherTransport.disconnecting)
        health, healthTransport = self.connect()
        health.dataReceived(b"GET /heal")
        self.assertEqual(healthTransport.value(), b"")
        health.dataReceived(b"th HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        self.assertTrue(healthTransport.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertIn(b"Connection: close", healthTransport.value())
        self.assertTrue(healthTransport.value().endswith(b"OK"))
        self.assertTrue(healthTransport.disconnecting)
        self.assertEqual(self.cap.refused, 2)

    def test_pastTheReserveAConnectionGetsA503AtOnce(self) -> None:
        for _ in range(4):
            self.connect()
        self.assertEqual(self.cap.open, 4)
        _, fifth = self.connect()
        self.assertTrue(fifth.value().startswith(b"HTTP/1.1 503 Service Unavailable\r\n"))
        self.assertTrue(fifth.disconnecting)
        self.assertEqual(self.cap.open, 4)

    def test_aClosedConnectionFreesItsPlace(self) -> None:
        first, _ = self.connect()
        self.connect()
        first.connectionLost(None)
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /health HTTP/1.0\r\n\r\n")
        self.assertIn(b"200 OK", transport.value())


class ListeningServiceTests(SynchronousTestCase):
    def test_daemonTakesTheCapFromTheConfig(self) -> None:
        from llamaswap.service import makeRootService

        config = loadConfigText("maxConnections: 3\nmodels:\n  m: {cmd: 'srv --port ${PORT}'}\n")
        root = makeRootService(config, MemoryReactorClock(), "tcp:0:interface=127.0.0.1")
        self.assertEqual(root.getServiceNamed("web").factory.limit, 3)

    def test_everyListenerSharesOneCap(self) -> None:
        clock = MemoryReactorClock()
        service = listeningService(["tcp:0", "tcp:1"], makeSite(clock), clock, 7)
        factories = {child.factory for child in service}
        self.assertEqual(len(factories), 1)
        [cap] = factories
        self.assertEqual(cap.limit, 7)

    def test_automaticCapLeavesRoom(self) -> None:
        clock = MemoryReactorClock()
        service = listeningService("tcp:0", makeSite(clock), clock)
        self.assertEqual(service.factory.limit, automaticConnectionCap())
        self.assertGreaterEqual(automaticConnectionCap(), 16)

    def test_configKey(self) -> None:
        self.assertEqual(loadConfigText("maxConnections: 500\n").maxConnections, 500)
        self.assertEqual(loadConfigText("").maxConnections, 0)
