# -*- test-case-name: tests.test_memory_learning -*-
"""
The memory planner's moving parts: each model's need and its source, the
device budgets, learning after a load, and the out-of-memory retry.

L{MemoryManager} is the one object the rest of llamaswap talks to:

    - L{MemoryManager.start} estimates every model without a declared need
      from its GGUF file and reads the C{auto} budgets, in a thread;
    - L{MemoryManager.plannerFor} gives the scheduler an L{ISwapPlanner}
      for the current moment (the configured strategy, then memory; see
      L{llamaswap.memory.planner});
    - L{MemoryManager.stateChanged} hears every upstream state change; when
      a model becomes ready it measures, in a thread, what the model's
      process group really uses on the GPU (NVML per-process usage through
      the L{IGpuProbe}) and learns it (see L{MemoryManager.learnt});
    - L{MemoryManager.retryAfterOom} decides whether a failed start is
      retried once with one more model evicted;
    - L{MemoryManager.record} is the C{memory} field of C{/running} and of
      the C{modelStatus} events: C{{"needBytes", "source",
      "budgetLeftBytes"}}.

A model's need comes from the first source available: C{declared} (the
config's C{memory.models}), C{learned} (the state file, for the same
command), C{estimated} (the GGUF file); else it is unknown (C{source}
C{"unknown"}, C{needBytes} C{null}) and counts as its device's whole budget.

Nothing here blocks the reactor: file reads, GGUF parsing and NVML calls all
run through the injected C{inThread}.
"""

from __future__ import annotations

import os
from typing import (
    Any,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Mapping,
    Optional,
    Set,
    Tuple,
)

import attr
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from llamaswap.config.memory import AUTO, MemoryConfig
from llamaswap.config.model import DEFAULT_GROUP, GroupsConfig
from llamaswap.interfaces import ISwapPlanner
from llamaswap.memory.estimate import Estimate, EstimateError, estimateCommand, formatBytes
from llamaswap.memory.oom import outOfMemoryLine
from llamaswap.memory.planner import MemorySituation, MemorySwap, NoEviction
from llamaswap.memory.store import NeedStore

__all__ = ["GpuSnapshot", "MemoryManager", "basePlanner", "pinnedFor", "snapshot",
           "statePath"]

LIVE = frozenset({"starting", "ready", "stopping"})

#: Seconds after a model became ready at which it is measured once more.
REMEASURE_AFTER = 30.0
STATE_FILE = "llamaswap-memory.json"


def statePath(memory: MemoryConfig, configPath: Optional[str],
              environ: Mapping[str, str] = os.environ) -> str:
    """
    @return: where the learned needs are kept: C{memory.stateFile}
        (relative to the config file's directory), else C{STATE_FILE}
        beside the config file, else in C{$XDG_STATE_HOME/llamaswap}
        (C{~/.local/state/llamaswap}).
    """
    base = os.path.dirname(os.path.abspath(configPath)) if configPath else None
    if memory.stateFile:
        path = os.path.expanduser(memory.stateFile)
        if not os.path.isabs(path):
            path = os.path.join(base or os.getcwd(), path)
        return path
    if base is not None:
        return os.path.join(base, STATE_FILE)
    state = environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "llamaswap", STATE_FILE)


def basePlanner(config: Any, planner: object) -> object:
    """
    @return: the strategy memory refines: C{planner}, or L{NoEviction} when
        the configuration has neither groups nor a matrix (only the
        implicit default group, which would run one model at a time).
    """
    swap = config.swap
    if isinstance(swap, GroupsConfig) and set(swap.groups) <= {DEFAULT_GROUP}:
        return NoEviction()
    return planner


def pinnedFor(config: Any) -> Dict[str, FrozenSet[str]]:
    """
    @return: target id -> the members of C{persistent} groups other than
        its own (which memory never evicts for it).
    """
    swap = config.swap
    if not isinstance(swap, GroupsConfig):
        return {}
    persistent = {g.id: frozenset(g.members) for g in swap.groups.values() if g.persistent}
    if not persistent:
        return {}
    pinned: Dict[str, FrozenSet[str]] = {}
    for group in swap.groups.values():
        others = frozenset().union(*(m for gid, m in persistent.items() if gid != group.id))
        for member in group.members:
            pinned[member] = others
    return pinned


