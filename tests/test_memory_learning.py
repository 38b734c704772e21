"""
Needs, budgets and learning (llamaswap.memory.manager and .store), with a
fake GPU probe and threads run inline; and the NVML probe's per-process
reading, with a fake NVML.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

import llamaswap.router  # noqa: F401  (registers the adapters)
from llamaswap.config import loadConfigText
from llamaswap.memory.manager import REMEASURE_AFTER, MemoryManager, snapshot, statePath
from llamaswap.memory.store import NeedStore, commandDigest, readState, writeState
from llamaswap.observe.gpu import NvmlProbe
from llamaswap.router.scheduler import ModelView
from tests.fakes import FakeGpuProbe, inlineThread
from tests.fakes import LLAMA, TENSORS, buildGguf
from tests.fakes import FakeNvml

GiB = 1024 ** 3
MiB = 1024 ** 2


def configText(gguf: str, memory: str) -> str:
    return f"""
models:
  est:
    cmd: llama-server -m {gguf} -c 1024 --port ${{PORT}}
  dec:
    cmd: llama-server -m {gguf} --port ${{PORT}}
  nofile:
    cmd: vllm serve some/model --port ${{PORT}}
memory:
{memory}
  overhead: 0
  models:
    dec: 3GiB
"""


class ManagerFixture:
    """
    A configuration with an estimated, a declared and an unknown model, a
    tiny GGUF file, a fake GPU with 24 GiB (3 GiB used) and a state file.
    """

    mktemp: Any

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.gguf = os.path.join(self.dir, "tiny.gguf")
        with open(self.gguf, "wb") as f:
            f.write(buildGguf(LLAMA, TENSORS))
        self.probe = FakeGpuProbe({0: (24 * GiB, 3 * GiB)})
        self.pgids = {"est": 100, "dec": 200}
        self.statePath = os.path.join(self.dir, "state.json")

    def manager(self, memory: str = "  budget: 8GiB", previous=None,
                clock=None) -> MemoryManager:
        config = loadConfigText(configText(self.gguf, memory))
        store = NeedStore(self.statePath, inlineThread)
        self.changes = []
        manager = MemoryManager(
            config, store, self.probe, inlineThread, self.pgids.get,
            onChange=lambda: self.changes.append(1), previous=previous,
            pgidOf=lambda pid: pid // 10 * 10, clock=clock)
        manager.start()
        return manager


class ManagerTests(ManagerFixture, SynchronousTestCase):

    def test_sources(self) -> None:
        """
        Declared first, then estimated from the GGUF file; a command that
        names no GGUF file is unknown.
        """
        m = self.manager()
        need, source = m.need("est")
        self.assertEqual(source, "estimated")
        self.assertEqual(need, m.estimates["est"].total)
        self.assertEqual(m.estimates["est"].context, 1024)
        self.assertEqual(m.need("dec"), (3 * GiB, "declared"))
        self.assertEqual(m.need("nofile"), (None, "unknown"))
        self.assertEqual(m.record("nofile"),
                         {"needBytes": None, "source": "unknown", "budgetLeftBytes": 8 * GiB})

    def test_autoBudget(self) -> None:
        """
        C{auto}: total minus what others use minus the margin; our own
        models' processes do not count as others.
        """
        self.probe.procs = [(0, 101, 2 * GiB), (0, 999, 1 * GiB)]
        m = self.manager("  budget: auto\n  margin: 1GiB")
        m.stateChanged("est", "starting")
        m.stateChanged("est", "ready")
        self.assertEqual(m.budgets, {"0": 24 * GiB - (3 * GiB - 2 * GiB) - GiB})

    def test_autoBudgetWithoutGpu(self) -> None:
        self.probe.gpus = {}
        with capturedLogs() as events:
            m = self.manager("  budget: auto")
        self.assertEqual(m.budgets, {})
        self.assertIn("'auto' budget is unknown", " ".join(formatEvent(e) for e in events))
        self.assertIsNone(m.record("est")["budgetLeftBytes"])

    def test_budgetLeft(self) -> None:
        m = self.manager()
        m.stateChanged("dec", "starting")
        self.assertEqual(m.record("est")["budgetLeftBytes"], 5 * GiB)
        m.stateChanged("dec", "stopped")
        self.assertEqual(m.record("est")["budgetLeftBytes"], 8 * GiB)

    def test_learnsAboveTheEstimate(self) -> None:
        """
        After a load, a usage above the estimate is learned, logged as a
        correction, saved, and read back by the next daemon.
        """
        m = self.manager()
        estimated = m.need("est")[0]
        used = estimated + 300 * MiB
        self.probe.procs = [(0, 100, used - MiB), (0, 103, MiB), (0, 555, GiB)]
        m.stateChanged("est", "starting")
        with capturedLogs() as events:
            m.stateChanged("est", "ready")
        self.assertEqual(m.need("est"), (used, "learned"))
        text = [formatEvent(e) for e in events]
        self.assertTrue(any("more than the estimated" in t and "learned" in t for t in text), text)
        [warning] = [e for e in events if "more than" in formatEvent(e)]
        self.assertEqual((warning["usedBytes"], warning["plannedBytes"]), (used, estimated))
        state = readState(self.statePath)
        self.assertEqual(state["est"]["needBytes"], used)
        self.assertEqual(state["est"]["cmd"], commandDigest(m.config.models["est"].cmd))
        # A restart: a new store and manager read it back.
        again = self.manager()
        self.assertEqual(again.need("est"), (used, "learned"))
        self.assertEqual(again.record("est")["source"], "learned")

    def test_learnedOnlyGrows(self) -> None:
        m = self.manager()
        self.probe.procs = [(0, 100, 2 * GiB)]
        m.stateChanged("est", "ready")
        self.probe.procs = [(0, 100, GiB)]
        m.stateChanged("est", "ready")
        self.assertEqual(m.need("est"), (2 * GiB, "learned"))
        self.probe.procs = [(0, 100, 3 * GiB)]
        m.stateChanged("est", "ready")
        self.assertEqual(m.need("est"), (3 * GiB, "learned"))
        self.assertEqual(readState(self.statePath)["est"]["loads"], 2)

    def test_measuredAgainAfterLoading(self) -> None:
        """
        A loaded model is measured once more a while after it became ready
        (memory allocated on first use counts); not once it has stopped.
        """
        clock = Clock()
        m = self.manager(clock=clock)
        self.probe.procs = [(0, 100, GiB)]
        m.stateChanged("est", "ready")
        self.assertEqual(m.need("est"), (GiB, "learned"))
        self.probe.procs = [(0, 100, 2 * GiB)]
        clock.advance(REMEASURE_AFTER)
        self.assertEqual(m.need("est"), (2 * GiB, "learned"))
        m.stateChanged("est", "ready")
        m.stateChanged("est", "stopping")
        self.probe.procs = [(0, 100, 5 * GiB)]
        clock.advance(REMEASURE_AFTER)
        self.assertEqual(m.need("est"), (2 * GiB, "learned"))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stopCancelsMeasurements(self) -> None:
        clock = Clock()
        m = self.manager(clock=clock)
        m.stateChanged("est", "ready")
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        m.stop()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_declaredKept(self) -> None:
        m = self.manager()
        self.probe.procs = [(0, 200, 4 * GiB)]
        with capturedLogs() as events:
            m.stateChanged("dec", "ready")
        self.assertEqual(m.need("dec"), (3 * GiB, "declared"))
        self.assertIn("more than the declared", " ".join(formatEvent(e) for e in events))

    def test_learnOff(self) -> None:
        m = self.manager("  budget: 8GiB\n  learn: false")
        self.probe.procs = [(0, 100, 5 * GiB)]
        calls = len(self.probe.calls)
        self.assertIsNone(m.stateChanged("est", "ready"))
        self.assertEqual(len(self.probe.calls), calls)
        self.assertEqual(m.need("est")[1], "estimated")

    def test_changedCommandForgetsTheLearned(self) -> None:
        writeState(self.statePath, {"est": {"needBytes": 5 * GiB, "cmd": commandDigest("old"),
                                            "loads": 1}})
        self.assertEqual(self.manager().need("est")[1], "estimated")

    def test_probeFailureLogged(self) -> None:
        self.probe.broken = RuntimeError("NVML exploded")
        with capturedLogs() as events:
            m = self.manager()
            self.assertIsNone(m.stateChanged("est", "ready").result)
        self.assertIn("NVML exploded", " ".join(formatEvent(e) for e in events))
        self.assertEqual(m.need("est")[1], "estimated")

    def test_reloadCarriesEstimatesAndBudgets(self) -> None:
        first = self.manager("  budget: auto")
        os.unlink(self.gguf)  # a fresh estimate would now fail
        second = self.manager("  budget: auto", previous=first)
        self.assertEqual(second.need("est"), first.need("est"))
        self.assertEqual(second.budgets, first.budgets)

    def test_plannerFor(self) -> None:
        """
        Busy models (in flight, or starting for a waiting request) are only
        waited for; idle ones go least recently used first.
        """
        m = self.manager()
        m.store.learn("est", m.config.models["est"].cmd, 4 * GiB)
        views = {"est": ModelView("ready", inFlight=1, idleSince=0.0),
                 "dec": ModelView("ready", idleSince=5.0), "nofile": ModelView("stopped")}
        planner = m.plannerFor(object(), views)
        # nofile's need is unknown: the whole budget.
        self.assertEqual(planner.evictionFor("nofile", {"est", "dec"}), {"est", "dec"})
        _, fit = planner.decide("nofile", {"est", "dec"})
        self.assertEqual((fit.evict, fit.wait), (("dec",), ("est",)))


class OomRetryTests(ManagerFixture, SynchronousTestCase):
    """
    L{MemoryManager.retryAfterOom}: once, only for out-of-memory output,
    only when another model can make room; the retry evicts one more.
    """

    OOM = ["llama_model_load: loading", "ggml_backend_cuda_buffer_type_alloc_buffer: "
           "allocating 4096.00 MiB on device 0: cudaMalloc failed: out of memory"]

    def setUp(self) -> None:
        super().setUp()
        self.m = self.manager()
        self.m.store.learn("est", self.m.config.models["est"].cmd, 2 * GiB)

    def test_retryOnce(self) -> None:
        m = self.m
        m.stateChanged("dec", "ready")
        views = {"dec": ModelView("ready", idleSince=1.0), "est": ModelView("failed")}
        self.assertEqual(m.plannerFor(object(), views).evictionFor("est", {"dec"}), frozenset())
        with capturedLogs() as events:
            self.assertTrue(m.retryAfterOom("est", self.OOM))
        self.assertIn("retrying once", " ".join(formatEvent(e) for e in events))
        self.assertEqual(m.plannerFor(object(), views).evictionFor("est", {"dec"}), {"dec"})
        # The retry failed too: the failure stands, and the extra eviction is gone.
        self.assertFalse(m.retryAfterOom("est", self.OOM))
        self.assertEqual(m.plannerFor(object(), views).evictionFor("est", {"dec"}), frozenset())
        # A later failure may be retried again.
        self.assertTrue(m.retryAfterOom("est", self.OOM))
        m.stateChanged("est", "ready")  # a success ends the retry
        self.assertEqual(m.situation().also, {})

    def test_notOom(self) -> None:
        self.m.stateChanged("dec", "ready")
        self.assertFalse(self.m.retryAfterOom("est", ["error: unknown argument: --foo"]))

    def test_nothingToEvict(self) -> None:
        with capturedLogs() as events:
            self.assertFalse(self.m.retryAfterOom("est", self.OOM))
        self.assertIn("no other model can make room", " ".join(formatEvent(e) for e in events))


class StoreTests(SynchronousTestCase):
    def test_roundTripAndAtomic(self) -> None:
        path = os.path.join(self.mktemp(), "sub", "state.json")
        writeState(path, {"a": {"needBytes": 5, "cmd": "x", "loads": 1}})
        self.assertEqual(readState(path), {"a": {"needBytes": 5, "cmd": "x", "loads": 1}})
        self.assertEqual(os.listdir(os.path.dirname(path)), ["state.json"])
        with open(path) as f:
            self.assertEqual(json.load(f)["version"], 1)

    def test_missingIsEmpty(self) -> None:
        self.assertEqual(readState(self.mktemp()), {})

    def test_badEntriesDropped(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump({"version": 1, "models": {"a": {"needBytes": "x", "cmd": "c"},
                                                "b": {"needBytes": 0, "cmd": "c"},
                                                "c": {"needBytes": 7, "cmd": "c"}}}, f)
        self.assertEqual(list(readState(path)), ["c"])

    def test_corruptFileLoggedAndReplaced(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("{not json")
        store = NeedStore(path, inlineThread)
        with capturedLogs() as events:
            store.load()
        self.assertIn("cannot read the learned needs", formatEvent(events[0]))
        self.assertTrue(store.loaded)
        store.learn("m", "cmd", 42)
        self.assertEqual(readState(path)["m"]["needBytes"], 42)

    def test_saveFailureLogged(self) -> None:
        blocker = self.mktemp()
        with open(blocker, "w") as f:
            f.write("")
        store = NeedStore(os.path.join(blocker, "state.json"), inlineThread)
        with capturedLogs() as events:
            d = store.learn("m", "cmd", 42)
        self.assertIsNone(self.successResultOf(d))
        self.assertIn("cannot save", formatEvent(events[0]))
        self.assertEqual(store.get("m", "cmd"), 42)

    def test_statePath(self) -> None:
        class M:
            stateFile = ""
        self.assertEqual(statePath(M, "/etc/ls/config.yaml"), "/etc/ls/llamaswap-memory.json")
        self.assertEqual(statePath(M, None, {"XDG_STATE_HOME": "/s"}),
                         "/s/llamaswap/llamaswap-memory.json")
        M.stateFile = "state/m.json"
        self.assertEqual(statePath(M, "/etc/ls/config.yaml"), "/etc/ls/state/m.json")
        M.stateFile = "/var/m.json"
        self.assertEqual(statePath(M, "/etc/ls/config.yaml"), "/var/m.json")


class ProcessNvml(FakeNvml):
    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        if handle["uuid"] == "GPU-bbbb":
            raise RuntimeError("Not Supported")
        return [SimpleNamespace(pid=4242, usedGpuMemory=2 * GiB),
                SimpleNamespace(pid=4243, usedGpuMemory=None),
                SimpleNamespace(pid=4244, usedGpuMemory=2 ** 64 - 1)]


class ProbeTests(SynchronousTestCase):
    def test_processes(self) -> None:
        probe = NvmlProbe(nvml=ProcessNvml())
        self.assertEqual(probe.processes(), [{"gpu": 0, "pid": 4242, "memoryUsed": 2 * GiB}])

    def test_unavailable(self) -> None:
        probe = NvmlProbe(importModule=lambda name: (_ for _ in ()).throw(ImportError(name)))
        self.assertEqual(probe.processes(), [])

    def test_snapshot(self) -> None:
        probe = FakeGpuProbe({0: (10, 6), 1: (10, 1)})
        probe.procs = [(0, 11, 3), (0, 12, 1), (1, 21, 1), (0, 99, 2)]

        def pgidOf(pid):
            if pid == 99:
                raise ProcessLookupError(pid)
            return pid // 10 * 10

        snap = snapshot(probe, {"a": 10, "b": 20}, pgidOf)
        self.assertEqual(snap.models, {"a": 4, "b": 1})
        self.assertEqual(snap.devices, {"0": (10, 6, 4), "1": (10, 1, 1)})
