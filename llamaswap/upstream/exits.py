# -*- test-case-name: tests.test_upstream_machine -*-
"""
How an upstream's start fails and how its exits are described.
"""

from __future__ import annotations

from twisted.internet.error import ProcessDone, ProcessTerminated

__all__ = ["UpstreamStartError", "StartAborted", "goDuration", "exitCodeOf", "describeExit"]


class UpstreamStartError(Exception):
    """
    An upstream could not be made ready.

    @ivar message: what went wrong, in the reference's words (for example
        C{"upstream command exited prematurely (exit code 1)"}).
    @ivar exitCode: the command's exit status when it exited by itself
        (a signal is C{-N}), else L{None}.
    @ivar lastLines: the last lines the command printed.
    """

    def __init__(
        self, message: str, exitCode: int | None = None, lastLines: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exitCode = exitCode
        self.lastLines = tuple(lastLines)

    def __str__(self) -> str:
        return self.message

    def clientMessage(self) -> str:
        """
        @return: what a client is told: that the upstream failed to start,
            why, and the last lines it printed.
        """
        out = "upstream failed to start: " + self.message
        if self.lastLines:
            out += "; last output: " + " | ".join(self.lastLines)
        return out

    def record(self) -> dict:
        """
        @return: C{{"reason", "exitCode", "lastLines"}} for the UI.
        """
        return {
            "reason": self.message,
            "exitCode": self.exitCode,
            "lastLines": list(self.lastLines),
        }


class StartAborted(UpstreamStartError):
    """
    A start was aborted by a stop (not a failure of the upstream).
    """

    def __init__(self) -> None:
        super().__init__("aborted")


def goDuration(seconds: float) -> str:
    """
    Format a duration the way Go's C{time.Duration.String} does.

    @return: e.g. C{"15s"}, C{"2m0s"}, C{"1h0m0s"}, C{"1.5s"}, C{"500ms"}.
    """
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)

    def fraction(value: int, unit: int) -> str:
        whole, rest = divmod(value, unit)
        if not rest:
            return str(whole)
        digits = len(str(unit)) - 1
        return "{}.{}".format(whole, str(rest).rjust(digits, "0").rstrip("0"))

    if ns < 1000:
        return "{}{}ns".format(sign, ns)
    if ns < 1000_000:
        return "{}{}\u00b5s".format(sign, fraction(ns, 1000))
    if ns < 1000_000_000:
        return "{}{}ms".format(sign, fraction(ns, 1000_000))
    hours, ns = divmod(ns, 3600 * 1000_000_000)
    minutes, ns = divmod(ns, 60 * 1000_000_000)
    out = sign
    if hours:
        out += "{}h".format(hours)
    if hours or minutes:
        out += "{}m".format(minutes)
    return out + "{}s".format(fraction(ns, 1000_000_000))


def exitCodeOf(reason: object) -> int | None:
    """
    @return: the exit status of an exit reason value, C{-N} for signal N,
        L{None} when unknown.
    """
    if isinstance(reason, ProcessDone):
        return 0
    if isinstance(reason, ProcessTerminated):
        if reason.exitCode is not None:
            return int(reason.exitCode)
        if reason.signal is not None:
            return -int(reason.signal)
    return None


def describeExit(reason: object) -> str:
    """
    @return: C{"exit code N"} or C{"signal N"} for an exit reason value.
    """
    if isinstance(reason, ProcessDone):
        return "exit code 0"
    if isinstance(reason, ProcessTerminated):
        if reason.exitCode is not None:
            return "exit code {}".format(reason.exitCode)
        if reason.signal is not None:
            return "signal {}".format(reason.signal)
    return str(reason)
