# -*- test-case-name: tests.test_observe_logs -*-
"""
Log ring buffers with subscribers (SPEC.md sections 3.8 and 6.1).

    - L{LogBuffer}: the last C{maxBytes} of one log, and a fan-out of every
      write to subscribers (the C{/logs/stream*} resources, the C{/api/events}
      C{logData} frames).
    - L{LogHub}: the buffers of one server: C{proxy} (llamaswap's own
      messages), C{upstream} (the output of every model process), one per
      model, and the combined one behind C{GET /logs} and
      C{GET /logs/stream}, whose content follows C{logToStdout}.
    - L{ProxyLogObserver}: an C{ILogObserver} for C{twisted.logger} that
      writes llamaswap's own events to the proxy buffer as the reference
      prints them: C{[<timestamp> ][<LEVEL>] <message>}.

Everything here runs on the reactor thread and never blocks.
"""

from __future__ import annotations

from collections import deque
from typing import IO, Callable

from twisted.logger import ILogObserver, LogLevel, Logger, formatEvent
from zope.interface import implementer

from llamaswap.observe._time import formatLayout
from llamaswap.observe.subscribers import Subscribers

#: The reference keeps 100 KiB of each log.
DEFAULT_MAX_BYTES = 100 * 1024

#: C{logToStdout} values (SPEC.md section 2.1).
LOG_TO_STDOUT = ("proxy", "upstream", "both", "none")

_LEVEL_NAMES = {
    LogLevel.debug: "DEBUG",
    LogLevel.info: "INFO",
    LogLevel.warn: "WARN",
    LogLevel.error: "ERROR",
    LogLevel.critical: "ERROR",
}

#: The namespace of the upstream process protocol, whose child-output events
#: (keys C{model}, C{stream}, C{line}) reach the logs through
#: L{LogHub.writeUpstream} instead.
UPSTREAM_OUTPUT_NAMESPACE = "llamaswap.upstream.process"

_log = Logger()


def parseLogLevel(name: str | None) -> LogLevel:
    """
    @param name: a C{logLevel} value: C{debug}, C{info}, C{warn} or
        C{error}, in any case.
    @return: the matching L{LogLevel}; C{info} for anything else (as the
        reference does).
    """
    value = (name or "").strip().lower()
    if value in ("debug", "info", "warn", "error"):
        return LogLevel.lookupByName(value)
    return LogLevel.info


def _toBytes(data: bytes | str) -> bytes:
    if type(data) is bytes:  # the usual write, taken as it is
        return data
    if isinstance(data, str):
        return data.encode("utf-8", "replace")
    return bytes(data)


class LogBuffer:
    """
    The recent output of one log, and the subscribers to its writes.

    The ring keeps at most C{maxBytes}: whole oldest writes are dropped
    first (writes are lines, so whole lines go); a single write larger than
    the ring keeps only its tail, cut after its first newline in that tail
    when there is one.

    A subscriber is called with the bytes of every write, in order, on the
    writer's stack.  It must be quick; one that raises is unsubscribed and
    the error logged, never propagated to the writer.  A write made from a
    subscriber (a subscriber that logs, say) is stored at once but
    delivered after the current write's delivery has finished, so that
    subscribers see writes in order.

    @ivar maxBytes: the ring's size.
    @ivar size: how many bytes the ring holds now.
    """

    def __init__(self, maxBytes: int = DEFAULT_MAX_BYTES) -> None:
        self.maxBytes = max(1, int(maxBytes))
        self.size = 0
        self._chunks: deque[bytes] = deque()
        self._subscribers = Subscribers()
        self._pending: deque[bytes] = deque()
        self._delivering = False

    def write(self, data: bytes | str) -> None:
        """
        Append C{data} (text is UTF-8 encoded) and hand it to every
        subscriber.  Empty writes are ignored.
        """
        chunk = _toBytes(data)
        if not chunk:
            return
        self._store(chunk)
        if not self._subscribers:
            return
        self._pending.append(chunk)
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._pending:
                pending = self._pending.popleft()
                for callback in list(self._subscribers):
                    self._deliver(callback, pending)
        finally:
            self._delivering = False

    def history(self) -> bytes:
        """
        @return: everything the ring holds, oldest first.
        """
        return b"".join(self._chunks)

    def subscribe(self, callback: Callable[[bytes], object]) -> Callable[[], None]:
        """
        Call C{callback(data)} for each later write.

        @return: a function that unsubscribes; calling it again does
            nothing.
        """
        return self._subscribers.add(callback)

    @property
    def subscriberCount(self) -> int:
        """
        How many subscribers the buffer has.
        """
        return len(self._subscribers)

    def _store(self, chunk: bytes) -> None:
        if len(chunk) >= self.maxBytes:
            tail = chunk[-self.maxBytes:]
            cut = tail.find(b"\n")
            if 0 <= cut < len(tail) - 1:
                tail = tail[cut + 1:]
            self._chunks.clear()
            self._chunks.append(tail)
            self.size = len(tail)
            return
        self._chunks.append(chunk)
        self.size += len(chunk)
        while self.size > self.maxBytes:
            self.size -= len(self._chunks.popleft())

    def _deliver(self, callback: Callable[[bytes], object], chunk: bytes) -> None:
        if callback not in self._subscribers:
            return
        try:
            callback(chunk)
        except Exception:
            # Unsubscribe first: the failure is logged, and a proxy log
            # observer may write that to this very buffer.
            self._subscribers.discard(callback)
            _log.failure("log subscriber {callback!r} failed; unsubscribed",
                         callback=callback)


