"""
Tests for L{llamaswap.observe.events}: the C{/api/events} SSE bus (SPEC.md
section 3.9; checklist 64-65).
"""

from __future__ import annotations

import json

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from llamaswap.interfaces import IEventSink
from llamaswap.observe.events import (
    EventBus,
    EventsResource,
    initialBurst,
    publishActivity,
    publishLogs,
    sseFrame,
)
from llamaswap.observe.logs import LogHub
from llamaswap.observe.tokens import ActivityLog, TokenUsage


class PushRequest(DummyRequest):
    producer = None

    def registerProducer(self, producer, streaming):
        assert streaming
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None


def parseFrames(raw: bytes) -> list[tuple[str, object]]:
    """
    Split SSE output into C{(type, decoded data)} pairs, checking the exact
    frame shape on the way.
    """
    out = []
    assert raw.endswith(b"\n\n") or raw == b"", raw
    for block in raw.split(b"\n\n")[:-1]:
        event, data = block.split(b"\n")
        assert event == b"event:message", event
        assert data.startswith(b"data:"), data
        outer = json.loads(data[5:])
        assert list(outer) == ["type", "data"], outer
        assert isinstance(outer["data"], str)
        out.append((outer["type"], json.loads(outer["data"])))
    return out


class FrameTests(SynchronousTestCase):
    def test_exactFrame(self):
        self.assertEqual(
            sseFrame("inflight", {"total": 1}),
            b'event:message\ndata:{"type":"inflight","data":"{\\"total\\":1}"}\n\n')

    def test_payloadEncodedTwice(self):
        data = [{"id": "m", "state": "ready", "note": "line\nbreak \u00e9"}]
        [(kind, decoded)] = parseFrames(sseFrame("modelStatus", data))
        self.assertEqual((kind, decoded), ("modelStatus", data))
        # A payload newline never breaks the frame.
        self.assertEqual(sseFrame("x", "a\nb").count(b"\n"), 3)


