"""
The chaos tests' harness: llamaswap as users run it (C{twistd -n llamaswap}
in its own process), clients on plain sockets in threads, and what /proc says
about processes and file descriptors.

Every daemon gets a per-test marker, put into each upstream's environment
(C{CHAOS_MARKER}) and, for the fake upstream of L{tests.chaos.faulty}, onto
its command line; after the daemon is gone no process may carry it.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from tests.integration.support import PROJECT_ROOT, freePort, freePortRun

PYTHON = json.dumps(sys.executable)


def waitFor(check: Callable[[], Any], timeout: float = 15.0, step: float = 0.05,
            what: str | Callable[[], str] = "") -> Any:
    """
    Poll C{check()} until it returns something true.

    @return: that value.
    @raise AssertionError: after C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"not within {timeout}s: {said or check}")
        time.sleep(step)


# -- /proc ----------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(root: int) -> list[int]:
    """
    @return: the live (non-zombie) descendants of C{root}.
    """
    children: dict[int, list[int]] = {}
    for pid in _pids():
        stat = _stat(pid)
        if stat is not None and stat[0] not in ("Z", "X"):
            children.setdefault(stat[1], []).append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def marked(marker: str) -> list[int]:
    """
    @return: the live processes whose command line or environment carries
        C{marker}.
    """
    needle = marker.encode()
    found = []
    for pid in _pids():
        if pid == os.getpid():
            continue
        stat = _stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            continue
        for name in ("cmdline", "environ"):
            try:
                with open(f"/proc/{pid}/{name}", "rb") as f:
                    if needle in f.read():
                        found.append(pid)
                        break
            except OSError:
                pass
    return found


def openFds(pid: int) -> int:
    """
    @return: how many file descriptors C{pid} has open.
    """
    return len(os.listdir(f"/proc/{pid}/fd"))


