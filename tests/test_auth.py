"""
Tests for L{llamaswap.web.auth}: API keys (SPEC.md section 3.2, parity
items 43-47).
"""

from __future__ import annotations

import base64

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from llamaswap.web import auth
from llamaswap.web.auth import (
    UNAUTHORIZED_MESSAGE,
    WWW_AUTHENTICATE,
    Unauthorized,
    checkAuth,
    isOpenPath,
    presentedKey,
    stripCredentials,
)

KEYS = ("secret", "other-key")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def headers(**values: str) -> Headers:
    """
    Build request headers; C{x_api_key} stands for C{x-api-key}.
    """
    h = Headers()
    for name, value in values.items():
        h.addRawHeader(name.replace("_", "-").encode(), value.encode())
    return h


class CheckAuthTests(SynchronousTestCase):
    def test_noKeysConfigured(self) -> None:
        self.assertTrue(checkAuth(headers(), ()))
        self.assertTrue(checkAuth(headers(authorization="Bearer anything"), []))

    def test_table(self) -> None:
        """
        Items 43-46: which presented credentials pass.
        """
        cases = [
            # (headers, accepted)
            ({}, False),
            ({"authorization": "Bearer secret"}, True),                     # 43
            ({"authorization": "Bearer other-key"}, True),
            ({"authorization": "Bearer wrong"}, False),                     # 44
            ({"authorization": "Bearer "}, False),
            ({"authorization": "bearer secret"}, False),
            ({"authorization": "Bearer  secret"}, False),
            ({"authorization": "secret"}, False),
            ({"x_api_key": "secret"}, True),                                # 45
            ({"x_api_key": "wrong"}, False),
            ({"authorization": basic("user", "secret")}, True),             # 45
            ({"authorization": basic("", "secret")}, True),
            ({"authorization": basic("secret", "wrong")}, False),           # user ignored
            ({"authorization": basic("u", "sec:ret")}, False),
            ({"authorization": basic("u", "wrong"), "x_api_key": "secret"}, False),
            # 46: Basic beats x-api-key, Bearer beats x-api-key.
            ({"authorization": "Bearer wrong", "x_api_key": "secret"}, False),
            ({"authorization": "Bearer secret", "x_api_key": "wrong"}, True),
            # 46: malformed Basic falls through to x-api-key.
            ({"authorization": "Basic !!!not-base64", "x_api_key": "secret"}, True),
            ({"authorization": "Basic " + base64.b64encode(b"no-colon").decode(),
              "x_api_key": "secret"}, True),
            ({"authorization": "Basic !!!not-base64"}, False),
            # An empty Basic password or Bearer key falls through too.
            ({"authorization": basic("u", ""), "x_api_key": "secret"}, True),
            ({"authorization": "Bearer ", "x_api_key": "secret"}, True),
            # Another scheme is ignored.
            ({"authorization": "Digest secret", "x_api_key": "secret"}, True),
        ]
        for values, accepted in cases:
            self.assertEqual(checkAuth(headers(**values), KEYS), accepted, values)

    def test_precedence(self) -> None:
        """
        Item 46: Basic > Bearer > x-api-key.
        """
        self.assertEqual(presentedKey(headers(authorization=basic("u", "b"), x_api_key="x")), b"b")
        self.assertEqual(presentedKey(headers(authorization="Bearer t", x_api_key="x")), b"t")
        self.assertEqual(presentedKey(headers(authorization="Basic %%%", x_api_key="x")), b"x")
        self.assertEqual(presentedKey(headers()), b"")

    def test_firstHeaderValueCounts(self) -> None:
        h = Headers({b"x-api-key": [b"wrong", b"secret"]})
        self.assertFalse(checkAuth(h, KEYS))
        h = Headers({b"authorization": [b"Bearer secret", b"Bearer wrong"]})
        self.assertTrue(checkAuth(h, KEYS))

    def test_exactMatch(self) -> None:
        for key in ("secre", "secret ", " secret", "SECRET", "secretsecret"):
            self.assertFalse(checkAuth(headers(x_api_key=key), KEYS), key)

    def test_nonAsciiKey(self) -> None:
        h = Headers({b"x-api-key": ["clé".encode("utf-8")]})
        self.assertTrue(checkAuth(h, ["clé"]))
        self.assertFalse(checkAuth(h, ["cle"]))

    def test_nothingLogged(self) -> None:
        with capturedLogs() as events:
            checkAuth(headers(x_api_key="wrong"), KEYS)
            checkAuth(headers(authorization="Bearer secret"), KEYS)
        self.assertEqual(events, [])

    def test_constantTime(self) -> None:
        """
        Keys are compared with L{hmac.compare_digest}, against every key.
        """
        calls = []

        def compare(a: bytes, b: bytes) -> bool:
            calls.append((a, b))
            return a == b

        self.patch(auth.hmac, "compare_digest", compare)
        self.assertTrue(checkAuth(headers(x_api_key="secret"), KEYS))
        self.assertEqual(calls, [(b"secret", b"secret"), (b"secret", b"other-key")])


