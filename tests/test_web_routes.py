"""
Tests for the reference's other routes in L{llamaswap.web.app}: API keys,
filters, multipart uploads, query-named models, C{/upstream} passthrough and
peers; in memory, with a recording upstream.
"""

import base64
import hashlib
import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from treq.testing import RequestTraversalAgent, StubTreq

from llamaswap.config import loadConfigText
from llamaswap.router.router import RouterService
from llamaswap.web.app import LlamaSwapAPI
from tests.fakes import FakeMachine

CONFIG = """
apiKeys: [secret, other-key]
models:
  m:
    cmd: srv --port ${PORT}
    aliases: [alias-m]
    filters:
      stripParams: temperature
      setParams: {top_p: 0.9}
      setParamsByID:
        "m:high": {reasoning: high}
  renamed:
    cmd: srv --port ${PORT}
    useModelName: upstream-name
  "author/model":
    cmd: srv --port ${PORT}
peers:
  p:
    proxy: http://peer.example:9000/base
    apiKey: peer-key
    models: [remote, m]
"""


class Recorder(Resource):
    """
    An upstream that answers every request with what it received.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.seen = []

    def render(self, request):
        body = request.content.read()
        record = {
            "method": request.method.decode(),
            "uri": request.uri.decode(),
            "headers": {k.decode().lower(): v[0].decode()
                        for k, v in request.requestHeaders.getAllRawHeaders()},
            "body": base64.b64encode(body).decode(),
        }
        self.seen.append(record)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(record).encode()


class RecordingAgents:
    def __init__(self):
        self.upstreams = {}
        self.agents = {}

    def clientFor(self, key, url=b"", parallel=10, timeouts=None):
        if key not in self.agents:
            self.upstreams[key] = Recorder()
            self.agents[key] = RequestTraversalAgent(self.upstreams[key])
        return self.agents[key]


class RoutesTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.config = loadConfigText(CONFIG)
        self.router = RouterService(
            self.config,
            reactor=self.clock,
            machineFactory=lambda m, onExit: FakeMachine(m, onExit, []),
        )
        self.agents = RecordingAgents()
        api = LlamaSwapAPI(self.config, self.router, self.agents, clock=self.clock)
        self.client = StubTreq(api.resource())

    def pump(self):
        for _ in range(6):
            self.client.flush()
            for agent in self.agents.agents.values():
                agent.flush()
            for machine in self.router.machines.values():
                if machine.state == "starting":
                    machine.becomeReady()

    def send(self, method, path, data=None, headers=None, key="secret"):
        headers = dict(headers or {})
        if key:
            headers.setdefault("Authorization", f"Bearer {key}")
        d = self.client.request(method, "http://llamaswap" + path, data=data,
                                headers=headers, allow_redirects=False)
        self.pump()
        response = self.successResultOf(d)
        content = self.client.content(response)
        self.pump()
        return response, self.successResultOf(content)

    def sendJSON(self, path, body, **kw):
        headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
        return self.send("POST", path, json.dumps(body).encode(), headers, **kw)

    def received(self, response, body):
        self.assertEqual(response.code, 200, body)
        record = json.loads(body)
        record["body"] = base64.b64decode(record["body"])
        return record

    # -- auth -------------------------------------------------------------

    def test_bearerKeyIsAcceptedAndNotForwarded(self):
        record = self.received(*self.sendJSON("/v1/chat/completions", {"model": "m"}))
        self.assertNotIn("authorization", record["headers"])
        self.assertNotIn("x-api-key", record["headers"])

    def test_otherKeyFormsAreAccepted(self):
        for headers in ({"x-api-key": "other-key"},
                        {"Authorization": "Basic " + base64.b64encode(b"user:secret").decode()}):
            response, _ = self.sendJSON("/v1/chat/completions", {"model": "m"},
                                        headers=headers, key=None)
            self.assertEqual(response.code, 200)

    def test_missingOrWrongKeyIs401(self):
        for key in (None, "wrong"):
            response, body = self.sendJSON("/v1/chat/completions", {"model": "m"}, key=key)
            self.assertEqual(response.code, 401)
            self.assertEqual(json.loads(body)["error"]["message"],
                             "unauthorized: invalid or missing API key")
            self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"),
                             [b'Basic realm="llama-swap"'])

    def test_protectedAndOpenRoutes(self):
        for path in ("/v1/models", "/running", "/upstream/m/x"):
            response, _ = self.send("GET", path, key=None)
            self.assertEqual(response.code, 401, path)
        for path in ("/health", "/ui/"):
            response, _ = self.send("GET", path, key=None)
            self.assertEqual(response.code, 200, path)

    def test_preflightNeedsNoKey(self):
        response, _ = self.send("OPTIONS", "/v1/chat/completions", key=None)
        self.assertEqual(response.code, 204)

    # -- filters ----------------------------------------------------------

    def test_filtersShapeTheUpstreamBody(self):
        record = self.received(*self.sendJSON(
            "/v1/chat/completions", {"model": "m", "temperature": 0.2, "keep": [1, 2]}))
        sent = json.loads(record["body"])
        self.assertEqual(sent, {"model": "m", "keep": [1, 2], "top_p": 0.9})
        self.assertEqual(list(sent), ["model", "keep", "top_p"])

    def test_setParamsByIDAppliesToItsName(self):
        record = self.received(*self.sendJSON("/v1/chat/completions", {"model": "m:high"}))
        self.assertEqual(json.loads(record["body"])["reasoning"], "high")
        record = self.received(*self.sendJSON("/v1/chat/completions", {"model": "m"}))
        self.assertNotIn("reasoning", json.loads(record["body"]))

    def test_useModelNameRewritesTheModel(self):
        record = self.received(*self.sendJSON("/v1/embeddings", {"model": "renamed", "x": 1}))
        self.assertEqual(json.loads(record["body"]), {"model": "upstream-name", "x": 1})

    # -- multipart and query ----------------------------------------------

    def multipart(self, model, payload):
        boundary = "llamaswapboundary"
        body = (
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
        ).encode() + payload + f"\r\n--{boundary}--\r\n".encode()
        return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}

    def test_multipartTranscriptionIsRoutedByItsFormField(self):
        payload = bytes(range(256)) * 400
        body, headers = self.multipart("renamed", payload)
        record = self.received(*self.send("POST", "/v1/audio/transcriptions", body, headers))
        self.assertEqual(record["uri"], "/v1/audio/transcriptions")
        self.assertIn(b'name="model"\r\n\r\nupstream-name\r\n', record["body"])
        self.assertEqual(hashlib.sha256(record["body"]).hexdigest(), hashlib.sha256(
            body.replace(b"\r\n\r\nrenamed\r\n", b"\r\n\r\nupstream-name\r\n")).hexdigest())

    def test_queryNamesTheModelForVoices(self):
        record = self.received(*self.send("GET", "/v1/audio/voices?model=m"))
        self.assertEqual(record["uri"], "/v1/audio/voices?model=m")
        response, body = self.send("GET", "/v1/audio/voices")
        self.assertEqual(response.code, 404)

    # -- passthrough ------------------------------------------------------

    def test_upstreamPassthroughKeepsMethodPathAndQuery(self):
        record = self.received(*self.send("PUT", "/upstream/author/model/props?x=1", b"raw"))
        self.assertEqual((record["method"], record["uri"]), ("PUT", "/props?x=1"))
        self.assertEqual(record["body"], b"raw")
        self.assertIn("author/model", self.agents.upstreams)

    def test_upstreamAliasResolves(self):
        self.received(*self.send("GET", "/upstream/alias-m/"))
        self.assertIn("m", self.agents.upstreams)

    def test_upstreamWithoutSlashRedirects(self):
        response, _ = self.send("GET", "/upstream/m?a=b")
        self.assertEqual(response.code, 301)
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"/upstream/m/?a=b"])
        response, _ = self.send("POST", "/upstream/m")
        self.assertEqual(response.code, 308)

    def test_upstreamUnknownModelIs404(self):
        response, body = self.send("GET", "/upstream/missing/x")
        self.assertEqual(response.code, 404)
        self.assertEqual(json.loads(body)["error"]["message"], "model not found")

    def test_upstreamRootRedirectsToTheUI(self):
        response, _ = self.send("GET", "/upstream")
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"/ui/models"])

    # -- peers ------------------------------------------------------------

    def test_peerModelIsForwardedWithItsKey(self):
        record = self.received(*self.sendJSON("/v1/chat/completions", {"model": "remote"}))
        self.assertIn("peer:p", self.agents.upstreams)
        self.assertEqual(record["headers"]["authorization"], "Bearer peer-key")
        self.assertEqual(record["headers"]["x-api-key"], "peer-key")

    def test_localModelShadowsPeer(self):
        self.received(*self.sendJSON("/v1/chat/completions", {"model": "m"}))
        self.assertNotIn("peer:p", self.agents.upstreams)

    def test_modelsListIncludesPeerModels(self):
        response, body = self.send("GET", "/v1/models")
        records = {r["id"]: r for r in json.loads(body)["data"]}
        self.assertEqual(records["remote"]["name"], "p: remote")
        self.assertEqual(records["remote"]["meta"], {"llamaswap": {"peerID": "p"}})
        self.assertEqual(records["m"]["owned_by"], "llama-swap")

    def test_everyProtectedRouteNeedsAKey(self):
        from llamaswap.web.app import BODY_ROUTES, QUERY_ROUTES, V_ROUTES

        routes = [("POST", p) for p in BODY_ROUTES + V_ROUTES]
        routes += [("GET", p + "?model=m") for p in QUERY_ROUTES]
        routes += [("GET", p) for p in ("/v1/models", "/running", "/logs", "/logs/stream",
                                        "/api/events", "/api/metrics", "/api/captures/1",
                                        "/api/performance", "/api/version", "/unload")]
        routes += [("POST", p) for p in ("/api/models/unload", "/api/models/unload/m",
                                         "/api/models/load/m")]
        routes += [(method, "/upstream/m/props") for method in ("GET", "POST", "DELETE")]
        for key in (None, "wrong"):
            for method, path in routes:
                response, _ = self.send(method, path, b"{}" if method == "POST" else None,
                                        key=key)
                self.assertEqual(response.code, 401, (key, method, path))
        self.assertEqual(self.router.machines["m"].state, "stopped")

    def test_openRoutesNeedNoKey(self):
        for path in ("/health", "/wol-health", "/ui/", "/"):
            response, _ = self.send("GET", path, key=None)
            self.assertIn(response.code, (200, 302), path)
        # No observatory here: /metrics is 404, but not refused.
        response, _ = self.send("GET", "/metrics", key=None)
        self.assertNotEqual(response.code, 401)