@attr.s(frozen=True, auto_attribs=True)
class GpuSnapshot:
    """
    What the GPUs hold at one moment.

    @ivar models: model id -> bytes its process group uses, every GPU
        together (only models found on a GPU).
    @ivar devices: GPU index (as text) -> C{(total, used, ours)} bytes,
        C{ours} being what the models' process groups use on it.
    """

    models: Dict[str, int]
    devices: Dict[str, Tuple[int, int, int]]


def snapshot(probe: Any, groups: Mapping[str, int],
             pgidOf: Callable[[int], int] = os.getpgid) -> GpuSnapshot:
    """
    Read the GPUs (blocking: call it in a thread).

    @param probe: an L{IGpuProbe}.
    @param groups: model id -> the process group id of its upstream.
    @param pgidOf: the process group of a pid (raises for a pid gone).
    @return: the L{GpuSnapshot}.
    """
    owner = {pgid: modelId for modelId, pgid in groups.items()}
    models: Dict[str, int] = {}
    ours: Dict[str, int] = {}
    for process in probe.processes():
        try:
            modelId = owner.get(pgidOf(process["pid"]))
        except OSError:
            continue
        if modelId is None:
            continue
        used = int(process["memoryUsed"])
        models[modelId] = models.get(modelId, 0) + used
        gpu = str(process["gpu"])
        ours[gpu] = ours.get(gpu, 0) + used
    devices = {}
    for gpu in probe.sample():
        total, used = gpu.get("memoryTotal"), gpu.get("memoryUsed")
        if isinstance(total, int) and isinstance(used, int):
            index = str(gpu.get("id"))
            devices[index] = (total, used, ours.get(index, 0))
    return GpuSnapshot(models, devices)