def rssBytes(pid: int) -> int:
    """
    @return: the resident set size of C{pid}.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


# -- config ---------------------------------------------------------------


def demoCmd(model: str, *args: str) -> str:
    """
    @return: a model's C{cmd} running the demo upstream as C{model}.
    """
    return f"{PYTHON} -m llamaswap.demo --port ${{PORT}} --model {model} " + " ".join(args)


def faultyCmd(marker: str, *args: str) -> str:
    """
    @return: a model's C{cmd} running L{tests.chaos.faulty}.
    """
    return (f"{PYTHON} -m tests.chaos.faulty --port ${{PORT}} --marker {marker} "
            + " ".join(args))


class Daemon:
    """
    C{twistd -n llamaswap} in a child process of its own session, stopped
    (and checked for orphans) by the test's cleanup.

    @ivar marker: the per-test marker every upstream carries.
    @ivar models: C{{name: yaml of the model's settings}}, each with at
        least a C{cmd}; C{{marker}} in them is replaced by the marker.
    """

    def __init__(self, testCase: Any, models: dict[str, dict[str, Any]],
                 top: dict[str, Any] | None = None) -> None:
        self.testCase = testCase
        self.marker = "chaos" + uuid.uuid4().hex[:16]
        self.port = freePort()
        directory = os.path.abspath(testCase.mktemp())
        os.makedirs(directory)
        self.configPath = os.path.join(directory, "config.yaml")
        self.logPath = os.path.join(directory, "daemon.log")
        env = [f"CHAOS_MARKER={self.marker}", f"PYTHONPATH={PROJECT_ROOT}"]
        config: dict[str, Any] = {"startPort": freePortRun(len(models) + 2),
                                  "healthCheckTimeout": 20, "unloadTimeout": 2}
        config.update(top or {})
        config["models"] = {}
        for name, settings in models.items():
            model = {"env": env, **settings}
            model["cmd"] = model["cmd"].replace("{marker}", self.marker)
            config["models"][name] = model
        with open(self.configPath, "w") as f:
            json.dump(config, f, indent=2)  # JSON is YAML
        self.process: subprocess.Popen | None = None
        testCase.addCleanup(self.stop)

    def start(self) -> Daemon:
        """
        Start the daemon and wait until its C{/health} answers.
        """
        env = dict(os.environ, PYTHONPATH=PROJECT_ROOT, CHAOS_MARKER=self.marker)
        self._log = open(self.logPath, "wb")
        self.process = process = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "--pidfile=", "-n", "llamaswap", "-c", self.configPath,
             "--listen", f"127.0.0.1:{self.port}"],
            cwd=PROJECT_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)

        def healthy() -> bool:
            if process.poll() is not None:
                raise AssertionError("daemon exited:\n" + self.log())
            try:
                return self.request("GET", "/health", timeout=2)[0] == 200
            except OSError:
                return False

        waitFor(healthy, timeout=30, what="daemon healthy")
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        with open(self.logPath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self) -> None:
        """
        SIGTERM the daemon (SIGKILL its session if it does not exit), then
        fail if any process carrying the marker is left.
        """
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self._log.close()
        try:
            left = waitFor(lambda: not marked(self.marker), timeout=10) and []
        except AssertionError:
            left = marked(self.marker)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if left:
            raise AssertionError(f"processes outlived the daemon: {left}")
        if process.returncode not in (0, -signal.SIGTERM):
            raise AssertionError(f"daemon exited with {process.returncode}")

    # -- clients ----------------------------------------------------------

    def connect(self, timeout: float = 30.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None,
                timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
        """
        One request on a fresh connection, closed afterwards.

        @return: C{(status, headers with lower-case names, body)}.
        """
        conn = self.connect(timeout)
        try:
            data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
            hdrs = {"Connection": "close", **(headers or {})}
            if isinstance(body, (dict, list)):
                hdrs.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=data, headers=hdrs)
            response = conn.getresponse()
            return (response.status, {k.lower(): v for k, v in response.getheaders()},
                    response.read())
        finally:
            conn.close()

    def chat(self, model: str, stream: bool = False, timeout: float = 30.0,
             **extra: Any) -> tuple[int, dict[str, str], bytes]:
        body = {"model": model, "stream": stream,
                "messages": [{"role": "user", "content": "hello there"}], **extra}
        return self.request("POST", "/v1/chat/completions", body, timeout=timeout)

    def openStream(self, model: str, timeout: float = 30.0,
                   **extra: Any) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """
        Start a streamed chat.

        @return: the connection and the response (status and headers read).
        """
        conn = self.connect(timeout)
        body = {"model": model, "stream": True,
                "messages": [{"role": "user", "content": "hello there"}], **extra}
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json", "Connection": "close"})
        return conn, conn.getresponse()

    def unloadAll(self) -> None:
        status, _, body = self.request("POST", "/api/models/unload", timeout=60)
        assert status == 200, (status, body)

    def running(self) -> list[str]:
        status, _, body = self.request("GET", "/running")
        assert status == 200, (status, body)
        return [entry["model"] for entry in json.loads(body)["running"]]

    # -- checks -----------------------------------------------------------

    def quiesce(self) -> int:
        """
        Unload every model and wait until the daemon has no child process.

        @return: the daemon's open file descriptors then.
        """
        self.unloadAll()
        waitFor(lambda: not descendants(self.pid), timeout=20, what="no upstream processes")
        return openFds(self.pid)

    def baseline(self, *models: str) -> int:
        """
        Warm up (one chat for each of C{models}), then quiesce.

        @return: the daemon's open file descriptors, nothing loaded.
        """
        for model in models:
            status, _, body = self.chat(model)
            assert status == 200, (model, status, body)
        return self.quiesce()

    def waitUpstreamIdle(self, model: str, what: str) -> None:
        """
        Wait until the fake upstream of C{model} has no request open (its
        C{/debug/open} answers 0), failing with C{what} after 15 seconds.
        """

        def idle() -> bool:
            status, _, body = self.request("GET", f"/upstream/{model}/debug/open")
            return status == 200 and int(body) == 0

        waitFor(idle, timeout=15, what=what)

    def assertNoLeak(self, fdsBefore: int) -> None:
        """
        Quiesce, then check that the daemon's descriptors are back to
        C{fdsBefore} (waiting for connections it closes lazily), that it
        still answers, that no process carrying the marker is left beside
        it, and that it logged no traceback (an error it did not handle).
        """
        self.quiesce()
        waitFor(lambda: openFds(self.pid) <= fdsBefore, timeout=15,
                what=lambda: f"daemon fds back to {fdsBefore} (now {openFds(self.pid)}: "
                             f"{self.fdTargets()})")
        assert self.request("GET", "/health")[0] == 200
        left = [pid for pid in marked(self.marker) if pid != self.pid]
        assert not left, f"processes left behind: {left}"
        log = self.log()
        assert "Traceback" not in log, log[max(0, log.index("Traceback") - 500):][:3000]

    def fdTargets(self) -> list[str]:
        targets = []
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                targets.append(os.readlink(f"/proc/{self.pid}/fd/{fd}"))
            except OSError:
                pass
        return sorted(targets)


def abort(conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
    """
    Drop a connection whose response is being read, at once.
    """
    sock = getattr(response.fp, "raw", None)
    sock = getattr(sock, "_sock", None) or conn.sock
    if sock is not None:
        sock.shutdown(socket.SHUT_RDWR)
    response.close()
    conn.close()


def sseEvents(response: http.client.HTTPResponse) -> Iterator[bytes]:
    """
    @return: the C{data:} payloads of a streamed response, as they come.
    """
    while True:
        line = response.readline()
        if not line:
            return
        line = line.strip()
        if line.startswith(b"data:"):
            yield line[5:].strip()


class Bystander(threading.Thread):
    """
    A client streaming a chat in a thread while a fault happens elsewhere:
    L{check} says whether it got the whole answer, C{[DONE]} included.
    """

    def __init__(self, daemon: Daemon, model: str, **extra: Any) -> None:
        super().__init__(daemon=True)
        self.daemonUnderTest = daemon
        self.model = model
        self.extra = extra
        self.started_ = threading.Event()
        self.status: int | None = None
        self.events: list[bytes] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn, response = self.daemonUnderTest.openStream(self.model, **self.extra)
            self.status = response.status
            try:
                for event in sseEvents(response):
                    self.events.append(event)
                    self.started_.set()
            finally:
                conn.close()
        except BaseException as e:
            self.error = e
        finally:
            self.started_.set()

    def check(self, testCase: Any, tokens: int) -> None:
        """
        Wait for the stream's end; fail unless it was complete.
        """
        self.join(60)
        testCase.assertFalse(self.is_alive(), "bystander stream never ended")
        testCase.assertIsNone(self.error)
        testCase.assertEqual(self.status, 200)
        testCase.assertEqual(self.events[-1:], [b"[DONE]"])
        testCase.assertGreaterEqual(len(self.events), tokens)


def rawExchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """
    Send C{data} on a fresh connection, half-close, and read until EOF.

    @return: what came back.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks: list[bytes] = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
