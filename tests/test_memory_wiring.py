"""
How the daemon holds its memory manager (llamaswap.memory.wiring), and the
C{memory} field of the UI's model list.
"""

from __future__ import annotations

import os

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from llamaswap.config import loadConfigText
from llamaswap.memory.wiring import MemoryWiring
from llamaswap.service import makeRootService
from tests.fakes import FakeGpuProbe, inlineThread

GiB = 1024 ** 3

CONFIG = """
models:
  a:
    cmd: srv-a --port ${PORT}
  b:
    cmd: srv-b --port ${PORT}
memory:
  budget: 8GiB
  stateFile: %s
  models:
    a: 3GiB
"""


class WiringTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.state = os.path.abspath(self.mktemp())
        self.config = loadConfigText(CONFIG % self.state)
        self.probe = FakeGpuProbe({0: (24 * GiB, 0)})
        self.wiring = MemoryWiring(None, None, probe=self.probe, inThread=inlineThread)
        self.changes: list = []

    def managerFor(self, config, start=True):
        # b's process group is this test's own: NVML reports this process.
        return self.wiring.managerFor(config, {"b": os.getpgid(0)}.get,
                                      lambda: self.changes.append(1), start=start)

    def test_noSection(self) -> None:
        self.assertIsNone(self.managerFor(loadConfigText("models: {}\n")))
        self.assertIsNone(self.wiring.record("a"))
        self.wiring.stateChanged("a", "ready")  # nothing to tell: no error

    def test_managerAndRecords(self) -> None:
        manager = self.managerFor(self.config, start=False)
        self.assertIs(self.wiring.manager, manager)
        self.assertEqual(self.wiring.record("a"),
                         {"needBytes": 3 * GiB, "source": "declared", "budgetLeftBytes": 8 * GiB})
        self.wiring.start()
        self.assertTrue(self.changes)
        self.assertEqual(manager.store.path, self.state)

    def test_learningThroughTheWiring(self) -> None:
        self.managerFor(self.config)
        self.probe.procs = [(0, os.getpid(), 2 * GiB)]
        self.wiring.stateChanged("b", "starting")
        self.wiring.stateChanged("b", "ready")
        self.assertEqual(self.wiring.record("b"),
                         {"needBytes": 2 * GiB, "source": "learned", "budgetLeftBytes": 6 * GiB})

    def test_reloadKeepsTheStore(self) -> None:
        first = self.managerFor(self.config)
        second = self.managerFor(self.config)
        self.assertIsNot(first, second)
        self.assertIs(first.store, second.store)


class ModelStatusTests(SynchronousTestCase):
    def test_memoryField(self) -> None:
        """
        With the memory planner on, every local model's C{modelStatus}
        record has its C{memory} field; without it, none has.
        """
        state = os.path.abspath(self.mktemp())
        root = makeRootService(loadConfigText(CONFIG % state), MemoryReactorClock(),
                               "tcp:0:interface=127.0.0.1")
        records = root.observatory.modelStatus()
        self.assertEqual([r["memory"]["source"] for r in records], ["declared", "unknown"])
        self.assertEqual(records[0]["memory"]["needBytes"], 3 * GiB)
        plain = makeRootService(loadConfigText("models:\n  a:\n    cmd: x --port ${PORT}\n"),
                                MemoryReactorClock(), "tcp:0:interface=127.0.0.1")
        self.assertNotIn("memory", plain.observatory.modelStatus()[0])
