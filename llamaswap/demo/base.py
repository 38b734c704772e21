# -*- test-case-name: tests.test_demo -*-
"""
What every route of the demo server shares: its settings, its one error
type, JSON answers, the Klein app with its JSON error handlers, and the
helpers that read requests.

L{llamaswap.demo.server.DemoServer} is the server; its routes are spread
over this class's subclasses.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import attr
from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from llamaswap.demo.media import Form, FormError, readForm

#: A class attribute would log under its class's name, whatever namespace
#: it was given (a Logger read from a class is made anew for that class).
_log = Logger(namespace="llamaswap.demo")

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


class DemoBase:
    """
    The demo server's shared state and helpers, and the one Klein app every
    route of its subclasses is registered on.
    """

    app = Klein()
    # Exact paths only: no trailing-slash or double-slash redirects.
    app.url_map.strict_slashes = False
    app.url_map.merge_slashes = False

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
        _log.failure("Unhandled error answering {path}", failure,
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
    # Helpers of the model-dispatched routes.

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
