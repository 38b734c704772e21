# -*- test-case-name: tests.test_multipart -*-
"""
C{multipart/form-data} request bodies (C{/v1/audio/transcriptions},
C{/v1/images/edits}): finding the C{model} (and C{stream}) fields, and
sending the body upstream with the C{model} field's value replaced.

twisted.web has already stored the whole body before a resource renders:
in memory up to 100 kB, in a temporary file beyond (STYLE.md pitfall 14).
Either way C{request.content} is a seekable file object, and this module
only ever reads it in bounded chunks:

    - L{inspectMultipart} scans the body once, chunk by chunk, keeping in
      memory only the current chunk, part headers and the (small) values
      of the C{model} and C{stream} fields.  File parts are skipped, never
      held.  It records where the C{model} value lies in the body.
    - L{SplicedFileProducer} is the L{IBodyProducer} that sends the body
      upstream: the file's bytes in chunks, with byte ranges replaced (the
      C{model} value by C{useModelName}).  The boundary and every other
      byte are kept, so C{Content-Type} does not change; its C{length} is
      the new body length.

Unlike the reference, which re-encodes the form with a new boundary, the
rewritten body differs from the client's only in the C{model} value.

The scanner follows Go's C{mime/multipart} reader, which the reference
uses: lines end with CRLF, or with LF alone when the first boundary line
does; a delimiter is C{<newline>--boundary} followed by C{--}, white space
or a newline; parts without a C{name} are skipped; a part with a non-empty
C{filename} is a file; the first value of a field wins.
"""

from __future__ import annotations

from typing import Callable, Sequence

import attr
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from werkzeug.http import parse_options_header
from zope.interface import implementer

from llamaswap.errors import BadRequest, NoModelIdentified

#: Bytes read from the body file at a time.
CHUNK_SIZE = 64 * 1024

#: The most bytes of part headers accepted (one part).
MAX_HEADER_BYTES = 64 * 1024

#: The most bytes kept of a captured field value (C{model}, C{stream}).
MAX_VALUE_BYTES = 64 * 1024

#: The longest boundary line (boundary plus transport padding) accepted.
MAX_BOUNDARY_LINE = 8 * 1024

#: The fields L{inspectMultipart} reads.
CAPTURED_FIELDS = frozenset({"model", "stream"})


