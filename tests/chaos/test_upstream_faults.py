"""
Upstreams that fail: each fault in its own test, against the real daemon and
real upstream processes.  In each, the client of the failing model gets the
right answer, a client streaming from another model at the same time gets
its whole stream, no process is left behind, and the daemon's file
descriptors are back where they were.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
from typing import Any

from twisted.trial.unittest import TestCase

from tests.chaos.support import (
    PYTHON,
    Bystander,
    Daemon,
    demoCmd,
    descendants,
    faultyCmd,
    marked,
    sseEvents,
    waitFor,
)

#: The bystander streams this many tokens, 50 ms apart.
BYSTANDER_TOKENS = 40

#: The per-model idle timeout between body bytes (C{timeouts.<this>},
#: seconds).
IDLE_TIMEOUT_KEY = "responseIdle"


def daemonWith(testCase: TestCase, victim: dict[str, Any],
               top: dict[str, Any] | None = None) -> Daemon:
    """
    @return: a started daemon running C{victim} beside a demo C{bystander}
        (in one group, so that both run at the same time).
    """
    models = {
        "bystander": {"cmd": demoCmd("bystander", "--tokens", str(BYSTANDER_TOKENS),
                                     "--token-delay", "0.05")},
        "victim": victim,
    }
    settings = {"groups": {"all": {"swap": False, "exclusive": False,
                                    "members": ["bystander", "victim"]}}}
    settings.update(top or {})
    return Daemon(testCase, models, settings).start()


def assertOpenAIError(testCase: TestCase, status: int, body: bytes, expected: int) -> dict:
    """
    @return: the error object of an OpenAI-style error answer.
    """
    testCase.assertEqual(status, expected, body)
    error = json.loads(body)["error"]
    testCase.assertIsInstance(error["message"], str)
    testCase.assertNotIn("Traceback", error["message"])
    return error


def readStream(response: http.client.HTTPResponse) -> tuple[list[bytes], bool]:
    """
    @return: the events of a streamed answer, and whether it was cut short
        (the connection ended inside the chunked body).
    """
    events: list[bytes] = []
    try:
        for event in sseEvents(response):
            events.append(event)
    except (http.client.IncompleteRead, ConnectionError):
        return events, True
    return events, False


class UpstreamFaultTests(TestCase):
    timeout = 120

    def test_killedMidStreamCutsThatStreamOnly(self) -> None:
        """
        An upstream SIGKILLed mid-stream: its client's stream is cut (never
        ended as if complete), the next request starts it again.
        """
        d = daemonWith(self, {"cmd": faultyCmd("{marker}", "--tokens", "2000",
                                              "--token-delay", "0.01")})
        fds = d.baseline("bystander", "victim")
        bystander = Bystander(d, "bystander")
        bystander.start()
        bystander.started_.wait(30)
        conn, response = d.openStream("victim")
        self.assertEqual(response.status, 200)
        pid = int(response.getheader("x-faulty-pid") or 0)
        events = sseEvents(response)
        for _ in range(3):
            next(events)
        os.kill(pid, signal.SIGKILL)
        rest, cut = readStream(response)
        conn.close()
        self.assertTrue(cut, "a killed upstream's stream ended like a complete one")
        self.assertNotIn(b"[DONE]", rest)
        bystander.check(self, BYSTANDER_TOKENS)
        status, headers, body = d.chat("victim")
        self.assertEqual(status, 200, body)
        self.assertNotEqual(int(headers["x-faulty-pid"]), pid)
        d.assertNoLeak(fds)

    def test_headersThenHangEndsAtIdleTimeout(self) -> None:
        """
        An upstream that sends its headers and then nothing: the client has
        the status at once, and the connection is cut after the model's
        idle timeout; the upstream request is aborted.
        """
        d = daemonWith(self, {"cmd": faultyCmd("{marker}", "--chat", "hang-headers"),
                              "timeouts": {IDLE_TIMEOUT_KEY: 2}})
        fds = d.baseline("bystander")
        bystander = Bystander(d, "bystander")
        bystander.start()
        bystander.started_.wait(30)
        started = time.monotonic()
        conn, response = d.openStream("victim", timeout=30)
        try:
            self.assertEqual(response.status, 200)
            self.assertLess(time.monotonic() - started, 20)
            _, cut = readStream(response)
        except TimeoutError:
            self.fail("the stream of a stalled upstream was never ended")
        finally:
            conn.close()
        self.assertTrue(cut)

        d.waitUpstreamIdle("victim", "the stalled upstream request aborted")
        bystander.check(self, BYSTANDER_TOKENS)
        d.assertNoLeak(fds)


    def test_garbageInsteadOfHTTPIs502(self) -> None:
        """
        An upstream that answers bytes that are not HTTP: a 502 OpenAI-style
        error, and the model keeps serving its health.
        """
        d = daemonWith(self, {"cmd": faultyCmd("{marker}", "--chat", "garbage")})
        fds = d.baseline("bystander")
        bystander = Bystander(d, "bystander")
        bystander.start()
        bystander.started_.wait(30)
        for stream in (False, True):
            status, _, body = d.chat("victim", stream=stream)
            assertOpenAIError(self, status, body, 502)
        bystander.check(self, BYSTANDER_TOKENS)
        d.assertNoLeak(fds)

    def test_deeplyNestedAnswerIsRelayedAsIs(self) -> None:
        """
        An upstream answer whose C{usage} is nested too deeply for the token
        meters: relayed as it is, streamed or not.
        """
        d = daemonWith(self, {"cmd": faultyCmd("{marker}", "--chat", "deep")})
        fds = d.baseline("bystander")
        bystander = Bystander(d, "bystander")
        bystander.start()
        bystander.started_.wait(30)
        for stream in (False, True):
            status, _, body = d.chat("victim", stream=stream)
            self.assertEqual(status, 200, body[:300])
            self.assertIn(b"[" * 10_000 + b"]" * 10_000, body)
        bystander.check(self, BYSTANDER_TOKENS)
        d.assertNoLeak(fds)

    def test_healthFlappingWhileStartingStartsOnce(self) -> None:
        """
        A health endpoint that alternates 503 and 200 while starting: the
        request is served, by one process.
        """
        d = daemonWith(self, {"cmd": faultyCmd("{marker}", "--flap", "6")})
        fds = d.baseline("bystander")
        bystander = Bystander(d, "bystander")
        bystander.start()
        bystander.started_.wait(30)
        first = d.chat("victim")
        second = d.chat("victim")
        self.assertEqual(first[0], 200, first[2])
        self.assertEqual(second[0], 200, second[2])
        self.assertEqual(first[1]["x-faulty-pid"], second[1]["x-faulty-pid"])
        bystander.check(self, BYSTANDER_TOKENS)
        d.assertNoLeak(fds)

    def test_portAlreadyTakenIsAClearStartError(self) -> None:
        """
        C{${PORT}} already taken by another listener: a 502 that says so,
        at once (not after the health-check timeout); served again once the
        port is free.
        """
        squatter = socket.socket()
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.addCleanup(squatter.close)
        # The bystander runs on a port of its own; the victim is the only
        # model with ${PORT}, so it gets startPort.
        from tests.integration.support import freePort
        own = freePort()
        d = Daemon(self, {
            "bystander": {"cmd": demoCmd("bystander", "--tokens", str(BYSTANDER_TOKENS),
                                         "--token-delay", "0.05").replace("${PORT}", str(own)),
                          "proxy": f"http://127.0.0.1:{own}"},
            "victim": {"cmd": faultyCmd("{marker}")},
        }, {"groups": {"all": {"swap": False, "exclusive": False,
                               "members": ["bystander", "victim"]}}})
        with open(d.configPath) as f:
            port = json.load(f)["startPort"]
        d.start()
        fds = d.baseline("bystander", "victim")
        squatter.bind(("127.0.0.1", port))
        squatter.listen(8)
        bystander = Bystander(d, "bystander")
        bystander.start()
        bystander.started_.wait(30)
        started = time.monotonic()
        status, _, body = d.chat("victim")
        error = assertOpenAIError(self, status, body, 502)
        self.assertIn(str(port), error["message"])
        self.assertLess(time.monotonic() - started, 15)
        bystander.check(self, BYSTANDER_TOKENS)
        squatter.close()
        status, _, body = d.chat("victim")
        self.assertEqual(status, 200, body)
        d.assertNoLeak(fds)

    def test_commandNotFoundSaysWhy(self) -> None:
        """
        A C{cmd} that does not exist: a 502 that says the upstream failed to
        start, with its exit code and what it printed.
        """
        d = daemonWith(self, {"cmd": "/nonexistent/llamaswap-chaos-binary --port ${PORT}"})
        fds = d.baseline("bystander")
        bystander = Bystander(d, "bystander")
        bystander.start()
        bystander.started_.wait(30)
        status, _, body = d.chat("victim")
        error = assertOpenAIError(self, status, body, 502)
        self.assertIn("127", error["message"])
        bystander.check(self, BYSTANDER_TOKENS)
        d.assertNoLeak(fds)
        self.assertIn("failed to start", error["message"])
        self.assertIn("nonexistent", error["message"])


    def test_cmdStopHangingStillStops(self) -> None:
        """
        A C{cmdStop} that never returns: the model is still stopped (killed
        after its unload timeout) and the hung stop command is gone too.
        """
        d = daemonWith(self, {
            "cmd": faultyCmd("{marker}"),
            "cmdStop": f"{PYTHON} -c 'import time; time.sleep(300)' {_CMDSTOP_MARK}",
        }, {"unloadTimeout": 1})
        fds = d.baseline("bystander")
        status, headers, body = d.chat("victim")
        self.assertEqual(status, 200, body)
        pid = int(headers["x-faulty-pid"])
        bystander = Bystander(d, "bystander")
        bystander.start()
        bystander.started_.wait(30)
        status, _, body = d.request("POST", "/api/models/unload/victim", timeout=60)
        self.assertEqual(status, 200, body)
        waitFor(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), timeout=20,
                what="victim stopped")
        bystander.check(self, BYSTANDER_TOKENS)
        d.assertNoLeak(fds)
        waitFor(lambda: not marked(_CMDSTOP_MARK), timeout=20, what="cmdStop ended")

    def test_ignoresTermAndForksAllKilled(self) -> None:
        """
        An upstream that ignores SIGTERM and forks children that do too:
        after its unload timeout all of them are killed.
        """
        d = daemonWith(self, {"cmd": faultyCmd("{marker}", "--ignore-term", "--fork", "2")},
                       {"unloadTimeout": 1})
        fds = d.baseline("bystander")
        status, _, body = d.chat("victim")
        self.assertEqual(status, 200, body)
        bystander = Bystander(d, "bystander")
        bystander.start()
        bystander.started_.wait(30)
        status, _, body = d.request("POST", "/api/models/unload/victim", timeout=60)
        self.assertEqual(status, 200, body)
        waitFor(lambda: len(descendants(d.pid)) <= 1, timeout=20, what="victim's tree gone")
        bystander.check(self, BYSTANDER_TOKENS)
        d.assertNoLeak(fds)

    def test_setsidHelperDoesNotEscape(self) -> None:
        """
        An upstream whose helper left its process group with C{setsid}: the
        helper is gone when the model stops.
        """
        d = daemonWith(self, {"cmd": faultyCmd("{marker}", "--setsid-helper")})
        fds = d.baseline("bystander")
        status, _, body = d.chat("victim")
        self.assertEqual(status, 200, body)
        status, _, body = d.request("POST", "/api/models/unload/victim", timeout=60)
        self.assertEqual(status, 200, body)
        def helpers() -> list[int]:
            return [pid for pid in marked(d.marker) if b"faulty-helper" in _cmdline(pid)]

        try:
            waitFor(lambda: not helpers(), timeout=10, what="setsid helper gone")
        finally:
            for pid in helpers():
                os.kill(pid, signal.SIGKILL)
        d.assertNoLeak(fds)



#: On the command line of the hanging C{cmdStop}.
_CMDSTOP_MARK = "chaoscmdstop" + str(os.getpid())


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True
