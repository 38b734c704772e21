"""
Tests for L{llamaswap.web.app}: routes, error shapes and relaying, in memory.

The API runs behind L{StubTreq}; the router is real, its machines are fakes
that the tests bring up; upstream requests go, through a
L{RequestTraversalAgent}, to the demo responder's resource.
"""

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from treq.testing import StubTreq

from llamaswap.config import loadConfigText
from llamaswap.router.router import RouterService
from llamaswap.web.app import LlamaSwapAPI
from tests.fakes import FakeAgents, FakeMachine

CONFIG = """
includeAliasesInList: true
maxRequestBodyMB: 1
models:
  a:
    cmd: srv --port ${PORT}
    aliases: [alpha]
    name: "  Model A  "
    metadata: {port: "${PORT}"}
  b:
    cmd: srv --port ${PORT}
    useModelName: upstream-b
  hidden:
    cmd: srv --port ${PORT}
    unlisted: true
  one:
    cmd: srv --port ${PORT}
    concurrencyLimit: 1
  chatty:
    cmd: srv --port ${PORT}
    sendLoadingState: true
"""


def reasoning(chunks):
    """
    @return: the loading-state text carried by the SSE events in C{chunks}.
    """
    events = b"".join(chunks).decode().split("\n\n")
    return "".join(
        json.loads(e[6:])["choices"][0]["delta"].get("reasoning_content", "")
        for e in events
        if e.startswith("data: {") and "reasoning_content" in e
    )


