"""
Clients that misbehave, and load that piles up: each in its own test,
against the real daemon and real upstreams.  In each, other clients in
flight at the same time get their whole answers, nothing is left behind,
and the daemon's file descriptors (and, where the fault is about memory,
its resident size) stay bounded.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time

from twisted.trial.unittest import TestCase

from tests.chaos.support import (
    Bystander,
    Daemon,
    abort,
    demoCmd,
    faultyCmd,
    openFds,
    rssBytes,
    sseEvents,
    waitFor,
)
from tests.chaos.test_upstream_faults import BYSTANDER_TOKENS, daemonWith

MiB = 1024 * 1024


def queueDepth(d: Daemon) -> float:
    """
    @return: C{llamaswap_queue_depth} as C{/metrics} says.
    """
    status, _, body = d.request("GET", "/metrics")
    assert status == 200, (status, body)
    for line in body.decode().splitlines():
        if line.startswith("llamaswap_queue_depth "):
            return float(line.split()[1])
    raise AssertionError("no llamaswap_queue_depth in /metrics")


class ClientFaultTests(TestCase):
    timeout = 120

    def test_disconnectWhileQueued(self) -> None:
        """
        A client that gives up while its request waits for a swap: the
        request it held is dropped, the model in use finishes its stream,
        and the next request for the queued model is served.
        """
        d = Daemon(self, {
            "busy": {"cmd": demoCmd("busy", "--tokens", str(BYSTANDER_TOKENS * 2),
                                    "--token-delay", "0.05")},
            "queued": {"cmd": demoCmd("queued")},
        }).start()
        fds = d.baseline("queued", "busy")
        busy = Bystander(d, "busy")
        busy.start()
        busy.started_.wait(30)
        conn = d.connect()
        conn.request("POST", "/v1/chat/completions", body=json.dumps({
            "model": "queued", "messages": [{"role": "user", "content": "hi"}]}).encode(),
            headers={"Content-Type": "application/json"})
        waitFor(lambda: queueDepth(d) == 1, timeout=10, what="the request queued")
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        waitFor(lambda: queueDepth(d) == 0, timeout=10, what="the request left the queue")
        self.assertTrue(busy.is_alive(), "the busy stream ended before the check")
        busy.check(self, BYSTANDER_TOKENS * 2)
        status, _, body = d.chat("queued")
        self.assertEqual(status, 200, body)
        status, _, body = d.chat("busy")
        self.assertEqual(status, 200, body)
        d.assertNoLeak(fds)

    def test_disconnectWhileItsModelLoads(self) -> None:
        """
        A client that gives up while its model starts: the model still
        comes up (or is stopped) cleanly and serves the next request.
        """
        d = daemonWith(self, {"cmd": demoCmd("victim", "--startup-delay", "2")})
        fds = d.baseline("bystander", "victim")
        bystander = Bystander(d, "bystander")
        bystander.start()
        bystander.started_.wait(30)
        conn = d.connect()
        conn.request("POST", "/v1/chat/completions", body=json.dumps({
            "model": "victim", "messages": [{"role": "user", "content": "hi"}]}).encode(),
            headers={"Content-Type": "application/json"})
        time.sleep(0.5)
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        bystander.check(self, BYSTANDER_TOKENS)
        status, _, body = d.chat("victim")
        self.assertEqual(status, 200, body)
        d.assertNoLeak(fds)

    def test_disconnectMidStreamClosesTheUpstreamRequest(self) -> None:
        """
        A client that goes away mid-stream: the daemon closes its request to
        the upstream (which sees its connection go), and nothing else.
        """
        d = daemonWith(self, {"cmd": faultyCmd("{marker}", "--tokens", "3000",
                                              "--token-delay", "0.01")})
        fds = d.baseline("bystander", "victim")
        bystander = Bystander(d, "bystander")
        bystander.start()
        bystander.started_.wait(30)
        conn, response = d.openStream("victim")
        self.assertEqual(response.status, 200)
        events = sseEvents(response)
        for _ in range(3):
            next(events)
        abort(conn, response)

        d.waitUpstreamIdle("victim", "upstream connection closed")
        bystander.check(self, BYSTANDER_TOKENS)
        d.assertNoLeak(fds)

    def test_slowReaderOnFastStreamKeepsMemoryBounded(self) -> None:
        """
        A client reading a fast 300 MiB stream slowly: the daemon holds back
        the upstream instead of buffering, so its memory stays bounded.
        """
        d = daemonWith(self, {"cmd": demoCmd("victim")})
        fds = d.baseline("bystander", "victim")
        rssBefore = rssBytes(d.pid)
        bystander = Bystander(d, "bystander")
        bystander.start()
        bystander.started_.wait(30)
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.settimeout(30)
        s.connect(("127.0.0.1", d.port))
        s.sendall(b"GET /upstream/victim/debug/stream?n=20000&size=16000 HTTP/1.1\r\n"
                  b"Host: x\r\nConnection: close\r\n\r\n")
        received = 0
        peak = rssBefore
        for _ in range(8):
            received += len(s.recv(65536))
            time.sleep(0.5)
            peak = max(peak, rssBytes(d.pid))
        s.close()
        self.assertGreater(received, 0)
        self.assertLess(peak - rssBefore, 48 * MiB,
                        f"daemon grew by {(peak - rssBefore) / MiB:.1f} MiB")
        bystander.check(self, BYSTANDER_TOKENS)
        d.assertNoLeak(fds)

    def test_capturesAtTheirBudgetKeepMemoryBounded(self) -> None:
        """
        Requests whose captures overflow C{captureBuffer}: the oldest are
        evicted, one larger than the whole budget is not kept, every request
        is served, and the daemon's memory stays bounded.
        """
        d = daemonWith(self, {"cmd": demoCmd("victim")}, {"captureBuffer": 1})
        fds = d.baseline("bystander", "victim")
        rssBefore = rssBytes(d.pid)
        bystander = Bystander(d, "bystander")
        bystander.start()
        bystander.started_.wait(30)
        for size in [200_000] * 20 + [3 * MiB]:
            noise = base64.b64encode(os.urandom(size * 3 // 4)).decode()
            status, _, body = d.chat("victim", messages=[{"role": "user", "content": noise}])
            self.assertEqual(status, 200, body[:200])
        status, _, body = d.request("GET", "/api/metrics")
        entries = [e for e in json.loads(body) if e["model"] == "victim"]
        kept = [e["id"] for e in entries if e["has_capture"]]
        self.assertTrue(kept)
        self.assertLess(len(kept), 20)
        self.assertFalse(entries[-1]["has_capture"], "a capture over the budget was kept")
        self.assertEqual(d.request("GET", f"/api/captures/{kept[-1]}")[0], 200)
        self.assertEqual(d.request("GET", f"/api/captures/{entries[0]['id']}")[0], 404)
        self.assertLess(rssBytes(d.pid) - rssBefore, 40 * MiB)
        bystander.check(self, BYSTANDER_TOKENS)
        d.assertNoLeak(fds)

    def test_thousandIdleKeepAliveConnections(self) -> None:
        """
        1 000 idle keep-alive connections held open while traffic goes on:
        the traffic is served, and closing them gives every descriptor back.
        """
        d = daemonWith(self, {"cmd": demoCmd("victim")})
        fds = d.baseline("bystander", "victim")
        idle: list[socket.socket] = []
        self.addCleanup(lambda: list(map(socket.socket.close, idle)))
        for _ in range(1000):
            s = socket.create_connection(("127.0.0.1", d.port), timeout=30)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            idle.append(s)
        for s in idle:
            head = s.recv(4096)
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        waitFor(lambda: openFds(d.pid) >= fds + 950, timeout=30,
                what=lambda: f"1000 connections held (daemon fds {fds} -> {openFds(d.pid)})")
        bystander = Bystander(d, "bystander")
        bystander.start()
        results: list[int] = []

        def chats() -> None:
            for _ in range(10):
                results.append(d.chat("victim")[0])

        workers = [threading.Thread(target=chats) for _ in range(3)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        self.assertEqual(results, [200] * 30)
        bystander.check(self, BYSTANDER_TOKENS)
        for s in idle:
            s.close()
        idle.clear()
        d.assertNoLeak(fds)

    def test_bodyOverTheLimitRefusedAsItArrives(self) -> None:
        """
        A body past C{maxRequestBodyMB}, declared or sent without end: a 413
        as soon as the limit is passed, not once the whole body is in (an
        endless body would otherwise fill the disk).
        """
        d = daemonWith(self, {"cmd": demoCmd("victim")}, {"maxRequestBodyMB": 1})
        fds = d.baseline("bystander", "victim")
        bystander = Bystander(d, "bystander")
        bystander.start()
        bystander.started_.wait(30)
        huge = b"Content-Length: %d\r\n" % (1 << 40)
        for framing in (huge, huge + b"Expect: 100-continue\r\n",
                        b"Transfer-Encoding: chunked\r\n"):
            s = socket.create_connection(("127.0.0.1", d.port), timeout=30)
            self.addCleanup(s.close)
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\n" + framing + b"\r\n")
            chunk = b"x" * 65536
            if framing.startswith(b"Transfer"):
                chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
            answer = b""
            try:
                for _ in range(64):  # 4 MiB, well past the limit
                    s.sendall(chunk)
            except OSError:
                pass
            s.settimeout(10)
            try:
                while b"\r\n\r\n" not in answer:
                    data = s.recv(65536)
                    if not data:
                        break
                    answer += data
            except socket.timeout:
                pass
            s.close()
            self.assertTrue(answer.startswith(b"HTTP/1.1 413"), (framing, answer[:300]))
            self.assertIn(b"error", answer)
        bystander.check(self, BYSTANDER_TOKENS)
        d.assertNoLeak(fds)
