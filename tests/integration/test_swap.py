"""
The whole daemon in this process, over real sockets, with the demo responder
as real upstream processes: streaming, swapping, unloading and shutdown.
"""

from __future__ import annotations

import json
import sys

from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.support import InProcessDaemon, alive, asyncTest, demoModels, eventually

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
            self.assertIn("upstream failed to start", message)
            self.assertIn("exited prematurely (exit code 2)", message)
            self.assertIn("cannot load weights", message)
            self.assertEqual(await self.daemon.getJSON("/running"), {"running": []})
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


class SwapMetricsTests(TestCase):
    timeout = 60

    @asyncTest
    async def test_swapsAreCountedInPrometheus(self) -> None:
        """
        Three real swaps (a, b, a) move llamaswap_swaps_total and the
        llamaswap_swap_duration_seconds histogram.
        """
        daemon = InProcessDaemon(self, CONFIG)
        for model in ("model-a", "model-b", "model-a"):
            await daemon.chatPid(model)
        response = await daemon.http.get(daemon.base + "/metrics")
        samples = {}
        for family in text_string_to_metric_families((await response.content()).decode()):
            for sample in family.samples:
                key = (sample.name, sample.labels.get("model"))
                samples[key] = samples.get(key, 0) + sample.value
        self.assertEqual(samples[("llamaswap_swaps_total", "model-a")], 2)
        self.assertEqual(samples[("llamaswap_swaps_total", "model-b")], 1)
        self.assertEqual(samples[("llamaswap_swap_duration_seconds_count", "model-a")], 2)
        self.assertGreater(samples[("llamaswap_swap_duration_seconds_sum", "model-b")], 0)


HANGING = f"""
  hang:
    cmd: |
      {json.dumps(sys.executable)} -c "import time; print('loading forever', flush=True); \
        time.sleep(300)"
    proxy: http://127.0.0.1:9
"""


class FaultTests(TestCase):
    timeout = 60

    @asyncTest
    async def test_healthCheckTimeoutLeavesNothingBehind(self) -> None:
        """
        Past healthCheckTimeout the client gets a 502 only once the process
        is gone, and /running no longer lists the model.
        """
        daemon = InProcessDaemon(self, demoModels(["model-a"]) + HANGING,
                                 healthCheckTimeout=1)
        pending = Deferred.fromCoroutine(daemon.chat("hang"))
        await eventually(lambda: daemon.router.machines["hang"].pid is not None, timeout=10)
        pid = daemon.router.machines["hang"].pid
        response, body = await pending
        self.assertEqual(response.code, 502)
        message = json.loads(body)["error"]["message"]
        self.assertIn("health check timed out", message)
        self.assertIn("loading forever", message)
        self.assertFalse(alive(pid))
        self.assertEqual(await daemon.getJSON("/running"), {"running": []})

    @asyncTest
    async def test_aHungRequestDoesNotKeepTwoModelsDown(self) -> None:
        """
        A request hangs on h; a request for c arrives.  After maxQueueWait
        h is closed; after another maxQueueWait without draining it is
        stopped anyway, and c is served.
        """
        daemon = InProcessDaemon(
            self, "maxQueueWait: 1\n"
            + demoModels(["h"], "--tokens 100000 --token-delay 1")
            + demoModels(["c"]).replace("models:\n", ""))
        hung = Deferred.fromCoroutine(daemon.chat("h", stream=True))
        hung.addErrback(lambda f: None)
        await eventually(lambda: daemon.router.ledger.inFlight("h") == 1, timeout=20)
        hPid = daemon.router.machines["h"].pid
        response, body = await daemon.chat("c")
        self.assertEqual(response.code, 200, body)
        self.assertFalse(alive(hPid))
        self.assertEqual(daemon.router.ledger.inFlight("h"), 0)
