"""
Tests for L{llamaswap.proxy.client}: the upstream HTTP/1.1 client, on a
memory reactor (connections are L{StringTransport}s, time a clock).
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import UNKNOWN_LENGTH

from llamaswap.errors import UpstreamTimeout
from llamaswap.proxy.client import NO_LIMITS, Limits, ResponseFailed, UpstreamPool
from llamaswap.proxy.relay import BytesProducer


class Sink:
    def __init__(self) -> None:
        self.started: list = []
        self.data: list[bytes] = []
        self.ended: list = []
        self.reads: list[str] = []

    def responseStarted(self, status, phrase, headers) -> None:
        self.started.append((status, phrase, headers))
        self.reads.append("started")

    def readStarted(self) -> None:
        self.reads.append("(")

    def readEnded(self) -> None:
        self.reads.append(")")

    def bodyData(self, data: bytes) -> None:
        self.data.append(data)
        self.reads.append("data")

    def responseEnded(self, reason) -> None:
        self.ended.append(reason)
        self.reads.append("ended")


class UnknownLengthBody(BytesProducer):
    def __init__(self, body: bytes) -> None:
        super().__init__(body)
        self.length = UNKNOWN_LENGTH  # type: ignore[assignment]


class ClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.pool = UpstreamPool(self.reactor, "127.0.0.1", 5800)

    def send(self, method=b"POST", body=b"{}", limits=NO_LIMITS, headers=()):
        """
        Start a request and connect its (new or pooled) connection.

        @return: C{(sink, transport)}.
        """
        sink = Sink()
        before = len(self.reactor.tcpClients)
        self.pool.request(method, b"http://127.0.0.1:5800/v1/x?q=1", list(headers), body, sink,
                          limits=limits)
        if len(self.reactor.tcpClients) > before:
            factory = self.reactor.tcpClients[-1][2]
            protocol = factory.buildProtocol(None)
            transport = StringTransport()
            protocol.makeConnection(transport)
            # the endpoint's wrapper protocol delivers the connection
            self.protocol = protocol
            self.transport = transport
        return sink, self.transport

    def wrapped(self):
        return getattr(self.protocol, "_wrappedProtocol", self.protocol)

    def answer(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def test_requestHead(self) -> None:
        _, transport = self.send(headers=[(b"X-A", b"1")])
        self.assertEqual(
            transport.value(),
            b"POST /v1/x?q=1 HTTP/1.1\r\nHost: 127.0.0.1:5800\r\nX-A: 1\r\n"
            b"Content-Length: 2\r\n\r\n{}")

    def test_ipv6HostHeader(self) -> None:
        pool = UpstreamPool(self.reactor, "::1", 8080)
        self.assertEqual(pool.hostHeader, b"[::1]:8080")
        self.assertEqual(pool.base, b"http://[::1]:8080")

    def test_streamedBodyOfUnknownLengthIsChunked(self) -> None:
        _, transport = self.send(body=UnknownLengthBody(b"abc"))
        head, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertIn(b"Transfer-Encoding: chunked", head)
        self.assertEqual(body, b"3\r\nabc\r\n0\r\n\r\n")

    def test_lengthBodyAndReuse(self) -> None:
        sink, transport = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhel")
        self.assertEqual(sink.started, [(200, b"OK", [(b"content-type", b"application/json"),
                                                      (b"content-length", b"5")])])
        self.answer(b"lo")
        self.assertEqual(b"".join(sink.data), b"hello")
        self.assertEqual(sink.ended, [None])
        transport.clear()
        second, _ = self.send()
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertTrue(transport.value().startswith(b"POST /v1/x"))
        self.answer(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual(second.ended, [None])

    def test_eachReadIsBracketed(self) -> None:
        """
        What one read from the upstream causes is told between the sink's
        C{readStarted} and C{readEnded}, so the relay can send it to its
        client in one write.
        """
        sink, _ = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")
        self.answer(b"lo")
        self.assertEqual(sink.reads, ["(", "started", "data", ")", "(", "data", "ended", ")"])

    def test_chunkedBodySplitAnywhere(self) -> None:
        sink, _ = self.send()
        wire = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
        for i in range(len(wire)):
            self.answer(wire[i:i + 1])
        self.assertEqual(b"".join(sink.data), b"hello world")
        self.assertEqual(sink.ended, [None])

    def test_chunksOfOneReadAreDeliveredAtOnce(self) -> None:
        sink, _ = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"2\r\nab\r\n2\r\ncd\r\n")
        self.assertEqual(sink.data, [b"abcd"])

    def test_bodyUntilClose(self) -> None:
        sink, _ = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\n\r\nsome")
        self.wrapped().connectionLost()
        self.assertEqual(b"".join(sink.data), b"some")
        self.assertEqual(sink.ended, [None])

    def test_interimAnswerIsSkipped(self) -> None:
        sink, _ = self.send()
        self.answer(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual([s[0] for s in sink.started], [200])
        self.assertEqual(sink.ended, [None])

    def test_headOfAHeadRequestHasNoBody(self) -> None:
        sink, _ = self.send(method=b"HEAD", body=None)
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        self.assertEqual(sink.ended, [None])

    def test_badStatusLine(self) -> None:
        sink, transport = self.send()
        self.answer(b"SPDY nonsense\r\n\r\n")
        [failure] = sink.ended
        self.assertIn("bad status line", failure.getErrorMessage())
        self.assertTrue(transport.disconnecting)

    def test_closedMidBody(self) -> None:
        sink, _ = self.send()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        self.wrapped().connectionLost()
        [failure] = sink.ended
        failure.trap(ResponseFailed)
        self.assertFalse(failure.value.beforeResponse)

    def test_headerTimeout(self) -> None:
        sink, transport = self.send(limits=Limits(responseHeader=60, idle=600))
        self.reactor.advance(59)
        self.assertEqual(sink.ended, [])
        self.reactor.advance(2)
        [failure] = sink.ended
        failure.trap(UpstreamTimeout)
        self.assertTrue(transport.disconnecting)

    def test_idleTimeoutIsFromTheLastByte(self) -> None:
        sink, transport = self.send(limits=Limits(idle=10))
        self.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(5):
            self.reactor.advance(8)
            self.answer(b"1\r\na\r\n")
        self.assertEqual(sink.ended, [])
        self.reactor.advance(11)
        [failure] = sink.ended
        failure.trap(UpstreamTimeout)
        self.assertIn("silent for 10s", failure.getErrorMessage())
        self.assertTrue(transport.disconnecting)

    def test_limitsAreSweptATenthOfTheShortestAtMostEverySecond(self) -> None:
        self.assertEqual(Limits(responseHeader=60, idle=600).sweep, 1.0)
        self.assertEqual(Limits(responseHeader=0.5, idle=600).sweep, 0.05)
        self.assertEqual(Limits(idle=2).sweep, 0.2)
        self.assertEqual(NO_LIMITS.sweep, 0)

    def test_noLimitsNoTimer(self) -> None:
        self.send()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_cancelAbortsAndStaysQuiet(self) -> None:
        sink = Sink()
        exchange = self.pool.request(b"POST", b"/v1/x", [], b"{}", sink)
        factory = self.reactor.tcpClients[-1][2]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
        exchange.cancel()
        self.assertTrue(transport.disconnecting)
        getattr(protocol, "_wrappedProtocol", protocol).connectionLost()
        self.assertEqual(sink.ended, [])


class PoolTimeoutsTests(SynchronousTestCase):
    """
    The pool's C{timeouts.connect} (the connect attempt's limit) and
    C{timeouts.idleConn} (how long an idle keep-alive connection is kept).
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def exchange(self, pool: UpstreamPool, answer: bool = True):
        """
        One request on a new connection, answered (it goes idle) or not.

        @return: its protocol and transport.
        """
        sink = Sink()
        pool.request(b"GET", b"/x", [], None, sink)
        protocol = self.reactor.tcpClients[-1][2].buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        if answer:
            self.answer(protocol)
        return protocol, transport

    def answer(self, protocol) -> None:
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    def test_connectTimeoutIsTheEndpoints(self) -> None:
        UpstreamPool(self.reactor, "127.0.0.1", 5800, connectTimeout=7).request(
            b"GET", b"/x", [], None, Sink())
        self.assertEqual(self.reactor.tcpClients[-1][3], 7)

    def test_idleConnectionClosedAfterIdleConn(self) -> None:
        pool = UpstreamPool(self.reactor, "127.0.0.1", 5800, idleTimeout=90)
        early, first = self.exchange(pool, answer=False)
        later, second = self.exchange(pool, answer=False)  # a second connection
        self.answer(early)  # idle from 0 s on
        self.reactor.advance(60)
        self.answer(later)  # idle from 60 s on
        self.reactor.advance(29)
        self.assertFalse(first.disconnecting or second.disconnecting)
        self.reactor.advance(1)
        self.assertTrue(first.disconnecting)
        self.assertFalse(second.disconnecting)
        self.reactor.advance(59)
        self.assertFalse(second.disconnecting)
        self.reactor.advance(1)
        self.assertTrue(second.disconnecting)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_reusedConnectionIsNotClosed(self) -> None:
        pool = UpstreamPool(self.reactor, "127.0.0.1", 5800, idleTimeout=10)
        protocol, transport = self.exchange(pool)
        self.reactor.advance(9)
        pool.request(b"GET", b"/x", [], None, Sink())
        self.assertEqual(len(self.reactor.tcpClients), 1)  # the idle one, reused
        self.reactor.advance(5)  # busy when the timer fires: left alone
        self.assertFalse(transport.disconnecting)
        self.answer(protocol)
        self.reactor.advance(9)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_noIdleConnNoTimer(self) -> None:
        self.exchange(UpstreamPool(self.reactor, "127.0.0.1", 5800))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_closeCancelsTheIdleTimer(self) -> None:
        pool = UpstreamPool(self.reactor, "127.0.0.1", 5800, idleTimeout=10)
        self.exchange(pool)
        pool.close()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_clientsApplyEachModelsTimeouts(self) -> None:
        from llamaswap.config.model import TimeoutsConfig
        from llamaswap.proxy.relay import UpstreamClients

        clients = UpstreamClients(self.reactor)
        slow = TimeoutsConfig(connect=3, idleConn=20)
        pool = clients.clientFor("m", b"http://127.0.0.1:5800/v1", 4, slow)
        self.assertEqual((pool.connectTimeout, pool.idleTimeout), (3, 20))
        self.assertIs(clients.clientFor("m", b"http://127.0.0.1:5800/v2", 4, slow), pool)
        other = clients.clientFor("m", b"http://127.0.0.1:5800/v1", 4, TimeoutsConfig(connect=9))
        self.assertIsNot(other, pool)
        self.assertTrue(pool.closed)
        self.assertEqual(other.connectTimeout, 9)
        default = clients.clientFor("n", b"http://127.0.0.1:5801/")
        self.assertEqual((default.connectTimeout, default.idleTimeout), (30.0, 0))


