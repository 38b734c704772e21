"""
llamaswap in front of real llama.cpp servers running real (tiny) models.

Needs a llama-server binary and GGUF weights, found through
C{LLAMASWAP_LLAMA_SERVER}, C{LLAMASWAP_SMOLLM2_GGUF} and
C{LLAMASWAP_GEMMA3_GGUF} (C{.ci/run} sets them), or else in the cache that
C{scripts/build-llama-server} and C{scripts/fetch-models} fill
(C{$LLAMASWAP_CACHE}, default C{~/.cache/llamaswap}).  Without the binary or
SmolLM2 every test here is skipped, saying which is missing; without Gemma 3
the swap tests run SmolLM2 under a second configuration.
"""

from __future__ import annotations

import json
import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from treq.client import HTTPClient

from tests.integration.support import (
    GEMMA3,
    LLAMA_SERVER,
    SMOLLM2,
    alive,
    asyncTest,
    freePort,
    groupMembers,
    InProcessDaemon,
    PROJECT_ROOT,
)


SKIP = None
if LLAMA_SERVER is None or SMOLLM2 is None:
    SKIP = (
        "needs a llama-server binary and the SmolLM2 GGUF"
        f" (llama-server: {LLAMA_SERVER or 'not found'}; SmolLM2: {SMOLLM2 or 'not found'});"
        " run scripts/build-llama-server and scripts/fetch-models, or set"
        " LLAMASWAP_LLAMA_SERVER and LLAMASWAP_SMOLLM2_GGUF"
    )

# Small, deterministic and quick on two cores.
SERVER_ARGS = ("--threads", "2", "--ctx-size", "1024", "--parallel", "1",
               "--seed", "42", "--temp", "0")
MAX_TOKENS = 16
MESSAGES = [{"role": "user", "content": "Write a short story about a robot."}]
SMOLLM2_WIDTH = 576  # SmolLM2-135M's embedding size


def serverArgv(gguf: str, port: int | str, *extra: str) -> list[str]:
    return [LLAMA_SERVER or "llama-server", "--host", "127.0.0.1", "--port", str(port),
            "--model", gguf, *SERVER_ARGS, *extra]


def modelEntry(name: str, gguf: str, *extra: str) -> str:
    """
    @return: a config's C{models.<name>} entry running llama-server on
        C{gguf} with L{SERVER_ARGS} and C{extra}.
    """
    argv = " ".join(json.dumps(a) for a in serverArgv(gguf, "${PORT}", *extra))
    return (f"  {name}:\n"
            f"    cmd: |\n      {argv}\n"
            f"    proxy: http://127.0.0.1:${{PORT}}\n")


def secondModel(name: str) -> str:
    """
    @return: a second chat model: Gemma 3 when it is there, else SmolLM2
        with another context size.
    """
    if GEMMA3 is not None:
        return modelEntry(name, GEMMA3)
    return modelEntry(name, SMOLLM2 or "", "--ctx-size", "512")


def sseEvents(body: bytes) -> list[object]:
    """
    @return: the JSON payloads of an SSE body's C{data:} events, with
        C{"[DONE]"} as the string it is.
    """
    events: list[object] = []
    for block in body.decode("utf-8").split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data:"):
                data = line[len("data:"):].strip()
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def tokens(events: list[object]) -> list[str]:
    """
    @return: each event's C{delta.content}, in order (one token per event).
    """
    out = []
    for event in events:
        if isinstance(event, dict) and event.get("choices"):
            content = event["choices"][0].get("delta", {}).get("content")
            if content:
                out.append(content)
    return out


class _Server(ProcessProtocol):
    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()
        self.output = b""

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output = (self.output + data)[-20000:]

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


async def startDirect(testCase: TestCase, gguf: str, *extra: str) -> str:
    """
    Start a llama-server by hand, wait until its /health answers 200, and
    make sure it is gone after the test.

    @return: its base URL.
    """
    port = freePort()
    proto = _Server()
    argv = serverArgv(gguf, port, *extra)
    transport = reactor.spawnProcess(proto, argv[0], argv, env=dict(os.environ))

    async def stop() -> None:
        if not proto.ended.called:
            transport.signalProcess("TERM")
            timer = reactor.callLater(10, lambda: proto.ended.called
                                      or transport.signalProcess("KILL"))
            await proto.ended
            if timer.active():
                timer.cancel()

    testCase.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    base = f"http://127.0.0.1:{port}"
    http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    for _ in range(3000):
        if proto.ended.called:
            break
        try:
            response = await http.get(base + "/health")
            await response.content()
            if response.code == 200:
                return base
        except Exception:
            pass
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("llama-server did not become ready:\n"
                         + proto.output.decode("utf-8", "replace"))


