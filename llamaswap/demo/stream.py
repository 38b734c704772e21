# -*- test-case-name: tests.test_demo -*-
"""
Server-sent events for the demo upstream: one C{request.write} per event,
paced by an injected clock, honouring the transport's backpressure and never
writing to a request whose client has gone away.
"""

from __future__ import annotations

import json
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import deferLater
from twisted.web.iweb import IRequest
from twisted.web.server import Request
from zope.interface import implementer


def sseData(obj: Any) -> bytes:
    """
    Encode one C{data:} event (the OpenAI streaming framing).
    """
    return b"data: " + _dumps(obj) + b"\n\n"


def sseEvent(name: str, obj: Any) -> bytes:
    """
    Encode one named event: C{event:} then C{data:} (the Anthropic and OpenAI
    Responses framing).
    """
    return b"event: " + name.encode("utf-8") + b"\ndata: " + _dumps(obj) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@implementer(IPushProducer)
class EventStream:
    """
    Writes a C{text/event-stream} response one event at a time.

    Creating one sets the status and headers and registers it as the
    request's streaming producer, so a full socket buffer pauses the writer
    (L{pace} waits for the resume) instead of growing memory.  Call L{close}
    when done, before the request is finished.

    @ivar gone: C{True} once the response is over, finished or disconnected;
        L{send} does nothing from then on.
    """

    def __init__(self, request: IRequest, clock: IReactorTime) -> None:
        # Klein hands handlers a twisted.web.server.Request: producers and
        # notifyFinish are not in IRequest.
        self._request = cast(Request, request)
        self._clock = clock
        self._paused = False
        self._resumed: Deferred[None] | None = None
        self._registered = False
        self.gone = False
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-accel-buffering", b"no")
        _noDelay(request)
        self._request.notifyFinish().addBoth(self._over)
        self._request.registerProducer(self, True)
        self._registered = True

    def _over(self, result: object) -> None:
        # Fires on finish and (as a failure, consumed here) on disconnect.
        self.gone = True

    async def pace(self, delay: float) -> None:
        """
        Wait before the next event: C{delay} seconds on the clock (none when
        it is 0), then for as long as the transport has asked us to pause.

        Cancellable (Klein cancels the handler when the client disconnects),
        which cancels the pending timer.
        """
        if delay > 0:
            await deferLater(self._clock, delay)
        while self._paused and not self.gone:
            self._resumed = Deferred(self._cancelResume)
            await self._resumed

    def _cancelResume(self, d: Deferred[None]) -> None:
        self._resumed = None

    def send(self, event: bytes) -> None:
        """
        Write one event with its own C{request.write}, unless the client is
        gone.
        """
        if not self.gone:
            self._request.write(event)

    def close(self) -> None:
        """
        Unregister from the request (where it still has a connection); the
        caller then finishes it.
        """
        if self._registered:
            self._registered = False
            # After a disconnect the request has dropped its channel, and
            # unregisterProducer() would raise.
            if getattr(self._request, "channel", None) is not None:
                self._request.unregisterProducer()
        self._paused = False

    # IPushProducer, driven by the HTTP channel.

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._resumed is not None:
            d, self._resumed = self._resumed, None
            d.callback(None)

    def stopProducing(self) -> None:
        # The connection is going away; notifyFinish's errback follows and
        # Klein cancels the handler, which cancels any pending wait.
        self.gone = True


def _noDelay(request: IRequest) -> None:
    """
    Switch off Nagle's algorithm for a streamed response, so each small event
    leaves at once instead of waiting for the previous one's ACK.
    """
    transport = getattr(request, "transport", None)
    setNoDelay = getattr(transport, "setTcpNoDelay", None)
    if setNoDelay is not None:
        try:
            setNoDelay(True)
        except OSError:
            pass
