"""
Tests for L{llamaswap.observe.captures}: the capture store and recorder
(SPEC.md sections 3.9 and 6.3; checklist 102).
"""

from __future__ import annotations

import base64
import gzip
import json
import os

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from llamaswap.observe.captures import (
    CAPTURE_ALL,
    REDACTED,
    REQ_BODY,
    REQ_HEADERS,
    RESP_BODY,
    RESP_HEADERS,
    Capture,
    CaptureRecorder,
    CaptureStore,
    canonicalName,
    captureFields,
    headerMap,
)
from llamaswap.observe.tokens import UsageMeter


def noise(n: int) -> bytes:
    """
    Incompressible bytes, so that compressed sizes are predictable.
    """
    return os.urandom(n)


class StoreTests(SynchronousTestCase):
    def test_jsonShape(self):
        store = CaptureStore(10_000)
        self.assertTrue(store.add(Capture(7, "/v1/chat/completions", {"Content-Type": "a"},
                                          b'{"model":"m"}', {"Content-Type": "b"}, b"data: x\n\n")))
        body = store.get(7)
        self.assertEqual(list(body), ["id", "req_path", "req_headers", "req_body",
                                      "resp_headers", "resp_body"])
        self.assertEqual(body["id"], 7)
        self.assertEqual(body["req_path"], "/v1/chat/completions")
        self.assertEqual(base64.b64decode(body["req_body"]), b'{"model":"m"}')
        self.assertEqual(base64.b64decode(body["resp_body"]), b"data: x\n\n")
        self.assertEqual(body["resp_headers"], {"Content-Type": "b"})
        json.dumps(body)
        self.assertTrue(store.has(7))
        self.assertIsNone(store.get(8))
        self.assertFalse(store.has(8))

    def test_absentPartsAreNull(self):
        store = CaptureStore(10_000)
        store.add(Capture(1, "/v1/images/edits", {"A": "b"}, None, {"C": "d"}, None))
        body = store.get(1)
        self.assertIsNone(body["req_body"])
        self.assertIsNone(body["resp_body"])
        store.add(Capture(2, "/x", None, b"", None, b""))
        body = store.get(2)
        self.assertEqual((body["req_headers"], body["req_body"], body["resp_body"]),
                         (None, "", ""))

    def test_storedCompressed(self):
        store = CaptureStore(100_000)
        text = b'data: {"choices":[{"delta":{"content":"hello"}}]}\n\n' * 1000
        store.add(Capture(1, "/v1/chat/completions", {}, b"{}", {}, text))
        self.assertLess(store.usedBytes, len(text) // 10)
        self.assertEqual(base64.b64decode(store.get(1)["resp_body"]), text)

    def test_fifoEvictionByBudget(self):
        store = CaptureStore(3300)
        for i in range(5):
            self.assertTrue(store.add(Capture(i, "/p", None, None, None, noise(900))))
            self.assertLessEqual(store.usedBytes, 3300)
        self.assertEqual([i for i in range(5) if store.has(i)], [2, 3, 4])
        self.assertEqual(store.evicted, 2)
        self.assertEqual(len(store), 3)

    def test_oversizeSkipped(self):
        """
        An item bigger than the whole budget is skipped, evicting nothing.
        """
        store = CaptureStore(3000)
        store.add(Capture(0, "/p", None, None, None, noise(500)))
        with capturedLogs() as events:
            self.assertFalse(store.add(Capture(1, "/p", None, None, None, noise(5000))))
        self.assertTrue(store.has(0))
        self.assertFalse(store.has(1))
        self.assertEqual(store.skipped, 1)
        self.assertTrue(any("too large" in e["log_format"] for e in events))

    def test_disabled(self):
        store = CaptureStore.fromConfig(0)
        self.assertFalse(store.enabled)
        self.assertFalse(store.add(Capture(0, "/p")))
        self.assertEqual(CaptureStore.fromConfig(5).maxBytes, 5 * 1048576)

    def test_replaceSameId(self):
        store = CaptureStore(10_000)
        store.add(Capture(0, "/a", None, None, None, noise(100)))
        used = store.usedBytes
        store.add(Capture(0, "/b", None, None, None, noise(100)))
        self.assertEqual(store.get(0)["req_path"], "/b")
        self.assertAlmostEqual(store.usedBytes, used, delta=20)


class HeaderTests(SynchronousTestCase):
    def test_redactionAndFirstValue(self):
        headers = Headers({
            b"authorization": [b"Bearer secret"],
            b"Proxy-Authorization": [b"Basic x"],
            b"cookie": [b"a=b"],
            b"set-cookie": [b"c=d", b"e=f"],
            b"X-API-KEY": [b"k"],
            b"accept": [b"text/plain", b"application/json"],
            b"content-type": [b"application/json"],
        })
        self.assertEqual(headerMap(headers), {
            "Authorization": REDACTED,
            "Proxy-Authorization": REDACTED,
            "Cookie": REDACTED,
            "Set-Cookie": REDACTED,
            "X-Api-Key": REDACTED,
            "Accept": "text/plain",
            "Content-Type": "application/json",
        })

    def test_mappingsAndPairs(self):
        self.assertEqual(headerMap({"x-api-key": "k", "A": ["1", "2"], "b": []}),
                         {"X-Api-Key": REDACTED, "A": "1"})
        self.assertEqual(headerMap([(b"content-encoding", b"gzip"), (b"x", b"y")],
                                   drop=("Content-Encoding",)), {"X": "y"})
        self.assertEqual(headerMap(None), {})
        self.assertEqual(canonicalName(b"x-forwarded-FOR"), "X-Forwarded-For")


class PathRuleTests(SynchronousTestCase):
    def test_rules(self):
        self.assertEqual(captureFields("/v1/audio/speech"), REQ_HEADERS | REQ_BODY | RESP_HEADERS)
        for path in ("/v1/audio/voices", "/v1/audio/transcriptions"):
            self.assertEqual(captureFields(path), REQ_HEADERS | RESP_HEADERS | RESP_BODY)
        for path in ("/v1/images/generations", "/sdapi/v1/txt2img"):
            self.assertEqual(captureFields(path), REQ_HEADERS | REQ_BODY | RESP_HEADERS)
        for path in ("/v1/images/edits", "/sdapi/v1/img2img"):
            self.assertEqual(captureFields(path), REQ_HEADERS | RESP_HEADERS)
        self.assertEqual(captureFields("/v1/chat/completions"), CAPTURE_ALL)

    def record(self, path):
        store = CaptureStore(100_000)
        recorder = CaptureRecorder(store, path, {"Content-Type": "x"}, b"request")
        recorder.response(200, {"Content-Type": "y"})
        recorder.data(b"response")
        self.assertTrue(recorder.commit(0))
        return store.get(0)

    def test_recordedParts(self):
        def parts(body):
            return tuple(body[k] is not None for k in
                         ("req_headers", "req_body", "resp_headers", "resp_body"))

        self.assertEqual(parts(self.record("/v1/audio/speech")), (True, True, True, False))
        self.assertEqual(parts(self.record("/v1/audio/transcriptions")), (True, False, True, True))
        self.assertEqual(parts(self.record("/v1/images/generations")), (True, True, True, False))
        self.assertEqual(parts(self.record("/v1/images/edits")), (True, False, True, False))
        self.assertEqual(parts(self.record("/v1/chat/completions")), (True, True, True, True))


class RecorderTests(SynchronousTestCase):
    def test_chatExchange(self):
        """
        Checklist 102: the exchange is stored, secrets redacted, bodies
        decompressed and without C{Content-Encoding}.
        """
        store = CaptureStore(1_000_000)
        request = Headers({b"Authorization": [b"Bearer sk-123"],
                           b"Content-Type": [b"application/json"]})
        recorder = CaptureRecorder(store, "/v1/chat/completions", request, b'{"model":"m"}')
        answer = b'data: {"choices":[]}\n\ndata: [DONE]\n\n'
        recorder.response(200, Headers({b"content-type": [b"text/event-stream"],
                                        b"content-encoding": [b"gzip"],
                                        b"set-cookie": [b"s=1"]}))
        meter = UsageMeter("/v1/chat/completions", "text/event-stream", "gzip",
                           onDecoded=recorder.data)
        compressed = gzip.compress(answer)
        meter.feed(compressed[:10])
        meter.feed(compressed[10:])
        meter.finish()
        self.assertTrue(recorder.commit(3))
        body = store.get(3)
        self.assertEqual(body["req_headers"], {"Authorization": REDACTED,
                                               "Content-Type": "application/json"})
        self.assertEqual(body["resp_headers"], {"Content-Type": "text/event-stream",
                                                "Set-Cookie": REDACTED})
        self.assertEqual(base64.b64decode(body["req_body"]), b'{"model":"m"}')
        self.assertEqual(base64.b64decode(body["resp_body"]), answer)
        self.assertFalse(recorder.commit(4))

    def test_headersKeptUntilReadAreCounted(self):
        """
        The headers are kept as they came and made into header maps only
        when the capture is read; until then they count in the budget at
        least their own length.
        """
        store = CaptureStore(1_000_000)
        long = b"v" * 1000
        request = Headers({b"x-long-%d" % n: [long] for n in range(5)})
        recorder = CaptureRecorder(store, "/v1/chat/completions", request, b"{}")
        recorder.response(200, [(b"x-answer", long)])
        recorder.data(b"ok")
        self.assertTrue(recorder.commit(1))
        self.assertGreater(store.usedBytes, 6 * len(long))
        body = store.get(1)
        self.assertEqual(body["req_headers"]["X-Long-4"], long.decode())
        self.assertEqual(body["resp_headers"], {"X-Answer": long.decode()})

    def test_onlyNonEmpty200(self):
        store = CaptureStore(10_000)
        failed = CaptureRecorder(store, "/v1/chat/completions", {}, b"{}")
        failed.response(500, {})
        failed.data(b"error")
        self.assertFalse(failed.commit(0))
        empty = CaptureRecorder(store, "/v1/chat/completions", {}, b"{}")
        empty.response(200, {})
        self.assertFalse(empty.commit(1))
        never = CaptureRecorder(store, "/v1/chat/completions", {}, b"{}")
        self.assertFalse(never.commit(2))
        self.assertEqual(len(store), 0)

    def test_stopsKeepingPastTheBudget(self):
        """
        Once the compressed exchange passes the store's budget, the
        recorder keeps nothing more and the exchange is not captured.
        """
        store = CaptureStore(20_000)
        store.add(Capture(0, "/p", None, None, None, noise(1000)))
        recorder = CaptureRecorder(store, "/v1/chat/completions", {}, b"{}")
        recorder.response(200, {})
        with capturedLogs():
            for _ in range(40):
                recorder.data(noise(1000))
                held = sum(map(len, recorder._respParts))
                self.assertLessEqual(held, 20_000 + 1000)
        self.assertTrue(recorder.overflowed)
        self.assertEqual(recorder._respParts, [])
        self.assertFalse(recorder.commit(1))
        self.assertTrue(store.has(0))

    def test_requestAloneOverBudget(self):
        store = CaptureStore(1000)
        with capturedLogs():
            recorder = CaptureRecorder(store, "/v1/chat/completions", {}, noise(5000))
        self.assertFalse(recorder.active)
        recorder.response(200, {})
        recorder.data(b"x")
        self.assertFalse(recorder.commit(0))

    def test_disabledStore(self):
        recorder = CaptureRecorder(CaptureStore(0), "/v1/chat/completions", {}, b"{}")
        recorder.response(200, {})
        recorder.data(b"x")
        self.assertFalse(recorder.commit(0))


class SmallPartTests(SynchronousTestCase):
    """
    Parts under L{SMALL} bytes are stored raw (compressing them costs more
    than it saves); bigger ones are compressed; both read back the same.
    """

    def test_smallAndBigAnswersReadBack(self):
        from llamaswap.observe.captures import SMALL

        store = CaptureStore(1_000_000)
        for size in (5, SMALL - 1, SMALL, 10 * SMALL):
            answer = (b"a" * 7 + b"\n") * (size // 8) + b"b" * (size % 8)
            recorder = CaptureRecorder(store, "/v1/chat/completions", {}, b'{"x":1}')
            recorder.response(200, {})
            for i in range(0, len(answer), 100):
                recorder.data(answer[i:i + 100])
            self.assertTrue(recorder.commit(size))
            found = store.get(size)
            self.assertEqual(base64.b64decode(found["resp_body"]), answer)
            self.assertEqual(base64.b64decode(found["req_body"]), b'{"x":1}')
