"""
Tests for L{llamaswap.observe.observatory}: how C{logLevel} and
C{logToStdout} shape the daemon's own log, and the UI's model list.
"""

import threading
import time

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from llamaswap.config import loadConfigText
from llamaswap.interfaces import IRouterReport
from llamaswap.observe.observatory import CoalescedFlush, Observatory, classicLogLine
from llamaswap.router.router import RouterObserver

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

    def test_twistdsTextObserverWritesTheSameLines(self):
        """
        twistd's text observer keeps its format, its timestamp made once a
        second.
        """
        import io
        import time

        from twisted.logger import formatEventAsClassicLogText, textFileLogObserver

        out = io.StringIO()
        publisher = LogPublisher()
        observer = textFileLogObserver(out)
        publisher.addObserver(observer)
        observatory = Observatory(loadConfigText(MODELS), Clock(), publisher=publisher,
                                  shapeOwnLog=True)
        observatory.startService()
        self.addCleanup(observatory.stopService)
        now = time.time()
        events = [dict(log_format="line {n}", n=n, log_time=now + n * 0.4,
                       log_namespace="x", log_level=LogLevel.info) for n in range(6)]
        # Events that carry their line already formatted (the access log's)
        # are written the same way, without formatting them again.
        events += [
            dict(log_format="{line}", line='Request 1.2.3.4 "GET / HTTP/1.1" 200',
                 log_time=now + 3, log_namespace="llamaswap.access",
                 log_level=LogLevel.info),
            dict(log_format="{line}", line="two\nlines", log_time=now + 3.5,
                 log_system="sys", log_level=LogLevel.warn),
            dict(log_format="{line}", line="no level", log_time=now + 4),
        ]
        expected = "".join(formatEventAsClassicLogText(e) for e in events)
        for event in events:
            publisher(event)
        observatory.stopService()  # flushes
        self.assertEqual(out.getvalue(), expected)
        self.assertIs(observer.formatEvent, classicLogLine)

    def test_modelLogKeepsEveryLine(self):
        _, _, _, observatory = self.observe("logToStdout: none\n")
        self.assertIn(b"model says hi", observatory.hub.modelBuffer("m").history())


RUNTIME = {"since": None, "inFlight": 0, "queued": 0, "pid": None, "port": None,
           "lastUsed": None, "unloadAt": None, "failure": None, "progress": None}


class CoalescedFlushTests(SynchronousTestCase):
    """
    L{CoalescedFlush}: the lines of a burst are written and flushed
    together, a moment after the first flush.
    """

    class File:
        def __init__(self) -> None:
            self.writes: list[str] = []
            self.flushes = 0

        def write(self, data: str) -> int:
            self.writes.append(data)
            return len(data)

        def flush(self) -> None:
            self.flushes += 1

    def setUp(self) -> None:
        self.clock = Clock()
        self.file = self.File()
        self.out = CoalescedFlush(self.file, self.clock, delay=0.005, limit=100)

    def test_aBurstIsOneWrite(self) -> None:
        for n in range(3):
            self.out.write(f"line {n}\n")
            self.out.flush()
        self.assertEqual((self.file.writes, self.file.flushes), ([], 0))
        self.clock.advance(0.005)
        self.assertEqual(self.file.writes, ["line 0\nline 1\nline 2\n"])
        self.assertEqual(self.file.flushes, 1)
        self.out.write("later\n")
        self.out.flush()
        self.clock.advance(0.005)
        self.assertEqual(self.file.writes[1:], ["later\n"])

    def test_aFullHoldIsWrittenAtOnce(self) -> None:
        self.out.write("x" * 60)
        self.assertEqual(self.file.writes, [])
        self.out.write("y" * 60)
        self.assertEqual(self.file.writes, ["x" * 60 + "y" * 60])

    def test_flushNowWritesWhatIsHeld(self) -> None:
        self.out.write("last\n")
        self.out.flush()
        self.out.flushNow()
        self.assertEqual((self.file.writes, self.file.flushes), (["last\n"], 1))
        self.clock.advance(1)
        self.assertEqual(self.file.flushes, 1)

    def test_aLineFromAnotherThreadIsNotLost(self) -> None:
        """
        A line another thread is appending while the reactor's thread takes
        the held lines is written, not appended to the list just taken.
        """
        appending = threading.Event()

        class SlowList(list):
            def append(self, item: str) -> None:
                appending.set()
                time.sleep(0.05)  # the reactor's thread drains meanwhile
                super().append(item)

        self.out._held = SlowList()
        writer = threading.Thread(target=self.out.write, args=("from a thread\n",))
        writer.start()
        self.assertTrue(appending.wait(5))
        self.out.flushNow()
        writer.join()
        self.out.flushNow()
        self.assertEqual("".join(self.file.writes), "from a thread\n")

    def test_aClosedFileIsNoError(self) -> None:
        def closed(data: str) -> int:
            raise ValueError("I/O operation on closed file")

        self.file.write = closed  # type: ignore[method-assign]
        self.out.write("lost\n")
        self.out.flushNow()


class ModelStatusTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.observatory = Observatory(loadConfigText(MODELS), self.clock,
                                       publisher=LogPublisher())
        self.published = []
        self.observatory.bus.subscribe(self.published.append)

    def statusOf(self, modelId):
        return {r["id"]: r for r in self.observatory.modelStatus()}[modelId]

    def test_localModelsThenPeers(self):
        self.observatory.stateChanged("m", "stopped", "starting")
        local, peer = self.observatory.modelStatus()
        self.assertEqual({k: local[k] for k in ("id", "name", "description", "unlisted",
                                                "peerID", "aliases", "state", *RUNTIME)},
                         {"id": "m", "name": "Model M", "description": "", "unlisted": False,
                          "peerID": "", "aliases": ["mm"], **RUNTIME, "state": "starting",
                          "since": 1000})
        self.assertEqual(peer, {"id": "far", "name": "far", "description": "", "state": "ready",
                                "unlisted": False, "peerID": "p"})

    def test_routerReportsAreTheRuntimeFields(self):
        """
        The observatory is the router's IRouterReport: what it is told
        shows in the model's record, and each change is published.
        """
        verifyObject(IRouterReport, self.observatory)
        verifyObject(IRouterReport, RouterObserver())
        o = self.observatory
        o.stateChanged("m", "stopped", "starting")
        o.loadBegan("m", 4242, 5800)
        o.progress("m", {"fraction": 0.5, "bytesLoaded": 5, "bytesTotal": 10,
                         "elapsed": 1.0, "expected": None})
        self.assertEqual(self.statusOf("m")["progress"]["fraction"], 0.5)
        o.stateChanged("m", "starting", "ready")
        o.ready("m", 1.5)
        o.inFlight("m", 2, 2)
        o.queueDepth("m", 1, 1)
        o.idle("m", 1010.0, 1310.0)
        record = self.statusOf("m")
        self.assertEqual(
            {k: record[k] for k in RUNTIME},
            {**RUNTIME, "since": 1000, "inFlight": 2, "queued": 1, "pid": 4242, "port": 5800,
             "lastUsed": 1010.0, "unloadAt": 1310.0})
        self.assertEqual(record["state"], "ready")
        before = len(self.published)
        o.idle("m", 1010.0, 1310.0)
        self.assertEqual(len(self.published), before, "no change, nothing published")
        o.failed("m", {"reason": "boom", "exitCode": 1, "lastLines": ["x"]})
        self.assertEqual(self.statusOf("m")["failure"]["exitCode"], 1)
        o.stateChanged("m", "ready", "failed")
        self.assertEqual((self.statusOf("m")["pid"], self.statusOf("m")["inFlight"]), (None, 0))

    def test_progressIsThrottled(self):
        o = self.observatory
        before = len(self.published)
        for i in range(10):
            o.progress("m", {"fraction": i / 10})
            self.clock.advance(0.1)
        self.assertEqual(len(self.published) - before, 2, "about two a second")
        self.assertEqual(self.statusOf("m")["progress"], {"fraction": 0.9})
        o.progress("m", None)
        self.assertEqual(len(self.published) - before, 3, "the end is always published")

    def test_reloadAppliesCaptureBufferAndPerformance(self):
        o = self.observatory
        self.assertIsNone(o.performance)
        o.reconfigure(loadConfigText("captureBuffer: 1\n" + MODELS.replace(
            "performance: {disabled: true}", "performance: {every: 7s}")))
        self.assertEqual(o.captures.maxBytes, 1048576)
        self.assertIsNotNone(o.performance)
        self.assertEqual(o.performance.every, 7.0)
        self.assertTrue(o.metricsResource.enabled)

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
