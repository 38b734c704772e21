# -*- test-case-name: tests.test_memory_config -*-
"""
The C{memory} section: the memory-aware swap planner's settings.

    memory:
      budget: 22GiB          # device 0's budget: bytes, or "auto"
      devices:               # or one budget per GPU index
        0: auto
        1: 20GiB
      margin: 1GiB           # kept free on "auto" devices
      overhead: 256MiB       # runtime allowance added to each estimate
      learn: true            # learn real usage after each load (NVML)
      stateFile: memory-state.json   # relative to the config file
      models:                # declared needs (win over learned/estimated)
        big: 20GiB
        vision: {need: 6GiB, device: 1}

Sizes are integers (bytes) or a number with a unit: C{B}, C{KB}/C{MB}/
C{GB}/C{TB} (powers of 1000), C{KiB}/C{MiB}/C{GiB}/C{TiB} or C{K}/C{M}/
C{G}/C{T} (powers of 1024).  C{auto} reads the device through the GPU
probe: its total memory, minus what processes other than llamaswap's
models use, minus C{margin}.

Without the section (or with no budget in it) the planner is not used.
Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional, Tuple

import attr
from yaml.nodes import MappingNode, Node

from llamaswap.config.errors import ConfigError
from llamaswap.config.nodes import Section, childPath, describe, line, plain

__all__ = ["AUTO", "MemoryConfig", "ModelMemory", "parseMemory", "parseSize"]

#: The budget that is read from the GPU.
AUTO = "auto"

_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "tb": 1000 ** 4,
    "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4,
    "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3, "tib": 1024 ** 4,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parseSize(value: Any) -> int:
    """
    @param value: an integer (bytes) or a text such as C{"1.5GiB"}.
    @return: the size in bytes.
    @raise ValueError: for anything else (negative sizes included).
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 8GiB, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative, got {value}")
        return value
    match = _SIZE.match(str(value)) if isinstance(value, (str, float)) else None
    if match is None or match.group(2).lower() not in _UNITS:
        raise ValueError(f"expected a size such as 8GiB, got {value!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


@attr.s(frozen=True, auto_attribs=True)
class ModelMemory:
    """
    @ivar need: the declared need in bytes, or L{None}.
    @ivar device: the device its memory is counted on.
    """

    need: Optional[int] = None
    device: str = "0"


@attr.s(frozen=True, auto_attribs=True)
class MemoryConfig:
    """
    The validated C{memory} section.

    @ivar budgets: device -> bytes, or L{AUTO}; in file order.
    @ivar models: model id -> its L{ModelMemory} (only those listed).
    @ivar stateFile: the learned-needs file as written (relative to the
        config file's directory), or C{""} for the default.
    """

    budgets: Dict[str, Any] = attr.Factory(dict)
    margin: int = 1024 ** 3
    overhead: int = 256 * 1024 ** 2
    learn: bool = True
    stateFile: str = ""
    models: Dict[str, ModelMemory] = attr.Factory(dict)

    @property
    def defaultDevice(self) -> str:
        return next(iter(self.budgets), "0")

    def model(self, modelId: str) -> ModelMemory:
        """
        @return: the L{ModelMemory} of C{modelId} (defaults when unlisted).
        """
        return self.models.get(modelId) or ModelMemory(device=self.defaultDevice)


def _size(sec: Section, key: str, node: Node, value: Any, allowAuto: bool = False) -> Any:
    if allowAuto and isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        return parseSize(value)
    except ValueError as e:
        raise ConfigError(childPath(sec.path, key), f"memory: {e}", line(node)) from None


def _budgets(sec: Section) -> Dict[str, Any]:
    budgets: Dict[str, Any] = {}
    budget = sec.raw("budget")
    if budget is not None:
        budgets["0"] = _size(sec, "budget", budget, plain(budget, sec.childPath("budget")), True)
    devices = sec.raw("devices")
    if devices is not None:
        if not isinstance(devices, MappingNode):
            raise sec.error("devices", f"expected a mapping of GPU index to budget, got "
                            f"{describe(devices)}", devices)
        inner = sec.section("devices")
        for entry, _, valueNode in inner.entries():
            key: Any = entry
            if not key.isdigit():
                raise inner.error(key, f"memory: a device is a GPU index, got {key!r}")
            budgets[str(int(key))] = _size(
                inner, key, valueNode, plain(valueNode, inner.childPath(key)), True)
    return budgets


def _models(sec: Section, known: Mapping[str, Any], budgets: Mapping[str, Any]
            ) -> Dict[str, ModelMemory]:
    default = next(iter(budgets), "0")
    result: Dict[str, ModelMemory] = {}
    inner = sec.section("models")
    for modelId, _, valueNode in inner.entries():
        if modelId not in known:
            raise inner.error(modelId, f"memory: {modelId!r} is not a configured model")
        value = plain(valueNode, inner.childPath(modelId))
        if isinstance(value, Mapping):
            entry = inner.section(modelId)
            need = entry.raw("need")
            device = entry.str("device", default).strip()
            if device not in budgets:
                raise entry.error("device", f"memory: device {device!r} has no budget")
            entry.finish()
            result[modelId] = ModelMemory(
                None if need is None else _size(entry, "need", need, value.get("need")),
                device)
        else:
            result[modelId] = ModelMemory(_size(inner, modelId, valueNode, value), default)
    return result


def parseMemory(sec: Section, models: Mapping[str, Any]) -> Optional[MemoryConfig]:
    """
    Read the C{memory} section.

    @param sec: the section (empty when absent).
    @param models: the configured models, by id.
    @return: the L{MemoryConfig}, or L{None} when the section is absent.
    @raise ConfigError: for a value that is not a size, an unknown model or
        device, or models listed without any budget.
    """
    if sec.node is None:
        return None
    budgets = _budgets(sec)
    sizes: Dict[str, int] = {}
    for key, default in (("margin", 1024 ** 3), ("overhead", 256 * 1024 ** 2)):
        node = sec.raw(key)
        sizes[key] = default if node is None else _size(
            sec, key, node, plain(node, sec.childPath(key)))
    learn = sec.bool("learn", True)
    stateFile = sec.str("stateFile", "").strip()
    declared: Tuple[Any, ...] = tuple(sec.section("models").keys())
    if declared and not budgets:
        raise sec.error("budget", "memory: needs are declared but no budget is set "
                        "(memory.budget or memory.devices)")
    perModel = _models(sec, models, budgets)
    sec.finish()
    return MemoryConfig(budgets=budgets, margin=sizes["margin"], overhead=sizes["overhead"],
                        learn=learn, stateFile=stateFile, models=perModel)
