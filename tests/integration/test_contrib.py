"""
The service files in C{contrib/}: the systemd unit checked by
C{systemd-analyze verify}, and the LSB init script run against the real
twistd serving the bundled demo config.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from llamaswap.tap import bundledConfigPath
from tests.integration.support import PROJECT_ROOT, alive, freePort, freePortRun

UNIT = os.path.join(PROJECT_ROOT, "contrib", "systemd", "llamaswap.service")
INIT_SCRIPT = os.path.join(PROJECT_ROOT, "contrib", "init.d", "llamaswap")
#: The drain llamaswap gives in-flight requests on SIGTERM, by default.
DEFAULT_SHUTDOWN_TIMEOUT = 30


def readUnit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "min": 60, "m": 60}
    for suffix, factor in units.items():
        if value.endswith(suffix) and value[: -len(suffix)].strip().isdigit():
            return int(value[: -len(suffix)]) * factor
    return float(value)


class SystemdUnitTests(SynchronousTestCase):
    def test_runsTwistdInTheForegroundWithTheSystemConfig(self) -> None:
        service = readUnit()["Service"]
        words = service["ExecStart"].split()
        self.assertEqual(os.path.basename(words[0]), "twistd")
        self.assertEqual(words[1:], ["-n", "--pidfile=", "llamaswap", "-c",
                                     "/etc/llamaswap/config.yaml"])
        self.assertEqual(service["User"], "llamaswap")
        self.assertEqual(service["Restart"], "on-failure")
        self.assertEqual(service["ExecReload"], "/bin/kill -HUP $MAINPID")

    def test_stopLetsLlamaswapDrainAndStopItsUpstreams(self) -> None:
        service = readUnit()["Service"]
        self.assertIn(service["KillMode"], ("mixed", "process"))
        self.assertGreater(seconds(service["TimeoutStopSec"]), DEFAULT_SHUTDOWN_TIMEOUT + 10)
        self.assertEqual(service["Delegate"], "yes")

    def test_hardeningKeepsGPUAccess(self) -> None:
        service = readUnit()["Service"]
        for key in ("PrivateDevices", "DevicePolicy", "MemoryDenyWriteExecute",
                    "ProtectControlGroups", "DeviceAllow"):
            self.assertNotIn(key, service)
        self.assertEqual(service["NoNewPrivileges"], "yes")

    def test_systemdAnalyzeVerify(self) -> None:
        """
        C{systemd-analyze verify} accepts the unit without a single
        complaint (it only warns about unknown keys, so any output fails).
        The binary is this environment's twistd: verify checks it exists.
        """
        tool = shutil.which("systemd-analyze")
        if tool is None:
            raise SkipTest("systemd-analyze is not installed (package systemd)")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        if not os.access(twistd, os.X_OK):
            twistd = shutil.which("twistd") or ""
        if not twistd:
            raise SkipTest("no twistd executable to stand in for /opt/llamaswap/bin/twistd")
        folder = self.mktemp()
        os.makedirs(folder)
        unit = os.path.join(os.path.abspath(folder), "llamaswap.service")
        with open(UNIT) as f:
            text = f.read()
        with open(unit, "w") as f:
            f.write(text.replace("/opt/llamaswap/bin/twistd", twistd))
        result = subprocess.run([tool, "verify", unit], capture_output=True, text=True,
                                timeout=120)
        if result.returncode != 0 and "Failed to" in result.stderr and "bus" in result.stderr:
            raise SkipTest(f"systemd-analyze cannot run here: {result.stderr.strip()}")
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))


def get(url: str, body: dict | None = None) -> tuple[int, Any, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.headers, response.read()


def waitFor(check, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what or check}")


class InitScriptTests(SynchronousTestCase):
    """
    C{contrib/init.d/llamaswap} driving the real twistd: start, status,
    reload keeping a loaded model, stop, with LSB exit codes.
    """

    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        twistd = os.path.join(self.folder, "twistd")
        with open(twistd, "w") as f:
            f.write("#!/bin/sh\nexec %s -c 'from twisted.scripts.twistd import run; run()' \"$@\"\n"
                    % sys.executable)
        os.chmod(twistd, 0o755)
        with open(bundledConfigPath()) as f:
            demo = f.read()
        self.assertIn("startPort: 5800\n", demo)
        config = os.path.join(self.folder, "demo.yaml")
        with open(config, "w") as f:  # the demo, on ports free in this run
            f.write(demo.replace("startPort: 5800\n", f"startPort: {freePortRun(3)}\n"))
        self.port = freePort()
        self.pidfile = os.path.join(self.folder, "run", "llamaswap.pid")
        self.logfile = os.path.join(self.folder, "log", "llamaswap.log")
        defaults = os.path.join(self.folder, "defaults")
        with open(defaults, "w") as f:
            f.write(
                f"TWISTD={twistd}\nCONFIG={config}\nLISTEN=127.0.0.1:{self.port}\n"
                f"PIDFILE={self.pidfile}\nLOGFILE={self.logfile}\n"
                f"RUNDIR={self.folder}/lib\nRUN_AS=\nSTOP_TIMEOUT=60\n"
            )
        self.env = dict(os.environ, LLAMASWAP_DEFAULTS=defaults)
        self.env.pop("LLAMASWAP_PYTHON", None)
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in [PROJECT_ROOT, os.environ.get("PYTHONPATH", "")] if p)
        self.addCleanup(self.killLeftovers)

    def killLeftovers(self) -> None:
        try:
            with open(self.pidfile) as f:
                os.kill(int(f.read()), 9)
        except (OSError, ValueError):
            pass

    def script(self, command: str) -> tuple[int, str]:
        result = subprocess.run(["sh", INIT_SCRIPT, command], env=self.env, capture_output=True,
                                text=True, timeout=120)
        return result.returncode, result.stdout + result.stderr

    def log(self) -> str:
        with open(self.logfile, errors="replace") as f:
            return f.read()

    def test_startStatusReloadRestartStop(self) -> None:
        base = f"http://127.0.0.1:{self.port}"
        self.assertEqual(self.script("status")[0], 3)

        code, output = self.script("start")
        self.assertEqual(code, 0, output)
        with open(self.pidfile) as f:
            daemon = int(f.read())
        self.assertEqual(self.script("status"), (0, f"llamaswap is running (pid {daemon})\n"))
        self.assertEqual(self.script("start")[0], 0)  # already running: fine

        waitFor(lambda: get(base + "/health")[2] == b"OK", what="/health")
        status, headers, _ = get(base + "/v1/chat/completions", {
            "model": "demo-small", "messages": [{"role": "user", "content": "hi"}]})
        self.assertEqual(status, 200)
        upstream = int(headers["x-demo-pid"])

        code, output = self.script("reload")
        self.assertEqual(code, 0, output)
        waitFor(lambda: "config reloaded" in self.log(), what="config reloaded in the log")
        running = json.loads(get(base + "/running")[2])["running"]
        self.assertEqual([(m["model"], m["state"]) for m in running], [("demo-small", "ready")])
        self.assertTrue(alive(upstream))
        status, headers, _ = get(base + "/v1/chat/completions", {
            "model": "demo-small", "messages": [{"role": "user", "content": "again"}]})
        self.assertEqual(int(headers["x-demo-pid"]), upstream)

        code, output = self.script("restart")
        self.assertEqual(code, 0, output)
        with open(self.pidfile) as f:
            restarted = int(f.read())
        self.assertNotEqual(restarted, daemon)
        self.assertFalse(alive(daemon))
        self.assertFalse(alive(upstream))
        self.assertEqual(self.script("status")[0], 0)
        waitFor(lambda: get(base + "/health")[2] == b"OK", what="/health after restart")

        code, output = self.script("stop")
        self.assertEqual(code, 0, output)
        self.assertEqual(self.script("status")[0], 3)
        self.assertFalse(alive(restarted))
        self.assertFalse(os.path.exists(self.pidfile))
        self.assertEqual(self.script("reload")[0], 7)
        self.assertEqual(self.script("stop")[0], 0)  # stopped already: fine

    def test_startFailureIsOneLineAndStatusStaysStopped(self) -> None:
        import socket

        with socket.socket() as taken:
            taken.bind(("127.0.0.1", self.port))
            taken.listen()
            code, output = self.script("start")
        self.assertEqual(code, 1, output)
        self.assertEqual(
            output,
            f"llamaswap failed to start: llamaswap: cannot listen on 127.0.0.1:{self.port}: "
            f"Address already in use (log: {self.logfile})\n",
        )
        self.assertEqual(self.script("status")[0], 3)

    def test_deadDaemonWithPidfileIsStatus1(self) -> None:
        os.makedirs(os.path.dirname(self.pidfile))
        with open(self.pidfile, "w") as f:
            f.write("999999999\n")
        self.assertEqual(self.script("status")[0], 1)

    def test_unknownCommandIsUsage(self) -> None:
        code, output = self.script("bounce")
        self.assertEqual(code, 2)
        self.assertIn("Usage:", output)
