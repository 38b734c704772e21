"""
Tests for L{llamaswap.proxy.peers} (SPEC.md sections 2.8 and 3.5, parity
items 37-39 and 48).
"""

from __future__ import annotations

import json
from textwrap import dedent

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from llamaswap.config import FiltersConfig, PeerConfig, loadConfigText
from llamaswap.proxy.peers import (
    PeerDirectory,
    peerHost,
    peerUnreachable,
    peerURL,
    upstreamRequest,
)

CONFIG = dedent("""
    models:
      a:
        cmd: srv --port ${PORT}
        aliases: [shared-alias]
      b:
        cmd: srv --port ${PORT}
        unlisted: true
    peers:
      p:
        proxy: http://peer-p.lan:9000
        models: [x, a, shared-alias, both]
      q:
        proxy: https://peer-q.example/base/
        apiKey: k
        models: [both, y]
        filters:
          stripParams: temperature
          setParams: {top_p: 0.9}
""").lstrip()


def peer(**kw) -> PeerConfig:
    kw.setdefault("id", "p")
    kw.setdefault("proxy", "http://peer.lan:9000")
    return PeerConfig(**kw)


class DirectoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.config = loadConfigText(CONFIG, {})
        self.directory = PeerDirectory.fromConfig(self.config)

    def test_peerFor(self) -> None:
        self.assertEqual(self.directory.peerFor("x").id, "p")
        self.assertEqual(self.directory.peerFor("y").id, "q")
        self.assertIsNone(self.directory.peerFor("nobody"))

    def test_localShadowsPeer(self) -> None:
        """
        Item 37: a name that is also a local model id or alias is local.
        """
        self.assertIsNone(self.directory.peerFor("a"))
        self.assertIsNone(self.directory.peerFor("shared-alias"))

    def test_firstPeerInSortedOrder(self) -> None:
        """
        A model listed by two peers goes to the first in sorted id order.
        """
        self.assertEqual(self.directory.peerFor("both").id, "p")
        reversedPeers = {"z": peer(id="z", models=("m",)), "c": peer(id="c", models=("m",))}
        self.assertEqual(PeerDirectory(reversedPeers).peerFor("m").id, "c")

    def test_literalMatch(self) -> None:
        self.assertIsNone(self.directory.peerFor("X"))
        self.assertIsNone(self.directory.peerFor(" x"))

    def test_listing(self) -> None:
        """
        Item 48: peer records carry C{"<peerID>: M"} as name and the peer
        id in C{meta.llamaswap.peerID}; shadowed names are left out.
        """
        records = self.directory.listing(1234)
        self.assertEqual([r["id"] for r in records], ["both", "x", "y"])
        self.assertEqual(records[1], {
            "id": "x",
            "object": "model",
            "created": 1234,
            "owned_by": "llama-swap",
            "name": "p: x",
            "meta": {"llamaswap": {"peerID": "p"}},
        })
        self.assertEqual(records[0]["meta"]["llamaswap"]["peerID"], "p")
        self.assertEqual(records[2]["name"], "q: y")

    def test_listingWithLocalModels(self) -> None:
        """
        Item 48 end to end: local a, unlisted b, peer p with x -> ids
        [a, x], sorted.
        """
        config = loadConfigText(dedent("""
            models:
              a: {cmd: "srv --port ${PORT}"}
              b: {cmd: "srv --port ${PORT}", unlisted: true}
            peers:
              p: {proxy: "http://h:1", models: [x]}
        """).lstrip(), {})
        local = [{"id": i} for i, m in config.models.items() if not m.unlisted]
        records = local + PeerDirectory.fromConfig(config).listing(0)
        self.assertEqual(sorted(r["id"] for r in records), ["a", "x"])

    def test_noPeers(self) -> None:
        directory = PeerDirectory({})
        self.assertIsNone(directory.peerFor("x"))
        self.assertEqual(directory.listing(0), [])


class URLTests(SynchronousTestCase):
    def test_join(self) -> None:
        cases = [
            ("http://h:9000", b"/v1/chat/completions", b"http://h:9000/v1/chat/completions"),
            ("http://h:9000/", b"/v1/models", b"http://h:9000/v1/models"),
            ("https://h/base", b"/v1/x", b"https://h/base/v1/x"),
            ("https://h/base/", b"/v1/x", b"https://h/base/v1/x"),
            ("http://h", b"/v1/audio/voices?model=tts", b"http://h/v1/audio/voices?model=tts"),
            ("http://h/b?key=1", b"/v1/x?model=m", b"http://h/b/v1/x?key=1&model=m"),
            ("http://h/b?key=1", b"/v1/x", b"http://h/b/v1/x?key=1"),
        ]
        for base, path, url in cases:
            self.assertEqual(peerURL(peer(proxy=base), path), url, (base, path))

    def test_host(self) -> None:
        self.assertEqual(peerHost(peer(proxy="http://peer.lan:9000/x")), b"peer.lan:9000")
        self.assertEqual(peerHost(peer(proxy="https://peer.example")), b"peer.example")
        self.assertEqual(peerHost(peer(proxy="http://u:pw@h:1")), b"h:1")
        self.assertEqual(peerHost(peer(proxy="http://[::1]:8080")), b"[::1]:8080")


