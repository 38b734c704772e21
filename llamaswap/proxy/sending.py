# -*- test-case-name: tests.test_relay_sending -*-
"""
Writing to TCP transports without the reactor's write round trip.

Twisted buffers every write and sends it when the reactor next finds the
socket writable: each burst costs registering the socket for writing,
a poll, and removing it again.  For the relay's small answers that
bookkeeping is a visible share of a request, and each hop waits for a
reactor iteration.  L{sendNow} sends at once what an idle socket can take;
L{GatheringWrapper} is the client connection's transport, which holds the
writes one upstream read causes (an answer's head, its body, its end) and
sends them together in one C{send(2)}.
"""

from __future__ import annotations

from typing import Any

from twisted.protocols.policies import ProtocolWrapper


def flushNow(transport) -> None:
    """
    Send what C{transport} buffered now rather than when the reactor next
    polls: under load one reactor iteration relays many streams, and the
    first bytes of an exchange (its request, its response head, its first
    chunk) should not wait a whole iteration at each hop.  A failure is
    left for the reactor to find (the data stays buffered, the socket
    stays registered for writing).
    """
    doWrite = getattr(transport, "doWrite", None)
    if doWrite is not None and getattr(transport, "connected", False) and \
            not getattr(transport, "disconnecting", False):
        doWrite()


def sendNow(transport, data: bytes) -> None:
    """
    Write C{data} to C{transport}, sent at once when nothing is buffered
    before it: one C{send(2)}, without registering the socket for writing
    and removing it again.  What is not sent at once (a full socket, an
    error, a transport that is not a plain TCP one) is left to
    C{transport.write}, whose buffer also applies backpressure to a
    registered producer.
    """
    sock = getattr(transport, "socket", None)
    if sock is None or getattr(transport, "_tempDataBuffer", True) or \
            getattr(transport, "dataBuffer", True) or not getattr(transport, "connected", False) \
            or getattr(transport, "disconnecting", True) or getattr(transport, "TLS", False):
        transport.write(data)
        flushNow(transport)
        return
    try:
        sent = sock.send(data)
    except OSError:
        sent = 0  # EAGAIN, EINTR or a failure: the reactor's write finds it
    if sent < len(data):
        transport.write(data[sent:])


class GatheringWrapper(ProtocolWrapper):
    """
    A connection's transport that can hold writes for a moment: between
    L{gather} and L{release} everything written is kept, in order, and
    L{release} sends it with L{sendNow}.  Outside that, writes pass
    straight through.  Closing the connection sends what is held first;
    aborting it drops it, as an abort drops what the transport buffered.
    """

    transport: Any  # the TCP (or TLS) transport, once connected
    _held: list[bytes] | None = None

    def gather(self) -> bool:
        """
        Hold writes from now until L{release}.

        @return: whether this call started holding (C{False} when writes
            are held already, by someone who will release them).
        """
        if self._held is not None or self.disconnecting:
            return False
        self._held = []
        return True

    def release(self) -> None:
        """
        Send what was held, in one write, and stop holding.
        """
        held, self._held = self._held, None
        if held:
            sendNow(self.transport, held[0] if len(held) == 1 else b"".join(held))

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            self.transport.write(data)
        elif data:
            held.append(data)

    def writeSequence(self, data: Any) -> None:
        held = self._held
        if held is None:
            self.transport.writeSequence(data)
        else:
            held.extend(data)

    def loseConnection(self) -> None:
        self.release()
        super().loseConnection()

    def abortConnection(self) -> None:
        self._held = None
        self.transport.abortConnection()