class APITests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.config = loadConfigText(CONFIG)
        self.machineLog = []
        self.router = RouterService(
            self.config,
            reactor=self.clock,
            machineFactory=lambda m, onExit: FakeMachine(m, onExit, self.machineLog),
        )
        self.agents = FakeAgents(self.clock)
        api = LlamaSwapAPI(
            self.config, self.router, self.agents, clock=self.clock, now=lambda: 1700000000
        )
        self.client = StubTreq(api.resource())

    def request(self, method, path, body=None, headers=None, ready=()):
        """
        Send a request; bring up C{ready} models once it waits for them.

        @return: (response, body bytes)
        """
        kwargs = {}
        if body is not None:
            kwargs["data"] = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        d = self.client.request(
            method, "http://llamaswap" + path, headers=headers, allow_redirects=False, **kwargs
        )
        self.pump()
        for name in ready:
            machine = self.router.machines[name]
            if machine.state == "starting":
                machine.becomeReady()
            self.pump()
        response = self.successResultOf(d)
        content = self.client.content(response)
        self.pump()
        return response, self.successResultOf(content)

    def pump(self):
        for _ in range(5):
            self.client.flush()
            for agent in self.agents.agents.values():
                agent.flush()

    def assertError(self, response, body, code, message):
        self.assertEqual(response.code, code)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"application/json"]
        )
        error = json.loads(body)["error"]
        self.assertEqual(error["message"], message)
        self.assertEqual(error["code"], code)
        self.assertIn("type", error)

    def chat(self, model, **extra):
        return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}

    def test_chatCompletionIsRelayed(self):
        response, body = self.request("POST", "/v1/chat/completions", self.chat("a"), ready=["a"])
        self.assertEqual(response.code, 200)
        answer = json.loads(body)
        self.assertEqual(answer["object"], "chat.completion")
        self.assertEqual(answer["usage"]["completion_tokens"], 3)
        self.assertEqual(response.headers.getRawHeaders(b"x-demo-model"), [b"a"])

    def test_streamedChatIsRelayedAsEvents(self):
        response, body = self.request(
            "POST", "/v1/chat/completions", self.chat("a", stream=True), ready=["a"]
        )
        self.assertEqual(response.headers.getRawHeaders(b"x-accel-buffering"), [b"no"])
        events = [e for e in body.decode().split("\n\n") if e]
        self.assertEqual(events[-1], "data: [DONE]")
        self.assertGreaterEqual(len(events), 4)

    def test_leaseIsReleasedAfterTheResponse(self):
        self.request("POST", "/v1/chat/completions", self.chat("a"), ready=["a"])
        self.assertEqual(self.router.ledger.inFlight("a"), 0)
        self.assertEqual(self.router.ledger.admitted("a"), 0)

    def test_useModelNameRewritesTheBodyModel(self):
        response, body = self.request(
            "POST", "/v1/chat/completions", self.chat("b"), ready=["b"]
        )
        self.assertEqual(json.loads(body)["model"], "upstream-b")

    def test_vPrefixIsStripped(self):
        # The demo serves /chat/completions (like llama-server), not /v/...
        response, body = self.request(
            "POST", "/v/chat/completions", self.chat("a"), ready=["a"]
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["object"], "chat.completion")

    def test_aliasIsRouted(self):
        response, body = self.request(
            "POST", "/v1/chat/completions", self.chat("alpha"), ready=["a"]
        )
        self.assertEqual(response.code, 200)

    def test_everyCoreRouteIsRelayed(self):
        for path, body in [
            ("/v1/completions", {"model": "a", "prompt": "hi"}),
            ("/v1/embeddings", {"model": "a", "input": "hi"}),
            ("/v1/responses", {"model": "a", "input": "hi"}),
            ("/v1/messages", {"model": "a", "max_tokens": 5,
                              "messages": [{"role": "user", "content": "hi"}]}),
            ("/v1/messages/count_tokens", {"model": "a",
                                           "messages": [{"role": "user", "content": "hi"}]}),
        ]:
            response, _ = self.request("POST", path, body, ready=["a"])
            self.assertEqual(response.code, 200, path)

    def test_missingModelIs404(self):
        response, body = self.request("POST", "/v1/chat/completions", {"messages": []})
        self.assertError(response, body, 404, "no model id could be identified")

    def test_badJsonIs400(self):
        response, body = self.request("POST", "/v1/chat/completions", b'{"model": ')
        self.assertEqual(response.code, 400)
        self.assertIn("invalid JSON", json.loads(body)["error"]["message"])

    def test_unknownModelIs404(self):
        response, body = self.request("POST", "/v1/chat/completions", self.chat("nope"))
        self.assertError(response, body, 404, "no router for requested model")

    def test_bodyOverTheCapIs413(self):
        big = {"model": "a", "pad": "x" * (1024 * 1024)}
        response, body = self.request("POST", "/v1/chat/completions", big)
        self.assertEqual(response.code, 413)
        self.assertEqual(json.loads(body)["error"]["code"], 413)
        self.assertEqual(self.machineLog, [])

    def test_startFailureIs502(self):
        d = self.client.post(
            "http://llamaswap/v1/chat/completions",
            data=json.dumps(self.chat("a")).encode(),
            headers={"Content-Type": "application/json"},
        )
        self.pump()
        self.router.machines["a"].failStart("upstream command exited prematurely")
        self.pump()
        response = self.successResultOf(d)
        body = self.successResultOf(self.client.content(response))
        self.assertEqual(response.code, 502)
        self.assertIn("upstream command exited prematurely", json.loads(body)["error"]["message"])

    def test_concurrencyLimitIs429(self):
        first = self.client.post(
            "http://llamaswap/v1/chat/completions",
            data=json.dumps(self.chat("one")).encode(),
            headers={"Content-Type": "application/json"},
        )
        self.pump()
        response, body = self.request("POST", "/v1/chat/completions", self.chat("one"))
        self.assertEqual(response.code, 429)
        self.assertNoResult(first)

    def test_textPlainErrorsForTextClients(self):
        response, body = self.request(
            "POST", "/v1/chat/completions", {"x": 1}, headers={"Accept": "text/plain"}
        )
        self.assertEqual(body, b"llama-swap: no model id could be identified")

    def test_unknownPathIsJson404(self):
        response, body = self.request("GET", "/nope")
        self.assertEqual(response.code, 404)
        self.assertEqual(json.loads(body)["error"]["code"], 404)

    def test_wrongMethodIsJson405(self):
        response, body = self.request("GET", "/v1/chat/completions")
        self.assertEqual(response.code, 405)
        self.assertEqual(json.loads(body)["error"]["code"], 405)

    def test_modelsListsListedModelsAndAliases(self):
        response, body = self.request("GET", "/v1/models", headers={"Origin": "http://ui"})
        listing = json.loads(body)
        self.assertEqual(listing["object"], "list")
        ids = [m["id"] for m in listing["data"]]
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(set(ids), {"a", "alpha", "b", "one", "chatty"})
        a = next(m for m in listing["data"] if m["id"] == "a")
        self.assertEqual(a["object"], "model")
        self.assertEqual(a["owned_by"], "llama-swap")
        self.assertEqual(a["created"], 1700000000)
        self.assertEqual(a["name"], "Model A")
        self.assertEqual(a["meta"], {"llamaswap": {"port": 5800}})
        self.assertNotIn("description", a)
        self.assertEqual(
            response.headers.getRawHeaders(b"access-control-allow-origin"), [b"http://ui"]
        )

    def test_healthIsOK(self):
        response, body = self.request("GET", "/health")
        self.assertEqual((response.code, body), (200, b"OK"))

    def test_rootRedirectsToTheUI(self):
        response, _ = self.request("GET", "/")
        self.assertEqual(response.code, 302)
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"/ui"])

    def test_preflightAnswersCORS(self):
        response, _ = self.request(
            "OPTIONS", "/v1/chat/completions",
            headers={"Access-Control-Request-Headers": "X-Custom, bad header"},
        )
        self.assertEqual(response.code, 204)
        self.assertEqual(response.headers.getRawHeaders(b"access-control-allow-origin"), [b"*"])
        self.assertEqual(response.headers.getRawHeaders(b"access-control-max-age"), [b"86400"])
        self.assertEqual(
            response.headers.getRawHeaders(b"access-control-allow-headers"), [b"X-Custom"]
        )

    def test_runningShowsTheLoadedModel(self):
        response, body = self.request("GET", "/running")
        self.assertEqual(json.loads(body), {"running": []})
        self.request("POST", "/v1/chat/completions", self.chat("a"), ready=["a"])
        response, body = self.request("GET", "/running")
        [record] = json.loads(body)["running"]
        self.assertEqual((record["model"], record["state"]), ("a", "ready"))

    def test_unloadAllAnswersOnceStopped(self):
        self.request("POST", "/v1/chat/completions", self.chat("a"), ready=["a"])
        d = self.client.post("http://llamaswap/api/models/unload")
        self.pump()
        self.assertNoResult(d)
        self.router.machines["a"].finishStop()
        self.pump()
        response = self.successResultOf(d)
        self.assertEqual(json.loads(self.successResultOf(self.client.content(response))),
                         {"msg": "ok"})

    def test_unloadOneByAlias(self):
        self.request("POST", "/v1/chat/completions", self.chat("a"), ready=["a"])
        d = self.client.post("http://llamaswap/api/models/unload/alpha")
        self.pump()
        self.router.machines["a"].finishStop()
        self.pump()
        response = self.successResultOf(d)
        self.assertEqual(self.successResultOf(self.client.content(response)), b"OK")

    def test_unloadUnknownIs404(self):
        response, body = self.request("POST", "/api/models/unload/nope")
        self.assertError(response, body, 404, "model not found")

    def test_uiServesTheIndex(self):
        response, body = self.request("GET", "/ui/")
        self.assertEqual(response.code, 200)
        self.assertIn(b"<title>llamaswap</title>", body)

    def test_uiClientRoutesGetTheIndex(self):
        response, body = self.request("GET", "/ui/models")
        self.assertIn(b"<title>llamaswap</title>", body)

    def test_uiMissingFileIs404(self):
        response, _ = self.request("GET", "/ui/missing.js")
        self.assertEqual(response.code, 404)

    def test_uiRedirectsToTrailingSlash(self):
        response, _ = self.request("GET", "/ui")
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"/ui/"])

    def test_loadAnswersOnceReady(self):
        d = self.client.post("http://llamaswap/api/models/load/alpha")
        self.pump()
        self.assertNoResult(d)
        self.router.machines["a"].becomeReady()
        self.pump()
        response = self.successResultOf(d)
        body = json.loads(self.successResultOf(self.client.content(response)))
        self.assertEqual(body, {"msg": "ok", "model": "a", "state": "ready"})
        self.assertEqual(self.router.ledger.inFlight("a"), 0)

    def test_loadUnknownIs404(self):
        response, body = self.request("POST", "/api/models/load/nope")
        self.assertError(response, body, 404, "model not found")

    def loadingChat(self, **extra):
        seen = []
        d = self.client.post(
            "http://llamaswap/v1/chat/completions",
            data=json.dumps(self.chat("chatty", stream=True, **extra)).encode(),
            headers={"Content-Type": "application/json"},
            unbuffered=True,
        )
        self.pump()
        response = self.successResultOf(d)
        done = self.client.collect(response, seen.append)
        return response, done, seen

    def test_loadingStateStreamsWhileTheModelLoads(self):
        response, done, seen = self.loadingChat()
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"text/event-stream"]
        )
        for _ in range(20):
            self.clock.advance(0.1)
            self.pump()
        self.assertIn("loading model: chatty", reasoning(seen))
        self.assertNoResult(done)
        self.router.machines["chatty"].becomeReady()
        for _ in range(30):
            self.clock.advance(0.1)
            self.pump()
        self.successResultOf(done)
        events = [e for e in b"".join(seen).decode().split("\n\n") if e]
        self.assertRegex(reasoning(seen), r"\nDone! \(\d+\.\d\ds\)\n")
        self.assertEqual(events[-1], "data: [DONE]")
        content = [json.loads(e[6:]) for e in events[:-1] if '"content"' in e]
        self.assertGreater(len(content), 0)

    def test_loadingStateAppendsTheErrorOnFailure(self):
        response, done, seen = self.loadingChat()
        self.router.machines["chatty"].failStart("upstream command exited prematurely")
        for _ in range(30):
            self.clock.advance(0.1)
            self.pump()
        self.successResultOf(done)
        tail = b"".join(seen).decode().split("\n\n")[-1]
        self.assertIn("exited prematurely", json.loads(tail)["error"]["message"])

    def test_noLoadingStateWhenTheModelIsReady(self):
        self.request("POST", "/v1/chat/completions", self.chat("chatty"), ready=["chatty"])
        response, body = self.request(
            "POST", "/v1/chat/completions", self.chat("chatty", stream=True))
        self.assertNotIn(b"reasoning_content", body)
