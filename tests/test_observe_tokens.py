"""
Tests for L{llamaswap.observe.tokens}: token metrics of relayed answers and
the activity log (SPEC.md section 6.2; checklist 97-101).
"""

from __future__ import annotations

import gzip
import json
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from llamaswap.demo import DemoServer, DemoSettings
from llamaswap.observe.captures import CaptureStore
from llamaswap.observe.tokens import (
    NO_TOKENS,
    ActivityLog,
    BodyDecoder,
    JSONUsageParser,
    SSEUsageParser,
    TokenUsage,
    UsageMeter,
    filterAcceptEncoding,
    usageFromObjects,
)

TIMINGS = {"prompt_n": 20, "predicted_n": 50, "prompt_per_second": 100,
           "predicted_per_second": 40, "prompt_ms": 200, "predicted_ms": 1250, "cache_n": 8}


def sse(*events, done=True) -> bytes:
    out = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return out + (b"data: [DONE]\n\n" if done else b"")


def chunkEvent(text="hi", **extra):
    return {"object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": text}}], **extra}


def meter(body: bytes, contentType="application/json", encoding=None, path="/v1/chat/completions",
          chunks=None, **kw):
    m = UsageMeter(path, contentType, encoding, **kw)
    if chunks is None:
        m.feed(body)
    else:
        for chunk in chunks:
            m.feed(chunk)
    return m.finish()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(c, 0), len(data)) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


STREAM = sse(chunkEvent("a"), chunkEvent("b"), chunkEvent("", usage=None),
             {"choices": [], "usage": {"prompt_tokens": 15, "completion_tokens": 33}},
             chunkEvent("c", timings=TIMINGS))


