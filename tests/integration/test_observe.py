"""
What a running llamaswap shows about itself: token metrics, captures,
Server-Timing, Prometheus, logs and their streams, UI events; with real demo
processes over real sockets.
"""

from __future__ import annotations

import base64
import json

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.integration.support import asyncTest, demoModels, eventually, InProcessDaemon


class Collect(Protocol):
    """
    Keeps every chunk of a streamed body as it arrives.
    """

    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


class ObserveTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.daemon = InProcessDaemon(
            self, "captureBuffer: 5\n" + demoModels(["obs"], "--tokens 7"))

    async def stream(self, path: str) -> Collect:
        """
        Open a streamed GET and keep reading it in the background.
        """
        response = await self.daemon.http.get(self.daemon.base + path, unbuffered=True)
        collect = Collect()
        response.deliverBody(collect)  # ended by the daemon's shutdown in cleanup
        return collect

    @asyncTest
    async def test_tokenMetricsOfAStreamedAnswer(self) -> None:
        response, body = await self.daemon.chat(
            "obs", stream=True, stream_options={"include_usage": True})
        usage = [json.loads(e[6:])["usage"] for e in body.decode().split("\n\n")
                 if e.startswith("data: {") and json.loads(e[6:]).get("usage")][-1]
        [entry] = await self.daemon.getJSON("/api/metrics")
        self.assertEqual(entry["model"], "obs")
        self.assertEqual(entry["resp_status_code"], 200)
        self.assertEqual(entry["tokens"]["input_tokens"], usage["prompt_tokens"])
        self.assertEqual(entry["tokens"]["output_tokens"], usage["completion_tokens"])
        self.assertTrue(entry["has_capture"])
        capture = await self.daemon.getJSON(f"/api/captures/{entry['id']}")
        self.assertEqual(capture["req_path"], "/v1/chat/completions")

    @asyncTest
    async def test_upstreamPassthroughIsMeteredLikeTheOthers(self) -> None:
        body = {"model": "obs", "messages": [{"role": "user", "content": "hi"}]}
        response, _ = await self.daemon.post("/upstream/obs/v1/chat/completions", body)
        self.assertEqual(response.code, 200)
        [entry] = await self.daemon.getJSON("/api/metrics")
        self.assertEqual(entry["req_path"], "/upstream/obs/v1/chat/completions")
        self.assertEqual(entry["resp_status_code"], 200)
        self.assertGreater(entry["tokens"]["output_tokens"], 0)
        self.assertTrue(entry["has_capture"])
        response = await self.daemon.http.get(self.daemon.base + "/metrics")
        text = (await response.content()).decode()
        self.assertIn('route="/upstream"', text)
        self.assertNotIn('route="/upstream/obs', text)

    @asyncTest
    async def test_upstreamRequestsOfEveryMethodAreMetered(self) -> None:
        """
        Not only POSTs: a GET and a DELETE through C{/upstream/<model>/...}
        each get an activity entry and an access-log line.
        """
        response = await self.daemon.http.get(self.daemon.base + "/upstream/obs/v1/models?probe=1")
        self.assertEqual(response.code, 200)
        listed = json.loads(await response.content())
        response = await self.daemon.http.delete(self.daemon.base + "/upstream/obs/v1/models")
        await response.content()
        deleted = response.code
        self.assertGreaterEqual(deleted, 400)
        entries = await self.daemon.getJSON("/api/metrics")
        self.assertEqual([(e["model"], e["req_path"], e["resp_status_code"]) for e in entries],
                         [("obs", "/upstream/obs/v1/models", 200),
                          ("obs", "/upstream/obs/v1/models", deleted)])
        self.assertEqual(entries[0]["tokens"]["output_tokens"], 0)
        self.assertIn("queue", entries[0]["phases"])
        self.assertTrue(entries[0]["has_capture"])
        capture = await self.daemon.getJSON(f"/api/captures/{entries[0]['id']}")
        self.assertEqual(capture["req_path"], "/upstream/obs/v1/models")
        self.assertEqual(json.loads(base64.b64decode(capture["resp_body"])), listed)
        logs = (await (await self.daemon.http.get(self.daemon.base + "/logs")).content()).decode()
        self.assertIn('"GET /upstream/obs/v1/models?probe=1 HTTP/1.1" 200', logs)
        self.assertIn(f'"DELETE /upstream/obs/v1/models HTTP/1.1" {deleted}', logs)

    @asyncTest
    async def test_abortedStreamIsLoggedAndMetered(self) -> None:
        """
        A client that goes away mid-stream: its access-log line and its
        activity entry still come, with 499 (client closed request).
        """
        daemon = InProcessDaemon(self, demoModels(["slow"], "--tokens 1000 --token-delay 0.05"))
        body = {"model": "slow", "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}
        response = await daemon.http.post(
            daemon.base + "/v1/chat/completions", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}, unbuffered=True)
        self.assertEqual(response.code, 200)
        collect = Collect()
        response.deliverBody(collect)
        await eventually(lambda: b"data: " in collect.data, timeout=10)
        collect.transport.stopProducing()  # the client goes away

        async def entries():
            return await daemon.getJSON("/api/metrics")

        found: list = []

        async def closedEntry() -> bool:
            found[:] = [e for e in await entries() if e["resp_status_code"] == 499]
            return bool(found)

        for _ in range(100):
            if await closedEntry():
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(found[0]["model"], "slow")
        logs = await daemon.http.get(daemon.base + "/logs")
        self.assertIn('"POST /v1/chat/completions HTTP/1.1" 499', (await logs.content()).decode())

    @asyncTest
    async def test_serverTimingPhasesAddUp(self) -> None:
        response, _ = await self.daemon.chat("obs")
        [header] = response.headers.getRawHeaders(b"server-timing")
        phases = {}
        for part in header.decode().split(","):
            name, _, value = part.strip().partition(";dur=")
            phases[name] = float(value)
        self.assertEqual(set(phases), {"queue", "stop", "load", "ttfb", "total"})
        self.assertGreater(phases["load"], 0)
        parts = phases["queue"] + phases["stop"] + phases["load"] + phases["ttfb"]
        self.assertLessEqual(parts, phases["total"] + 0.3)  # rounding to 0.1 ms each

    @asyncTest
    async def test_prometheusSeries(self) -> None:
        await self.daemon.chat("obs")
        response = await self.daemon.http.get(self.daemon.base + "/metrics")
        text = (await response.content()).decode()
        names = {family.name for family in text_string_to_metric_families(text)}
        for name in ("llamaswap_requests", "llamaswap_request_duration_seconds",
                     "llamaswap_swaps", "llamaswap_model_state", "llamaswap_tokens",
                     "llamaswap_queue_depth", "llamaswap_phase_seconds"):
            self.assertIn(name, names)

    @asyncTest
    async def test_modelLogStreamShowsNewLinesAtOnce(self) -> None:
        await self.daemon.chat("obs")
        collect = await self.stream("/logs/stream/obs?no-history")
        await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(collect.data, b"")
        await self.daemon.chat("obs")
        await eventually(lambda: b"POST /v1/chat/completions" in collect.data, timeout=5)

    @asyncTest
    async def test_proxyLogHasAccessLines(self) -> None:
        await self.daemon.chat("obs")
        response = await self.daemon.http.get(self.daemon.base + "/logs")
        text = (await response.content()).decode()
        self.assertIn('"POST /v1/chat/completions HTTP/1.1" 200', text)

    @asyncTest
    async def test_unknownLoggerIs400(self) -> None:
        response = await self.daemon.http.get(self.daemon.base + "/logs/stream/nope")
        self.assertEqual(response.code, 400)
        self.assertIn(b"invalid logger", await response.content())

    @asyncTest
    async def test_eventsStartWithTheInitialBurst(self) -> None:
        collect = await self.stream("/api/events")
        await eventually(lambda: collect.data.count(b"\n\n") >= 5, timeout=5)
        types = [json.loads(frame.split(b"data:", 1)[1])["type"]
                 for frame in collect.data.split(b"\n\n") if frame.strip()]
        self.assertEqual(types[:5], ["logData", "logData", "modelStatus", "metrics", "inflight"])
        await self.daemon.chat("obs")
        await eventually(lambda: b'modelStatus' in collect.data.split(b"\n\n", 5)[-1], timeout=5)

    @asyncTest
    async def test_performanceSamples(self) -> None:
        await eventually(lambda: self.daemon.root.getServiceNamed(
            "observatory").performance.latest() is not None, timeout=10)
        stats = await self.daemon.getJSON("/api/performance")
        self.assertEqual(set(stats), {"sys_stats", "gpu_stats"})
        [sample] = stats["sys_stats"][-1:]
        self.assertGreater(sample["mem_total_mb"], 0)
        response = await self.daemon.http.get(self.daemon.base + "/api/performance?after=bad")
        self.assertEqual(response.code, 400)
        await response.content()