class LlamaServerTests(TestCase):
    timeout = 120
    skip = SKIP

    def chatBody(self, model: str, stream: bool) -> dict:
        return {"model": model, "stream": stream, "messages": MESSAGES,
                "max_tokens": MAX_TOKENS, "temperature": 0, "seed": 42}

    async def postJSON(self, http: HTTPClient, url: str, body: object):
        response = await http.post(url, data=json.dumps(body).encode(),
                                   headers={"Content-Type": "application/json"})
        return response, await response.content()

    async def pidOf(self, daemon: InProcessDaemon, model: str) -> int:
        running = await daemon.getJSON("/running")
        [pid] = [r["pid"] for r in running["running"] if r["model"] == model]
        return pid

    @asyncTest
    async def test_streamEqualsDirectTokenForToken(self) -> None:
        """
        A streamed chat completion through llamaswap is, token for token,
        the one the same llama-server gives directly; the relayed final
        chunk carries llama-server's C{timings}.
        """
        direct = await startDirect(self, SMOLLM2)
        response, body = await self.postJSON(
            HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))),
            direct + "/v1/chat/completions", self.chatBody("smollm2", stream=True))
        self.assertEqual(response.code, 200, body)
        expected = sseEvents(body)

        daemon = InProcessDaemon(self, "models:\n" + modelEntry("smollm2", SMOLLM2))
        response, body = await daemon.post(
            "/v1/chat/completions", self.chatBody("smollm2", stream=True))
        self.assertEqual(response.code, 200, body)
        self.assertEqual(response.headers.getRawHeaders(b"content-type")[0][:17],
                         b"text/event-stream")
        got = sseEvents(body)

        self.assertEqual(len(tokens(expected)), MAX_TOKENS)
        self.assertEqual(tokens(got), tokens(expected))
        self.assertEqual(got[-1], "[DONE]")
        final = got[-2]
        self.assertEqual(final["choices"][0]["finish_reason"], "length")
        self.assertEqual(final["timings"]["predicted_n"], MAX_TOKENS)
        self.assertGreater(final["timings"]["predicted_per_second"], 0)

        # llamaswap's token metrics came from those timings, read as the
        # stream went by.
        [entry] = await daemon.getJSON("/api/metrics")
        self.assertEqual(entry["tokens"]["output_tokens"], MAX_TOKENS)
        self.assertEqual(entry["tokens"]["input_tokens"], final["timings"]["prompt_n"])
        self.assertAlmostEqual(entry["tokens"]["tokens_per_second"],
                               final["timings"]["predicted_per_second"], places=3)

    @asyncTest
    async def test_jsonBodyCarriesTimings(self) -> None:
        """
        A non-streamed answer is relayed whole, with llama-server's
        C{usage} and C{timings} (llamaswap's token metrics source).
        """
        daemon = InProcessDaemon(self, "models:\n" + modelEntry("smollm2", SMOLLM2))
        response, body = await daemon.post(
            "/v1/chat/completions", self.chatBody("smollm2", stream=False))
        self.assertEqual(response.code, 200, body)
        answer = json.loads(body)
        self.assertTrue(answer["choices"][0]["message"]["content"])
        self.assertEqual(answer["usage"]["completion_tokens"], MAX_TOKENS)
        self.assertEqual(answer["timings"]["predicted_n"], MAX_TOKENS)
        self.assertGreater(answer["timings"]["prompt_n"], 0)
        [entry] = await daemon.getJSON("/api/metrics")
        self.assertEqual(entry["tokens"]["output_tokens"], MAX_TOKENS)
        self.assertGreater(entry["tokens"]["prompt_per_second"], 0)

    @asyncTest
    async def test_swapBetweenRealModels(self) -> None:
        """
        Asking for the other model stops the first llama-server (its pid is
        gone) and the second one answers.
        """
        daemon = InProcessDaemon(
            self, "models:\n" + modelEntry("smollm2", SMOLLM2) + secondModel("second"))
        response, body = await daemon.chat("smollm2", max_tokens=4)
        self.assertEqual(response.code, 200, body)
        first = await self.pidOf(daemon, "smollm2")
        self.assertTrue(alive(first))

        response, body = await daemon.chat("second", max_tokens=4)
        self.assertEqual(response.code, 200, body)
        self.assertTrue(json.loads(body)["choices"][0]["message"]["content"])
        self.assertFalse(alive(first), "the first llama-server survived the swap")
        running = await daemon.getJSON("/running")
        self.assertEqual([(r["model"], r["state"]) for r in running["running"]],
                         [("second", "ready")])
        self.assertTrue(alive(await self.pidOf(daemon, "second")))

    @asyncTest
    async def test_openaiSDK(self) -> None:
        """
        The official C{openai} client, pointed at llamaswap running
        C{config/llama-server.example.yaml}: a chat, streamed and not, and
        embeddings from the C{--embeddings} model.
        """
        try:
            import openai
        except ImportError:
            raise SkipTest("needs the openai package (the test extra)")
        environ = dict(os.environ,
                       LLAMASWAP_LLAMA_SERVER=LLAMA_SERVER,
                       LLAMASWAP_SMOLLM2_GGUF=SMOLLM2,
                       LLAMASWAP_GEMMA3_GGUF=GEMMA3 or SMOLLM2)
        with open(os.path.join(PROJECT_ROOT, "config", "llama-server.example.yaml")) as f:
            text = f.read()
        from llamaswap.config.macros import substituteEnvMacros

        daemon = InProcessDaemon(self, substituteEnvMacros(text, environ))

        def talk() -> tuple:
            # Blocking calls: run in a thread, the reactor serves llamaswap.
            client = openai.OpenAI(
                base_url=daemon.base + "/v1", api_key="unused", max_retries=0,
                timeout=60, default_headers={"Connection": "close"})
            try:
                chat = client.chat.completions.create(
                    model="gpt-4o-mini", messages=MESSAGES, max_tokens=8, temperature=0)
                pieces = [
                    chunk.choices[0].delta.content or ""
                    for chunk in client.chat.completions.create(
                        model="smollm2", messages=MESSAGES, max_tokens=8,
                        temperature=0, stream=True)
                    if chunk.choices
                ]
                embeddings = client.embeddings.create(
                    model="smollm2-embed", input=["hello", "world"])
                return chat, pieces, embeddings
            finally:
                client.close()

        chat, pieces, embeddings = await deferToThread(talk)
        self.assertEqual(chat.usage.completion_tokens, 8)
        self.assertTrue(chat.choices[0].message.content)
        # Same model, prompt and temperature 0: the same text, in pieces.
        self.assertEqual("".join(pieces), chat.choices[0].message.content)
        self.assertEqual(len(embeddings.data), 2)
        self.assertEqual([len(e.embedding) for e in embeddings.data],
                         [SMOLLM2_WIDTH, SMOLLM2_WIDTH])
        self.assertNotEqual(embeddings.data[0].embedding, embeddings.data[1].embedding)
        # The embeddings group is persistent and not exclusive: both run.
        running = await daemon.getJSON("/running")
        self.assertEqual([r["model"] for r in running["running"]], ["smollm2", "smollm2-embed"])

    @asyncTest
    async def test_upstreamRoute(self) -> None:
        """
        C{/upstream/<model>/...} loads the model and reaches llama-server's
        own endpoints.
        """
        daemon = InProcessDaemon(self, "models:\n" + modelEntry("smollm2", SMOLLM2))
        response = await daemon.http.get(daemon.base + "/upstream/smollm2/")
        body = await response.content()
        if response.code == 404:
            raise SkipTest("needs /upstream route")
        self.assertEqual(response.code, 200, body)
        response = await daemon.http.get(daemon.base + "/upstream/smollm2/props")
        self.assertEqual(response.code, 200)
        props = json.loads(await response.content())
        self.assertIn("default_generation_settings", props)
        running = await daemon.getJSON("/running")
        self.assertEqual([r["model"] for r in running["running"]], ["smollm2"])

    @asyncTest
    async def test_noLlamaServerSurvivesStopService(self) -> None:
        """
        With two llama-servers loaded side by side, C{stopService} leaves
        neither process nor any member of their process groups.
        """
        daemon = InProcessDaemon(
            self,
            "models:\n" + modelEntry("smollm2", SMOLLM2) + secondModel("second")
            + "groups:\n  both:\n    swap: false\n    members: [smollm2, second]\n")
        for model in ("smollm2", "second"):
            response, body = await daemon.chat(model, max_tokens=2)
            self.assertEqual(response.code, 200, body)
        pids = [r["pid"] for r in (await daemon.getJSON("/running"))["running"]]
        self.assertEqual(len(pids), 2)
        self.assertTrue(all(alive(pid) for pid in pids))

        await daemon.root.stopService()
        self.assertEqual([pid for pid in pids if alive(pid)], [])
        self.assertEqual([groupMembers(pid) for pid in pids], [[], []])

    @asyncTest
    async def test_loadProgressOfAnMmapLoader(self) -> None:
        """
        llama-server maps its GGUF: its load is reported against the file's
        size, the mapping's resident size is what is measured, and once it
        is ready the progress is gone.
        """
        from llamaswap.upstream.progress import bytesLoaded

        daemon = InProcessDaemon(self, "models:\n" + modelEntry("smollm2", SMOLLM2))
        observatory = daemon.root.observatory
        reports: list = []
        original = observatory.progress

        def progress(modelId, value):
            reports.append(value)
            original(modelId, value)

        observatory.progress = progress
        response, body = await daemon.chat("smollm2", max_tokens=2)
        self.assertEqual(response.code, 200, body)
        self.assertEqual(reports[0]["bytesTotal"], os.path.getsize(SMOLLM2))
        self.assertIsNone(reports[-1])
        pid = await self.pidOf(daemon, "smollm2")
        resident = await deferToThread(bytesLoaded, pid, os.path.realpath(SMOLLM2))
        self.assertGreater(resident, 0)
        self.assertLessEqual(
            max((r["bytesLoaded"] for r in reports if r), default=0), os.path.getsize(SMOLLM2))
