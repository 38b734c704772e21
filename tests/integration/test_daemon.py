"""
llamaswap as users run it: C{twistd -n llamaswap} in a child process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from treq.client import HTTPClient

from tests.fakes import writeCertificate
from tests.integration.support import (
    Collect,
    alive,
    asyncTest,
    eventually,
    freePort,
    freePortRun,
    groupMembers,
    runTwistd,
)


STUBBORN = (
    # The shell ignores SIGTERM and so does its background grandchild; the
    # demo (a child) answers requests.  Only a group KILL ends them all.
    "sh -c \"trap '' TERM; sleep 300 & {python} -m llamaswap.demo --port ${{PORT}} "
    "--model stubborn; wait\""
)


class TwistdTests(TestCase):
    timeout = 90

    def test_helpListsThePlugin(self) -> Deferred[None]:
        async def run() -> None:
            proto = runTwistd(self, "--help")
            await proto.ended
            self.assertIn(b"llamaswap", proto.output)

        return Deferred.fromCoroutine(run())

    def test_badConfigExitsNonZeroNamingTheKey(self) -> Deferred[None]:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("models:\n  qwen:\n    cmd: srv\n    ttl: ten\n")

        async def run() -> None:
            proto = runTwistd(self, "-n", "llamaswap", "-c", path)
            reason = await proto.ended
            self.assertNotEqual(reason.exitCode, 0)
            self.assertIn(b"models.qwen.ttl", proto.output)

        return Deferred.fromCoroutine(run())

    def test_servesSwapsAndLeavesNothingBehind(self) -> Deferred[None]:
        port = freePort()
        path = os.path.abspath(self.mktemp())
        python = json.dumps(sys.executable)
        with open(path, "w") as f:
            f.write(
                f"startPort: {freePortRun(2)}\n"
                "unloadTimeout: 1\n"
                "models:\n"
                "  demo:\n"
                "    cmd: |\n"
                f"      {python} -m llamaswap.demo --port ${{PORT}} --model demo\n"
                "  stubborn:\n"
                "    cmd: |\n"
                f"      {STUBBORN.format(python=python)}\n"
            )
        pool = HTTPConnectionPool(reactor, persistent=False)
        http = HTTPClient(Agent(reactor, pool=pool))
        base = f"http://127.0.0.1:{port}"

        async def chat(model: str) -> int:
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            response = await http.post(
                base + "/v1/chat/completions",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            self.assertEqual(response.code, 200, await response.content())
            await response.content()
            return int(response.headers.getRawHeaders(b"x-demo-pid")[0])

        async def healthy() -> bool:
            if proto.ended.called:
                self.fail("twistd exited:\n" + proto.output.decode(errors="replace"))
            try:
                response = await http.get(base + "/health")
                return (await response.content()) == b"OK"
            except Exception:
                return False

        proto = runTwistd(self, "-n", "llamaswap", "-c", path, "--listen", f"127.0.0.1:{port}")

        async def run() -> None:
            await eventually(healthy, timeout=30)
            demoPid = await chat("demo")
            stubbornPid = await chat("stubborn")
            self.assertFalse(alive(demoPid))
            group = os.getpgid(stubbornPid)
            members = groupMembers(group)
            self.assertGreaterEqual(len(members), 3)  # sh, sleep, demo

            os.kill(proto.transport.pid, signal.SIGTERM)
            reason = await proto.ended
            # twistd re-raises the signal it stopped for once it has shut down.
            self.assertIn(reason.exitCode or reason.signal, (0, signal.SIGTERM), proto.output)
            self.assertIn(b"all upstreams stopped", proto.output)
            self.assertEqual([p for p in members if alive(p)], [])

        return Deferred.fromCoroutine(run())

    def test_sighupReloadsTheConfig(self) -> Deferred[None]:
        port = freePort()
        path = os.path.abspath(self.mktemp())
        python = json.dumps(sys.executable)
        model = "  {name}:\n    cmd: |\n      " + python + " -m llamaswap.demo --port ${{PORT}}\n"
        start = freePortRun(4)
        with open(path, "w") as f:
            f.write(f"startPort: {start}\nmodels:\n" + model.format(name="first"))
        pool = HTTPConnectionPool(reactor, persistent=False)
        http = HTTPClient(Agent(reactor, pool=pool))
        base = f"http://127.0.0.1:{port}"
        proto = runTwistd(self, "-n", "llamaswap", "-c", path, "--listen", f"127.0.0.1:{port}")

        def models() -> Deferred[set[str]]:
            return Deferred.fromCoroutine(listedModels(http, base))

        async def run() -> None:
            await eventually(lambda: _hasModels(models, {"first"}), timeout=30)
            with open(path, "w") as f:
                f.write("models: {broken\n")
            os.kill(proto.transport.pid, signal.SIGHUP)
            await eventually(lambda: b"config reload refused" in proto.output, timeout=10)
            self.assertEqual(await models(), {"first"})
            with open(path, "w") as f:
                f.write(f"startPort: {start}\nmodels:\n" + model.format(name="first")
                        + model.format(name="second"))
            os.kill(proto.transport.pid, signal.SIGHUP)
            await eventually(lambda: _hasModels(models, {"first", "second"}), timeout=10)
            os.kill(proto.transport.pid, signal.SIGTERM)
            await proto.ended

        return Deferred.fromCoroutine(run())

    def test_watchConfigReloadsOnChange(self) -> Deferred[None]:
        port = freePort()
        path = os.path.abspath(self.mktemp())
        python = json.dumps(sys.executable)
        model = "  {name}:\n    cmd: |\n      " + python + " -m llamaswap.demo --port ${{PORT}}\n"
        with open(path, "w") as f:
            f.write("models:\n" + model.format(name="first"))
        http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        base = f"http://127.0.0.1:{port}"
        proto = runTwistd(self, "-n", "llamaswap", "--watch-config", "-c", path,
                          "--listen", f"127.0.0.1:{port}")

        def models() -> Deferred[set[str]]:
            return Deferred.fromCoroutine(listedModels(http, base))

        async def run() -> None:
            await eventually(lambda: _hasModels(models, {"first"}), timeout=30)
            await deferLater(reactor, 0.5, lambda: None)
            with open(path, "w") as f:
                f.write("models:\n" + model.format(name="renamed"))
            await eventually(lambda: _hasModels(models, {"renamed"}), timeout=15)
            os.kill(proto.transport.pid, signal.SIGTERM)
            await proto.ended

        return Deferred.fromCoroutine(run())


async def listedModels(http, base: str) -> set[str]:
    """
    @return: the ids C{GET /v1/models} lists (none while nothing answers).
    """
    try:
        response = await http.get(base + "/v1/models")
        return {m["id"] for m in json.loads(await response.content())["data"]}
    except Exception:
        return set()


async def _hasModels(models, expected: set[str]) -> bool:
    return await models() == expected


class GracefulShutdownTests(TestCase):
    """
    SIGTERM drains: streams in flight finish, a request waiting for a model
    that is starting is served, a new request on an open connection gets
    503, then every upstream stops; a second SIGTERM stops at once.
    """

    timeout = 120

    def daemon(self, shutdownTimeout: int, tokens: int, delay: float):
        port = freePort()
        path = os.path.abspath(self.mktemp())
        python = json.dumps(sys.executable)
        model = ("  {name}:\n    cmd: |\n      " + python + " -m llamaswap.demo --port ${{PORT}}"
                 f" --model {{name}} --tokens {tokens} --token-delay {delay}\n")
        with open(path, "w") as f:
            f.write(f"startPort: {freePortRun(2)}\nshutdownTimeout: {shutdownTimeout}\n"
                    "models:\n" + model.format(name="busy") + model.format(name="cold")
                    + "groups:\n  all:\n    swap: false\n    members: [busy, cold]\n")
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 1
        keepAlive = HTTPClient(Agent(reactor, pool=pool))
        self.addCleanup(pool.closeCachedConnections)
        http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        base = f"http://127.0.0.1:{port}"
        proto = runTwistd(self, "-n", "llamaswap", "-c", path, "--listen", f"127.0.0.1:{port}")
        return proto, http, keepAlive, base

    @staticmethod
    async def stream(http, base: str, model: str, started: list) -> tuple[int, bytes, int]:
        body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        response = await http.post(base + "/v1/chat/completions", data=json.dumps(body).encode(),
                                   headers={"Content-Type": "application/json"})
        pids = response.headers.getRawHeaders(b"x-demo-pid")
        if pids is None:
            return response.code, await response.content(), 0
        started.append(int(pids[0]))
        return response.code, await response.content(), int(pids[0])

    async def up(self, proto, http, base: str) -> None:
        async def healthy() -> bool:
            if proto.ended.called:
                self.fail("twistd exited:\n" + proto.output.decode(errors="replace"))
            try:
                return (await (await http.get(base + "/health")).content()) == b"OK"
            except Exception:
                return False

        await eventually(healthy, timeout=30)

    @asyncTest
    async def test_inFlightRequestsFinishThenEverythingStops(self) -> None:
        proto, http, keepAlive, base = self.daemon(30, tokens=20, delay=0.1)
        await self.up(proto, http, base)
        self.assertEqual((await keepAlive.get(base + "/health")).code, 200)  # an open connection
        started: list[int] = []
        streams = [Deferred.fromCoroutine(self.stream(http, base, "busy", started))
                   for _ in range(5)]
        await eventually(lambda: len(started) == 5, timeout=30)
        waiting = Deferred.fromCoroutine(self.stream(http, base, "cold", []))
        await eventually(lambda: b"[cold] starting" in proto.output, timeout=30)
        os.kill(proto.transport.pid, signal.SIGTERM)
        await eventually(lambda: b"shutting down" in proto.output, timeout=10)
        refused = await keepAlive.get(base + "/v1/models")
        self.assertEqual(refused.code, 503)
        self.assertIn(b"shutting down", await refused.content())
        for d in [*streams, waiting]:
            code, body, pid = await d
            self.assertEqual(code, 200, body + b"\n" + proto.output)
            self.assertIn(b"[DONE]", body)
        reason = await proto.ended
        self.assertIn(reason.exitCode or reason.signal, (0, signal.SIGTERM), proto.output)
        self.assertIn(b"shutdown: every request finished", proto.output)
        self.assertEqual([p for p in started if alive(p)], [])

    @asyncTest
    async def test_secondSigtermStopsAtOnce(self) -> None:
        proto, http, _, base = self.daemon(300, tokens=2000, delay=0.05)
        await self.up(proto, http, base)
        started: list[int] = []
        stream = Deferred.fromCoroutine(self.stream(http, base, "busy", started))
        stream.addErrback(lambda f: None)  # it is cut
        await eventually(lambda: len(started) == 1, timeout=30)
        os.kill(proto.transport.pid, signal.SIGTERM)
        await eventually(lambda: b"shutting down" in proto.output, timeout=10)
        self.assertFalse(proto.ended.called)
        os.kill(proto.transport.pid, signal.SIGTERM)
        reason = await proto.ended
        self.assertIn(reason.exitCode or reason.signal, (0, signal.SIGTERM), proto.output)
        self.assertIn(b"again: stopping every upstream now", proto.output)
        self.assertFalse(alive(started[0]))


class StartupErrorTests(TestCase):
    """
    What stops llamaswap from starting ends the real twistd with a non-zero
    status and one line on stderr naming the cause: no traceback, no usage
    text, no C{twistd --pidfile:} prefix.
    """

    timeout = 60

    async def assertRefused(self, fragment: str, *args: str) -> str:
        proto = runTwistd(self, *args)
        reason = await proto.ended
        self.assertNotEqual(reason.exitCode, 0, proto.output)
        lines = proto.stderr.decode(errors="replace").splitlines()
        self.assertEqual(len(lines), 1, proto.output.decode(errors="replace"))
        [line] = lines
        self.assertTrue(line.startswith("llamaswap: "), line)
        self.assertIn(fragment, line)
        for noise in (b"Traceback", b"Usage:", b"--pidfile", b"Options:"):
            self.assertNotIn(noise, proto.output)
        return line

    @asyncTest
    async def test_portInUse(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            await self.assertRefused(
                f"cannot listen on 127.0.0.1:{port}: Address already in use",
                "-n", "llamaswap", "--listen", f"127.0.0.1:{port}",
            )

    @asyncTest
    async def test_unixSocketInAMissingFolder(self) -> None:
        path = os.path.join(tempfile.mkdtemp(prefix="llamaswap-"), "missing", "l.sock")
        line = await self.assertRefused(
            "No such file or directory", "-n", "llamaswap", "--listen", f"unix:{path}"
        )
        self.assertIn(path, line)

    @asyncTest
    async def test_tlsCertificateMissing(self) -> None:
        cert, key = writeCertificate(self.mktemp())
        os.remove(cert)
        await self.assertRefused(
            f"cannot read TLS certificate {cert}: No such file or directory",
            "-n", "llamaswap", "--tls-cert-file", cert, "--tls-key-file", key,
        )

    @asyncTest
    async def test_tlsKeyUnreadable(self) -> None:
        cert, key = writeCertificate(self.mktemp())
        folder = os.path.dirname(key)
        await self.assertRefused(
            f"cannot read TLS key {folder}",
            "-n", "llamaswap", "--tls-cert-file", cert, "--tls-key-file", folder,
        )
        if os.geteuid() != 0:
            os.chmod(key, 0)
            await self.assertRefused(
                f"cannot read TLS key {key}: Permission denied",
                "-n", "llamaswap", "--tls-cert-file", cert, "--tls-key-file", key,
            )

    @asyncTest
    async def test_configMissing(self) -> None:
        path = os.path.abspath(self.mktemp())
        await self.assertRefused(
            f"config: cannot read {path}: No such file or directory",
            "-n", "llamaswap", "-c", path,
        )

    @asyncTest
    async def test_configUnreadable(self) -> None:
        path = os.path.abspath(self.mktemp())
        os.mkdir(path)
        await self.assertRefused(f"cannot read {path}: Is a directory", "-n", "llamaswap", "-c", path)

    @asyncTest
    async def test_configInvalid(self) -> None:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("models:\n  qwen:\n    cmd: srv\n    ttl: ten\n")
        line = await self.assertRefused(
            f"config {path}: models.qwen.ttl: expected integer", "-n", "llamaswap", "-c", path
        )
        self.assertTrue(line.endswith("(line 4)"), line)


class ListeningTests(TestCase):
    """
    TLS, several listeners and side-by-side instances, against the real
    twistd serving the bundled demo config.
    """

    timeout = 90

    def agent(self, **kwargs):
        return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False),
                                **kwargs))

    async def healthy(self, http, url: str, proto: Collect) -> None:
        async def check() -> bool:
            if proto.ended.called:
                self.fail("twistd exited:\n" + proto.output.decode(errors="replace"))
            try:
                response = await http.get(url)
                return (await response.content()) == b"OK"
            except Exception:
                return False

        await eventually(check, timeout=30)

    @asyncTest
    async def test_tlsAppliesToATcpEndpoint(self) -> None:
        """
        C{--listen tcp:...} with a certificate serves HTTPS, and a plain
        HTTP request on that port gets no HTTP answer.
        """
        from twisted.internet import ssl
        from twisted.web.client import BrowserLikePolicyForHTTPS

        cert, key = writeCertificate(self.mktemp())
        with open(cert, "rb") as f:
            authority = ssl.Certificate.loadPEM(f.read())
        port = freePort()
        proto = runTwistd(self, "-n", "llamaswap", "--listen", f"tcp:{port}:interface=127.0.0.1",
                          "--tls-cert-file", cert, "--tls-key-file", key)
        https = self.agent(
            contextFactory=BrowserLikePolicyForHTTPS(trustRoot=authority))
        await self.healthy(https, f"https://127.0.0.1:{port}/health", proto)
        self.assertIn(b"ssl:", proto.output)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
            plain.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                answer = plain.recv(100)
            except OSError:
                answer = b""
        self.assertFalse(answer.startswith(b"HTTP/"), answer)

    @asyncTest
    async def test_everyListenIsServed(self) -> None:
        port = freePort()
        folder = tempfile.mkdtemp(prefix="llamaswap-")  # socket paths are short
        self.addCleanup(shutil.rmtree, folder, True)
        path = os.path.join(folder, "l.sock")
        proto = runTwistd(self, "-n", "llamaswap", "--listen", f"127.0.0.1:{port}",
                          "--listen", f"unix:{path}")
        await self.healthy(self.agent(), f"http://127.0.0.1:{port}/health", proto)
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(path)
            s.sendall(b"GET /health HTTP/1.0\r\nHost: x\r\n\r\n")
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
        self.assertTrue(answer.startswith(b"HTTP/1.0 200"), answer)
        self.assertTrue(answer.endswith(b"OK"), answer)

    @asyncTest
    async def test_twoInstancesFromOneFolder(self) -> None:
        """
        The README's C{twistd -n llamaswap} twice from the same folder: no
        pidfile is written, so both start.
        """
        folder = os.path.abspath(self.mktemp())
        os.mkdir(folder)
        ports = [freePort(), freePort()]
        procs = [runTwistd(self, "-n", "llamaswap", "--listen", f"127.0.0.1:{p}",
                           pidfile=True, cwd=folder) for p in ports]
        http = self.agent()
        for proto, port in zip(procs, ports):
            await self.healthy(http, f"http://127.0.0.1:{port}/health", proto)
        self.assertEqual(os.listdir(folder), [])
        for proto in procs:
            proto.transport.signalProcess("TERM")
            await proto.ended
