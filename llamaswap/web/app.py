# -*- test-case-name: tests.test_web,tests.test_web_routes -*-
"""
The HTTP API: inference routes relayed to upstreams, and the operational
routes of the reference (C{/v1/models}, C{/health}, C{/running}, unload).
"""

from __future__ import annotations

import json
import time
from typing import Callable

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from llamaswap._version import __version__
from llamaswap.afterturn import Later, callNow
from llamaswap.errors import BadRequest, LlamaSwapError, ShuttingDown, UnknownModel
from llamaswap.proxy.body import readClientBody
from llamaswap.proxy.forward import Forwarder
from llamaswap.proxy.peers import PeerDirectory
from llamaswap.proxy.relay import UpstreamClients
from llamaswap.web.auth import (
    WWW_AUTHENTICATE,
    StreamTokens,
    Unauthorized,
    challenges,
    checkAuth,
    isOpenPath,
    stripCredentials,
    tokenAccepted,
)
from llamaswap.web.errors import renderError, toError, writeError
from llamaswap.web.loading import LoadingStream
from llamaswap.web.performance import PerformanceResource
from llamaswap.web.ui import UIResource, staticPath
from llamaswap.web.uiapi import UIApi
from llamaswap.web.upstream_path import (
    MODEL_NOT_FOUND,
    restPathBytes,
    splitUpstreamPath,
    upstreamRedirect,
    upstreamSegments,
)

# POST routes whose body names the model: JSON, or a multipart form for
# transcriptions and image edits (SPEC.md section 3.4).
BODY_ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/rerank",
    "/v1/reranking",
    "/rerank",
    "/reranking",
    "/infill",
    "/completion",
    "/v1/audio/speech",
    "/v1/audio/voices",
    "/v1/audio/transcriptions",
    "/v1/images/generations",
    "/v1/images/edits",
    "/sdapi/v1/txt2img",
    "/sdapi/v1/img2img",
)

# GET routes that name the model in the query (?model=).
QUERY_ROUTES = ("/v1/audio/voices", "/sdapi/v1/loras")

# The same, reached under /v/ and forwarded without it.
V_ROUTES = (
    "/v/chat/completions",
    "/v/responses",
    "/v/completions",
    "/v/messages",
    "/v/messages/count_tokens",
    "/v/embeddings",
    "/v/rerank",
    "/v/reranking",
)

_BODY_PATHS = frozenset(p.encode("ascii") for p in BODY_ROUTES)
_V_PATHS = frozenset(p.encode("ascii") for p in V_ROUTES)

CORS_METHODS = b"GET, POST, PUT, PATCH, DELETE, OPTIONS"
CORS_DEFAULT_HEADERS = b"Content-Type, Authorization, Accept, X-Requested-With"


