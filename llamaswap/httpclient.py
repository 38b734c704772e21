"""
HTTP client plumbing shared by the relay and the health probe.
"""

from __future__ import annotations

from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory


class _QuietClientFactory(_HTTP11ClientFactory):
    """
    The pool's connection factory, without "Starting factory" and "Stopping
    factory" log lines for every upstream connection.
    """

    noisy = False


def quietPool(reactor, persistent: bool = True) -> HTTPConnectionPool:
    """
    @return: an L{HTTPConnectionPool} whose connections are not logged.
    """
    pool = HTTPConnectionPool(reactor, persistent=persistent)
    pool._factory = _QuietClientFactory
    return pool
