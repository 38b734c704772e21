"""
Tests for L{llamaswap.observe.observatory}: how C{logLevel} and
C{logToStdout} shape the daemon's own log, and the UI's model list.
"""

from twisted.internet.task import Clock
from twisted.logger import Logger, LogPublisher
from twisted.trial.unittest import SynchronousTestCase

from llamaswap.config import loadConfigText
from llamaswap.observe.observatory import Observatory

MODELS = """
performance: {disabled: true}
models:
  m: {cmd: "srv --port ${PORT}", aliases: [mm], name: Model M}
peers:
  p: {proxy: "http://peer:1", models: [far]}
"""


class OwnLogTests(SynchronousTestCase):
    def observe(self, settings):
        publisher = LogPublisher()
        seen = []
        publisher.addObserver(seen.append)
        config = loadConfigText(settings + MODELS)
        observatory = Observatory(config, Clock(), publisher=publisher, shapeOwnLog=True)
        observatory.startService()
        self.addCleanup(observatory.stopService)
        log = Logger(observer=publisher)
        log.debug("a debug line")
        log.info("an info line")
        log.warn("a warning")
        observatory.upstreamOutput("m", "stdout", "model says hi")
        return [e.get("log_format") for e in seen], publisher, seen, observatory

    def test_infoLevelHidesDebug(self):
        formats, *_ = self.observe("")
        self.assertEqual(formats, ["an info line", "a warning"])

    def test_warnLevelHidesInfo(self):
        formats, *_ = self.observe("logLevel: warn\n")
        self.assertEqual(formats, ["a warning"])

    def test_bothAddsModelOutput(self):
        formats, *_ = self.observe("logToStdout: both\n")
        self.assertEqual(formats, ["an info line", "a warning", "[{model}] {line}"])

    def test_upstreamShowsOnlyModelOutput(self):
        formats, *_ = self.observe("logToStdout: upstream\n")
        self.assertEqual(formats, ["[{model}] {line}"])

    def test_noneShowsNothing(self):
        formats, *_ = self.observe("logToStdout: none\n")
        self.assertEqual(formats, [])

    def test_stopRestoresTheObservers(self):
        formats, publisher, seen, observatory = self.observe("logLevel: error\n")
        observatory.stopService()
        Logger(observer=publisher).debug("after")
        self.assertEqual(seen[-1]["log_format"], "after")

    def test_modelLogKeepsEveryLine(self):
        _, _, _, observatory = self.observe("logToStdout: none\n")
        self.assertIn(b"model says hi", observatory.hub.modelBuffer("m").history())


class ModelStatusTests(SynchronousTestCase):
    def test_localModelsThenPeers(self):
        observatory = Observatory(loadConfigText(MODELS), Clock(), publisher=LogPublisher())
        observatory.stateChanged("m", "stopped", "starting")
        local, peer = observatory.modelStatus()
        self.assertEqual({k: local[k] for k in ("id", "name", "description", "state",
                                                "unlisted", "peerID", "aliases")},
                         {"id": "m", "name": "Model M", "description": "", "state": "starting",
                          "unlisted": False, "peerID": "", "aliases": ["mm"]})
        self.assertEqual(peer, {"id": "far", "name": "far", "description": "", "state": "ready",
                                "unlisted": False, "peerID": "p"})

    def test_staticFactsOfAGroupedModel(self):
        config = loadConfigText(
            "startPort: 7100\n"
            "models:\n"
            "  m: {cmd: 'srv --port ${PORT}', ttl: 90,\n"
            "      metadata: {capabilities: [Chat, TTS, vision, chat]}}\n"
            "  n: {cmd: 'srv', proxy: 'http://127.0.0.1:9123', metadata: {capabilities: 'rerank, stt'}}\n"
            "groups:\n"
            "  pair: {members: [m, n]}\n")
        m, n = Observatory(config, Clock(), publisher=LogPublisher()).modelStatus()
        self.assertEqual((m["ttl"], m["group"], m["matrixSets"], m["proxyPort"]),
                         (90, "pair", [], 7100))
        self.assertEqual(m["capabilities"], ["chat", "speech", "vision"])
        self.assertEqual((n["proxyPort"], n["capabilities"]), (9123, ["rerank", "transcription"]))

    def test_staticFactsUnderAMatrix(self):
        config = loadConfigText(
            "models:\n"
            "  a: {cmd: 'srv --port ${PORT}'}\n"
            "  b: {cmd: 'srv --port ${PORT}'}\n"
            "matrix:\n"
            "  vars: {x: a, y: b}\n"
            "  sets:\n"
            "    both: 'x & y'\n"
            "    solo: 'x'\n")
        a, b = Observatory(config, Clock(), publisher=LogPublisher()).modelStatus()
        self.assertEqual((a["group"], a["matrixSets"]), (None, ["both", "solo"]))
        self.assertEqual(b["matrixSets"], ["both"])
