"""
Helpers for integration tests: free ports, process liveness from /proc,
waiting for a condition on the real reactor.
"""

from __future__ import annotations

import os
import socket
from typing import Awaitable, Callable

from twisted.internet import reactor
from twisted.internet.task import deferLater

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def freePort() -> int:
    """
    @return: a TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def freePortRun(count: int) -> int:
    """
    @return: the first of C{count} consecutive ports that were all free a
        moment ago (for a config's C{startPort}).
    """
    for _ in range(50):
        first = freePort()
        if first + count > 65535:
            continue
        try:
            for port in range(first, first + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise RuntimeError("no run of free ports found")


def procStat(pid: int) -> tuple[str, int] | None:
    """
    @return: C{(state, pgrp)} of process C{pid} from /proc, or C{None} when
        it does not exist.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    return fields[0], int(fields[2])


def alive(pid: int) -> bool:
    """
    @return: whether C{pid} exists and is not a zombie.
    """
    stat = procStat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def groupMembers(pgid: int) -> list[int]:
    """
    @return: the live (non-zombie) processes of process group C{pgid}.
    """
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = procStat(int(name))
            if stat is not None and stat[1] == pgid and stat[0] not in ("Z", "X"):
                members.append(int(name))
    return members


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, step: float = 0.02
) -> None:
    """
    Wait, on the real reactor, until C{check()} is true.

    @raise AssertionError: after C{timeout} seconds.
    """
    waited = 0.0
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if waited >= timeout:
            raise AssertionError(f"condition not met within {timeout}s: {check}")
        await deferLater(reactor, step, lambda: None)
        waited += step