class UsageRuleTests(SynchronousTestCase):
    def test_bodyReadAsJSONLoadsReadsIt(self):
        """
        A non-streamed body is read as L{json.loads} reads it: with a BOM,
        with whitespace around it, and split over chunks; one with
        anything after its value, or not valid UTF-8, yields no tokens.
        """
        value = {"usage": {"prompt_tokens": 15, "completion_tokens": 33}, "text": "é"}
        text = json.dumps(value, ensure_ascii=False)
        expected = TokenUsage(-1, 15, 33, -1.0, -1.0, None)
        for body in [text.encode(), b"\xef\xbb\xbf" + text.encode(),
                     b" \n" + text.encode() + b" \r\n"]:
            self.assertEqual(meter(body), expected, body[:8])
            self.assertEqual(meter(body, chunks=split(body, [3, 40])), expected)
        for body in [text.encode() + b" {}", text.encode() + b"x",
                     b'{"usage": {"prompt_tokens": 15}, "t": "\xff"}']:
            with capturedLogs():
                self.assertIsNone(meter(body), body[-8:])

    def test_usageCountsOfEitherName(self):
        """
        Input tokens are C{prompt_tokens}, else C{input_tokens}; output
        tokens C{completion_tokens}, else C{output_tokens}; numbers given
        as floats or strings count as gjson reads them.
        """
        self.assertEqual(usageFromObjects({"input_tokens": 4, "output_tokens": "7"}, None),
                         TokenUsage(-1, 4, 7, -1.0, -1.0, None))
        self.assertEqual(usageFromObjects(
            {"prompt_tokens": 2.9, "input_tokens": 9, "completion_tokens": True,
             "input_tokens_details": {"cached_tokens": 3}}, None),
            TokenUsage(3, 2, 1, -1.0, -1.0, None))

    def test_usageJSON(self):
        """
        Checklist 97: JSON usage 15/33 -> input 15, output 33, rates -1,
        cached unknown.
        """
        body = json.dumps({"choices": [], "usage": {"prompt_tokens": 15,
                                                    "completion_tokens": 33}}).encode()
        usage = meter(body)
        self.assertEqual(usage, TokenUsage(-1, 15, 33, -1.0, -1.0, None))
        self.assertEqual(usage.durationMs(812.7), 812)

    def test_timings(self):
        """
        Checklist 98: the timings example -> 20/50/8, 100 and 40 t/s,
        1450 ms.
        """
        body = json.dumps({"content": "x", "timings": TIMINGS}).encode()
        usage = meter(body, path="/completion")
        self.assertEqual((usage.inputTokens, usage.outputTokens, usage.cacheTokens),
                         (20, 50, 8))
        self.assertEqual((usage.promptPerSecond, usage.tokensPerSecond), (100.0, 40.0))
        self.assertEqual(usage.durationMs(30.0), 1450)
        self.assertEqual(usage.durationMs(2000.0), 2000)
        self.assertEqual(usage.asJSON(), {"cache_tokens": 8, "input_tokens": 20,
                                          "output_tokens": 50, "prompt_per_second": 100.0,
                                          "tokens_per_second": 40.0})

    def test_timingsOverrideUsage(self):
        usage = usageFromObjects({"prompt_tokens": 1, "completion_tokens": 2,
                                  "cache_read_input_tokens": 3}, {"prompt_n": 4, "predicted_n": 5})
        self.assertEqual((usage.inputTokens, usage.outputTokens, usage.cacheTokens), (4, 5, 3))
        self.assertEqual((usage.promptPerSecond, usage.tokensPerSecond), (0.0, 0.0))

    def test_anthropicAndCachedVariants(self):
        cases = [
            ({"input_tokens": 7, "output_tokens": 9}, (7, 9, -1)),
            ({"input_tokens": 7, "output_tokens": 9, "cache_read_input_tokens": 4}, (7, 9, 4)),
            ({"input_tokens": 7, "input_tokens_details": {"cached_tokens": 2}}, (7, 0, 2)),
            ({"prompt_tokens": 7, "prompt_tokens_details": {"cached_tokens": 5}}, (7, 0, 5)),
            ({"prompt_tokens": "12", "completion_tokens": 3.0}, (12, 3, -1)),
            ({"prompt_tokens": None, "input_tokens": 6}, (6, 0, -1)),
        ]
        for usage, expected in cases:
            result = usageFromObjects(usage, None)
            self.assertEqual((result.inputTokens, result.outputTokens, result.cacheTokens),
                             expected, usage)

    def test_infillUsesLastElement(self):
        body = json.dumps([{"content": "a", "timings": {"prompt_n": 1, "predicted_n": 1}},
                           {"content": "b", "timings": TIMINGS}]).encode()
        usage = meter(body, path="/infill")
        self.assertEqual((usage.inputTokens, usage.outputTokens), (20, 50))
        # Elsewhere, an array has no top-level usage.
        self.assertIsNone(meter(body, path="/completion"))

    def test_nothingToFind(self):
        self.assertIsNone(meter(b'{"object":"list","data":[]}'))
        self.assertIsNone(meter(b""))
        self.assertIsNone(meter(b'{"usage": null}'))
        self.assertIsNone(meter(b'[1, 2, 3]'))

    def test_invalidJSON(self):
        with capturedLogs() as events:
            self.assertIsNone(meter(b'{"usage": {"prompt_tokens": 1}'))
        self.assertTrue(any("invalid JSON" in e.get("log_format", "") for e in events))

    def test_sizeCap(self):
        """
        A non-streamed body over the cap yields no tokens and a warning,
        and is not kept.
        """
        body = json.dumps({"pad": "x" * 200, "usage": {"prompt_tokens": 1}}).encode()
        with capturedLogs() as events:
            parser = JSONUsageParser("/v1/embeddings", maxBytes=100)
            parser.feed(body[:60])
            parser.feed(body[60:])
            self.assertIsNone(parser.finish())
        self.assertTrue(parser.overflowed)
        self.assertEqual(parser._chunks, [])
        self.assertEqual([e["log_level"].name for e in events], ["warn"])
        self.assertEqual(meter(body, maxJSONBytes=len(body)).inputTokens, 1)