class RelayOverClientTests(SynchronousTestCase):
    """
    L{RelayResource} over an L{UpstreamPool}: the upstream connection is
    the client request's push producer.
    """

    def test_slowClientPausesTheUpstreamSocket(self) -> None:
        from twisted.web.http_headers import Headers
        from twisted.web.test.requesthelper import DummyRequest

        from llamaswap.proxy.relay import RelayResource

        class PushRequest(DummyRequest):
            producer = None

            def registerProducer(self, producer, streaming):
                self.producer = producer

            def unregisterProducer(self):
                self.producer = None

        reactor = MemoryReactorClock()
        pool = UpstreamPool(reactor, "127.0.0.1", 5800)
        request = PushRequest([b"v1"])
        request.method = b"POST"
        ended = []
        RelayResource(pool, b"http://127.0.0.1:5800/v1/chat/completions", b"POST", Headers(),
                      b"{}", onDone=lambda s, f: ended.append(s),
                      writeError=lambda req, error: None).render(request)
        protocol = reactor.tcpClients[-1][2].buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                              b"transfer-encoding: chunked\r\n\r\n9\r\ndata: a\n\n\r\n")
        self.assertEqual(b"".join(request.written), b"data: a\n\n")
        request.producer.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        request.producer.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        protocol.dataReceived(b"0\r\n\r\n")
        self.assertIsNone(request.producer)
        self.assertEqual(ended, [200])
        self.assertEqual(request.finished, 1)
