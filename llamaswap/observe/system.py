# -*- test-case-name: tests.test_observe_system -*-
"""
Host statistics from Linux's C{/proc}: per-core CPU utilisation, memory
and swap, load averages and per-interface network byte counters, for
C{/metrics} and C{/api/performance} (SPEC.md section 6.4).

L{SystemProbe.sample} blocks (it reads files): L{PerformanceMonitor
<llamaswap.observe.performance.PerformanceMonitor>} runs it in a thread.
On another platform, or where C{/proc} lacks what is needed, the probe
says it is unavailable and returns L{None}; nothing raises.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

#: Keys of one system sample.
SAMPLE_KEYS = ("cpuPerCore", "memoryTotal", "memoryUsed", "memoryFree", "swapTotal",
               "swapUsed", "load", "network")

#: The fields of a C{/proc/stat} C{cpuN} line that add up to its total
#: time: user nice system idle iowait irq softirq steal (guest time is
#: already inside user and nice).
_TIME_FIELDS = 8


def _readText(path: str) -> str:
    with open(path, "r", encoding="ascii", errors="replace") as f:
        return f.read()


def parseStat(text: str) -> dict[int, tuple[int, int]]:
    """
    @param text: the contents of C{/proc/stat}.
    @return: core index -> C{(busy, total)} jiffies since boot, where idle
        time (C{idle} plus C{iowait}) is what is not busy.  The aggregate
        C{cpu} line is left out.
    """
    cores: dict[int, tuple[int, int]] = {}
    for line in text.splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        fields = line.split()
        suffix = fields[0][3:]
        if not suffix.isdigit():
            continue
        times = [int(v) for v in fields[1:1 + _TIME_FIELDS]]
        times += [0] * (_TIME_FIELDS - len(times))
        total = sum(times)
        idle = times[3] + times[4]
        cores[int(suffix)] = (total - idle, total)
    return cores


def parseMeminfo(text: str) -> dict[str, int]:
    """
    @param text: the contents of C{/proc/meminfo}.
    @return: field name -> bytes (the file's C{kB} are KiB).
    """
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        parts = rest.split()
        if not parts:
            continue
        try:
            number = int(parts[0])
        except ValueError:
            continue
        if len(parts) > 1 and parts[1].lower() == "kb":
            number *= 1024
        values[name.strip()] = number
    return values


def parseLoadavg(text: str) -> tuple[float, float, float]:
    """
    @param text: the contents of C{/proc/loadavg}.
    @return: the 1, 5 and 15 minute load averages.
    """
    fields = text.split()
    return (float(fields[0]), float(fields[1]), float(fields[2]))


def parseNetDev(text: str) -> list[dict[str, Any]]:
    """
    @param text: the contents of C{/proc/net/dev}.
    @return: one C{{"name", "recv", "sent"}} dict (cumulative bytes) per
        interface, in the file's order, without the loopback C{lo}.
    """
    interfaces = []
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        name = name.strip()
        fields = rest.split()
        # The two header lines have a "|" and no ":"; a data line has 16
        # numbers: 8 received, 8 transmitted.
        if not name or name == "lo" or len(fields) < 9:
            continue
        try:
            recv, sent = int(fields[0]), int(fields[8])
        except ValueError:
            continue
        interfaces.append({"name": name, "recv": recv, "sent": sent})
    return interfaces


def cpuPercent(previous: dict[int, tuple[int, int]] | None,
               current: dict[int, tuple[int, int]]) -> list[float]:
    """
    @param previous: the last reading of L{parseStat}, or L{None}.
    @param current: this reading.
    @return: per-core busy percentages (0 to 100), ordered by core index,
        over the time between the two readings; for a core with no
        previous reading (the first one, or a core just brought online),
        since boot.
    """
    previous = previous or {}
    out = []
    for core in sorted(current):
        busy, total = current[core]
        lastBusy, lastTotal = previous.get(core, (0, 0))
        deltaTotal = total - lastTotal
        deltaBusy = busy - lastBusy
        if deltaTotal <= 0 or deltaBusy < 0:
            # No time passed, or counters went backwards (a core that went
            # offline and came back): nothing meaningful to report.
            out.append(0.0)
            continue
        out.append(max(0.0, min(100.0, 100.0 * deltaBusy / deltaTotal)))
    return out


class SystemProbe:
    """
    Reads host statistics from C{/proc}.  L{sample} blocks: run it in a
    thread.  It keeps the previous C{/proc/stat} reading, so the CPU
    figures of one sample cover the time since the one before; call it
    from one thread at a time.

    @ivar available: L{None} until first used; then whether C{/proc} can
        be read.
    @ivar reason: why it is unavailable.
    """

    def __init__(self, procRoot: str = "/proc", platform: str | None = None,
                 readText: Callable[[str], str] = _readText) -> None:
        """
        @param procRoot: where C{/proc} is (tests write a fake tree).
        @param platform: C{sys.platform} by default; anything other than
            C{linux} makes the probe unavailable.
        @param readText: reads a whole file (blocking).
        """
        self.procRoot = procRoot
        self.platform = sys.platform if platform is None else platform
        self._read = readText
        self._previousCpu: dict[int, tuple[int, int]] | None = None
        self.available: bool | None = None
        self.reason = ""

    def _path(self, *parts: str) -> str:
        return os.path.join(self.procRoot, *parts)

    def init(self) -> bool:
        """
        Check once that this is Linux and that C{stat} and C{meminfo} can
        be read (blocking).

        @return: whether samples can be taken.
        """
        if self.available is not None:
            return self.available
        if not self.platform.startswith("linux"):
            return self._unavailable(
                "system statistics need Linux's /proc (platform {})".format(self.platform))
        for name in ("stat", "meminfo"):
            try:
                self._read(self._path(name))
            except OSError as e:
                return self._unavailable("cannot read {}: {}".format(self._path(name), e))
        self.available = True
        return True

    def _unavailable(self, reason: str) -> bool:
        self.available = False
        self.reason = reason
        return False

    def sample(self) -> dict[str, Any] | None:
        """
        Read the host's statistics (blocking).

        @return: L{None} when unavailable, else a dict with the keys
            L{SAMPLE_KEYS}: C{cpuPerCore} (busy percent per core, by core
            index), C{memoryTotal}, C{memoryUsed}, C{memoryFree},
            C{swapTotal}, C{swapUsed} (bytes), C{load} (the 1, 5 and 15
            minute averages), C{network} (a list of C{{"name", "recv",
            "sent"}}: cumulative bytes per interface, loopback left out).
            Used memory is C{MemTotal - MemFree - Buffers - Cached -
            SReclaimable} (as C{free} and gopsutil count it), free memory
            C{MemFree}.  A missing C{loadavg} or C{net/dev} gives zeros and
            no interfaces.
        @raise Exception: a file that cannot be read or parsed (the
            monitor logs it and polls again later).
        """
        if not self.init():
            return None
        cores = parseStat(self._read(self._path("stat")))
        cpu = cpuPercent(self._previousCpu, cores)
        self._previousCpu = cores
        mem = parseMeminfo(self._read(self._path("meminfo")))
        total = mem.get("MemTotal", 0)
        free = mem.get("MemFree", 0)
        used = (total - free - mem.get("Buffers", 0) - mem.get("Cached", 0)
                - mem.get("SReclaimable", 0))
        if used < 0:
            # Containers can report caches larger than what is not free.
            used = total - free
        swapTotal = mem.get("SwapTotal", 0)
        swapUsed = max(0, swapTotal - mem.get("SwapFree", 0))
        try:
            load = parseLoadavg(self._read(self._path("loadavg")))
        except OSError:
            load = (0.0, 0.0, 0.0)
        try:
            network = parseNetDev(self._read(self._path("net", "dev")))
        except OSError:
            network = []
        return {
            "cpuPerCore": cpu,
            "memoryTotal": total,
            "memoryUsed": max(0, used),
            "memoryFree": free,
            "swapTotal": swapTotal,
            "swapUsed": swapUsed,
            "load": load,
            "network": network,
        }
