"""
Tests for the web UI's own API (L{llamaswap.web.uiapi}) and its side of
authentication (L{llamaswap.web.auth}: no challenge for the UI, stream
tokens on C{/api/events} only), through L{LlamaSwapAPI} behind L{StubTreq}.
"""

import json
import re
from pathlib import Path

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from llamaswap.config import loadConfigText
from llamaswap.observe.observatory import Observatory
from llamaswap.reload import ReloadReport
from llamaswap.router.router import RouterService
from llamaswap.web.app import LlamaSwapAPI
from llamaswap.web.auth import StreamTokens
from llamaswap.web.ui import CSP, UIResource
from llamaswap.web.uiapi import REDACTED, redactedConfig
from tests.fakes import FakeMachine
from tests.fakes import FakeAgents

CONFIG = """
apiKeys: [sekrit-key]
performance: {disabled: true}
macros:
  hf_token: hf_abcdef
  plain: visible
models:
  m:
    cmd: srv --port ${PORT} --api-key upstream-key --hf-token=tok123 -c 4096
    env: ["HF_TOKEN=hf_xyz", "OPENAI_API_KEY=sk-1", "CUDA_VISIBLE_DEVICES=0"]
    proxy: http://user:pw@127.0.0.1:${PORT}
peers:
  p:
    proxy: http://peer.example:9000
    apiKey: peer-key
    models: [far]
"""


class RedactionTests(SynchronousTestCase):
    def test_secretsAreRedactedAndTheRestKept(self):
        data = redactedConfig(loadConfigText(CONFIG))
        text = json.dumps(data)
        for secret in ("sekrit-key", "peer-key", "upstream-key", "tok123", "hf_xyz", "sk-1",
                       "hf_abcdef", ":pw@"):
            self.assertNotIn(secret, text)
        self.assertEqual(data["apiKeys"], [REDACTED])
        self.assertEqual(data["peers"]["p"]["apiKey"], REDACTED)
        model = data["models"]["m"]
        self.assertIn(["CUDA_VISIBLE_DEVICES", "0"], model["env"])
        self.assertIn(["HF_TOKEN", REDACTED], model["env"])
        self.assertIn("-c 4096", model["cmd"])
        self.assertIn("--api-key " + REDACTED, model["cmd"])
        self.assertEqual(model["argv"][model["argv"].index("--api-key") + 1], REDACTED)
        self.assertIn(["plain", "visible"], data["macros"])


class StreamTokenTests(SynchronousTestCase):
    def test_aTokenExpires(self):
        clock = Clock()
        tokens = StreamTokens(clock, lifetime=60)
        token, expires = tokens.issue()
        self.assertEqual(expires, 60.0)
        self.assertTrue(tokens.accepts(token))
        clock.advance(61)
        self.assertFalse(tokens.accepts(token))

    def test_aForgedOrForeignTokenIsRefused(self):
        clock = Clock()
        tokens = StreamTokens(clock)
        token, _ = StreamTokens(clock).issue()
        self.assertFalse(tokens.accepts(token))
        stamp = token.partition(".")[0]
        self.assertFalse(tokens.accepts(stamp + "." + "0" * 64))
        self.assertFalse(tokens.accepts("garbage"))


class UIRoutesTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.config = loadConfigText(CONFIG)
        router = RouterService(self.config, reactor=self.clock,
                               machineFactory=lambda m, onExit: FakeMachine(m, onExit, []))
        self.reloads: list[Deferred] = []
        self.observatory = Observatory(self.config, self.clock)
        api = LlamaSwapAPI(self.config, router, FakeAgents(self.clock), clock=self.clock,
                           observatory=self.observatory, reload=self.reload)
        self.client = StubTreq(api.resource())

    def reload(self):
        d: Deferred = Deferred()
        self.reloads.append(d)
        return d

    def send(self, method, path, headers=None, stream=False):
        d = self.client.request(method, "http://llamaswap" + path, headers=headers or {})
        self.client.flush()
        response = self.successResultOf(d)
        if stream:
            return response, None
        body = self.client.content(response)
        self.client.flush()
        return response, self.successResultOf(body)

    key = {"Authorization": "Bearer sekrit-key"}

    def test_aUICallGetsNoChallenge(self):
        response, body = self.send("GET", "/api/config", {"X-LlamaSwap-UI": "1"})
        self.assertEqual(response.code, 401)
        self.assertIsNone(response.headers.getRawHeaders(b"www-authenticate"))
        self.assertEqual(json.loads(body)["error"]["type"], "authentication_error")

    def test_anotherClientStillGetsTheChallenge(self):
        response, _ = self.send("GET", "/api/config")
        self.assertEqual(response.code, 401)
        self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"),
                         [b'Basic realm="llama-swap"'])

    def test_configNeedsTheKeyAndIsRedacted(self):
        response, body = self.send("GET", "/api/config", self.key)
        self.assertEqual(response.code, 200)
        self.assertNotIn(b"sekrit-key", body)
        self.assertEqual(json.loads(body)["models"]["m"]["id"], "m")

    def test_aTokenOpensTheEventStreamOnly(self):
        self.assertEqual(self.send("POST", "/api/events/token")[0].code, 401)
        response, body = self.send("POST", "/api/events/token", self.key)
        token = json.loads(body)["token"]
        response, _ = self.send("GET", "/api/events?token=" + token, stream=True)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/event-stream"])
        for path in ("/api/config?token=", "/api/metrics?token=", "/running?token="):
            self.assertEqual(self.send("GET", path + token)[0].code, 401, path)
        self.observatory.events.close()

    def test_anExpiredTokenIsRefused(self):
        _, body = self.send("POST", "/api/events/token", self.key)
        token = json.loads(body)["token"]
        self.clock.advance(3600)
        self.assertEqual(self.send("GET", "/api/events?token=" + token)[0].code, 401)

    def test_reloadAnswersWithTheReport(self):
        d = self.client.request("POST", "http://llamaswap/api/config/reload", headers=self.key)
        self.client.flush()
        self.assertNoResult(d)
        [pending] = self.reloads
        pending.callback(ReloadReport(applied=True, kept=("m",), added=("n",)))
        self.client.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        body = self.successResultOf(self.client.content(response))
        self.assertEqual(json.loads(body), {"applied": True, "reason": None, "kept": ["m"],
                                            "restarted": [], "changed": [], "added": ["n"], "removed": []})

    def refused(self, reason):
        self.reload = lambda: succeed(ReloadReport(applied=False, reason=reason))
        self.setUpAgain()
        return self.send("POST", "/api/config/reload", self.key)

    def setUpAgain(self):
        router = RouterService(self.config, reactor=self.clock,
                               machineFactory=lambda m, onExit: FakeMachine(m, onExit, []))
        api = LlamaSwapAPI(self.config, router, FakeAgents(self.clock), clock=self.clock,
                           reload=self.reload)
        self.client = StubTreq(api.resource())

    def test_anInvalidConfigIs400WithTheReason(self):
        response, body = self.refused("models.m.ttl: expected an integer")
        self.assertEqual(response.code, 400)
        self.assertEqual(json.loads(body)["error"]["message"], "models.m.ttl: expected an integer")

    def test_aBusyReloadIs409(self):
        response, body = self.refused("another reload is in progress")
        self.assertEqual(response.code, 409)
        self.assertIn("in progress", json.loads(body)["error"]["message"])

    def test_reloadNeedsTheKey(self):
        self.assertEqual(self.send("POST", "/api/config/reload")[0].code, 401)
        self.assertEqual(self.reloads, [])


class UIFilesTests(SynchronousTestCase):
    def test_thePolicyAllowsNoInlineScript(self):
        self.assertNotIn(b"unsafe-inline", CSP)
        self.assertNotIn(b"unsafe-eval", CSP)
        self.assertIn(b"script-src 'self';", CSP)

    def test_theBundledIndexIsServedWithThePolicy(self):
        from llamaswap.web.ui import staticPath

        client = StubTreq(UIResource(staticPath()))
        d = client.get("http://x/")
        client.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.headers.getRawHeaders(b"content-security-policy"), [CSP])
        body = self.successResultOf(client.content(response))
        self.assertNotIn(b"<script>", body)
        self.assertIsNone(re.search(rb"<[^>]*\son[a-z]+\s*=", body))

    def test_noInlineHandlersInTheUIsFiles(self):
        from llamaswap.web.ui import staticPath

        root = Path(staticPath())
        for path in list(root.glob("*.html")) + list(root.glob("js/**/*.js")):
            text = path.read_text()
            self.assertIsNone(re.search(r"<[^>]*\son[a-z]+\s*=\s*[\"']", text), path)
            self.assertNotIn("innerHTML =", text.replace("// innerHTML", ""), path)
