"""
Tests for L{llamaswap.observe.logs} and L{llamaswap.observe.logstream}: log
ring buffers, the proxy log observer, C{logToStdout}, and the
C{/logs/stream} resource (SPEC.md sections 3.8, 6.1; checklist 59-62).
"""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.test.requesthelper import DummyRequest

from llamaswap.observe._time import formatLayout, rfc3339Nano
from llamaswap.observe.logs import LogBuffer, LogHub, parseLogLevel
from llamaswap.observe.logstream import (
    LogStreamResource,
    LogStreams,
    droppedMarker,
    hasQueryFlag,
)

UTC = timezone.utc
# 2024-03-05 14:07:09.120000 UTC, a Tuesday.
WHEN = datetime(2024, 3, 5, 14, 7, 9, 120000, tzinfo=UTC).timestamp()


class PushRequest(DummyRequest):
    """
    A L{DummyRequest} that records a push producer (instead of looping on
    it as a pull producer) and a transport that can be aborted.
    """

    producer = None

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.transport = StringTransport()

    def registerProducer(self, producer, streaming):
        assert streaming
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None


def body(request) -> bytes:
    return b"".join(request.written)


class LogBufferTests(SynchronousTestCase):
    def test_historyInOrder(self):
        buffer = LogBuffer(1024)
        buffer.write(b"one\n")
        buffer.write("two\n")
        self.assertEqual(buffer.history(), b"one\ntwo\n")

    def test_boundDropsWholeOldestLines(self):
        """
        The ring never holds more than C{maxBytes}; the oldest whole lines
        go first, so the history starts at a line.
        """
        buffer = LogBuffer(100)
        lines = [b"line %03d ......\n" % i for i in range(50)]
        for line in lines:
            buffer.write(line)
            self.assertLessEqual(buffer.size, 100)
            self.assertEqual(len(buffer.history()), buffer.size)
        history = buffer.history()
        self.assertTrue(b"".join(lines).endswith(history))
        self.assertIn(history[: len(lines[0])], lines)
        self.assertEqual(len(history), 6 * len(lines[0]))

    def test_oversizeWriteKeepsItsTail(self):
        buffer = LogBuffer(20)
        buffer.write(b"old\n")
        buffer.write(b"a" * 30 + b"\nlast line\n")
        self.assertEqual(buffer.history(), b"last line\n")
        buffer.write(b"x" * 50)
        self.assertEqual(buffer.history(), b"x" * 20)

    def test_emptyWriteIgnored(self):
        buffer = LogBuffer()
        seen = []
        buffer.subscribe(seen.append)
        buffer.write(b"")
        self.assertEqual((buffer.history(), seen), (b"", []))

    def test_subscribeAndUnsubscribe(self):
        buffer = LogBuffer()
        seen = []
        unsubscribe = buffer.subscribe(seen.append)
        buffer.write(b"a\n")
        buffer.write(b"b\n")
        unsubscribe()
        unsubscribe()
        buffer.write(b"c\n")
        self.assertEqual(seen, [b"a\n", b"b\n"])
        self.assertEqual(buffer.subscriberCount, 0)

    def test_failingSubscriberDoesNotReachTheWriter(self):
        """
        A subscriber that raises is unsubscribed and logged; the writer and
        the other subscribers carry on.
        """
        buffer = LogBuffer()
        seen = []

        def broken(data):
            raise ZeroDivisionError()

        buffer.subscribe(broken)
        buffer.subscribe(seen.append)
        buffer.write(b"a\n")
        buffer.write(b"b\n")
        self.assertEqual(seen, [b"a\n", b"b\n"])
        self.assertEqual(buffer.subscriberCount, 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_writeFromSubscriberIsDeliveredInOrder(self):
        buffer = LogBuffer()
        first, second = [], []

        def echo(data):
            first.append(data)
            if data == b"a\n":
                buffer.write(b"echo\n")

        buffer.subscribe(echo)
        buffer.subscribe(second.append)
        buffer.write(b"a\n")
        self.assertEqual(first, [b"a\n", b"echo\n"])
        self.assertEqual(second, [b"a\n", b"echo\n"])
        self.assertEqual(buffer.history(), b"a\necho\n")


class ProxyObserverTests(SynchronousTestCase):
    def setUp(self):
        self.hub = LogHub()

    def logger(self, level="info", timeFormat="", namespace="llamaswap.web.app"):
        observer = self.hub.proxyObserver(level, timeFormat, tz=UTC)
        return observer, Logger(namespace=namespace, observer=observer)

    def test_format(self):
        _, log = self.logger()
        log.info("Request {ip} {status}", ip="1.2.3.4", status=200)
        log.warn("careful")
        log.error("broken")
        log.critical("very broken")
        self.assertEqual(self.hub.proxy.history(),
                         b"[INFO] Request 1.2.3.4 200\n[WARN] careful\n"
                         b"[ERROR] broken\n[ERROR] very broken\n")

    def test_providesILogObserver(self):
        from twisted.logger import ILogObserver
        from zope.interface.verify import verifyObject

        observer, _ = self.logger()
        self.assertTrue(verifyObject(ILogObserver, observer))

    def test_preformattedLine(self):
        """
        An event whose format is C{"{line}"} (the access log's) is written
        with its C{line}, as formatting it would.
        """
        observer, log = self.logger()
        log.info("{line}", line="Request 1.2.3.4 {not a field} 200")
        log.failure("{line}", Failure(ValueError("boom")), line="it failed")
        history = self.hub.proxy.history()
        self.assertTrue(history.startswith(
            b"[INFO] Request 1.2.3.4 {not a field} 200\n[ERROR] it failed\n"), history)
        self.assertIn(b"ValueError: boom", history)

    def test_levelFiltering(self):
        """
        C{logLevel: warn} suppresses INFO and DEBUG proxy lines; C{debug}
        shows everything.
        """
        _, log = self.logger("warn")
        log.debug("d")
        log.info("i")
        log.warn("w")
        log.error("e")
        self.assertEqual(self.hub.proxy.history(), b"[WARN] w\n[ERROR] e\n")
        hub = self.hub = LogHub()
        _, log = self.logger("DEBUG")
        log.debug("d")
        self.assertEqual(hub.proxy.history(), b"[DEBUG] d\n")

    def test_parseLogLevel(self):
        self.assertEqual(parseLogLevel("Warn"), LogLevel.warn)
        self.assertEqual(parseLogLevel("error"), LogLevel.error)
        self.assertEqual(parseLogLevel("verbose"), LogLevel.info)
        self.assertEqual(parseLogLevel(None), LogLevel.info)

    def test_configure(self):
        observer, log = self.logger("error")
        log.info("hidden")
        observer.configure("info", "kitchen")
        log.info("shown")
        self.assertRegex(self.hub.proxy.history(), rb"^\d{1,2}:\d\d[AP]M \[INFO\] shown\n$")

    def test_timestamp(self):
        observer, _ = self.logger(timeFormat="RFC3339")
        observer({"log_level": LogLevel.info, "log_format": "hello", "log_time": WHEN})
        observer.configure("info", "nosuchlayout")
        observer({"log_level": LogLevel.info, "log_format": "plain", "log_time": WHEN})
        self.assertEqual(self.hub.proxy.history(),
                         b"2024-03-05T14:07:09Z [INFO] hello\n[INFO] plain\n")

    def test_upstreamOutputIsNotAProxyLine(self):
        """
        The upstream process protocol's child-output events (keys C{model},
        C{stream}, C{line}) are not written to the proxy log; the wiring
        feeds them to C{writeUpstream}.
        """
        _, log = self.logger(namespace="llamaswap.upstream.process.UpstreamProcessProtocol")
        log.info("[{model}] {line}", model="m", stream="stdout", line="loading weights")
        log.info("[{model}] exited", model="m")
        self.assertEqual(self.hub.proxy.history(), b"[INFO] [m] exited\n")
        self.assertEqual(self.hub.upstream.history(), b"")

    def test_realProcessProtocolOutput(self):
        """
        Output logged by the real upstream process protocol is skipped.
        """
        from twisted.logger import globalLogPublisher

        from llamaswap.upstream.process import UpstreamProcessProtocol

        observer = self.hub.proxyObserver("debug")
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        UpstreamProcessProtocol("m").childDataReceived(1, b"hello from the child\n")
        self.assertNotIn(b"hello from the child", self.hub.proxy.history())

    def test_failureTraceback(self):
        _, log = self.logger()
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("it failed")
        history = self.hub.proxy.history().decode()
        self.assertTrue(history.startswith("[ERROR] it failed\nTraceback"), history)
        self.assertIn("ZeroDivisionError", history)

    def test_emptyMessageSkipped(self):
        observer, _ = self.logger()
        observer({"log_level": LogLevel.info, "log_format": ""})
        observer({"log_level": LogLevel.info})
        self.assertEqual(self.hub.proxy.history(), b"")

    def test_legacyEventWithoutLevel(self):
        observer, _ = self.logger()
        observer({"log_format": "legacy", "isError": 1})
        self.assertEqual(self.hub.proxy.history(), b"[ERROR] legacy\n")


class LayoutTests(SynchronousTestCase):
    """
    The named Go layouts of C{logTimeFormat}.
    """

    def test_layouts(self):
        plusOne = timezone(timedelta(hours=1), "CET")
        expected = {
            "ansic": "Tue Mar  5 14:07:09 2024",
            "unixdate": "Tue Mar  5 14:07:09 UTC 2024",
            "rubydate": "Tue Mar 05 14:07:09 +0000 2024",
            "rfc822": "05 Mar 24 14:07 UTC",
            "rfc822z": "05 Mar 24 14:07 +0000",
            "rfc850": "Tuesday, 05-Mar-24 14:07:09 UTC",
            "rfc1123": "Tue, 05 Mar 2024 14:07:09 UTC",
            "rfc1123z": "Tue, 05 Mar 2024 14:07:09 +0000",
            "rfc3339": "2024-03-05T14:07:09Z",
            "rfc3339nano": "2024-03-05T14:07:09.12Z",
            "kitchen": "2:07PM",
            "stamp": "Mar  5 14:07:09",
            "stampmilli": "Mar  5 14:07:09.120",
            "stampmicro": "Mar  5 14:07:09.120000",
            "stampnano": "Mar  5 14:07:09.120000000",
            "": "",
            "bogus": "",
        }
        for layout, text in expected.items():
            self.assertEqual(formatLayout(layout, WHEN, UTC), text, layout)
        self.assertEqual(formatLayout("rfc3339", WHEN, plusOne), "2024-03-05T15:07:09+01:00")
        self.assertEqual(formatLayout("rfc1123", WHEN, plusOne), "Tue, 05 Mar 2024 15:07:09 CET")
        self.assertEqual(rfc3339Nano(WHEN, UTC), "2024-03-05T14:07:09.12Z")
        self.assertEqual(formatLayout("kitchen", WHEN - 14 * 3600, UTC), "12:07AM")


class LogHubTests(SynchronousTestCase):
    def fill(self, hub):
        hub.writeProxy("[INFO] p1\n")
        hub.writeUpstream("a", "u1")
        hub.writeProxy(b"[INFO] p2\n")
        hub.writeUpstream("b", b"u2\n")

    def test_modes(self):
        """
        The combined log follows C{logToStdout}; the proxy and upstream
        logs keep their own histories whatever the mode.
        """
        combined = {
            "proxy": b"[INFO] p1\n[INFO] p2\n",
            "upstream": b"u1\nu2\n",
            "both": b"[INFO] p1\nu1\n[INFO] p2\nu2\n",
            "none": b"",
            "nonsense": b"[INFO] p1\n[INFO] p2\n",
        }
        for mode, expected in combined.items():
            hub = LogHub(mode)
            self.fill(hub)
            self.assertEqual(hub.combined.history(), expected, mode)
            self.assertEqual(hub.proxy.history(), b"[INFO] p1\n[INFO] p2\n")
            self.assertEqual(hub.upstream.history(), b"u1\nu2\n")

    def test_stdoutCopy(self):
        out = io.BytesIO()
        hub = LogHub("both", stdout=out)
        self.fill(hub)
        self.assertEqual(out.getvalue(), hub.combined.history())

    def test_perModel(self):
        hub = LogHub()
        self.fill(hub)
        self.assertEqual(hub.modelBuffer("a").history(), b"u1\n")
        self.assertEqual(hub.modelBuffer("b").history(), b"u2\n")
        self.assertEqual(hub.models(), ["a", "b"])
        self.assertIsNone(hub.modelBuffer("c", create=False))
        hub.forgetModel("a")
        self.assertEqual(hub.models(), ["b"])

    def test_lookup(self):
        hub = LogHub()
        self.assertIs(hub.buffer(""), hub.combined)
        self.assertIs(hub.buffer("proxy"), hub.proxy)
        self.assertIs(hub.buffer("upstream"), hub.upstream)
        self.assertIsNone(hub.buffer("m"))
        self.assertIs(hub.buffer("m", create=True), hub.modelBuffer("m"))

    def test_upstreamNotFilteredByLevel(self):
        """
        Checklist 62: with C{logLevel: warn}, upstream output is still
        logged.
        """
        hub = LogHub("both")
        log = Logger(observer=hub.proxyObserver("warn"))
        log.info("hidden")
        hub.writeUpstream("m", "model says hi")
        self.assertEqual(hub.combined.history(), b"model says hi\n")


class LogStreamTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.hub = LogHub()
        self.hub.writeProxy("[INFO] before\n")

    def stream(self, buffer, args=None, **kw):
        resource = LogStreamResource(buffer, self.clock, **kw)
        request = PushRequest([b""])
        request.args = args or {}
        self.assertEqual(resource.render(request), NOT_DONE_YET)
        return resource, request

    def test_headersAndHistory(self):
        _, request = self.stream(self.hub.proxy)
        self.assertEqual(request.responseCode, 200)
        headers = request.responseHeaders
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"text/plain; charset=utf-8"])
        self.assertEqual(headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])
        self.assertEqual(headers.getRawHeaders(b"x-accel-buffering"), [b"no"])
        self.assertIsNone(headers.getRawHeaders(b"content-length"))
        self.assertEqual(request.written, [b"[INFO] before\n"])
        self.assertFalse(request.finished)

    def test_liveLinesAtOnce(self):
        """
        Each write after the client connected is one C{request.write}, at
        once.
        """
        _, request = self.stream(self.hub.proxy)
        self.hub.writeProxy("[INFO] one\n")
        self.assertEqual(request.written[-1], b"[INFO] one\n")
        self.hub.writeProxy("[INFO] two\n")
        self.hub.writeProxy("[INFO] three\n")
        self.assertEqual(request.written[1:], [b"[INFO] one\n", b"[INFO] two\n",
                                               b"[INFO] three\n"])

    def test_noHistory(self):
        """
        Checklist 59: C{?no-history} (presence only) -> only new lines.
        """
        _, request = self.stream(self.hub.proxy, {b"no-history": [b""]})
        self.assertEqual(body(request), b"")
        self.hub.writeProxy("[INFO] after\n")
        self.assertEqual(body(request), b"[INFO] after\n")

    def test_queryFlag(self):
        """
        Twisted leaves C{?no-history} (no C{=}) out of C{request.args}: the
        raw query decides.
        """
        for uri, expected in [(b"/logs/stream?no-history", True),
                              (b"/logs/stream?a=1&no-history", True),
                              (b"/logs/stream?no%2Dhistory=", True),
                              (b"/logs/stream?no-historyx", False),
                              (b"/logs/stream", False)]:
            request = PushRequest([b""])
            request.uri = uri
            self.assertEqual(hasQueryFlag(request, b"no-history"), expected, uri)

    def test_perModelStream(self):
        self.hub.writeUpstream("a", "a-old")
        self.hub.writeUpstream("b", "b-old")
        _, request = self.stream(self.hub.modelBuffer("a"))
        self.hub.writeUpstream("b", "b-new")
        self.hub.writeUpstream("a", "a-new")
        self.hub.writeProxy("[INFO] proxy\n")
        self.assertEqual(body(request), b"a-old\na-new\n")

    def test_disconnectReleasesSubscription(self):
        resource, request = self.stream(self.hub.proxy)
        self.assertEqual((resource.clients, self.hub.proxy.subscriberCount), (1, 1))
        request.processingFailed(Failure(ConnectionDone()))
        self.assertEqual((resource.clients, self.hub.proxy.subscriberCount), (0, 0))
        self.hub.writeProxy("[INFO] nobody listens\n")
        self.assertEqual(body(request), b"[INFO] before\n")

    def test_stopProducingReleasesSubscription(self):
        resource, request = self.stream(self.hub.proxy)
        request.producer.stopProducing()
        self.assertEqual((resource.clients, self.hub.proxy.subscriberCount), (0, 0))

    def test_closeEndsEveryStream(self):
        resource, first = self.stream(self.hub.proxy)
        second = PushRequest([b""])
        resource.render(second)
        resource.close()
        self.assertEqual((first.finished, second.finished), (1, 1))
        self.assertIsNone(first.producer)
        self.assertEqual((resource.clients, self.hub.proxy.subscriberCount), (0, 0))
        resource.close()
        self.assertEqual(first.finished, 1)

    def test_slowReaderQueueThenDropMarker(self):
        """
        While the client's transport is paused, writes are queued up to
        C{maxQueued} bytes, later ones dropped; on resume the queue is
        flushed, then a marker counts the dropped lines.
        """
        _, request = self.stream(self.hub.proxy, {b"no-history": [b""]}, maxQueued=20)
        request.producer.pauseProducing()
        self.hub.writeProxy(b"0123456789\n")      # queued (11 bytes)
        self.hub.writeProxy(b"abcdefgh\n")        # queued (20 bytes)
        self.hub.writeProxy(b"dropped 1\n")       # over: dropped
        self.hub.writeProxy(b"dropped 2\ndropped 3\n")
        self.hub.writeProxy(b"x\n")               # fits, but dropping: order kept
        self.assertEqual(body(request), b"")
        request.producer.resumeProducing()
        self.assertEqual(body(request), b"0123456789\nabcdefgh\n" + droppedMarker(4))
        self.assertEqual(droppedMarker(4), b"[... 4 lines dropped ...]\n")
        self.hub.writeProxy(b"live\n")
        self.assertTrue(body(request).endswith(b"lines dropped ...]\nlive\n"))
        self.assertFalse(self.clock.getDelayedCalls())

    def test_pausedAgainWhileFlushing(self):
        _, request = self.stream(self.hub.proxy, {b"no-history": [b""]}, maxQueued=100)
        producer = request.producer
        producer.pauseProducing()
        for i in range(3):
            self.hub.writeProxy(b"%d\n" % i)
        original = request.write

        def writeThenPause(data):
            original(data)
            producer.pauseProducing()

        request.write = writeThenPause
        producer.resumeProducing()
        self.assertEqual(body(request), b"0\n")
        request.write = original
        producer.resumeProducing()
        self.assertEqual(body(request), b"0\n1\n2\n")

    def test_stalledReaderDisconnected(self):
        """
        A client still paused C{stallTimeout} seconds after lines started
        being dropped is disconnected and its subscription released.
        """
        resource, request = self.stream(self.hub.proxy, maxQueued=1, stallTimeout=30)
        request.producer.pauseProducing()
        self.hub.writeProxy(b"dropped\n")
        self.clock.advance(29)
        self.assertFalse(request.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(request.transport.disconnecting)
        self.assertEqual((resource.clients, self.hub.proxy.subscriberCount), (0, 0))

    def test_resumeCancelsStallTimer(self):
        _, request = self.stream(self.hub.proxy, maxQueued=1, stallTimeout=30)
        request.producer.pauseProducing()
        self.hub.writeProxy(b"dropped\n")
        request.producer.resumeProducing()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(60)
        self.assertFalse(request.transport.disconnecting)

    def test_otherClientsUnaffected(self):
        resource, slow = self.stream(self.hub.proxy, maxQueued=1)
        fast = PushRequest([b""])
        resource.render(fast)
        slow.producer.pauseProducing()
        self.hub.writeProxy(b"[INFO] news\n")
        self.assertEqual(fast.written[-1], b"[INFO] news\n")


class LogStreamsTests(SynchronousTestCase):
    def test_oneResourcePerBufferAndCloseAll(self):
        hub = LogHub()
        streams = LogStreams(Clock())
        proxy = streams.resourceFor(hub.proxy)
        self.assertIs(streams.resourceFor(hub.proxy), proxy)
        model = streams.resourceFor(hub.modelBuffer("m"))
        self.assertIsNot(model, proxy)
        requests = [PushRequest([b""]) for _ in range(3)]
        proxy.render(requests[0])
        proxy.render(requests[1])
        model.render(requests[2])
        self.assertEqual(streams.clients, 3)
        streams.close()
        self.assertEqual([r.finished for r in requests], [1, 1, 1])
        self.assertEqual(streams.clients, 0)
        self.assertEqual(hub.proxy.subscriberCount + hub.modelBuffer("m").subscriberCount, 0)


class RealChannelTests(SynchronousTestCase):
    """
    The stream over a real L{twisted.web.http.HTTPChannel} and an in-memory
    transport.
    """

    def connect(self, resource, path=b"/"):
        site = Site(resource, reactor=MemoryReactorClock(), timeout=None)
        channel = site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: example\r\n\r\n")
        return channel, transport

    def test_chunkedStreamAndDisconnect(self):
        hub = LogHub()
        hub.writeProxy("[INFO] history\n")
        resource = LogStreamResource(hub.proxy, Clock())
        channel, transport = self.connect(resource)
        head, _, rest = transport.value().partition(b"\r\n\r\n")
        self.assertIn(b"HTTP/1.1 200 OK", head)
        self.assertIn(b"Transfer-Encoding: chunked", head)
        self.assertIn(b"Content-Type: text/plain; charset=utf-8", head)
        self.assertIn(b"X-Accel-Buffering: no", head)
        self.assertIn(b"X-Content-Type-Options: nosniff", head)
        self.assertEqual(rest, b"f\r\n[INFO] history\n\r\n")
        transport.clear()
        hub.writeProxy("[INFO] live\n")
        self.assertEqual(transport.value(), b"c\r\n[INFO] live\n\r\n")

        # The transport fills up: lines are queued, then sent on resume.
        transport.clear()
        transport.producer.pauseProducing()
        hub.writeProxy("[INFO] queued\n")
        self.assertEqual(transport.value(), b"")
        transport.producer.resumeProducing()
        self.assertEqual(transport.value(), b"e\r\n[INFO] queued\n\r\n")

        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((resource.clients, hub.proxy.subscriberCount), (0, 0))

    def test_noHistoryStillSendsHeaders(self):
        hub = LogHub()
        hub.writeProxy("[INFO] history\n")
        resource = LogStreamResource(hub.proxy, Clock())
        channel, transport = self.connect(resource, b"/?no-history")
        self.assertIn(b"HTTP/1.1 200 OK", transport.value())
        self.assertNotIn(b"history", transport.value())
        resource.close()
        self.assertTrue(transport.value().endswith(b"0\r\n\r\n"))
