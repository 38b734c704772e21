# -*- test-case-name: tests.test_listening,tests.integration.test_limits -*-
"""
How llamaswap listens: one service for every endpoint it serves on, a cap
on concurrent client connections shared by all of them, a deadline for
each request head, and the open-files limit raised at start.

The cap and the deadline keep the daemon's own file descriptors and
connections for what it cannot do without (upstream connections, health
probes, C{/health}): idle or trickling clients cannot take them all.
"""

from __future__ import annotations

import json
import re
import resource
from typing import Any, Optional, Sequence, Tuple, Union

from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.internet.interfaces import IAddress, IProtocol, IProtocolFactory
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.protocols.policies import WrappingFactory
from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol

from llamaswap.proxy.sending import GatheringWrapper

log = Logger()

#: Seconds a client has from the first byte of a request head to its end.
HEAD_DEADLINE = 30.0
#: File descriptors kept out of the automatic connection cap, for upstream
#: processes' pipes, the log, the listening sockets and the like.
RESERVED_FILES = 256
#: The automatic connection cap never exceeds this, whatever the limit.
MAX_AUTO_CONNECTIONS = 65536
#: Connections past the cap that may still ask for C{/health}.
HEALTH_RESERVE = 16
#: The paths a connection in the reserve may ask for.
HEALTH_PATHS = (b"/health", b"/wol-health")


def _jsonError(status: int, reason: str, message: str, kind: str) -> bytes:
    body = json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


TOO_MANY_CONNECTIONS = _jsonError(
    503, "Service Unavailable", "too many client connections; retry later", "server_error"
)
BAD_REQUEST = _jsonError(
    400, "Bad Request", "malformed HTTP request", "invalid_request_error"
)
HEAD_TIMED_OUT = _jsonError(
    408, "Request Timeout", "the request head was not received in time", "invalid_request_error"
)


def raiseOpenFilesLimit() -> Tuple[int, int]:
    """
    Raise this process's soft limit of open files to its hard limit, as
    the reference does: the usual service default of 1024 is used up by
    about a thousand idle sockets.

    @return: the soft limit before and after.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return soft, soft
    # An unlimited hard limit still stops at the kernel's nr_open.
    for target in (hard, 1 << 20):
        if target == resource.RLIM_INFINITY or target <= soft:
            continue
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            continue
        return soft, target
    return soft, soft


def automaticConnectionCap() -> int:
    """
    @return: the client connection cap under the current open-files limit:
        half of what is left once L{RESERVED_FILES} are put aside, since
        each proxied client connection may hold an upstream connection too.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 2 * MAX_AUTO_CONNECTIONS + RESERVED_FILES
    return max(16, min(MAX_AUTO_CONNECTIONS, (soft - RESERVED_FILES) // 2))


class _Refuse(Protocol):
    """
    Answers a connection over the cap with a 503 and closes it.
    """

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(TOO_MANY_CONNECTIONS)
        self.transport.loseConnection()


class _HealthOnly(GatheringWrapper):
    """
    A connection past the cap but within the reserve: its first request is
    served if it asks for C{/health} (with C{Connection: close}, so it is
    the only one); anything else gets a 503 and the connection is closed.
    A head that never ends is closed by the channel's idle timeout.
    """

    def __init__(self, factory: Any, wrappedProtocol: IProtocol) -> None:
        super().__init__(factory, wrappedProtocol)
        self._head = b""
        self._decided = False

    def dataReceived(self, data: bytes) -> None:
        if self._decided:
            super().dataReceived(data)
            return
        self._head += data
        line, newline, rest = self._head.partition(b"\n")
        if not newline and len(self._head) < 2048:
            return
        self._decided = True
        words = line.split()
        path = words[1].split(b"?", 1)[0] if len(words) >= 2 else b""
        if path in HEALTH_PATHS:
            super().dataReceived(line + b"\nConnection: close\r\n" + rest)
            return
        assert self.transport is not None
        self.transport.write(TOO_MANY_CONNECTIONS)
        self.transport.loseConnection()


class ConnectionCap(WrappingFactory):
    """
    Counts the client connections of every listener it wraps.  Past
    C{limit}, L{HEALTH_RESERVE} more connections may still ask for
    C{/health} (anything else is answered with a 503); past those, a new
    connection is answered with a 503 and closed at once, so it holds its
    file descriptor only for that moment.

    @ivar limit: the most client connections served at once.
    @ivar reserve: how many past it may still ask for C{/health}.
    @ivar open: how many are open now.
    @ivar refused: how many came past the cap so far.
    """

    protocol = GatheringWrapper
    reserve = HEALTH_RESERVE
    warnEvery = 10.0

    def __init__(self, wrappedFactory: IProtocolFactory, limit: int, clock: Any) -> None:
        super().__init__(wrappedFactory)
        self.limit = limit
        self.clock = clock
        self.refused = 0
        self._lastWarning: Optional[float] = None

    @property
    def open(self) -> int:
        return len(self.protocols)

    # Past the cap the protocol is no GatheringWrapper, hence the ignore.
    def buildProtocol(self, addr: Optional[IAddress]) -> Optional[IProtocol]:  # type: ignore[override]
        if self.open >= self.limit:
            self._warn()
            if self.open < self.limit + self.reserve:
                return _HealthOnly(self, self.wrappedFactory.buildProtocol(addr))
            return _Refuse()
        return super().buildProtocol(addr)

    def _warn(self) -> None:
        """
        Count a connection past the cap; log it at most every
        C{warnEvery} seconds.
        """
        self.refused += 1
        now = self.clock.seconds()
        if self._lastWarning is None or now - self._lastWarning >= self.warnEvery:
            self._lastWarning = now
            log.warn(
                "client connections past the cap: {open} open, the cap is {limit} "
                "(maxConnections); {refused} past it so far (only /health is served)",
                open=self.open, limit=self.limit, refused=self.refused,
            )


#: A header name (an RFC 9110 token), matched whole.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: A byte twisted.web refuses in a request target.
_BAD_TARGET = re.compile(rb"[^\x21-\xb0]")
#: Headers after which a request takes twisted.web's own parser: framing
#: and continuation it handles, and a connection it closes after (any
#: C{Connection} header but one that keeps it open).
_PARSER_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"expect", b"connection"})


