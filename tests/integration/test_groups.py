"""
Groups, the matrix and request collation with real demo processes.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase

from tests.integration.support import alive, asyncTest, demoModels, InProcessDaemon


class GroupTests(TestCase):
    timeout = 60

    @asyncTest
    async def test_swapFalseRunsMembersTogether(self) -> None:
        daemon = InProcessDaemon(self, demoModels(["a", "b"]) + """
groups:
  together:
    swap: false
    members: [a, b]
""")
        pidA = await daemon.chatPid("a")
        pidB = await daemon.chatPid("b")
        self.assertTrue(alive(pidA) and alive(pidB))
        running = await daemon.getJSON("/running")
        self.assertEqual([r["model"] for r in running["running"]], ["a", "b"])

    @asyncTest
    async def test_exclusiveGroupStopsTheOtherGroup(self) -> None:
        daemon = InProcessDaemon(self, demoModels(["a", "b"]) + """
groups:
  g1: {members: [a]}
  g2: {members: [b]}
""")
        pidA = await daemon.chatPid("a")
        await daemon.chatPid("b")
        self.assertFalse(alive(pidA))

    @asyncTest
    async def test_nonExclusiveGroupLeavesOthersRunning(self) -> None:
        daemon = InProcessDaemon(self, demoModels(["a", "b"]) + """
groups:
  g1: {members: [a]}
  g2: {members: [b], exclusive: false}
""")
        pidA = await daemon.chatPid("a")
        pidB = await daemon.chatPid("b")
        self.assertTrue(alive(pidA) and alive(pidB))

    @asyncTest
    async def test_persistentGroupSurvivesOtherSwaps(self) -> None:
        daemon = InProcessDaemon(self, demoModels(["p", "x", "y"]) + """
groups:
  keep: {members: [p], persistent: true}
  other: {members: [x, y]}
""")
        pidP = await daemon.chatPid("p")
        pidX = await daemon.chatPid("x")
        await daemon.chatPid("y")
        self.assertTrue(alive(pidP))
        self.assertFalse(alive(pidX))


class MatrixTests(TestCase):
    timeout = 60

    @asyncTest
    async def test_coResidentSetThenEviction(self) -> None:
        daemon = InProcessDaemon(self, demoModels(["chat", "embed", "big"]) + """
matrix:
  vars: {c: chat, e: embed, b: big}
  sets:
    pair: "c & e"
    alone: "b"
""")
        pidC = await daemon.chatPid("chat")
        pidE = await daemon.chatPid("embed")
        self.assertTrue(alive(pidC) and alive(pidE))
        await daemon.chatPid("big")
        self.assertFalse(alive(pidC) or alive(pidE))


class CollationTests(TestCase):
    timeout = 90

    @asyncTest
    async def test_interleavedRequestsStartEachModelOnce(self) -> None:
        """
        A B C A B C ... sent together on a one-at-a-time config is served
        collated: one process start per model, not one per model change.
        """
        daemon = InProcessDaemon(self, demoModels(["a", "b", "c"], "--startup-delay 0.2"))
        order = ["a", "b", "c"] * 4
        pids = await gatherResults(
            [Deferred.fromCoroutine(daemon.chatPid(name)) for name in order]
        )
        byModel = {}
        for name, pid in zip(order, pids):
            byModel.setdefault(name, set()).add(pid)
        self.assertEqual({name: len(p) for name, p in byModel.items()}, {"a": 1, "b": 1, "c": 1})

    @asyncTest
    async def test_clientThatLeavesWhileWaitingStartsNothing(self) -> None:
        """
        A request for b waits while a serves a long answer; its client goes
        away; b is never started.
        """
        import json

        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        from twisted.internet.protocol import Protocol
        from twisted.internet.task import deferLater

        daemon = InProcessDaemon(self, demoModels(["a", "b"], "--tokens 40 --token-delay 0.02"))
        await daemon.chatPid("a")
        longA = Deferred.fromCoroutine(daemon.chat("a"))  # about 0.8 s of tokens
        await deferLater(reactor, 0.1, lambda: None)

        body = json.dumps({"model": "b", "messages": [{"role": "user", "content": "hi"}]})
        raw = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}"
        ).encode()
        port = int(daemon.base.rsplit(":", 1)[1])
        client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Protocol())
        client.transport.write(raw)
        await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(daemon.router.machines["b"].state, "stopped")
        client.transport.loseConnection()

        response, _ = await longA
        self.assertEqual(response.code, 200)
        await deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(daemon.router.machines["b"].state, "stopped")
        self.assertEqual(daemon.router.machines["a"].state, "ready")
