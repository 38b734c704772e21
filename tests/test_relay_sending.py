"""
Tests for L{llamaswap.proxy.sending}: writes sent at once to an idle
socket, and a client connection's writes held and sent together.
"""

from __future__ import annotations

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import SynchronousTestCase

from llamaswap.proxy.sending import GatheringWrapper, sendNow


class Socket:
    """
    A socket's C{send}, with room for C{room} bytes (C{None}: full).
    """

    def __init__(self, room: int | None) -> None:
        self.room = room
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        if self.room is None:
            raise BlockingIOError()
        n = min(self.room, len(data))
        self.sent.append(data[:n])
        return n


def tcpLike(room: int | None) -> StringTransport:
    """
    @return: a L{StringTransport} that looks to L{sendNow} like an idle TCP
        transport whose socket has C{room} bytes of room.
    """
    transport = StringTransport()
    transport.socket = Socket(room)  # type: ignore[attr-defined]
    transport._tempDataBuffer = []  # type: ignore[attr-defined]
    transport.dataBuffer = b""  # type: ignore[attr-defined]
    transport.connected = True  # type: ignore[attr-defined]
    return transport


class SendNowTests(SynchronousTestCase):
    """
    L{sendNow}: a request sent straight to an idle TCP socket, the rest
    (or everything, when anything is buffered) left to the transport.
    """

    def test_idleSocketSendsAtOnce(self) -> None:
        transport = tcpLike(100)
        sendNow(transport, b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(b"".join(transport.socket.sent), b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(transport.value(), b"")

    def test_theRestIsBuffered(self) -> None:
        transport = tcpLike(4)
        sendNow(transport, b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(b"".join(transport.socket.sent) + transport.value(), b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(transport.value(), b"/ HTTP/1.1\r\n\r\n")

    def test_fullSocketIsBuffered(self) -> None:
        transport = tcpLike(None)
        sendNow(transport, b"abc")
        self.assertEqual(transport.value(), b"abc")

    def test_bufferedDataGoesFirst(self) -> None:
        transport = tcpLike(100)
        transport._tempDataBuffer = [b"earlier"]  # type: ignore[attr-defined]
        sendNow(transport, b"abc")
        self.assertEqual(transport.socket.sent, [])
        self.assertEqual(transport.value(), b"abc")


class GatheringWrapperTests(SynchronousTestCase):
    """
    L{GatheringWrapper}: writes pass through until L{GatheringWrapper.gather};
    from then until L{GatheringWrapper.release} they are held and leave in
    one C{send(2)}.
    """

    def setUp(self) -> None:
        factory = WrappingFactory(Factory.forProtocol(Protocol))
        factory.protocol = GatheringWrapper
        self.wrapper = factory.buildProtocol(None)
        self.tcp = tcpLike(1000)
        self.wrapper.makeConnection(self.tcp)

    def test_writesPassThroughWhenNotGathering(self) -> None:
        self.wrapper.write(b"a")
        self.wrapper.writeSequence([b"b", b"c"])
        self.assertEqual(self.tcp.value(), b"abc")
        self.assertEqual(self.tcp.socket.sent, [])

    def test_heldWritesLeaveInOneSend(self) -> None:
        self.assertTrue(self.wrapper.gather())
        self.wrapper.writeSequence([b"HTTP/1.1 200 OK\r\n", b"\r\n"])
        self.wrapper.write(b"")
        self.wrapper.write(b"body")
        self.assertEqual(self.tcp.socket.sent, [])
        self.wrapper.release()
        self.assertEqual(self.tcp.socket.sent, [b"HTTP/1.1 200 OK\r\n\r\nbody"])
        self.wrapper.write(b"after")
        self.assertEqual(self.tcp.value(), b"after")

    def test_gatheringTwiceIsOneHold(self) -> None:
        """
        A second C{gather} while writes are held says so, and the first
        holder's C{release} sends everything.
        """
        self.assertTrue(self.wrapper.gather())
        self.assertFalse(self.wrapper.gather())
        self.wrapper.write(b"x")
        self.wrapper.release()
        self.assertEqual(self.tcp.socket.sent, [b"x"])

    def test_whatAFullSocketLeavesIsBufferedInOrder(self) -> None:
        self.tcp.socket.room = 3
        self.wrapper.gather()
        self.wrapper.write(b"abcdef")
        self.wrapper.release()
        self.assertEqual(self.tcp.socket.sent, [b"abc"])
        self.assertEqual(self.tcp.value(), b"def")

    def test_closingSendsWhatIsHeldFirst(self) -> None:
        self.wrapper.gather()
        self.wrapper.write(b"last words")
        self.wrapper.loseConnection()
        self.assertEqual(self.tcp.socket.sent, [b"last words"])
        self.assertTrue(self.tcp.disconnecting)
        self.assertFalse(self.wrapper.gather())

    def test_abortDropsWhatIsHeld(self) -> None:
        self.wrapper.gather()
        self.wrapper.write(b"never")
        self.wrapper.abortConnection()
        self.wrapper.release()
        self.assertEqual(self.tcp.socket.sent, [])
        self.assertEqual(self.tcp.value(), b"")

