"""
Limits that hold under load, with real sockets on the real reactor: the
request-head deadline against a trickling client, the client connection
cap, and the open-files limit raised by the real twistd.
"""

from __future__ import annotations

import socket
import sys
import time

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.static import Data

from llamaswap.listening import ConnectionCap
from llamaswap.service import AccessLoggingSite
from tests.integration.support import PROJECT_ROOT, asyncTest, eventually
from tests.integration.test_daemon import Collect, childEnv


def daemonSite(headDeadline: float) -> AccessLoggingSite:
    root = Resource()
    root.putChild(b"health", Data(b"OK", "text/plain"))
    site = AccessLoggingSite(root, clock=reactor)
    site.headDeadline = headDeadline  # type: ignore[attr-defined]
    return site


def exchange(port: int, request: bytes) -> bytes:
    """
    Send C{request} on a new connection and read until the server closes
    it (in a thread: blocking sockets).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(request)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    return answer


class LimitsTests(TestCase):
    timeout = 60

    async def listen(self, factory) -> int:
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @asyncTest
    async def test_slowlorisIsCutOff(self) -> None:
        """
        A client sending one header byte every 2 s keeps its connection
        past any idle timeout; the head deadline (3 s here) ends it with a
        408 while it is still trickling.
        """
        port = await self.listen(daemonSite(headDeadline=3))

        def trickle() -> tuple[int, bytes, float]:
            head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
            sent = 0
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.settimeout(2)
                for byte in head:
                    try:
                        s.sendall(bytes([byte]))
                    except OSError:
                        break
                    sent += 1
                    try:
                        answer = s.recv(4096)
                    except socket.timeout:
                        continue
                    return sent, answer, time.monotonic() - started
            return sent, b"", time.monotonic() - started

        sent, answer, took = await deferToThread(trickle)
        self.assertTrue(answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer)
        self.assertGreaterEqual(sent, 2)
        self.assertLess(sent, 30)
        self.assertGreaterEqual(took, 3)

    @asyncTest
    async def test_capRefusesPastItAndRecovers(self) -> None:
        site = daemonSite(headDeadline=30)
        cap = ConnectionCap(site, 2, reactor)
        port = await self.listen(cap)
        idle = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(2)]
        try:
            await eventually(lambda: cap.open == 2, timeout=10)
            refused = await deferToThread(exchange, port, b"GET /health HTTP/1.0\r\n\r\n")
            self.assertTrue(refused.startswith(b"HTTP/1.1 503 Service Unavailable"), refused)
            self.assertIn(b'"too many client connections; retry later"', refused)
            self.assertEqual(cap.open, 2)
        finally:
            idle.pop().close()
        await eventually(lambda: cap.open == 1, timeout=10)
        served = await deferToThread(exchange, port, b"GET /health HTTP/1.0\r\n\r\n")
        self.assertTrue(served.startswith(b"HTTP/1.0 200 OK"), served)
        self.assertTrue(served.endswith(b"OK"))
        for s in idle:
            s.close()
        await eventually(lambda: cap.open == 0, timeout=10)

    @asyncTest
    async def test_twistdRaisesTheOpenFilesLimit(self) -> None:
        """
        Started under a soft limit of 256 (below the hard one), the daemon
        raises it to the hard limit and says so.
        """
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard <= 256:
            self.skipTest(f"the hard open-files limit is {hard}: nothing to raise")
        script = (
            "import resource, runpy, sys; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit("
            "resource.RLIMIT_NOFILE)[1])); "
            "from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
        )
        argv = [sys.executable, "-c", script, "--pidfile=", "-n", "llamaswap",
                "--listen", "tcp:0:interface=127.0.0.1"]
        proto = Collect()
        transport = reactor.spawnProcess(proto, argv[0], argv, env=childEnv(), path=PROJECT_ROOT)
        try:
            await eventually(lambda: b"open files limit" in proto.output, timeout=30)
            expected = "1048576" if hard == resource.RLIM_INFINITY else str(hard)
            self.assertIn(f"open files limit raised from 256 to {expected}".encode(),
                          proto.output)
        finally:
            if not proto.ended.called:
                transport.signalProcess("TERM")
            await proto.ended
