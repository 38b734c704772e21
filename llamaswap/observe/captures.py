# -*- test-case-name: tests.test_observe_captures -*-
"""
Captures: the request and response of recorded exchanges, kept compressed
within a byte budget (SPEC.md sections 3.9 and 6.3) and served by
C{GET /api/captures/{id}}.

Compression is zlib (the reference uses CBOR + zstd; zlib is in the
standard library and does well on JSON and SSE text).  The response body is
compressed as it streams through L{CaptureRecorder}, so the uncompressed
body is never held in memory, and the budget is checked as it grows.

What is kept depends on the path:

    =========================================  ================================
    C{/v1/audio/speech}                        request all, response headers
    C{/v1/audio/voices},
    C{/v1/audio/transcriptions}                request headers, response all
    C{/v1/images/generations},
    C{/sdapi/v1/txt2img}                       request all, response headers
    C{/v1/images/edits}, C{/sdapi/v1/img2img}  headers only
    anything else                              everything
    =========================================  ================================

Header values of C{Authorization}, C{Proxy-Authorization}, C{Cookie},
C{Set-Cookie} and C{X-Api-Key} are stored as C{[REDACTED]};
C{Content-Encoding} is not stored with the response headers, since the body
is stored decompressed.  Only the first value of each header is kept, under
its canonical name (C{Content-Type}), as the reference does.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Iterable

import attr
from twisted.logger import Logger

REDACTED = "[REDACTED]"

#: Lower-case names of the headers whose values are never stored.
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"})

REQ_HEADERS = 1
REQ_BODY = 2
RESP_HEADERS = 4
RESP_BODY = 8
REQ_ALL = REQ_HEADERS | REQ_BODY
RESP_ALL = RESP_HEADERS | RESP_BODY
CAPTURE_ALL = REQ_ALL | RESP_ALL

#: Per-path capture fields; other paths capture everything.
PATH_FIELDS: dict[str, int] = {
    "/v1/audio/speech": REQ_ALL | RESP_HEADERS,
    "/v1/audio/voices": REQ_HEADERS | RESP_ALL,
    "/v1/audio/transcriptions": REQ_HEADERS | RESP_ALL,
    "/v1/images/generations": REQ_ALL | RESP_HEADERS,
    "/sdapi/v1/txt2img": REQ_ALL | RESP_HEADERS,
    "/v1/images/edits": REQ_HEADERS | RESP_HEADERS,
    "/sdapi/v1/img2img": REQ_HEADERS | RESP_HEADERS,
}

#: Bytes counted per stored item on top of its compressed parts.
ITEM_OVERHEAD = 64

_log = Logger(namespace="llamaswap.observe.captures")


def captureFields(path: str) -> int:
    """
    @return: the capture field flags (L{REQ_HEADERS} | L{REQ_BODY} |
        L{RESP_HEADERS} | L{RESP_BODY}) for a request path.
    """
    return PATH_FIELDS.get(path, CAPTURE_ALL)


_CANONICAL: dict[str | bytes, str] = {}


def canonicalName(name: str | bytes) -> str:
    """
    @return: C{name} as Go's C{CanonicalMIMEHeaderKey} writes it
        (C{content-type} -> C{Content-Type}).  Known names are remembered
        (up to a few thousand).
    """
    found = _CANONICAL.get(name)
    if found is not None:
        return found
    text = name.decode("latin-1") if isinstance(name, bytes) else name
    found = "-".join(part[:1].upper() + part[1:].lower() for part in text.split("-"))
    if len(_CANONICAL) < 4096:
        _CANONICAL[name] = found
    return found


def _pairs(headers: Any) -> Iterable[tuple[Any, Any]]:
    if headers is None:
        return []
    if hasattr(headers, "getAllRawHeaders"):
        return headers.getAllRawHeaders()
    if isinstance(headers, Mapping):
        return headers.items()
    return headers


def headerMap(headers: Any, drop: Iterable[str] = ()) -> dict[str, str]:
    """
    @param headers: a Twisted L{Headers}, a mapping, or pairs; values may
        be lists (the first is kept), bytes or text.
    @param drop: lower-case names to leave out.
    @return: canonical name -> first value, secrets redacted.
    """
    dropped = {name.lower() for name in drop}
    out: dict[str, str] = {}
    for name, value in _pairs(headers):
        key = canonicalName(name)
        lower = key.lower()
        if lower in dropped or key in out:
            continue
        if isinstance(value, (list, tuple)):
            if not value:
                continue
            value = value[0]
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        out[key] = REDACTED if lower in SECRET_HEADERS else str(value)
    return out


@attr.s(frozen=True, auto_attribs=True)
class Capture:
    """
    One exchange, uncompressed.  L{None} marks a part that was not
    captured.
    """

    id: int
    reqPath: str
    reqHeaders: dict[str, str] | None = None
    reqBody: bytes | None = None
    respHeaders: dict[str, str] | None = None
    respBody: bytes | None = None

    def asJSON(self) -> dict[str, Any]:
        """
        @return: the body of C{GET /api/captures/{id}}: bodies base64,
            absent parts C{null}.
        """

        def b64(body: bytes | None) -> str | None:
            return None if body is None else base64.b64encode(body).decode("ascii")

        return {
            "id": self.id,
            "req_path": self.reqPath,
            "req_headers": self.reqHeaders,
            "req_body": b64(self.reqBody),
            "resp_headers": self.respHeaders,
            "resp_body": b64(self.respBody),
        }


#: Bytes counted per header kept for a capture's metadata until it is read,
#: on top of its value: its name and what holds the two (a Twisted
#: L{Headers} of five ordinary headers takes about 180 bytes a header more
#: than its values, as tracemalloc counts it).
HEADER_OVERHEAD = 180


def _headerBytes(headers: Any) -> int:
    """
    @param headers: a Twisted L{Headers}, a mapping, or pairs, as a
        recorder was given them, or L{None}.
    @return: the bytes they count as while kept until a capture is read:
        the length of each header's first value, and L{HEADER_OVERHEAD}
        per header.
    """
    if headers is None:
        return 0
    size = 0
    for _, value in _pairs(headers):
        if type(value) is list or type(value) is tuple:
            value = value[0] if value else b""
        size += HEADER_OVERHEAD + len(value)
    return size


class _Stored:
    """
    One stored capture: its metadata (the path and the headers as the
    recorder was given them, made into header maps when read, or zlib'd
    JSON of them) and its zlib'd bodies.
    """

    __slots__ = ("meta", "reqBody", "respBody", "size")

    def __init__(self, meta: bytes | tuple, reqBody: bytes | None, respBody: bytes | None,
                 metaSize: int | None = None) -> None:
        self.meta = meta
        self.reqBody = reqBody
        self.respBody = respBody
        self.size = (ITEM_OVERHEAD + (len(meta) if metaSize is None else metaSize)
                     + len(reqBody or b"") + len(respBody or b""))

    def headers(self) -> tuple[str, dict | None, dict | None]:
        """
        @return: the path, and the request and response header maps.
        """
        if isinstance(self.meta, tuple):
            path, req, resp = self.meta
            return (path, None if req is None else headerMap(req),
                    None if resp is None else headerMap(resp, drop=("content-encoding",)))
        meta = json.loads(decompress(self.meta))
        return meta["p"], meta["q"], meta["r"]


def _compressor(level: int = 1):
    """
    @return: a zlib compressor with an 8 KiB window and a small hash
        table: zlib's defaults allocate (and free) a quarter MiB each time,
        ten times the cost of compressing a small body.  L{zlib.decompress}
        reads its output as usual.
    """
    return zlib.compressobj(level, zlib.DEFLATED, 13, 6)


#: Parts shorter than this are stored as they are, behind a zero byte (a
#: zlib stream never starts with one): compressing them costs more than it
#: saves.
SMALL = 512


def compress(data: bytes, level: int = 1) -> bytes:
    """
    @return: C{data} compressed (see L{_compressor}), or, when small,
        marked as stored raw.
    """
    if len(data) < SMALL:
        return b"\x00" + data
    c = _compressor(level)
    return c.compress(data) + c.flush()


def decompress(part: bytes) -> bytes:
    """
    @return: what L{compress} (or a L{CaptureRecorder}) stored as C{part}.
    """
    if part[:1] == b"\x00":
        return part[1:]
    return zlib.decompress(part)


def _meta(reqPath: str, reqHeaders: dict | None, respHeaders: dict | None) -> bytes:
    return compress(json.dumps(
        {"p": reqPath, "q": reqHeaders, "r": respHeaders},
        separators=(",", ":")).encode("utf-8"))


class CaptureStore:
    """
    Captures by activity id, compressed, oldest evicted first when the byte
    budget is exceeded; an item bigger than the whole budget is not stored.

    @ivar maxBytes: the budget (C{captureBuffer} MB x 1048576); 0 disables.
    @ivar usedBytes: bytes held now (compressed, plus a small per-item
        overhead).
    @ivar evicted: how many captures were evicted to make room.
    @ivar skipped: how many were too big to store.
    """

    def __init__(self, maxBytes: int) -> None:
        self.maxBytes = max(0, int(maxBytes))
        self.usedBytes = 0
        self.evicted = 0
        self.skipped = 0
        self._items: OrderedDict[int, _Stored] = OrderedDict()

    @classmethod
    def fromConfig(cls, captureBufferMB: int) -> CaptureStore:
        """
        @return: a store of C{captureBufferMB} x 1048576 bytes.
        """
        return cls(max(0, int(captureBufferMB)) * 1048576)

    @property
    def enabled(self) -> bool:
        """
        Whether captures are kept at all.
        """
        return self.maxBytes > 0

    def add(self, capture: Capture) -> bool:
        """
        Compress and store C{capture} under its id.

        @return: whether it was stored.
        """
        if not self.enabled:
            return False
        stored = _Stored(
            _meta(capture.reqPath, capture.reqHeaders, capture.respHeaders),
            None if capture.reqBody is None else compress(capture.reqBody),
            None if capture.respBody is None else compress(capture.respBody))
        return self._put(capture.id, stored)

    def _put(self, captureId: int, stored: _Stored) -> bool:
        size = stored.size
        if size > self.maxBytes:
            self.skipped += 1
            _log.warn("capture {id} too large ({size} bytes), skipping", id=captureId, size=size)
            return False
        old = self._items.pop(captureId, None)
        if old is not None:
            self.usedBytes -= old.size
        while self._items and self.usedBytes + size > self.maxBytes:
            _, evicted = self._items.popitem(last=False)
            self.usedBytes -= evicted.size
            self.evicted += 1
        self._items[captureId] = stored
        self.usedBytes += size
        return True

    def resize(self, maxBytes: int) -> None:
        """
        Change the budget (a config reload); the oldest captures go first
        when it shrank.
        """
        self.maxBytes = max(0, int(maxBytes))
        while self._items and self.usedBytes > self.maxBytes:
            _, evicted = self._items.popitem(last=False)
            self.usedBytes -= evicted.size
            self.evicted += 1

    def has(self, captureId: int) -> bool:
        """
        @return: whether capture C{captureId} is stored.
        """
        return captureId in self._items

    def capture(self, captureId: int) -> Capture | None:
        """
        @return: the decompressed L{Capture}, or L{None} if it is not
            stored (or cannot be read back).
        """
        stored = self._items.get(captureId)
        if stored is None:
            return None
        try:
            path, reqHeaders, respHeaders = stored.headers()
            return Capture(
                id=captureId, reqPath=path, reqHeaders=reqHeaders,
                reqBody=None if stored.reqBody is None else decompress(stored.reqBody),
                respHeaders=respHeaders,
                respBody=None if stored.respBody is None else decompress(stored.respBody))
        except (zlib.error, ValueError, KeyError):
            _log.failure("failed to decompress capture {id}", id=captureId)
            return None

    def get(self, captureId: int) -> dict[str, Any] | None:
        """
        @return: the JSON body of C{GET /api/captures/{id}}, or L{None}
            (404 C{capture not found}).
        """
        capture = self.capture(captureId)
        return None if capture is None else capture.asJSON()

    def __len__(self) -> int:
        return len(self._items)


class CaptureRecorder:
    """
    Records one exchange for a L{CaptureStore} while it is relayed.

        recorder = CaptureRecorder(store, "/v1/chat/completions",
                                   request.requestHeaders, body)
        recorder.response(200, response.headers)
        recorder.data(decodedChunk)      # each decompressed response piece
        hasCapture = recorder.commit(activityId)

    The response body is compressed as it arrives; once the compressed
    size of the exchange passes the store's budget, the recorder stops
    keeping bytes and the exchange is not captured.  Only a 200 answer with
    a non-empty body is captured, as in the reference.

    @ivar fields: the capture field flags for the path.
    @ivar active: whether this exchange may still be captured.
    @ivar overflowed: the budget was exceeded.
    """

    def __init__(self, store: CaptureStore, reqPath: str, reqHeaders: Any = None,
                 reqBody: bytes | None = None, level: int = 1) -> None:
        """
        @param store: where L{commit} stores the capture.
        @param reqPath: the request path (it picks the fields).
        @param reqHeaders: the client's request headers (L{Headers},
            mapping or pairs).
        @param reqBody: the request body as received.
        @param level: the zlib compression level.
        """
        self.store = store
        self.reqPath = reqPath
        self.fields = captureFields(reqPath)
        self.active = store.enabled
        self.overflowed = False
        self.status: int | None = None
        self.bodyBytes = 0
        self._level = level
        # Kept as given (a relayed request's headers no longer change),
        # and made into a header map only when the capture is read.
        self._reqHeaders = reqHeaders if self.fields & REQ_HEADERS else None
        self._reqBody: bytes | None = None
        self._respHeaders: Any = None
        self._resp: Any = None
        self._respWanted = False
        self._respRaw: list[bytes] = []
        self._rawSize = 0
        self._respParts: list[bytes] = []
        self._size = 0
        if self.active and self.fields & REQ_BODY:
            self._reqBody = compress(reqBody or b"", level)
            self._grow(len(self._reqBody))

    def response(self, status: int, headers: Any = None) -> None:
        """
        The upstream answered with C{status} and C{headers}.
        """
        self.status = status
        if status != 200:
            self.active = False
            return
        if self.active and self.fields & RESP_HEADERS:
            self._respHeaders = headers
        if self.active and self.fields & RESP_BODY:
            # Kept raw while small; compressed once past SMALL bytes.
            self._respWanted = True

    def data(self, chunk: bytes) -> None:
        """
        Take the next piece of the (decompressed) response body.
        """
        if not chunk:
            return
        size = len(chunk)
        self.bodyBytes += size
        if not self._respWanted:
            return
        if self._resp is None:
            self._respRaw.append(chunk)
            self._rawSize += size
            self._grow(size)
            if not self._respWanted or self._rawSize < SMALL:
                return
            chunk, self._respRaw = b"".join(self._respRaw), []
            self._size -= self._rawSize
            self._resp = _compressor(self._level)
        out = self._resp.compress(chunk)
        if out:
            self._respParts.append(out)
            self._grow(len(out))

    def commit(self, captureId: int) -> bool:
        """
        Store the capture under C{captureId} (the activity id).  Only the
        first call may store.

        @return: whether it was stored.
        """
        if not self.active or self.status != 200 or not self.bodyBytes:
            self._drop()
            return False
        respBody = None
        if self._resp is not None:
            self._respParts.append(self._resp.flush())
            respBody = b"".join(self._respParts)
        elif self._respWanted:
            respBody = b"\x00" + b"".join(self._respRaw)
        self.active = self._respWanted = False  # only the first call stores
        reqHeaders, respHeaders = self._reqHeaders, self._respHeaders
        metaSize = len(self.reqPath) + _headerBytes(reqHeaders) + _headerBytes(respHeaders)
        stored = _Stored((self.reqPath, reqHeaders, respHeaders), self._reqBody, respBody,
                         metaSize)
        return self.store._put(captureId, stored)

    def _grow(self, n: int) -> None:
        self._size += n
        if self._size > self.store.maxBytes:
            self._overflow()

    def _overflow(self) -> None:
        self.overflowed = True
        _log.info("capture of {path} exceeds the {limit} byte budget, not captured",
                  path=self.reqPath, limit=self.store.maxBytes)
        self._drop()

    def _drop(self) -> None:
        self.active = self._respWanted = False
        self._resp = None
        self._respParts = []
        self._respRaw = []
        self._reqBody = None