def preformatted(event: dict) -> str | None:
    """
    @return: the message of an event that carries it already formatted
        (its format is C{"{line}"}, as the access log's are, and it has no
        failure), so that observers need not format it again; L{None} for
        any other event.
    """
    if event.get("log_format") == "{line}" and "log_failure" not in event:
        line = event.get("line")
        if type(line) is str:
            return line
    return None


@implementer(ILogObserver)
class ProxyLogObserver:
    """
    Writes llamaswap's own log events to a L{LogHub}'s proxy log, one line
    each: C{[<timestamp> ][<LEVEL>] <message>\\n}, LEVEL one of C{DEBUG},
    C{INFO}, C{WARN}, C{ERROR} (C{critical} shows as C{ERROR}).

    Skipped: events below the level; events with an empty message; the
    child-output events of the upstream process protocol (they carry the
    keys C{model}, C{stream} and C{line}; the wiring feeds them to
    L{LogHub.writeUpstream}).  A logged failure adds its traceback after the
    message.

    @ivar level: the lowest L{LogLevel} written.
    @ivar timeFormat: the C{logTimeFormat} layout name, or C{""} for no
        timestamp.
    """

    def __init__(self, hub: LogHub, logLevel: str = "info", timeFormat: str = "",
                 tz=None) -> None:
        """
        @param hub: where the lines go (L{LogHub.writeProxy}).
        @param logLevel: the configured C{logLevel}.
        @param timeFormat: the configured C{logTimeFormat}.
        @param tz: the zone of timestamps (a C{tzinfo}); local time when
            L{None}.
        """
        self.hub = hub
        self.tz = tz
        self.level = LogLevel.info
        self.timeFormat = ""
        self.configure(logLevel, timeFormat)

    def configure(self, logLevel: str, timeFormat: str) -> None:
        """
        Apply new C{logLevel} and C{logTimeFormat} settings (a config
        reload re-applies them).
        """
        self.level = parseLogLevel(logLevel)
        self.timeFormat = (timeFormat or "").strip().lower()

    def __call__(self, event: dict) -> None:
        if isUpstreamOutput(event):
            return
        level = event.get("log_level")
        if level is None:
            level = LogLevel.error if event.get("isError") else LogLevel.info
        if level < self.level:
            return
        try:
            line = self.formatLine(event, level)
        except Exception:
            # formatEvent already guards formatting; never raise into the
            # log publisher.
            return
        if line:
            self.hub.writeProxy(line)

    def formatLine(self, event: dict, level: LogLevel) -> str:
        """
        @return: the proxy line for C{event}, newline included, or C{""}
            when its message is empty.
        """
        message = preformatted(event)
        if message is None:
            message = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            try:
                trace = failure.getTraceback()
            except Exception:
                trace = repr(failure)
            message = (message + "\n" + trace) if message else trace
        message = message.rstrip("\n")
        if not message:
            return ""
        stamp = ""
        if self.timeFormat:
            when = event.get("log_time")
            if when is not None:
                stamp = formatLayout(self.timeFormat, when, self.tz)
        prefix = stamp + " " if stamp else ""
        return "{}[{}] {}\n".format(prefix, _LEVEL_NAMES.get(level, "INFO"), message)


def isUpstreamOutput(event: dict) -> bool:
    """
    @return: whether C{event} is a line of a model process's output, as
        logged by L{llamaswap.upstream.process.UpstreamProcessProtocol}
        (namespace L{UPSTREAM_OUTPUT_NAMESPACE}, keys C{model}, C{stream},
        C{line}).
    """
    # The keys alone decide, whatever the namespace (normally
    # UPSTREAM_OUTPUT_NAMESPACE): a child's line never becomes a proxy line.
    return "line" in event and "stream" in event and "model" in event


