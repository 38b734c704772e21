"""
The HTTP API: inference routes relayed to upstreams, and the operational
routes of the reference (C{/v1/models}, C{/health}, C{/running}, unload).
"""

from __future__ import annotations

import json
import time
from typing import Callable

from klein import Klein
from twisted.logger import Logger
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from llamaswap.errors import LlamaSwapError, UnknownModel
from llamaswap.proxy.body import inspectBody, readBody
from llamaswap.proxy.relay import RelayResource, UpstreamAgents
from llamaswap.web.errors import renderError, toError, writeError
from llamaswap.web.loading import LoadingStream
from llamaswap.web.ui import UIResource, staticPath

# POST routes whose JSON body names the model (SPEC.md section 3.4).
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
    "/v1/images/generations",
    "/sdapi/v1/txt2img",
    "/sdapi/v1/img2img",
)

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


class _Preflight(Resource):
    """
    Answers every C{OPTIONS} request as a CORS preflight (SPEC.md section
    3.3), before routing and authentication; other methods go to C{wrapped}.
    """

    isLeaf = True

    def __init__(self, wrapped) -> None:
        super().__init__()
        self.wrapped = wrapped

    def render(self, request) -> bytes:
        if request.method != b"OPTIONS":
            return self.wrapped.render(request)
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
    @param agents: the L{UpstreamAgents} to relay requests with.
    @param clock: schedules the loading-state stream's output.
    @param now: returns the current POSIX time (for C{created} fields).
    @param staticDir: the web UI's files (default: the bundled ones).
    """

    app = Klein()
    log = Logger()

    def __init__(
        self,
        config,
        router,
        agents: UpstreamAgents,
        clock: IReactorTime,
        now: Callable[[], float] = time.time,
        staticDir: str | None = None,
    ) -> None:
        self.config = config
        self.router = router
        self.agents = agents
        self.clock = clock
        self.now = now
        self.uiResource = UIResource(staticDir or staticPath())
        self.bodyLimit = config.maxRequestBodyMB * 1024 * 1024

    def resource(self):
        """
        @return: the L{IResource} serving this API.
        """
        return _Preflight(self.app.resource())

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
        raw = readBody(request, self.bodyLimit)
        body = inspectBody(raw, request.getHeader(b"content-type"))
        loading = None
        modelId = self.config.resolve(body.model)
        if (
            loadingState
            and body.stream
            and modelId is not None
            and self.config.models[modelId].sendLoadingState
            and not self.router.isReady(modelId)
        ):
            loading = LoadingStream(request, self.clock, modelId)
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
        try:
            model = self.config.models[lease.modelId]
            payload = body.withModel(model.useModelName) if model.useModelName else raw
            url = lease.baseURL.rstrip("/").encode("utf-8") + upstreamPath
            agent = self.agents.agentFor(lease.modelId, model.concurrencyLimit)

            def done(status, failure) -> None:
                lease.release()

            return RelayResource(
                agent,
                url,
                request.method,
                request.requestHeaders,
                payload,
                onDone=done,
                writeError=lambda req, error: writeError(req, toError(error)),
                modelId=lease.modelId,
                headersSent=loading is not None,
            )
        except BaseException:
            lease.release()
            raise

    for _path in BODY_ROUTES:

        @app.route(_path, methods=["POST"], endpoint="inference:" + _path)
        async def inference(self, request):
            loadingState = request.path == b"/v1/chat/completions"
            return await self._relay(request, request.uri, loadingState)

    for _path in V_ROUTES:

        @app.route(_path, methods=["POST"], endpoint="inference-v:" + _path)
        async def inferenceV(self, request):
            return await self._relay(request, request.uri[len(b"/v"):])

    del _path

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