class HeadDeadlineChannel(HTTPChannel):
    """
    An L{HTTPChannel} that gives every request head a deadline of its own:
    from its first byte to the blank line that ends it, at most
    C{headDeadline} seconds.  (The idle timeout alone is no defence: each
    byte of a trickled head resets it.)  A head that misses it gets a 408
    and the connection is closed.

    A plain request that arrives whole in one read (the usual inference
    POST: an HTTP/1.1 head of ordinary headers and a body of the
    C{Content-Length} it gives) is taken apart in one step
    (L{_wholeRequest}) instead of line by line: the same L{Request}, given
    the same headers, length and body in the same order (so a body over the
    site's limit is refused by the request, as ever), at a fraction of the
    parser's cost.  Anything else (a head or body split across reads,
    chunked framing, C{Expect}, C{Connection: close}, a malformed line)
    goes to twisted.web's parser, which answers it as it always does.
    """

    headDeadline = HEAD_DEADLINE
    _headTimer: Any = None
    _host: Any = None
    _peer: Any = None
    _lost = False

    def getHost(self) -> Any:
        """
        @return: the local address, asked of the socket once per connection
            (twisted.web asks for it with every request).
        """
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def getPeer(self) -> Any:
        """
        @return: the peer's address, made once per connection.
        """
        if self._peer is None:
            self._peer = super().getPeer()
        return self._peer

    def dataReceived(self, data: bytes) -> None:
        fresh = self._headTimer is None and self.line_mode and not self._handlingRequest
        if fresh and not self._buffer and not self._receivedHeaderSize and self.persistent \
                and not self._lost and self._wholeRequest(data):
            return
        super().dataReceived(data)
        # A head that arrived whole in this read needs no timer; one still
        # arriving has its deadline from now.
        if fresh and self._headTimer is None and self._inHead():
            self._headTimer = self.callLater(self.headDeadline, self._headTimedOut)

    def _wholeRequest(self, data: bytes) -> bool:
        """
        Take C{data} as one whole request, as the line parser would have:
        its L{Request} made, its headers and body given to it, the channel
        then handling it (bytes after it kept for later), and the request
        received.

        @return: whether C{data} was such a request; when not, nothing has
            changed and the line parser is to have it.
        """
        end = data.find(b"\r\n\r\n")
        if end < 0 or end > self.totalHeadersSize:
            return False
        head = data[:end]
        # No bare CR or LF, and no NUL, anywhere in the head.
        crlf = head.count(b"\r\n")
        if head.count(b"\r") != crlf or head.count(b"\n") != crlf or b"\x00" in head:
            return False
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            return False
        command, target, version = parts
        if command != b"POST" or version != b"HTTP/1.1" or not target \
                or _BAD_TARGET.search(target) is not None:
            return False
        if len(lines) > self.maxHeaders + 1:
            return False
        pairs = []
        length = 0
        seenLength = seenConnection = False
        match = _TOKEN.fullmatch
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or match(name) is None:
                return False  # also a continuation line (it starts with a space)
            value = value.strip(b" \t")
            lower = name.lower()
            if lower in _PARSER_HEADERS:
                if lower == b"connection":
                    # What HTTP clients send to keep the connection, as
                    # twisted.web reads it (the first header's words):
                    # no "close".
                    if seenConnection or b"close" in value.lower().split(b" "):
                        return False
                    seenConnection = True
                elif lower != b"content-length" or seenLength or not value.isdigit():
                    return False
                else:
                    seenLength = True
                    length = int(value)
            pairs.append((name, value))
        total = end + 4 + length
        if len(data) < total:
            return False  # the body arrives in later reads
        self.resetTimeout()
        request = self.requestFactory(self, len(self.requests))
        self.requests.append(request)
        headers = request.requestHeaders
        for name, value in pairs:
            headers.addRawHeader(name, value)
        request.parseCookies()
        request.gotLength(length)  # a body over the site's limit is refused here
        if length:
            request.handleContentChunk(data[end + 4:total])
        # What allContentReceived does once a body has ended, except that
        # the idle timer keeps running (cancelled now and made anew at the
        # answer's end, as twisted.web does it, would be two timer
        # operations per request): it is reset when the answer ends, and
        # does not time out a request still being answered
        # (timeoutConnection).
        if self.timeOut:
            self._savedTimeOut = self.timeOut  # type: ignore[assignment]  # typed None by twisted.web
        self._handlingRequest = True
        self.setRawMode()
        if len(data) > total:
            self._dataBuffer.append(data[total:])  # the next request, for later
        request.requestReceived(command, target, version)
        return True

    def timeoutConnection(self) -> None:
        """
        The idle timeout: a connection whose request is still being
        answered is not idle (its timer ran on from L{_wholeRequest}), and
        is looked at again a whole timeout later; any other is closed.
        """
        if self._handlingRequest and not self._lost and self.timeOut:
            self.setTimeout(self.timeOut)
            return
        super().timeoutConnection()

    def _inHead(self) -> bool:
        """
        @return: whether part of a request head has arrived and the rest
            has not.
        """
        return (not self._lost and bool(self.line_mode) and not self._handlingRequest
                and bool(self._buffer or self._receivedHeaderSize))

    def allHeadersReceived(self) -> None:
        self._cancelHeadTimer()
        super().allHeadersReceived()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._cancelHeadTimer()
        super().connectionLost(reason)

    def _cancelHeadTimer(self) -> None:
        if self._headTimer is not None:
            if self._headTimer.active():
                self._headTimer.cancel()
            self._headTimer = None

    def _respondToBadRequestAndDisconnect(self) -> None:
        """
        A request twisted.web cannot parse (its request line, a header, its
        framing) gets an OpenAI-style JSON 400, not a bare status line, and
        the connection is closed.
        """
        self._cancelHeadTimer()
        self.transport.write(BAD_REQUEST)  # type: ignore[union-attr]
        self.loseConnection()

    def _headTimedOut(self) -> None:
        self._headTimer = None
        peer = self.transport.getPeer() if self.transport is not None else None
        log.info("request head not received within {deadline}s from {peer}; closing",
                 deadline=self.headDeadline, peer=getattr(peer, "host", peer))
        self.transport.write(HEAD_TIMED_OUT)  # type: ignore[union-attr]
        # Closes, and aborts if the client does not let the answer out.
        self.timeoutConnection()