class MemoryManager:
    """
    Needs, budgets, learning and the OOM retry of one configuration.

    @ivar budgets: device -> bytes, for the devices whose budget is known
        (a fixed one, or an C{auto} one once read).
    @ivar estimates: model id -> its L{Estimate}, for those estimated.
    """

    log = Logger()

    def __init__(
        self,
        config: Any,
        store: NeedStore,
        probe: Any,
        inThread: Callable[..., Deferred],
        pgidOfModel: Callable[[str], Optional[int]],
        onChange: Callable[[], None] = lambda: None,
        previous: Optional["MemoryManager"] = None,
        estimate: Callable[..., Tuple[Estimate, str]] = estimateCommand,
        pgidOf: Callable[[int], int] = os.getpgid,
        clock: Optional[IReactorTime] = None,
        remeasureAfter: float = REMEASURE_AFTER,
    ) -> None:
        """
        @param config: the L{llamaswap.config.Config}; its C{memory} is set.
        @param store: the learned needs.
        @param probe: an L{IGpuProbe} with C{processes()}.
        @param inThread: C{inThread(f, *args)} runs C{f} in a thread and
            returns a L{Deferred} of its result.
        @param pgidOfModel: the process group id of a model's upstream (its
            pid), or L{None}.
        @param onChange: called when a need or a budget changed (the UI's
            model list is then published again).
        @param previous: the manager of the configuration this one replaces
            (a reload): its estimates for unchanged commands, its budgets
            and the live models are carried over.
        @param clock: schedules the second measurement of a loaded model,
            C{remeasureAfter} seconds after it became ready (memory that is
            allocated on first use, such as cuBLAS workspaces); without it
            a model is measured once per load.
        """
        self.config = config
        self.memory: MemoryConfig = config.memory
        self.store = store
        self._probe = probe
        self._inThread = inThread
        self._pgidOfModel = pgidOfModel
        self._onChange = onChange
        self._estimate = estimate
        self._pgidOf = pgidOf
        self.budgets: Dict[str, int] = {
            d: b for d, b in self.memory.budgets.items() if b != AUTO}
        self.estimates: Dict[str, Estimate] = {}
        self._estimatedCmd: Dict[str, str] = {}
        self._states: Dict[str, str] = {}
        self._planned: Dict[str, int] = {}
        self._also: Dict[str, FrozenSet[str]] = {}
        self._lastUsed: Dict[str, float] = {}
        self._busy: FrozenSet[str] = frozenset()
        self._retried: Set[str] = set()
        self._pinned = pinnedFor(config)
        self._devices = {m: self.memory.model(m).device for m in config.models}
        self._started: Optional[Deferred[None]] = None
        self._clock = clock
        self._remeasureAfter = remeasureAfter
        self._remeasures: Dict[str, IDelayedCall] = {}
        self._autoWarned = False
        if previous is not None:
            for modelId, model in config.models.items():
                if previous._estimatedCmd.get(modelId) == model.cmd:
                    self.estimates[modelId] = previous.estimates[modelId]
                    self._estimatedCmd[modelId] = model.cmd
            for device, budget in previous.budgets.items():
                if self.memory.budgets.get(device) == AUTO:
                    self.budgets[device] = budget
            self._states = {m: s for m, s in previous._states.items() if m in config.models}

    # -- needs ----------------------------------------------------------------

    def need(self, modelId: str) -> Tuple[Optional[int], str]:
        """
        @return: C{(bytes, source)}: source C{declared}, C{learned},
            C{estimated}, or C{(None, "unknown")}.
        """
        declared = self.memory.model(modelId).need
        if declared is not None:
            return declared, "declared"
        model = self.config.models.get(modelId)
        if model is not None:
            learned = self.store.get(modelId, model.cmd)
            if learned is not None:
                return learned, "learned"
        estimate = self.estimates.get(modelId)
        if estimate is not None:
            return estimate.total, "estimated"
        return None, "unknown"

    def needs(self) -> Dict[str, int]:
        """
        @return: model id -> bytes, for every model whose need is known.
        """
        out = {}
        for modelId in self.config.models:
            need, _ = self.need(modelId)
            if need is not None:
                out[modelId] = need
        return out

    def budgetLeft(self, device: str) -> Optional[int]:
        """
        @return: the budget of C{device} less the needs of its live models
            (negative when over budget), or L{None} without a known budget.
        """
        budget = self.budgets.get(device)
        if budget is None:
            return None
        used = 0
        for modelId, state in self._states.items():
            if state in LIVE and self._devices.get(modelId) == device:
                need, _ = self.need(modelId)
                used += budget if need is None else need
        return budget - used

    def record(self, modelId: str) -> Dict[str, Any]:
        """
        @return: the C{memory} field of C{modelId}'s C{/running} entry and
            C{modelStatus} record: C{needBytes} (L{None} when unknown),
            C{source} and C{budgetLeftBytes} (of its device; L{None} while
            the budget is unknown).
        """
        need, source = self.need(modelId)
        return {"needBytes": need, "source": source,
                "budgetLeftBytes": self.budgetLeft(self._devices.get(modelId, "0"))}

    # -- planning ---------------------------------------------------------------

    def situation(self, busy: Iterable[str] = (), leaving: Iterable[str] = (),
                  lastUsed: Optional[Mapping[str, float]] = None) -> MemorySituation:
        """
        @return: the L{MemorySituation} of this moment.
        """
        return MemorySituation(
            needs=self.needs(), budgets=dict(self.budgets), devices=self._devices,
            busy=frozenset(busy), leaving=frozenset(leaving),
            lastUsed=dict(lastUsed or {}), pinned=self._pinned, also=dict(self._also))

    def plannerFor(self, planner: object, views: Mapping[str, Any],
                   wanted: Iterable[str] = ()) -> object:
        """
        The planner the scheduler is given for one plan.

        @param planner: the configured strategy's L{ISwapPlanner}.
        @param views: model id -> its scheduler view (C{state},
            C{inFlight}, C{idleSince}).
        @param wanted: the models that requests wait for (a C{starting}
            one of those is busy).
        @return: an L{ISwapPlanner}: C{planner}'s evictions, then memory's.
        """
        wanted = frozenset(wanted)
        busy = [m for m, v in views.items()
                if (v.state == "ready" and v.inFlight > 0)
                or (v.state == "starting" and m in wanted)]
        leaving = [m for m, v in views.items() if v.state == "stopping"]
        lastUsed = {m: v.idleSince for m, v in views.items() if v.idleSince is not None}
        self._lastUsed, self._busy = lastUsed, frozenset(busy)
        return ISwapPlanner(MemorySwap(basePlanner(self.config, planner),
                                       self.situation(busy, leaving, lastUsed)))

    # -- the start: estimates and budgets -------------------------------------

    def start(self) -> Deferred[None]:
        """
        Load the learned needs, estimate every model that has no declared
        need (and no estimate carried over), and read the C{auto} budgets;
        all in threads.  Idempotent.

        @return: a L{Deferred} that fires with L{None} when done; never fails
            (what fails is logged).
        """
        if self._started is not None:
            return self._started
        work: List[Deferred[Any]] = [] if self.store.loaded else [self.store.load()]
        for modelId, model in self.config.models.items():
            if self.memory.model(modelId).need is None and modelId not in self.estimates:
                work.append(self._inThread(self._estimate, model.argv, self.memory.overhead)
                            .addCallbacks(self._estimated, self._notEstimated,
                                          callbackArgs=(modelId, model.cmd),
                                          errbackArgs=(modelId,)))
        work.append(self.refresh())
        self._started = gatherResults(work, consumeErrors=True).addCallback(self._ready)
        return self._started

    def _estimated(self, result: Tuple[Estimate, str], modelId: str, cmd: str) -> None:
        estimate, path = result
        self.estimates[modelId] = estimate
        self._estimatedCmd[modelId] = cmd
        self.log.info("[{model}] memory: estimated {need} from {path}: {detail}",
                      model=modelId, need=formatBytes(estimate.total), path=path,
                      detail=estimate.describe())

    def _notEstimated(self, failure: Any, modelId: str) -> None:
        why = failure.getErrorMessage() if failure.check(EstimateError) else repr(failure.value)
        self.log.info("[{model}] memory: no estimate ({why}); until it is learned it counts "
                      "as needing its device's whole budget", model=modelId, why=why)

    def _ready(self, _: object) -> None:
        for modelId in self.config.models:
            need, source = self.need(modelId)
            if need is not None:
                self.log.debug("[{model}] memory: needs {need} ({source})", model=modelId,
                               need=formatBytes(need), source=source)
        self._onChange()

    def _groups(self) -> Dict[str, int]:
        groups = {}
        for modelId, state in self._states.items():
            pgid = self._pgidOfModel(modelId) if state in LIVE else None
            if pgid:
                groups[modelId] = pgid
        return groups

    def refresh(self) -> Deferred[Optional[GpuSnapshot]]:
        """
        Read the GPUs in a thread and update the C{auto} budgets.

        @return: a L{Deferred} that fires with the L{GpuSnapshot}, or with
            L{None} when the GPUs could not be read (logged); never fails.
        """
        d = self._inThread(snapshot, self._probe, self._groups(), self._pgidOf)
        d.addCallback(self._budgetsFrom)
        d.addErrback(self._probeFailed)
        return d

    def _probeFailed(self, failure: Any) -> None:
        self.log.warn("memory: cannot read the GPUs: {why}", why=failure.getErrorMessage())
        return None

    def _budgetsFrom(self, snap: GpuSnapshot) -> GpuSnapshot:
        changed = False
        for device, budget in self.memory.budgets.items():
            if budget != AUTO:
                continue
            reading = snap.devices.get(device)
            if reading is None:
                if not self._autoWarned:
                    self._autoWarned = True
                    self.log.warn("memory: device {device} cannot be read (no GPU, or NVML "
                                  "unavailable): its 'auto' budget is unknown, so memory "
                                  "does not limit it", device=device)
                continue
            total, used, ours = reading
            value = max(0, total - max(0, used - ours) - self.memory.margin)
            if self.budgets.get(device) != value:
                if device not in self.budgets:
                    self.log.info("memory: device {device} budget {budget} (auto: total {total}, "
                                  "others use {others}, margin {margin})", device=device,
                                  budget=formatBytes(value), total=formatBytes(total),
                                  others=formatBytes(max(0, used - ours)),
                                  margin=formatBytes(self.memory.margin))
                self.budgets[device] = value
                changed = True
        if changed:
            self._onChange()
        return snap

    # -- learning ---------------------------------------------------------------

    def stateChanged(self, modelId: str, new: str) -> Optional[Deferred[None]]:
        """
        Hear an upstream state change.  At C{starting} the need used for
        planning is noted; at C{ready} the out-of-memory retry is over and
        (with C{memory.learn}) the real usage is measured and learned.

        @return: the L{Deferred} of the measurement (fires with L{None};
            never fails), or L{None} when nothing is measured.
        """
        self._states[modelId] = new
        pending = self._remeasures.pop(modelId, None)
        if pending is not None and pending.active():
            pending.cancel()
        if new == "starting":
            need, _ = self.need(modelId)
            if need is not None:
                self._planned[modelId] = need
        if new in ("stopped", "failed"):
            self._onChange()
        if new != "ready":
            return None
        self._also.pop(modelId, None)
        self._retried.discard(modelId)
        if not self.memory.learn:
            self._onChange()
            return None
        if self._clock is not None:
            self._remeasures[modelId] = self._clock.callLater(
                self._remeasureAfter, self._remeasure, modelId)
        return self.refresh().addCallback(self._measured, modelId)

    def _remeasure(self, modelId: str) -> None:
        self._remeasures.pop(modelId, None)
        if self._states.get(modelId) == "ready":
            self.refresh().addCallback(self._measured, modelId)

    def stop(self) -> None:
        """
        Cancel the measurements still scheduled (the daemon stops, or a
        reload replaced this manager).
        """
        for call in self._remeasures.values():
            if call.active():
                call.cancel()
        self._remeasures.clear()

    def _measured(self, snap: Optional[GpuSnapshot], modelId: str) -> None:
        if snap is None or modelId not in snap.models:
            self._onChange()
            return
        self.learnt(modelId, snap.models[modelId])

    def learnt(self, modelId: str, used: int) -> None:
        """
        C{modelId}'s processes were measured using C{used} bytes after a
        load.  An estimate is replaced by what was measured; a learned need
        only grows (it is the peak over loads); a declared need is kept,
        with a warning when it was exceeded.  A correction upwards is
        logged as a warning.
        """
        model = self.config.models.get(modelId)
        if model is None or used <= 0:
            return
        need, source = self.need(modelId)
        planned = self._planned.get(modelId, need)
        if source == "declared":
            if need is not None and used > need:
                self.log.warn("[{model}] memory: used {used} on the GPU, more than the "
                              "declared {need}; the declared need is kept (raise it in "
                              "memory.models)", model=modelId, used=formatBytes(used),
                              need=formatBytes(need))
            return
        if source == "learned" and need is not None and used <= need:
            return
        if planned is not None and used > planned:
            self.log.warn("[{model}] memory: used {used} on the GPU, more than the {source} "
                          "{need} planned with; learned {used}", model=modelId,
                          used=formatBytes(used), source=source, need=formatBytes(planned),
                          usedBytes=used, plannedBytes=planned)
        else:
            self.log.info("[{model}] memory: learned {used} (was {source} {need})",
                          model=modelId, used=formatBytes(used), source=source,
                          need="?" if planned is None else formatBytes(planned), usedBytes=used)
        self.store.learn(modelId, model.cmd, used)
        self._onChange()

    # -- the out-of-memory retry ------------------------------------------------

    def retryAfterOom(self, modelId: str, lines: Iterable[str]) -> bool:
        """
        A start of C{modelId} failed with C{lines} as its last output.

        @return: C{True} when that output reports an out-of-memory error,
            this model's start was not already retried for it, and another
            live model of its device may be evicted: its next plans then
            evict that model too (the least recently used idle one, else a
            busy one once it drains) and its waiters should keep waiting
            (the retry).  C{False} otherwise (the failure stands; a retried
            start that fails again ends the retry).
        """
        if modelId in self._retried:
            self._retried.discard(modelId)
            self._also.pop(modelId, None)
            return False
        line = outOfMemoryLine(lines)
        if line is None:
            return False
        device = self._devices.get(modelId)
        pinned = self._pinned.get(modelId, frozenset())
        others = sorted(
            (m for m, s in self._states.items()
             if s in ("starting", "ready") and m != modelId and m not in pinned
             and self._devices.get(m) == device),
            key=lambda m: (m in self._busy, self._lastUsed.get(m, float("inf")), m))
        if not others:
            self.log.warn("[{model}] memory: the start ran out of memory ({line}) and no other "
                          "model can make room", model=modelId, line=line)
            return False
        self._retried.add(modelId)
        self._also[modelId] = frozenset(others[:1])
        self.log.warn("[{model}] memory: the start ran out of memory ({line}); retrying once "
                      "with one more model evicted ({evicted})", model=modelId, line=line,
                      evicted=others[0])
        return True
