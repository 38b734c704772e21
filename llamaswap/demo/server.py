# -*- test-case-name: tests.test_demo -*-
"""
The demo upstream's HTTP resource: a small OpenAI- and Anthropic-compatible
"inference server" whose completions are deterministic functions of the
prompt (see L{llamaswap.demo.text}).

It stands in for llama-server in the bundled demo configuration, in the
integration tests and in the benchmarks.  Time comes from an injected clock,
so tests drive token delays and the start-up delay with a
L{twisted.internet.task.Clock}.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import uuid
from typing import Any, Sequence

import attr
from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from llamaswap.demo.media import (
    SPEECH_TYPES,
    Form,
    FormError,
    documentText,
    rankDocuments,
    readForm,
    speechAudio,
    tinyPNGBase64,
)
from llamaswap.demo.stream import SSE_DONE, EventStream, sseData, sseEvent
from llamaswap.demo.text import (
    Generation,
    countTokens,
    embed,
    embeddingBase64,
    generate,
    promptOfMessages,
)

#: Request bodies larger than this are refused with 413.
MAX_BODY = 16 * 1024 * 1024

#: Caps on C{/debug/stream} parameters, so a typo cannot exhaust memory.
MAX_STREAM_CHUNKS = 10_000_000
MAX_STREAM_PAD = 16 * 1024 * 1024

_HEALTH_PATHS = (b"/health", b"/v1/health")


@attr.s(frozen=True, auto_attribs=True)
class DemoSettings:
    """
    What the demo server pretends to be.

    @ivar model: The model name reported by C{/v1/models}, in the
        C{X-Demo-Model} header, and in responses whose request names none.
    @ivar tokens: How many tokens a completion has unless the request asks
        for fewer.
    @ivar tokenDelay: Seconds each token takes; streamed events are this far
        apart.
    @ivar startupDelay: Seconds after start during which the server is
        "loading" (503 everywhere).
    @ivar failHealth: Make C{/health} always answer 500.
    """

    model: str = "demo"
    tokens: int = 16
    tokenDelay: float = 0.0
    startupDelay: float = 0.0
    failHealth: bool = False


class DemoError(Exception):
    """
    An expected failure, answered as a JSON error with an HTTP status.

    @ivar code: The HTTP status.
    @ivar message: Human-readable text.
    @ivar kind: The error C{type} (C{invalid_request_error}, ...).
    @ivar param: The offending request field, if any.
    """

    def __init__(
        self,
        code: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.kind = kind
        self.param = param


def _json(request: IRequest, obj: Any, code: int = 200) -> bytes:
    """
    Set the status and JSON content type; return the encoded body.
    """
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"content-length", b"%d" % (len(body),))
    return body


def _newId(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def _perSecond(count: int, ms: float) -> float:
    return count / (ms / 1000.0) if ms > 0 else 0.0


def _timings(promptTokens: int, predictedTokens: int, started: float,
             firstAt: float, doneAt: float) -> dict[str, Any]:
    """
    llama-server style C{timings}: the prompt phase runs from the request's
    arrival to the first token, the predicted phase from there to the end.
    """
    promptMs = max(0.0, firstAt - started) * 1000.0
    predictedMs = max(0.0, doneAt - firstAt) * 1000.0
    return {
        "prompt_n": promptTokens,
        "prompt_ms": promptMs,
        "prompt_per_token_ms": promptMs / promptTokens if promptTokens else 0.0,
        "prompt_per_second": _perSecond(promptTokens, promptMs),
        "predicted_n": predictedTokens,
        "predicted_ms": predictedMs,
        "predicted_per_token_ms": predictedMs / predictedTokens if predictedTokens else 0.0,
        "predicted_per_second": _perSecond(predictedTokens, predictedMs),
    }


class DemoServer:
    """
    The demo inference server.  L{resource} is what a L{twisted.web.server.Site}
    serves.

    Every handler that waits (token delays, C{/debug/slow}) waits on the
    injected clock, and Klein cancels that wait when the client disconnects,
    so a gone client leaves no timer behind.
    """

    app = Klein()
    # Exact paths only: no trailing-slash or double-slash redirects.
    app.url_map.strict_slashes = False
    app.url_map.merge_slashes = False
    log = Logger(namespace="llamaswap.demo")

    def __init__(
        self,
        settings: DemoSettings,
        clock: IReactorTime,
        pid: int | None = None,
    ) -> None:
        """
        @param settings: What to pretend to be.
        @param clock: The reactor (or a L{twisted.internet.task.Clock} in
            tests); start-up time is taken from it now.
        @param pid: What C{X-Demo-Pid} reports; defaults to this process's.
        """
        self.settings = settings
        self._clock = clock
        self._startedAt = clock.seconds()
        self.pid = os.getpid() if pid is None else pid

    def resource(self) -> IResource:
        """
        The root resource: the routes, wrapped so that every response carries
        C{X-Demo-Model} and C{X-Demo-Pid}, every request is logged once, and
        every route but C{/health} answers 503 while loading.
        """
        return _Envelope(self, self.app.resource(), self._clock)

    def loading(self) -> bool:
        """
        Whether the pretend model is still loading (C{--startup-delay}).
        """
        return self._clock.seconds() < self._startedAt + self.settings.startupDelay

    # ------------------------------------------------------------------
    # Errors: one place, JSON everywhere.

    def _error(self, request: IRequest, code: int, message: str, kind: str,
               param: str | None = None) -> bytes:
        if request.path.startswith((b"/v1/messages", b"/messages")):
            return _json(request, {
                "type": "error", "error": {"type": kind, "message": message}}, code)
        error: dict[str, Any] = {"message": message, "type": kind}
        if param is not None:
            error["param"] = param
        return _json(request, {"error": error}, code)

    @app.handle_errors(DemoError)
    def _demoError(self, request: IRequest, failure: Failure) -> bytes:
        e = failure.value
        return self._error(request, e.code, e.message, e.kind, e.param)

    @app.handle_errors(NotFound)
    def _notFound(self, request: IRequest, failure: Failure) -> bytes:
        path = request.path.decode("utf-8", "replace")
        return self._error(request, 404, f"Not found: {path}", "not_found")

    @app.handle_errors(MethodNotAllowed)
    def _methodNotAllowed(self, request: IRequest, failure: Failure) -> bytes:
        allowed = sorted(failure.value.valid_methods or ())
        if allowed:
            request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
        method = request.method.decode("ascii", "replace")
        return self._error(request, 405, f"Method {method} not allowed", "method_not_allowed")

    @app.handle_errors(HTTPException)
    def _httpError(self, request: IRequest, failure: Failure) -> bytes:
        e = failure.value
        return self._error(request, e.code or 500, e.description or e.name, "http_error")

    @app.handle_errors(Exception)
    def _unexpected(self, request: IRequest, failure: Failure) -> bytes:
        self.log.failure("Unhandled error answering {path}", failure,
                         path=request.path.decode("utf-8", "replace"))
        return self._error(request, 500, "Internal error", "server_error")

    # ------------------------------------------------------------------
    # Request helpers.

    def _readJSON(self, request: IRequest) -> dict[str, Any]:
        """
        Parse the request body as a JSON object.

        @raise DemoError: 413 when too large, 400 when not a JSON object.
        """
        content = request.content
        raw = content.read(MAX_BODY + 1) if content is not None else b""
        if len(raw) > MAX_BODY:
            raise DemoError(413, f"Request body larger than {MAX_BODY} bytes")
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise DemoError(400, f"Invalid JSON body: {e}") from None
        if not isinstance(body, dict):
            raise DemoError(400, "Request body must be a JSON object")
        return body

    def _modelOf(self, body: dict[str, Any]) -> str:
        model = body.get("model")
        return model if isinstance(model, str) and model else self.settings.model

    @staticmethod
    def _limit(body: dict[str, Any], *keys: str) -> int | None:
        """
        The smallest non-negative token limit among C{keys}; L{None} when
        there is none (a negative value means unlimited, like llama-server's
        C{-1}).
        """
        limits = []
        for key in keys:
            value = body.get(key)
            if value is None:
                continue
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise DemoError(400, f"'{key}' must be an integer", param=key)
            if value >= 0:
                limits.append(value)
        return min(limits) if limits else None

    @staticmethod
    def _streamed(body: dict[str, Any]) -> bool:
        return body.get("stream") is True

    @staticmethod
    def _includeUsage(body: dict[str, Any]) -> bool:
        options = body.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True

    @staticmethod
    def _queryFloat(request: IRequest, name: bytes, default: float,
                    low: float, high: float) -> float:
        values = request.args.get(name)
        if not values:
            return default
        try:
            value = float(values[0])
        except ValueError:
            value = float("nan")
        if not low <= value <= high:
            raise DemoError(400, f"'{name.decode()}' must be a number in [{low:g}, {high:g}]",
                            param=name.decode())
        return value

    async def _think(self, tokens: int) -> None:
        """
        Wait as long as generating C{tokens} tokens takes (for non-streamed
        responses): completes with L{None} after C{tokens * tokenDelay}
        seconds on the clock.
        """
        delay = tokens * self.settings.tokenDelay
        if delay > 0:
            await deferLater(self._clock, delay)

    # ------------------------------------------------------------------
    # Health and models.

    @app.route("/health", methods=["GET"], endpoint="health")
    @app.route("/v1/health", methods=["GET"], endpoint="v1_health")
    def health(self, request: IRequest) -> bytes:
        if self.settings.failHealth:
            return _json(request, {"status": "error", "error": "--fail-health is set"}, 500)
        if self.loading():
            return _json(request, {"status": "loading"}, 503)
        return _json(request, {"status": "ok"})

    @app.route("/v1/models", methods=["GET"], endpoint="models")
    @app.route("/models", methods=["GET"], endpoint="models_unversioned")
    def models(self, request: IRequest) -> bytes:
        return _json(request, {
            "object": "list",
            "data": [{
                "id": self.settings.model,
                "object": "model",
                "created": int(self._startedAt),
                "owned_by": "llamaswap-demo",
            }],
        })

    # ------------------------------------------------------------------
    # OpenAI chat completions.

    @app.route("/v1/chat/completions", methods=["POST"], endpoint="chat")
    @app.route("/chat/completions", methods=["POST"], endpoint="chat_unversioned")
    async def chatCompletions(self, request: IRequest) -> bytes | None:
        """
        OpenAI chat completion, streamed (C{chat.completion.chunk} events then
        C{[DONE]}) or not.

        @return: (a coroutine that completes with) the JSON body, or L{None}
            once a streamed response has been written; Klein then finishes
            the request.
        """
        started = self._clock.seconds()
        body = self._readJSON(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise DemoError(400, "'messages' is required and must be a non-empty array",
                            param="messages")
        gen = generate(promptOfMessages(messages), self.settings.tokens,
                       self._limit(body, "max_completion_tokens", "max_tokens"))
        head = {
            "id": _newId("chatcmpl-"),
            "created": int(started),
            "model": self._modelOf(body),
            "system_fingerprint": "llamaswap-demo",
        }
        usage = {
            "prompt_tokens": gen.promptTokens,
            "completion_tokens": gen.completionTokens,
            "total_tokens": gen.promptTokens + gen.completionTokens,
        }
        if self._streamed(body):
            await self._streamChat(request, gen, head, usage, started, self._includeUsage(body))
            return None
        firstAt = self._clock.seconds()
        await self._think(gen.completionTokens)
        return _json(request, {
            **head,
            "object": "chat.completion",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": gen.text},
                "logprobs": None,
                "finish_reason": gen.finishReason,
            }],
            "usage": usage,
            "timings": _timings(gen.promptTokens, gen.completionTokens, started,
                                firstAt, self._clock.seconds()),
        })

    async def _streamChat(self, request: IRequest, gen: Generation, head: dict[str, Any],
                          usage: dict[str, int], started: float, includeUsage: bool) -> None:
        stream = EventStream(request, self._clock)
        try:
            head = {**head, "object": "chat.completion.chunk"}
            # OpenAI sends "usage": null on every chunk but the usage chunk
            # when include_usage is set.
            tail: dict[str, Any] = {"usage": None} if includeUsage else {}
            firstAt = self._clock.seconds()
            for i, token in enumerate(gen.tokens or ("",)):
                if i:
                    await stream.pace(self.settings.tokenDelay)
                else:
                    firstAt = self._clock.seconds()
                delta = {"role": "assistant", "content": token} if i == 0 else {"content": token}
                stream.send(sseData({**head, "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
                ], **tail}))
            if gen.tokens:
                await stream.pace(self.settings.tokenDelay)
            stream.send(sseData({
                **head,
                "choices": [{"index": 0, "delta": {}, "logprobs": None,
                             "finish_reason": gen.finishReason}],
                **tail,
                "timings": _timings(gen.promptTokens, gen.completionTokens, started,
                                    firstAt, self._clock.seconds()),
            }))
            if includeUsage:
                stream.send(sseData({**head, "choices": [], "usage": usage}))
            stream.send(SSE_DONE)
        finally:
            stream.close()

    # ------------------------------------------------------------------
    # OpenAI text completions.

    @staticmethod
    def _prompts(prompt: Any) -> list[str]:
        """
        The prompts of a text completion: a string, a list of strings, a list
        of token ids, or a list of lists of token ids.
        """
        if isinstance(prompt, str):
            return [prompt]
        if isinstance(prompt, list) and prompt:
            if all(isinstance(p, str) for p in prompt):
                return list(prompt)
            if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
                return [" ".join(map(str, prompt))]
            if all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompt):
                return [" ".join(map(str, p)) for p in prompt]
        raise DemoError(400, "'prompt' must be a string or an array of strings", param="prompt")

    @app.route("/v1/completions", methods=["POST"], endpoint="completions")
    @app.route("/completions", methods=["POST"], endpoint="completions_unversioned")
    async def completions(self, request: IRequest) -> bytes | None:
        """
        OpenAI text completion: one choice per prompt, streamed or not.

        @return: (a coroutine that completes with) the JSON body, or L{None}
            once a streamed response has been written.
        """
        started = self._clock.seconds()
        body = self._readJSON(request)
        if "prompt" not in body:
            raise DemoError(400, "'prompt' is required", param="prompt")
        limit = self._limit(body, "max_tokens")
        gens = [generate(p, self.settings.tokens, limit) for p in self._prompts(body["prompt"])]
        promptTokens = sum(g.promptTokens for g in gens)
        completionTokens = sum(g.completionTokens for g in gens)
        head = {
            "id": _newId("cmpl-"),
            "object": "text_completion",
            "created": int(started),
            "model": self._modelOf(body),
            "system_fingerprint": "llamaswap-demo",
        }
        usage = {
            "prompt_tokens": promptTokens,
            "completion_tokens": completionTokens,
            "total_tokens": promptTokens + completionTokens,
        }
        if self._streamed(body):
            await self._streamCompletions(request, gens, head, usage, started,
                                          self._includeUsage(body))
            return None
        firstAt = self._clock.seconds()
        await self._think(completionTokens)
        return _json(request, {
            **head,
            "choices": [
                {"text": g.text, "index": i, "logprobs": None, "finish_reason": g.finishReason}
                for i, g in enumerate(gens)
            ],
            "usage": usage,
            "timings": _timings(promptTokens, completionTokens, started,
                                firstAt, self._clock.seconds()),
        })

    async def _streamCompletions(self, request: IRequest, gens: Sequence[Generation],
                                 head: dict[str, Any], usage: dict[str, int],
                                 started: float, includeUsage: bool) -> None:
        stream = EventStream(request, self._clock)
        try:
            tail: dict[str, Any] = {"usage": None} if includeUsage else {}
            firstAt = None
            sent = 0
            for index, gen in enumerate(gens):
                for token in gen.tokens:
                    if sent:
                        await stream.pace(self.settings.tokenDelay)
                    if firstAt is None:
                        firstAt = self._clock.seconds()
                    sent += 1
                    stream.send(sseData({**head, "choices": [
                        {"text": token, "index": index, "logprobs": None, "finish_reason": None}
                    ], **tail}))
                if index == len(gens) - 1 and sent:
                    await stream.pace(self.settings.tokenDelay)
                final = {**head, "choices": [
                    {"text": "", "index": index, "logprobs": None,
                     "finish_reason": gen.finishReason}
                ], **tail}
                if index == len(gens) - 1:
                    final["timings"] = _timings(
                        usage["prompt_tokens"], usage["completion_tokens"], started,
                        started if firstAt is None else firstAt, self._clock.seconds())
                stream.send(sseData(final))
            if includeUsage:
                stream.send(sseData({**head, "choices": [], "usage": usage}))
            stream.send(SSE_DONE)
        finally:
            stream.close()

    # ------------------------------------------------------------------
    # OpenAI embeddings.

    @app.route("/v1/embeddings", methods=["POST"], endpoint="embeddings")
    @app.route("/embeddings", methods=["POST"], endpoint="embeddings_unversioned")
    def embeddings(self, request: IRequest) -> bytes:
        """
        Deterministic unit vectors of dimension L{llamaswap.demo.text.EMBEDDING_DIMENSION}, one per
        input; C{encoding_format: "base64"} is honoured.
        """
        body = self._readJSON(request)
        if "input" not in body:
            raise DemoError(400, "'input' is required", param="input")
        inputs = self._promptsFor("input", body["input"])
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise DemoError(400, "'encoding_format' must be 'float' or 'base64'",
                            param="encoding_format")
        data = []
        for i, text in enumerate(inputs):
            vector = embed(text)
            data.append({
                "object": "embedding",
                "index": i,
                "embedding": embeddingBase64(vector) if fmt == "base64" else vector,
            })
        tokens = sum(countTokens(t) for t in inputs)
        return _json(request, {
            "object": "list",
            "data": data,
            "model": self._modelOf(body),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })

    def _promptsFor(self, name: str, value: Any) -> list[str]:
        try:
            return self._prompts(value)
        except DemoError:
            raise DemoError(400, f"'{name}' must be a string or an array of strings",
                            param=name) from None

    # ------------------------------------------------------------------
    # OpenAI Responses API.

    @staticmethod
    def _promptOfInput(value: Any, instructions: Any) -> str:
        if isinstance(value, str):
            items: list[Any] = [value]
        elif isinstance(value, list) and value:
            items = value
        else:
            raise DemoError(400, "'input' is required and must be a string or an array",
                            param="input")
        return promptOfMessages(items, system=instructions)

    @app.route("/v1/responses", methods=["POST"], endpoint="responses")
    @app.route("/responses", methods=["POST"], endpoint="responses_unversioned")
    async def responses(self, request: IRequest) -> bytes | None:
        """
        OpenAI Responses API: one assistant message with one C{output_text};
        streamed as the C{response.*} event sequence the official SDK reads.

        @return: (a coroutine that completes with) the JSON body, or L{None}
            once a streamed response has been written.
        """
        started = self._clock.seconds()
        body = self._readJSON(request)
        instructions = body.get("instructions")
        gen = generate(self._promptOfInput(body.get("input"), instructions),
                       self.settings.tokens, self._limit(body, "max_output_tokens"))
        responseId = _newId("resp_")
        messageId = _newId("msg_")
        maxOutput = body.get("max_output_tokens")

        def response(status: str, output: list[Any], usage: Any) -> dict[str, Any]:
            return {
                "id": responseId,
                "object": "response",
                "created_at": int(started),
                "status": status,
                "error": None,
                "incomplete_details": None,
                "instructions": instructions if isinstance(instructions, str) else None,
                "max_output_tokens": maxOutput if isinstance(maxOutput, int) else None,
                "model": self._modelOf(body),
                "output": output,
                "parallel_tool_calls": True,
                "previous_response_id": None,
                "reasoning": {"effort": None, "summary": None},
                "store": False,
                "temperature": 1.0,
                "text": {"format": {"type": "text"}},
                "tool_choice": "auto",
                "tools": [],
                "top_p": 1.0,
                "truncation": "disabled",
                "usage": usage,
                "metadata": {},
            }

        def message(status: str, text: str | None) -> dict[str, Any]:
            content = [] if text is None else [
                {"type": "output_text", "text": text, "annotations": []}
            ]
            return {"type": "message", "id": messageId, "status": status,
                    "role": "assistant", "content": content}

        usage = {
            "input_tokens": gen.promptTokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": gen.completionTokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": gen.promptTokens + gen.completionTokens,
        }
        if not self._streamed(body):
            await self._think(gen.completionTokens)
            return _json(request, response("completed", [message("completed", gen.text)], usage))

        stream = EventStream(request, self._clock)
        try:
            seq = 0

            def emit(kind: str, **fields: Any) -> None:
                nonlocal seq
                stream.send(sseEvent(kind, {"type": kind, "sequence_number": seq, **fields}))
                seq += 1

            where = {"item_id": messageId, "output_index": 0, "content_index": 0}
            emit("response.created", response=response("in_progress", [], None))
            emit("response.in_progress", response=response("in_progress", [], None))
            emit("response.output_item.added", output_index=0,
                 item=message("in_progress", None))
            emit("response.content_part.added", **where,
                 part={"type": "output_text", "text": "", "annotations": []})
            for i, token in enumerate(gen.tokens):
                if i:
                    await stream.pace(self.settings.tokenDelay)
                emit("response.output_text.delta", **where, delta=token, logprobs=[])
            if gen.tokens:
                await stream.pace(self.settings.tokenDelay)
            emit("response.output_text.done", **where, text=gen.text, logprobs=[])
            emit("response.content_part.done", **where,
                 part={"type": "output_text", "text": gen.text, "annotations": []})
            done = message("completed", gen.text)
            emit("response.output_item.done", output_index=0, item=done)
            emit("response.completed", response=response("completed", [done], usage))
        finally:
            stream.close()
        return None

    # ------------------------------------------------------------------
    # Anthropic Messages API.

    @staticmethod
    def _anthropicPrompt(body: dict[str, Any]) -> str:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise DemoError(400, "'messages' is required and must be a non-empty array",
                            param="messages")
        return promptOfMessages(messages, system=body.get("system"))

    @app.route("/v1/messages", methods=["POST"], endpoint="messages")
    @app.route("/messages", methods=["POST"], endpoint="messages_unversioned")
    async def messages(self, request: IRequest) -> bytes | None:
        """
        Anthropic Messages: one text block; streamed as the
        C{message_start} ... C{message_stop} events the official SDK reads.

        @return: (a coroutine that completes with) the JSON body, or L{None}
            once a streamed response has been written.
        """
        body = self._readJSON(request)
        gen = generate(self._anthropicPrompt(body), self.settings.tokens,
                       self._limit(body, "max_tokens"))
        messageId = _newId("msg_")
        model = self._modelOf(body)
        if not self._streamed(body):
            await self._think(gen.completionTokens)
            return _json(request, {
                "id": messageId,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": gen.text}],
                "stop_reason": gen.stopReason,
                "stop_sequence": None,
                "usage": {"input_tokens": gen.promptTokens, "output_tokens": gen.completionTokens},
            })

        stream = EventStream(request, self._clock)
        try:
            def emit(kind: str, **fields: Any) -> None:
                stream.send(sseEvent(kind, {"type": kind, **fields}))

            emit("message_start", message={
                "id": messageId,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": gen.promptTokens, "output_tokens": 0},
            })
            emit("content_block_start", index=0, content_block={"type": "text", "text": ""})
            for i, token in enumerate(gen.tokens):
                if i:
                    await stream.pace(self.settings.tokenDelay)
                emit("content_block_delta", index=0, delta={"type": "text_delta", "text": token})
            if gen.tokens:
                await stream.pace(self.settings.tokenDelay)
            emit("content_block_stop", index=0)
            emit("message_delta",
                 delta={"stop_reason": gen.stopReason, "stop_sequence": None},
                 usage={"output_tokens": gen.completionTokens})
            emit("message_stop")
        finally:
            stream.close()
        return None

    @app.route("/v1/messages/count_tokens", methods=["POST"], endpoint="count_tokens")
    @app.route("/messages/count_tokens", methods=["POST"], endpoint="count_tokens_unversioned")
    def messagesCountTokens(self, request: IRequest) -> bytes:
        """
        Anthropic token counting: C{{"input_tokens": N}}.
        """
        body = self._readJSON(request)
        return _json(request, {"input_tokens": countTokens(self._anthropicPrompt(body))})

    # ------------------------------------------------------------------
    # The other model-dispatched routes of llama-swap (SPEC.md section
    # 3.4): audio, images, rerank, llama-server's native completion and
    # infill, and stable-diffusion.cpp's SD API.  Each names itself in
    # X-Demo-Route (and "route" in JSON bodies) and echoes the model it
    # received in X-Demo-Request-Model (and "model").

    def _tag(self, request: IRequest, route: str, model: str) -> None:
        """
        Name the route that answered and the model it received.
        """
        request.setHeader(b"x-demo-route", route.encode("utf-8"))
        request.setHeader(b"x-demo-request-model", model.encode("utf-8", "replace"))

    def _readForm(self, request: IRequest) -> Form:
        """
        Decode a multipart form body (file parts are hashed, not kept).

        @raise DemoError: 400 when it is not a well-formed form.
        """
        try:
            return readForm(request.content, request.getHeader(b"content-type"))
        except FormError as e:
            raise DemoError(400, str(e)) from None

    @staticmethod
    def _requireText(body: dict[str, Any], key: str) -> str:
        value = body.get(key)
        if not isinstance(value, str):
            raise DemoError(400, f"'{key}' is required and must be a string", param=key)
        return value

    @staticmethod
    def _count(body: dict[str, Any], key: str, default: int, high: int) -> int:
        value = body.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise DemoError(400, f"'{key}' must be an integer in [1, {high}]", param=key)
        return value

    @app.route("/v1/audio/speech", methods=["POST"], endpoint="speech")
    def speech(self, request: IRequest) -> bytes:
        """
        OpenAI text to speech: a few bytes of (fake) audio, typed by
        C{response_format} (C{audio/mpeg} for the default C{mp3}).
        """
        body = self._readJSON(request)
        text = self._requireText(body, "input")
        voice = body.get("voice", "alloy")
        fmt = body.get("response_format", "mp3")
        if fmt not in SPEECH_TYPES:
            raise DemoError(400, "'response_format' must be one of " + ", ".join(SPEECH_TYPES),
                            param="response_format")
        model = self._modelOf(body)
        self._tag(request, "/v1/audio/speech", model)
        audio = speechAudio(model, str(voice), text, fmt)
        request.setResponseCode(200)
        request.setHeader(b"content-type", SPEECH_TYPES[fmt].encode("ascii"))
        request.setHeader(b"content-length", b"%d" % (len(audio),))
        return audio

    @app.route("/v1/audio/voices", methods=["GET", "POST"], endpoint="voices")
    def voices(self, request: IRequest) -> bytes:
        """
        The voices of a text-to-speech model: C{GET ?model=} or C{POST}
        with a JSON body naming the model.
        """
        if request.method == b"POST":
            model = self._modelOf(self._readJSON(request))
        else:
            values = request.args.get(b"model") or [b""]
            model = values[0].decode("utf-8", "replace") or self.settings.model
        self._tag(request, "/v1/audio/voices", model)
        return _json(request, {
            "object": "list",
            "voices": ["alloy", "echo", "fable", "nova"],
            "model": model,
            "route": "/v1/audio/voices",
        })

    @app.route("/v1/audio/transcriptions", methods=["POST"], endpoint="transcriptions")
    async def transcriptions(self, request: IRequest) -> bytes | None:
        """
        OpenAI speech to text, from a multipart form with a C{file}: the
        "transcription" names the file, and the answer carries the file's
        size and SHA-256 (C{file_bytes}, C{file_sha256}) so that tests can
        check it arrived byte for byte.  C{response_format} C{json}
        (default), C{verbose_json}, C{text}, C{srt} or C{vtt};
        C{stream=true} streams C{transcript.text.delta} events.

        @return: (a coroutine that completes with) the body, or L{None}
            once a streamed response has been written.
        """
        form = self._readForm(request)
        upload = form.file("file")
        if upload is None:
            raise DemoError(400, "'file' is required", param="file")
        model = form.first("model") or self.settings.model
        self._tag(request, "/v1/audio/transcriptions", model)
        gen = generate(f"transcribe {upload.sha256}", self.settings.tokens, None)
        text = gen.text.strip()
        fmt = form.first("response_format", "json")
        if form.first("stream") == "true":
            stream = EventStream(request, self._clock)
            try:
                for i, token in enumerate(gen.tokens):
                    if i:
                        await stream.pace(self.settings.tokenDelay)
                    stream.send(sseData({"type": "transcript.text.delta", "delta": token}))
                stream.send(sseData({"type": "transcript.text.done", "text": text}))
            finally:
                stream.close()
            return None
        await self._think(gen.completionTokens)
        if fmt in ("text", "srt", "vtt"):
            request.setResponseCode(200)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return (text + "\n").encode("utf-8")
        if fmt not in ("json", "verbose_json"):
            raise DemoError(400, "'response_format' must be json, verbose_json, text, srt or vtt",
                            param="response_format")
        fields = {name: values[0] for name, values in form.fields.items()}
        result: dict[str, Any] = {
            "text": text,
            "model": model,
            "route": "/v1/audio/transcriptions",
            "filename": upload.filename,
            "file_bytes": upload.size,
            "file_sha256": upload.sha256,
            "fields": fields,
            "usage": {"type": "duration", "seconds": max(1, upload.size // 16000)},
        }
        if fmt == "verbose_json":
            result.update({
                "task": "transcribe",
                "language": form.first("language", "english"),
                "duration": float(max(1, upload.size // 16000)),
                "segments": [],
            })
        return _json(request, result)

    def _images(self, prompt: str, count: int, fmt: str) -> list[dict[str, Any]]:
        data = []
        for i in range(count):
            png = tinyPNGBase64(f"{prompt}#{i}")
            if fmt == "url":
                data.append({"url": "data:image/png;base64," + png, "revised_prompt": prompt})
            else:
                data.append({"b64_json": png, "revised_prompt": prompt})
        return data

    @staticmethod
    def _imageFormat(value: Any) -> str:
        fmt = value if value is not None else "b64_json"
        if fmt not in ("b64_json", "url"):
            raise DemoError(400, "'response_format' must be 'b64_json' or 'url'",
                            param="response_format")
        return fmt

    @app.route("/v1/images/generations", methods=["POST"], endpoint="image_generations")
    def imageGenerations(self, request: IRequest) -> bytes:
        """
        OpenAI image generation: C{n} tiny PNGs whose colour depends on the
        prompt, as C{b64_json} (default) or data URLs.
        """
        body = self._readJSON(request)
        prompt = self._requireText(body, "prompt")
        count = self._count(body, "n", 1, 10)
        fmt = self._imageFormat(body.get("response_format"))
        model = self._modelOf(body)
        self._tag(request, "/v1/images/generations", model)
        return _json(request, {
            "created": int(self._clock.seconds()),
            "data": self._images(prompt, count, fmt),
            "model": model,
            "route": "/v1/images/generations",
        })

    @app.route("/v1/images/edits", methods=["POST"], endpoint="image_edits")
    def imageEdits(self, request: IRequest) -> bytes:
        """
        OpenAI image edit, from a multipart form with an C{image} (or
        C{image[]}) file: the generation shape, plus the size and SHA-256
        of the first image (C{file_bytes}, C{file_sha256}) and a
        description of every file part (C{files}).
        """
        form = self._readForm(request)
        image = form.file("image", "image[]")
        if image is None:
            raise DemoError(400, "'image' is required", param="image")
        prompt = form.first("prompt")
        if prompt is None:
            raise DemoError(400, "'prompt' is required", param="prompt")
        try:
            count = int(form.first("n", "1") or "1")
        except ValueError:
            count = 0
        if not 1 <= count <= 10:
            raise DemoError(400, "'n' must be an integer in [1, 10]", param="n")
        fmt = self._imageFormat(form.first("response_format"))
        model = form.first("model") or self.settings.model
        self._tag(request, "/v1/images/edits", model)
        return _json(request, {
            "created": int(self._clock.seconds()),
            "data": self._images(f"{prompt}|{image.sha256}", count, fmt),
            "model": model,
            "route": "/v1/images/edits",
            "file_bytes": image.size,
            "file_sha256": image.sha256,
            "files": [f.describe() for f in form.files],
        })

    @app.route("/v1/rerank", methods=["POST"], endpoint="rerank_v1")
    @app.route("/rerank", methods=["POST"], endpoint="rerank")
    @app.route("/reranking", methods=["POST"], endpoint="reranking")
    @app.route("/v1/reranking", methods=["POST"], endpoint="reranking_v1")
    def rerank(self, request: IRequest) -> bytes:
        """
        llama-server reranking: C{{"results": [{"index", "relevance_score"}]}},
        best first, at most C{top_n}; C{return_documents} adds each
        document.
        """
        body = self._readJSON(request)
        query = self._requireText(body, "query")
        documents = body.get("documents")
        texts = [documentText(d) for d in documents] if isinstance(documents, list) else None
        if not texts or any(t is None for t in texts):
            raise DemoError(400, "'documents' must be a non-empty array of strings",
                            param="documents")
        topN = body.get("top_n")
        if topN is not None and (isinstance(topN, bool) or not isinstance(topN, int) or topN < 0):
            raise DemoError(400, "'top_n' must be a non-negative integer", param="top_n")
        route = request.path.decode("ascii", "replace")
        model = self._modelOf(body)
        self._tag(request, route, model)
        results = []
        for index, score in rankDocuments(query, texts, topN):
            result: dict[str, Any] = {"index": index, "relevance_score": score}
            if body.get("return_documents") is True:
                result["document"] = {"text": texts[index]}
            results.append(result)
        tokens = countTokens(query) + sum(countTokens(t) for t in texts)
        return _json(request, {
            "model": model,
            "object": "list",
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "results": results,
            "route": route,
        })

    def _nativeResult(self, gen: Generation, prompt: str, model: str, route: str,
                      timings: dict[str, Any], index: int = 0) -> dict[str, Any]:
        return {
            "index": index,
            "content": gen.text,
            "tokens": [],
            "id_slot": 0,
            "stop": True,
            "model": model,
            "route": route,
            "tokens_predicted": gen.completionTokens,
            "tokens_evaluated": gen.promptTokens,
            "generation_settings": {"n_predict": self.settings.tokens, "model": model},
            "prompt": prompt,
            "has_new_line": "\n" in gen.text,
            "truncated": False,
            "stop_type": "limit" if gen.truncated else "eos",
            "stopping_word": "",
            "tokens_cached": 0,
            "timings": timings,
        }

    async def _native(self, request: IRequest, route: str, body: dict[str, Any],
                      prompts: list[str], started: float) -> bytes | None:
        """
        Answer llama-server's C{/completion} or C{/infill}: one object (a
        list for several prompts), or a stream of C{data:} events ending
        with C{"stop": true} and C{timings} (no C{[DONE]}, as
        llama-server's native stream has none).
        """
        model = self._modelOf(body)
        self._tag(request, route, model)
        limit = self._limit(body, "n_predict")
        gens = [generate(p, self.settings.tokens, limit) for p in prompts]
        if not self._streamed(body):
            firstAt = self._clock.seconds()
            await self._think(sum(g.completionTokens for g in gens))
            results = [
                self._nativeResult(
                    g, p, model, route,
                    _timings(g.promptTokens, g.completionTokens, started, firstAt,
                             self._clock.seconds()),
                    i)
                for i, (g, p) in enumerate(zip(gens, prompts))
            ]
            return _json(request, results[0] if len(results) == 1 else results)
        gen, prompt = gens[0], prompts[0]
        stream = EventStream(request, self._clock)
        try:
            firstAt = None
            for i, token in enumerate(gen.tokens):
                if i:
                    await stream.pace(self.settings.tokenDelay)
                if firstAt is None:
                    firstAt = self._clock.seconds()
                stream.send(sseData({
                    "index": 0, "content": token, "tokens": [], "stop": False,
                    "id_slot": 0, "tokens_predicted": i + 1,
                    "tokens_evaluated": gen.promptTokens,
                }))
            if gen.tokens:
                await stream.pace(self.settings.tokenDelay)
            final = self._nativeResult(
                gen, prompt, model, route,
                _timings(gen.promptTokens, gen.completionTokens, started,
                         started if firstAt is None else firstAt, self._clock.seconds()))
            final["content"] = ""
            stream.send(sseData(final))
        finally:
            stream.close()
        return None

    @app.route("/completion", methods=["POST"], endpoint="native_completion")
    async def nativeCompletion(self, request: IRequest) -> bytes | None:
        """
        llama-server's native completion (C{prompt}, C{n_predict},
        C{stream}).
        """
        started = self._clock.seconds()
        body = self._readJSON(request)
        if "prompt" not in body:
            raise DemoError(400, "'prompt' is required", param="prompt")
        return await self._native(request, "/completion", body,
                                  self._prompts(body["prompt"]), started)

    @app.route("/infill", methods=["POST"], endpoint="infill")
    async def infill(self, request: IRequest) -> bytes | None:
        """
        llama-server's code infilling (C{input_prefix}, C{input_suffix},
        optional C{prompt}), answered like C{/completion}.
        """
        started = self._clock.seconds()
        body = self._readJSON(request)
        pieces = []
        for key in ("input_prefix", "input_suffix", "prompt"):
            value = body.get(key, "")
            if not isinstance(value, str):
                raise DemoError(400, f"'{key}' must be a string", param=key)
            pieces.append(value)
        if not pieces[0] and not pieces[1]:
            raise DemoError(400, "'input_prefix' or 'input_suffix' is required",
                            param="input_prefix")
        prompt = f"{pieces[0]}<FIM>{pieces[1]}{pieces[2]}"
        return await self._native(request, "/infill", body, [prompt], started)

    def _sdImages(self, request: IRequest, route: str, body: dict[str, Any],
                  extra: dict[str, Any]) -> bytes:
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            raise DemoError(400, "'prompt' must be a string", param="prompt")
        count = self._count(body, "batch_size", 1, 10)
        model = self._modelOf(body)
        self._tag(request, route, model)
        images = [tinyPNGBase64(f"{route}|{prompt}|{i}") for i in range(count)]
        info = {"prompt": prompt, "model": model, "route": route,
                "seed": body.get("seed", -1), **extra}
        return _json(request, {
            "images": images,
            "parameters": body,
            "info": json.dumps(info),
            "model": model,
            "route": route,
        })

    @app.route("/sdapi/v1/txt2img", methods=["POST"], endpoint="txt2img")
    def txt2img(self, request: IRequest) -> bytes:
        """
        stable-diffusion.cpp's (A1111-style) text to image:
        C{{"images": [base64 PNG], "parameters": <the request>, "info"}}.
        """
        body = self._readJSON(request)
        return self._sdImages(request, "/sdapi/v1/txt2img", body, {})

    @app.route("/sdapi/v1/img2img", methods=["POST"], endpoint="img2img")
    def img2img(self, request: IRequest) -> bytes:
        """
        Image to image: like C{txt2img}, with the size and SHA-256 of the
        first decoded C{init_images} entry in C{info} (and at top level).
        """
        body = self._readJSON(request)
        images = body.get("init_images")
        if not isinstance(images, list) or not images or not isinstance(images[0], str):
            raise DemoError(400, "'init_images' must be a non-empty array of base64 strings",
                            param="init_images")
        encoded = images[0].split(",", 1)[1] if images[0].startswith("data:") else images[0]
        try:
            first = base64.b64decode(encoded, validate=True)
        except ValueError:
            raise DemoError(400, "'init_images' must be base64", param="init_images") from None
        extra = {"init_image_bytes": len(first),
                 "init_image_sha256": hashlib.sha256(first).hexdigest()}
        return self._sdImages(request, "/sdapi/v1/img2img", body, extra)

    @app.route("/sdapi/v1/loras", methods=["GET"], endpoint="loras")
    def loras(self, request: IRequest) -> bytes:
        """
        The LoRAs of an SD model (C{?model=}): a JSON array, so the route
        and model are in the headers and in each entry's C{path}.
        """
        values = request.args.get(b"model") or [b""]
        model = values[0].decode("utf-8", "replace") or self.settings.model
        self._tag(request, "/sdapi/v1/loras", model)
        return _json(request, [
            {"name": name, "alias": name, "path": f"/loras/{model}/{name}.safetensors"}
            for name in ("demo-detail", "demo-style")
        ])

    # ------------------------------------------------------------------
    # Debugging aids for the proxy's tests and benchmarks.

    @app.route("/debug/echo", branch=True, endpoint="echo")
    def echo(self, request: IRequest) -> bytes:
        """
        Describe the request exactly as received.
        """
        uri = request.uri
        query = uri.split(b"?", 1)[1] if b"?" in uri else b""
        headers: dict[str, str] = {}
        for name, values in request.requestHeaders.getAllRawHeaders():
            headers[name.decode("latin-1").lower()] = ", ".join(
                v.decode("latin-1") for v in values)
        content = request.content
        raw = content.read() if content is not None else b""
        return _json(request, {
            "method": request.method.decode("latin-1"),
            "path": request.path.decode("utf-8", "replace"),
            "query": query.decode("utf-8", "replace"),
            "headers": headers,
            "body": raw.decode("utf-8", "replace"),
        })

    @app.route("/debug/stream", methods=["GET", "POST"])
    async def debugStream(self, request: IRequest) -> None:
        """
        Stream C{n} events C{data: {"i": k, "pad": "xxx..."}} (C{size} bytes of
        pad), C{delay} seconds apart, then C{data: [DONE]}.  With no delay it
        writes as fast as the client reads (the transport's backpressure
        pauses it), for the relay benchmark.

        @return: (a coroutine that completes with) L{None} once all is written.
        """
        n = int(self._queryFloat(request, b"n", 16, 0, MAX_STREAM_CHUNKS))
        delay = self._queryFloat(request, b"delay", 0.0, 0.0, 3600.0)
        size = int(self._queryFloat(request, b"size", 0, 0, MAX_STREAM_PAD))
        pad = "x" * size
        stream = EventStream(request, self._clock)
        try:
            for k in range(n):
                if k:
                    await stream.pace(delay)
                if stream.gone:
                    break
                stream.send(b"data: " + json.dumps({"i": k, "pad": pad}).encode("ascii") + b"\n\n")
            stream.send(SSE_DONE)
        finally:
            stream.close()

    @app.route("/debug/slow", endpoint="slow")
    async def slow(self, request: IRequest) -> bytes:
        """
        Answer C{{"slept": seconds}} after C{seconds} seconds (default 1).

        @return: (a coroutine that completes with) the JSON body.
        """
        seconds = self._queryFloat(request, b"seconds", 1.0, 0.0, 3600.0)
        if seconds > 0:
            await deferLater(self._clock, seconds)
        return _json(request, {"slept": seconds})


class _Envelope(Resource):
    """
    Wraps the Klein resource: identity headers, the loading gate, and one
    log line per request.
    """

    isLeaf = True
    log = Logger(namespace="llamaswap.demo")

    def __init__(self, server: DemoServer, inner: IResource, clock: IReactorTime) -> None:
        super().__init__()
        self._server = server
        self._inner = inner
        self._clock = clock
        self._model = server.settings.model.encode("utf-8")
        self._pid = str(server.pid).encode("ascii")

    def render(self, request: IRequest) -> Any:
        clock = self._clock
        started = clock.seconds()
        request.setHeader(b"x-demo-model", self._model)
        request.setHeader(b"x-demo-pid", self._pid)

        def logged(result: object) -> None:
            self.log.info(
                "{method} {path} {code} {ms:.1f}ms{note}",
                method=request.method.decode("latin-1"),
                path=request.uri.decode("utf-8", "replace"),
                code=request.code,
                ms=(clock.seconds() - started) * 1000.0,
                note=" (client disconnected)" if isinstance(result, Failure) else "",
            )

        request.notifyFinish().addBoth(logged)
        if request.path not in _HEALTH_PATHS and self._server.loading():
            return _json(request, {"error": {
                "message": "Loading model", "type": "unavailable_error", "code": 503}}, 503)
        return self._inner.render(request)
