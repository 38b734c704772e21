"""
Tests for L{llamaswap.upstream.ports}: whether a loopback port has a listener.
"""

import socket

from twisted.trial.unittest import SynchronousTestCase

from llamaswap.upstream.ports import portInUse


class PortInUseTests(SynchronousTestCase):
    def listener(self):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        self.addCleanup(sock.close)
        return sock.getsockname()[1]

    def test_listeningPortIsInUse(self):
        port = self.listener()
        self.assertTrue(portInUse(f"http://127.0.0.1:{port}"))
        self.assertTrue(portInUse(f"http://localhost:{port}/v1"))

    def test_closedPortIsFree(self):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        self.assertFalse(portInUse(f"http://127.0.0.1:{port}"))

    def test_remoteHostsAreNotChecked(self):
        self.assertFalse(portInUse("http://gpu-box.example:5800"))
