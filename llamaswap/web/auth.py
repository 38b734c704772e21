# -*- test-case-name: tests.test_auth -*-
"""
API key authentication (SPEC.md section 3.2, parity items 43-47).

When C{apiKeys} is non-empty every route but the open ones
(L{isOpenPath}) needs a key.  The key is taken from, in this order:

    1. C{Authorization: Basic base64(user:key)} (the user is ignored);
    2. C{Authorization: Bearer <key>};
    3. C{x-api-key: <key>}.

A malformed Basic header (bad base64, no C{:}) or an empty key falls
through to C{x-api-key}.  The key must equal one of the configured keys
exactly; the comparison takes the same time whatever the key.  A failure
is answered 401 with L{WWW_AUTHENTICATE}; a success removes the
credentials (L{stripCredentials}) before the request is forwarded.

The web UI marks its calls with the header L{UI_HEADER}: a 401 to such a
call carries no C{WWW-Authenticate} challenge (L{challenges}), so the
browser shows no Basic-auth pop-up and the UI asks for the key in its own
form.  C{EventSource} cannot send headers, so the UI first asks
C{POST /api/events/token} (authenticated) for a short-lived
L{StreamTokens} token and opens C{GET /api/events?token=...}; the token is
accepted on that route only (L{tokenAccepted}).

Nothing here logs, and no message includes a key.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from typing import Iterable

from twisted.internet.interfaces import IReactorTime

from twisted.web.http_headers import Headers

from llamaswap.errors import LlamaSwapError

#: The 401 message (SPEC.md section 3.1).
UNAUTHORIZED_MESSAGE = "unauthorized: invalid or missing API key"

#: The C{WWW-Authenticate} header value sent with every 401.
WWW_AUTHENTICATE = b'Basic realm="llama-swap"'

#: The request headers that carry credentials.
CREDENTIAL_HEADERS = (b"authorization", b"x-api-key")

#: The request header the web UI sends with each of its calls.
UI_HEADER = b"x-llamaswap-ui"

#: The one route that accepts a L{StreamTokens} token as C{?token=}.
TOKEN_PATH = b"/api/events"

#: Paths open without a key, whatever the method.
OPEN_PATHS = frozenset({"/", "/health", "/wol-health", "/favicon.ico", "/metrics", "/ui"})

#: Prefixes of paths open without a key.
OPEN_PREFIXES = ("/ui/",)


class Unauthorized(LlamaSwapError):
    """
    A request without a valid API key.  Answer it with the header
    C{WWW-Authenticate: }L{WWW_AUTHENTICATE}.
    """

    code = 401
    kind = "authentication_error"

    def __init__(self, message: str = UNAUTHORIZED_MESSAGE) -> None:
        super().__init__(message)


def _text(value: bytes | str) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value


def isOpenPath(method: bytes | str, path: bytes | str) -> bool:
    """
    Whether a request needs no API key: any C{OPTIONS} (CORS preflight),
    C{/}, C{/health}, C{/wol-health}, C{/favicon.ico}, C{/metrics},
    C{/ui} and everything under C{/ui/}, and C{GET} (or C{HEAD})
    C{/upstream} (the redirect to the UI; C{/upstream/...} needs a key).

    @param method: the request method.
    @param path: the request path as received (C{request.path}: no query,
        not percent-decoded).  A path spelled differently (C{//health},
        C{/%68ealth}) is not open: checks fail closed.
    """
    method = _text(method).upper()
    path = _text(path)
    if method == "OPTIONS":
        return True
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return True
    return path == "/upstream" and method in ("GET", "HEAD")


def _first(headers: Headers, name: bytes) -> bytes:
    values = headers.getRawHeaders(name)
    return values[0] if values else b""


def presentedKey(headers: Headers) -> bytes:
    """
    @return: the key a request presents, by the precedence of SPEC.md
        section 3.2 (Basic password > Bearer > C{x-api-key}), or C{b""}.
        Only the first value of each header counts.
    """
    authorization = _first(headers, b"authorization")
    basic = bearer = b""
    if authorization.startswith(b"Bearer "):
        bearer = authorization[len(b"Bearer "):]
    elif authorization.startswith(b"Basic "):
        try:
            decoded = base64.b64decode(authorization[len(b"Basic "):], validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        user, colon, password = decoded.partition(b":")
        if colon:
            basic = password
    return basic or bearer or _first(headers, b"x-api-key")


def checkAuth(headers: Headers, apiKeys: Iterable[str]) -> bool:
    """
    Whether a request may proceed.

    @param headers: the request headers (C{request.requestHeaders}).
    @param apiKeys: the configured keys; none means no authentication.

    @return: C{True} when C{apiKeys} is empty or the presented key equals
        one of them.  Every key is compared, in constant time, whatever
        matches.
    """
    keys = [key.encode("utf-8") for key in apiKeys]
    if not keys:
        return True
    presented = presentedKey(headers)
    if not presented:
        return False
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key)
    return matched


def stripCredentials(headers: Headers) -> Headers:
    """
    @return: a copy of C{headers} without C{Authorization} and
        C{x-api-key}, to forward upstream after a successful check.  (Call
        it only when C{apiKeys} is set: without keys the reference forwards
        the client's credentials untouched.)
    """
    out = Headers()
    for name, values in headers.getAllRawHeaders():
        if name.lower() not in CREDENTIAL_HEADERS:
            out.setRawHeaders(name, values)
    return out


def challenges(headers: Headers) -> bool:
    """
    @return: whether a 401 to a request with C{headers} should carry the
        C{WWW-Authenticate} challenge: not when the web UI sent it (it
        carries L{UI_HEADER}), which asks for the key in its own form.
    """
    return not headers.hasHeader(UI_HEADER)


class StreamTokens:
    """
    Short-lived tokens that let the UI's C{EventSource} (which cannot send
    headers) open C{GET /api/events}: C{<expiry>.<HMAC-SHA256 of it>},
    signed with a secret made when this object is, so no token outlives
    the process.  A token serves any number of connections until it
    expires; an open stream is not cut when it does.

    @param clock: gives the time tokens expire by.
    @param lifetime: seconds a token is accepted after it is issued.
    @param secret: the signing key (random by default).
    """

    def __init__(self, clock: IReactorTime, lifetime: float = 60.0,
                 secret: bytes | None = None) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self._secret = secret if secret is not None else os.urandom(32)

    def _sign(self, expiry: bytes) -> bytes:
        return hmac.new(self._secret, expiry, "sha256").hexdigest().encode("ascii")

    def issue(self) -> tuple[str, float]:
        """
        @return: C{(token, expiry)}, the expiry in POSIX seconds.
        """
        expiry = int(self.clock.seconds() + self.lifetime)
        stamp = str(expiry).encode("ascii")
        return (stamp + b"." + self._sign(stamp)).decode("ascii"), float(expiry)

    def accepts(self, token: bytes | str) -> bool:
        """
        @return: whether C{token} was issued here and has not expired.
        """
        if isinstance(token, str):
            token = token.encode("latin-1", "replace")
        stamp, dot, signature = token.partition(b".")
        if not dot or not stamp.isdigit():
            return False
        if not hmac.compare_digest(self._sign(stamp), signature):
            return False
        return int(stamp) >= self.clock.seconds()


def tokenAccepted(request, tokens: StreamTokens | None) -> bool:
    """
    @return: whether C{request} is a C{GET} of L{TOKEN_PATH} whose
        C{?token=} query parameter C{tokens} accepts.  No other route
        takes a token.
    """
    if tokens is None or request.method != b"GET" or request.path != TOKEN_PATH:
        return False
    values = (request.args or {}).get(b"token") or []
    return len(values) == 1 and tokens.accepts(values[0])
