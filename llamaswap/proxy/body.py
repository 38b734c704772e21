"""
Reading and inspecting client request bodies.

Bodies are size-capped, parsed once to find the model, and forwarded byte for
byte unless a rewrite (such as C{useModelName}) is needed; a rewrite keeps
every key and its order.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

import attr

from llamaswap.errors import BadRequest, BodyTooLarge, NoModelIdentified
from llamaswap.proxy.multipart import inspectMultipart, isMultipart


def readBody(request, limit: int) -> bytes:
    """
    Read the whole request body, refusing one larger than C{limit} bytes.

    @raise BodyTooLarge: when the body (declared or actual) exceeds C{limit}.
    """
    declared = request.getHeader(b"content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        except ValueError:
            raise BadRequest("invalid Content-Length header")
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    data = content.read(limit + 1)
    if len(data) > limit:
        raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
    return data


def inspectBody(raw: bytes, contentType: bytes | None) -> ClientBody:
    """
    Find the model (and the streaming flag) in a request body.

    JSON bodies are recognised by their content type or, leniently, by a
    leading C{{} (C{curl -d} sends JSON as a form); URL-encoded forms are
    read for their C{model} field.

    @raise BadRequest: for a body that claims to be JSON and is not valid
        JSON, or is not a JSON object.
    @raise NoModelIdentified: when no model name is found.
    """
    ctype = (contentType or b"").lower()
    if b"json" in ctype or raw.lstrip().startswith(b"{"):
        try:
            parsed = json.loads(raw)
        except ValueError as e:
            raise BadRequest(f"invalid JSON body: {e}")
        except RecursionError:
            raise BadRequest("invalid JSON body: nested too deeply")
        if not isinstance(parsed, dict):
            raise BadRequest("the request body must be a JSON object")
        model = parsed.get("model")
        if not isinstance(model, str) or not model:
            raise NoModelIdentified()
        return ClientBody(model, parsed.get("stream") is True, raw, True)
    if b"application/x-www-form-urlencoded" in ctype:
        fields = parse_qs(raw.decode("utf-8", "replace"))
        model = (fields.get("model") or [""])[0]
        if model:
            stream = (fields.get("stream") or [""])[0] == "true"
            return ClientBody(model, stream, raw)
    raise NoModelIdentified()


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ClientBody:
    """
    What a model-dispatched request carries, however it carries it.

    @ivar model: the model name the client asked for.
    @ivar stream: whether it asked for a streamed answer.
    @ivar raw: the whole body, for JSON and URL-encoded bodies; L{None} for
        multipart forms (left in the request's spooled file) and for
        bodiless requests.
    @ivar isJSON: whether C{raw} is a JSON object (filters apply to it).
    @ivar form: the scanned multipart form, or L{None}.
    """

    model: str
    stream: bool
    raw: bytes | None = None
    isJSON: bool = False
    form: Any = None


def readClientBody(request, limit: int) -> ClientBody:
    """
    Find the model of a model-dispatched request: C{?model=} for requests
    without a body (C{GET}), the form field of a C{multipart/form-data}
    body (scanned in place, never read whole), else the JSON (or
    URL-encoded) body.

    @raise BodyTooLarge: past C{limit} bytes.
    @raise BadRequest: for a malformed JSON or multipart body.
    @raise NoModelIdentified: when no model name is found.
    """
    if request.method in (b"GET", b"HEAD", b"DELETE"):
        model = (request.args.get(b"model") or [b""])[0].decode("utf-8", "replace")
        if not model:
            raise NoModelIdentified()
        stream = (request.args.get(b"stream") or [b""])[0] == b"true"
        return ClientBody(model, stream)
    contentType = request.getHeader(b"content-type")
    if isMultipart(contentType):
        declared = request.getHeader(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        form = inspectMultipart(request.content, contentType)
        if form.length > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        return ClientBody(form.model, form.stream, form=form)
    return inspectBody(readBody(request, limit), contentType)
