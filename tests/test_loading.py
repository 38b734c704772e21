"""
Tests for L{llamaswap.web.loading}: the loading-state stream of SPEC.md
section 4.6.
"""

import json
import random

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from llamaswap.web.loading import RULE, TYPE_INTERVAL, LoadingStream


def typed(request):
    """
    @return: the reasoning text of every frame written, joined, and the
        frames themselves.
    """
    frames = [w for w in request.written if w]
    texts = []
    for f in frames:
        assert f.startswith(b"data: ") and f.endswith(b"\n\n"), f
        texts.append(json.loads(f[6:])["choices"][0]["delta"]["reasoning_content"])
    return "".join(texts), texts


class LoadingStreamTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.request = DummyRequest([b"v1", b"chat", b"completions"])
        self.stream = LoadingStream(self.request, self.clock, "qwen", rng=random.Random(1))

    def test_headersAndOpeningLines(self):
        self.stream.start()
        self.assertEqual(self.request.responseCode, 200)
        self.assertEqual(
            self.request.responseHeaders.getRawHeaders(b"content-type"), [b"text/event-stream"]
        )
        self.assertEqual(
            self.request.responseHeaders.getRawHeaders(b"cache-control"), [b"no-cache"]
        )
        self.clock.pump([TYPE_INTERVAL] * 10)
        text, frames = typed(self.request)
        self.assertTrue(text.startswith(RULE + "\nllama-swap loading model: qwen\n"), text)
        self.assertTrue(all(len(f) <= 5 for f in frames))

    def test_typingIsPaced(self):
        self.stream.start()
        self.assertEqual(len(typed(self.request)[1]), 1)
        self.clock.advance(TYPE_INTERVAL)
        self.assertEqual(len(typed(self.request)[1]), 2)

    def test_dotsWhileWaiting(self):
        self.stream.start()
        self.clock.pump([0.05] * 40)
        self.assertTrue(typed(self.request)[0].endswith("."))

    def test_queuePositionIsReported(self):
        self.stream.start()
        self.stream.queuePosition(3)
        self.clock.pump([0.1] * 20)
        self.assertIn("\nQueue position: #3 ", typed(self.request)[0])

    def test_loadProgressIsReported(self):
        """
        The model's load progress is typed as "loading qwen: 43 %" each time
        it moves; a stream without progress types none.
        """
        progress = {"fraction": 0.43}
        stream = LoadingStream(self.request, self.clock, "qwen", rng=random.Random(1),
                               progress=lambda: progress)
        stream.start()
        self.clock.pump([0.1] * 20)
        progress = {"fraction": 0.871}
        self.clock.pump([0.1] * 20)
        text = typed(self.request)[0]
        self.assertEqual(text.count("loading qwen: 43 %"), 1, text)
        self.assertIn("\nloading qwen: 87 % ", text)
        self.stream = LoadingStream(DummyRequest([b""]), self.clock, "qwen",
                                    rng=random.Random(1))
        self.stream.start()
        self.clock.pump([0.1] * 40)
        self.assertNotIn(" %", typed(self.stream.request)[0])

    def test_remarksAppearAfterAFewSeconds(self):
        self.stream.start()
        self.clock.pump([0.05] * 200)
        text = typed(self.request)[0]
        lines = [line for line in text.split("\n") if line.strip(". ")]
        self.assertGreater(len(lines), 2, text)

    def test_doneClosesTheCommentary(self):
        self.stream.start()
        self.clock.pump([0.05] * 30)
        d = self.stream.done()
        self.clock.pump([TYPE_INTERVAL] * 40)
        self.successResultOf(d)
        text = typed(self.request)[0]
        self.assertRegex(text, r"\nDone! \(1\.\d\ds\)\n" + RULE + "\n \n$")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_doneTakesAtMostASecond(self):
        self.stream.start()
        d = self.stream.done()
        self.clock.advance(1.0)
        self.successResultOf(d)
        self.assertTrue(typed(self.request)[0].endswith(RULE + "\n \n"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_clientGoneStopsEverything(self):
        self.stream.start()
        self.clock.advance(0.3)
        written = len(self.request.written)
        self.request.processingFailed(Failure(ConnectionDone()))
        self.clock.pump([0.25] * 10)
        self.assertEqual(len(self.request.written), written)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.successResultOf(self.stream.done())
