# -*- test-case-name: tests.test_observe_events -*-
"""
The events bus behind the UI's C{GET /api/events} (SPEC.md section 3.9).

Every message is one SSE frame, exactly as the reference writes it::

    event:message
    data:{"type":"<T>","data":"<the payload, JSON-encoded, as a string>"}

followed by a blank line.  Types: C{modelStatus}, C{logData}, C{metrics},
C{inflight}, and (beyond the reference) C{performance}: each new sample of
the performance monitor, as C{{"sys_stats": [...], "gpu_stats": [...]}}
(the shape of C{GET /api/performance}).  There is no C{id:}, no C{retry:} and no heartbeat.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from llamaswap.interfaces import IEventSink
from llamaswap.observe.streaming import StreamClient
from llamaswap.observe.subscribers import Subscribers

#: Messages a client may have waiting before more are dropped (SPEC.md 3.9).
CLIENT_BUFFER = 1024


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def sseFrame(type: str, data: Any) -> bytes:
    """
    @param type: the message type.
    @param data: a JSON-able payload.
    @return: the SSE frame of one message: C{data} is JSON-encoded, and
        that text is the C{data} string of the outer object (the payload is
        encoded twice, as the reference does).
    """
    body = _compact({"type": type, "data": _compact(data)})
    return b"event:message\ndata:" + body.encode("utf-8") + b"\n\n"


@implementer(IEventSink)
class EventBus:
    """
    Publishes UI events to subscribers as ready-made SSE frames: each
    message is encoded once, whatever the number of clients.

    Also an L{IEventSink}: C{emit(kind, data=...)} publishes C{data};
    C{emit(kind, **fields)} with other keywords publishes the C{fields}
    dict.

    @ivar published: how many messages were published.
    @ivar dropped: how many frames were dropped for slow clients, over all
        clients.
    """

    log = Logger()

    def __init__(self) -> None:
        self._subscribers = Subscribers()
        self.published = 0
        self.dropped = 0

    @property
    def listening(self) -> bool:
        """
        Whether anyone subscribes (else a message need not even be made).
        """
        return bool(self._subscribers)

    def publish(self, type: str, data: Any) -> None:
        """
        Send one message to every subscriber.  Never raises: an encoding
        error or a failing subscriber is logged (the subscriber is removed).
        With no subscriber (no UI open), nothing is encoded.
        """
        if not self._subscribers:
            return
        try:
            frame = sseFrame(type, data)
        except Exception:
            self.log.failure("could not encode a {type} event", type=type)
            return
        self.published += 1
        for callback in list(self._subscribers):
            try:
                callback(frame)
            except Exception:
                self._subscribers.discard(callback)
                self.log.failure("event subscriber failed; unsubscribed")

    def emit(self, kind: str, **fields: Any) -> None:
        """
        L{IEventSink}: publish C{fields["data"]} when that is the only
        keyword, else the C{fields} dict, as a message of type C{kind}.
        """
        if set(fields) == {"data"}:
            self.publish(kind, fields["data"])
        else:
            self.publish(kind, fields)

    def subscribe(self, callback: Callable[[bytes], object]) -> Callable[[], None]:
        """
        Call C{callback(frame)} with the SSE frame of every later message.

        @return: a function that unsubscribes; calling it again does
            nothing.
        """
        return self._subscribers.add(callback)

    @property
    def subscriberCount(self) -> int:
        """
        How many subscribers the bus has.
        """
        return len(self._subscribers)



class _EventClient(StreamClient):
    """
    One C{/api/events} client: writes frames at once while its transport
    accepts them, queues up to C{limit} frames while it is paused, and
    drops (and counts) what does not fit.
    """

    headers = (
        (b"content-type", b"text/event-stream"),
        (b"cache-control", b"no-cache"),
        (b"connection", b"keep-alive"),
        (b"x-content-type-options", b"nosniff"),
        (b"x-accel-buffering", b"no"),
    )

    def __init__(self, owner: EventsResource, request, limit: int) -> None:
        super().__init__(request, owner._clients.discard)
        self.owner = owner
        self.limit = limit
        self.dropped = 0

    def start(self, initial: Iterable[tuple[str, Any]]) -> None:
        burst = []
        for type, data in initial:
            try:
                burst.append(sseFrame(type, data))
            except Exception:
                self.log.failure("could not encode the initial {type} event", type=type)
        self.begin(b"".join(burst), self.owner.bus.subscribe)

    def send(self, frame: bytes) -> None:
        self.deliver(frame)

    def enqueue(self, frame: bytes) -> None:
        if len(self.queue) < self.limit:
            self.queue.append(frame)
            return
        self.dropped += 1
        self.owner.bus.dropped += 1


class EventsResource(Resource):
    """
    C{GET /api/events}: an SSE stream (C{text/event-stream},
    C{Cache-Control: no-cache}, C{Connection: keep-alive},
    C{X-Content-Type-Options: nosniff}, C{X-Accel-Buffering: no}) that
    starts with the messages C{initial()} returns, written in one go, then
    carries every message published on the bus.

    Each client is a push producer registered with its request: while its
    transport is paused, up to C{limit} frames wait for it (SPEC.md: 1024);
    more are dropped and counted (L{EventBus.dropped}).  The subscription
    is released when the client disconnects and by L{close}.
    """

    isLeaf = True

    def __init__(self, bus: EventBus, initial: Callable[[], Iterable[tuple[str, Any]]],
                 limit: int = CLIENT_BUFFER) -> None:
        """
        @param bus: the bus to follow.
        @param initial: called for each new client; returns the
            C{(type, data)} messages of its first burst, in order (SPEC.md:
            logData proxy history, logData upstream history, modelStatus,
            metrics, inflight; see L{initialBurst}).
        @param limit: frames queued per paused client.
        """
        super().__init__()
        self.bus = bus
        self.initial = initial
        self.limit = limit
        self._clients: set[_EventClient] = set()

    def render_GET(self, request) -> object:
        client = _EventClient(self, request, self.limit)
        self._clients.add(client)
        try:
            initial = list(self.initial())
        except Exception:
            client.log.failure("could not build the initial events")
            initial = []
        client.start(initial)
        return NOT_DONE_YET

    @property
    def clients(self) -> int:
        """
        How many clients are connected now.
        """
        return len(self._clients)

    def close(self) -> None:
        """
        End every open stream (server shutdown).
        """
        for client in list(self._clients):
            client.close()


# -- wiring helpers ------------------------------------------------------------


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def publishLogs(bus: EventBus, proxy, upstream) -> Callable[[], None]:
    """
    Publish a C{logData} message (C{{"source": "proxy"|"upstream",
    "data": <text>}}) for every write of the C{proxy} and C{upstream}
    L{llamaswap.observe.logs.LogBuffer}s.

    @return: a function that stops publishing.
    """
    def publisher(source: str) -> Callable[[bytes], None]:
        def written(data: bytes) -> None:
            if bus.listening:  # no UI open: nothing to decode
                bus.publish("logData", {"source": source, "data": _text(data)})
        return written

    stops = [proxy.subscribe(publisher("proxy")), upstream.subscribe(publisher("upstream"))]

    def stop() -> None:
        for unsubscribe in stops:
            unsubscribe()

    return stop


def publishActivity(bus: EventBus, activity) -> Callable[[], None]:
    """
    Publish a C{metrics} message (a one-element array) for every record
    added to C{activity} (an L{llamaswap.observe.tokens.ActivityLog}).

    @return: a function that stops publishing.
    """
    def added(record) -> None:
        if bus._subscribers:  # no UI open: nothing to build
            bus.publish("metrics", [activity.asJSON(record)])

    return activity.subscribe(added)


def performanceMessage(sample) -> dict[str, list[dict[str, Any]]]:
    """
    @param sample: a L{llamaswap.observe.performance.PerformanceSample}.
    @return: the payload of its C{performance} message: the records
        C{GET /api/performance} would list for it.
    """
    return {
        "sys_stats": [] if sample.sysStat is None else [sample.sysStat],
        "gpu_stats": list(sample.gpuStats),
    }


def publishPerformance(bus: EventBus, monitor) -> Callable[[], None]:
    """
    Publish a C{performance} message (L{performanceMessage}) for every
    sample C{monitor} (an
    L{llamaswap.observe.performance.PerformanceMonitor}) stores, while
    some client follows the bus; with none, nothing is built.

    @return: a function that stops publishing.
    """
    def sampled(sample) -> None:
        if bus.subscriberCount:
            bus.publish("performance", performanceMessage(sample))

    return monitor.subscribe(sampled)


def initialBurst(logs, modelStatus: Callable[[], Any], activity,
                 inflight: Callable[[], int]) -> Callable[[], list[tuple[str, Any]]]:
    """
    Build the C{initial} callable of L{EventsResource} in the reference's
    order: logData (proxy history), logData (upstream history),
    modelStatus, metrics (every stored activity entry), inflight.

    @param logs: the L{llamaswap.observe.logs.LogHub}.
    @param modelStatus: returns the C{modelStatus} list.
    @param activity: the L{llamaswap.observe.tokens.ActivityLog}.
    @param inflight: returns the number of requests in flight.
    """

    def initial() -> list[tuple[str, Any]]:
        return [
            ("logData", {"source": "proxy", "data": _text(logs.proxy.history())}),
            ("logData", {"source": "upstream", "data": _text(logs.upstream.history())}),
            ("modelStatus", modelStatus()),
            ("metrics", activity.listJSON()),
            ("inflight", {"total": inflight()}),
        ]

    return initial
