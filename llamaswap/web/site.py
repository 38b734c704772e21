# -*- test-case-name: tests.test_web_site -*-
"""
The web server's L{Site}: one access-log line per request, in the
reference's format.
"""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.logger import Logger, LogLevel
from twisted.web.server import Request, Site

from llamaswap.afterturn import Later, callNow
from llamaswap.listening import headDeadlineProtocol

_log = Logger(namespace="llamaswap.web")


class LlamaSwapRequest(Request):
    """
    A request that notes when it arrived (for the access log), that is
    logged also when its client goes away before the answer ended, and that
    refuses a body over its site's C{bodyLimit} while it arrives:
    twisted.web would otherwise spool any body, however long (or endless),
    to disk before llamaswap sees the request.
    """

    arrived: float | None = None
    logged = False
    _bodyBytes = 0
    _refused = False

    def _bodyLimit(self) -> int | None:
        return getattr(getattr(self.channel, "site", None), "bodyLimit", None)

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        limit = self._bodyLimit()
        if limit is not None and length is not None and length > limit:
            self._refuseBody(limit)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._bodyBytes += len(data)
        limit = self._bodyLimit()
        if limit is not None and self._bodyBytes > limit:
            self._refuseBody(limit)
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self._refused:
            super().requestReceived(command, path, version)

    def _refuseBody(self, limit: int) -> None:
        """
        Answer 413 (OpenAI-style) at once, without the rest of the body, and
        close the connection.
        """
        self._refused = True
        self.logged = True  # the request line was never parsed into fields
        _log.warn("request body over {limit} bytes refused with 413", limit=limit)
        # No "100 Continue" after the answer: the client is not to go on.
        self.requestHeaders.removeHeader(b"expect")
        body = json.dumps({"error": {
            "message": f"request body exceeds the limit of {limit} bytes",
            "type": "invalid_request_error", "code": 413}}).encode()
        transport: Any = self.channel.transport
        transport.write(
            b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        transport.loseConnection()

    def connectionLost(self, reason) -> None:
        site = getattr(self, "site", None)
        if not self.finished and not self.logged and isinstance(site, AccessLoggingSite):
            site.log(self, clientClosed=True)
        super().connectionLost(reason)


class AccessLoggingSite(Site):
    """
    A L{Site} that logs one line per request in the reference's format,
    C{Request <ip> "<METHOD> <path> <proto>" <status> <bytes> "<ua>" <dur>},
    where the IP is the first C{X-Forwarded-For} entry, else C{X-Real-IP},
    else the peer; requests for C{/wol-health}, C{/api/performance} and
    C{/metrics} are not logged (SPEC.md section 3.11).
    """

    quietPrefixes = (b"/wol-health", b"/api/performance", b"/metrics")

    requestFactory = LlamaSwapRequest
    protocol = headDeadlineProtocol  # a request head has a deadline of its own

    #: The cap on request bodies, in bytes (L{None}: none).
    bodyLimit: int | None = None

    def __init__(self, resource, clock, later: Later = callNow) -> None:
        """
        @param resource: the root resource.
        @param clock: times each request.
        @param later: puts the access lines off to the end of the
            reactor's turn (an L{llamaswap.afterturn.AfterTurn}); at once
            by default.
        """
        # Leave bodies alone: twisted.web would otherwise parse every form
        # body into request.args (a multipart upload read whole into memory,
        # again); llamaswap reads the bodies it needs itself.
        super().__init__(resource, parsePOSTFormSubmission=False)
        self.clock = clock
        self.later = later
        # Made here, not as a class attribute: a Logger read from a class
        # makes a new Logger on every access, in the class's namespace.
        self.accessLog = Logger(namespace="llamaswap.access", source=self)
        self.displayTracebacks = False
        self.noisy = False

    def getResourceFor(self, request):
        request.arrived = self.clock.seconds()
        return super().getResourceFor(request)

    def log(self, request, clientClosed: bool = False) -> None:
        """
        Log the access line of C{request}; a client that closed first is
        shown with status 499 ("client closed request").  The line's
        duration and time are taken now; the line itself is made and
        written by L{writeAccessLine} once the reactor's turn is over (see
        L{llamaswap.afterturn}).
        """
        if getattr(request, "logged", False):
            return
        request.logged = True
        path = request.path or b""
        if path.startswith(self.quietPrefixes):
            return
        started = getattr(request, "arrived", None)
        duration = 0.0 if started is None else self.clock.seconds() - started
        self.later(self.writeAccessLine, request, 499 if clientClosed else request.code,
                   duration, time.time())

    def writeAccessLine(self, request, status: int, duration: float, when: float) -> None:
        """
        Write the access line of C{request}, which ended at POSIX time
        C{when}, C{duration} seconds after it arrived, with C{status}.
        """
        given = ((request.getHeader(b"x-forwarded-for") or b"").split(b",")[0].strip()
                 or (request.getHeader(b"x-real-ip") or b"").strip())
        ip = given.decode("latin-1") if given else getattr(request.getClientAddress(), "host", "-")
        method = request.method.decode("latin-1")
        uri = request.uri.decode("latin-1")
        agent = (request.getHeader(b"user-agent") or b"").decode("latin-1")
        # Formatted here once: every observer (stdout, /logs) formats the
        # event again, and a single field costs far less than eight.
        line = (
            f'Request {ip} "{method} {uri} {request.clientproto.decode("latin-1")}" '
            f'{status} {request.sentLength} "{agent}" {_goDuration(duration)}'
        )
        # The event Logger.info would make, without its per-call checks.
        logger = self.accessLog
        logger.observer({
            "line": line, "ip": ip, "method": method, "uri": uri, "status": status,
            "size": request.sentLength, "duration": duration, "log_logger": logger,
            "log_level": LogLevel.info, "log_namespace": logger.namespace,
            "log_source": logger.source, "log_format": "{line}", "log_time": when})


def _goDuration(seconds: float) -> str:
    """
    @return: C{seconds} written like Go's C{time.Duration}: C{812.5ms},
        C{1.2s}, C{45µs}.
    """
    if seconds >= 1:
        return f"{seconds:.3g}s"
    if seconds >= 0.001:
        return f"{seconds * 1e3:.4g}ms"
    return f"{seconds * 1e6:.4g}µs"
