"""
Tests for L{llamaswap.observe.exchange}: one relayed request recorded as an
activity entry, a capture and Prometheus series (checklist 99-102).
"""

from __future__ import annotations

import base64
import gzip
import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from llamaswap.observe.captures import REDACTED, CaptureStore
from llamaswap.observe.exchange import HELD_BYTES, ExchangeMeter, _contentHeaders
from llamaswap.observe.prom import Metrics
from llamaswap.observe.timing import PhaseTimer
from llamaswap.observe.tokens import ActivityLog
from tests.fakes import samples, value

STREAM = (b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
          b'data: {"choices":[],"usage":{"prompt_tokens":15,"completion_tokens":33}}\n\n'
          b"data: [DONE]\n\n")


class ExchangeTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.captures = CaptureStore(1_000_000)
        self.activity = ActivityLog(10, self.clock, self.captures)
        self.metrics = Metrics()

    def meter(self, path="/v1/chat/completions", **kw):
        return ExchangeMeter(
            "qwen", path, self.clock, self.activity, captures=self.captures,
            metrics=self.metrics, route=path,
            reqHeaders=Headers({b"authorization": [b"Bearer sk"],
                                b"content-type": [b"application/json"]}),
            reqBody=b'{"model":"qwen","stream":true}', **kw)

    def test_streamedGzipAnswer(self):
        timer = PhaseTimer(self.clock)
        meter = self.meter(timer=timer)
        self.clock.advance(0.25)
        timer.queued()
        timer.loadDone()
        timer.dispatched()
        self.clock.advance(0.05)
        meter.response(200, Headers({b"content-type": [b"text/event-stream"],
                                     b"content-encoding": [b"gzip"]}))
        body = gzip.compress(STREAM)
        for i in range(0, len(body), 7):
            meter.data(body[i:i + 7])
        self.clock.advance(1)
        record = meter.done()
        self.assertIs(meter.done(), record)
        self.assertEqual(len(self.activity), 1)

        entry = self.activity.listJSON()[0]
        self.assertEqual((entry["model"], entry["req_path"], entry["resp_status_code"]),
                         ("qwen", "/v1/chat/completions", 200))
        self.assertEqual(entry["resp_content_type"], "text/event-stream")
        self.assertEqual((entry["tokens"]["input_tokens"], entry["tokens"]["output_tokens"]),
                         (15, 33))
        self.assertEqual(entry["duration_ms"], 1300)
        self.assertTrue(entry["has_capture"])
        self.assertAlmostEqual(entry["phases"]["queue"], 0.25)
        self.assertAlmostEqual(entry["phases"]["ttfb"], 0.05)

        capture = self.captures.get(0)
        self.assertEqual(capture["req_headers"]["Authorization"], REDACTED)
        self.assertNotIn("Content-Encoding", capture["resp_headers"])
        self.assertEqual(base64.b64decode(capture["resp_body"]), STREAM)

        found = samples(self.metrics)
        self.assertEqual(value(found, "llamaswap_requests_total", status="200"), 1)
        self.assertEqual(value(found, "llamaswap_tokens_total", kind="output"), 33)
        self.assertEqual(value(found, "llamaswap_phase_seconds_count", phase="queue"), 1)

    def test_jsonAnswer(self):
        meter = self.meter()
        meter.response(200, {"Content-Type": "application/json"})
        meter.data(json.dumps({"usage": {"prompt_tokens": 2, "completion_tokens": 3}}).encode())
        record = meter.done()
        self.assertEqual((record.tokens.inputTokens, record.tokens.outputTokens), (2, 3))
        self.assertTrue(record.hasCapture)

    def test_aBigJSONAnswerIsMeteredAsItComes(self):
        """
        A non-streamed answer is held to be metered at its end only while
        it is small; past L{HELD_BYTES}, every chunk is metered (and
        captured) as it comes, and the tokens are the same.
        """
        meter = self.meter()
        meter.response(200, {"content-type": "application/json"})
        padding = b'{"pad":"' + b"x" * (2 * HELD_BYTES) + b'",'
        answer = padding + b'"usage":{"prompt_tokens":3,"completion_tokens":4}}'
        meter.data(answer[:100])
        self.assertEqual(meter._held, [answer[:100]])
        meter.data(answer[100:HELD_BYTES + 200])
        self.assertIsNone(meter._held)
        meter.data(answer[HELD_BYTES + 200:])
        self.assertIsNone(meter._held)
        record = meter.done()
        self.assertEqual((record.tokens.inputTokens, record.tokens.outputTokens), (3, 4))
        capture = self.captures.capture(record.id)
        self.assertEqual(capture.respBody, answer)

    def test_upstreamError(self):
        """
        Checklist 101: a 500 gets zero tokens and no capture.
        """
        meter = self.meter()
        meter.response(500, Headers({b"content-type": [b"application/json"]}))
        meter.data(b'{"error": {"message": "boom"}, "usage": {"prompt_tokens": 9}}')
        record = meter.done()
        entry = self.activity.asJSON(record)
        self.assertEqual(entry["resp_status_code"], 500)
        self.assertEqual(entry["tokens"]["input_tokens"], 0)
        self.assertFalse(entry["has_capture"])
        self.assertEqual(len(self.captures), 0)

    def test_emptyBody(self):
        meter = self.meter()
        meter.response(200, Headers({b"content-type": [b"text/event-stream"]}))
        record = meter.done()
        self.assertEqual(record.tokens.outputTokens, 0)
        self.assertFalse(record.hasCapture)

    def test_noResponse(self):
        """
        The upstream never answered: no activity entry, only the
        Prometheus request with the status the client got.
        """
        meter = self.meter()
        self.assertIsNone(meter.done(status=502))
        self.assertEqual(len(self.activity), 0)
        found = samples(self.metrics)
        self.assertEqual(value(found, "llamaswap_requests_total", status="502"), 1)

    def test_withoutCapturesOrMetrics(self):
        meter = ExchangeMeter("m", "/v1/images/edits", self.clock, self.activity)
        meter.response(200, None)
        meter.data(b"png bytes")
        record = meter.done()
        self.assertFalse(record.hasCapture)
        self.assertEqual(record.respContentType, "")


class ContentHeadersTests(SynchronousTestCase):
    """
    L{_contentHeaders}: the first C{Content-Type} and C{Content-Encoding}
    of any header shape the meter is given.
    """

    def test_shapes(self):
        expected = ("text/event-stream", "gzip")
        self.assertEqual(_contentHeaders([(b"content-type", b"text/event-stream"),
                                          (b"content-encoding", b"gzip"),
                                          (b"content-type", b"text/plain")]), expected)
        self.assertEqual(_contentHeaders({"Content-Type": ["text/event-stream"],
                                          "CONTENT-ENCODING": "gzip"}), expected)
        self.assertEqual(_contentHeaders(Headers({b"Content-Type": [b"text/event-stream"],
                                                  b"Content-Encoding": [b"gzip"]})), expected)
        self.assertEqual(_contentHeaders([(b"x", b"y")]), ("", ""))
        self.assertEqual(_contentHeaders(None), ("", ""))

