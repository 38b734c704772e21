# -*- test-case-name: tests.test_web_routes -*-
"""
The one way a request leaves llamaswap: L{Forwarder} takes a parsed request
and what serves it (a router lease, or a peer) and returns the
L{RelayResource} that relays it, body rewritten (filters, C{useModelName},
multipart forms), metered (token metrics, activity, capture, Prometheus,
phases) and under the model's timeouts.  Model routes and
C{/upstream/...} passthrough go through the same L{Forwarder.toModel}.
"""

from __future__ import annotations

from typing import Any, Callable

from llamaswap.afterturn import Later, callNow
from llamaswap.errors import UpstreamUnreachable
from llamaswap.proxy.body import ClientBody
from llamaswap.proxy.client import Limits
from llamaswap.proxy.filters import applyFilters
from llamaswap.proxy.multipart import SplicedFileProducer, bodyProducer
from llamaswap.proxy.peers import peerUnreachable, upstreamRequest
from llamaswap.proxy.relay import RelayResource, UpstreamClients

#: C{/upstream/...} request bodies up to this size are kept for their capture.
CAPTURED_UPSTREAM_BODY = 1024 * 1024


def contentLength(request) -> int:
    """
    @return: the length of the body twisted.web received for C{request}.
    """
    content = request.content
    if content is None:
        return 0
    content.seek(0, 2)
    length = content.tell()
    content.seek(0)
    return length


class Forwarder:
    """
    @param clients: the L{UpstreamClients} (one keep-alive pool each).
    @param clock: paces streamed uploads.
    @param observatory: meters relayed requests (or L{None}: none).
    @param writeError: answers a request with an exception (a
        L{llamaswap.errors.LlamaSwapError}) and finishes it.
    @param later: runs the bookkeeping of each ended exchange (see
        L{RelayResource}); at once by default.
    """

    def __init__(self, clients: UpstreamClients, clock, observatory,
                 writeError: Callable[[Any, Exception], None], later: Later = callNow) -> None:
        self.clients = clients
        self.later = later
        self.clock = clock
        self.observatory = observatory
        self.writeError = writeError
        # id(timeouts) -> (timeouts, its Limits): a model's timeouts are one
        # object until a reload (hashing one by value takes every field).
        self._limits: dict[int, tuple[Any, Limits]] = {}

    def limits(self, timeouts) -> Limits:
        """
        @return: the L{Limits} of a model's or peer's C{timeouts}.
        """
        if timeouts is None:
            return Limits()
        known = self._limits.get(id(timeouts))
        if known is not None and known[0] is timeouts:
            return known[1]
        if len(self._limits) >= 1024:
            self._limits.clear()  # reloads made new timeouts objects
        limits = Limits(responseHeader=timeouts.responseHeader,
                        idle=getattr(timeouts, "responseIdle", 0))
        self._limits[id(timeouts)] = (timeouts, limits)
        return limits

    def toModel(self, request, lease, model, upstreamPath: bytes,
                body: ClientBody | None = None, headersSent: bool = False) -> RelayResource:
        """
        Relay C{request}, holding C{lease} (released when it ends), to the
        upstream of C{model} (its L{llamaswap.config.model.ModelConfig}).

        @param body: the parsed body of a model route (rewritten for the
            model), or L{None} for C{/upstream/...}: the body goes as it is,
            streamed from its spool file.
        @param headersSent: a loading-state stream already sent the status
            and headers.
        """
        try:
            url = lease.baseURL.rstrip("/").encode("utf-8") + upstreamPath
            if body is not None:
                payload, raw = self._payload(request, body, model), body.raw
            else:
                payload, raw = self._passthrough(request)
            meter = None
            # Model routes are metered for POSTs (the reference's rule);
            # /upstream/... passthrough for every method, so that the UI's
            # activity shows all of it.
            if self.observatory is not None and (body is None or request.method == b"POST"):
                path = request.path.decode("utf-8", "replace")
                # Prometheus labels stay few: every passthrough path is one
                # route, "/upstream" (the activity entry keeps the path).
                route = path if body is not None else "/upstream"
                meter = self.observatory.meter(
                    lease.modelId, path, route, request.requestHeaders, raw, lease)
            return RelayResource(
                self.clients.clientFor(lease.modelId, url, model.concurrencyLimit,
                                       model.timeouts),
                url,
                request.method,
                request.requestHeaders,
                payload,
                onDone=lambda status, failure: lease.release(),
                writeError=self.writeError,
                modelId=lease.modelId,
                headersSent=headersSent,
                meter=meter,
                limits=self.limits(model.timeouts),
                later=self.later,
            )
        except BaseException:
            lease.release()
            raise

    def toPeer(self, request, peer, upstreamPath: bytes, body: ClientBody) -> RelayResource:
        """
        Relay C{request} to C{peer} (a L{llamaswap.config.model.PeerConfig}).
        """
        raw = body.raw if body.form is None else None
        url, headers, payload = upstreamRequest(
            peer, upstreamPath, request.requestHeaders, raw, body.model)
        if body.form is not None:
            payload = bodyProducer(request.content, body.form, "", self.clock)

        def unreachable(req, error: Exception) -> None:
            reason = error.message if isinstance(error, UpstreamUnreachable) else str(error)
            self.writeError(req, peerUnreachable(reason.removeprefix("upstream unreachable: ")))

        return RelayResource(
            self.clients.clientFor("peer:" + peer.id, url,
                                   timeouts=getattr(peer, "timeouts", None)),
            url,
            request.method,
            headers,
            payload,
            onDone=lambda status, failure: None,
            writeError=unreachable,
            modelId=f"{peer.id}: {body.model}",
            limits=self.limits(getattr(peer, "timeouts", None)),
            later=self.later,
        )

    def _payload(self, request, body: ClientBody, model):
        """
        @return: the body to send upstream for C{model}: the JSON body with
            the model's filters applied (the same bytes when none apply),
            a producer streaming a multipart form (its C{model} field
            rewritten for C{useModelName}), or L{None}.
        """
        if body.form is not None:
            return bodyProducer(request.content, body.form, model.useModelName, self.clock)
        if body.raw is not None and body.isJSON:
            return applyFilters(body.raw, model.filters, body.model, model.useModelName) or body.raw
        return body.raw

    def _passthrough(self, request) -> tuple[Any, bytes | None]:
        """
        @return: the producer of a passthrough body (or L{None}), and its
            bytes when small enough to capture.
        """
        length = contentLength(request)
        if not length:
            return None, None
        raw = None
        if length <= CAPTURED_UPSTREAM_BODY:
            raw = request.content.read()
            request.content.seek(0)
        return SplicedFileProducer(request.content, length, clock=self.clock), raw
