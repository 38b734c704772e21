"""
The official C{openai} and C{anthropic} Python SDKs against a running
llamaswap (in this process, real sockets) whose models are demo responder
processes; and a second llamaswap as a peer.

The SDKs block, so each call runs in a thread while the reactor serves.
"""

from __future__ import annotations

import io

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from tests.integration.support import asyncTest, demoModels, InProcessDaemon

try:
    import anthropic
    import openai
except ImportError:  # pragma: no cover - the test extra installs both
    openai = anthropic = None

KEY = "sdk-secret"


class SDKTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        if openai is None:
            raise SkipTest("the openai and anthropic SDKs are not installed")
        self.daemon = InProcessDaemon(
            self, f"apiKeys: [{KEY}]\n" + demoModels(["chat", "voice"], "--tokens 6"))
        self.openai = openai.OpenAI(base_url=self.daemon.base + "/v1", api_key=KEY,
                                    max_retries=0, timeout=60)
        self.anthropic = anthropic.Anthropic(base_url=self.daemon.base, api_key=KEY,
                                             max_retries=0, timeout=60)
        self.addCleanup(self.openai.close)
        self.addCleanup(self.anthropic.close)

    @asyncTest
    async def test_chat(self) -> None:
        answer = await deferToThread(
            self.openai.chat.completions.create,
            model="chat", messages=[{"role": "user", "content": "hello"}])
        self.assertEqual(answer.usage.completion_tokens, 6)
        self.assertTrue(answer.choices[0].message.content.strip())

    @asyncTest
    async def test_streamedChat(self) -> None:
        def stream() -> tuple[str, object]:
            chunks = self.openai.chat.completions.create(
                model="chat", stream=True, stream_options={"include_usage": True},
                messages=[{"role": "user", "content": "hello"}])
            text, usage = "", None
            for chunk in chunks:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                if chunk.usage:
                    usage = chunk.usage
            return text, usage

        text, usage = await deferToThread(stream)
        self.assertEqual(len(text.split()), 6)
        self.assertEqual(usage.completion_tokens, 6)

    @asyncTest
    async def test_responses(self) -> None:
        answer = await deferToThread(self.openai.responses.create, model="chat", input="hello")
        self.assertTrue(answer.output_text.strip())
        self.assertEqual(answer.usage.output_tokens, 6)

    @asyncTest
    async def test_embeddings(self) -> None:
        answer = await deferToThread(
            self.openai.embeddings.create, model="chat", input=["a", "b"])
        self.assertEqual(len(answer.data), 2)
        self.assertEqual(len(answer.data[0].embedding), 8)

    @asyncTest
    async def test_transcriptionUpload(self) -> None:
        audio = io.BytesIO(bytes(range(256)) * 1000)
        audio.name = "speech.wav"
        answer = await deferToThread(
            self.openai.audio.transcriptions.create, model="voice", file=audio)
        self.assertTrue(answer.text)

    @asyncTest
    async def test_imageGeneration(self) -> None:
        answer = await deferToThread(
            self.openai.images.generate, model="voice", prompt="a llama")
        self.assertTrue(answer.data[0].b64_json)

    @asyncTest
    async def test_anthropicStreamedMessage(self) -> None:
        def stream() -> tuple[str, object]:
            with self.anthropic.messages.stream(
                model="chat", max_tokens=20,
                messages=[{"role": "user", "content": "hello"}],
            ) as events:
                text = "".join(events.text_stream)
                return text, events.get_final_message()

        text, message = await deferToThread(stream)
        self.assertEqual(len(text.split()), 6)
        self.assertEqual(message.usage.output_tokens, 6)

    @asyncTest
    async def test_anthropicCountTokens(self) -> None:
        answer = await deferToThread(
            self.anthropic.messages.count_tokens, model="chat",
            messages=[{"role": "user", "content": "one two three"}])
        self.assertGreater(answer.input_tokens, 0)

    @asyncTest
    async def test_wrongKeyIsRefused(self) -> None:
        client = openai.OpenAI(base_url=self.daemon.base + "/v1", api_key="wrong",
                               max_retries=0)
        self.addCleanup(client.close)
        with self.assertRaises(openai.AuthenticationError):
            await deferToThread(
                client.chat.completions.create, model="chat",
                messages=[{"role": "user", "content": "hello"}])


class PeerTests(TestCase):
    timeout = 120

    @asyncTest
    async def test_secondLlamaswapAsAPeer(self) -> None:
        far = InProcessDaemon(self, "apiKeys: [far-key]\n" + demoModels(["far-model"]))
        near = InProcessDaemon(self, demoModels(["near-model"]) + f"""
peers:
  far:
    proxy: {far.base}
    apiKey: far-key
    models: [far-model]
""")
        response, body = await near.chat("far-model")
        self.assertEqual(response.code, 200, body)
        self.assertEqual(response.headers.getRawHeaders(b"x-demo-model"), [b"far-model"])
        listing = await near.getJSON("/v1/models")
        ids = {m["id"]: m for m in listing["data"]}
        self.assertEqual(ids["far-model"]["meta"], {"llamaswap": {"peerID": "far"}})
        self.assertIn("near-model", ids)
