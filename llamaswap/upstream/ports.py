# -*- test-case-name: tests.test_ports -*-
"""
Is an upstream's port already taken before its command starts?

llamaswap allocates C{${PORT}} from C{startPort}.  When another process
already listens there (a second llamaswap or llama-swap with the same
C{startPort}, a leftover server), the new upstream cannot bind it, and the
readiness probe would happily talk to the squatter instead.  Checking
before the spawn turns that into a clear start error.
"""

from __future__ import annotations

import errno
import select
import socket
from urllib.parse import urlsplit

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def _loopbackAddresses(host: str) -> list[tuple[int, str]]:
    host = host.strip("[]").lower()
    if host == "localhost":
        return [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
    if host.startswith("127."):
        return [(socket.AF_INET, host)]
    if host == "::1":
        return [(socket.AF_INET6, "::1")]
    return []


def portInUse(proxyURL: str) -> bool:
    """
    @return: whether something already accepts connections at the port of
        C{proxyURL}, for a loopback host only (C{localhost}, C{127.x},
        C{::1}); other hosts are not checked (C{False}).

    The check never blocks: a non-blocking connect on loopback is answered
    (accepted or refused) at once; anything else counts as free.
    """
    parts = urlsplit(proxyURL)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for family, address in _loopbackAddresses(parts.hostname or ""):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue
        try:
            sock.setblocking(False)
            result = sock.connect_ex((address, port))
            if result == errno.EINPROGRESS:
                # On loopback the handshake is over by now: a listener makes
                # the socket writable at once, with no error.
                # poll, not select: select fails on descriptors >= 1024.
                poller = select.poll()
                poller.register(sock, select.POLLOUT)
                if poller.poll(0):
                    result = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError:
            continue
        finally:
            sock.close()
        if result == 0:
            return True
    return False
