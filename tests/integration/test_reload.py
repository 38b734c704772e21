"""
Reloading the config of a running llamaswap: unchanged models keep running
and serving, changed and removed ones are stopped, a bad file changes
nothing.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import TestCase

from llamaswap.config import loadConfigText
from tests.integration.support import alive, asyncTest, demoModels, InProcessDaemon

GROUP = """
groups:
  all:
    swap: false
    members: [{members}]
"""


class ReloadTests(TestCase):
    timeout = 60

    @asyncTest
    async def test_unchangedModelsKeepRunning(self) -> None:
        daemon = InProcessDaemon(
            self, demoModels(["keep", "change", "drop"]) + GROUP.format(members="keep, change, drop"))
        keep = await daemon.chatPid("keep")
        change = await daemon.chatPid("change")
        drop = await daemon.chatPid("drop")
        # Ports go to models in sorted order: with as many models before
        # "keep" as before, it keeps its port, so its settings are unchanged.
        new = loadConfigText(
            f"startPort: {daemon.config.startPort}\n"
            + demoModels(["keep"])
            + demoModels(["change", "added"], "--tokens 3").replace("models:\n", "")
            + GROUP.format(members="keep, change, added"))
        self.assertEqual(new.models["keep"], daemon.config.models["keep"])
        report = await daemon.root.reload(new)
        self.assertEqual(report.toJSON(), {
            "applied": True, "reason": None, "kept": ["keep"], "restarted": ["change"],
            "changed": [], "added": ["added"], "removed": ["drop"]})

        self.assertEqual(await daemon.chatPid("keep"), keep)
        # A request for the changed model waits for its old process to go.
        self.assertNotEqual(await daemon.chatPid("change"), change)
        self.assertFalse(alive(change))
        self.assertFalse(alive(drop))
        await daemon.chatPid("added")
        response, body = await daemon.chat("drop")
        self.assertEqual(response.code, 404)
        listing = await daemon.getJSON("/v1/models")
        self.assertEqual(sorted(m["id"] for m in listing["data"]), ["added", "change", "keep"])

    @asyncTest
    async def test_badFileChangesNothing(self) -> None:
        daemon = InProcessDaemon(self, demoModels(["m"]))
        pid = await daemon.chatPid("m")
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("models:\n  m:\n    cmd: srv\n    ttl: soon\n")
        daemon.root.configPath = path
        report = await daemon.root.reload()
        self.assertFalse(report.applied)
        self.assertIn("ttl", report.reason)
        self.assertEqual(await daemon.chatPid("m"), pid)

    @asyncTest
    async def test_addedModelDoesNotShiftThePortsOfOthers(self) -> None:
        """
        A model added before a running one in sorted order (the file read
        again, as SIGHUP does) gets a free port: the running model keeps
        its ${PORT}, so its cmd is unchanged and it keeps running.
        """
        daemon = InProcessDaemon(self, demoModels(["m"]))
        pid = await daemon.chatPid("m")
        port = daemon.root.config.models["m"].port
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(f"startPort: {daemon.config.startPort}\n" + demoModels(["a", "m"]))
        daemon.root.configPath = path
        report = await daemon.root.reload()
        self.assertEqual((report.applied, report.kept, report.added), (True, ("m",), ("a",)))
        self.assertEqual(daemon.root.config.models["m"].port, port)
        self.assertNotEqual(daemon.root.config.models["a"].port, port)
        self.assertEqual(await daemon.chatPid("m"), pid)
        await daemon.chatPid("a")

    @asyncTest
    async def test_changedIdleModelIsReportedChanged(self) -> None:
        """
        A model that is not running and whose settings change is reported
        as changed (nothing was stopped); its next start runs the new
        command.
        """
        daemon = InProcessDaemon(
            self, demoModels(["run", "idle"]) + GROUP.format(members="run, idle"))
        pid = await daemon.chatPid("run")
        new = loadConfigText(
            f"startPort: {daemon.config.startPort}\n"
            + demoModels(["run"])
            + demoModels(["idle"], "--tokens 3").replace("models:\n", "")
            + GROUP.format(members="run, idle"))
        self.assertEqual(new.models["run"], daemon.config.models["run"])
        report = await daemon.root.reload(new)
        self.assertEqual(report.toJSON(), {
            "applied": True, "reason": None, "kept": ["run"], "restarted": [],
            "changed": ["idle"], "added": [], "removed": []})
        self.assertEqual(await daemon.chatPid("run"), pid)
        self.assertIn("--tokens 3", daemon.root.router.machines["idle"]._core.model.cmd)
        await daemon.chatPid("idle")
