"""
Tests for L{llamaswap.proxy.relay} over L{llamaswap.proxy.client}, on real
loopback sockets: a scripted upstream, the relay behind an
L{AccessLoggingSite}, and a raw client.
"""

from __future__ import annotations

import gc
import weakref

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from llamaswap.listening import ConnectionCap
from llamaswap.observe.activity import ActivityLog
from llamaswap.observe.exchange import ExchangeMeter
from llamaswap.proxy.client import Limits
from llamaswap.proxy import relay as relayModule
from llamaswap.proxy.relay import RelayResource, UpstreamClients
from llamaswap.web.errors import toError, writeError
from llamaswap.web.site import AccessLoggingSite

HEAD_SSE = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n")


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body), body)


def dechunk(data: bytes) -> bytes:
    """
    @return: the payload of a chunked response body C{data} (after its head).
    """
    body = data.partition(b"\r\n\r\n")[2]
    out = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        n = int(size, 16)
        out, body = out + rest[:n], rest[n + 2:]
    return out


def complete(data: bytes) -> bool:
    """
    @return: whether C{data} holds a whole response (Content-Length or
        chunked).
    """
    head, sep, body = data.partition(b"\r\n\r\n")
    if sep and b"transfer-encoding: chunked" in head.lower():
        return body.endswith(b"0\r\n\r\n")
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return sep and len(body) >= int(line.split(b":")[1])
    return False


async def until(predicate, what: str, timeout: float = 10.0) -> None:
    """
    Wait (polling the real reactor) until C{predicate()} holds.
    """
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


class ScriptedUpstream(Protocol):
    """
    An upstream connection whose answers the test writes by hand.
    """

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        self.received = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        script = self.factory.script
        if script is not None and b"\r\n\r\n" in self.received:
            answer, self.received = script(self), b""
            if answer:
                self.transport.write(answer)

    def connectionLost(self, reason) -> None:
        self.lost = True


class RawClient(Protocol):
    def connectionMade(self) -> None:
        self.data = b""
        self.closed = False
        self.factory.connected.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason) -> None:
        self.closed = True


