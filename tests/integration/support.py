"""
Helpers for integration tests: free ports, process liveness from /proc,
waiting for a condition on the real reactor.
"""

from __future__ import annotations

import glob
import os
import random
import socket
import sys
from typing import Awaitable, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def asyncTest(test):
    """
    Decorate an C{async def} test method: trial runs its coroutine as a
    L{Deferred}.
    """
    from functools import wraps

    from twisted.internet.defer import Deferred

    @wraps(test)
    def wrapper(self):
        return Deferred.fromCoroutine(test(self))

    return wrapper


#: The lowest port L{freePort} and L{freePortRun} hand out.
LOWEST_PORT = 10000


def _ephemeralLow() -> int:
    """
    @return: the first port of the kernel's ephemeral range, where it takes
        the ports of outgoing connections and of binds to port 0.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def freePortRun(count: int) -> int:
    """
    @return: the first of C{count} consecutive ports that were all free a
        moment ago (for a config's C{startPort}, or a port bound later).

    The ports come from below the kernel's ephemeral range, at random:
    nothing else (a test running beside this one, its connections) is
    handed one of them by the kernel before whatever they are meant for
    binds them, as happened with ports found by binding port 0.
    """
    rng = random.SystemRandom()
    high = _ephemeralLow() - count
    if high > LOWEST_PORT:
        for _ in range(200):
            first = rng.randrange(LOWEST_PORT, high)
            if all(_bindable(port) for port in range(first, first + count)):
                return first
    for _ in range(50):  # no room below the ephemeral range
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        if first + count <= 65535 and all(_bindable(p) for p in range(first, first + count)):
            return first
    raise RuntimeError("no run of free ports found")


def freePort() -> int:
    """
    @return: a TCP port on 127.0.0.1 that was free a moment ago (see
        L{freePortRun}).
    """
    return freePortRun(1)


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


def demoCommand(model: str, *args: str) -> str:
    """
    @return: a YAML block scalar line running the demo responder as C{model}
        on C{${PORT}} (indented for a model's C{cmd: |}).
    """
    import json
    import sys

    extra = " ".join(args)
    return (
        f"      {json.dumps(sys.executable)} -m llamaswap.demo --port ${{PORT}}"
        f" --model {model} {extra}\n"
    )


def demoModels(names: list[str], *args: str) -> str:
    """
    @return: the C{models:} section of a config running the demo responder
        as each of C{names}, importable from this checkout.
    """
    import json

    env = json.dumps(f"PYTHONPATH={PROJECT_ROOT}")
    text = "models:\n"
    for name in names:
        text += f"  {name}:\n    env: [{env}]\n    cmd: |\n" + demoCommand(name, *args)
    return text


class InProcessDaemon:
    """
    llamaswap's whole service tree in the test process, on a real port, with
    an HTTP client; stopped by the test's cleanup.
    """

    def __init__(self, testCase, configText: str, **overrides: object) -> None:
        """
        @param overrides: top-level config fields to replace after
            validation (to go below a validated minimum, say).
        """
        import json as _json

        import attr

        from twisted.web.client import Agent, HTTPConnectionPool
        from treq.client import HTTPClient

        from llamaswap.config import loadConfigText
        from llamaswap.service import makeRootService

        self._json = _json
        port = freePort()
        self.config = loadConfigText(f"startPort: {freePortRun(8)}\n" + configText)
        if overrides:
            self.config = attr.evolve(self.config, **overrides)
        self.root = makeRootService(self.config, reactor, f"tcp:{port}:interface=127.0.0.1")
        self.root.startService()
        testCase.addCleanup(self.root.stopService)
        self.router = self.root.getServiceNamed("router")
        self.http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        self.base = f"http://127.0.0.1:{port}"

    async def post(self, path: str, body: object, **headers: str):
        """
        @return: C{(response, body bytes)}.
        """
        response = await self.http.post(
            self.base + path,
            data=self._json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **headers},
        )
        return response, await response.content()

    async def chat(self, model: str, stream: bool = False, **extra):
        """
        @return: C{(response, body bytes)} of a chat completion.
        """
        body = {"model": model, "stream": stream,
                "messages": [{"role": "user", "content": "hello there"}], **extra}
        return await self.post("/v1/chat/completions", body)

    async def chatPid(self, model: str) -> int:
        """
        @return: the pid of the demo process that answered a chat for C{model}.
        """
        response, body = await self.chat(model)
        assert response.code == 200, body
        return int(response.headers.getRawHeaders(b"x-demo-pid")[0])

    async def getJSON(self, path: str) -> object:
        response = await self.http.get(self.base + path)
        return self._json.loads(await response.content())


TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class Collect(ProcessProtocol):
    """
    Collects a child's output; C{ended} fires with its exit reason (the
    exception, never a Failure: callback() with a Failure would errback).
    """

    def __init__(self) -> None:
        self.output = b""
        self.stderr = b""
        self.ended: Deferred[Exception] = Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output += data
        if fd == 2:
            self.stderr += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(reason.value)


def childEnv() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [PROJECT_ROOT, env.get("PYTHONPATH", "")] if p
    )
    return env


def runTwistd(testCase: TestCase, *args: str, pidfile: bool = False,
              cwd: str = PROJECT_ROOT) -> Collect:
    """
    Start C{twistd} with C{args} (and C{--pidfile=} first unless
    C{pidfile}) in C{cwd}; make sure it is gone after the test.
    """
    proto = Collect()
    argv = [*TWISTD, *([] if pidfile else ["--pidfile="]), *args]
    transport = reactor.spawnProcess(proto, argv[0], argv, env=childEnv(), path=cwd)

    async def cleanup() -> None:
        if not proto.ended.called:
            transport.signalProcess("KILL")
            await proto.ended

    testCase.addCleanup(lambda: Deferred.fromCoroutine(cleanup()))
    return proto


# -- llama-server and GGUF weights of the real-model tests ----------------

CACHE = os.environ.get("LLAMASWAP_CACHE") or os.path.join(
    os.path.expanduser("~"), ".cache", "llamaswap")


def _executable(path: str | None) -> str | None:
    if path and os.path.isfile(path) and os.access(path, os.X_OK):
        return os.path.abspath(path)
    return None


def findLlamaServer() -> str | None:
    """
    @return: C{$LLAMASWAP_LLAMA_SERVER}, or the newest binary that
        C{scripts/build-llama-server} left in the cache, or C{None}.
    """
    if os.environ.get("LLAMASWAP_LLAMA_SERVER"):
        return _executable(os.environ["LLAMASWAP_LLAMA_SERVER"])
    built = glob.glob(os.path.join(CACHE, "llama-server-*", "bin", "llama-server"))
    built.sort(key=os.path.getmtime)
    return _executable(built[-1]) if built else None


def findGGUF(name: str, fileName: str) -> str | None:
    """
    @return: C{$LLAMASWAP_<name>_GGUF}, or C{fileName} in the cache that
        C{scripts/fetch-models} fills, or C{None}.
    """
    path = os.environ.get(f"LLAMASWAP_{name}_GGUF") or os.path.join(CACHE, "models", fileName)
    try:
        with open(path, "rb") as f:
            return os.path.abspath(path) if f.read(4) == b"GGUF" else None
    except OSError:
        return None


LLAMA_SERVER = findLlamaServer()
SMOLLM2 = findGGUF("SMOLLM2", "SmolLM2-135M-Instruct.Q4_1.gguf")
GEMMA3 = findGGUF("GEMMA3", "gemma-3-270m-q4_k_m.gguf")