class BusTests(SynchronousTestCase):
    def test_publishToSubscribers(self):
        bus = EventBus()
        first, second = [], []
        stop = bus.subscribe(first.append)
        bus.subscribe(second.append)
        bus.publish("inflight", {"total": 1})
        stop()
        stop()
        bus.publish("inflight", {"total": 0})
        self.assertEqual(parseFrames(b"".join(first)), [("inflight", {"total": 1})])
        self.assertEqual(parseFrames(b"".join(second)),
                         [("inflight", {"total": 1}), ("inflight", {"total": 0})])
        self.assertEqual((bus.published, bus.subscriberCount), (2, 1))

    def test_failingSubscriberRemoved(self):
        bus = EventBus()
        seen = []
        bus.subscribe(lambda frame: 1 / 0)
        bus.subscribe(seen.append)
        bus.publish("a", 1)
        bus.publish("a", 2)
        self.assertEqual(len(seen), 2)
        self.assertEqual(bus.subscriberCount, 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_unencodable(self):
        bus = EventBus()
        seen = []
        bus.subscribe(seen.append)
        bus.publish("bad", object())
        self.assertEqual((seen, bus.published), ([], 0))
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_eventSink(self):
        bus = EventBus()
        verifyObject(IEventSink, bus)
        seen = []
        bus.subscribe(seen.append)
        bus.emit("inflight", total=2)
        bus.emit("modelStatus", data=[{"id": "m"}])
        self.assertEqual(parseFrames(b"".join(seen)),
                         [("inflight", {"total": 2}), ("modelStatus", [{"id": "m"}])])


class ResourceTests(SynchronousTestCase):
    def setUp(self):
        self.bus = EventBus()
        self.burst = [("modelStatus", []), ("inflight", {"total": 0})]
        self.resource = EventsResource(self.bus, lambda: self.burst, limit=3)

    def connect(self):
        request = PushRequest([b""])
        self.assertEqual(self.resource.render(request), NOT_DONE_YET)
        return request

    def test_headersAndInitialBurst(self):
        request = self.connect()
        headers = request.responseHeaders
        for name, value in [(b"content-type", b"text/event-stream"),
                            (b"cache-control", b"no-cache"),
                            (b"connection", b"keep-alive"),
                            (b"x-content-type-options", b"nosniff"),
                            (b"x-accel-buffering", b"no")]:
            self.assertEqual(headers.getRawHeaders(name), [value], name)
        self.assertEqual(len(request.written), 1)
        self.assertEqual(parseFrames(request.written[0]), self.burst)

    def test_liveMessages(self):
        request = self.connect()
        self.bus.publish("inflight", {"total": 1})
        self.assertEqual(parseFrames(request.written[-1]), [("inflight", {"total": 1})])

    def test_overflowDropped(self):
        """
        While the client is paused, C{limit} frames wait; more are dropped
        and counted; the rest arrive, in order, on resume.
        """
        request = self.connect()
        request.producer.pauseProducing()
        for i in range(5):
            self.bus.publish("n", i)
        self.assertEqual(len(request.written), 1)
        self.assertEqual(self.bus.dropped, 2)
        request.producer.resumeProducing()
        frames = parseFrames(b"".join(request.written[1:]))
        self.assertEqual(frames, [("n", 0), ("n", 1), ("n", 2)])
        self.bus.publish("n", 5)
        self.assertEqual(parseFrames(request.written[-1]), [("n", 5)])

    def test_disconnectReleases(self):
        request = self.connect()
        self.assertEqual((self.resource.clients, self.bus.subscriberCount), (1, 1))
        request.processingFailed(Failure(ConnectionDone()))
        self.assertEqual((self.resource.clients, self.bus.subscriberCount), (0, 0))
        self.bus.publish("n", 1)
        self.assertEqual(len(request.written), 1)

    def test_close(self):
        request = self.connect()
        self.resource.close()
        self.assertEqual(request.finished, 1)
        self.assertEqual((self.resource.clients, self.bus.subscriberCount), (0, 0))

    def test_initialFailureStillStreams(self):
        def broken():
            raise RuntimeError("no")

        resource = EventsResource(self.bus, broken)
        request = PushRequest([b""])
        resource.render(request)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.bus.publish("n", 1)
        self.assertEqual(parseFrames(b"".join(request.written)), [("n", 1)])


class RealChannelTests(SynchronousTestCase):
    def test_overHTTP(self):
        bus = EventBus()
        resource = EventsResource(bus, lambda: [("inflight", {"total": 0})])
        site = Site(resource, reactor=MemoryReactorClock(), timeout=None)
        channel = site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, rest = transport.value().partition(b"\r\n\r\n")
        self.assertIn(b"Content-Type: text/event-stream", head)
        self.assertIn(b"Transfer-Encoding: chunked", head)
        self.assertIn(b'data:{"type":"inflight","data":"{\\"total\\":0}"}\n\n', rest)
        transport.clear()
        bus.publish("inflight", {"total": 1})
        self.assertIn(b'{\\"total\\":1}', transport.value())
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((resource.clients, bus.subscriberCount), (0, 0))


class WiringTests(SynchronousTestCase):
    """
    The helpers that connect logs and activity to the bus, and build the
    reference's initial burst (checklist 64).
    """

    def test_initialBurstOrderAndLiveFrames(self):
        clock = Clock()
        hub = LogHub("both")
        activity = ActivityLog(10, clock)
        bus = EventBus()
        hub.writeProxy("[INFO] p\n")
        hub.writeUpstream("m", "u")
        activity.add("m", "/v1/chat/completions", "application/json", 200,
                     tokens=TokenUsage(-1, 3, 4))
        publishLogs(bus, hub.proxy, hub.upstream)
        publishActivity(bus, activity)
        models = [{"id": "m", "name": "", "description": "", "state": "ready",
                   "unlisted": False, "peerID": ""}]
        resource = EventsResource(bus, initialBurst(hub, lambda: models, activity, lambda: 0))
        request = PushRequest([b""])
        resource.render(request)
        frames = parseFrames(b"".join(request.written))
        self.assertEqual([kind for kind, _ in frames],
                         ["logData", "logData", "modelStatus", "metrics", "inflight"])
        self.assertEqual(frames[0][1], {"source": "proxy", "data": "[INFO] p\n"})
        self.assertEqual(frames[1][1], {"source": "upstream", "data": "u\n"})
        self.assertEqual(frames[2][1], models)
        self.assertEqual(frames[3][1][0]["tokens"]["output_tokens"], 4)
        self.assertEqual(frames[4][1], {"total": 0})

        request.written.clear()
        hub.writeUpstream("m", "more")
        activity.add("m", "/v1/completions", "text/event-stream", 200)
        frames = parseFrames(b"".join(request.written))
        self.assertEqual(frames[0], ("logData", {"source": "upstream", "data": "more\n"}))
        self.assertEqual(frames[1][0], "metrics")
        self.assertEqual([entry["id"] for entry in frames[1][1]], [1])
