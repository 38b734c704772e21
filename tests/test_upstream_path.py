"""
Tests for L{llamaswap.web.upstream_path}: C{/upstream/{model}/{path...}}
(SPEC.md section 3.7, parity items 56-58).
"""

from __future__ import annotations

from textwrap import dedent

from twisted.trial.unittest import SynchronousTestCase

from llamaswap.config import loadConfigText
from llamaswap.web.upstream_path import (
    restPathBytes,
    splitUpstreamPath,
    upstreamRedirect,
    upstreamSegments,
)

CONFIG = dedent("""
    models:
      m:
        cmd: srv --port ${PORT}
        aliases: [m-alias]
      author/model:
        cmd: srv --port ${PORT}
        aliases: [short]
      author/model/v2:
        cmd: srv --port ${PORT}
      "llamá":
        cmd: srv --port ${PORT}
      tuned:
        cmd: srv --port ${PORT}
        filters:
          setParamsByID:
            "tuned:hot": {temperature: 1.5}
    peers:
      p:
        proxy: http://peer:1
        models: [peer-model]
""").lstrip()


class SplitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.config = loadConfigText(CONFIG, {})

    def split(self, path: bytes):
        segments = upstreamSegments(path)
        self.assertIsNotNone(segments, path)
        return splitUpstreamPath(segments, self.config)

    def test_table(self) -> None:
        """
        Items 56-58: the shortest prefix that is a local id or alias names
        the model; the rest is forwarded.
        """
        cases = [
            (b"/upstream/author/model/props", ("author/model", "/props")),          # 56
            (b"/upstream/author/model/v1/chat", ("author/model", "/v1/chat")),
            (b"/upstream/author/model/v2/health", ("author/model", "/v2/health")),
            (b"/upstream/m/health", ("m", "/health")),
            (b"/upstream/m/", ("m", "/")),
            (b"/upstream/m", ("m", "")),                                            # 57
            (b"/upstream/m-alias/props", ("m", "/props")),                          # 58
            (b"/upstream/short/x/y/", ("author/model", "/x/y/")),
            (b"/upstream/tuned:hot/props", ("tuned", "/props")),
            (b"/upstream/m//double", ("m", "//double")),
            (b"/upstream/llam%C3%A1/props", ("llamá", "/props")),
            (b"/upstream/author%2Fmodel/props", ("author/model", "/props")),
            (b"/upstream/missing/x", None),                                         # 58
            (b"/upstream/author", None),
            (b"/upstream/peer-model/v1/models", None),
            (b"/upstream/", None),
            (b"/upstream//m", None),
        ]
        for path, expected in cases:
            self.assertEqual(self.split(path), expected, path)

    def test_restKeepsEncoding(self) -> None:
        """
        The rest of the path is forwarded exactly as received.
        """
        modelId, rest = self.split(b"/upstream/m/files/a%20b%2Fc/\xc3\xa9")
        self.assertEqual(modelId, "m")
        self.assertEqual(restPathBytes(rest), b"/files/a%20b%2Fc/\xc3\xa9")

    def test_undecodableBytes(self) -> None:
        modelId, rest = self.split(b"/upstream/m/\xff\xfe")
        self.assertEqual(restPathBytes(rest), b"/\xff\xfe")
        self.assertIsNone(self.split(b"/upstream/\xff/x"))

    def test_segments(self) -> None:
        self.assertEqual(upstreamSegments(b"/upstream/a/b"), ["a", "b"])
        self.assertEqual(upstreamSegments(b"/upstream/a/"), ["a", ""])
        self.assertIsNone(upstreamSegments(b"/upstream"))
        self.assertIsNone(upstreamSegments(b"/v1/models"))


class RedirectTests(SynchronousTestCase):
    def test_table(self) -> None:
        """
        Item 57: 301 for GET and HEAD, 308 otherwise; query kept.
        """
        cases = [
            (b"GET", b"/upstream/m", 301, b"/upstream/m/"),
            (b"HEAD", b"/upstream/m", 301, b"/upstream/m/"),
            (b"POST", b"/upstream/m", 308, b"/upstream/m/"),
            ("PUT", b"/upstream/m", 308, b"/upstream/m/"),
            (b"DELETE", b"/upstream/m-alias", 308, b"/upstream/m-alias/"),
            (b"GET", b"/upstream/m?a=1&b=2", 301, b"/upstream/m/?a=1&b=2"),
            (b"POST", b"/upstream/author/model?x", 308, b"/upstream/author/model/?x"),
            (b"GET", b"/upstream/m?", 301, b"/upstream/m/"),
        ]
        for method, uri, status, location in cases:
            self.assertEqual(upstreamRedirect(method, uri), (status, location), (method, uri))
