# -*- test-case-name: tests.test_observe_tokens -*-
"""
Token usage of relayed answers, read as they pass (SPEC.md section 6.2).

Nothing here buffers a whole streamed answer: L{SSEUsageParser} keeps only
the unfinished last line and the latest usage and timings it has seen;
L{JSONUsageParser} holds a non-streamed body up to a size cap; compressed
bodies are inflated as they arrive by L{BodyDecoder}.  L{UsageMeter} puts
the three together for one response.

    meter = UsageMeter(path, contentType, contentEncoding)
    for chunk in chunks:          # as relayed to the client
        meter.feed(chunk)
    usage = meter.finish()        # a TokenUsage, or None: no usage found
    record = activity.add(model, path, contentType, status,
                          tokens=usage, durationMs=usage.durationMs(wallMs))
"""

from __future__ import annotations

import json
import zlib
from typing import Any, Callable, Iterable

import attr
from twisted.logger import Logger


#: Non-streamed bodies larger than this are not parsed for tokens.
DEFAULT_MAX_JSON_BYTES = 8 * 1024 * 1024

#: An SSE line longer than this is skipped (a usage line is small).
DEFAULT_MAX_LINE = 1024 * 1024

#: Decompressed bytes produced per step, and in all, for one body.
DECODE_PIECE = 64 * 1024
DEFAULT_MAX_DECODED = 256 * 1024 * 1024

_log = Logger(namespace="llamaswap.observe.tokens")


def _number(value: Any) -> float:
    """
    A JSON value as a number, as gjson's C{Int()}/C{Float()} read it: 0 for
    anything that is not a number or a numeric string.
    """
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return 0.0
    return 0.0


def _int(value: Any) -> int:
    if type(value) is int:  # the usual count, taken as it is
        return value
    return int(_number(value))


def _first(mapping: dict, *paths: tuple[str, ...]) -> Any:
    """
    @param paths: key paths (C{("input_tokens_details", "cached_tokens")}
        descends into objects).
    @return: the value at the first of C{paths} present in C{mapping}, or
        L{None}.
    """
    for path in paths:
        node: Any = mapping
        for part in path:
            if type(node) is not dict:
                node = None
                break
            node = node.get(part)
        if node is not None:
            return node
    return None


_INPUT = (("prompt_tokens",), ("input_tokens",))
_OUTPUT = (("completion_tokens",), ("output_tokens",))
_USAGE_PATHS = (("usage",), ("response", "usage"), ("message", "usage"))
_CACHED = (("cache_read_input_tokens",), ("input_tokens_details", "cached_tokens"),
           ("prompt_tokens_details", "cached_tokens"))


@attr.s(frozen=True, auto_attribs=True)
class TokenUsage:
    """
    The token counts of one answer, as the reference reports them.

    @ivar cacheTokens: prompt tokens served from cache; -1 when unknown.
    @ivar inputTokens: prompt tokens.
    @ivar outputTokens: generated tokens.
    @ivar promptPerSecond: prompt processing speed; -1 without timings.
    @ivar tokensPerSecond: generation speed; -1 without timings.
    @ivar timingsMs: C{prompt_ms + predicted_ms} of llama-server timings,
        or L{None} without timings.
    """

    cacheTokens: int = -1
    inputTokens: int = 0
    outputTokens: int = 0
    promptPerSecond: float = -1.0
    tokensPerSecond: float = -1.0
    timingsMs: float | None = None

    def durationMs(self, wallMs: float) -> int:
        """
        @param wallMs: the request's wall-clock duration in milliseconds.
        @return: the duration to report: the larger of C{wallMs} and the
            timings' C{prompt_ms + predicted_ms} (whole milliseconds).
        """
        # Whole milliseconds, truncated as Go does; the epsilon absorbs the
        # float noise of clock arithmetic (1.3 s must not become 1299 ms).
        duration = int(wallMs + 1e-6)
        if self.timingsMs is not None and int(self.timingsMs + 1e-6) > duration:
            duration = int(self.timingsMs + 1e-6)
        return duration

    def asJSON(self) -> dict[str, Any]:
        """
        @return: the C{tokens} object of an activity entry.
        """
        return {
            "cache_tokens": self.cacheTokens,
            "input_tokens": self.inputTokens,
            "output_tokens": self.outputTokens,
            "prompt_per_second": self.promptPerSecond,
            "tokens_per_second": self.tokensPerSecond,
        }


