# -*- test-case-name: tests.test_loading -*-
"""
The loading-state stream (SPEC.md section 4.6).

While a streamed chat request waits for its model, the client gets a 200
C{text/event-stream} at once and a running commentary typed into
C{reasoning_content} deltas, so chat UIs show progress instead of a spinner.
When the model is ready the upstream's own events follow on the same stream.
"""

from __future__ import annotations

import json
import random
from collections import deque
from typing import Callable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

RULE = "\u2501" * 5
TYPE_CHUNK = 5  # characters per frame
TYPE_INTERVAL = TYPE_CHUNK / 75.0  # about 75 characters a second
TICK = 0.75  # seconds between progress marks
DONE_ALLOWANCE = 1.0  # at most this long to finish typing once ready

REMARKS = (
    "Warming up the tensors",
    "Convincing the GPU this is a good idea",
    "Counting parameters, one by one",
    "Unpacking the weights carefully",
    "Asking the attention heads to pay attention",
    "Reticulating embeddings",
    "Shuffling layers into the right order",
    "Politely asking the previous model to leave",
    "Filling the KV cache with good intentions",
    "Almost there, probably",
)


def frame(text: str) -> bytes:
    """
    @return: one SSE event carrying C{text} as a reasoning delta.
    """
    payload = {"choices": [{"delta": {"reasoning_content": text}}]}
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode("utf-8") + b"\n\n"


class LoadingStream:
    """
    Writes loading progress to a streamed chat request until the model is
    ready.

    @param request: the client's request; nothing must have been written yet.
    @param clock: schedules typing and progress marks.
    @param modelId: the model being loaded.
    @param rng: chooses remarks and their timing.
    @param progress: returns the model's load progress (its C{fraction}
        is shown as C{"loading qwen: 43 %"} each time it moves a percent),
        or L{None}.
    """

    def __init__(self, request, clock: IReactorTime, modelId: str,
                 rng: random.Random | None = None,
                 progress: Optional[Callable[[], Optional[dict]]] = None) -> None:
        self.request = request
        self.clock = clock
        self.modelId = modelId
        self.rng = rng or random.Random()
        self.started = 0.0
        self.gone = False
        self.finished = False
        self._typing: deque[str] = deque()
        self._typer: IDelayedCall | None = None
        self._ticker: IDelayedCall | None = None
        self._queuePosition: int | None = None
        self._queueChanged = False
        self._nextRemark = 0.0
        self._drained: Deferred[None] | None = None
        self._progress = progress
        self._percent: int | None = None

    def start(self) -> None:
        """
        Send the headers and the opening lines.
        """
        self.started = self.clock.seconds()
        self._nextRemark = self.started + self.rng.uniform(2, 5)
        self.request.notifyFinish().addErrback(self._clientGone)
        request = self.request
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"connection", b"keep-alive")
        request.setHeader(b"x-accel-buffering", b"no")
        request.write(b"")  # flush the headers now
        self._type(RULE, "\n", f"llama-swap loading model: {self.modelId}", "\n")
        self._ticker = self.clock.callLater(TICK, self._tick)

    def queuePosition(self, position: int) -> None:
        """
        The request's position in the queue changed (1-based).
        """
        if position != self._queuePosition:
            self._queuePosition = position
            self._queueChanged = True

    def done(self) -> Deferred[None]:
        """
        The wait is over (ready or failed): type the closing lines.

        @return: a L{Deferred} that fires once they are written (or after
            about a second, or at once if the client is gone); the caller
            then appends the upstream's answer or the error body.
        """
        if self._ticker is not None and self._ticker.active():
            self._ticker.cancel()
        self._ticker = None
        if self.gone:
            return succeed(None)
        elapsed = self.clock.seconds() - self.started
        self._type("\n", f"Done! ({elapsed:.2f}s)", "\n", RULE, "\n", " ", "\n")
        drained = self._drained = Deferred()
        deadline = self.clock.callLater(DONE_ALLOWANCE, self._flushAll)

        def cancelDeadline(result: None) -> None:
            if deadline.active():
                deadline.cancel()
            return result

        drained.addBoth(cancelDeadline)
        if not self._typing:
            self._finishDrain()
        return drained

    # -- internals ---------------------------------------------------------

    def _clientGone(self, _: object) -> None:
        self.gone = True
        self._stopTimers()
        self._finishDrain()

    def _stopTimers(self) -> None:
        for call in (self._ticker, self._typer):
            if call is not None and call.active():
                call.cancel()
        self._ticker = self._typer = None

    def _tick(self) -> None:
        self._ticker = None
        now = self.clock.seconds()
        percent = self._loadPercent()
        if self._queueChanged:
            self._queueChanged = False
            self._type("\n", f"Queue position: #{self._queuePosition}", " ")
        elif percent is not None and percent != self._percent:
            self._percent = percent
            self._type("\n", f"loading {self.modelId}: {percent} %", " ")
        elif now >= self._nextRemark:
            self._nextRemark = now + self.rng.uniform(5, 9)
            self._type("\n", self.rng.choice(REMARKS), " ")
        else:
            self._type(".")
        self._ticker = self.clock.callLater(TICK, self._tick)

    def _loadPercent(self) -> int | None:
        if self._progress is None:
            return None
        try:
            progress = self._progress()
        except Exception:
            return None
        fraction = progress.get("fraction") if progress else None
        return None if fraction is None else int(fraction * 100)

    def _type(self, *pieces: str) -> None:
        for piece in pieces:
            for i in range(0, len(piece), TYPE_CHUNK):
                self._typing.append(piece[i:i + TYPE_CHUNK])
        if self._typer is None:
            self._typeNext()

    def _typeNext(self) -> None:
        self._typer = None
        if self.gone:
            return
        if not self._typing:
            self._finishDrain()
            return
        self.request.write(frame(self._typing.popleft()))
        self._typer = self.clock.callLater(TYPE_INTERVAL, self._typeNext)

    def _flushAll(self) -> None:
        if self._typer is not None and self._typer.active():
            self._typer.cancel()
        self._typer = None
        if not self.gone and self._typing:
            self.request.write(frame("".join(self._typing)))
        self._typing.clear()
        self._finishDrain()

    def _finishDrain(self) -> None:
        if self._drained is not None and not self._typing:
            drained, self._drained = self._drained, None
            if self._typer is not None and self._typer.active():
                self._typer.cancel()
            self._typer = None
            drained.callback(None)