class LogHub:
    """
    The logs of one llamaswap server.

    @ivar proxy: llamaswap's own messages (C{/logs/stream/proxy}).
    @ivar upstream: the output of every model process, interleaved
        (C{/logs/stream/upstream}).
    @ivar combined: C{GET /logs} and C{/logs/stream}: proxy and/or upstream
        writes as C{logToStdout} says (C{proxy}, C{upstream}, C{both},
        C{none}).  The proxy and upstream logs keep their own histories
        whatever the mode.
    @ivar logToStdout: the mode.
    """

    def __init__(self, logToStdout: str = "proxy", maxBytes: int = DEFAULT_MAX_BYTES,
                 stdout: IO[bytes] | None = None) -> None:
        """
        @param logToStdout: one of L{LOG_TO_STDOUT}; anything else counts as
            C{proxy}.
        @param maxBytes: the size of every ring.
        @param stdout: if given, a binary stream that also receives every
            write of the combined log (the reference's stdout); its write
            errors are ignored.
        """
        self.maxBytes = maxBytes
        self.proxy = LogBuffer(maxBytes)
        self.upstream = LogBuffer(maxBytes)
        self.combined = LogBuffer(maxBytes)
        self.stdout = stdout
        self.logToStdout = logToStdout if logToStdout in LOG_TO_STDOUT else "proxy"
        self._models: dict[str, LogBuffer] = {}

    # -- lookups -------------------------------------------------------------

    def modelBuffer(self, modelId: str, create: bool = True) -> LogBuffer | None:
        """
        @return: the buffer of model C{modelId}, created empty if C{create}
            and it has none yet; else L{None}.
        """
        buffer = self._models.get(modelId)
        if buffer is None and create:
            buffer = self._models[modelId] = LogBuffer(self.maxBytes)
        return buffer

    def buffer(self, name: str, create: bool = False) -> LogBuffer | None:
        """
        The buffer behind C{/logs/stream/<name>}.

        @param name: C{""} (combined), C{"proxy"}, C{"upstream"} or a real
            model id (the caller resolves aliases and checks that the model
            exists; an unknown name is its 400 C{invalid logger}).
        @param create: create a model's buffer that does not exist yet.
        @return: the buffer, or L{None}.
        """
        if name == "":
            return self.combined
        if name == "proxy":
            return self.proxy
        if name == "upstream":
            return self.upstream
        return self.modelBuffer(name, create=create)

    def models(self) -> list[str]:
        """
        @return: the ids of the models that have a buffer, sorted.
        """
        return sorted(self._models)

    def forgetModel(self, modelId: str) -> None:
        """
        Drop the buffer of a model that left the configuration.
        """
        self._models.pop(modelId, None)

    # -- writes --------------------------------------------------------------

    def writeProxy(self, text: bytes | str) -> None:
        """
        Append C{text} (whole lines, newline included) to the proxy log, and
        to the combined log in modes C{proxy} and C{both}.
        """
        data = _toBytes(text)
        self.proxy.write(data)
        if self.logToStdout in ("proxy", "both"):
            self._combined(data)

    def writeUpstream(self, modelId: str, line: bytes | str) -> None:
        """
        Append one line of model C{modelId}'s output (a newline is added
        when it has none) to that model's log and the upstream log, and to
        the combined log in modes C{upstream} and C{both}.  Never filtered
        by level.
        """
        data = _toBytes(line)
        if not data.endswith(b"\n"):
            data += b"\n"
        buffer = self.modelBuffer(modelId)
        assert buffer is not None  # created when missing
        buffer.write(data)
        self.upstream.write(data)
        if self.logToStdout in ("upstream", "both"):
            self._combined(data)

    def proxyObserver(self, logLevel: str = "info", timeFormat: str = "",
                      tz=None) -> ProxyLogObserver:
        """
        @return: an C{ILogObserver} to add to C{twisted.logger}'s global
            publisher (C{globalLogPublisher.addObserver}) that writes
            llamaswap's own events to the proxy log; see
            L{ProxyLogObserver}.
        """
        return ProxyLogObserver(self, logLevel, timeFormat, tz)

    def _combined(self, data: bytes) -> None:
        self.combined.write(data)
        if self.stdout is not None:
            try:
                self.stdout.write(data)
                self.stdout.flush()
            except Exception:
                pass