#: Zero tokens: a non-200 answer, an empty body, or no usage found.
NO_TOKENS = TokenUsage()


def _usageCounts(usage: dict) -> tuple[int, int, int | None]:
    """
    @return: C{(input, output, cached or None)} of a C{usage} object.
    """
    inputTokens = _int(_first(usage, *_INPUT))
    outputTokens = _int(_first(usage, *_OUTPUT))
    cached = _first(usage, *_CACHED)
    return inputTokens, outputTokens, (None if cached is None else _int(cached))


def usageFromObjects(usage: Any, timings: Any) -> TokenUsage:
    """
    The token metrics of a C{usage} object and llama-server C{timings}
    (either may be L{None}), by the rules of SPEC.md section 6.2: usage
    gives input (C{prompt_tokens} | C{input_tokens}), output
    (C{completion_tokens} | C{output_tokens}) and cached
    (C{cache_read_input_tokens} | C{input_tokens_details.cached_tokens} |
    C{prompt_tokens_details.cached_tokens} | -1); timings override input
    (C{prompt_n}), output (C{predicted_n}), cached (C{cache_n}, when
    present) and set both speeds and C{timingsMs}.

    @return: a L{TokenUsage}.
    """
    cached = -1
    inputTokens = outputTokens = 0
    promptPerSecond = tokensPerSecond = -1.0
    timingsMs = None
    if isinstance(usage, dict):
        inputTokens, outputTokens, known = _usageCounts(usage)
        if known is not None:
            cached = known
    if isinstance(timings, dict):
        inputTokens = _int(timings.get("prompt_n"))
        outputTokens = _int(timings.get("predicted_n"))
        promptPerSecond = _number(timings.get("prompt_per_second"))
        tokensPerSecond = _number(timings.get("predicted_per_second"))
        timingsMs = _number(timings.get("prompt_ms")) + _number(timings.get("predicted_ms"))
        if timings.get("cache_n") is not None:
            cached = _int(timings["cache_n"])
    return TokenUsage(cached, inputTokens, outputTokens, promptPerSecond, tokensPerSecond,
                      timingsMs)


def filterAcceptEncoding(value: str | bytes | None) -> str:
    """
    Keep only the codings L{BodyDecoder} can read, so that token metrics
    work on compressed answers (SPEC.md section 3.4, metrics layer): the
    relay sends the result upstream as C{Accept-Encoding}.

    @return: C{"gzip, deflate"} for C{"gzip, deflate, br"}; C{""} for
        C{"br, zstd"} (the caller then drops the header).
    """
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    kept = []
    for part in (value or "").split(","):
        part = part.strip()
        coding = part.split(";", 1)[0].strip().lower()
        if coding in ("gzip", "deflate"):
            kept.append(part)
    return ", ".join(kept)


