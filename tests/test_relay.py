"""
Tests for L{llamaswap.proxy.relay}: the streaming relay, without sockets.
"""

from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest
from treq.testing import RequestTraversalAgent

from llamaswap.config.model import TimeoutsConfig
from llamaswap.observe.activity import ActivityLog
from llamaswap.observe.exchange import ExchangeMeter
from llamaswap.proxy.forward import Forwarder
from llamaswap.proxy.relay import RelayResource, endToEnd
from llamaswap.web.errors import toError, writeError


class PushRequest(DummyRequest):
    """
    A L{DummyRequest} that records a push producer instead of looping on it.
    """

    producer = None

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None


class StreamingUpstream(Resource):
    """
    An upstream that answers with SSE events the test writes one by one.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []
        self.lost = []

    def render(self, request):
        self.requests.append(request)
        request.notifyFinish().addErrback(self.lost.append)
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"connection", b"keep-alive")
        request.setHeader(b"keep-alive", b"timeout=5")
        request.setHeader(b"x-upstream", b"yes")
        return NOT_DONE_YET


class RelayTests(SynchronousTestCase):
    def setUp(self):
        self.upstream = StreamingUpstream()
        self.agent = RequestTraversalAgent(self.upstream)
        self.ended = []

    def relay(self, body=b'{"model":"m"}', headers=None, **extra):
        request = PushRequest([b"v1", b"chat", b"completions"])
        request.method = b"POST"
        resource = RelayResource(
            self.agent,
            b"http://127.0.0.1:5800/v1/chat/completions",
            b"POST",
            headers or Headers({b"content-type": [b"application/json"]}),
            body,
            onDone=lambda status, failure: self.ended.append((status, failure)),
            writeError=lambda req, error: writeError(req, toError(error)),
            modelId="m",
            **extra,
        )
        self.assertEqual(resource.render(request), NOT_DONE_YET)
        self.agent.flush()
        return request

    def test_eachEventReachesTheClientBeforeTheUpstreamFinishes(self):
        request = self.relay()
        [up] = self.upstream.requests
        up.write(b"data: one\n\n")
        self.agent.flush()
        self.assertEqual(b"".join(request.written), b"data: one\n\n")
        up.write(b"data: two\n\n")
        self.agent.flush()
        self.assertEqual(b"".join(request.written), b"data: one\n\ndata: two\n\n")
        self.assertEqual(request.finished, 0)
        self.assertEqual(self.ended, [])
        up.finish()
        self.agent.flush()
        self.assertEqual(request.finished, 1)
        self.assertEqual(self.ended, [(200, None)])

    def test_theBookkeepingRunsLaterWithTheEndTime(self):
        """
        The client has the whole answer at once; the meter's entry and the
        caller's C{onDone} wait for C{later}, and the entry's duration ends
        when the answer did.
        """
        clock = Clock()
        activity = ActivityLog(10, clock)
        queued = []
        meter = ExchangeMeter("m", "/v1/chat/completions", clock, activity)
        request = self.relay(meter=meter, later=lambda f, *args: queued.append((f, args)))
        [up] = self.upstream.requests
        clock.advance(0.5)
        up.write(b"data: one\n\n")
        up.finish()
        self.agent.flush()
        self.assertEqual(request.finished, 1)
        self.assertEqual((self.ended, activity.list()), ([], []))
        clock.advance(10)
        [(f, args)] = queued
        f(*args)
        self.assertEqual(self.ended, [(200, None)])
        [entry] = activity.list()
        self.assertEqual((entry.respStatusCode, entry.durationMs), (200, 500))

    def headersSent(self):
        """
        Relay a request and have the upstream send its headers.
        """
        request = self.relay()
        [up] = self.upstream.requests
        up.write(b"data: x\n\n")
        self.agent.flush()
        self.assertEqual(request.responseCode, 200)
        return request

    def test_sseResponsesAreMarkedUnbuffered(self):
        request = self.headersSent()
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"x-accel-buffering"), [b"no"]
        )
        self.assertEqual(request.responseHeaders.getRawHeaders(b"x-upstream"), [b"yes"])

    def test_hopByHopResponseHeadersAreDropped(self):
        request = self.headersSent()
        # Twisted's client parser keeps Connection (and the headers it names)
        # to itself, so only the standard hop-by-hop set can be checked here.
        self.assertIsNone(request.responseHeaders.getRawHeaders(b"connection"))
        self.assertIsNone(request.responseHeaders.getRawHeaders(b"keep-alive"))

    def test_requestBodyAndHeadersReachTheUpstream(self):
        headers = Headers(
            {
                b"content-type": [b"application/json"],
                b"connection": [b"close"],
                b"x-custom": [b"1"],
                b"host": [b"client.example"],
                b"content-length": [b"999"],
            }
        )
        self.relay(b'{"model":"m","x":1}', headers)
        [up] = self.upstream.requests
        self.assertEqual(up.content.read(), b'{"model":"m","x":1}')
        self.assertEqual(up.requestHeaders.getRawHeaders(b"x-custom"), [b"1"])
        self.assertEqual(up.requestHeaders.getRawHeaders(b"content-length"), [b"19"])
        self.assertNotEqual(up.requestHeaders.getRawHeaders(b"host"), [b"client.example"])

    def test_clientDisconnectStopsTheUpstream(self):
        request = self.relay()
        [up] = self.upstream.requests
        up.write(b"data: one\n\n")
        self.agent.flush()
        request.processingFailed(Failure(ConnectionDone("client went away")))
        self.agent.flush()
        self.assertEqual(len(self.upstream.lost), 1)
        self.assertEqual(len(self.ended), 1)

    def test_unreachableUpstreamIs502(self):
        class Refusing:
            def request(self, *args, **kwargs):
                return fail(ConnectionRefusedError("refused"))

        request = PushRequest([b"v1"])
        RelayResource(
            Refusing(), b"http://127.0.0.1:1/", b"POST", Headers(), b"{}",
            onDone=lambda s, f: self.ended.append((s, f)),
            writeError=lambda req, error: writeError(req, toError(error)),
        ).render(request)
        self.assertEqual(request.responseCode, 502)
        self.assertIn(b"upstream unreachable", b"".join(request.written))
        self.assertEqual(request.finished, 1)
        [(status, failure)] = self.ended
        self.assertIsNone(status)
        failure.trap(ConnectionRefusedError)


class EndToEndTests(SynchronousTestCase):
    def test_connectionNamedHeadersAreDropped(self):
        h = Headers({b"connection": [b"x-a, keep-alive"], b"x-a": [b"1"], b"x-b": [b"2"],
                     b"transfer-encoding": [b"chunked"]})
        self.assertEqual(dict(endToEnd(h).getAllRawHeaders()), {b"X-B": [b"2"]})

    def test_repeatedValuesAreKept(self):
        h = Headers({b"set-cookie": [b"a=1", b"b=2"]})
        self.assertEqual(endToEnd(h).getRawHeaders(b"set-cookie"), [b"a=1", b"b=2"])


class StaleConnectionTests(SynchronousTestCase):
    """
    A pooled connection the upstream closed as it was reused fails before
    any answer: the relay retries once, on a fresh connection.
    """

    def relayThrough(self, agent, body=b"{}"):
        request = PushRequest([b"v1"])
        ended = []
        RelayResource(
            agent, b"http://127.0.0.1:5800/v1/chat/completions", b"POST", Headers(), body,
            onDone=lambda s, f: ended.append((s, f)),
            writeError=lambda req, error: writeError(req, toError(error)),
        ).render(request)
        return request, ended

    def test_responseNeverReceivedIsRetriedOnce(self):
        from twisted.web._newclient import ResponseNeverReceived

        upstream = StreamingUpstream()
        real = RequestTraversalAgent(upstream)
        calls = []

        class FlakyOnce:
            def request(self, *args):
                calls.append(args)
                if len(calls) == 1:
                    return fail(ResponseNeverReceived([Failure(ConnectionDone())]))
                return real.request(*args)

        request, ended = self.relayThrough(FlakyOnce())
        real.flush()
        [up] = upstream.requests
        up.write(b"data: ok\n\n")
        up.finish()
        real.flush()
        self.assertEqual(len(calls), 2)
        self.assertEqual(b"".join(request.written), b"data: ok\n\n")
        self.assertEqual(ended, [(200, None)])

    def test_otherFailuresAreNotRetried(self):
        calls = []

        class Refusing:
            def request(self, *args):
                calls.append(args)
                return fail(ConnectionRefusedError("refused"))

        request, ended = self.relayThrough(Refusing())
        self.assertEqual(len(calls), 1)
        self.assertEqual(request.responseCode, 502)


class ForwarderLimitsTests(SynchronousTestCase):
    """
    L{Forwarder.limits}: the L{Limits} of a model's timeouts.
    """

    def forwarder(self):
        return Forwarder(clients=None, clock=None, observatory=None, writeError=None)

    def test_oneTimeoutsObjectHasOneLimits(self):
        """
        The same timeouts object gives the same L{Limits} each time, made
        from its C{responseHeader} and C{responseIdle}.
        """
        forwarder = self.forwarder()
        timeouts = TimeoutsConfig(responseHeader=7, responseIdle=9)
        limits = forwarder.limits(timeouts)
        self.assertIs(forwarder.limits(timeouts), limits)
        self.assertEqual((limits.responseHeader, limits.idle), (7, 9))

    def test_reloadedTimeoutsGetTheirOwnLimits(self):
        """
        A reload's new timeouts object gets limits of its own values, even
        while the old one is still cached.
        """
        forwarder = self.forwarder()
        forwarder.limits(TimeoutsConfig(responseHeader=7))
        limits = forwarder.limits(TimeoutsConfig(responseHeader=3))
        self.assertEqual(limits.responseHeader, 3)

    def test_noTimeoutsNoLimits(self):
        """
        Without timeouts (a peer without any), nothing is limited.
        """
        limits = self.forwarder().limits(None)
        self.assertEqual((limits.responseHeader, limits.idle), (0, 0))
