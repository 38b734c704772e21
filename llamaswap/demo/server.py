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

import json
from typing import Any, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from llamaswap.demo.base import (
    MAX_BODY,
    MAX_STREAM_CHUNKS,
    MAX_STREAM_PAD,
    DemoError,
    DemoSettings,
    _HEALTH_PATHS,
    _json,
    _newId,
    _timings,
)
from llamaswap.demo.mediaroutes import MediaRoutes
from llamaswap.demo.stream import SSE_DONE, EventStream, sseData, sseEvent
from llamaswap.demo.text import (
    Generation,
    countTokens,
    embed,
    embeddingBase64,
    generate,
    promptOfMessages,
)

__all__ = ["DemoServer", "DemoSettings", "DemoError", "MAX_BODY"]


_log = Logger(namespace="llamaswap.demo")

class DemoServer(MediaRoutes):
    """
    The demo inference server.  L{resource} is what a L{twisted.web.server.Site}
    serves.  Its routes: here the health, models and text ones (OpenAI,
    Anthropic, llama-server's native ones and debugging aids); audio, images
    and the rest in L{MediaRoutes}; the helpers they share in
    L{llamaswap.demo.base.DemoBase}.

    Every handler that waits (token delays, C{/debug/slow}) waits on the
    injected clock, and Klein cancels that wait when the client disconnects,
    so a gone client leaves no timer behind.
    """

    app = MediaRoutes.app

    def resource(self) -> IResource:
        """
        The root resource: the routes, wrapped so that every response carries
        C{X-Demo-Model} and C{X-Demo-Pid}, every request is logged once, and
        every route but C{/health} answers 503 while loading.
        """
        return _Envelope(self, self.app.resource(), self._clock)

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
            return _responseObject(
                responseId, started, self._modelOf(body),
                instructions if isinstance(instructions, str) else None,
                maxOutput if isinstance(maxOutput, int) else None,
                status, output, usage,
            )

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
    # llama-server's native completion and infill.

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
            firstToken: float | None = None
            for i, token in enumerate(gen.tokens):
                if i:
                    await stream.pace(self.settings.tokenDelay)
                if firstToken is None:
                    firstToken = self._clock.seconds()
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
                         started if firstToken is None else firstToken, self._clock.seconds()))
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


def _responseObject(responseId: str, started: float, model: str, instructions: str | None,
                    maxOutput: int | None, status: str, output: list[Any],
                    usage: Any) -> dict[str, Any]:
    """
    @return: a Responses API C{response} object.
    """
    return {
        "id": responseId,
        "object": "response",
        "created_at": int(started),
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": instructions,
        "max_output_tokens": maxOutput,
        "model": model,
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


class _Envelope(Resource):
    """
    Wraps the Klein resource: identity headers, the loading gate, and one
    log line per request.
    """

    isLeaf = True

    def __init__(self, server: DemoServer, inner: IResource, clock: IReactorTime) -> None:
        super().__init__()
        self._server = server
        self._inner = inner
        self._clock = clock
        self._model = server.settings.model.encode("utf-8")
        self._pid = str(server.pid).encode("ascii")

    def render(self, request: Request) -> Any:
        clock = self._clock
        started = clock.seconds()
        request.setHeader(b"x-demo-model", self._model)
        request.setHeader(b"x-demo-pid", self._pid)

        def logged(result: object) -> None:
            _log.info(
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
