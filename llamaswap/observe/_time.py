# -*- test-case-name: tests.test_observe_logs -*-
"""
Timestamps in the layouts of Go's C{time} package, as the reference prints
them: the named C{logTimeFormat} values of SPEC.md section 2.1 and the
RFC 3339 form Go uses to encode a C{time.Time} in JSON.

Pure functions with explicit English month and day names (C{strftime}'s
C{%a}/C{%b} follow the process locale, Go's layouts do not).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone, tzinfo
from typing import Callable

_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July",
           "August", "September", "October", "November", "December")


def _offset(dt: datetime, colon: bool, zulu: bool) -> str:
    delta = dt.utcoffset() or timedelta(0)
    if zulu and delta == timedelta(0):
        return "Z"
    minutes = int(delta.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    sep = ":" if colon else ""
    return "{}{:02d}{}{:02d}".format(sign, minutes // 60, sep, minutes % 60)


def _zone(dt: datetime) -> str:
    """
    Go's C{MST}: the zone abbreviation, or C{-0700} when there is none.
    """
    name = dt.tzname()
    if name and not name.startswith(("UTC+", "UTC-")):
        return name
    return _offset(dt, colon=False, zulu=False)


def _day(dt: datetime) -> str:
    return _DAYS[dt.weekday()][:3]


def _month(dt: datetime) -> str:
    return _MONTHS[dt.month - 1][:3]


def _clock(dt: datetime) -> str:
    return "{:02d}:{:02d}:{:02d}".format(dt.hour, dt.minute, dt.second)


def _fraction(dt: datetime, digits: int, trim: bool) -> str:
    # Python keeps microseconds; Go's nanosecond digits beyond them are 0.
    nanos = "{:06d}000".format(dt.microsecond)[:digits]
    if trim:
        nanos = nanos.rstrip("0")
    return "." + nanos if nanos else ""


def _kitchen(dt: datetime) -> str:
    hour = dt.hour % 12 or 12
    return "{}:{:02d}{}".format(hour, dt.minute, "PM" if dt.hour >= 12 else "AM")


def _rfc3339(dt: datetime, nano: bool) -> str:
    return "{:04d}-{:02d}-{:02d}T{}{}{}".format(
        dt.year, dt.month, dt.day, _clock(dt),
        _fraction(dt, 9, True) if nano else "", _offset(dt, colon=True, zulu=True))


def _stamp(dt: datetime, digits: int) -> str:
    return "{} {:>2d} {}{}".format(_month(dt), dt.day, _clock(dt),
                                   _fraction(dt, digits, False) if digits else "")


#: Go layout name (lower case, as in C{logTimeFormat}) -> formatter.
LAYOUTS: dict[str, Callable[[datetime], str]] = {
    # Mon Jan _2 15:04:05 2006
    "ansic": lambda dt: "{} {} {:>2d} {} {:04d}".format(
        _day(dt), _month(dt), dt.day, _clock(dt), dt.year),
    # Mon Jan _2 15:04:05 MST 2006
    "unixdate": lambda dt: "{} {} {:>2d} {} {} {:04d}".format(
        _day(dt), _month(dt), dt.day, _clock(dt), _zone(dt), dt.year),
    # Mon Jan 02 15:04:05 -0700 2006
    "rubydate": lambda dt: "{} {} {:02d} {} {} {:04d}".format(
        _day(dt), _month(dt), dt.day, _clock(dt), _offset(dt, False, False), dt.year),
    # 02 Jan 06 15:04 MST
    "rfc822": lambda dt: "{:02d} {} {:02d} {:02d}:{:02d} {}".format(
        dt.day, _month(dt), dt.year % 100, dt.hour, dt.minute, _zone(dt)),
    # 02 Jan 06 15:04 -0700
    "rfc822z": lambda dt: "{:02d} {} {:02d} {:02d}:{:02d} {}".format(
        dt.day, _month(dt), dt.year % 100, dt.hour, dt.minute, _offset(dt, False, False)),
    # Monday, 02-Jan-06 15:04:05 MST
    "rfc850": lambda dt: "{}, {:02d}-{}-{:02d} {} {}".format(
        _DAYS[dt.weekday()], dt.day, _month(dt), dt.year % 100, _clock(dt), _zone(dt)),
    # Mon, 02 Jan 2006 15:04:05 MST
    "rfc1123": lambda dt: "{}, {:02d} {} {:04d} {} {}".format(
        _day(dt), dt.day, _month(dt), dt.year, _clock(dt), _zone(dt)),
    # Mon, 02 Jan 2006 15:04:05 -0700
    "rfc1123z": lambda dt: "{}, {:02d} {} {:04d} {} {}".format(
        _day(dt), dt.day, _month(dt), dt.year, _clock(dt), _offset(dt, False, False)),
    # 2006-01-02T15:04:05Z07:00
    "rfc3339": lambda dt: _rfc3339(dt, nano=False),
    # 2006-01-02T15:04:05.999999999Z07:00
    "rfc3339nano": lambda dt: _rfc3339(dt, nano=True),
    # 3:04PM
    "kitchen": _kitchen,
    # Jan _2 15:04:05 (and .000, .000000, .000000000)
    "stamp": lambda dt: _stamp(dt, 0),
    "stampmilli": lambda dt: _stamp(dt, 3),
    "stampmicro": lambda dt: _stamp(dt, 6),
    "stampnano": lambda dt: _stamp(dt, 9),
}


def localTime(when: float, tz: tzinfo | None = None) -> datetime:
    """
    @param when: POSIX seconds.
    @param tz: the zone to show the time in; the local zone when L{None}.
    @return: an aware L{datetime}.
    """
    if tz is None:
        return datetime.fromtimestamp(when, timezone.utc).astimezone()
    return datetime.fromtimestamp(when, tz)


def formatLayout(layout: str, when: float, tz: tzinfo | None = None) -> str:
    """
    Format C{when} in the Go layout named C{layout} (case-insensitive).

    @return: the text, or C{""} for an empty or unknown layout name (the
        reference then prints no timestamp).
    """
    formatter = LAYOUTS.get((layout or "").strip().lower())
    if formatter is None:
        return ""
    return formatter(localTime(when, tz))


def rfc3339Nano(when: float, tz: tzinfo | None = None) -> str:
    """
    @return: C{when} as Go encodes a C{time.Time} in JSON (RFC 3339 with
        trailing zeros of the fraction removed, C{Z} for UTC).
    """
    return _rfc3339(localTime(when, tz), nano=True)
