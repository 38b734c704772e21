# -*- test-case-name: tests.test_upstream_path -*-
"""
C{/upstream/{model}/{path...}}: direct access to a local model's upstream
(SPEC.md section 3.7, parity items 56-58).

Model ids may contain C{/}, so the model is found by joining the path's
segments left to right until the prefix is a local model id or alias
(C{/upstream/author/model/v1/chat} -> C{author/model}, C{/v1/chat}).  A
URL naming a model with nothing after it (C{/upstream/m}) is redirected to
C{/upstream/m/}.

Everything here is pure: the route calls L{upstreamSegments},
L{splitUpstreamPath} and, when the rest is empty, L{upstreamRedirect}.
"""

from __future__ import annotations

from typing import Sequence
from urllib.parse import unquote

#: The path prefix of the passthrough routes.
UPSTREAM_PREFIX = b"/upstream/"

#: The 404 message for a path that names no local model.
MODEL_NOT_FOUND = "model not found"


def upstreamSegments(path: bytes) -> list[str] | None:
    """
    @param path: the request path as received (C{request.path}: no query,
        still percent-encoded).

    @return: the segments after C{/upstream/} (still percent-encoded, so
        the rest of the path can be forwarded exactly as received), or
        L{None} when C{path} is not under C{/upstream/}.  C{/upstream/m}
        gives C{["m"]}, C{/upstream/m/} gives C{["m", ""]}.
    """
    if not path.startswith(UPSTREAM_PREFIX):
        return None
    return path[len(UPSTREAM_PREFIX):].decode("utf-8", "surrogateescape").split("/")


def splitUpstreamPath(segments: Sequence[str], config) -> tuple[str, str] | None:
    """
    Find the model a passthrough path names.

    @param segments: the path segments after C{/upstream/}, as from
        L{upstreamSegments}.  Each prefix is percent-decoded before it is
        looked up.
    @param config: anything with C{resolve(name) -> id or None} (the
        L{llamaswap.config.model.Config}); peers are not consulted.

    @return: C{(modelId, restPath)} for the shortest prefix that is a local
        model id or alias: C{restPath} is the rest of the path with a
        leading C{/} (C{"/"} for C{/upstream/m/}), or C{""} when the URL
        ends right after the name (redirect with L{upstreamRedirect}).
        L{None} when no prefix names a local model (404 L{MODEL_NOT_FOUND}).
    """
    for count in range(1, len(segments) + 1):
        name = unquote("/".join(segments[:count]), errors="surrogateescape")
        if not name:
            continue
        modelId = config.resolve(name)
        if modelId is not None:
            rest = segments[count:]
            return modelId, ("/" + "/".join(rest)) if rest else ""
    return None


def restPathBytes(restPath: str) -> bytes:
    """
    @return: C{restPath} (from L{splitUpstreamPath}) as the bytes the
        client sent.
    """
    return restPath.encode("utf-8", "surrogateescape")


def upstreamRedirect(method: bytes | str, uri: bytes) -> tuple[int, bytes]:
    """
    The redirect for a passthrough URL that ends right after the model
    name: to the same path with a C{/} added, query kept.

    @param method: the request method.
    @param uri: the request URI as received (C{request.uri}: path and
        query).

    @return: C{(status, location)}: 301 for C{GET} and C{HEAD}, 308 (which
        keeps the method and body) otherwise.
    """
    if isinstance(method, bytes):
        method = method.decode("latin-1")
    path, _, query = uri.partition(b"?")
    location = path + b"/" + (b"?" + query if query else b"")
    status = 301 if method.upper() in ("GET", "HEAD") else 308
    return status, location
