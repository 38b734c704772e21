"""
Integration tests for the demo upstream as a real process: C{python -m
llamaswap.demo --port 0}, spoken to over a real socket.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

import llamaswap

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(llamaswap.__file__)))
LINE = re.compile(r"^demo: model=(?P<model>\S+) listening on "
                  r"http://(?P<host>[^:]+):(?P<port>\d+) pid=(?P<pid>\d+)$")
WAIT = 15.0


class DemoProcess(ProcessProtocol):
    """
    Collects the demo's first stdout line and its end.

    @ivar firstLine: Fires with the first line of stdout (decoded, without the
        newline); fails if the process ends before printing one.
    @ivar ended: Fires with the exit reason's value (L{ProcessDone} or
        L{ProcessTerminated}) once the process is reaped and its pipes closed.
    """

    def __init__(self) -> None:
        self.firstLine: Deferred[str] = Deferred()
        self.ended: Deferred[Exception] = Deferred()
        self.running = False
        self.stdout = b""
        self.stderr = b""

    def connectionMade(self) -> None:
        self.running = True
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.stdout += data
        if b"\n" in self.stdout and not self.firstLine.called:
            self.firstLine.callback(self.stdout.split(b"\n", 1)[0].decode("utf-8"))

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        if not self.firstLine.called:
            self.firstLine.errback(RuntimeError(
                "demo exited before announcing itself: %r\nstderr:\n%s"
                % (reason.value, self.stderr.decode("utf-8", "replace"))))
        self.ended.callback(reason.value)


class DemoProcessTests(TestCase):
    timeout = 60

    def spawn(self, *args: str) -> tuple[Any, DemoProcess]:
        """
        Start C{python -m llamaswap.demo --port 0 *args}; a cleanup kills it
        if it is still running and waits until it has ended.
        """
        from twisted.internet import reactor

        protocol = DemoProcess()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
        argv = [sys.executable, "-m", "llamaswap.demo", "--port", "0", *args]
        transport = reactor.spawnProcess(protocol, sys.executable, argv, env=env,
                                         path=REPO_ROOT)

        def reap() -> Deferred[Exception]:
            if protocol.running:
                transport.signalProcess("KILL")
            return protocol.ended

        self.addCleanup(reap)
        return transport, protocol

    def client(self) -> HTTPClient:
        from twisted.internet import reactor

        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        return HTTPClient(Agent(reactor, pool=pool))

    async def announced(self, protocol: DemoProcess) -> re.Match[str]:
        from twisted.internet import reactor

        line = await protocol.firstLine.addTimeout(WAIT, reactor)
        match = LINE.match(line)
        self.assertIsNotNone(match, line)
        assert match is not None
        return match

    async def test_streamedChatThenSigterm(self) -> None:
        """
        The process announces its port; a streamed chat over a real socket
        gets one event per token and C{[DONE]}; SIGTERM ends it cleanly.
        """
        from twisted.internet import reactor

        transport, protocol = self.spawn("--model", "it-model", "--tokens", "5",
                                         "--token-delay", "0.01")
        match = await self.announced(protocol)
        self.assertEqual(match["model"], "it-model")
        self.assertEqual(int(match["pid"]), transport.pid)

        client = self.client()
        url = "http://127.0.0.1:%s/v1/chat/completions" % (match["port"],)
        response = await client.post(
            url,
            json={"model": "asked-for", "stream": True,
                  "messages": [{"role": "user", "content": "hello from a socket"}]},
            unbuffered=True,
        ).addTimeout(WAIT, reactor)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("x-demo-pid"), [match["pid"]])
        self.assertEqual(response.headers.getRawHeaders("x-demo-model"), ["it-model"])
        received: list[bytes] = []
        await treq.collect(response, received.append).addTimeout(WAIT, reactor)

        events = [block[len(b"data: "):] for block in b"".join(received).split(b"\n\n") if block]
        self.assertEqual(events[-1], b"[DONE]")
        chunks = [json.loads(e) for e in events[:-1]]
        tokens = [c["choices"][0]["delta"].get("content") for c in chunks[:-1]]
        self.assertEqual(len(tokens), 5)
        self.assertTrue(all(t and t.endswith(" ") for t in tokens))
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "stop")
        self.assertEqual(chunks[0]["model"], "asked-for")

        transport.signalProcess("TERM")
        reason = await protocol.ended.addTimeout(WAIT, reactor)
        self.assertIsInstance(reason, ProcessDone, protocol.stderr)
        self.assertIn(b"POST /v1/chat/completions 200", protocol.stderr)

    async def test_exitAfter(self) -> None:
        """
        C{--exit-after} makes the process exit by itself with status 3.
        """
        from twisted.internet import reactor

        transport, protocol = self.spawn("--exit-after", "0.2")
        await self.announced(protocol)
        reason = await protocol.ended.addTimeout(WAIT, reactor)
        self.assertIsInstance(reason, ProcessTerminated)
        self.assertEqual(reason.exitCode, 3)
