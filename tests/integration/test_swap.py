"""
The whole daemon in this process, over real sockets, with the demo responder
as real upstream processes: streaming, swapping, unloading and shutdown.
"""

from __future__ import annotations

import json
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from treq.client import HTTPClient

from llamaswap.config import loadConfigText
from llamaswap.service import makeRootService
from tests.integration.support import PROJECT_ROOT, alive, freePort, freePortRun


def demoConfig(startPort: int, extra: str = "") -> str:
    python = json.dumps(sys.executable)
    env = json.dumps(f"PYTHONPATH={PROJECT_ROOT}")
    return f"""
healthCheckTimeout: 20
startPort: {startPort}
models:
  model-a:
    cmd: |
      {python} -m llamaswap.demo --port ${{PORT}} --model model-a --tokens 5
    aliases: [a]
    env: [{env}]
  model-b:
    cmd: |
      {python} -m llamaswap.demo --port ${{PORT}} --model model-b --tokens 7
    env: [{env}]
  broken:
    cmd: |
      {python} -c "import sys; print('cannot load weights', file=sys.stderr); sys.exit(2)"
    proxy: http://127.0.0.1:9
{extra}
"""


class DaemonInProcessTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.port = freePort()
        config = loadConfigText(demoConfig(freePortRun(3)))
        self.root = makeRootService(config, reactor, f"tcp:{self.port}:interface=127.0.0.1")
        self.root.startService()
        self.addCleanup(self.root.stopService)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=pool))
        self.base = f"http://127.0.0.1:{self.port}"

    async def chat(self, model: str, stream: bool = False) -> tuple[object, bytes]:
        body = {"model": model, "stream": stream,
                "messages": [{"role": "user", "content": "hello there"}]}
        response = await self.http.post(
            self.base + "/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        return response, await response.content()

    async def getJSON(self, path: str) -> object:
        response = await self.http.get(self.base + path)
        return json.loads(await response.content())

    def test_streamThenSwap(self) -> Deferred[None]:
        async def run() -> None:
            response, body = await self.chat("a", stream=True)
            self.assertEqual(response.code, 200)
            events = [e for e in body.decode().split("\n\n") if e.strip()]
            self.assertEqual(events[-1], "data: [DONE]")
            pidA = int(response.headers.getRawHeaders(b"x-demo-pid")[0])
            self.assertTrue(alive(pidA))

            response, body = await self.chat("model-b")
            self.assertEqual(response.code, 200)
            self.assertEqual(json.loads(body)["usage"]["completion_tokens"], 7)
            pidB = int(response.headers.getRawHeaders(b"x-demo-pid")[0])
            self.assertFalse(alive(pidA), "model-a's process survived the swap")
            running = await self.getJSON("/running")
            self.assertEqual([r["model"] for r in running["running"]], ["model-b"])

            await self.root.stopService()
            self.assertFalse(alive(pidB), "model-b's process survived shutdown")

        return Deferred.fromCoroutine(run())

    def test_failedStartIs502AndTheNextModelStillWorks(self) -> Deferred[None]:
        async def run() -> None:
            response, body = await self.chat("broken")
            self.assertEqual(response.code, 502)
            message = json.loads(body)["error"]["message"]
            self.assertIn("exited prematurely", message)
            response, body = await self.chat("model-a")
            self.assertEqual(response.code, 200)

        return Deferred.fromCoroutine(run())

    def test_unloadStopsTheProcessBeforeAnswering(self) -> Deferred[None]:
        async def run() -> None:
            response, _ = await self.chat("model-a")
            pid = int(response.headers.getRawHeaders(b"x-demo-pid")[0])
            response = await self.http.post(self.base + "/api/models/unload")
            self.assertEqual(json.loads(await response.content()), {"msg": "ok"})
            self.assertFalse(alive(pid))
            self.assertEqual(await self.getJSON("/running"), {"running": []})

        return Deferred.fromCoroutine(run())

    def test_concurrentRequestsShareOneProcess(self) -> Deferred[None]:
        async def run() -> None:
            from twisted.internet.defer import gatherResults

            results = await gatherResults(
                [Deferred.fromCoroutine(self.chat("model-b")) for _ in range(4)]
            )
            pids = {r.headers.getRawHeaders(b"x-demo-pid")[0] for r, _ in results}
            self.assertEqual([r.code for r, _ in results], [200] * 4)
            self.assertEqual(len(pids), 1)

        return Deferred.fromCoroutine(run())
