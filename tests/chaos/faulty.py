"""
A fake OpenAI-compatible upstream that misbehaves on request, for the chaos
tests and the soak: C{python -m tests.chaos.faulty --port N [options]}.

Answers C{/health} and C{/v1/chat/completions} (a JSON answer, or an SSE
stream when the body asks for one); C{/debug/open} answers the number of
other connections open to it.  The faults:

 - C{--chat garbage}: a chat gets bytes that are not HTTP, then a close;
 - C{--chat hang-headers}: a chat gets C{200} and SSE headers, then nothing;
 - C{--chat hang}: a chat gets nothing at all;
 - C{--chat deep}: a chat gets JSON (or an SSE event) with a C{usage}
   nested 10 000 arrays deep;
 - C{--flap N}: the first C{N} health probes alternate C{503} and C{200};
 - C{--ignore-term}: SIGTERM is ignored;
 - C{--fork N}: C{N} children that ignore SIGTERM sleep in its process group;
 - C{--setsid-helper}: a helper in a new session (outside the group) sleeps.

Every helper process it starts carries its C{--marker} on its command line
and exits by itself after C{--lifetime} seconds, so a test that fails cannot
leave processes behind for long.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from twisted.python import usage

GARBAGE = b"\x00\xffSSH-2.0-not-http\r\n\x13\x37" * 8


class Options(usage.Options):
    optParameters = [
        ["port", None, None, "TCP port to listen on.", int],
        ["marker", None, "", "Carried on the command line, for orphan checks."],
        ["chat", None, "ok", "ok, garbage, hang-headers, hang or deep."],
        ["tokens", None, 8, "Tokens per chat answer.", int],
        ["token-delay", None, 0.0, "Seconds between streamed tokens.", float],
        ["flap", None, 0, "Health probes that alternate 503 and 200 first.", int],
        ["fork", None, 0, "Children that ignore SIGTERM, in the same group.", int],
        ["lifetime", None, 120.0, "Seconds after which helpers exit by themselves.", float],
    ]
    optFlags = [
        ["ignore-term", None, "Ignore SIGTERM."],
        ["setsid-helper", None, "Start a helper in a new session."],
    ]


def _sleeper(marker: str, lifetime: float, setsid: bool) -> list[str]:
    code = (
        "import os, signal, time\n"
        f"{'os.setsid()' if setsid else 'pass'}\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"time.sleep({lifetime!r})\n"
    )
    return [sys.executable, "-c", code, "faulty-helper", marker]


def startHelpers(options: Options) -> list[subprocess.Popen]:
    """
    Start the C{--fork} children and the C{--setsid-helper}.

    @return: their L{subprocess.Popen} objects.
    """
    helpers = []
    for _ in range(options["fork"]):
        helpers.append(subprocess.Popen(
            _sleeper(options["marker"], options["lifetime"], False), stdin=subprocess.DEVNULL))
    if options["setsid-helper"]:
        helpers.append(subprocess.Popen(
            _sleeper(options["marker"], options["lifetime"], True), stdin=subprocess.DEVNULL))
    return helpers


def makeSite(options: Options, reactor: Any) -> Any:
    """
    @return: the L{Site} that answers (or misbehaves).
    """
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Site

    probes = {"count": 0}
    pid = str(os.getpid()).encode()

    class Root(Resource):
        isLeaf = True

        def render(self, request: Any) -> Any:
            request.setHeader(b"x-faulty-pid", pid)
            path = request.path
            if path == b"/health":
                probes["count"] += 1
                if probes["count"] <= options["flap"] and probes["count"] % 2 == 1:
                    request.setResponseCode(503)
                    return b'{"error":"loading"}'
                return b"OK"
            if path == b"/debug/open":
                return str(len(site.open) - 1).encode()
            if path == b"/v1/chat/completions":
                return self.chat(request)
            request.setResponseCode(404)
            return b'{"error":{"message":"not found"}}'

        def chat(self, request: Any) -> Any:
            mode = options["chat"]
            transport = request.channel.transport
            if mode == "garbage":
                transport.write(GARBAGE)
                transport.loseConnection()
                return NOT_DONE_YET
            if mode == "hang":
                return NOT_DONE_YET
            if mode == "hang-headers":
                transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n")
                return NOT_DONE_YET
            try:
                body = json.loads(request.content.read() or b"{}")
            except ValueError:
                body = {}
            if mode == "deep":
                deep = b'{"usage":' + b"[" * 10_000 + b"]" * 10_000 + b"}"
                if isinstance(body, dict) and body.get("stream") is True:
                    request.setHeader(b"content-type", b"text/event-stream")
                    return b"data: " + deep + b"\n\ndata: [DONE]\n\n"
                request.setHeader(b"content-type", b"application/json")
                return deep
            model = body.get("model", "faulty") if isinstance(body, dict) else "faulty"
            tokens = ["tok%d " % i for i in range(options["tokens"])]
            if not (isinstance(body, dict) and body.get("stream") is True):
                request.setHeader(b"content-type", b"application/json")
                return json.dumps({
                    "id": "chatcmpl-faulty", "object": "chat.completion", "model": model,
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {
                        "role": "assistant", "content": "".join(tokens)}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": len(tokens),
                              "total_tokens": 3 + len(tokens)},
                }).encode()
            request.setHeader(b"content-type", b"text/event-stream")
            gone: list[object] = []
            request.notifyFinish().addErrback(gone.append)

            def send(i: int) -> None:
                if gone:
                    return
                if i == len(tokens):
                    request.write(b"data: [DONE]\n\n")
                    request.finish()
                    return
                chunk = {"object": "chat.completion.chunk", "model": model, "choices": [
                    {"index": 0, "delta": {"content": tokens[i]}}]}
                request.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                reactor.callLater(options["token-delay"], send, i + 1)

            send(0)
            return NOT_DONE_YET

    class CountingSite(Site):
        def __init__(self, resource: Any) -> None:
            super().__init__(resource)
            self.open: set[Any] = set()

        def buildProtocol(self, addr: Any) -> Any:
            protocol = super().buildProtocol(addr)
            opened, closed = protocol.connectionMade, protocol.connectionLost

            def made() -> None:
                self.open.add(protocol)
                opened()

            def lost(reason: Any) -> None:
                self.open.discard(protocol)
                closed(reason)

            protocol.connectionMade = made
            protocol.connectionLost = lost
            return protocol

    site = CountingSite(Root())
    site.noisy = False
    return site


def main(argv: list[str]) -> None:
    options = Options()
    options.parseOptions(argv)
    if options["ignore-term"]:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    helpers = startHelpers(options)
    deadline = time.monotonic() + options["lifetime"]

    from twisted.internet import reactor

    reactor.listenTCP(options["port"], makeSite(options, reactor), interface="127.0.0.1")

    def tooOld() -> None:
        for helper in helpers:
            helper.kill()
        os._exit(0)

    reactor.callLater(max(0.0, deadline - time.monotonic()), tooOld)
    sys.stdout.write(f"faulty: listening on {options['port']} pid={os.getpid()}\n")
    sys.stdout.flush()
    reactor.run(installSignalHandlers=not options["ignore-term"])


if __name__ == "__main__":
    main(sys.argv[1:])