class MultipartError(BadRequest):
    """
    A malformed C{multipart/form-data} body: 400 with the reference's
    message C{error parsing multipart form: ...}.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(f"error parsing multipart form: {detail}")
        self.detail = detail


@attr.s(frozen=True, auto_attribs=True)
class Part:
    """
    One part of a form.

    @ivar name: the C{name} of its C{Content-Disposition} (C{""} for none).
    @ivar filename: its C{filename}, or L{None} (a field, not a file).
    @ivar headers: its headers, names lower-cased (first value kept).
    @ivar start: the offset in the body of its first content byte.
    @ivar end: the offset in the body just after its last content byte.
    @ivar value: its content, for captured fields only (else L{None}).
    """

    name: str
    filename: str | None
    headers: dict
    start: int
    end: int
    value: bytes | None = None


@attr.s(frozen=True, auto_attribs=True)
class MultipartForm:
    """
    What llamaswap reads from a form.

    @ivar boundary: the boundary of C{Content-Type}.
    @ivar model: the first C{model} field's value.
    @ivar stream: whether the first C{stream} field is C{"true"}.
    @ivar modelStart: the offset in the body of the C{model} value.
    @ivar modelEnd: the offset just after it.
    @ivar length: the body's length in bytes.
    @ivar parts: every named part, in order.
    """

    boundary: bytes
    model: str
    stream: bool
    modelStart: int
    modelEnd: int
    length: int
    parts: tuple = ()


def boundaryOf(contentType: bytes | str | None) -> bytes:
    """
    @return: the C{boundary} parameter of a C{multipart/form-data}
        C{Content-Type}.
    @raise MultipartError: when there is none.
    """
    if isinstance(contentType, bytes):
        contentType = contentType.decode("latin-1")
    mediaType, params = parse_options_header(contentType or "")
    if not mediaType.lower().startswith("multipart/"):
        raise MultipartError("request Content-Type isn't multipart/form-data")
    boundary = params.get("boundary", "")
    if not boundary:
        raise MultipartError("no multipart boundary param in Content-Type")
    try:
        return boundary.encode("latin-1")
    except UnicodeEncodeError:
        raise MultipartError("invalid multipart boundary") from None


def isMultipart(contentType: bytes | str | None) -> bool:
    """
    @return: whether C{contentType} is C{multipart/form-data} (how SPEC.md
        section 3.4 picks the form extraction).
    """
    if isinstance(contentType, bytes):
        contentType = contentType.decode("latin-1")
    return "multipart/form-data" in (contentType or "").lower()


def inspectMultipart(content, contentType: bytes | str | None,
                     chunkSize: int = CHUNK_SIZE) -> MultipartForm:
    """
    Find the C{model} and C{stream} fields of a form body, reading it in
    chunks of at most C{chunkSize} bytes.

    @param content: the body: a seekable binary file (C{request.content}).
        Its position is undefined afterwards.
    @param contentType: the request's C{Content-Type}.

    @raise MultipartError: for a missing boundary or a malformed body.
    @raise NoModelIdentified: when there is no non-empty C{model} field.
    """
    boundary = boundaryOf(contentType)
    seen: set[str] = set()

    def capture(part: Part) -> bool:
        # The first value of each field wins: keep only those.
        if part.filename is None and part.name in CAPTURED_FIELDS and part.name not in seen:
            seen.add(part.name)
            return True
        return False

    parts = scanParts(content, boundary, capture, chunkSize=chunkSize)
    model = stream = None
    for part in parts:
        if part.value is None:
            continue
        if part.name == "model" and model is None:
            model = part
        elif part.name == "stream" and stream is None:
            stream = part
    if model is None or not model.value:
        raise NoModelIdentified()
    content.seek(0, 2)
    length = content.tell()
    return MultipartForm(
        boundary=boundary,
        model=model.value.decode("utf-8", "replace"),
        stream=stream is not None and stream.value == b"true",
        modelStart=model.start,
        modelEnd=model.end,
        length=length,
        parts=tuple(parts),
    )


def scanParts(
    content,
    boundary: bytes,
    capture: Callable[[Part], bool] = lambda part: False,
    chunkSize: int = CHUNK_SIZE,
    maxValue: int = MAX_VALUE_BYTES,
) -> list:
    """
    Parse a multipart body incrementally.

    @param content: a seekable binary file; read from its start.
    @param boundary: the boundary (without the leading C{--}).
    @param capture: called with each named part (C{value} still L{None});
        a C{True} answer keeps that part's content, up to C{maxValue}
        bytes, as its L{Part.value}.
    @param chunkSize: the most bytes read at once.

    @return: the named L{Part}s in order (parts without a C{name} are
        skipped, as the reference does).

    @raise MultipartError: for a malformed body or a captured value larger
        than C{maxValue}.
    """
    if chunkSize <= 0:
        raise ValueError("chunkSize must be positive")
    content.seek(0)
    return _Scanner(content.read, boundary, capture, chunkSize, maxValue).run()


class _Scanner:
    """
    The state of one scan: a window C{buf} on the body, starting at offset
    C{base}, refilled C{chunkSize} bytes at a time.
    """

    def __init__(self, read, boundary: bytes, capture, chunkSize: int, maxValue: int) -> None:
        self.read = read
        self.dashBoundary = b"--" + boundary
        self.capture = capture
        self.chunkSize = chunkSize
        self.maxValue = maxValue
        self.buf = bytearray()
        self.base = 0
        self.eof = False
        self.nl = b"\r\n"
        self.fill()

    def fill(self) -> None:
        """
        Read one more chunk; at the end of the body set C{eof}.
        """
        data = self.read(self.chunkSize)
        if data:
            self.buf += data
        else:
            self.eof = True

    def more(self, message: str = "unexpected EOF") -> None:
        """
        Read one more chunk because the window cannot be judged yet.

        @raise MultipartError: with C{message} when the body has ended.
        """
        if self.eof:
            raise MultipartError(message)
        self.fill()

    def consume(self, count: int) -> None:
        del self.buf[:count]
        self.base += count

    def run(self) -> list:
        if self.firstBoundary():
            return []
        parts = []
        while True:
            part = self.headers()
            keep = part.name != "" and self.capture(part)
            value, end, final = self.body(keep)
            if part.name:
                parts.append(attr.evolve(part, end=end, value=value if keep else None))
            if final:
                return parts

    # -- the first boundary line ----------------------------------------------

    def firstBoundary(self) -> bool:
        """
        Skip the preamble and the first boundary line, and choose the
        newline (C{self.nl}) from it.

        @return: whether that line was the final delimiter (a form without
            parts).
        """
        while True:
            verdict = self._findFirst()
            if verdict is not None:
                return verdict
            if len(self.buf) > MAX_BOUNDARY_LINE + len(self.dashBoundary) + 1:
                raise MultipartError("multipart: boundary line too long")
            self.more("multipart: NextPart: EOF")

    def _findFirst(self) -> bool | None:
        """
        Look for the first boundary line (C{--boundary} at the start of a
        line) in the window, dropping the preamble before it.

        @return: whether it is the final delimiter, or L{None} when more
            data is needed.
        """
        dash = self.dashBoundary
        index = self.buf.find(dash)
        while index >= 0:
            # The window keeps the byte before any candidate it still holds
            # (see below), so "start of a line" can always be checked.
            if (index == 0 and self.base == 0) or (index > 0 and self.buf[index - 1] == 0x0A):
                line = self._boundaryLine(index + len(dash))
                if line is None:
                    if index > 1:
                        self.consume(index - 1)
                    return None
                if line is not False:
                    end, final, nl = line
                    self.nl = nl
                    self.consume(end)
                    return final
            index = self.buf.find(dash, index + 1)
        keep = len(dash) + 1
        if len(self.buf) > keep:
            self.consume(len(self.buf) - keep)
        return None

    def _boundaryLine(self, after: int):
        """
        Judge a boundary line whose C{--boundary} ends at C{after}: it may
        be followed by C{--} (final), then white space, then a newline (or,
        for the final one, the end of the body).

        @return: C{(offset past the line, final, newline)}, C{False} when it
            is not a boundary line, or L{None} when more data is needed.
        """
        buf = self.buf
        final = buf[after:after + 2] == b"--"
        i = after + 2 if final else after
        while i < len(buf) and buf[i] in b" \t":
            i += 1
        if i + 2 > len(buf) and not self.eof:
            return None
        if buf[i:i + 2] == b"\r\n":
            return i + 2, final, b"\r\n"
        if buf[i:i + 1] == b"\n":
            return i + 1, final, b"\n"
        if final and i == len(buf):
            return i, True, b"\r\n"
        return False

    # -- part headers -----------------------------------------------------------

    def headers(self) -> Part:
        """
        Read one part's header block; the window then starts at its content.
        """
        nl = self.nl
        while True:
            if self.buf.startswith(nl):
                block = b""
                self.consume(len(nl))
                break
            end = self.buf.find(nl + nl)
            if end >= 0:
                block = bytes(self.buf[:end])
                self.consume(end + 2 * len(nl))
                break
            if len(self.buf) > MAX_HEADER_BYTES:
                raise MultipartError("multipart: message too large")
            self.more()
        headers = _parseHeaders(block, nl)
        disposition, params = parse_options_header(headers.get("content-disposition", ""))
        name = params.get("name", "") if disposition.lower() == "form-data" else ""
        filename = params.get("filename") or None
        return Part(name, filename, headers, self.base, self.base)

    # -- part content -----------------------------------------------------------

    def body(self, keep: bool) -> tuple[bytes | None, int, bool]:
        """
        Read one part's content up to the next delimiter, and the rest of
        the delimiter line.

        @param keep: whether to return the content (else it is dropped as
            it is read).

        @return: C{(content or None, offset just past it, final)}: C{final}
            when the delimiter was the last one.
        """
        delimiter = self.nl + self.dashBoundary
        value = bytearray() if keep else None
        while True:
            index = self.buf.find(delimiter)
            while index >= 0:
                verdict = self._matchAfter(index + len(delimiter))
                if verdict is None:
                    settled = index
                    break
                if verdict:
                    self._keep(value, index)
                    end = self.base + index
                    self.consume(index + len(delimiter))
                    final = self._delimiterLine()
                    return (None if value is None else bytes(value)), end, final
                index = self.buf.find(delimiter, index + 1)
            else:
                # No delimiter can start before this point.
                settled = max(0, len(self.buf) - len(delimiter) + 1)
            self._keep(value, settled)
            self.consume(settled)
            self.more()

    def _keep(self, value: bytearray | None, count: int) -> None:
        if value is None or count == 0:
            return
        if len(value) + count > self.maxValue:
            raise MultipartError("multipart: message too large")
        value += self.buf[:count]

    def _matchAfter(self, after: int) -> bool | None:
        """
        Go's C{matchAfterPrefix}: whether C{<newline>--boundary} ending at
        C{after} is a delimiter (followed by C{--}, white space, a newline
        or the end of the body), or L{None} when more data is needed.
        """
        rest = self.buf[after:after + 2]
        if not rest:
            return True if self.eof else None
        c = rest[0]
        if c in b" \t\r\n":
            return True
        if c == 0x2D:  # "-"
            if len(rest) == 1:
                return False if self.eof else None
            return rest[1] == 0x2D
        return False

    def _delimiterLine(self) -> bool:
        """
        Read the rest of a delimiter line (the window starts just after
        C{--boundary}).

        @return: whether it was the final delimiter.
        """
        while True:
            line = self._boundaryLine(0)
            if line is not None:
                break
            if len(self.buf) > MAX_BOUNDARY_LINE:
                line = False
                break
            self.fill()
        if line is False or line[2] != self.nl and not (line[1] and line[0] == len(self.buf)):
            shown = bytes(self.dashBoundary + self.buf[:40])
            raise MultipartError(f"multipart: expecting a new Part; got line {shown!r}")
        end, final, _ = line
        self.consume(end)
        return final


def _parseHeaders(block: bytes, nl: bytes) -> dict:
    """
    Parse a part's header block into a dict (names lower-cased, the first
    value of each name kept, folded lines joined).

    @raise MultipartError: for a line that is not a header.
    """
    headers: dict[str, str] = {}
    if not block:
        return headers
    lines: list[bytes] = []
    for line in block.split(nl):
        if line[:1] in (b" ", b"\t") and lines:
            lines[-1] += b" " + line.strip()
        else:
            lines.append(line)
    for line in lines:
        name, colon, value = line.partition(b":")
        name = name.strip()
        if not colon or not name or b" " in name:
            shown = line[:80].decode("latin-1")
            raise MultipartError(f"malformed MIME header line: {shown}")
        try:
            text = value.strip().decode("utf-8")
        except UnicodeDecodeError:
            text = value.strip().decode("latin-1")
        headers.setdefault(name.decode("latin-1").lower(), text)
    return headers


@implementer(IBodyProducer, IPushProducer)
class SplicedFileProducer:
    """
    Streams a body file upstream with some byte ranges replaced, reading
    at most C{chunkSize} bytes at a time.

    It is a push producer: L{twisted.web.client.Agent} registers it with
    the upstream connection, which pauses it when its send buffer is full
    and resumes it when the buffer drains, so at most about one chunk is
    read ahead of the socket.

    With a C{clock}, it also yields to the reactor after writing
    C{chunksPerTurn} chunks without being paused, and goes on in a
    C{callLater(0)}: a consumer that never pauses it (one that buffers
    everything) cannot hold the reactor for the whole body.  Without one,
    it writes until paused or done.

    Reads seek to the producer's own position first, so other readers of
    the same file do not disturb it.  A read error (such as the client
    disconnecting, which closes C{request.content}) fails the L{Deferred}
    of L{startProducing}.

    @ivar length: the length of the body it produces.
    """

    def __init__(
        self,
        content,
        length: int,
        replacements: Sequence[tuple[int, int, bytes]] = (),
        clock: IReactorTime | None = None,
        chunkSize: int = CHUNK_SIZE,
        chunksPerTurn: int = 16,
    ) -> None:
        """
        @param content: the seekable binary file holding the client's body.
        @param length: the client's body length (the file's size).
        @param replacements: C{(start, end, data)}: the bytes
            C{[start, end)} of the file are sent as C{data} instead.  They
            must not overlap.
        """
        if chunkSize <= 0 or chunksPerTurn <= 0:
            raise ValueError("chunkSize and chunksPerTurn must be positive")
        self._content = content
        self._clock = clock
        self._chunkSize = chunkSize
        self._chunksPerTurn = chunksPerTurn
        self._segments = _segments(length, replacements)
        self.length = sum(
            (end - start) if data is None else len(data)
            for start, end, data in self._segments
        )
        self._index = 0
        self._offset = 0
        self._consumer: IConsumer | None = None
        self._done: Deferred[None] | None = None
        self._paused = False
        self._stopped = False
        self._running = False
        self._call: IDelayedCall | None = None

    def startProducing(self, consumer) -> Deferred[None]:
        """
        Write the body to C{consumer}.

        @return: a L{Deferred} that fires with L{None} once all of it was
            written, fails on a read error, and never fires after
            L{stopProducing}.
        """
        self._consumer = consumer
        self._done = Deferred()
        self._produce()
        return self._done

    def pauseProducing(self) -> None:
        self._paused = True
        self._cancelCall()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._done is not None:
            self._produce()

    def stopProducing(self) -> None:
        self._stopped = True
        self._cancelCall()

    def _cancelCall(self) -> None:
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _next(self) -> bytes | None:
        """
        @return: the next chunk, or L{None} at the end.
        """
        while self._index < len(self._segments):
            start, end, data = self._segments[self._index]
            if data is not None:
                self._index += 1
                if data:
                    return data
                continue
            position = start + self._offset
            if position >= end:
                self._index += 1
                self._offset = 0
                continue
            self._content.seek(position)
            chunk = self._content.read(min(self._chunkSize, end - position))
            if not chunk:
                raise OSError(f"request body ended at {position} of {end} bytes")
            self._offset += len(chunk)
            return chunk
        return None

    def _produce(self) -> None:
        if self._running or self._done is None or self._done.called:
            return
        self._running = True
        try:
            written = 0
            while not self._paused and not self._stopped:
                if self._clock is not None and written >= self._chunksPerTurn:
                    self._call = self._clock.callLater(0, self._turn)
                    return
                try:
                    chunk = self._next()
                except Exception:
                    self._stopped = True
                    self._done.errback(Failure())
                    return
                if chunk is None:
                    self._stopped = True
                    self._done.callback(None)
                    return
                assert self._consumer is not None  # set by startProducing
                self._consumer.write(chunk)
                written += 1
        finally:
            self._running = False

    def _turn(self) -> None:
        self._call = None
        self._produce()


def _segments(length: int, replacements: Sequence[tuple[int, int, bytes]]):
    """
    @return: C{(start, end, None)} file ranges and C{(start, end, data)}
        replacements covering C{[0, length)} in order.
    """
    segments: list[tuple[int, int, bytes | None]] = []
    position = 0
    for start, end, data in sorted(replacements, key=lambda r: r[0]):
        if not position <= start <= end <= length:
            raise ValueError(f"bad replacement range {start}..{end} of {length} bytes")
        if start > position:
            segments.append((position, start, None))
        segments.append((start, end, bytes(data)))
        position = end
    if position < length:
        segments.append((position, length, None))
    return segments


def modelRewriteProducer(content, form: MultipartForm, model: str,
                         clock: IReactorTime | None = None,
                         chunkSize: int = CHUNK_SIZE) -> SplicedFileProducer:
    """
    The body of C{form} with its first C{model} field's value replaced by
    C{model} (C{useModelName}); every other byte, the boundary included,
    unchanged.  Send it with the client's C{Content-Type} and without the
    client's C{Content-Length} (L{twisted.web.client.Agent} writes the
    producer's C{length}).
    """
    return SplicedFileProducer(
        content, form.length,
        [(form.modelStart, form.modelEnd, model.encode("utf-8"))],
        clock=clock, chunkSize=chunkSize)


def bodyProducer(content, form: MultipartForm, model: str = "",
                 clock: IReactorTime | None = None) -> SplicedFileProducer:
    """
    The producer to send C{form}'s body upstream with: rewritten by
    L{modelRewriteProducer} when C{model} (C{useModelName}) is given and
    differs, else the client's bytes as they are, still read in chunks.
    """
    if model and model != form.model:
        return modelRewriteProducer(content, form, model, clock)
    return SplicedFileProducer(content, form.length, clock=clock)


__all__ = [
    "CHUNK_SIZE",
    "MultipartError",
    "MultipartForm",
    "Part",
    "SplicedFileProducer",
    "boundaryOf",
    "bodyProducer",
    "inspectMultipart",
    "isMultipart",
    "modelRewriteProducer",
    "scanParts",
]
