# -*- test-case-name: tests.integration.test_demo_process,tests.test_demo -*-
"""
Entry point: C{python -m llamaswap.demo --port 5800 [options]}.

Prints one line to stdout once listening::

    demo: model=<name> listening on http://<host>:<port> pid=<pid>

and logs one line per request to stderr.  SIGTERM and SIGINT stop it cleanly
(exit status 0); C{--exit-after} makes it exit with status 3.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

from twisted.python import usage
from twisted.web.server import Site

#: Exit status used by C{--exit-after}, so crash tests can recognise it.
EXIT_AFTER_STATUS = 3


def _nonNegativeFloat(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise ValueError(f"{value!r} is not a non-negative number")
    return number


def _nonNegativeInt(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"{value!r} is not a non-negative integer")
    return number


class Options(usage.Options):
    """
    Command line of the demo upstream.
    """

    synopsis = "Usage: python -m llamaswap.demo --port N [options]"
    longdesc = (
        "A small, deterministic OpenAI/Anthropic-compatible inference server "
        "for trying llamaswap without a GPU, and for its tests and benchmarks."
    )

    optParameters = [
        ["port", None, None, "TCP port to listen on (required; 0 picks a free port).",
         _nonNegativeInt],
        ["host", None, "127.0.0.1", "Interface to listen on."],
        ["model", None, "demo", "Model name reported by /v1/models and the X-Demo-Model header."],
        ["startup-delay", None, 0.0,
         "Seconds during which /health (and everything else) answers 503 loading.",
         _nonNegativeFloat],
        ["tokens", None, 16, "Tokens per completion, unless the request asks for fewer.",
         _nonNegativeInt],
        ["token-delay", None, 0.0, "Seconds between streamed tokens.", _nonNegativeFloat],
        ["exit-after", None, None,
         "Exit with status %d after this many seconds (for crash tests)." % EXIT_AFTER_STATUS,
         _nonNegativeFloat],
    ]
    optFlags = [
        ["fail-health", None, "Make /health always answer 500 (for health-timeout tests)."],
    ]

    def postOptions(self) -> None:
        if self["port"] is None:
            raise usage.UsageError("--port is required")
        if self["port"] > 65535:
            raise usage.UsageError("--port must be at most 65535")
        if not self["model"]:
            raise usage.UsageError("--model must not be empty")


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run(reactor: Any, options: Options) -> Any:
    """
    Listen and serve until stopped.

    @return: A Deferred that fails with L{SystemExit} when C{--exit-after}
        elapses and otherwise never fires; for L{twisted.internet.task.react}.
    """
    from twisted.internet.defer import Deferred
    from twisted.internet.error import CannotListenError
    from twisted.logger import FileLogObserver, formatEvent, globalLogBeginner

    from llamaswap.demo.server import DemoServer, DemoSettings

    # Plain lines: whoever runs the demo (llamaswap) adds its own timestamps.
    plain = FileLogObserver(sys.stderr, lambda event: formatEvent(event) + "\n")
    globalLogBeginner.beginLoggingTo([plain], redirectStandardIO=False)
    settings = DemoSettings(
        model=options["model"],
        tokens=options["tokens"],
        tokenDelay=options["token-delay"],
        startupDelay=options["startup-delay"],
        failHealth=bool(options["fail-health"]),
    )
    server = DemoServer(settings, clock=reactor)
    site = DemoSite(server.resource(), reactor=reactor)
    site.noisy = False
    site.displayTracebacks = False
    done: Deferred[None] = Deferred()
    try:
        port = reactor.listenTCP(options["port"], site, interface=options["host"])
    except CannotListenError as e:
        sys.stderr.write(f"demo: {e}\n")
        done.errback(SystemExit(1))
        return done

    def announce() -> None:
        # Only once the reactor runs: its SIGTERM handler is installed by
        # then, so whoever waits for this line may signal us at once.
        sys.stdout.write(
            "demo: model=%s listening on %s pid=%d\n"
            % (settings.model, _url(options["host"], port.getHost().port), os.getpid())
        )
        sys.stdout.flush()

    reactor.callWhenRunning(announce)
    if options["exit-after"] is not None:
        def exitNow() -> None:
            sys.stderr.write("demo: --exit-after elapsed, exiting with status %d\n"
                             % (EXIT_AFTER_STATUS,))
            sys.stderr.flush()
            done.errback(SystemExit(EXIT_AFTER_STATUS))

        reactor.callLater(options["exit-after"], exitNow)
    return done


class DemoSite(Site):
    """
    A Site without the access log: L{DemoServer} logs each request itself.
    """

    def log(self, request: Any) -> None:
        pass


def main(argv: Sequence[str] | None = None) -> None:
    """
    Parse C{argv} (default: C{sys.argv[1:]}) and run until stopped.
    """
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else list(argv))
    except usage.UsageError as e:
        sys.stderr.write(f"{options}\npython -m llamaswap.demo: error: {e}\n")
        sys.exit(2)
    from twisted.internet import task

    task.react(run, (options,))


if __name__ == "__main__":
    main()