class StreamTests(SynchronousTestCase):
    def test_finalUsage(self):
        """
        Checklist 99: a stream whose final chunk carries usage 15/33.
        """
        body = sse(chunkEvent("a"), chunkEvent("b", usage=None),
                   {"choices": [], "usage": {"prompt_tokens": 15, "completion_tokens": 33}})
        usage = meter(body, "text/event-stream")
        self.assertEqual((usage.inputTokens, usage.outputTokens), (15, 33))
        self.assertEqual((usage.promptPerSecond, usage.tokensPerSecond), (-1.0, -1.0))

    def test_onlyDone(self):
        """
        Checklist 99: a stream with only C{[DONE]} -> no usage: the entry
        gets zero tokens (and a warning is logged).
        """
        with capturedLogs() as events:
            self.assertIsNone(meter(b"data: [DONE]\n\n", "text/event-stream; charset=utf-8"))
        self.assertTrue(any(e["log_level"].name == "warn" for e in events))
        self.assertEqual(NO_TOKENS.asJSON(), {"cache_tokens": -1, "input_tokens": 0,
                                              "output_tokens": 0, "prompt_per_second": -1.0,
                                              "tokens_per_second": -1.0})

    def test_timingsInStream(self):
        usage = meter(STREAM, "text/event-stream")
        self.assertEqual((usage.inputTokens, usage.outputTokens, usage.cacheTokens), (20, 50, 8))
        self.assertEqual(usage.durationMs(0), 1450)

    def test_lastNonZeroWinsPerField(self):
        """
        Anthropic: input tokens in C{message_start}, output tokens in
        C{message_delta}.
        """
        body = (b"event: message_start\n"
                b'data: {"type":"message_start","message":{"usage":{"input_tokens":11,'
                b'"output_tokens":1,"cache_read_input_tokens":0}}}\n\n'
                b"event: content_block_delta\n"
                b'data: {"type":"content_block_delta","delta":{"text":"usage"}}\n\n'
                b"event: message_delta\n"
                b'data: {"type":"message_delta","usage":{"output_tokens":42}}\n\n'
                b"event: message_stop\n"
                b'data: {"type":"message_stop"}\n\n')
        usage = meter(body, "text/event-stream")
        self.assertEqual((usage.inputTokens, usage.outputTokens, usage.cacheTokens), (11, 42, 0))

    def test_responsesUsage(self):
        body = sse({"type": "response.output_text.delta", "delta": "x"},
                   {"type": "response.completed",
                    "response": {"usage": {"input_tokens": 5, "output_tokens": 6}}}, done=False)
        usage = meter(body, "text/event-stream")
        self.assertEqual((usage.inputTokens, usage.outputTokens), (5, 6))

    def test_zeroUsageDoesNotErase(self):
        body = sse({"usage": {"prompt_tokens": 4, "completion_tokens": 9}},
                   {"usage": {"prompt_tokens": 0, "completion_tokens": 0}})
        usage = meter(body, "text/event-stream")
        self.assertEqual((usage.inputTokens, usage.outputTokens), (4, 9))

    def test_crlfAndNoSpace(self):
        body = b'data:{"usage":{"prompt_tokens":2,"completion_tokens":3}}\r\n\r\ndata:[DONE]\r\n'
        usage = meter(body, "text/event-stream")
        self.assertEqual((usage.inputTokens, usage.outputTokens), (2, 3))

    def test_unterminatedLastLine(self):
        body = b'data: {"usage":{"prompt_tokens":2,"completion_tokens":3}}'
        self.assertEqual(meter(body, "text/event-stream").outputTokens, 3)

    def test_invalidLinesSkipped(self):
        body = (b'data: {"usage": broken\n\n'
                b'data: ["usage"]\n\n'
                b': comment usage\n\n'
                b'data: {"usage":{"prompt_tokens":2}}\n\n')
        self.assertEqual(meter(body, "text/event-stream").inputTokens, 2)

    def test_longLineSkippedAndBounded(self):
        """
        A line longer than C{maxLine} is dropped as it grows; the parser
        holds at most C{maxLine} bytes of it.
        """
        parser = SSEUsageParser(maxLine=100)
        parser.feed(b'data: {"usage":{"prompt_tokens":9}, "pad": "')
        for _ in range(10):
            parser.feed(b"x" * 50)
            self.assertLessEqual(len(parser._partial), 100)
        parser.feed(b'"}\n\ndata: {"usage":{"completion_tokens":7}}\n\n')
        usage = parser.finish()
        self.assertEqual((usage.inputTokens, usage.outputTokens), (0, 7))

    def test_keepsOnlyThePartialLine(self):
        parser = SSEUsageParser()
        for i in range(1000):
            parser.feed(b'data: {"choices":[{"delta":{"content":"tok %d"}}]}\n\n' % i)
        parser.feed(b'data: {"choi')
        self.assertEqual(parser._partial, b'data: {"choi')
        self.assertIsNone(parser.finish())
        self.assertEqual(parser.lines, 2001)

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
    def test_anySplitSameResult(self, cuts):
        """
        Chunks split at arbitrary byte positions give the one-chunk result.
        """
        whole = meter(STREAM, "text/event-stream")
        self.assertEqual(meter(STREAM, "text/event-stream", chunks=split(STREAM, cuts)), whole)


