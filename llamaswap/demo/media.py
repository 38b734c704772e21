# -*- test-case-name: tests.test_demo -*-
"""
Helpers for the demo upstream's audio, image, rerank and form routes:
deterministic fake media, relevance scores, and a streaming
C{multipart/form-data} reader that hashes file parts instead of keeping
them.

The form reader is Werkzeug's sans-I/O decoder, deliberately not
llamaswap's own multipart scanner: the demo checks, independently, that
what the proxy forwarded is a well-formed form whose files arrived intact.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import zlib
from typing import IO, Any, Sequence

import attr
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from llamaswap.demo.text import embed

#: Bytes read from a form body at a time.
FORM_CHUNK = 64 * 1024

#: The most bytes kept of one text field of a form.
MAX_FIELD_BYTES = 1024 * 1024

#: Content types of the C{response_format}s of C{/v1/audio/speech}.
SPEECH_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}


class FormError(ValueError):
    """
    A request body that is not a readable C{multipart/form-data} form.
    """


@attr.s(frozen=True, auto_attribs=True)
class FormFile:
    """
    One file part of a form, as received.

    @ivar field: the part's name.
    @ivar filename: the part's file name.
    @ivar contentType: its C{Content-Type} (C{""} for none).
    @ivar size: its length in bytes.
    @ivar sha256: the hex SHA-256 of its bytes.
    @ivar head: its first bytes (at most 64).
    """

    field: str
    filename: str
    contentType: str
    size: int
    sha256: str
    head: bytes = b""

    def describe(self) -> dict[str, Any]:
        """
        @return: a JSON-able description.
        """
        return {
            "field": self.field,
            "filename": self.filename,
            "content_type": self.contentType,
            "bytes": self.size,
            "sha256": self.sha256,
        }


@attr.s(frozen=True, auto_attribs=True)
class Form:
    """
    A decoded form: text fields (every value, in order) and files.
    """

    fields: dict
    files: tuple

    def first(self, name: str, default: str | None = None) -> str | None:
        """
        @return: the first value of the field C{name}, or C{default}.
        """
        values = self.fields.get(name)
        return values[0] if values else default

    def file(self, *names: str) -> FormFile | None:
        """
        @return: the first file part whose field is one of C{names}.
        """
        for f in self.files:
            if f.field in names:
                return f
        return None


def readForm(content: IO[bytes] | None, contentType: bytes | str | None) -> Form:
    """
    Decode a C{multipart/form-data} body from a file, a chunk at a time,
    hashing file parts as they stream past.

    @param content: the body (C{request.content}), read from its start.
    @param contentType: the request's C{Content-Type}.

    @raise FormError: for a missing boundary or a malformed body.
    """
    if isinstance(contentType, bytes):
        contentType = contentType.decode("latin-1")
    mediaType, params = parse_options_header(contentType or "")
    if mediaType.lower() != "multipart/form-data":
        raise FormError("Content-Type must be multipart/form-data")
    boundary = params.get("boundary")
    if not boundary:
        raise FormError("multipart/form-data without a boundary")
    decoder = MultipartDecoder(boundary.encode("latin-1"))
    fields: dict[str, list[str]] = {}
    files: list[FormFile] = []
    current: dict[str, Any] | None = None
    if content is not None:
        content.seek(0)
    done = False
    try:
        while not done:
            chunk = content.read(FORM_CHUNK) if content is not None else b""
            decoder.receive_data(chunk or None)
            while True:
                event = decoder.next_event()
                if isinstance(event, NeedData):
                    break
                if isinstance(event, Epilogue):
                    done = True
                    break
                if isinstance(event, File):
                    current = {"kind": "file", "event": event, "hash": hashlib.sha256(),
                               "size": 0, "head": b""}
                elif isinstance(event, Field):
                    current = {"kind": "field", "event": event, "value": bytearray()}
                elif isinstance(event, Data) and current is not None:
                    _absorb(current, event.data)
                    if not event.more_data:
                        _finish(current, fields, files)
                        current = None
            if not chunk:
                break
    except (ValueError, RequestEntityTooLarge) as e:
        raise FormError(f"malformed multipart/form-data body: {e}") from None
    if not done:
        raise FormError("malformed multipart/form-data body: no final boundary")
    return Form(fields, tuple(files))


def _absorb(current: dict[str, Any], data: bytes) -> None:
    if current["kind"] == "file":
        current["hash"].update(data)
        current["size"] += len(data)
        if len(current["head"]) < 64:
            current["head"] = (current["head"] + data)[:64]
        return
    if len(current["value"]) + len(data) > MAX_FIELD_BYTES:
        raise ValueError(f"field {current['event'].name!r} is too large")
    current["value"] += data


def _finish(current: dict[str, Any], fields: dict[str, list[str]],
            files: list[FormFile]) -> None:
    event = current["event"]
    if current["kind"] == "file":
        files.append(FormFile(
            field=event.name or "",
            filename=event.filename or "",
            contentType=event.headers.get("content-type", ""),
            size=current["size"],
            sha256=current["hash"].hexdigest(),
            head=current["head"],
        ))
    else:
        value = bytes(current["value"]).decode("utf-8", "replace")
        fields.setdefault(event.name or "", []).append(value)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def tinyPNG(seed: str, size: int = 2) -> bytes:
    """
    A valid C{size}x C{size} RGB PNG whose colour is a function of C{seed}.
    """
    r, g, b = hashlib.sha256(seed.encode("utf-8", "surrogatepass")).digest()[:3]
    row = b"\x00" + bytes((r, g, b)) * size
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(row * size)) + _chunk(b"IEND", b""))


def tinyPNGBase64(seed: str) -> str:
    """
    L{tinyPNG}, base64-encoded (the C{b64_json} of OpenAI image responses).
    """
    return base64.b64encode(tinyPNG(seed)).decode("ascii")


def speechAudio(model: str, voice: str, text: str, fmt: str) -> bytes:
    """
    Recognisable fake audio for C{/v1/audio/speech}: an ID3-like header,
    then a line naming the route, model, voice and input.
    """
    line = f"llamaswap-demo /v1/audio/speech model={model} voice={voice} format={fmt}\n{text}\n"
    return b"ID3\x04\x00\x00\x00\x00\x00\x00" + line.encode("utf-8", "replace")


def relevance(query: str, document: str) -> float:
    """
    A deterministic relevance score in [0, 1]: the cosine of the demo
    embeddings of C{query} and C{document}, mapped from [-1, 1].
    """
    q = embed(query)
    d = embed(document)
    cosine = sum(x * y for x, y in zip(q, d))
    return round((cosine + 1.0) / 2.0, 6)


def documentText(document: Any) -> str | None:
    """
    @return: the text of a rerank document (a string, or an object with
        C{text}), or L{None} when it is neither.
    """
    if isinstance(document, str):
        return document
    if isinstance(document, dict) and isinstance(document.get("text"), str):
        return document["text"]
    return None


def rankDocuments(query: str, documents: Sequence[str],
                  topN: int | None = None) -> list[tuple[int, float]]:
    """
    @return: C{(index, score)} pairs, best first (ties by index), at most
        C{topN}.
    """
    scored = [(i, relevance(query, doc)) for i, doc in enumerate(documents)]
    scored.sort(key=lambda pair: (-pair[1], pair[0]))
    return scored if topN is None else scored[:topN]