class UpstreamRequestTests(SynchronousTestCase):
    def clientHeaders(self) -> Headers:
        return Headers({
            b"Content-Type": [b"application/json"],
            b"Host": [b"llamaswap.local:8080"],
            b"Authorization": [b"Bearer client"],
            b"Accept": [b"text/event-stream"],
        })

    def test_apiKey(self) -> None:
        """
        Item 38: the peer's key is sent as C{Authorization: Bearer} and
        C{x-api-key}; C{Host} is the peer's host.
        """
        p = peer(proxy="http://peer.lan:9000", apiKey="k")
        client = self.clientHeaders()
        url, out, body = upstreamRequest(p, b"/v1/chat/completions", client, b'{"model":"x"}', "x")
        self.assertEqual(url, b"http://peer.lan:9000/v1/chat/completions")
        self.assertEqual(out.getRawHeaders(b"authorization"), [b"Bearer k"])
        self.assertEqual(out.getRawHeaders(b"x-api-key"), [b"k"])
        self.assertEqual(out.getRawHeaders(b"host"), [b"peer.lan:9000"])
        self.assertEqual(out.getRawHeaders(b"accept"), [b"text/event-stream"])
        self.assertEqual(body, b'{"model":"x"}')
        # The client's headers are not modified.
        self.assertEqual(client.getRawHeaders(b"authorization"), [b"Bearer client"])
        self.assertEqual(client.getRawHeaders(b"host"), [b"llamaswap.local:8080"])

    def test_noApiKey(self) -> None:
        """
        Without a peer key, the client's headers (minus what llamaswap
        stripped before) go as they are.
        """
        _, out, _ = upstreamRequest(peer(), b"/v1/models", self.clientHeaders(), None)
        self.assertEqual(out.getRawHeaders(b"authorization"), [b"Bearer client"])
        self.assertFalse(out.hasHeader(b"x-api-key"))

    def test_filters(self) -> None:
        """
        Peer filters (strip/set) apply to JSON bodies; C{model} is never
        renamed.
        """
        p = peer(filters=FiltersConfig(stripParams=("temperature",), setParams={"top_p": 0.9}))
        raw = b'{"model": "x", "temperature": 1, "messages": []}'
        _, _, body = upstreamRequest(p, b"/v1/chat/completions", self.clientHeaders(), raw, "x")
        self.assertEqual(json.loads(body), {"model": "x", "messages": [], "top_p": 0.9})

    def test_filtersFromConfig(self) -> None:
        directory = PeerDirectory.fromConfig(loadConfigText(CONFIG, {}))
        q = directory.peerFor("y")
        raw = b'{"model": "y", "temperature": 1}'
        url, out, body = directory.upstreamRequest(q, b"/v1/completions", self.clientHeaders(),
                                                   raw, "y")
        self.assertEqual(url, b"https://peer-q.example/base/v1/completions")
        self.assertEqual(json.loads(body), {"model": "y", "top_p": 0.9})
        self.assertEqual(out.getRawHeaders(b"host"), [b"peer-q.example"])

    def test_unchangedBodyIsTheSameObject(self) -> None:
        raw = b'{"model": "x"}'
        _, _, body = upstreamRequest(peer(), b"/v1/x", self.clientHeaders(), raw, "x")
        self.assertIs(body, raw)

    def test_nonJSONBodyUntouched(self) -> None:
        p = peer(filters=FiltersConfig(setParams={"top_p": 0.9}))
        client = Headers({b"content-type": [b"multipart/form-data; boundary=b"]})
        raw = b"--b\r\n..."
        _, _, body = upstreamRequest(p, b"/v1/audio/transcriptions", client, raw, "x")
        self.assertIs(body, raw)


class ErrorTests(SynchronousTestCase):
    def test_unreachable(self) -> None:
        """
        Item 39: 502, message starting C{peer proxy error:}.
        """
        error = peerUnreachable("connection refused")
        self.assertEqual(error.code, 502)
        self.assertEqual(error.message, "peer proxy error: connection refused")
