"""
Tests for L{llamaswap.demo}: the demo upstream's routes, driven in memory with
L{treq.testing.StubTreq} and a L{Clock} for token and start-up delays.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from llamaswap.demo import DemoServer, DemoSettings
from llamaswap.demo import server as serverModule
from llamaswap.demo import text
from llamaswap.demo.__main__ import Options

BASE = "http://demo.invalid"
PID = 4242


def parseSSE(raw: bytes) -> list[tuple[str | None, Any]]:
    """
    Split an event-stream body into C{(event name or None, data)} pairs; data
    is decoded JSON, or the literal C{"[DONE]"}.
    """
    events = []
    assert raw.endswith(b"\n\n") or raw == b"", raw[-40:]
    for block in raw.split(b"\n\n"):
        if not block:
            continue
        name = None
        data = None
        for line in block.split(b"\n"):
            if line.startswith(b"event: "):
                name = line[len(b"event: "):].decode()
            elif line.startswith(b"data: "):
                payload = line[len(b"data: "):]
                data = "[DONE]" if payload == b"[DONE]" else json.loads(payload)
            else:
                raise AssertionError(f"unexpected SSE line {line!r}")
        events.append((name, data))
    return events


class DemoTestCase(SynchronousTestCase):
    """
    Builds a L{DemoServer} on a L{Clock} behind a L{StubTreq}.
    """

    def makeServer(self, **kw: Any) -> None:
        self.clock = Clock()
        self.server = DemoServer(DemoSettings(**kw), clock=self.clock, pid=PID)
        self.stub = StubTreq(self.server.resource())

    def setUp(self) -> None:
        self.makeServer()

    def tearDown(self) -> None:
        # Every timer the server started has been used or cancelled.
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                headers: dict[str, str] | None = None, **kw: Any) -> Any:
        """
        Issue a request; return the response without reading its body.
        """
        hdrs = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            hdrs.setdefault("Content-Type", "application/json")
        d = self.stub.request(method, BASE + path, data=data, headers=hdrs, **kw)
        self.stub.flush()
        return self.successResultOf(d)

    def fetch(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[Any, bytes]:
        """
        Issue a request whose response completes without advancing the clock;
        return it and its body.
        """
        response = self.request(method, path, body, **kw)
        content = self.stub.content(response)
        self.stub.flush()
        return response, self.successResultOf(content)

    def fetchJSON(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[Any, Any]:
        response, content = self.fetch(method, path, body, **kw)
        return response, json.loads(content)

    def assertJSONResponse(self, response: Any, code: int) -> None:
        self.assertEqual(response.code, code)
        self.assertEqual(response.headers.getRawHeaders("content-type"),
                         ["application/json; charset=utf-8"])
        self.assertIdentity(response)

    def assertIdentity(self, response: Any) -> None:
        self.assertEqual(response.headers.getRawHeaders("x-demo-model"),
                         [self.server.settings.model])
        self.assertEqual(response.headers.getRawHeaders("x-demo-pid"), [str(PID)])


def chat(content: str = "tell me about llamas", **extra: Any) -> dict[str, Any]:
    return {"model": "client-model", "messages": [{"role": "user", "content": content}], **extra}


class HealthTests(DemoTestCase):
    def test_ok(self) -> None:
        response, body = self.fetchJSON("GET", "/health")
        self.assertJSONResponse(response, 200)
        self.assertEqual(body, {"status": "ok"})

    def test_loadingThenOk(self) -> None:
        """
        With a start-up delay, /health answers 503 loading until the delay has
        passed, then 200; other routes answer 503 meanwhile.
        """
        self.makeServer(startupDelay=5.0)
        response, body = self.fetchJSON("GET", "/health")
        self.assertJSONResponse(response, 503)
        self.assertEqual(body, {"status": "loading"})

        response, body = self.fetchJSON("GET", "/v1/models")
        self.assertJSONResponse(response, 503)
        self.assertEqual(body["error"]["type"], "unavailable_error")

        self.clock.advance(4.9)
        self.assertEqual(self.fetch("GET", "/health")[0].code, 503)
        self.clock.advance(0.1)
        response, body = self.fetchJSON("GET", "/health")
        self.assertJSONResponse(response, 200)
        self.assertEqual(body, {"status": "ok"})
        self.assertEqual(self.fetch("GET", "/v1/models")[0].code, 200)

    def test_failHealth(self) -> None:
        self.makeServer(failHealth=True)
        response, body = self.fetchJSON("GET", "/health")
        self.assertJSONResponse(response, 500)
        self.assertEqual(body["status"], "error")
        self.clock.advance(100)
        self.assertEqual(self.fetch("GET", "/health")[0].code, 500)
        # Only health fails.
        self.assertEqual(self.fetch("GET", "/v1/models")[0].code, 200)


class ModelsTests(DemoTestCase):
    def test_list(self) -> None:
        self.makeServer(model="tiny-llama")
        response, body = self.fetchJSON("GET", "/v1/models")
        self.assertJSONResponse(response, 200)
        self.assertEqual(body["object"], "list")
        self.assertEqual([m["id"] for m in body["data"]], ["tiny-llama"])
        self.assertEqual(body["data"][0]["object"], "model")


class ChatCompletionTests(DemoTestCase):
    def test_shape(self) -> None:
        response, body = self.fetchJSON("POST", "/v1/chat/completions", chat())
        self.assertJSONResponse(response, 200)
        self.assertTrue(body["id"].startswith("chatcmpl-"))
        self.assertEqual(body["object"], "chat.completion")
        self.assertIsInstance(body["created"], int)
        self.assertEqual(body["model"], "client-model")
        [choice] = body["choices"]
        self.assertEqual(choice["index"], 0)
        self.assertEqual(choice["message"]["role"], "assistant")
        self.assertEqual(choice["finish_reason"], "stop")
        words = choice["message"]["content"].split(" ")
        self.assertEqual(words[-1], "")
        self.assertEqual(len(words) - 1, 16)
        for word in words[:-1]:
            self.assertIn(word, text.WORDS)
        self.assertEqual(body["usage"], {
            "prompt_tokens": 4, "completion_tokens": 16, "total_tokens": 20})
        timings = body["timings"]
        self.assertEqual((timings["prompt_n"], timings["predicted_n"]), (4, 16))
        for key in ("prompt_ms", "predicted_ms", "prompt_per_second", "predicted_per_second"):
            self.assertIsInstance(timings[key], float)

    def test_modelDefaultsToServerModel(self) -> None:
        body = chat()
        del body["model"]
        _, result = self.fetchJSON("POST", "/v1/chat/completions", body)
        self.assertEqual(result["model"], "demo")

    def test_deterministic(self) -> None:
        """
        The same request gives the same text; another prompt another text.
        """
        first = self.fetchJSON("POST", "/v1/chat/completions", chat())[1]
        second = self.fetchJSON("POST", "/v1/chat/completions", chat())[1]
        other = self.fetchJSON("POST", "/v1/chat/completions", chat("something else"))[1]
        content = first["choices"][0]["message"]["content"]
        self.assertEqual(content, second["choices"][0]["message"]["content"])
        self.assertNotEqual(content, other["choices"][0]["message"]["content"])
        self.assertNotEqual(first["id"], second["id"])

    def test_maxTokens(self) -> None:
        """
        A smaller C{max_tokens} or C{max_completion_tokens} cuts the
        completion short (C{finish_reason} length) and the usage says so; a
        larger one changes nothing.
        """
        full = self.fetchJSON("POST", "/v1/chat/completions", chat())[1]
        fullText = full["choices"][0]["message"]["content"]
        for key in ("max_tokens", "max_completion_tokens"):
            _, body = self.fetchJSON("POST", "/v1/chat/completions", chat(**{key: 3}))
            content = body["choices"][0]["message"]["content"]
            self.assertEqual(len(content.split()), 3)
            self.assertTrue(fullText.startswith(content))
            self.assertEqual(body["choices"][0]["finish_reason"], "length")
            self.assertEqual(body["usage"]["completion_tokens"], 3)
            self.assertEqual(body["usage"]["total_tokens"], 3 + 4)
        _, body = self.fetchJSON("POST", "/v1/chat/completions", chat(max_tokens=500))
        self.assertEqual(body["choices"][0]["message"]["content"], fullText)
        self.assertEqual(body["choices"][0]["finish_reason"], "stop")

    def test_tokensSetting(self) -> None:
        self.makeServer(tokens=5)
        _, body = self.fetchJSON("POST", "/v1/chat/completions", chat())
        self.assertEqual(body["usage"]["completion_tokens"], 5)
        self.assertEqual(len(body["choices"][0]["message"]["content"].split()), 5)

    def test_contentParts(self) -> None:
        """
        Content given as a list of parts counts its text parts.
        """
        body = {"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [
                {"type": "text", "text": "one two"},
                {"type": "image_url", "image_url": {"url": "data:,"}},
            ]},
        ]}
        _, result = self.fetchJSON("POST", "/v1/chat/completions", body)
        self.assertEqual(result["usage"]["prompt_tokens"], 4)

    def test_nonStreamedWaitsForTokens(self) -> None:
        """
        With a token delay, a non-streamed answer comes after every token's
        delay has passed, and its timings say so.
        """
        self.makeServer(tokens=4, tokenDelay=0.5)
        d = self.stub.post(BASE + "/v1/chat/completions", json=chat())
        self.stub.flush()
        self.clock.advance(1.9)
        self.stub.flush()
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.stub.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(self.stub.json_content(response))
        self.assertEqual(body["timings"]["predicted_ms"], 2000.0)
        self.assertEqual(body["timings"]["predicted_per_second"], 2.0)

    def test_badJSON(self) -> None:
        response, body = self.fetchJSON("POST", "/v1/chat/completions", raw=b"{nope")
        self.assertJSONResponse(response, 400)
        self.assertEqual(body["error"]["type"], "invalid_request_error")
        self.assertIn("Invalid JSON", body["error"]["message"])

    def test_notAnObject(self) -> None:
        response, body = self.fetchJSON("POST", "/v1/chat/completions", [1, 2])
        self.assertJSONResponse(response, 400)
        self.assertEqual(body["error"]["type"], "invalid_request_error")

    def test_missingMessages(self) -> None:
        response, body = self.fetchJSON("POST", "/v1/chat/completions", {"model": "x"})
        self.assertJSONResponse(response, 400)
        self.assertEqual(body["error"]["type"], "invalid_request_error")
        self.assertEqual(body["error"]["param"], "messages")

    def test_badMaxTokens(self) -> None:
        response, body = self.fetchJSON("POST", "/v1/chat/completions", chat(max_tokens="3"))
        self.assertJSONResponse(response, 400)
        self.assertEqual(body["error"]["param"], "max_tokens")


class ChatStreamTests(DemoTestCase):
    def stream(self, body: dict[str, Any]) -> list[tuple[str | None, Any]]:
        response, raw = self.fetch("POST", "/v1/chat/completions", body)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"),
                         ["text/event-stream; charset=utf-8"])
        self.assertIdentity(response)
        return parseSSE(raw)

    def test_events(self) -> None:
        """
        One chunk per token, the first carrying the role; a final chunk with
        the finish reason and timings; then C{[DONE]}.  No usage chunk unless
        asked for.
        """
        events = self.stream(chat(stream=True))
        self.assertEqual(events[-1], (None, "[DONE]"))
        chunks = [data for _, data in events[:-1]]
        self.assertEqual(len(chunks), 16 + 1)
        for chunk in chunks:
            self.assertEqual(chunk["object"], "chat.completion.chunk")
            self.assertEqual(chunk["model"], "client-model")
            self.assertNotIn("usage", chunk)
            self.assertEqual(chunk["id"], chunks[0]["id"])
        self.assertEqual(chunks[0]["choices"][0]["delta"]["role"], "assistant")
        for chunk in chunks[1:]:
            self.assertNotIn("role", chunk["choices"][0]["delta"])
        tokens = [c["choices"][0]["delta"]["content"] for c in chunks[:-1]]
        self.assertTrue(all(t.endswith(" ") and t.count(" ") == 1 for t in tokens))
        for chunk in chunks[:-1]:
            self.assertIsNone(chunk["choices"][0]["finish_reason"])
        final = chunks[-1]
        self.assertEqual(final["choices"][0]["delta"], {})
        self.assertEqual(final["choices"][0]["finish_reason"], "stop")
        self.assertEqual(final["timings"]["predicted_n"], 16)
        self.assertEqual(final["timings"]["prompt_n"], 4)

        # Same tokens as the non-streamed answer.
        _, whole = self.fetchJSON("POST", "/v1/chat/completions", chat())
        self.assertEqual("".join(tokens), whole["choices"][0]["message"]["content"])

    def test_includeUsage(self) -> None:
        """
        With C{stream_options.include_usage}, a usage chunk with no choices
        comes just before C{[DONE]} and the others carry C{"usage": null}.
        """
        events = self.stream(chat(stream=True, max_tokens=3,
                                  stream_options={"include_usage": True}))
        self.assertEqual(events[-1], (None, "[DONE]"))
        usageChunk = events[-2][1]
        self.assertEqual(usageChunk["choices"], [])
        self.assertEqual(usageChunk["usage"], {
            "prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7})
        others = [data for _, data in events[:-2]]
        self.assertEqual(len(others), 3 + 1)
        for chunk in others:
            self.assertIsNone(chunk["usage"])
        self.assertEqual(others[-1]["choices"][0]["finish_reason"], "length")
        self.assertIn("timings", others[-1])

    def test_zeroTokens(self) -> None:
        events = self.stream(chat(stream=True, max_tokens=0))
        chunks = [data for _, data in events[:-1]]
        self.assertEqual(chunks[0]["choices"][0]["delta"], {"role": "assistant", "content": ""})
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "length")
        self.assertEqual(events[-1], (None, "[DONE]"))

    def test_oneEventPerStep(self) -> None:
        """
        With a token delay, each clock step makes exactly one more event
        reach the client, before the response finishes.
        """
        self.makeServer(tokens=3, tokenDelay=1.0)
        response = self.request("POST", "/v1/chat/completions", chat(stream=True),
                                unbuffered=True)
        self.assertEqual(response.code, 200)
        received: list[bytes] = []
        done = self.stub.collect(response, received.append)
        self.stub.flush()

        def seen() -> list[Any]:
            return [data for _, data in parseSSE(b"".join(received))]

        self.assertEqual(len(seen()), 1)
        self.assertEqual(seen()[0]["choices"][0]["delta"]["role"], "assistant")
        for expected in (2, 3):
            self.clock.advance(0.5)
            self.stub.flush()
            self.assertEqual(len(seen()), expected - 1)
            self.clock.advance(0.5)
            self.stub.flush()
            self.assertEqual(len(seen()), expected)
            self.assertNoResult(done)
        # The final chunk comes one more delay later, with [DONE].
        self.clock.advance(1.0)
        self.stub.flush()
        self.successResultOf(done)
        events = seen()
        self.assertEqual(events[-1], "[DONE]")
        self.assertEqual(events[-2]["choices"][0]["finish_reason"], "stop")
        self.assertEqual(events[-2]["timings"]["predicted_ms"], 3000.0)

    def test_disconnectStopsTimer(self) -> None:
        """
        When the client goes away mid-stream, the token timer is cancelled
        and nothing more is written.
        """
        self.makeServer(tokens=10, tokenDelay=1.0)
        response = self.request("POST", "/v1/chat/completions", chat(stream=True),
                                unbuffered=True)
        received: list[bytes] = []

        def collector(data: bytes) -> None:
            received.append(data)
            if len(received) == 2:
                raise ConnectionAbortedError("client gives up")

        with capturedLogs() as events:
            done = self.stub.collect(response, collector)
            self.stub.flush()
            self.clock.advance(1.0)
            self.stub.flush()
        self.failureResultOf(done, ConnectionAbortedError)
        self.assertEqual(len(received), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(any(e.get("note") == " (client disconnected)" for e in events))
        self.assertEqual(self.flushLoggedErrors(), [])


class CompletionTests(DemoTestCase):
    def test_shape(self) -> None:
        response, body = self.fetchJSON(
            "POST", "/v1/completions", {"model": "m", "prompt": "once upon a time", "max_tokens": 5})
        self.assertJSONResponse(response, 200)
        self.assertEqual(body["object"], "text_completion")
        self.assertEqual(body["model"], "m")
        [choice] = body["choices"]
        self.assertEqual(len(choice["text"].split()), 5)
        self.assertEqual(choice["finish_reason"], "length")
        self.assertEqual(body["usage"], {"prompt_tokens": 4, "completion_tokens": 5,
                                         "total_tokens": 9})
        self.assertIn("timings", body)

    def test_listPrompt(self) -> None:
        _, body = self.fetchJSON("POST", "/v1/completions", {"prompt": ["a b", "c"]})
        self.assertEqual([c["index"] for c in body["choices"]], [0, 1])
        self.assertEqual(body["usage"]["prompt_tokens"], 3)
        self.assertEqual(body["usage"]["completion_tokens"], 32)
        self.assertEqual(body["choices"][0]["text"],
                         self.fetchJSON("POST", "/v1/completions", {"prompt": "a b"})[1]
                         ["choices"][0]["text"])

    def test_stream(self) -> None:
        response, raw = self.fetch("POST", "/v1/completions",
                                   {"prompt": "hi", "stream": True, "max_tokens": 4,
                                    "stream_options": {"include_usage": True}})
        events = [data for _, data in parseSSE(raw)]
        self.assertEqual(events[-1], "[DONE]")
        self.assertEqual(events[-2]["usage"]["completion_tokens"], 4)
        tokens = [e["choices"][0]["text"] for e in events[:4]]
        final = events[4]
        self.assertEqual(final["choices"][0]["finish_reason"], "length")
        _, whole = self.fetchJSON("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 4})
        self.assertEqual("".join(tokens), whole["choices"][0]["text"])

    def test_missingPrompt(self) -> None:
        response, body = self.fetchJSON("POST", "/v1/completions", {"model": "m"})
        self.assertJSONResponse(response, 400)
        self.assertEqual(body["error"]["param"], "prompt")


class EmbeddingTests(DemoTestCase):
    def test_vectors(self) -> None:
        response, body = self.fetchJSON("POST", "/v1/embeddings",
                                        {"model": "e", "input": ["hello world", "bye"]})
        self.assertJSONResponse(response, 200)
        self.assertEqual(body["object"], "list")
        self.assertEqual(body["model"], "e")
        self.assertEqual([d["index"] for d in body["data"]], [0, 1])
        for item in body["data"]:
            self.assertEqual(item["object"], "embedding")
            self.assertEqual(len(item["embedding"]), text.EMBEDDING_DIMENSION)
            self.assertAlmostEqual(sum(x * x for x in item["embedding"]), 1.0, places=5)
        self.assertNotEqual(body["data"][0]["embedding"], body["data"][1]["embedding"])
        self.assertEqual(body["usage"], {"prompt_tokens": 3, "total_tokens": 3})
        _, again = self.fetchJSON("POST", "/v1/embeddings", {"input": "hello world"})
        self.assertEqual(again["data"][0]["embedding"], body["data"][0]["embedding"])

    def test_base64(self) -> None:
        _, floats = self.fetchJSON("POST", "/v1/embeddings", {"input": "x"})
        _, b64 = self.fetchJSON("POST", "/v1/embeddings",
                                {"input": "x", "encoding_format": "base64"})
        decoded = struct.unpack("<8f", base64.b64decode(b64["data"][0]["embedding"]))
        self.assertEqual(list(decoded), floats["data"][0]["embedding"])

    def test_missingInput(self) -> None:
        response, body = self.fetchJSON("POST", "/v1/embeddings", {})
        self.assertJSONResponse(response, 400)
        self.assertEqual(body["error"]["param"], "input")


class ResponsesTests(DemoTestCase):
    def test_shape(self) -> None:
        response, body = self.fetchJSON("POST", "/v1/responses",
                                        {"model": "r", "input": "say something nice",
                                         "max_output_tokens": 6})
        self.assertJSONResponse(response, 200)
        self.assertEqual(body["object"], "response")
        self.assertEqual(body["status"], "completed")
        self.assertEqual(body["model"], "r")
        [message] = body["output"]
        self.assertEqual((message["type"], message["status"], message["role"]),
                         ("message", "completed", "assistant"))
        [part] = message["content"]
        self.assertEqual(part["type"], "output_text")
        self.assertEqual(part["annotations"], [])
        self.assertEqual(len(part["text"].split()), 6)
        self.assertEqual(body["usage"]["input_tokens"], 3)
        self.assertEqual(body["usage"]["output_tokens"], 6)
        self.assertEqual(body["usage"]["total_tokens"], 9)

    def test_messageInput(self) -> None:
        _, body = self.fetchJSON("POST", "/v1/responses", {
            "instructions": "be nice",
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi there"}]}]})
        self.assertEqual(body["usage"]["input_tokens"], 4)

    def test_stream(self) -> None:
        response, raw = self.fetch("POST", "/v1/responses",
                                   {"input": "hello", "stream": True, "max_output_tokens": 3})
        self.assertEqual(response.code, 200)
        events = parseSSE(raw)
        kinds = [name for name, _ in events]
        self.assertEqual(kinds, [
            "response.created", "response.in_progress", "response.output_item.added",
            "response.content_part.added"] + ["response.output_text.delta"] * 3 + [
            "response.output_text.done", "response.content_part.done",
            "response.output_item.done", "response.completed"])
        for i, (name, data) in enumerate(events):
            self.assertEqual(data["type"], name)
            self.assertEqual(data["sequence_number"], i)
        deltas = "".join(d["delta"] for n, d in events if n == "response.output_text.delta")
        self.assertEqual(events[7][1]["text"], deltas)
        completed = events[-1][1]["response"]
        self.assertEqual(completed["status"], "completed")
        self.assertEqual(completed["output"][0]["content"][0]["text"], deltas)
        self.assertEqual(completed["usage"]["output_tokens"], 3)
        _, whole = self.fetchJSON("POST", "/v1/responses", {"input": "hello",
                                                            "max_output_tokens": 3})
        self.assertEqual(whole["output"][0]["content"][0]["text"], deltas)

    def test_missingInput(self) -> None:
        response, body = self.fetchJSON("POST", "/v1/responses", {"model": "r"})
        self.assertJSONResponse(response, 400)
        self.assertEqual(body["error"]["param"], "input")


class MessagesTests(DemoTestCase):
    def body(self, **extra: Any) -> dict[str, Any]:
        return {"model": "claude-demo", "max_tokens": 1024, "system": "you are terse",
                "messages": [{"role": "user", "content": "hello there"}], **extra}

    def test_shape(self) -> None:
        response, body = self.fetchJSON("POST", "/v1/messages", self.body())
        self.assertJSONResponse(response, 200)
        self.assertTrue(body["id"].startswith("msg_"))
        self.assertEqual((body["type"], body["role"], body["model"]),
                         ("message", "assistant", "claude-demo"))
        [block] = body["content"]
        self.assertEqual(block["type"], "text")
        self.assertEqual(len(block["text"].split()), 16)
        self.assertEqual(body["stop_reason"], "end_turn")
        self.assertIsNone(body["stop_sequence"])
        self.assertEqual(body["usage"], {"input_tokens": 5, "output_tokens": 16})

    def test_maxTokens(self) -> None:
        _, body = self.fetchJSON("POST", "/v1/messages", self.body(max_tokens=2))
        self.assertEqual(body["stop_reason"], "max_tokens")
        self.assertEqual(body["usage"]["output_tokens"], 2)

    def test_stream(self) -> None:
        response, raw = self.fetch("POST", "/v1/messages", self.body(stream=True, max_tokens=3))
        self.assertEqual(response.headers.getRawHeaders("content-type"),
                         ["text/event-stream; charset=utf-8"])
        events = parseSSE(raw)
        self.assertEqual([n for n, _ in events], [
            "message_start", "content_block_start"] + ["content_block_delta"] * 3 + [
            "content_block_stop", "message_delta", "message_stop"])
        for name, data in events:
            self.assertEqual(data["type"], name)
        start = events[0][1]["message"]
        self.assertEqual(start["usage"]["input_tokens"], 5)
        self.assertEqual(start["content"], [])
        deltas = [d["delta"] for n, d in events if n == "content_block_delta"]
        self.assertTrue(all(d["type"] == "text_delta" for d in deltas))
        delta = events[-2][1]
        self.assertEqual(delta["delta"]["stop_reason"], "max_tokens")
        self.assertEqual(delta["usage"]["output_tokens"], 3)
        _, whole = self.fetchJSON("POST", "/v1/messages", self.body(max_tokens=3))
        self.assertEqual("".join(d["text"] for d in deltas), whole["content"][0]["text"])

    def test_countTokens(self) -> None:
        response, body = self.fetchJSON("POST", "/v1/messages/count_tokens", self.body())
        self.assertJSONResponse(response, 200)
        self.assertEqual(body, {"input_tokens": 5})

    def test_errorShape(self) -> None:
        """
        Errors on the Anthropic routes use Anthropic's error envelope.
        """
        response, body = self.fetchJSON("POST", "/v1/messages", {"model": "x"})
        self.assertJSONResponse(response, 400)
        self.assertEqual(body["type"], "error")
        self.assertEqual(body["error"]["type"], "invalid_request_error")
        self.assertIn("messages", body["error"]["message"])


class DebugTests(DemoTestCase):
    def test_echo(self) -> None:
        response, body = self.fetchJSON(
            "PUT", "/debug/echo/some/where?a=1&b=two", raw=b"payload \xc3\xa9",
            headers={"X-Custom": "Yes", "Content-Type": "text/plain"})
        self.assertJSONResponse(response, 200)
        self.assertEqual(body["method"], "PUT")
        self.assertEqual(body["path"], "/debug/echo/some/where")
        self.assertEqual(body["query"], "a=1&b=two")
        self.assertEqual(body["headers"]["x-custom"], "Yes")
        self.assertEqual(body["headers"]["content-type"], "text/plain")
        self.assertEqual(body["body"], "payload \u00e9")

    def test_echoRoot(self) -> None:
        for path in ("/debug/echo", "/debug/echo/"):
            _, body = self.fetchJSON("GET", path)
            self.assertEqual((body["method"], body["path"], body["query"], body["body"]),
                             ("GET", path, "", ""))

    def test_stream(self) -> None:
        response, raw = self.fetch("POST", "/debug/stream?n=3&size=5")
        self.assertEqual(response.code, 200)
        self.assertEqual(raw, b"".join(
            b'data: {"i": %d, "pad": "xxxxx"}\n\n' % (i,) for i in range(3)) + b"data: [DONE]\n\n")

    def test_streamPaced(self) -> None:
        response = self.request("POST", "/debug/stream?n=3&delay=2", unbuffered=True)
        received: list[bytes] = []
        done = self.stub.collect(response, received.append)
        self.stub.flush()
        self.assertEqual(len(parseSSE(b"".join(received))), 1)
        self.clock.advance(2)
        self.stub.flush()
        self.assertEqual(len(parseSSE(b"".join(received))), 2)
        self.clock.advance(2)
        self.stub.flush()
        self.successResultOf(done)
        self.assertEqual(parseSSE(b"".join(received))[-1], (None, "[DONE]"))

    def test_streamBadParameter(self) -> None:
        response, body = self.fetchJSON("POST", "/debug/stream?n=lots")
        self.assertJSONResponse(response, 400)
        self.assertEqual(body["error"]["param"], "n")

    def test_slow(self) -> None:
        d = self.stub.get(BASE + "/debug/slow?seconds=3")
        self.stub.flush()
        self.clock.advance(2.9)
        self.stub.flush()
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.stub.flush()
        response = self.successResultOf(d)
        self.assertJSONResponse(response, 200)
        self.assertEqual(self.successResultOf(self.stub.json_content(response)), {"slept": 3.0})


class ErrorTests(DemoTestCase):
    def test_notFound(self) -> None:
        for path in ("/nope", "/v1/chat/completions/extra", "/v1"):
            response, body = self.fetchJSON("GET", path)
            self.assertJSONResponse(response, 404)
            self.assertEqual(body, {"error": {"message": f"Not found: {path}",
                                              "type": "not_found"}})

    def test_methodNotAllowed(self) -> None:
        response, body = self.fetchJSON("GET", "/v1/chat/completions")
        self.assertJSONResponse(response, 405)
        self.assertEqual(response.headers.getRawHeaders("allow"), ["POST"])
        self.assertEqual(body["error"]["type"], "method_not_allowed")

    def test_unexpectedError(self) -> None:
        """
        An unexpected exception is logged and answered with a JSON 500.
        """
        def broken(*args: Any) -> Any:
            raise ZeroDivisionError("oops")

        self.patch(serverModule, "generate", broken)
        response, body = self.fetchJSON("POST", "/v1/chat/completions", chat())
        self.assertJSONResponse(response, 500)
        self.assertEqual(body["error"]["type"], "server_error")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_logsEachRequest(self) -> None:
        with capturedLogs() as events:
            self.fetch("GET", "/health")
        [event] = [e for e in events if e.get("path") == "/health"]
        self.assertEqual((event["method"], event["code"]), ("GET", 200))


def encodeForm(parts: list[tuple], boundary: bytes = b"demoBoundary42") -> tuple[bytes, str]:
    """
    Encode a multipart form: C{(name, value)} fields and C{(name, value,
    filename)} files.

    @return: the body and its C{Content-Type}.
    """
    out = []
    for part in parts:
        out.append(b"--" + boundary + b"\r\n")
        disposition = b'Content-Disposition: form-data; name="' + part[0] + b'"'
        if len(part) > 2:
            out.append(disposition + b'; filename="' + part[2] + b'"\r\n'
                       + b"Content-Type: application/octet-stream\r\n\r\n")
        else:
            out.append(disposition + b"\r\n\r\n")
        out.append(part[1] + b"\r\n")
    out.append(b"--" + boundary + b"--\r\n")
    return b"".join(out), "multipart/form-data; boundary=" + boundary.decode()


def audioBytes(size: int) -> bytes:
    return bytes((i * 7 + i // 251) % 256 for i in range(size))


class RouteTestCase(DemoTestCase):
    def assertTagged(self, response: Any, route: str, model: str) -> None:
        """
        The response names the route that answered and the model received.
        """
        self.assertIdentity(response)
        self.assertEqual(response.headers.getRawHeaders("x-demo-route"), [route])
        self.assertEqual(response.headers.getRawHeaders("x-demo-request-model"), [model])

    def postForm(self, path: str, parts: list[tuple]) -> tuple[Any, bytes]:
        body, contentType = encodeForm(parts)
        return self.fetch("POST", path, raw=body, headers={"Content-Type": contentType})

    def assertPNG(self, b64: str) -> None:
        png = base64.b64decode(b64)
        self.assertTrue(png.startswith(b"\x89PNG\r\n\x1a\n"))
        self.assertTrue(png.endswith(b"IEND\xaeB`\x82"))


class SpeechTests(RouteTestCase):
    def test_mp3(self) -> None:
        response, body = self.fetch("POST", "/v1/audio/speech",
                                    {"model": "tts-up", "input": "hello there", "voice": "nova"})
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["audio/mpeg"])
        self.assertTagged(response, "/v1/audio/speech", "tts-up")
        self.assertTrue(body.startswith(b"ID3"))
        self.assertIn(b"/v1/audio/speech model=tts-up voice=nova", body)
        self.assertIn(b"hello there", body)

    def test_formats(self) -> None:
        for fmt, contentType in (("wav", "audio/wav"), ("opus", "audio/opus"),
                                 ("flac", "audio/flac")):
            response, _ = self.fetch("POST", "/v1/audio/speech",
                                     {"input": "x", "response_format": fmt})
            self.assertEqual(response.headers.getRawHeaders("content-type"), [contentType])

    def test_errors(self) -> None:
        response, body = self.fetchJSON("POST", "/v1/audio/speech", {"model": "m"})
        self.assertJSONResponse(response, 400)
        self.assertEqual(body["error"]["param"], "input")
        response, body = self.fetchJSON("POST", "/v1/audio/speech",
                                        {"input": "x", "response_format": "midi"})
        self.assertEqual(body["error"]["param"], "response_format")


class VoicesTests(RouteTestCase):
    def test_get(self) -> None:
        """
        Item 35's upstream: C{GET /v1/audio/voices?model=tts}.
        """
        response, body = self.fetchJSON("GET", "/v1/audio/voices?model=tts")
        self.assertJSONResponse(response, 200)
        self.assertTagged(response, "/v1/audio/voices", "tts")
        self.assertEqual(body["model"], "tts")
        self.assertEqual(body["route"], "/v1/audio/voices")
        self.assertIn("alloy", body["voices"])

    def test_post(self) -> None:
        response, body = self.fetchJSON("POST", "/v1/audio/voices", {"model": "tts2"})
        self.assertTagged(response, "/v1/audio/voices", "tts2")
        self.assertEqual(body["model"], "tts2")

    def test_noModel(self) -> None:
        _, body = self.fetchJSON("GET", "/v1/audio/voices")
        self.assertEqual(body["model"], "demo")


class TranscriptionTests(RouteTestCase):
    def test_fileArrives(self) -> None:
        """
        Item 34's upstream: the answer carries the file's size and hash, so
        a test can check it arrived byte for byte.
        """
        audio = audioBytes(300_000)
        response, raw = self.postForm("/v1/audio/transcriptions", [
            (b"file", audio, b"speech.wav"),
            (b"model", b"whisper-1"),
            (b"language", b"en"),
        ])
        self.assertEqual(response.code, 200)
        self.assertTagged(response, "/v1/audio/transcriptions", "whisper-1")
        body = json.loads(raw)
        self.assertEqual(body["model"], "whisper-1")
        self.assertEqual(body["route"], "/v1/audio/transcriptions")
        self.assertEqual(body["file_bytes"], len(audio))
        self.assertEqual(body["file_sha256"], hashlib.sha256(audio).hexdigest())
        self.assertEqual(body["filename"], "speech.wav")
        self.assertEqual(body["fields"], {"model": "whisper-1", "language": "en"})
        self.assertTrue(body["text"])
        for word in body["text"].split():
            self.assertIn(word, text.WORDS)

    def test_deterministicPerFile(self) -> None:
        first = json.loads(self.postForm("/v1/audio/transcriptions",
                                         [(b"file", b"abc", b"a.wav")])[1])
        again = json.loads(self.postForm("/v1/audio/transcriptions",
                                         [(b"file", b"abc", b"b.wav")])[1])
        other = json.loads(self.postForm("/v1/audio/transcriptions",
                                         [(b"file", b"abd", b"a.wav")])[1])
        self.assertEqual(first["text"], again["text"])
        self.assertNotEqual(first["text"], other["text"])
        self.assertEqual(first["model"], "demo")

    def test_textFormat(self) -> None:
        response, raw = self.postForm("/v1/audio/transcriptions", [
            (b"file", b"abc", b"a.wav"), (b"model", b"w"), (b"response_format", b"text")])
        self.assertEqual(response.headers.getRawHeaders("content-type"),
                         ["text/plain; charset=utf-8"])
        self.assertTrue(raw.endswith(b"\n"))

    def test_verboseJSON(self) -> None:
        _, raw = self.postForm("/v1/audio/transcriptions", [
            (b"file", b"abc", b"a.wav"), (b"response_format", b"verbose_json")])
        body = json.loads(raw)
        self.assertEqual(body["task"], "transcribe")
        self.assertIn("segments", body)

    def test_stream(self) -> None:
        response, raw = self.postForm("/v1/audio/transcriptions", [
            (b"file", b"abc", b"a.wav"), (b"model", b"w"), (b"stream", b"true")])
        self.assertEqual(response.headers.getRawHeaders("content-type"),
                         ["text/event-stream; charset=utf-8"])
        events = [data for _, data in parseSSE(raw)]
        self.assertEqual(events[-1]["type"], "transcript.text.done")
        self.assertEqual("".join(e["delta"] for e in events[:-1]).strip(), events[-1]["text"])

    def test_errors(self) -> None:
        response, body = self.fetchJSON("POST", "/v1/audio/transcriptions",
                                        raw=b"x", headers={"Content-Type": "text/plain"})
        self.assertJSONResponse(response, 400)
        body_, contentType = encodeForm([(b"model", b"w")])
        response, body = self.fetchJSON("POST", "/v1/audio/transcriptions", raw=body_,
                                        headers={"Content-Type": contentType})
        self.assertJSONResponse(response, 400)
        self.assertEqual(body["error"]["param"], "file")
        response, body = self.fetchJSON("POST", "/v1/audio/transcriptions", raw=body_[:-30],
                                        headers={"Content-Type": contentType})
        self.assertJSONResponse(response, 400)
        self.assertIn("multipart", body["error"]["message"])


class ImageTests(RouteTestCase):
    def test_generations(self) -> None:
        response, body = self.fetchJSON("POST", "/v1/images/generations",
                                        {"model": "sd", "prompt": "a llama", "n": 2})
        self.assertJSONResponse(response, 200)
        self.assertTagged(response, "/v1/images/generations", "sd")
        self.assertEqual(body["model"], "sd")
        self.assertEqual(body["route"], "/v1/images/generations")
        self.assertIsInstance(body["created"], int)
        self.assertEqual(len(body["data"]), 2)
        for item in body["data"]:
            self.assertPNG(item["b64_json"])
            self.assertEqual(item["revised_prompt"], "a llama")
        self.assertNotEqual(body["data"][0]["b64_json"], body["data"][1]["b64_json"])

    def test_url(self) -> None:
        _, body = self.fetchJSON("POST", "/v1/images/generations",
                                 {"prompt": "x", "response_format": "url"})
        self.assertTrue(body["data"][0]["url"].startswith("data:image/png;base64,"))

    def test_generationErrors(self) -> None:
        for bad, param in (({}, "prompt"), ({"prompt": "x", "n": 0}, "n"),
                           ({"prompt": "x", "response_format": "gif"}, "response_format")):
            response, body = self.fetchJSON("POST", "/v1/images/generations", bad)
            self.assertJSONResponse(response, 400)
            self.assertEqual(body["error"]["param"], param)

    def test_edits(self) -> None:
        image = audioBytes(150_000)
        response, raw = self.postForm("/v1/images/edits", [
            (b"image", image, b"in.png"),
            (b"mask", b"MASK", b"mask.png"),
            (b"prompt", b"add a hat"),
            (b"model", b"sd-edit"),
        ])
        self.assertEqual(response.code, 200)
        self.assertTagged(response, "/v1/images/edits", "sd-edit")
        body = json.loads(raw)
        self.assertEqual(body["model"], "sd-edit")
        self.assertEqual(body["route"], "/v1/images/edits")
        self.assertEqual(body["file_bytes"], len(image))
        self.assertEqual(body["file_sha256"], hashlib.sha256(image).hexdigest())
        self.assertEqual([f["field"] for f in body["files"]], ["image", "mask"])
        self.assertEqual(body["files"][1]["bytes"], 4)
        self.assertPNG(body["data"][0]["b64_json"])

    def test_editsArrayField(self) -> None:
        _, raw = self.postForm("/v1/images/edits", [(b"image[]", b"abc", b"a.png"),
                                                    (b"prompt", b"p")])
        self.assertEqual(json.loads(raw)["file_bytes"], 3)

    def test_editErrors(self) -> None:
        response, raw = self.postForm("/v1/images/edits", [(b"prompt", b"p")])
        self.assertEqual(response.code, 400)
        self.assertEqual(json.loads(raw)["error"]["param"], "image")
        response, raw = self.postForm("/v1/images/edits", [(b"image", b"a", b"a.png")])
        self.assertEqual(json.loads(raw)["error"]["param"], "prompt")


class RerankTests(RouteTestCase):
    ROUTES = ("/v1/rerank", "/rerank", "/reranking", "/v1/reranking")

    def test_shape(self) -> None:
        documents = ["llamas are camelids", "the weather is nice", "alpacas too"]
        for route in self.ROUTES:
            response, body = self.fetchJSON("POST", route, {
                "model": "reranker", "query": "what is a llama", "documents": documents})
            self.assertJSONResponse(response, 200)
            self.assertTagged(response, route, "reranker")
            self.assertEqual(body["route"], route)
            self.assertEqual(body["model"], "reranker")
            results = body["results"]
            self.assertEqual(sorted(r["index"] for r in results), [0, 1, 2])
            scores = [r["relevance_score"] for r in results]
            self.assertEqual(scores, sorted(scores, reverse=True))
            for score in scores:
                self.assertTrue(0.0 <= score <= 1.0)
            self.assertEqual(body["usage"]["prompt_tokens"], body["usage"]["total_tokens"])

    def test_topNAndDocuments(self) -> None:
        _, body = self.fetchJSON("POST", "/v1/rerank", {
            "query": "q", "documents": ["a", {"text": "b"}, "c"], "top_n": 2,
            "return_documents": True})
        self.assertEqual(len(body["results"]), 2)
        for result in body["results"]:
            self.assertEqual(result["document"]["text"], ["a", "b", "c"][result["index"]])

    def test_errors(self) -> None:
        for bad, param in (({"documents": ["a"]}, "query"),
                           ({"query": "q"}, "documents"),
                           ({"query": "q", "documents": []}, "documents"),
                           ({"query": "q", "documents": [1]}, "documents"),
                           ({"query": "q", "documents": ["a"], "top_n": -1}, "top_n")):
            response, body = self.fetchJSON("POST", "/rerank", bad)
            self.assertJSONResponse(response, 400)
            self.assertEqual(body["error"]["param"], param)


class NativeCompletionTests(RouteTestCase):
    def test_completion(self) -> None:
        response, body = self.fetchJSON("POST", "/completion",
                                        {"model": "llama", "prompt": "once upon a time"})
        self.assertJSONResponse(response, 200)
        self.assertTagged(response, "/completion", "llama")
        self.assertEqual(body["route"], "/completion")
        self.assertEqual(body["model"], "llama")
        self.assertTrue(body["stop"])
        self.assertEqual(body["stop_type"], "eos")
        self.assertEqual(body["tokens_predicted"], 16)
        self.assertEqual(body["tokens_evaluated"], 4)
        self.assertEqual(len(body["content"].split()), 16)
        self.assertEqual((body["timings"]["prompt_n"], body["timings"]["predicted_n"]), (4, 16))

    def test_nPredict(self) -> None:
        _, body = self.fetchJSON("POST", "/completion", {"prompt": "x", "n_predict": 3})
        self.assertEqual(body["tokens_predicted"], 3)
        self.assertEqual(body["stop_type"], "limit")
        _, body = self.fetchJSON("POST", "/completion", {"prompt": "x", "n_predict": -1})
        self.assertEqual(body["tokens_predicted"], 16)

    def test_severalPrompts(self) -> None:
        _, body = self.fetchJSON("POST", "/completion", {"prompt": ["a", "b"]})
        self.assertEqual([r["index"] for r in body], [0, 1])

    def test_stream(self) -> None:
        """
        llama-server's native stream: one C{data:} event per token, then a
        final one with C{stop} and C{timings}; no C{[DONE]}.
        """
        response, raw = self.fetch("POST", "/completion",
                                   {"model": "llama", "prompt": "x", "stream": True,
                                    "n_predict": 4})
        self.assertTagged(response, "/completion", "llama")
        events = [data for _, data in parseSSE(raw)]
        self.assertEqual(len(events), 5)
        self.assertEqual([e["stop"] for e in events], [False] * 4 + [True])
        self.assertEqual(events[-1]["timings"]["predicted_n"], 4)
        self.assertEqual(events[-1]["content"], "")
        self.assertNotIn("[DONE]", events)

    def test_infill(self) -> None:
        response, body = self.fetchJSON("POST", "/infill", {
            "model": "coder", "input_prefix": "def f(", "input_suffix": "):\n    pass"})
        self.assertJSONResponse(response, 200)
        self.assertTagged(response, "/infill", "coder")
        self.assertEqual(body["route"], "/infill")
        self.assertIn("timings", body)
        self.assertIn("<FIM>", body["prompt"])

    def test_errors(self) -> None:
        response, body = self.fetchJSON("POST", "/completion", {"model": "m"})
        self.assertEqual(body["error"]["param"], "prompt")
        response, body = self.fetchJSON("POST", "/infill", {"model": "m"})
        self.assertJSONResponse(response, 400)
        response, body = self.fetchJSON("POST", "/infill", {"input_prefix": 1})
        self.assertEqual(body["error"]["param"], "input_prefix")


class SDAPITests(RouteTestCase):
    def test_txt2img(self) -> None:
        request = {"model": "sd15", "prompt": "a llama", "batch_size": 2, "steps": 4}
        response, body = self.fetchJSON("POST", "/sdapi/v1/txt2img", request)
        self.assertJSONResponse(response, 200)
        self.assertTagged(response, "/sdapi/v1/txt2img", "sd15")
        self.assertEqual(len(body["images"]), 2)
        for image in body["images"]:
            self.assertPNG(image)
        self.assertEqual(body["parameters"], request)
        info = json.loads(body["info"])
        self.assertEqual((info["model"], info["route"]), ("sd15", "/sdapi/v1/txt2img"))

    def test_img2img(self) -> None:
        init = audioBytes(5000)
        response, body = self.fetchJSON("POST", "/sdapi/v1/img2img", {
            "model": "sd15", "prompt": "p",
            "init_images": [base64.b64encode(init).decode()]})
        self.assertJSONResponse(response, 200)
        self.assertTagged(response, "/sdapi/v1/img2img", "sd15")
        info = json.loads(body["info"])
        self.assertEqual(info["init_image_bytes"], len(init))
        self.assertEqual(info["init_image_sha256"], hashlib.sha256(init).hexdigest())
        self.assertPNG(body["images"][0])

    def test_img2imgErrors(self) -> None:
        for bad in ({}, {"init_images": []}, {"init_images": ["***"]}):
            response, body = self.fetchJSON("POST", "/sdapi/v1/img2img", bad)
            self.assertJSONResponse(response, 400)
            self.assertEqual(body["error"]["param"], "init_images")

    def test_loras(self) -> None:
        response, body = self.fetchJSON("GET", "/sdapi/v1/loras?model=sdxl")
        self.assertJSONResponse(response, 200)
        self.assertTagged(response, "/sdapi/v1/loras", "sdxl")
        self.assertTrue(body)
        for lora in body:
            self.assertTrue(lora["path"].startswith("/loras/sdxl/"))


class UnversionedTests(RouteTestCase):
    """
    The paths llama-swap's C{/v/...} routes forward to (C{/v} dropped) and
    llama-server's unversioned aliases all answer.
    """

    def test_aliases(self) -> None:
        cases = [
            ("/chat/completions", chat()),
            ("/completions", {"prompt": "x"}),
            ("/embeddings", {"input": "x"}),
            ("/responses", {"input": "x"}),
            ("/messages", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 4}),
            ("/messages/count_tokens", {"messages": [{"role": "user", "content": "x"}]}),
            ("/rerank", {"query": "q", "documents": ["a"]}),
            ("/reranking", {"query": "q", "documents": ["a"]}),
        ]
        for path, body in cases:
            response, _ = self.fetchJSON("POST", path, body)
            self.assertJSONResponse(response, 200)
        response, _ = self.fetchJSON("GET", "/models")
        self.assertJSONResponse(response, 200)

    def test_anthropicErrorShape(self) -> None:
        response, body = self.fetchJSON("POST", "/messages", {"model": "x"})
        self.assertJSONResponse(response, 400)
        self.assertEqual(body["type"], "error")


class TextTests(SynchronousTestCase):
    def test_countTokens(self) -> None:
        self.assertEqual(text.countTokens(""), 1)
        self.assertEqual(text.countTokens("  a \n b\tc "), 3)

    def test_promptOfMessages(self) -> None:
        prompt = text.promptOfMessages(
            [{"role": "user", "content": [{"type": "text", "text": "a"},
                                          {"type": "tool_result", "content": "b"}]},
             {"role": "assistant", "content": None}],
            system=[{"type": "text", "text": "s"}])
        self.assertEqual(prompt, "s\na\nb")

    @settings(max_examples=50, deadline=None)
    @given(prompt=st.text(), natural=st.integers(0, 40),
           limit=st.none() | st.integers(0, 60))
    def test_generate(self, prompt: str, natural: int, limit: int | None) -> None:
        """
        A generation is a pure function of its inputs; it has
        C{min(natural, limit)} tokens, each a vocabulary word and a space, and
        is truncated exactly when the limit is below the natural length.
        """
        gen = text.generate(prompt, natural, limit)
        self.assertEqual(gen, text.generate(prompt, natural, limit))
        expected = natural if limit is None else min(natural, limit)
        self.assertEqual(gen.completionTokens, expected)
        self.assertEqual(gen.truncated, limit is not None and limit < natural)
        for token in gen.tokens:
            self.assertIn(token[:-1], text.WORDS)
            self.assertEqual(token[-1], " ")
        self.assertEqual(gen.promptTokens, max(1, len(prompt.split())))
        # A prefix of the unlimited completion.
        self.assertEqual(text.generate(prompt, natural, None).tokens[:expected], gen.tokens)


class OptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        options = Options()
        options.parseOptions(["--port", "0"])
        self.assertEqual(
            {k: options[k] for k in ("port", "host", "model", "startup-delay", "tokens",
                                     "token-delay", "exit-after", "fail-health")},
            {"port": 0, "host": "127.0.0.1", "model": "demo", "startup-delay": 0.0,
             "tokens": 16, "token-delay": 0.0, "exit-after": None, "fail-health": 0})

    def test_all(self) -> None:
        options = Options()
        options.parseOptions(["--port", "5800", "--host", "::1", "--model", "m",
                              "--startup-delay", "1.5", "--tokens", "3", "--token-delay",
                              "0.01", "--fail-health", "--exit-after", "2"])
        self.assertEqual((options["port"], options["host"], options["model"]),
                         (5800, "::1", "m"))
        self.assertEqual((options["startup-delay"], options["tokens"], options["token-delay"]),
                         (1.5, 3, 0.01))
        self.assertEqual((options["fail-health"], options["exit-after"]), (1, 2.0))

    def test_portRequired(self) -> None:
        self.assertRaises(usage.UsageError, Options().parseOptions, [])

    def test_rejectsNegative(self) -> None:
        for argv in (["--port", "-1"], ["--port", "0", "--tokens", "-2"],
                     ["--port", "0", "--token-delay", "-1"], ["--port", "70000"]):
            self.assertRaises(usage.UsageError, Options().parseOptions, argv)