class CompressedTests(SynchronousTestCase):
    BODY = json.dumps({"usage": {"prompt_tokens": 15, "completion_tokens": 33},
                       "pad": "y" * 5000}).encode()

    def test_gzipJSON(self):
        """
        Checklist 100: metrics come from the decompressed body.
        """
        usage = meter(gzip.compress(self.BODY), encoding="gzip")
        self.assertEqual((usage.inputTokens, usage.outputTokens), (15, 33))

    def test_gzipStream(self):
        usage = meter(gzip.compress(STREAM), "text/event-stream", encoding=b"GZIP")
        self.assertEqual(usage.outputTokens, 50)

    def test_deflateZlibAndRaw(self):
        raw = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        rawBody = raw.compress(self.BODY) + raw.flush()
        for body in (zlib.compress(self.BODY), rawBody):
            self.assertEqual(meter(body, encoding="deflate").outputTokens, 33)
            # Split in one-byte chunks too (the header check waits for 2).
            chunks = [body[i:i + 1] for i in range(len(body))]
            self.assertEqual(meter(b"", encoding="deflate", chunks=chunks).outputTokens, 33)

    def test_gzipMembers(self):
        body = gzip.compress(STREAM[:100]) + gzip.compress(STREAM[100:])
        cut = len(gzip.compress(STREAM[:100])) + 1
        usage = meter(b"", "text/event-stream", "gzip", chunks=[body[:cut], body[cut:]])
        self.assertEqual(usage.outputTokens, 50)

    @settings(max_examples=40, deadline=None)
    @given(st.data())
    def test_anySplitGzip(self, data):
        body = gzip.compress(STREAM)
        cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=10))
        self.assertEqual(meter(b"", "text/event-stream", "gzip", chunks=split(body, cuts)),
                         meter(STREAM, "text/event-stream"))

    def test_decodedInBoundedPieces(self):
        """
        A small compressed chunk that inflates hugely comes out in bounded
        pieces, and no more than C{maxOutput} in all.
        """
        bomb = gzip.compress(b"\n" * (1024 * 1024))
        decoder = BodyDecoder("gzip", maxOutput=300 * 1024)
        pieces = decoder.decode(bomb)
        self.assertTrue(all(len(p) <= 64 * 1024 for p in pieces))
        self.assertEqual(sum(map(len, pieces)), 300 * 1024)
        self.assertTrue(decoder.truncated)
        self.assertEqual(decoder.decode(b"more"), [])

    def test_corrupt(self):
        with capturedLogs():
            decoder = BodyDecoder("gzip")
            self.assertEqual(decoder.decode(b"\x1f\x8bnot really gzip at all"), [])
        self.assertTrue(decoder.failed)
        self.assertIsNone(meter(b"garbage!", encoding="gzip"))

    def test_unsupported(self):
        with capturedLogs() as events:
            self.assertIsNone(meter(self.BODY, encoding="br"))
        self.assertTrue(any("Content-Encoding" in e.get("log_format", "") for e in events))
        self.assertFalse(BodyDecoder("br").supported)
        self.assertEqual(BodyDecoder("identity").decode(b"x"), [b"x"])

    def test_filterAcceptEncoding(self):
        """
        Checklist 100: C{gzip, deflate, br} -> C{gzip, deflate}; C{br, zstd}
        -> nothing.
        """
        self.assertEqual(filterAcceptEncoding("gzip, deflate, br"), "gzip, deflate")
        self.assertEqual(filterAcceptEncoding(b"br, zstd"), "")
        self.assertEqual(filterAcceptEncoding("GZIP;q=0.5,identity"), "GZIP;q=0.5")
        self.assertEqual(filterAcceptEncoding(None), "")

    def test_onDecoded(self):
        pieces = []
        m = UsageMeter("/v1/chat/completions", "application/json", "gzip",
                       onDecoded=pieces.append)
        m.feed(gzip.compress(self.BODY))
        m.finish()
        self.assertEqual(b"".join(pieces), self.BODY)
        self.assertEqual(m.finish().outputTokens, 33)