class BodyDecoder:
    """
    Inflates a response body chunk by chunk (C{zlib.decompressobj}), in
    pieces of at most L{DECODE_PIECE} bytes and at most C{maxOutput} bytes
    in all, so that a small compressed chunk never becomes one huge string.

    Encodings: none/C{identity} (passed through), C{gzip}/C{x-gzip}
    (several members are fine) and C{deflate} (zlib-wrapped as RFC 9110
    says, or raw DEFLATE as some servers send it: told apart by the first
    two bytes).  Others (C{br}, C{zstd}, a list of codings) are not
    supported: L{decode} returns nothing.

    @ivar supported: whether the encoding can be decoded.
    @ivar failed: the data was corrupt; nothing more is produced.
    @ivar truncated: C{maxOutput} was reached; nothing more is produced.
    @ivar produced: decoded bytes produced so far.
    """

    def __init__(self, encoding: str | bytes | None, maxOutput: int = DEFAULT_MAX_DECODED) -> None:
        if isinstance(encoding, bytes):
            encoding = encoding.decode("latin-1")
        self.encoding = (encoding or "").strip().lower()
        self.maxOutput = maxOutput
        self.produced = 0
        self.failed = False
        self.truncated = False
        self.identity = self.encoding in ("", "identity")
        self.supported = self.identity or self.encoding in ("gzip", "x-gzip", "deflate")
        self._gzip = self.encoding in ("gzip", "x-gzip")
        self._obj: Any = None
        self._head = b""
        self._ended = False

    def decode(self, chunk: bytes) -> list[bytes]:
        """
        @return: the decoded pieces of C{chunk} (possibly none).
        """
        if not chunk or not self.supported or self.failed or self.truncated:
            return []
        if self.identity:
            if self.produced + len(chunk) <= self.maxOutput:
                self.produced += len(chunk)
                return [chunk]
            return self._cap([chunk])
        out: list[bytes] = []
        try:
            self._inflate(chunk, out)
        except zlib.error as e:
            self.failed = True
            _log.warn("could not decompress a {encoding} body: {error}",
                      encoding=self.encoding, error=str(e))
        return self._cap(out)

    def flush(self) -> list[bytes]:
        """
        The body has ended.

        @return: any last pieces.
        """
        if self.identity or self._obj is None or self.failed or self.truncated:
            return []
        out: list[bytes] = []
        try:
            out.append(self._obj.flush())
        except zlib.error:
            self.failed = True
        return self._cap([piece for piece in out if piece])

    @property
    def active(self) -> bool:
        """
        Whether more input can still produce output.
        """
        return self.supported and not self.failed and not self.truncated

    def _cap(self, pieces: list[bytes]) -> list[bytes]:
        kept = []
        for piece in pieces:
            room = self.maxOutput - self.produced
            if len(piece) > room:
                if room > 0:
                    kept.append(piece[:room])
                    self.produced += room
                self.truncated = True
                break
            self.produced += len(piece)
            kept.append(piece)
        return kept

    def _new(self, head: bytes) -> Any:
        if self._gzip:
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        cmf, flg = head[0], head[1]
        wrapped = (cmf & 0x0F) == 8 and (cmf << 8 | flg) % 31 == 0
        return zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)

    def _inflate(self, data: bytes, out: list[bytes]) -> None:
        if self._ended:
            return
        if self._obj is None:
            data = self._head + data
            if len(data) < 2:
                self._head = data
                return
            self._head = b""
            if self._gzip and self.produced and data[:2] != b"\x1f\x8b":
                self._ended = True
                return
            self._obj = self._new(data)
        obj = self._obj
        produced = 0
        while True:
            piece = obj.decompress(data, DECODE_PIECE)
            if piece:
                out.append(piece)
                produced += len(piece)
                if self.produced + produced > self.maxOutput:
                    return
            if obj.eof:
                rest = obj.unused_data
                if not self._gzip:
                    self._ended = True
                    return
                # Another gzip member may follow (its header possibly split
                # across chunks); anything else after the end is ignored.
                self._obj = None
                if len(rest) < 2:
                    self._head = rest
                    return
                if rest[:2] != b"\x1f\x8b":
                    self._ended = True
                    return
                obj = self._obj = zlib.decompressobj(16 + zlib.MAX_WBITS)
                data = rest
                continue
            data = obj.unconsumed_tail
            if not data and len(piece) < DECODE_PIECE:
                return


