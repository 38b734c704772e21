"""
Browser tests' support: a real llamaswap daemon (C{twistd -n llamaswap},
a child process) serving the demo config, and a headless Chromium driven
by Playwright for Python.

Chromium is Debian's (C{/usr/bin/chromium}, or C{$LLAMASWAP_CHROMIUM});
Playwright's own browser download is never used.  When either is missing
the tests skip, saying which.  Screenshots go to C{$LLAMASWAP_UI_ARTIFACTS},
default C{ui-screenshots/} under the trial temp directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.integration.support import PROJECT_ROOT, freePort, freePortRun

CHROMIUM = os.environ.get("LLAMASWAP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


def skipReason() -> str | None:
    """
    @return: why the browser tests cannot run here, or L{None}.
    """
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install playwright; the test extra has it)"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set LLAMASWAP_CHROMIUM)"
    return None


def artifactsDir() -> Path:
    """
    @return: the folder screenshots are written to (created).
    """
    path = Path(os.environ.get("LLAMASWAP_UI_ARTIFACTS") or Path.cwd() / "ui-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def demoConfig(extra: str = "") -> str:
    """
    @return: the bundled demo config on a free port run, with C{extra}
        top-level settings, and capabilities declared for two models.
    """
    text = (Path(PROJECT_ROOT) / "config" / "demo.yaml").read_text()
    text = text.replace("startPort: 5800", f"startPort: {freePortRun(4)}")
    text = text.replace(
        "    description: Fast demo responder (24 tokens per answer)\n",
        "    description: Fast demo responder (24 tokens per answer)\n"
        "    metadata:\n      capabilities: [chat, rerank]\n")
    text = text.replace("      family: demo\n", "      family: demo\n      capabilities: [chat, images, speech]\n")
    text += (
        "\n  demo-broken:\n"
        "    name: Broken demo\n"
        "    description: Exits at once, as a model with missing weights would\n"
        "    cmd: sh -c 'echo cannot open /models/missing.gguf >&2; exit 3' -- ${PORT}\n")
    return "captureBuffer: 5\n" + extra + text


class Daemon:
    """
    C{twistd -n llamaswap -c <config>} on a free port; L{stop} ends it
    (and so its models).
    """

    def __init__(self, configText: str, port: int | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="llamaswap-ui-")
        self.configPath = os.path.join(self.dir, "config.yaml")
        Path(self.configPath).write_text(configText)
        self.port = port or freePort()
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in [PROJECT_ROOT, env.get("PYTHONPATH", "")] if p)
        self.log = open(os.path.join(self.dir, "daemon.log"), "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--pidfile=",
             "-n", "llamaswap", "-c", self.configPath, "--listen", f"127.0.0.1:{self.port}"],
            cwd=PROJECT_ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("llamaswap did not start:\n" + self.output())
            time.sleep(0.1)

    def output(self) -> str:
        self.log.flush()
        return Path(self.dir, "daemon.log").read_text(errors="replace")

    def request(self, method: str, path: str, body: object = None, headers: dict | None = None):
        """
        @return: C{(status, body bytes)} (blocking: these tests run no reactor).
        """
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Browser:
    """
    One headless Chromium; pages that record console errors and uncaught
    exceptions (L{errors}).
    """

    def __init__(self) -> None:
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        self.errors: list[str] = []

    def page(self, width: int = 1280, height: int = 800, scheme: str = "light"):
        context = self.browser.new_context(viewport={"width": width, "height": height},
                                           color_scheme=scheme)
        page = context.new_page()
        page.set_default_timeout(15000)
        page.on("console", lambda m: m.type == "error" and self.errors.append(
            f"{page.url}: console: {m.text}"))
        page.on("pageerror", lambda e: self.errors.append(f"{page.url}: exception: {e}"))
        return page

    def close(self) -> None:
        self.browser.close()
        self._pw.stop()
