# -*- test-case-name: tests.test_config -*-
"""
Go-style durations (C{5s}, C{1m30s}, C{500ms}), as the reference's
C{performance.every} is written and printed.
"""

from __future__ import annotations

import re

_UNITS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign
    "\u03bcs": 1_000,  # Greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)([a-z\u00b5\u03bc]+)")


def parseDuration(text: str) -> int:
    """
    Parse a Go duration string.

    @return: the duration in nanoseconds.
    @raise ValueError: for text that is not a duration.
    """
    original = text
    text = text.strip()
    sign = 1
    if text[:1] in ("+", "-"):
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    if text == "0":
        return 0
    if not text:
        raise ValueError(f'invalid duration "{original}"')
    total = 0
    position = 0
    while position < len(text):
        match = _PART.match(text, position)
        if match is None or match.group(1) in ("", ".") or match.group(2) not in _UNITS:
            if match is not None and match.group(1) not in ("", ".") and match.group(2) not in _UNITS:
                raise ValueError(f'unknown unit "{match.group(2)}" in duration "{original}"')
            raise ValueError(f'invalid duration "{original}"')
        number, unit = match.groups()
        whole, _, fraction = number.partition(".")
        scale = _UNITS[unit]
        total += int(whole or "0") * scale
        if fraction:
            total += int(fraction) * scale // (10 ** len(fraction))
        position = match.end()
    return sign * total


def formatDuration(nanoseconds: int) -> str:
    """
    @return: the duration as Go's C{time.Duration.String} writes it
        (C{0s}, C{500ms}, C{1.5s}, C{1m30s}, C{2h0m0s}).
    """
    if nanoseconds == 0:
        return "0s"
    sign = "-" if nanoseconds < 0 else ""
    n = abs(nanoseconds)
    if n < 1_000_000_000:
        for unit, scale in (("ns", 1), ("\u00b5s", 1_000), ("ms", 1_000_000)):
            if n < scale * 1000:
                return sign + _fraction(n, scale) + unit
    hours, rest = divmod(n, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    seconds = _fraction(rest, 1_000_000_000) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds}"
    if minutes:
        return f"{sign}{minutes}m{seconds}"
    return sign + seconds


def _fraction(value: int, scale: int) -> str:
    whole, part = divmod(value, scale)
    if not part:
        return str(whole)
    width = len(str(scale)) - 1
    return f"{whole}." + f"{part:0{width}d}".rstrip("0")