class SSEUsageParser:
    """
    Reads token usage out of an event stream as it passes, keeping only the
    unfinished last line and the latest values seen.

    Each C{data:} line (C{[DONE]} and invalid JSON skipped) is checked for a
    usage object at C{usage}, C{response.usage} and C{message.usage}, and
    for C{timings}.  Last non-zero values win, field by field (an Anthropic
    stream reports input tokens in C{message_start} and output tokens in
    C{message_delta}); the latest non-empty C{timings} wins.  Lines that
    mention neither C{usage} nor C{timings} are not decoded at all.

    @ivar lines: complete lines seen.
    """

    def __init__(self, maxLine: int = DEFAULT_MAX_LINE) -> None:
        self.maxLine = maxLine
        self.lines = 0
        self._partial = b""
        self._skipping = False
        self._usageSeen = False
        self._input = 0
        self._output = 0
        self._cached: int | None = None
        self._timings: dict | None = None

    def feed(self, chunk: bytes) -> None:
        """
        Parse the next bytes of the (decoded) stream.
        """
        if not chunk:
            return
        if b"usage" not in chunk and b"timings" not in chunk and not self._skipping:
            # The common case, a token event: no line of it can matter,
            # unless one ends a partial line, or a name spans the boundary.
            last = chunk.rfind(b"\n")
            if last < 0:
                self._keep(chunk)
                return
            if not self._partial or (b"usage" not in self._partial[-8:] + chunk[:8]
                                     and b"timings" not in self._partial[-8:] + chunk[:8]
                                     and b"usage" not in self._partial
                                     and b"timings" not in self._partial):
                self.lines += chunk.count(b"\n")
                self._partial = b""
                self._keep(chunk[last + 1:])
                return
        pos = 0
        if self._skipping:
            newline = chunk.find(b"\n")
            if newline < 0:
                return
            self._skipping = False
            pos = newline + 1
        newline = chunk.find(b"\n", pos)
        if newline < 0:
            self._keep(chunk[pos:])
            return
        first = chunk[pos:newline]
        if self._partial:
            first, self._partial = self._partial + first, b""
        self._line(first)
        pos = newline + 1
        while True:
            newline = chunk.find(b"\n", pos)
            if newline < 0:
                break
            self._line(chunk[pos:newline])
            pos = newline + 1
        self._keep(chunk[pos:])

    def finish(self) -> TokenUsage | None:
        """
        The stream has ended: parse an unterminated last line.

        @return: what L{result} returns.
        """
        if self._partial and not self._skipping:
            line, self._partial = self._partial, b""
            self._line(line)
        self._partial = b""
        return self.result()

    def result(self) -> TokenUsage | None:
        """
        @return: the L{TokenUsage} of what was seen so far, or L{None} when
            no usage and no timings were found.
        """
        if not self._usageSeen and self._timings is None:
            return None
        usage: dict[str, Any] | None = None
        if self._usageSeen:
            usage = {"prompt_tokens": self._input, "completion_tokens": self._output}
            if self._cached is not None:
                usage["cache_read_input_tokens"] = self._cached
        return usageFromObjects(usage, self._timings)

    def _keep(self, rest: bytes) -> None:
        if not rest:
            return
        if len(self._partial) + len(rest) > self.maxLine:
            self._partial = b""
            self._skipping = True
            return
        self._partial += rest

    def _line(self, line: bytes) -> None:
        self.lines += 1
        if b"usage" not in line and b"timings" not in line:
            return
        line = line.strip()
        if not line.startswith(b"data:"):
            return
        payload = line[5:].strip()
        if not payload or payload == b"[DONE]":
            return
        try:
            obj = json.loads(payload)
        except (ValueError, RecursionError):
            return
        if isinstance(obj, dict):
            self.observe(obj)

    def observe(self, obj: dict) -> None:
        """
        Take the usage and timings of one decoded event.
        """
        for path in _USAGE_PATHS:
            usage = _first(obj, path)
            if isinstance(usage, dict):
                self._usageSeen = True
                inputTokens, outputTokens, cached = _usageCounts(usage)
                if inputTokens:
                    self._input = inputTokens
                if outputTokens:
                    self._output = outputTokens
                if cached is not None and (cached != 0 or self._cached is None):
                    self._cached = cached
        timings = obj.get("timings")
        if isinstance(timings, dict) and timings:
            if (self._timings is None or _number(timings.get("prompt_n"))
                    or _number(timings.get("predicted_n"))):
                self._timings = timings


_rawDecode = json.JSONDecoder().raw_decode


def _loads(body: bytes) -> Any:
    """
    L{json.loads} of C{body}, the usual UTF-8 object decoded without its
    encoding detection (a body that may be UTF-16 or -32, or have a BOM,
    goes to L{json.loads} itself).

    @raise ValueError: C{body} is not JSON.
    """
    if body[:1] != b"{" or body[1:2] == b"\x00":
        return json.loads(body)
    text = body.decode("utf-8", "surrogatepass")
    parsed, end = _rawDecode(text)
    if end != len(text) and text[end:].strip(" \t\n\r"):
        raise ValueError(f"extra data after the JSON value, at {end}")
    return parsed


