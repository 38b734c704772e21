# -*- test-case-name: tests.test_relay,tests.test_web -*-
"""
The one place where errors become HTTP responses.

Every route answers failures in the OpenAI shape
C{{"error": {"message": ..., "type": ..., "code": status}}} so that SDKs show
the message.  A client that asks for text (C{Accept: text/plain}) or HTML
(C{Accept: text/html}) gets the reference's text or HTML forms instead
(SPEC.md section 3.1).
"""

from __future__ import annotations

import html
import json

from twisted.python.failure import Failure
from werkzeug.exceptions import HTTPException

from llamaswap.errors import LlamaSwapError


def toError(failure: Failure | BaseException) -> LlamaSwapError:
    """
    @return: the L{LlamaSwapError} to answer with for C{failure}: itself when
        it is one, the matching status for a werkzeug routing error (404,
        405), else a generic 500 that reveals no traceback.
    """
    exc = failure.value if isinstance(failure, Failure) else failure
    if isinstance(exc, LlamaSwapError):
        return exc
    if isinstance(exc, HTTPException):
        error = LlamaSwapError(
            {404: "not found", 405: "method not allowed"}.get(exc.code or 500, exc.name.lower())
        )
        error.code = exc.code or 500
        error.kind = "not_found" if error.code == 404 else "invalid_request_error"
        return error
    return LlamaSwapError("internal error")


def renderError(request, error: LlamaSwapError) -> bytes:
    """
    Set the status and content type of C{request} for C{error}.

    @return: the body to write.
    """
    request.setResponseCode(error.code)
    accept = (request.getHeader(b"accept") or b"").decode("latin-1").lower()
    if "text/plain" in accept:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return f"llama-swap: {error.message}".encode("utf-8")
    if "text/html" in accept:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        text = html.escape(error.message)
        return f"<html><body><h1>llama-swap</h1><p>{text}</p></body></html>".encode("utf-8")
    request.setHeader(b"content-type", b"application/json")
    body = {"error": {"message": error.message, "type": error.kind, "code": error.code}}
    return json.dumps(body).encode("utf-8")


def writeError(request, error: LlamaSwapError) -> None:
    """
    Answer C{request} with C{error} and finish it (for resources that
    rendered C{NOT_DONE_YET}).
    """
    request.write(renderError(request, error))
    request.finish()