class RelaySocketTests(TestCase):
    """
    The relay behind a site listening on its own: the client connection's
    transport is the plain TCP one.
    """

    #: Whether the site listens through L{ConnectionCap}, as the daemon's does.
    capped = False

    def setUp(self) -> None:
        self.upstreamFactory = Factory.forProtocol(ScriptedUpstream)
        self.upstreamFactory.connections = []
        self.upstreamFactory.script = None
        upstreamPort = reactor.listenTCP(0, self.upstreamFactory, interface="127.0.0.1")
        self.addCleanup(upstreamPort.stopListening)
        self.url = b"http://127.0.0.1:%d" % upstreamPort.getHost().port
        self.clients = UpstreamClients(reactor)
        self.addCleanup(self.clients.closeAll)
        self.limits = Limits()
        self.timeouts = None
        self.activity = ActivityLog(10, reactor)
        self.ended: list = []
        self.logged: list = []
        test = self

        class Front(Resource):
            isLeaf = True

            def render(self, request):
                meter = ExchangeMeter("m", request.path.decode(), reactor, test.activity)
                return RelayResource(
                    test.clients.clientFor("m", test.url, timeouts=test.timeouts),
                    test.url + request.uri,
                    request.method, request.requestHeaders, request.content.read() or None,
                    onDone=lambda status, failure: test.ended.append((status, failure)),
                    writeError=lambda req, error: writeError(req, toError(error)),
                    modelId="m", meter=meter, limits=test.limits,
                ).render(request)

        site = AccessLoggingSite(Front(), clock=reactor)
        site.accessLog = Logger(observer=self.logged.append)
        self.cap = ConnectionCap(site, 100, reactor)
        port = reactor.listenTCP(0, self.cap if self.capped else site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    async def client(self) -> RawClient:
        factory = ClientFactory.forProtocol(RawClient)
        factory.connected = Deferred()
        connector = reactor.connectTCP("127.0.0.1", self.port, factory)
        self.addCleanup(connector.disconnect)
        return await factory.connected

    def post(self, body: bytes = b'{"model":"m"}', extra: bytes = b"") -> bytes:
        return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
                % (len(body), extra, body))

    def upstreams(self) -> list[ScriptedUpstream]:
        return self.upstreamFactory.connections

    async def test_headersReachTheClientWhileTheUpstreamThinks(self) -> None:
        """
        An upstream that sends its status and headers and then stalls: the
        client has the status line and headers already.
        """
        self.upstreamFactory.script = lambda up: HEAD_SSE
        client = await self.client()
        client.transport.write(self.post())
        await until(lambda: b"\r\n\r\n" in client.data, "the response head")
        self.assertTrue(client.data.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertIn(b"X-Accel-Buffering: no", client.data)
        self.assertFalse(client.closed)

    async def test_streamedChunksAreDecodedAndRelayed(self) -> None:
        """
        Chunked framing split at odd places is removed upstream-side and the
        events reach the client, then the exchange ends with 200.
        """
        events = b"data: a\n\n" * 3
        framed = b"%x\r\n%s\r\n0\r\n\r\n" % (len(events), events)
        self.upstreamFactory.script = lambda up: None
        client = await self.client()
        client.transport.write(self.post())
        await until(lambda: self.upstreams() and self.upstreams()[0].received == b"",
                    "the upstream request")
        up = self.upstreams()[0]
        wire = HEAD_SSE + framed
        for i in range(0, len(wire), 7):
            up.transport.write(wire[i:i + 7])
            await deferLater(reactor, 0.001, lambda: None)
        await until(lambda: self.ended, "the end of the exchange")
        self.assertEqual(self.ended[0][0], 200)
        await until(lambda: client.data.endswith(b"0\r\n\r\n"), "the client's last chunk")
        self.assertEqual(dechunk(client.data), events)

    async def test_anEndedExchangeIsFreedWithoutTheCollector(self) -> None:
        """
        An exchange that has ended leaves nothing in a reference cycle: its
        relay, and the request, meter and exchange objects it holds, are
        freed by reference counting at once (the collector stays off here).
        """
        relays: list[weakref.ref] = []

        class Watched(relayModule._Relay):
            def __init__(self, *args) -> None:
                super().__init__(*args)
                relays.append(weakref.ref(self))

        self.patch(relayModule, "_Relay", Watched)
        self.upstreamFactory.script = lambda up: ok(b'{"ok": true}')
        client = await self.client()
        wasEnabled = gc.isenabled()
        gc.disable()
        if wasEnabled:
            self.addCleanup(gc.enable)
        for n in (1, 2, 3):
            client.transport.write(self.post())
            await until(lambda: len(self.ended) == n, "the exchange")
            await until(lambda: client.data.count(b'{"ok": true}') == n, "the answer")
        await deferLater(reactor, 0, lambda: None)
        self.assertEqual(len(relays), 3)
        self.assertEqual([ref() for ref in relays], [None, None, None])

    async def test_keepAliveConnectionIsReused(self) -> None:
        self.upstreamFactory.script = lambda up: ok(b"{}")
        client = await self.client()
        client.transport.write(self.post())
        await until(lambda: len(self.ended) == 1, "the first exchange")
        client.transport.write(self.post())
        await until(lambda: len(self.ended) == 2, "the second exchange")
        self.assertEqual(len(self.upstreams()), 1)
        self.assertEqual([status for status, _ in self.ended], [200, 200])

    async def test_staleKeepAliveConnectionIsRetriedOnce(self) -> None:
        """
        The upstream closes a pooled connection as it is reused, before any
        answer: the request goes again on a fresh connection.
        """
        answered = []

        def script(up):
            if up is self.upstreams()[0] and answered:
                up.transport.loseConnection()
                return None
            answered.append(up)
            return ok(b"{}")

        self.upstreamFactory.script = script
        client = await self.client()
        client.transport.write(self.post())
        await until(lambda: len(self.ended) == 1, "the first exchange")
        client.transport.write(self.post())
        await until(lambda: len(self.ended) == 2, "the second exchange")
        self.assertEqual([status for status, _ in self.ended], [200, 200])
        self.assertEqual(len(self.upstreams()), 2)

    async def test_silentUpstreamBeforeHeadersIs504(self) -> None:
        """
        No headers within the idle limit: a clean 504, and the upstream
        request is aborted.
        """
        self.limits = Limits(idle=0.2)
        client = await self.client()
        client.transport.write(self.post())
        await until(lambda: complete(client.data), "the 504")
        self.assertTrue(client.data.startswith(b"HTTP/1.1 504 "))
        self.assertIn(b"upstream silent", dechunk(client.data))
        await until(lambda: self.upstreams()[0].lost, "the upstream abort")
        [(status, failure)] = self.ended
        self.assertIsNone(status)

    async def test_responseHeaderLimitIs504(self) -> None:
        self.limits = Limits(responseHeader=0.2)
        client = await self.client()
        client.transport.write(self.post())
        await until(lambda: client.data.startswith(b"HTTP/1.1 504 "), "the 504")
        await until(lambda: self.upstreams()[0].lost, "the upstream abort")

    async def test_silentUpstreamMidStreamCutsTheClient(self) -> None:
        self.limits = Limits(idle=1.0)  # the head and first event come at once
        self.upstreamFactory.script = lambda up: HEAD_SSE + b"9\r\ndata: a\n\n\r\n"
        client = await self.client()
        client.transport.write(self.post())
        await until(lambda: client.closed, "the cut")
        self.assertIn(b"data: a", client.data)
        self.assertFalse(client.data.endswith(b"0\r\n\r\n"))
        await until(lambda: self.upstreams()[0].lost, "the upstream abort")

    async def test_expectContinueIsAnsweredHereNotForwarded(self) -> None:
        seen = []

        def script(up):
            seen.append(up.received)
            return ok(b"{}")

        self.upstreamFactory.script = script
        client = await self.client()
        body = b'{"model":"m"}'
        head, _, _ = self.post(body, b"Expect: 100-continue\r\n").partition(b"\r\n\r\n")
        client.transport.write(head + b"\r\n\r\n")
        await until(lambda: b"100 Continue" in client.data, "the 100 Continue")
        self.assertEqual(seen, [])
        client.transport.write(body)
        await until(lambda: self.ended, "the exchange")
        self.assertNotIn(b"expect", seen[0].lower())
        self.assertEqual(self.ended[0][0], 200)

    async def test_clientGoneAbortsTheUpstreamAndIsLoggedAndMetered(self) -> None:
        """
        A client that closes mid-stream: the upstream connection is closed,
        and the request still gets its access-log line and activity entry,
        both with 499 (client closed request).
        """
        self.upstreamFactory.script = lambda up: HEAD_SSE + b"9\r\ndata: a\n\n\r\n"
        client = await self.client()
        client.transport.write(self.post())
        await until(lambda: b"data: a" in client.data, "the first event")
        client.transport.loseConnection()
        await until(lambda: self.upstreams()[0].lost, "the upstream abort")
        await until(lambda: self.logged, "the access-log line")
        self.assertIn('"POST /v1/chat/completions HTTP/1.1" 499 ', self.logged[0]["line"])
        [record] = self.activity.list()
        self.assertEqual(record.respStatusCode, 499)
        self.assertEqual(len(self.ended), 1)

    async def test_unreachableUpstreamIs502(self) -> None:
        self.url = b"http://127.0.0.1:1"
        client = await self.client()
        client.transport.write(self.post())
        await until(lambda: complete(client.data), "the 502")
        self.assertTrue(client.data.startswith(b"HTTP/1.1 502 "))
        self.assertIn(b"upstream unreachable", dechunk(client.data))

    async def test_connectTimeoutOfTheModelIs502(self) -> None:
        """
        An upstream address that never answers the connect (a listening
        socket whose backlog is full drops new SYNs): the model's
        C{timeouts.connect} ends the attempt, the client gets a 502.
        """
        import socket

        from llamaswap.config.model import TimeoutsConfig

        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        for _ in range(4):  # fill the backlog; these are never accepted
            filler = socket.socket()
            self.addCleanup(filler.close)
            filler.setblocking(False)
            filler.connect_ex(address)
        self.url = b"http://127.0.0.1:%d" % address[1]
        self.timeouts = TimeoutsConfig(connect=1)
        client = await self.client()
        client.transport.write(self.post())
        await until(lambda: complete(client.data), "the 502", timeout=30)
        self.assertTrue(client.data.startswith(b"HTTP/1.1 502 "))
        self.assertIn(b"timeout", dechunk(client.data).lower())


class CappedRelaySocketTests(RelaySocketTests):
    """
    The same behaviours behind the listening stack the daemon uses (the
    connection cap's L{GatheringWrapper} as each client connection's
    transport, which holds the writes of one upstream read), and how many
    C{send(2)} calls they take.
    """

    capped = True

    def countSends(self) -> list[int]:
        """
        Count the C{send(2)} calls on the server side of the (one) client
        connection, and its registrations for writing (a write the
        reactor sends later).

        @return: the sizes sent, in order, as they happen; C{-1} for each
            registration.
        """
        sizes: list[int] = []

        class Counting:
            def __init__(self, sock) -> None:
                self._sock = sock

            def send(self, data) -> int:
                n = self._sock.send(data)
                sizes.append(n)
                return n

            def __getattr__(self, name):
                return getattr(self._sock, name)

        (wrapper,) = list(self.cap.protocols)
        transport = wrapper.transport
        transport.socket = Counting(transport.socket)
        startWriting = transport.startWriting

        def registered() -> None:
            sizes.append(-1)  # the socket registered for writing
            startWriting()

        transport.startWriting = registered
        return sizes

    async def test_smallAnswerLeavesInOneSend(self) -> None:
        """
        An answer whose head and body the upstream sends in one read
        reaches the client in one C{send(2)}, made at once (the socket is
        never registered for writing), keep-alive answer after answer.
        """
        self.upstreamFactory.script = lambda up: ok(b'{"ok": true}')
        client = await self.client()
        await until(lambda: self.cap.protocols, "the connection")
        sizes = self.countSends()
        for n in (1, 2, 3):
            client.transport.write(self.post())
            await until(lambda: len(self.ended) == n, "the exchange")
            await until(lambda: client.data.endswith(b'{"ok": true}'), "the answer")
            self.assertEqual(len(sizes), n)
            self.assertEqual(sizes[-1], len(client.data))
            client.data = b""
        self.assertEqual([e[0] for e in self.ended], [200, 200, 200])

    async def test_streamedEventsLeaveOneSendPerRead(self) -> None:
        """
        A stream's head and first event, read together, leave in one
        C{send(2)}; each later read is one more, each made at once.
        """
        self.upstreamFactory.script = lambda up: None
        client = await self.client()
        await until(lambda: self.cap.protocols, "the connection")
        sizes = self.countSends()
        client.transport.write(self.post())
        await until(lambda: self.upstreams() and self.upstreams()[0].received == b"",
                    "the upstream request")
        up = self.upstreams()[0]
        up.transport.write(HEAD_SSE + b"9\r\ndata: a\n\n\r\n")
        await until(lambda: client.data.endswith(b"data: a\n\n\r\n"), "the first event")
        self.assertEqual(len(sizes), 1)
        up.transport.write(b"9\r\ndata: b\n\n\r\n")
        await until(lambda: client.data.endswith(b"data: b\n\n\r\n"), "the second event")
        self.assertEqual(len(sizes), 2)
        up.transport.write(b"0\r\n\r\n")
        await until(lambda: self.ended, "the end of the exchange")
        await until(lambda: client.data.endswith(b"0\r\n\r\n"), "the last chunk")
        self.assertEqual(dechunk(client.data), b"data: a\n\ndata: b\n\n")
        self.assertEqual(sum(sizes), len(client.data))