def headDeadlineProtocol(site: Any) -> _GenericHTTPChannelProtocol:
    """
    A C{protocol} for a L{twisted.web.server.Site} (in place of Twisted's
    own): HTTP/1.1 channels with a request-head deadline, C{site.headDeadline}
    seconds when the site has one.
    """
    channel = HeadDeadlineChannel()
    channel.headDeadline = getattr(site, "headDeadline", HEAD_DEADLINE)
    return _GenericHTTPChannelProtocol(channel)


def listeningService(
    listen: Union[str, Sequence[str]],
    factory: IProtocolFactory,
    reactor: Any,
    maxConnections: int = 0,
) -> IService:
    """
    @param listen: one Twisted server endpoint description, or several.
    @param maxConnections: the cap on client connections over all of them
        (see L{ConnectionCap}); C{0} for L{automaticConnectionCap}.

    @return: a service named C{web} listening on every one of C{listen}
        with C{factory}; starting it raises at once if one cannot listen.
    """
    limit = maxConnections if maxConnections > 0 else automaticConnectionCap()
    capped = ConnectionCap(factory, limit, reactor)
    descriptions = [listen] if isinstance(listen, str) else list(listen)
    service: IService
    if len(descriptions) == 1:
        service = strports.service(descriptions[0], capped, reactor=reactor)
    else:
        service = MultiService()
        for description in descriptions:
            strports.service(description, capped, reactor=reactor).setServiceParent(service)
    service.setName("web")
    return service
