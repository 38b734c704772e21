"""
Limits that hold under load, with real sockets on the real reactor: the
request-head deadline against a trickling client, the client connection
cap, and the open-files limit raised by the real twistd.
"""

from __future__ import annotations

import os
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
from llamaswap.tap import bundledConfigPath
from tests.integration.support import PROJECT_ROOT, asyncTest, eventually, freePort, freePortRun
from tests.integration.support import Collect, childEnv


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
    timeout = 180

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
    async def test_capServesOnlyHealthPastItAndRecovers(self) -> None:
        site = daemonSite(headDeadline=30)
        cap = ConnectionCap(site, 2, reactor)
        cap.reserve = 2
        port = await self.listen(cap)
        idle = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(2)]
        try:
            await eventually(lambda: cap.open == 2, timeout=10)
            refused = await deferToThread(exchange, port, b"GET /v1/models HTTP/1.1\r\n\r\n")
            self.assertTrue(refused.startswith(b"HTTP/1.1 503 Service Unavailable"), refused)
            self.assertIn(b'"too many client connections; retry later"', refused)
            health = await deferToThread(exchange, port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertTrue(health.startswith(b"HTTP/1.1 200 OK"), health)
            self.assertTrue(health.endswith(b"OK"), health)
            # The reserve taken too: refused at once, whatever is asked.
            idle += [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(2)]
            await eventually(lambda: cap.open == 4, timeout=10)
            full = await deferToThread(exchange, port, b"GET /health HTTP/1.1\r\n\r\n")
            self.assertTrue(full.startswith(b"HTTP/1.1 503"), full)
        finally:
            for s in idle[1:]:
                s.close()
        await eventually(lambda: cap.open == 1, timeout=10)
        served = await deferToThread(exchange, port, b"GET /health HTTP/1.0\r\n\r\n")
        self.assertTrue(served.startswith(b"HTTP/1.0 200 OK"), served)
        idle[0].close()
        await eventually(lambda: cap.open == 0, timeout=10)

    @asyncTest
    async def test_thousandsOfIdleSocketsUnderTheServiceLimit(self) -> None:
        """
        Started under the usual service soft limit of 1024 open files, the
        daemon raises it to the hard limit and says so; 1 100 idle client
        sockets then leave C{/health}, chats and model starts working.
        """
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < 4096:
            self.skipTest(f"the hard open-files limit is {hard}: too low to show this")
        if soft != resource.RLIM_INFINITY and soft < 1300:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        with open(bundledConfigPath()) as f:
            demo = f.read().replace("startPort: 5800\n", f"startPort: {freePortRun(3)}\n")
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:
            f.write(demo)
        port = freePort()
        script = (
            "import resource, sys; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit("
            "resource.RLIMIT_NOFILE)[1])); "
            "from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
        )
        argv = [sys.executable, "-c", script, "--pidfile=", "-n", "llamaswap", "-c", config,
                "--listen", f"127.0.0.1:{port}"]
        proto = Collect()
        env = childEnv()
        env.pop("LLAMASWAP_PYTHON", None)
        transport = reactor.spawnProcess(proto, argv[0], argv, env=env, path=PROJECT_ROOT)
        idle: list[socket.socket] = []
        try:
            await eventually(lambda: b"open files limit" in proto.output, timeout=30)
            expected = "1048576" if hard == resource.RLIM_INFINITY else str(hard)
            self.assertIn(f"open files limit raised from 1024 to {expected}".encode(),
                          proto.output)
            await eventually(lambda: _answers(port, b"GET /health HTTP/1.0\r\n\r\n"),
                             timeout=30)
            for _ in range(1100):
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=20))
            health = await deferToThread(exchange, port, b"GET /health HTTP/1.0\r\n\r\n")
            self.assertTrue(health.endswith(b"OK"), health)
            body = b'{"model": "demo-small", "messages": [{"role": "user", "content": "hi"}]}'
            chat = await deferToThread(
                exchange, port,
                b"POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            self.assertTrue(chat.startswith(b"HTTP/1.0 200"),
                            chat[:300] + b"\n" + proto.output[-3000:])
            self.assertNotIn(b"Too many open files", proto.output)
        finally:
            for s in idle:
                s.close()
            if not proto.ended.called:
                transport.signalProcess("TERM")
            await proto.ended


def _answers(port: int, request: bytes) -> bool:
    try:
        return exchange(port, request).endswith(b"OK")
    except OSError:
        return False
