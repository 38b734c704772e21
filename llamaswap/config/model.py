# -*- test-case-name: tests.test_config -*-
"""
The validated configuration: frozen L{attr.s} classes, built only by
L{llamaswap.config.loader}.

Mappings are plain L{dict}s (treat them as read-only), sequences are
L{tuple}s.  Every value here is already I{effective}: defaults applied,
macros substituted, ports allocated.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Dict, FrozenSet, Optional, Tuple, Union

import attr
from zope.interface import implementer

from llamaswap.interfaces import IGroupsConfig, IMatrixConfig

DEFAULT_GROUP = "(default)"
"""
The id of the implicit group that holds every model not in a configured
group.
"""

Scalar = Union[str, int, float, bool]
MacroList = Tuple[Tuple[str, Scalar], ...]


@attr.s(frozen=True, auto_attribs=True)
class TimeoutsConfig:
    """
    Upstream transport timeouts, in seconds; C{0} disables one
    (C{responseHeader=0} means no limit).

    @ivar responseHeader: from the request sent to the upstream's status
        line and headers; past it the client gets a 504.
    @ivar responseIdle: (llamaswap's own) the longest the upstream may stay
        silent, before its headers (a 504) and between body bytes (the
        client's connection is cut); generous by default, for slow first
        tokens of big models.
    """

    connect: int = 30
    keepalive: int = 30
    responseHeader: int = 0
    tlsHandshake: int = 10
    expectContinue: int = 1
    idleConn: int = 90
    responseIdle: int = 600


@attr.s(frozen=True, auto_attribs=True)
class PerformanceConfig:
    """
    The system/GPU monitor.

    @ivar disabled: no monitor at all (C{/metrics} and C{/api/performance}
        answer 503).
    @ivar every: the poll interval in seconds, at least 5.
    """

    disabled: bool = False
    every: float = 5.0


@attr.s(frozen=True, auto_attribs=True)
class HooksConfig:
    """
    @ivar preload: model ids to load at every server build, in order:
        already trimmed, blanks dropped, aliases resolved, unknown names
        dropped.
    """

    preload: Tuple[str, ...] = ()


@attr.s(frozen=True, auto_attribs=True)
class FiltersConfig:
    """
    Request body rewriting.

    @ivar stripParams: JSON keys to remove: trimmed, de-duplicated, sorted,
        never C{model}.
    @ivar setParams: keys to set (any JSON value), in sorted key order, never
        C{model}.
    @ivar setParamsByID: requested name -> keys to set after C{setParams}
        (each inner mapping sorted, never C{model}).  Always empty for peers.
    """

    stripParams: Tuple[str, ...] = ()
    setParams: Dict[str, Any] = attr.Factory(dict)
    setParamsByID: Dict[str, Dict[str, Any]] = attr.Factory(dict)


@attr.s(frozen=True, auto_attribs=True)
class ModelConfig:
    """
    One upstream model, with every value effective.

    @ivar id: the model id (may contain C{/}).
    @ivar cmd: the start command after macro and port substitution, with
        C{#} comment lines removed and trailing-C{\\} continuation lines
        joined.
    @ivar argv: C{cmd} split into words (POSIX rules); empty when C{cmd} is
        empty, which is a start error (C{empty command}), not a load error.
    @ivar cmdStop: the stop command, macros substituted except C{${PID}}
        which is left for stop time; C{""} for "send SIGTERM".
    @ivar cmdStopArgv: C{cmdStop} split into words; empty when there is none
        or it cannot be split (then SIGTERM is used).
    @ivar proxy: the upstream base URL.
    @ivar aliases: explicit aliases, then the C{filters.setParamsByID} keys
        that act as aliases (those other than C{id} and not already listed).
    @ivar env: C{(NAME, value)} pairs appended to the inherited environment.
    @ivar checkEndpoint: the readiness path, or L{None} for "no check".
    @ivar ttl: idle seconds before unloading; C{0} never.
    @ivar concurrencyLimit: maximum concurrent requests (default 10).
    @ivar macros: this model's own macros, in file order.
    @ivar sendLoadingState: whether to stream loading progress.
    @ivar unloadTimeout: seconds between asking the process to stop and
        killing it.
    @ivar port: the port allocated for C{${PORT}}, if C{cmd} used it.
    @ivar loadFile: the file whose bytes the upstream brings in while it
        loads (C{loadFile:}), for load progress; L{None} means the file
        C{cmd} names with C{-m}/C{--model}.
    """

    id: str
    cmd: str = ""
    argv: Tuple[str, ...] = ()
    cmdStop: str = ""
    cmdStopArgv: Tuple[str, ...] = ()
    proxy: str = ""
    aliases: Tuple[str, ...] = ()
    env: Tuple[Tuple[str, str], ...] = ()
    checkEndpoint: Optional[str] = "/health"
    ttl: int = 0
    unlisted: bool = False
    useModelName: str = ""
    name: str = ""
    description: str = ""
    metadata: Dict[str, Any] = attr.Factory(dict)
    concurrencyLimit: int = 10
    filters: FiltersConfig = attr.Factory(FiltersConfig)
    macros: MacroList = ()
    sendLoadingState: bool = False
    timeouts: TimeoutsConfig = attr.Factory(TimeoutsConfig)
    unloadTimeout: int = 10
    port: Optional[int] = None
    loadFile: Optional[str] = None


@attr.s(frozen=True, auto_attribs=True)
class GroupConfig:
    """
    A legacy swap group (SPEC.md section 2.5).

    @ivar members: real model ids, in file order (sorted for
        L{DEFAULT_GROUP}).
    """

    id: str
    swap: bool = True
    exclusive: bool = True
    persistent: bool = False
    members: Tuple[str, ...] = ()


@implementer(IGroupsConfig)
@attr.s(frozen=True, auto_attribs=True)
class GroupsConfig:
    """
    Swap configuration made of groups.  Every model is a member of exactly
    one group; models in no configured group are in L{DEFAULT_GROUP}, which
    is always present.
    """

    groups: Dict[str, GroupConfig] = attr.Factory(dict)

    @cached_property
    def _groupIndex(self) -> Dict[str, GroupConfig]:
        return {member: group for group in self.groups.values() for member in group.members}

    def groupOf(self, modelId: str) -> GroupConfig:
        """
        @return: the group of the model C{modelId}.
        @raise KeyError: for an id that is not a configured model.
        """
        return self._groupIndex[modelId]


@attr.s(frozen=True, auto_attribs=True)
class ExpandedSet:
    """
    One combination of models that may run together (SPEC.md section 2.6).

    @ivar name: the set it came from.
    @ivar dsl: that set's DSL text.
    @ivar varIds: the var ids of the combination, sorted and de-duplicated.
    @ivar models: the real model ids.
    """

    name: str
    dsl: str
    varIds: Tuple[str, ...]
    models: FrozenSet[str]


@implementer(IMatrixConfig)
@attr.s(frozen=True, auto_attribs=True)
class MatrixConfig:
    """
    Swap configuration made of a matrix (SPEC.md section 2.6).

    @ivar vars: var id -> real model id.
    @ivar evictCosts: var id -> cost (> 0); unlisted vars cost 1.
    @ivar sets: set name -> DSL text, in file order.
    @ivar expanded: every combination, in the solver's tie-break order.
    """

    vars: Dict[str, str] = attr.Factory(dict)
    evictCosts: Dict[str, int] = attr.Factory(dict)
    sets: Dict[str, str] = attr.Factory(dict)
    expanded: Tuple[ExpandedSet, ...] = ()

    @property
    def matrix(self) -> "MatrixConfig":
        """
        This object itself (the attribute L{IMatrixConfig} declares).
        """
        return self

    @cached_property
    def _modelCosts(self) -> Dict[str, int]:
        costs: Dict[str, int] = {}
        for varId, modelId in self.vars.items():
            cost = self.evictCosts.get(varId, 1)
            costs[modelId] = max(cost, costs.get(modelId, 1))
        return costs

    def evictCost(self, varOrModel: str) -> int:
        """
        @param varOrModel: a var id or a real model id.

        @return: the cost of evicting it: its C{evict_costs} entry, else 1.
            A model named by several vars costs the highest of theirs.
        """
        if varOrModel in self.vars:
            return self.evictCosts.get(varOrModel, 1)
        return self._modelCosts.get(varOrModel, 1)


@attr.s(frozen=True, auto_attribs=True)
class PeerConfig:
    """
    A remote llama-swap (or OpenAI-compatible server) forwarded to without
    process management.

    @ivar models: model names served by the peer, as listed.
    @ivar apiKey: sent as C{Authorization: Bearer} and C{x-api-key}; C{""}
        for none.
    """

    id: str
    proxy: str
    models: Tuple[str, ...] = ()
    apiKey: str = ""
    filters: FiltersConfig = attr.Factory(FiltersConfig)
    timeouts: TimeoutsConfig = attr.Factory(lambda: TimeoutsConfig(responseHeader=60))


@attr.s(frozen=True, auto_attribs=True)
class Config:
    """
    A whole validated configuration file.

    @ivar models: model id -> L{ModelConfig}, sorted by id.
    @ivar swap: L{GroupsConfig} or L{MatrixConfig}.
    @ivar peers: peer id -> L{PeerConfig}, sorted by id.
    @ivar macros: the global macros, in file order.
    @ivar maxRequestBodyMB: the cap on request bodies (llamaswap's own key).
    @ivar maxQueueWait: seconds the oldest waiting request may wait for its
        model while loaded models keep taking new requests; past it, the
        models blocking its swap stop taking new requests, drain, and are
        swapped out.  C{0} means no bound (llamaswap's own key).
    @ivar shutdownTimeout: seconds a shutdown (SIGTERM) lets requests in
        flight, and requests waiting for a model, finish before every
        upstream is stopped (llamaswap's own key).
    @ivar maxConnections: the cap on concurrent client connections, over
        every listener; C{0} derives it from the open-files limit at start
        (llamaswap's own key).
    @ivar warnings: unknown keys and other things worth logging at load.
    """

    healthCheckTimeout: int = 120
    shutdownTimeout: int = 10
    logLevel: str = "info"
    logTimeFormat: str = ""
    logToStdout: str = "proxy"
    metricsMaxInMemory: int = 1000
    captureBuffer: int = 5
    performance: PerformanceConfig = attr.Factory(PerformanceConfig)
    startPort: int = 5800
    globalTTL: int = 0
    unloadTimeout: int = 10
    sendLoadingState: bool = False
    includeAliasesInList: bool = False
    maxRequestBodyMB: int = 64
    maxQueueWait: int = 30
    maxConnections: int = 0
    macros: MacroList = ()
    models: Dict[str, ModelConfig] = attr.Factory(dict)
    swap: Union[GroupsConfig, MatrixConfig] = attr.Factory(
        lambda: GroupsConfig({DEFAULT_GROUP: GroupConfig(DEFAULT_GROUP)})
    )
    hooks: HooksConfig = attr.Factory(HooksConfig)
    apiKeys: Tuple[str, ...] = ()
    peers: Dict[str, PeerConfig] = attr.Factory(dict)
    warnings: Tuple[str, ...] = ()
    #: the C{memory} section (L{llamaswap.config.memory.MemoryConfig}), or
    #: L{None} when absent.
    memory: Optional[Any] = None

    @cached_property
    def _aliasIndex(self) -> Dict[str, str]:
        index: Dict[str, str] = {}
        for model in self.models.values():
            for alias in model.aliases:
                index.setdefault(alias, model.id)
            for key in model.filters.setParamsByID:
                index.setdefault(key, model.id)
        return index

    def resolve(self, name: str) -> Optional[str]:
        """
        @return: the real model id C{name} stands for (exact id first, then
            aliases, including C{filters.setParamsByID} keys), or L{None}.
        """
        if name in self.models:
            return name
        return self._aliasIndex.get(name)

    def model(self, name: str) -> Optional[ModelConfig]:
        """
        @return: the L{ModelConfig} C{name} resolves to, or L{None}.
        """
        modelId = self.resolve(name)
        return None if modelId is None else self.models[modelId]
