"""
Reading and inspecting client request bodies.

Bodies are size-capped, parsed once to find the model, and forwarded byte for
byte unless a rewrite (such as C{useModelName}) is needed; a rewrite keeps
every key and its order.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import attr

from llamaswap.errors import BadRequest, BodyTooLarge, NoModelIdentified


@attr.s(frozen=True, auto_attribs=True)
class InferenceBody:
    """
    A client request body and what llamaswap reads from it.

    @ivar model: the model name the client asked for.
    @ivar stream: whether the client asked for a streamed answer.
    @ivar raw: the body as received.
    @ivar parsed: the decoded JSON object, or C{None} for other bodies.
    """

    model: str
    stream: bool
    raw: bytes
    parsed: dict | None = None

    def withModel(self, name: str) -> bytes:
        """
        @return: the body to send upstream with C{model} set to C{name}:
            the original bytes when nothing changes.
        """
        if self.parsed is None or self.parsed.get("model") == name:
            return self.raw
        rewritten = dict(self.parsed)
        rewritten["model"] = name
        return json.dumps(rewritten, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


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


def inspectBody(raw: bytes, contentType: bytes | None) -> InferenceBody:
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
    stripped = raw.lstrip()
    if b"json" in ctype or stripped.startswith(b"{"):
        try:
            parsed = json.loads(raw)
        except ValueError as e:
            raise BadRequest(f"invalid JSON body: {e}")
        if not isinstance(parsed, dict):
            raise BadRequest("the request body must be a JSON object")
        model = parsed.get("model")
        if not isinstance(model, str) or not model:
            raise NoModelIdentified()
        return InferenceBody(model, parsed.get("stream") is True, raw, parsed)
    if b"application/x-www-form-urlencoded" in ctype:
        fields = parse_qs(raw.decode("utf-8", "replace"))
        model = (fields.get("model") or [""])[0]
        if model:
            stream = (fields.get("stream") or [""])[0] == "true"
            return InferenceBody(model, stream, raw)
    raise NoModelIdentified()
