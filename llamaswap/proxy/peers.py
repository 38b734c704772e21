# -*- test-case-name: tests.test_peers -*-
"""
Peers: remote llama-swaps (or OpenAI-compatible servers) that requests are
forwarded to without process management (SPEC.md sections 2.8 and 3.5,
parity items 37-39 and 48).

L{PeerDirectory} answers which peer serves a name and how the request to it
looks; the relay sends it.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from twisted.web.http_headers import Headers

from llamaswap.errors import UpstreamUnreachable
from llamaswap.proxy.filters import applyFilters

#: The prefix of the 502 message when a peer cannot be reached.
PEER_ERROR_PREFIX = "peer proxy error: "


def peerUnreachable(reason: str) -> UpstreamUnreachable:
    """
    @return: the 502 error for a peer that could not be reached: message
        C{peer proxy error: <reason>} (SPEC.md section 3.1).
    """
    return UpstreamUnreachable(PEER_ERROR_PREFIX + reason)


class PeerDirectory:
    """
    Which peer serves which model name.

    A name is served by a peer when the peer lists it literally and no
    local model answers to it (local ids, aliases and C{setParamsByID}
    keys shadow peers).  A name listed by several peers goes to the first
    of them in sorted peer id order.

    @param peers: peer id -> L{llamaswap.config.model.PeerConfig}
        (C{config.peers}).
    @param resolveLocal: returns the local model id a name stands for, or
        L{None} (C{config.resolve}); by default no name is local.
    """

    def __init__(
        self,
        peers: Mapping[str, Any],
        resolveLocal: Callable[[str], str | None] | None = None,
    ) -> None:
        self._peers = dict(peers)
        self._resolveLocal = resolveLocal or (lambda name: None)
        servedBy: dict[str, object] = {}
        for peerId in sorted(self._peers):
            peer = self._peers[peerId]
            for model in peer.models:
                servedBy.setdefault(model, peer)
        self._servedBy = servedBy

    @classmethod
    def fromConfig(cls, config) -> "PeerDirectory":
        """
        @return: the directory of a L{llamaswap.config.model.Config}: its
            peers, shadowed by its local models.
        """
        return cls(config.peers, config.resolve)

    def peerFor(self, modelName: str):
        """
        @return: the L{llamaswap.config.model.PeerConfig} that serves
            C{modelName} (matched literally), or L{None} when it is local
            or no peer lists it.
        """
        if self._resolveLocal(modelName) is not None:
            return None
        return self._servedBy.get(modelName)

    def listing(self, created: int) -> list[dict]:
        """
        The C{/v1/models} records of the peer models (SPEC.md section 3.5):
        C{{"id": M, "object": "model", "created": created, "owned_by":
        "llama-swap", "name": "<peerID>: M", "meta": {"llamaswap":
        {"peerID": "<peerID>"}}}}, one per name a peer actually serves
        (names shadowed by a local model or by an earlier peer are left
        out), in id order.
        """
        records = []
        for model in sorted(self._servedBy):
            peer = self.peerFor(model)
            if peer is None:
                continue
            records.append({
                "id": model,
                "object": "model",
                "created": created,
                "owned_by": "llama-swap",
                "name": f"{peer.id}: {model}",
                "meta": {"llamaswap": {"peerID": peer.id}},
            })
        return records

    def upstreamRequest(self, peer, path: bytes, headers: Headers, body: bytes | None,
                        requestedName: str = ""):
        """
        L{upstreamRequest} (the module function), for callers holding a
        directory.
        """
        return upstreamRequest(peer, path, headers, body, requestedName)


def peerURL(peer, path: bytes) -> bytes:
    """
    @return: the peer URL for a request path: the peer's C{proxy} base URL
        with C{path} appended to its path (one slash between them) and the
        queries of both joined with C{&}, as Go's
        C{httputil.NewSingleHostReverseProxy} does.

    @param path: the path (and query) to forward, as bytes
        (C{request.uri}, after the C{/v} prefix has been dropped).
    """
    base = urlsplit(peer.proxy)
    requestPath, _, requestQuery = path.partition(b"?")
    basePath = base.path.encode("utf-8")
    if basePath.endswith(b"/") and requestPath.startswith(b"/"):
        joined = basePath + requestPath[1:]
    elif not basePath.endswith(b"/") and not requestPath.startswith(b"/"):
        joined = basePath + b"/" + requestPath
    else:
        joined = basePath + requestPath
    baseQuery = base.query.encode("utf-8")
    query = b"&".join(q for q in (baseQuery, requestQuery) if q)
    url = f"{base.scheme}://{base.netloc}".encode("utf-8") + joined
    return url + b"?" + query if query else url


def peerHost(peer) -> bytes:
    """
    @return: the C{Host} header for a peer: the host (and port, when the
        URL has one) of its C{proxy} URL.
    """
    host = urlsplit(peer.proxy).netloc.rpartition("@")[2]
    try:
        return host.encode("ascii")
    except UnicodeEncodeError:
        return host.encode("idna")


def upstreamRequest(peer, path: bytes, headers: Headers, body: bytes | None,
                    requestedName: str = ""):
    """
    Build the request to send to a peer.

    @param peer: the L{llamaswap.config.model.PeerConfig} from
        L{PeerDirectory.peerFor}.
    @param path: the path and query to forward (C{/v} already dropped).
    @param headers: the client's headers, credentials already stripped when
        llamaswap checked a key; not modified.
    @param body: the client's body (L{None} for none).
    @param requestedName: the model name as the client sent it.

    @return: C{(url, headers, body)}: the URL of L{peerURL}; a copy of
        C{headers} with C{Host} set to L{peerHost} and, when the peer has
        an C{apiKey}, C{Authorization: Bearer <key>} and C{x-api-key:
        <key>} replacing the client's; and the body with the peer's filters
        applied (C{stripParams}, C{setParams}; never C{useModelName}) when
        it is JSON, else C{body} itself.

    @raise llamaswap.proxy.filters.FilterError: when a JSON body cannot be
        rewritten.
    """
    out = Headers()
    for name, values in headers.getAllRawHeaders():
        out.setRawHeaders(name, list(values))
    out.setRawHeaders(b"host", [peerHost(peer)])
    if peer.apiKey:
        key = peer.apiKey.encode("utf-8")
        out.setRawHeaders(b"authorization", [b"Bearer " + key])
        out.setRawHeaders(b"x-api-key", [key])
    if body:
        contentType = (headers.getRawHeaders(b"content-type") or [b""])[0]
        if b"application/json" in contentType.lower():
            filtered = applyFilters(body, peer.filters, requestedName)
            if filtered is not None:
                body = filtered
    return peerURL(peer, path), out, body
