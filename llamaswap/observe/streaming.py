"""
One client of a long-lived streamed response (a log stream, the UI's event
stream): the plumbing both share.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer


@implementer(IPushProducer)
class StreamClient:
    """
    Writes what it is given to one request, at once, while the client keeps
    up.

    It registers itself with the request as a push producer, so the
    transport says when the client's socket buffer is full
    (L{pauseProducing}) and when it drained (L{resumeProducing}).  While
    paused, L{deliver} hands data to L{enqueue}, which subclasses implement
    to queue it (in C{queue}) or drop it; on resume the queue is flushed,
    then L{afterFlush} runs.  The subscription is released, once, when the
    client goes away, when the transport stops the producer, or on
    L{close}.

    @cvar headers: the response headers.
    @ivar queue: data waiting for a paused client.
    """

    log = Logger()
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def __init__(self, request, onEnded: Callable[["StreamClient"], None]) -> None:
        """
        @param request: the client's request.
        @param onEnded: called once when the stream has ended.
        """
        self.request = request
        self.onEnded = onEnded
        self.paused = False
        self.queue: deque[bytes] = deque()
        self.ended = False
        self.disconnected = False
        self._unsubscribe: Callable[[], None] | None = None
        self._registered = False

    def begin(self, first: bytes,
              subscribe: Callable[[Callable[[bytes], None]], Callable[[], None]]) -> None:
        """
        Send the headers and C{first} (even empty: the headers go out now),
        then follow a source.

        @param subscribe: called with L{deliver}; returns the function that
            unsubscribes.
        """
        request = self.request
        request.setResponseCode(200)
        for name, value in self.headers:
            request.setHeader(name, value)
        request.notifyFinish().addBoth(self._finished)
        request.registerProducer(self, True)
        self._registered = True
        request.write(first)
        self._unsubscribe = subscribe(self.deliver)

    def deliver(self, data: bytes) -> None:
        """
        Write C{data} now, or, while the client is paused, L{enqueue} it.
        """
        if self.ended:
            return
        if not self.paused:
            self.request.write(data)
        else:
            self.enqueue(data)

    def enqueue(self, data: bytes) -> None:
        """
        Keep C{data} for later, or drop it: the subclass's policy.
        """
        raise NotImplementedError()

    def dequeued(self, data: bytes) -> None:
        """
        C{data} left the queue for the client.
        """

    def afterFlush(self) -> None:
        """
        The queue was flushed and the client is still keeping up.
        """

    def released(self) -> None:
        """
        The stream has ended: let go of anything else held.
        """

    # -- IPushProducer ---------------------------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        if self.ended:
            return
        self.paused = False
        # A write may pause us again (the transport's buffer filled up):
        # keep the rest queued then.
        while self.queue and not self.paused and not self.ended:
            data = self.queue.popleft()
            self.dequeued(data)
            self.request.write(data)
        if not self.paused and not self.ended:
            self.afterFlush()

    def stopProducing(self) -> None:
        self.release()

    # -- endings ---------------------------------------------------------------

    def close(self) -> None:
        """
        End the response (server shutdown).
        """
        if self.ended:
            return
        self.release()
        if not self.disconnected:
            try:
                if self._registered:
                    self.request.unregisterProducer()
                self.request.finish()
            except Exception:
                self.log.failure("could not finish a stream")

    def _finished(self, result: object) -> None:
        # notifyFinish fires with None once finished, with a Failure when
        # the client went away first.
        if isinstance(result, Failure):
            self.disconnected = True
        self.release()

    def release(self) -> None:
        """
        End the stream: unsubscribe and forget the queue; idempotent.
        """
        if self.ended:
            return
        self.ended = True
        self.queue.clear()
        self.released()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.onEnded(self)