class DemoStreamTests(SynchronousTestCase):
    """
    A real streamed answer of the demo upstream, fed chunk by chunk as
    received.
    """

    def test_demoStreamWithUsage(self):
        clock = Clock()
        server = DemoServer(DemoSettings(tokens=12, tokenDelay=0.05), clock, pid=1)
        stub = StubTreq(server.resource())
        body = {"model": "demo", "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "Tell me about Twisted please"}]}
        d = stub.post("http://demo.invalid/v1/chat/completions", data=json.dumps(body).encode(),
                      headers={"Content-Type": "application/json"}, unbuffered=True)
        stub.flush()
        response = self.successResultOf(d)
        contentType = response.headers.getRawHeaders("content-type")[0]
        m = UsageMeter("/v1/chat/completions", contentType)
        received = []

        def got(chunk):
            received.append(chunk)
            m.feed(chunk)

        done = stub.collect(response, got)
        for _ in range(40):
            clock.advance(0.05)
            stub.flush()
        self.successResultOf(done)
        self.assertGreater(len(received), 10)
        usage = m.finish()

        events = [json.loads(line[6:]) for line in b"".join(received).split(b"\n")
                  if line.startswith(b"data: {")]
        reported = events[-1]["usage"]
        timings = events[-2]["timings"]
        self.assertEqual((usage.inputTokens, usage.outputTokens),
                         (reported["prompt_tokens"], reported["completion_tokens"]))
        self.assertEqual(usage.outputTokens, 12)
        self.assertEqual(usage.tokensPerSecond, timings["predicted_per_second"])
        self.assertGreater(usage.tokensPerSecond, 0)
        self.assertEqual(clock.getDelayedCalls(), [])


class ActivityLogTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1709647629.5)

    def test_idsAndRing(self):
        log = ActivityLog(3, self.clock)
        records = [log.add("m", "/v1/chat/completions", "application/json", 200)
                   for _ in range(5)]
        self.assertEqual([r.id for r in records], [0, 1, 2, 3, 4])
        self.assertEqual([r.id for r in log.list()], [2, 3, 4])
        self.assertEqual(len(log), 3)
        self.assertIsNone(log.get(1))
        self.assertIs(log.get(3), records[3])
        self.assertEqual(ActivityLog(0).maxItems, 1000)
        self.assertEqual(ActivityLog(-5).maxItems, 1000)
        self.assertEqual(ActivityLog(10).listJSON(), [])

    def test_jsonShape(self):
        log = ActivityLog(10, self.clock)
        record = log.add("qwen", "/v1/chat/completions", "text/event-stream", 200,
                         tokens=TokenUsage(-1, 8, 40, 2000.0, 33.3), durationMs=1489,
                         phases={"queue": 0.001, "total": 1.489})
        entry = log.listJSON()[0]
        self.assertEqual(list(entry), ["id", "timestamp", "model", "req_path",
                                       "resp_content_type", "resp_status_code", "tokens",
                                       "duration_ms", "has_capture", "phases"])
        self.assertEqual(entry["id"], 0)
        self.assertRegex(entry["timestamp"], r"^2024-03-0\dT\d\d:\d\d:09\.5(Z|[+-]\d\d:\d\d)$")
        self.assertEqual(entry["tokens"], {"cache_tokens": -1, "input_tokens": 8,
                                           "output_tokens": 40, "prompt_per_second": 2000.0,
                                           "tokens_per_second": 33.3})
        self.assertEqual((entry["duration_ms"], entry["has_capture"]), (1489, False))
        self.assertEqual(entry["phases"], {"queue": 0.001, "total": 1.489})
        self.assertEqual(record.timestamp, 1709647629.5)
        json.dumps(entry)

    def test_captureCallbackAndLiveHasCapture(self):
        store = CaptureStore(1000)
        log = ActivityLog(10, self.clock, captures=store)
        seen = []
        log.subscribe(lambda r: seen.append((r.id, r.hasCapture)))

        def capture(recordId):
            seen.append(("capture", recordId))
            return True

        record = log.add("m", "/v1/chat/completions", capture=capture)
        self.assertEqual(seen, [("capture", 0), (0, True)])
        # The capture is not (or no longer) in the store.
        self.assertFalse(log.asJSON(record)["has_capture"])
        self.assertTrue(record.asJSON()["has_capture"])

    def test_failingCaptureAndSubscriber(self):
        log = ActivityLog(10, self.clock)
        log.subscribe(lambda r: 1 / 0)
        record = log.add("m", "/p", capture=lambda i: {}["x"])
        self.assertFalse(record.hasCapture)
        self.assertEqual(len(self.flushLoggedErrors(KeyError, ZeroDivisionError)), 2)

    def test_unsubscribe(self):
        log = ActivityLog(10, self.clock)
        seen = []
        stop = log.subscribe(seen.append)
        log.add("m", "/p")
        stop()
        stop()
        log.add("m", "/p")
        self.assertEqual(len(seen), 1)
