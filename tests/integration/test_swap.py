"""
The whole daemon in this process, over real sockets, with the demo responder
as real upstream processes: streaming, swapping, unloading and shutdown.
"""

from __future__ import annotations

import json
import sys

from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase

from tests.integration.support import InProcessDaemon, alive, demoModels

CONFIG = demoModels(["model-a", "model-b"], "--tokens 5") + f"""
  broken:
    cmd: |
      {json.dumps(sys.executable)} -c "import sys; print('cannot load weights', file=sys.stderr); sys.exit(2)"
    proxy: http://127.0.0.1:9
healthCheckTimeout: 20
"""


class DaemonInProcessTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.daemon = InProcessDaemon(self, CONFIG)

    def test_streamThenSwap(self) -> Deferred[None]:
        async def run() -> None:
            response, body = await self.daemon.chat("model-a", stream=True)
            self.assertEqual(response.code, 200)
            events = [e for e in body.decode().split("\n\n") if e.strip()]
            self.assertEqual(events[-1], "data: [DONE]")
            pidA = int(response.headers.getRawHeaders(b"x-demo-pid")[0])
            self.assertTrue(alive(pidA))

            response, body = await self.daemon.chat("model-b")
            self.assertEqual(response.code, 200)
            self.assertEqual(json.loads(body)["usage"]["completion_tokens"], 5)
            pidB = int(response.headers.getRawHeaders(b"x-demo-pid")[0])
            self.assertFalse(alive(pidA), "model-a's process survived the swap")
            running = await self.daemon.getJSON("/running")
            self.assertEqual([r["model"] for r in running["running"]], ["model-b"])

            await self.daemon.root.stopService()
            self.assertFalse(alive(pidB), "model-b's process survived shutdown")

        return Deferred.fromCoroutine(run())

    def test_failedStartIs502AndTheNextModelStillWorks(self) -> Deferred[None]:
        async def run() -> None:
            response, body = await self.daemon.chat("broken")
            self.assertEqual(response.code, 502)
            message = json.loads(body)["error"]["message"]
            self.assertIn("exited prematurely", message)
            response, body = await self.daemon.chat("model-a")
            self.assertEqual(response.code, 200)

        return Deferred.fromCoroutine(run())

    def test_unloadStopsTheProcessBeforeAnswering(self) -> Deferred[None]:
        async def run() -> None:
            pid = await self.daemon.chatPid("model-a")
            response, body = await self.daemon.post("/api/models/unload", {})
            self.assertEqual(json.loads(body), {"msg": "ok"})
            self.assertFalse(alive(pid))
            self.assertEqual(await self.daemon.getJSON("/running"), {"running": []})

        return Deferred.fromCoroutine(run())

    def test_concurrentRequestsShareOneProcess(self) -> Deferred[None]:
        async def run() -> None:
            pids = await gatherResults(
                [Deferred.fromCoroutine(self.daemon.chatPid("model-b")) for _ in range(4)]
            )
            self.assertEqual(len(set(pids)), 1)

        return Deferred.fromCoroutine(run())

    def test_chunkedRequestBodyIsRelayed(self) -> Deferred[None]:
        """
        A request body sent with C{Transfer-Encoding: chunked} (no length)
        is read and relayed like any other.
        """
        from twisted.internet import reactor
        from twisted.internet.defer import succeed
        from twisted.web.client import Agent, HTTPConnectionPool, readBody
        from twisted.web.http_headers import Headers
        from twisted.web.iweb import UNKNOWN_LENGTH

        class Chunked:
            length = UNKNOWN_LENGTH

            def startProducing(self, consumer):
                body = json.dumps({"model": "model-a", "messages": [
                    {"role": "user", "content": "chunked body"}]}).encode()
                consumer.write(body[:10])
                consumer.write(body[10:])
                return succeed(None)

            def pauseProducing(self):
                pass

            def resumeProducing(self):
                pass

            def stopProducing(self):
                pass

        async def run() -> None:
            agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
            response = await agent.request(
                b"POST", (self.daemon.base + "/v1/chat/completions").encode(),
                Headers({b"content-type": [b"application/json"]}), Chunked())
            body = await readBody(response)
            self.assertEqual(response.code, 200, body)
            self.assertEqual(json.loads(body)["usage"]["completion_tokens"], 5)

        return Deferred.fromCoroutine(run())