class JSONUsageParser:
    """
    Reads token usage out of a non-streamed JSON answer: top-level
    C{usage} and C{timings}; for C{/infill}, whose answer is an array, the
    last element's C{timings}.

    The body is held until L{finish}, up to C{maxBytes}; a bigger body is
    dropped as it grows and yields no tokens (a warning is logged).

    @ivar overflowed: the body was bigger than C{maxBytes}.
    """

    def __init__(self, path: str = "", maxBytes: int = DEFAULT_MAX_JSON_BYTES) -> None:
        self.path = path
        self.maxBytes = maxBytes
        self.size = 0
        self.overflowed = False
        self._chunks: list[bytes] = []

    def feed(self, chunk: bytes) -> None:
        """
        Take the next bytes of the (decoded) body.
        """
        if not chunk or self.overflowed:
            return
        self.size += len(chunk)
        if self.size > self.maxBytes:
            self.overflowed = True
            self._chunks = []
            _log.warn("metrics: response body of {path} over {limit} bytes, not parsed for tokens",
                      path=self.path, limit=self.maxBytes)
            return
        self._chunks.append(chunk)

    def finish(self) -> TokenUsage | None:
        """
        @return: the L{TokenUsage} of the body, or L{None} when it is too
            big, not JSON, or has neither usage nor timings.
        """
        if self.overflowed:
            return None
        body, self._chunks = b"".join(self._chunks), []
        if not body:
            return None
        infill = self.path.startswith("/infill")
        if b'"usage"' not in body and b'"timings"' not in body:
            return None
        try:
            parsed = _loads(body)
        except (ValueError, RecursionError):
            _log.warn("metrics: invalid JSON in response body path={path}", path=self.path)
            return None
        usage = timings = None
        if isinstance(parsed, dict):
            usage = parsed.get("usage")
            timings = parsed.get("timings")
        if infill and isinstance(parsed, list) and parsed and isinstance(parsed[-1], dict):
            timings = parsed[-1].get("timings")
        if not isinstance(usage, dict) and not isinstance(timings, dict):
            return None
        return usageFromObjects(usage, timings)


def isEventStream(contentType: str) -> bool:
    """
    @return: whether a response of C{contentType} is an event stream (its
        usage is found event by event, not in one JSON body).
    """
    return "text/event-stream" in contentType


class UsageMeter:
    """
    The token metrics of one response, fed chunk by chunk as relayed to
    the client (still compressed, if the upstream compressed it).

    @ivar rawBytes: bytes fed.
    @ivar decoder: the L{BodyDecoder} of the response's C{Content-Encoding}.
    @ivar streaming: whether the response is an event stream.
    """

    def __init__(self, path: str, contentType: str | bytes | None,
                 contentEncoding: str | bytes | None = None,
                 maxJSONBytes: int = DEFAULT_MAX_JSON_BYTES,
                 onDecoded: Callable[[bytes], object] | None = None,
                 maxDecoded: int = DEFAULT_MAX_DECODED) -> None:
        """
        @param path: the request path (C{/infill} answers are arrays).
        @param contentType: the response's C{Content-Type}; one containing
            C{text/event-stream} is parsed as SSE, any other as JSON.
        @param contentEncoding: the response's C{Content-Encoding}.
        @param maxJSONBytes: the size cap of a non-streamed body.
        @param onDecoded: also called with every decoded piece (a capture
            recorder, say), so the body is inflated once.
        @param maxDecoded: the cap on decoded bytes.
        """
        if isinstance(contentType, bytes):
            contentType = contentType.decode("latin-1")
        self.path = path
        self.contentType = contentType or ""
        self.streaming = isEventStream(self.contentType)
        self.decoder = BodyDecoder(contentEncoding, maxDecoded)
        self.parser: SSEUsageParser | JSONUsageParser
        if self.streaming:
            self.parser = SSEUsageParser()
        else:
            self.parser = JSONUsageParser(path, maxJSONBytes)
        self.onDecoded = onDecoded
        self.rawBytes = 0
        self._finished = False
        self._result: TokenUsage | None = None
        if not self.decoder.supported:
            _log.warn("metrics: cannot decode Content-Encoding {encoding} of {path}",
                      encoding=self.decoder.encoding, path=path)

    def feed(self, chunk: bytes) -> None:
        """
        Take the next chunk of the response body, as sent to the client.
        """
        if not chunk or self._finished:
            return
        self.rawBytes += len(chunk)
        self._pieces(self.decoder.decode(chunk))

    def finish(self) -> TokenUsage | None:
        """
        The body has ended.  Idempotent.

        @return: the L{TokenUsage} found, or L{None} when there was none
            (the caller records zero tokens, L{NO_TOKENS}).
        """
        if self._finished:
            return self._result
        self._finished = True
        self._pieces(self.decoder.flush())
        self._result = self.parser.finish()
        if self._result is None and self.streaming and self.rawBytes:
            _log.warn("metrics: no usage or timings found in the stream of {path}", path=self.path)
        return self._result

    def _pieces(self, pieces: Iterable[bytes]) -> None:
        for piece in pieces:
            self.parser.feed(piece)
            if self.onDecoded is not None:
                self.onDecoded(piece)
