# -*- test-case-name: tests.test_observe_exchange -*-
"""
One object per relayed request that puts the observe pieces together: the
token metrics of the answer, its activity entry, its capture and its
Prometheus series.

    meter = ExchangeMeter(model="qwen", path="/v1/chat/completions",
                          clock=reactor, activity=activity, captures=captures,
                          metrics=metrics, reqHeaders=request.requestHeaders,
                          reqBody=body, timer=timer)
    meter.response(response.code, response.headers)   # upstream headers
    meter.data(chunk)                                  # each chunk relayed
    record = meter.done()                              # once, at the end
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from llamaswap.observe.captures import CaptureRecorder, CaptureStore
from llamaswap.observe.prom import Metrics
from llamaswap.observe.timing import PhaseTimer
from llamaswap.observe.activity import ActivityLog, ActivityRecord
from llamaswap.observe.usage import (
    DEFAULT_MAX_JSON_BYTES, NO_TOKENS, UsageMeter, isEventStream)


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else b""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value or "")


def _contentHeaders(headers: Any) -> tuple[str, str]:
    """
    @param headers: a Twisted L{Headers}, a mapping, or C{(name, value)}
        pairs (the upstream client's, names lower-case).
    @return: the first C{Content-Type} and C{Content-Encoding} values, or
        C{""} each.
    """
    if headers is None:
        return "", ""
    if hasattr(headers, "getRawHeaders"):
        return (_text(headers.getRawHeaders(b"content-type")),
                _text(headers.getRawHeaders(b"content-encoding")))
    contentType = encoding = None
    for key, found in (headers.items() if isinstance(headers, Mapping) else headers):
        if isinstance(key, str):
            key = key.encode("latin-1")
        if key != b"content-type" and key != b"content-encoding":
            key = key.lower()
        if key == b"content-type":
            if contentType is None:
                contentType = _text(found)
        elif key == b"content-encoding" and encoding is None:
            encoding = _text(found)
    return contentType or "", encoding or ""


#: The most bytes of a non-streamed answer held to be metered at its end
#: (where the usage is) in one go; a bigger one is metered as it comes.
HELD_BYTES = 65536


class ExchangeMeter:
    """
    Observes one request on a model route (SPEC.md: POST requests only),
    from the upstream's response headers to the end of the body.

    A non-200 answer gets zero tokens and no capture; a 200 answer is
    parsed for tokens (decompressed once, shared with the capture).  An
    exchange that never got a response (upstream unreachable) records no
    activity entry, as in the reference, only its Prometheus request with
    the status given to L{done}.

    @ivar status: the upstream's status, once known.
    @ivar record: the L{ActivityRecord}, once L{done}.
    """

    log = Logger()

    def __init__(self, model: str, path: str, clock: IReactorTime, activity: ActivityLog,
                 captures: CaptureStore | None = None, metrics: Metrics | None = None,
                 route: str | None = None, reqHeaders: Any = None,
                 reqBody: bytes | None = None, timer: PhaseTimer | None = None,
                 maxJSONBytes: int = DEFAULT_MAX_JSON_BYTES) -> None:
        """
        @param model: the real model id.
        @param path: the request path as the client sent it (the activity
            entry's C{req_path}; it picks the capture fields).
        @param clock: the time source of the wall duration.
        @param activity: where the entry goes.
        @param captures: the capture store, if captures are on.
        @param metrics: the Prometheus metrics, if any.
        @param route: the route label for Prometheus (C{path} by default).
        @param reqHeaders: the client's request headers.
        @param reqBody: the request body as received.
        @param timer: the request's L{PhaseTimer} (started at arrival);
            one starting now by default.
        @param maxJSONBytes: the cap on non-streamed bodies parsed.
        """
        self.model = model
        self.path = path
        self.route = route or path
        self.clock = clock
        self.activity = activity
        self.metrics = metrics
        self.timer = timer if timer is not None else PhaseTimer(clock)
        self.maxJSONBytes = maxJSONBytes
        self.status: int | None = None
        self.contentType = ""
        self.record: ActivityRecord | None = None
        self._meter: UsageMeter | None = None
        self._encoding = ""
        self._held: list[bytes] | None = None
        self._heldBytes = 0
        self._recorder: CaptureRecorder | None = None
        self._respHeaders: Any = None
        self._done = False
        # What a 200 answer's capture is made of, once its metering starts
        # (only a 200 answer is captured).
        self._capture = ((captures, reqHeaders, reqBody)
                         if captures is not None and captures.enabled else None)

    def response(self, status: int, headers: Any = None) -> None:
        """
        The upstream answered: C{status} and its response C{headers} (a
        L{twisted.web.http_headers.Headers} or a mapping).  Marks
        C{firstByte} on the timer.
        """
        if self.status is not None or self._done:
            return
        self.timer.firstByte()
        self.status = int(status)
        self.contentType, encoding = _contentHeaders(headers)
        if self.status == 200:
            self._encoding = encoding
            self._respHeaders = headers
            if isEventStream(self.contentType):
                self._startMeter()
            else:
                self._held = []

    def data(self, chunk: bytes) -> None:
        """
        One chunk of the response body, as written to the client.  A
        non-streamed answer's chunks are only held while they are
        L{HELD_BYTES} or fewer, and metered in L{done}; past that, and for
        a stream, each is metered as it comes.
        """
        if self._done:
            return
        held = self._held
        if held is not None:
            held.append(chunk)
            self._heldBytes += len(chunk)
            if self._heldBytes > HELD_BYTES:
                self._startMeter()
            return
        meter = self._meter
        if meter is not None:
            try:
                meter.feed(chunk)
            except Exception:
                self._meterFailed()

    def _meterFailed(self) -> None:
        self._meter = None
        self.log.failure("token metrics of {path} failed", path=self.path)

    def _startMeter(self) -> None:
        """
        Make the usage meter and the capture recorder (and feed them what
        was held).
        """
        recorder = None
        if self._capture is not None:
            store, reqHeaders, reqBody = self._capture
            self._capture = None
            recorder = self._recorder = CaptureRecorder(store, self.path, reqHeaders, reqBody)
            recorder.response(200, self._respHeaders)
        meter = self._meter = UsageMeter(
            self.path, self.contentType, self._encoding,
            maxJSONBytes=self.maxJSONBytes,
            onDecoded=recorder.data if recorder is not None and recorder.active else None)
        held, self._held = self._held, None
        try:
            for chunk in held or ():
                meter.feed(chunk)
        except Exception:
            self._meterFailed()

    def done(self, status: int | None = None, clientClosed: bool = False) -> ActivityRecord | None:
        """
        The exchange is over (body ended, upstream failed mid-way, or
        client gone).  Idempotent.

        @param status: the status the client got when the upstream never
            answered (a 502, say); used for Prometheus only.
        @param clientClosed: the client went away first: the entry (made
            even when the upstream never answered) and the Prometheus
            request get C{status} (499, "client closed request"), the
            tokens seen so far, and no capture.
        @return: the new L{ActivityRecord}, or L{None} when the upstream
            never answered (and the client did not close).
        """
        if self._done:
            return self.record
        self._done = True
        self.timer.end()
        phases = self.timer.phases()
        wallMs = phases["total"] * 1000.0
        answered = self.status
        if clientClosed:
            answered = status or 499
        if self.metrics is not None:
            shown = answered if answered is not None else (status or "error")
            self.metrics.requestDone(self.model, self.route, shown, phases["total"])
            self.metrics.phases(self.model, phases)
        if answered is None:
            return None
        tokens = None
        if self._held is not None:
            self._startMeter()
        if self._meter is not None:
            try:
                tokens = self._meter.finish()
            except Exception:
                self._meterFailed()
        if tokens is None:
            tokens = NO_TOKENS
        if self.metrics is not None:
            self.metrics.tokens(self.model, tokens.inputTokens, tokens.outputTokens)
        recorder = None if clientClosed else self._recorder
        self.record = self.activity.add(
            self.model, self.path, self.contentType, answered, tokens=tokens,
            durationMs=tokens.durationMs(wallMs), phases=phases,
            capture=recorder.commit if recorder is not None else None)
        return self.record