def _json(request, obj: object, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(obj).encode("utf-8")


def _text(request, text: str, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return text.encode("utf-8")


def _isToken(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in name)


class _Front(Resource):
    """
    What every request meets first: C{OPTIONS} is answered as a CORS
    preflight (SPEC.md section 3.3); then, when the config has C{apiKeys},
    the key is checked (section 3.2) and removed from the headers that go
    upstream; everything else goes to C{wrapped}.
    """

    isLeaf = True

    def __init__(self, wrapped, apiKeys, api: "LlamaSwapAPI | None" = None,
                 tokens: StreamTokens | None = None, draining=lambda: False) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.apiKeys = tuple(apiKeys)
        self.api = api
        self.tokens = tokens
        self.draining = draining

    def render(self, request) -> object:
        if self.draining():  # shutting down: requests in flight finish, no new ones
            request.setHeader(b"connection", b"close")
            return renderError(request, ShuttingDown("llamaswap is shutting down"))
        if request.method == b"OPTIONS":
            return self.preflight(request)
        if self.apiKeys and not isOpenPath(request.method, request.path):
            if not (checkAuth(request.requestHeaders, self.apiKeys)
                    or tokenAccepted(request, self.tokens)):
                if challenges(request.requestHeaders):
                    request.setHeader(b"www-authenticate", WWW_AUTHENTICATE)
                return renderError(request, Unauthorized())
            request.requestHeaders = stripCredentials(request.requestHeaders)
        if self.api is not None and request.method == b"POST":
            hot = self.api.hotRoute(request)
            if hot is not None:
                return self.api.renderHot(request, hot)
        return self.wrapped.render(request)

    def preflight(self, request) -> bytes:
        request.setResponseCode(204)
        request.setHeader(b"access-control-allow-origin", b"*")
        request.setHeader(b"access-control-allow-methods", CORS_METHODS)
        request.setHeader(b"access-control-max-age", b"86400")
        asked = (request.getHeader(b"access-control-request-headers") or b"").decode("latin-1")
        names = [n.strip() for n in asked.split(",") if _isToken(n.strip())]
        allowed = ", ".join(names).encode("latin-1") if names else CORS_DEFAULT_HEADERS
        request.setHeader(b"access-control-allow-headers", allowed)
        return b""


class _Appended(Resource):
    """
    Appends C{body} to a response whose headers were already sent, and
    finishes it.
    """

    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body

    def render(self, request) -> object:
        if not request.finished and not getattr(request, "_disconnected", False):
            request.write(self.body)
            request.finish()
        return NOT_DONE_YET


class LlamaSwapAPI:
    """
    The Klein application.

    @param config: the validated L{llamaswap.config.Config}.
    @param router: the L{llamaswap.router.router.RouterService}.
    @param agents: the L{UpstreamClients} to relay requests with.
    @param clock: schedules the loading-state stream's output.
    @param now: returns the current POSIX time (for C{created} fields).
    @param staticDir: the web UI's files (default: the bundled ones).
    @param ui: the web UI's resource, when the caller already has one
        (its files are read when it is made).
    @param observatory: the L{llamaswap.observe.observatory.Observatory}
        that meters relayed requests and serves logs, events and metrics
        (without one, those routes answer 404).
    @param reload: reloads the config (C{POST /api/config/reload}); returns
        a L{Deferred} firing with a L{llamaswap.reload.ReloadReport}.
    @param streamTokens: the L{StreamTokens} of C{/api/events} (kept
        across reloads by the caller; a new one by default).
    @param later: runs the bookkeeping of each relayed request once it
        ended (an L{llamaswap.afterturn.AfterTurn}); at once by default.
    """

    app = Klein()
    app.url_map.merge_slashes = False  # /upstream/<model>/<path> keeps its path
    log = Logger()

    def __init__(
        self,
        config,
        router,
        agents: UpstreamClients,
        clock: IReactorTime,
        now: Callable[[], float] = time.time,
        staticDir: str | None = None,
        observatory=None,
        ui: UIResource | None = None,
        reload=None,
        streamTokens: StreamTokens | None = None,
        later: Later = callNow,
    ) -> None:
        self.config = config
        self.router = router
        self.agents = agents
        self.clock = clock
        self.now = now
        self.uiResource = ui if ui is not None else UIResource(staticDir or staticPath())
        self.peers = PeerDirectory.fromConfig(config)
        self.observatory = observatory
        self.bodyLimit = config.maxRequestBodyMB * 1024 * 1024
        self.streamTokens = streamTokens if streamTokens is not None else StreamTokens(clock)
        self.uiApi = UIApi(config, self.streamTokens, reload)
        self.forwarder = Forwarder(agents, clock, observatory,
                                   lambda req, error: writeError(req, toError(error)), later)

    def resource(self):
        """
        @return: the L{IResource} serving this API.
        """
        return _Front(self.app.resource(), self.config.apiKeys, self, self.streamTokens,
                      lambda: getattr(self.router, "draining", False))

    # -- hot routes: the inference POSTs, dispatched without Klein ----------

    def hotRoute(self, request):
        """
        @return: the coroutine answering C{request} when it is a POST on an
            inference route (the same handler as its Klein route), else
            L{None}.
        """
        path = request.path
        if path in _BODY_PATHS:
            return self._relay(request, request.uri, path == b"/v1/chat/completions")
        if path in _V_PATHS:
            return self._relay(request, request.uri[len(b"/v"):])
        return None

    def renderHot(self, request, coroutine) -> object:
        """
        Run a hot route's coroutine as Klein would: its result (a resource
        or bytes) rendered, an error rendered by L{anyError}, the wait for a
        model cancelled when the client goes away.
        """
        d = Deferred.fromCoroutine(coroutine)
        if not d.called:
            request.notifyFinish().addErrback(lambda _: d.cancel())

        def rendered(result: object) -> None:
            if request.finished or getattr(request, "_disconnected", False):
                return
            body = result.render(request) if hasattr(result, "render") else result
            if body is NOT_DONE_YET:
                return
            if isinstance(body, str):
                body = body.encode("utf-8")
            if isinstance(body, bytes) and body:
                request.setHeader(b"content-length", b"%d" % len(body))
                request.write(body)
            request.finish()

        def failed(f: Failure) -> None:
            if getattr(request, "_disconnected", False) or request.finished:
                return
            rendered(self.anyError(request, f))

        d.addCallbacks(rendered, failed).addErrback(
            lambda f: self.log.failure("rendering {uri}", f, uri=request.uri.decode("latin-1")))
        return NOT_DONE_YET


    # -- errors -----------------------------------------------------------

    @app.handle_errors(Exception)
    def anyError(self, request, failure) -> bytes:
        error = toError(failure)
        if error.code >= 500 and error.message == "internal error":
            self.log.failure("unhandled error answering {uri}", failure,
                             uri=request.uri.decode("latin-1"))
        return renderError(request, error)

    # -- inference --------------------------------------------------------

    async def _relay(self, request, upstreamPath: bytes, loadingState: bool = False):
        """
        Find the model of a model-dispatched request and relay it to the
        local upstream (loading it first) or to the peer that serves it.
        """
        body = readClientBody(request, self.bodyLimit)
        modelId = self.config.resolve(body.model)
        if modelId is None:
            peer = self.peers.peerFor(body.model)
            if peer is None:
                raise UnknownModel("no router for requested model")
            return self.forwarder.toPeer(request, peer, upstreamPath, body)
        loading = None
        if (
            loadingState
            and body.stream
            and self.config.models[modelId].sendLoadingState
            and not self.router.isReady(modelId)
        ):
            loading = LoadingStream(request, self.clock, modelId, progress=lambda: getattr(
                self.router, "progressOf", lambda m: None)(modelId))
        try:
            if loading is None:
                lease = await self.router.acquire(body.model)
            else:
                loading.start()
                lease = await self.router.acquire(
                    body.model, onQueuePosition=loading.queuePosition)
        except LlamaSwapError as error:
            if loading is None:
                raise
            await loading.done()
            return _Appended(renderError(request, error))
        if loading is not None:
            await loading.done()
        return self.forwarder.toModel(request, lease, self.config.models[lease.modelId],
                                      upstreamPath, body, headersSent=loading is not None)

    for _path in BODY_ROUTES:

        @app.route(_path, methods=["POST"], endpoint="inference:" + _path)
        async def inference(self, request):
            loadingState = request.path == b"/v1/chat/completions"
            return await self._relay(request, request.uri, loadingState)

    for _path in QUERY_ROUTES:

        @app.route(_path, methods=["GET"], endpoint="query:" + _path)
        async def inferenceQuery(self, request):
            return await self._relay(request, request.uri)

    for _path in V_ROUTES:

        @app.route(_path, methods=["POST"], endpoint="inference-v:" + _path)
        async def inferenceV(self, request):
            return await self._relay(request, request.uri[len(b"/v"):])

    del _path

    # -- passthrough ------------------------------------------------------

    @app.route("/upstream", methods=["GET", "HEAD"])
    def upstreamRoot(self, request) -> bytes:
        request.redirect(b"/ui/models")
        return b""

    @app.route(
        "/upstream/<path:rest>",
        methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
    )
    async def upstream(self, request, rest: str):
        """
        C{/upstream/<model>/<path>}: any request relayed as it is to the
        model's own server (SPEC.md section 3.7), loading it first.
        """
        segments = upstreamSegments(request.path) or []
        found = splitUpstreamPath(segments, self.config)
        if found is None:
            raise UnknownModel(MODEL_NOT_FOUND)
        modelId, restPath = found
        if not restPath:
            status, location = upstreamRedirect(request.method, request.uri)
            request.setResponseCode(status)
            request.setHeader(b"location", location)
            return b""
        query = request.uri.partition(b"?")[2]
        upstreamPath = restPathBytes(restPath) + (b"?" + query if query else b"")
        lease = await self.router.acquire(modelId, limited=False)
        return self.forwarder.toModel(request, lease, self.config.models[lease.modelId],
                                      upstreamPath)

    # -- models and operations --------------------------------------------

    @app.route("/v1/models", methods=["GET"])
    def listModels(self, request) -> bytes:
        created = int(self.now())
        data = []
        for modelId, model in self.config.models.items():
            if model.unlisted:
                continue
            record = self._modelRecord(modelId, model, created)
            data.append(record)
            if self.config.includeAliasesInList:
                for alias in model.aliases:
                    if alias.strip():
                        data.append(dict(record, id=alias))
        data += self.peers.listing(created)
        data.sort(key=lambda r: r["id"])
        origin = request.getHeader(b"origin")
        if origin:
            request.setHeader(b"access-control-allow-origin", origin)
        return _json(request, {"object": "list", "data": data})

    @staticmethod
    def _modelRecord(modelId: str, model, created: int) -> dict:
        record: dict = {
            "id": modelId,
            "object": "model",
            "created": created,
            "owned_by": "llama-swap",
        }
        if model.name.strip():
            record["name"] = model.name.strip()
        if model.description.strip():
            record["description"] = model.description.strip()
        if model.metadata:
            record["meta"] = {"llamaswap": model.metadata}
        return record

    # -- observability ------------------------------------------------------

    def _observe(self):
        if self.observatory is None:
            raise UnknownModel("not found")
        return self.observatory

    @app.route("/logs", methods=["GET"])
    def logs(self, request) -> bytes:
        accept = (request.getHeader(b"accept") or b"").lower()
        if b"text/html" in accept:
            request.redirect(b"/ui/")
            return b""
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return self._observe().hub.combined.history()

    @app.route("/logs/stream", methods=["GET"])
    def logStream(self, request):
        hub = self._observe().hub
        return self.observatory.streams.resourceFor(hub.combined)

    @app.route("/logs/stream/<path:name>", methods=["GET"])
    def logStreamOf(self, request, name: str):
        hub = self._observe().hub
        if name not in ("proxy", "upstream"):
            name = self.config.resolve(name) or name
            if name not in self.config.models:
                raise BadRequest("invalid logger. Use 'proxy', 'upstream' or a model's ID")
        return self.observatory.streams.resourceFor(hub.buffer(name, create=True))

    @app.route("/api/events", methods=["GET"])
    def events(self, request):
        return self._observe().events

    @app.route("/api/metrics", methods=["GET"])
    def activity(self, request) -> bytes:
        return _json(request, self._observe().activity.listJSON())

    @app.route("/api/captures/<captureId>", methods=["GET"])
    def capture(self, request, captureId: str) -> bytes:
        if not captureId.isdigit():
            raise BadRequest("invalid capture ID")
        found = self._observe().captures.get(int(captureId))
        if found is None:
            raise UnknownModel("capture not found")
        return _json(request, found)

    @app.route("/metrics", methods=["GET"])
    def prometheus(self, request):
        return self._observe().metricsResource

    @app.route("/api/performance", methods=["GET"])
    def performance(self, request):
        return PerformanceResource(self._observe().performance)

    # -- the web UI's own API (llamaswap/web/uiapi.py) ---------------------

    @app.route("/api/config", methods=["GET"])
    def effectiveConfig(self, request) -> bytes:
        return self.uiApi.config(request)

    @app.route("/api/config/reload", methods=["POST"])
    async def reloadConfig(self, request) -> bytes:
        return await self.uiApi.reload(request)

    @app.route("/api/events/token", methods=["POST"])
    def eventsToken(self, request) -> bytes:
        return self.uiApi.eventsToken(request)

    @app.route("/api/version", methods=["GET"])
    def version(self, request) -> bytes:
        return _json(request, {"version": __version__, "commit": "", "build_date": ""})

    @app.route("/health", methods=["GET", "HEAD"])
    @app.route("/wol-health", methods=["GET", "HEAD"], endpoint="wolHealth")
    def health(self, request) -> bytes:
        return _text(request, "OK")

    @app.route("/", methods=["GET", "HEAD"])
    def root(self, request) -> bytes:
        request.redirect(b"/ui")
        return b""

    @app.route("/ui", methods=["GET", "HEAD"])
    def uiRedirect(self, request) -> bytes:
        request.redirect(b"/ui/")
        return b""

    @app.route("/ui/", branch=True, methods=["GET", "HEAD"])
    def ui(self, request):
        return self.uiResource

    @app.route("/running", methods=["GET"])
    def running(self, request) -> bytes:
        return _json(request, {"running": self.router.runningModels()})

    @app.route("/api/models/unload", methods=["POST"])
    async def unloadAll(self, request) -> bytes:
        await self.router.unload()
        return _json(request, {"msg": "ok"})

    @app.route("/unload", methods=["GET"])
    async def unloadAllGet(self, request) -> bytes:
        await self.router.unload()
        return _text(request, "OK")

    @app.route("/api/models/load/<path:name>", methods=["POST"])
    async def loadOne(self, request, name: str) -> bytes:
        modelId = self.config.resolve(name)
        if modelId is None:
            raise UnknownModel("model not found")
        await self.router.load(modelId)
        return _json(request, {"msg": "ok", "model": modelId, "state": "ready"})

    @app.route("/api/models/unload/<path:name>", methods=["POST"])
    async def unloadOne(self, request, name: str) -> bytes:
        modelId = self.config.resolve(name)
        if modelId is None:
            raise UnknownModel("model not found")
        await self.router.unload(modelId)
        return _text(request, "OK")