class OpenPathTests(SynchronousTestCase):
    def test_table(self) -> None:
        """
        Item 47 and SPEC.md section 3.2: what needs a key.
        """
        cases = [
            ("GET", "/health", True),
            ("GET", "/wol-health", True),
            ("GET", "/", True),
            ("GET", "/ui", True),
            ("GET", "/ui/", True),
            ("GET", "/ui/assets/index.js", True),
            ("GET", "/favicon.ico", True),
            ("GET", "/metrics", True),
            ("GET", "/upstream", True),
            ("HEAD", "/upstream", True),
            ("OPTIONS", "/v1/chat/completions", True),
            ("OPTIONS", "/api/events", True),
            ("GET", "/v1/models", False),
            ("GET", "/logs", False),
            ("GET", "/logs/stream", False),
            ("GET", "/running", False),
            ("GET", "/api/events", False),
            ("POST", "/api/models/unload", False),
            ("GET", "/api/metrics", False),
            ("GET", "/upstream/m/health", False),
            ("GET", "/upstream/", False),
            ("POST", "/upstream", False),
            ("POST", "/v1/chat/completions", False),
            ("GET", "/unload", False),
            ("GET", "/uifoo", False),
            ("GET", "/metrics/extra", False),
            ("GET", "//health", False),
            ("GET", "/%68ealth", False),
            ("GET", "/HEALTH", False),
        ]
        for method, path, isOpen in cases:
            self.assertEqual(isOpenPath(method, path), isOpen, (method, path))
            self.assertEqual(isOpenPath(method.encode(), path.encode()), isOpen, (method, path))

    def test_methodCase(self) -> None:
        self.assertTrue(isOpenPath(b"options", b"/v1/models"))


class StripTests(SynchronousTestCase):
    def test_strip(self) -> None:
        """
        Item 43: the upstream sees neither C{Authorization} nor
        C{x-api-key}; other headers are kept with all their values.
        """
        h = Headers({
            b"Authorization": [b"Bearer secret"],
            b"X-Api-Key": [b"secret"],
            b"Accept": [b"text/event-stream"],
            b"X-Multi": [b"1", b"2"],
        })
        out = stripCredentials(h)
        self.assertFalse(out.hasHeader(b"authorization"))
        self.assertFalse(out.hasHeader(b"x-api-key"))
        self.assertEqual(out.getRawHeaders(b"accept"), [b"text/event-stream"])
        self.assertEqual(out.getRawHeaders(b"x-multi"), [b"1", b"2"])
        # The original is left alone.
        self.assertTrue(h.hasHeader(b"authorization"))


class ErrorTests(SynchronousTestCase):
    def test_unauthorized(self) -> None:
        """
        Item 44: 401, the reference's message and realm.
        """
        error = Unauthorized()
        self.assertEqual(error.code, 401)
        self.assertEqual(error.message, "unauthorized: invalid or missing API key")
        self.assertEqual(UNAUTHORIZED_MESSAGE, error.message)
        self.assertEqual(WWW_AUTHENTICATE, b'Basic realm="llama-swap"')
