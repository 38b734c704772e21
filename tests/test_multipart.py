"""
Tests for L{llamaswap.proxy.multipart}: finding C{model} in a form body read
in chunks, and streaming the body upstream with the model rewritten
(SPEC.md section 3.4, parity items 34 and 40).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface.verify import verifyObject

from llamaswap.demo.media import readForm
from llamaswap.errors import NoModelIdentified
from llamaswap.proxy.multipart import (
    MultipartError,
    SplicedFileProducer,
    bodyProducer,
    boundaryOf,
    inspectMultipart,
    isMultipart,
    modelRewriteProducer,
    scanParts,
)

BOUNDARY = b"----llamaswapBoundary7MA4YWxk"
CONTENT_TYPE = b"multipart/form-data; boundary=" + BOUNDARY


def encodeForm(parts, boundary: bytes = BOUNDARY, nl: bytes = b"\r\n",
               preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    """
    Encode C{parts}: C{(name, value)} for fields, C{(name, value, filename)}
    for files.
    """
    out = [preamble]
    for part in parts:
        name, value = part[0], part[1]
        out.append(b"--" + boundary + nl)
        disposition = b'Content-Disposition: form-data; name="' + name + b'"'
        if len(part) > 2:
            disposition += b'; filename="' + part[2] + b'"'
            out.append(disposition + nl + b"Content-Type: application/octet-stream" + nl)
        else:
            out.append(disposition + nl)
        out.append(nl + value + nl)
    out.append(b"--" + boundary + b"--" + nl + epilogue)
    return b"".join(out)


class RecordingFile:
    """
    A file wrapper that records the size asked of every C{read} (L{None}
    for "everything").
    """

    def __init__(self, f) -> None:
        self._f = f
        self.reads: list[int | None] = []

    def read(self, size: int | None = -1) -> bytes:
        self.reads.append(None if size is None or size < 0 else size)
        return self._f.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        self._f.close()


class Consumer:
    """
    An L{IConsumer} that collects what is written; with C{pauseEvery}, it
    pauses its producer after that many writes (like a transport whose
    buffer filled).
    """

    def __init__(self, producer, pauseEvery: int | None = None) -> None:
        self.producer = producer
        self.pauseEvery = pauseEvery
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)
        if self.pauseEvery and len(self.chunks) % self.pauseEvery == 0:
            self.producer.pauseProducing()

    def body(self) -> bytes:
        return b"".join(self.chunks)


def bigFile(size: int) -> bytes:
    block = hashlib.sha256(b"llamaswap").digest() * 64 + BOUNDARY[:-1] + b"\r\n--"
    return (block * (size // len(block) + 1))[:size]


class BoundaryTests(SynchronousTestCase):
    def test_boundary(self) -> None:
        self.assertEqual(boundaryOf(CONTENT_TYPE), BOUNDARY)
        self.assertEqual(boundaryOf('multipart/form-data; boundary="a b"'), b"a b")

    def test_noBoundary(self) -> None:
        error = self.assertRaises(MultipartError, boundaryOf, b"multipart/form-data")
        self.assertEqual(error.code, 400)
        self.assertEqual(error.message, "error parsing multipart form: "
                                        "no multipart boundary param in Content-Type")

    def test_notMultipart(self) -> None:
        self.assertRaises(MultipartError, boundaryOf, b"application/json")
        self.assertRaises(MultipartError, boundaryOf, None)

    def test_isMultipart(self) -> None:
        self.assertTrue(isMultipart(CONTENT_TYPE))
        self.assertTrue(isMultipart("Multipart/Form-Data; boundary=x"))
        self.assertFalse(isMultipart(b"application/json"))
        self.assertFalse(isMultipart(None))


class InspectTests(SynchronousTestCase):
    def inspect(self, body: bytes, chunkSize: int = 7, contentType: bytes = CONTENT_TYPE):
        return inspectMultipart(io.BytesIO(body), contentType, chunkSize=chunkSize)

    def test_model(self) -> None:
        """
        Item 34: the C{model} field names the model; its span is recorded.
        """
        body = encodeForm([(b"file", b"RIFF....WAVE", b"a.wav"), (b"model", b"whisper"),
                           (b"language", b"en")])
        form = self.inspect(body)
        self.assertEqual(form.model, "whisper")
        self.assertFalse(form.stream)
        self.assertEqual(body[form.modelStart:form.modelEnd], b"whisper")
        self.assertEqual(form.length, len(body))
        self.assertEqual(form.boundary, BOUNDARY)
        self.assertEqual([(p.name, p.filename) for p in form.parts],
                         [("file", "a.wav"), ("model", None), ("language", None)])
        file = form.parts[0]
        self.assertEqual(body[file.start:file.end], b"RIFF....WAVE")

    def test_stream(self) -> None:
        self.assertTrue(self.inspect(encodeForm([(b"model", b"m"), (b"stream", b"true")])).stream)
        self.assertFalse(self.inspect(encodeForm([(b"model", b"m"), (b"stream", b"True")])).stream)

    def test_firstValueWins(self) -> None:
        form = self.inspect(encodeForm([(b"model", b"first"), (b"model", b"second")]))
        self.assertEqual(form.model, "first")

    def test_fileNamedModelIsNotTheModel(self) -> None:
        """
        A part with a file name is a file, even when named C{model}.
        """
        body = encodeForm([(b"model", b"file-bytes", b"m.bin"), (b"model", b"real")])
        self.assertEqual(self.inspect(body).model, "real")

    def test_missingModel(self) -> None:
        self.assertRaises(NoModelIdentified, self.inspect, encodeForm([(b"language", b"en")]))
        self.assertRaises(NoModelIdentified, self.inspect, encodeForm([(b"model", b"")]))
        self.assertRaises(NoModelIdentified, self.inspect, b"--" + BOUNDARY + b"--\r\n")
        self.assertRaises(NoModelIdentified, self.inspect, b"--" + BOUNDARY + b"--")

    def test_lfOnly(self) -> None:
        """
        Like Go's reader: LF line endings when the first boundary line
        uses them.
        """
        body = encodeForm([(b"model", b"m1"), (b"f", b"x\ny", b"f.txt")], nl=b"\n")
        form = self.inspect(body, chunkSize=3)
        self.assertEqual(form.model, "m1")
        self.assertEqual(body[form.modelStart:form.modelEnd], b"m1")

    def test_preambleAndEpilogue(self) -> None:
        body = encodeForm([(b"model", b"m")], preamble=b"ignore me\r\n--not" + b"\r\n",
                          epilogue=b"trailing junk")
        self.assertEqual(self.inspect(body).model, "m")

    def test_noFinalNewline(self) -> None:
        body = encodeForm([(b"model", b"m")])[:-2]
        self.assertEqual(self.inspect(body).model, "m")

    def test_transportPadding(self) -> None:
        body = encodeForm([(b"model", b"m")]).replace(BOUNDARY + b"\r\n", BOUNDARY + b" \t\r\n")
        self.assertEqual(self.inspect(body, chunkSize=1).model, "m")

    def test_boundaryPrefixInContent(self) -> None:
        """
        C{--boundary} followed by something other than C{--}, white space or
        a newline is content.
        """
        value = b"a\r\n--" + BOUNDARY + b"x\r\n--" + BOUNDARY + b"-y"
        body = encodeForm([(b"file", value, b"f"), (b"model", b"m")])
        for size in (1, 5, 64):
            form = self.inspect(body, chunkSize=size)
            self.assertEqual(body[form.parts[0].start:form.parts[0].end], value)
            self.assertEqual(form.model, "m")

    def test_namelessPartsSkipped(self) -> None:
        body = (b"--" + BOUNDARY + b"\r\nContent-Type: text/plain\r\n\r\nx\r\n"
                + b"--" + BOUNDARY + b"\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\ny\r\n"
                + encodeForm([(b"model", b"m")]))
        form = self.inspect(body)
        self.assertEqual([p.name for p in form.parts], ["model"])

    def test_emptyHeaders(self) -> None:
        body = b"--" + BOUNDARY + b"\r\n\r\nno headers\r\n" + encodeForm([(b"model", b"m")])
        self.assertEqual(self.inspect(body).model, "m")

    def test_foldedHeader(self) -> None:
        body = (b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data;\r\n name=\"model\"\r\n\r\n"
                b"m\r\n--" + BOUNDARY + b"--\r\n")
        self.assertEqual(self.inspect(body).model, "m")

    def test_errors(self) -> None:
        good = encodeForm([(b"model", b"m"), (b"file", b"abc", b"f")])
        cases = {
            b"": "multipart: NextPart: EOF",
            b"no boundary here": "multipart: NextPart: EOF",
            good[:-9]: "unexpected EOF",
            good[:50]: "unexpected EOF",
            b"--" + BOUNDARY + b"\r\nbad header\r\n\r\nx\r\n--" + BOUNDARY + b"--":
                "malformed MIME header line: bad header",
            b"--" + BOUNDARY + b"\r\n\r\nx\r\n--" + BOUNDARY + b" junk\r\n":
                "multipart: expecting a new Part",
            b"--" + BOUNDARY + b"\r\n\r\nx\r\n--" + BOUNDARY + b"--junk":
                "multipart: expecting a new Part",
        }
        for body, message in cases.items():
            for size in (1, 4096):
                error = self.assertRaises(MultipartError, self.inspect, body, size)
                self.assertEqual(error.code, 400)
                self.assertTrue(error.message.startswith(
                    "error parsing multipart form: " + message), (body, error.message))

    def test_hugeHeaders(self) -> None:
        body = b"--" + BOUNDARY + b"\r\nX: " + b"a" * 70000 + b"\r\n\r\nx\r\n"
        error = self.assertRaises(MultipartError, self.inspect, body, 4096)
        self.assertIn("too large", error.message)

    def test_hugeModel(self) -> None:
        error = self.assertRaises(MultipartError, self.inspect,
                                  encodeForm([(b"model", b"m" * 70000)]), 4096)
        self.assertIn("too large", error.message)

    def test_scanParts(self) -> None:
        body = encodeForm([(b"a", b"1"), (b"b", b"22", b"f")])
        parts = scanParts(io.BytesIO(body), BOUNDARY, capture=lambda p: True, chunkSize=2)
        self.assertEqual([(p.name, p.value) for p in parts], [("a", b"1"), ("b", b"22")])
        self.assertRaises(ValueError, scanParts, io.BytesIO(body), BOUNDARY, chunkSize=0)

    @settings(max_examples=150, deadline=None)
    @given(
        fields=st.lists(st.tuples(st.sampled_from([b"a", b"model", b"stream", b"f"]),
                                  st.binary(max_size=40), st.booleans()), max_size=5),
        model=st.binary(min_size=1, max_size=12).filter(lambda b: b"\r\n" not in b),
        chunkSize=st.integers(1, 50),
        nl=st.sampled_from([b"\r\n", b"\n"]),
    )
    def test_chunkSizeIrrelevant(self, fields, model, chunkSize, nl) -> None:
        """
        Whatever the chunk size, the parts found are those of a one-chunk
        read, and their content spans are exact.
        """
        parts = [(n, v, b"x.bin") if isFile else (n, v) for n, v, isFile in fields]
        parts.append((b"model", model))
        body = encodeForm(parts, nl=nl)
        if nl == b"\n" and any(b"\n--" + BOUNDARY in v for _, v, _ in fields):
            return
        whole = scanParts(io.BytesIO(body), BOUNDARY, chunkSize=len(body) + 1)
        pieces = scanParts(io.BytesIO(body), BOUNDARY, chunkSize=chunkSize)
        self.assertEqual(whole, pieces)
        self.assertEqual([body[p.start:p.end] for p in pieces], [p[1] for p in parts])


class ProducerTests(SynchronousTestCase):
    def test_interfaces(self) -> None:
        producer = SplicedFileProducer(io.BytesIO(b"abc"), 3)
        self.assertTrue(verifyObject(IBodyProducer, producer))
        self.assertTrue(verifyObject(IPushProducer, producer))

    def test_splices(self) -> None:
        content = io.BytesIO(b"0123456789")
        producer = SplicedFileProducer(content, 10, [(7, 9, b"XYZ"), (2, 3, b"")], chunkSize=2)
        self.assertEqual(producer.length, 10 - 1 - 2 + 3)
        consumer = Consumer(producer)
        d = producer.startProducing(consumer)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(consumer.body(), b"01" + b"3456" + b"XYZ" + b"9")
        self.assertTrue(all(len(c) <= 3 for c in consumer.chunks))

    def test_badReplacements(self) -> None:
        content = io.BytesIO(b"0123456789")
        for replacements in ([(5, 3, b"")], [(0, 11, b"")], [(0, 5, b""), (4, 6, b"")]):
            self.assertRaises(ValueError, SplicedFileProducer, content, 10, replacements)

    def test_pauseResume(self) -> None:
        """
        Paused, it writes nothing; resumed, it goes on where it stopped.
        """
        content = io.BytesIO(bytes(range(100)))
        producer = SplicedFileProducer(content, 100, chunkSize=10)
        consumer = Consumer(producer, pauseEvery=3)
        d = producer.startProducing(consumer)
        self.assertEqual(len(consumer.chunks), 3)
        self.assertNoResult(d)
        content.seek(0)  # someone else reading the file does not matter
        producer.resumeProducing()
        self.assertEqual(len(consumer.chunks), 6)
        producer.resumeProducing()
        producer.resumeProducing()
        producer.resumeProducing()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(consumer.body(), bytes(range(100)))

    def test_pausedBeforeStart(self) -> None:
        producer = SplicedFileProducer(io.BytesIO(b"abc"), 3)
        producer.pauseProducing()
        consumer = Consumer(producer)
        d = producer.startProducing(consumer)
        self.assertEqual(consumer.chunks, [])
        producer.resumeProducing()
        self.successResultOf(d)
        self.assertEqual(consumer.body(), b"abc")

    def test_resumeWhileWriting(self) -> None:
        """
        A consumer that pauses and resumes within C{write} gets every
        chunk once, in order.
        """
        producer = SplicedFileProducer(io.BytesIO(b"abcdef"), 6, chunkSize=1)
        written = []

        class Bouncy:
            def write(self, data: bytes) -> None:
                written.append(data)
                producer.pauseProducing()
                producer.resumeProducing()

        self.successResultOf(producer.startProducing(Bouncy()))
        self.assertEqual(b"".join(written), b"abcdef")

    def test_stop(self) -> None:
        """
        After C{stopProducing} nothing more is written and the L{Deferred}
        never fires.
        """
        producer = SplicedFileProducer(io.BytesIO(b"x" * 100), 100, chunkSize=10)
        consumer = Consumer(producer, pauseEvery=2)
        d = producer.startProducing(consumer)
        producer.stopProducing()
        producer.resumeProducing()
        self.assertEqual(len(consumer.chunks), 2)
        self.assertNoResult(d)

    def test_clockTurns(self) -> None:
        """
        With a clock, a consumer that never pauses gets C{chunksPerTurn}
        chunks per reactor turn.
        """
        clock = Clock()
        producer = SplicedFileProducer(io.BytesIO(b"x" * 100), 100, clock=clock,
                                       chunkSize=10, chunksPerTurn=4)
        consumer = Consumer(producer)
        d = producer.startProducing(consumer)
        self.assertEqual(len(consumer.chunks), 4)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        # One reactor turn: only the call pending now.
        call = clock.calls.pop(0)
        call.func(*call.args, **call.kw)
        self.assertEqual(len(consumer.chunks), 8)
        self.assertNoResult(d)
        clock.advance(0)
        self.successResultOf(d)
        self.assertEqual(consumer.body(), b"x" * 100)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_clockTurnCancelledByStopAndPause(self) -> None:
        clock = Clock()
        producer = SplicedFileProducer(io.BytesIO(b"x" * 100), 100, clock=clock,
                                       chunkSize=10, chunksPerTurn=1)
        producer.startProducing(Consumer(producer))
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        producer.pauseProducing()
        self.assertEqual(clock.getDelayedCalls(), [])
        producer.resumeProducing()
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        producer.stopProducing()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_readError(self) -> None:
        """
        A closed body file (the client went away) fails the L{Deferred}.
        """
        content = io.BytesIO(b"x" * 100)
        producer = SplicedFileProducer(content, 100, chunkSize=10)
        consumer = Consumer(producer, pauseEvery=1)
        d = producer.startProducing(consumer)
        content.close()
        producer.resumeProducing()
        self.failureResultOf(d, ValueError)

    def test_shortFile(self) -> None:
        producer = SplicedFileProducer(io.BytesIO(b"abc"), 10)
        self.failureResultOf(producer.startProducing(Consumer(producer)), OSError)


class RewriteTests(SynchronousTestCase):
    """
    Item 40 for forms: the C{model} value is rewritten, every other byte of
    a large body is forwarded as it was, and the file is never read whole.
    """

    def setUp(self) -> None:
        self.payload = bigFile(5 * 1024 * 1024)
        self.body = encodeForm([
            (b"file", self.payload, b"speech.wav"),
            (b"model", b"whisper-alias"),
            (b"response_format", b"json"),
        ])
        raw = tempfile.TemporaryFile()
        self.addCleanup(raw.close)
        raw.write(self.body)
        raw.seek(0)
        self.content = RecordingFile(raw)

    def assertBoundedReads(self, limit: int) -> None:
        self.assertNotIn(None, self.content.reads)
        self.assertTrue(self.content.reads)
        self.assertLessEqual(max(self.content.reads), limit)

    def test_rewrite(self) -> None:
        form = inspectMultipart(self.content, CONTENT_TYPE)
        self.assertEqual(form.model, "whisper-alias")
        self.assertBoundedReads(64 * 1024)
        self.content.reads.clear()

        producer = modelRewriteProducer(self.content, form, "whisper-1")
        expected = self.body.replace(b"\r\n\r\nwhisper-alias\r\n", b"\r\n\r\nwhisper-1\r\n", 1)
        self.assertEqual(producer.length, len(expected))
        consumer = Consumer(producer, pauseEvery=1)
        d = producer.startProducing(consumer)
        while not d.called:
            producer.resumeProducing()
        self.successResultOf(d)
        out = consumer.body()
        self.assertEqual(len(out), producer.length)
        self.assertEqual(out, expected)
        self.assertBoundedReads(64 * 1024)
        self.assertLessEqual(max(len(c) for c in consumer.chunks), 64 * 1024)

        # An independent parser sees the same file and the new model.
        decoded = readForm(io.BytesIO(out), CONTENT_TYPE)
        self.assertEqual(decoded.first("model"), "whisper-1")
        self.assertEqual(decoded.first("response_format"), "json")
        upload = decoded.file("file")
        self.assertEqual(upload.size, len(self.payload))
        self.assertEqual(upload.sha256, hashlib.sha256(self.payload).hexdigest())
        self.assertEqual(upload.filename, "speech.wav")

    def test_unchanged(self) -> None:
        """
        Without C{useModelName} (or with the same name) the body streams
        as it was, still in chunks.
        """
        form = inspectMultipart(self.content, CONTENT_TYPE, chunkSize=8192)
        self.assertBoundedReads(8192)
        for model in ("", "whisper-alias"):
            self.content.reads.clear()
            producer = bodyProducer(self.content, form, model)
            self.assertEqual(producer.length, len(self.body))
            consumer = Consumer(producer)
            self.successResultOf(producer.startProducing(consumer))
            self.assertEqual(consumer.body(), self.body)
            self.assertBoundedReads(64 * 1024)

    def test_bodyProducerRewrites(self) -> None:
        form = inspectMultipart(self.content, CONTENT_TYPE)
        producer = bodyProducer(self.content, form, "x")
        self.assertEqual(producer.length, len(self.body) - len(b"whisper-alias") + 1)

    def test_nonAsciiModel(self) -> None:
        body = encodeForm([(b"model", b"m")])
        form = inspectMultipart(io.BytesIO(body), CONTENT_TYPE)
        producer = modelRewriteProducer(io.BytesIO(body), form, "llamá")
        consumer = Consumer(producer)
        self.successResultOf(producer.startProducing(consumer))
        self.assertEqual(consumer.body(), body.replace(b"\r\n\r\nm\r\n", "\r\n\r\nllamá\r\n"
                                                       .encode("utf-8")))
        self.assertEqual(producer.length, len(consumer.body()))


class OnDiskTests(SynchronousTestCase):
    def test_namedFile(self) -> None:
        """
        Works on a real file on disk, as twisted.web spools large bodies.
        """
        body = encodeForm([(b"model", b"m"), (b"f", os.urandom(200_000), b"r.bin")])
        fd, path = tempfile.mkstemp()
        self.addCleanup(os.unlink, path)
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        with open(path, "rb") as content:
            form = inspectMultipart(content, CONTENT_TYPE)
            producer = modelRewriteProducer(content, form, "mm")
            consumer = Consumer(producer)
            self.successResultOf(producer.startProducing(consumer))
        self.assertEqual(consumer.body(), body.replace(b"\r\n\r\nm\r\n", b"\r\n\r\nmm\r\n", 1))


class AgentTests(SynchronousTestCase):
    def test_agentSendsSplicedBody(self) -> None:
        """
        L{twisted.web.client.Agent} sends the producer's C{length} as
        C{Content-Length}, registers it as the connection's streaming
        producer, and sends the spliced body.
        """
        body = encodeForm([(b"model", b"alias"), (b"f", b"\x00\x01" * 1000, b"f.bin")])
        form = inspectMultipart(io.BytesIO(body), CONTENT_TYPE)
        producer = modelRewriteProducer(io.BytesIO(body), form, "real-name")
        reactor = MemoryReactorClock()
        agent = Agent(reactor)
        d = agent.request(b"POST", b"http://127.0.0.1:8080/v1/audio/transcriptions",
                      Headers({b"content-type": [CONTENT_TYPE]}), producer)
        factory = reactor.tcpClients[0][2]
        protocol = factory.buildProtocol(None)
        registered = []

        class RecordingTransport(StringTransport):
            def registerProducer(self, producer, streaming):
                registered.append((producer, streaming))
                super().registerProducer(producer, streaming)

        transport = RecordingTransport()
        protocol.makeConnection(transport)
        self.assertEqual(registered, [(producer, True)])
        head, _, sent = transport.value().partition(b"\r\n\r\n")
        expected = body.replace(b"\r\n\r\nalias\r\n", b"\r\n\r\nreal-name\r\n", 1)
        self.assertIn(b"Content-Length: %d" % (len(expected),), head.split(b"\r\n"))
        self.assertEqual(sent, expected)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, ResponseNeverReceived)
