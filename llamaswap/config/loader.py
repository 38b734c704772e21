"""
Loading a configuration file: YAML text -> validated L{Config} (SPEC.md
section 2).

Pure: no reactor, and no I/O except reading the file in L{loadConfig}.
"""

from __future__ import annotations

import os
import re
import shlex
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple
from urllib.parse import urlsplit

from yaml.nodes import MappingNode, Node, ScalarNode

from llamaswap.config.durations import formatDuration, parseDuration
from llamaswap.config.errors import ConfigError
from llamaswap.config.macros import (
    leftoverInData,
    leftoverInText,
    mergeMacros,
    substituteData,
    substituteEnvMacros,
    substituteOne,
    substituteText,
    validateMacro,
)
from llamaswap.config.matrix import MatrixSetError, expandSets
from llamaswap.config.memory import parseMemory
from llamaswap.config.model import (
    DEFAULT_GROUP,
    Config,
    ExpandedSet,
    FiltersConfig,
    GroupConfig,
    GroupsConfig,
    HooksConfig,
    MacroList,
    MatrixConfig,
    ModelConfig,
    PeerConfig,
    PerformanceConfig,
    TimeoutsConfig,
)
from llamaswap.config.nodes import (
    Section,
    childPath,
    compose,
    describe,
    indexPath,
    isNull,
    line,
    nodeAt,
    plain,
)

DEFAULT_PROXY = "http://localhost:${PORT}"
LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_TO_STDOUT = ("proxy", "upstream", "both", "none")
LOG_TIME_FORMATS = (
    "ansic",
    "unixdate",
    "rubydate",
    "rfc822",
    "rfc822z",
    "rfc850",
    "rfc1123",
    "rfc1123z",
    "rfc3339",
    "rfc3339nano",
    "kitchen",
    "stamp",
    "stampmilli",
    "stampmicro",
    "stampnano",
)
PROFILES_WARNING = (
    "Profile functionality has been removed in favor of Groups. "
    "See the README for more information."
)
PROTECTED_PARAMS = ("model",)
MIN_PERFORMANCE_EVERY_NS = 5_000_000_000
VAR_KEY = re.compile(r"^[a-zA-Z0-9]{1,8}$")
TIMEOUT_KEYS = (
    "connect", "keepalive", "responseHeader", "tlsHandshake", "expectContinue", "idleConn",
    "responseIdle",
)


def loadConfig(
    path: str,
    environ: Optional[Mapping[str, str]] = None,
    ports: Optional[Mapping[str, int]] = None,
) -> Config:
    """
    Read and validate the configuration file at C{path}.

    @param environ: the environment for C{${env.NAME}} macros; defaults to
        L{os.environ}.
    @param ports: model id -> the C{${PORT}} it had (a reload keeps them);
        other models get ports none of these use.

    @raise ConfigError: for the first problem found, including an unreadable
        file (C{cannot read <path>: <reason>}).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
        text = data.decode("utf-8")
    except OSError as e:
        raise ConfigError("", f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError("", f"cannot read {path}: not UTF-8 text ({e.reason})") from None
    return loadConfigText(text, environ, ports)


def loadConfigText(
    text: str,
    environ: Optional[Mapping[str, str]] = None,
    ports: Optional[Mapping[str, int]] = None,
) -> Config:
    """
    Validate configuration text.

    @param environ: the environment for C{${env.NAME}} macros; defaults to
        L{os.environ}.
    @param ports: as for L{loadConfig}.

    @raise ConfigError: for the first problem found.
    """
    if environ is None:
        environ = os.environ
    text = substituteEnvMacros(text, environ)
    return _Builder(ports).build(compose(text))


class _Ports:
    """
    Hands out C{${PORT}} values from C{startPort} in model order; a model
    with a port of its own (kept across a reload) gets it back, and nobody
    else gets one of those.
    """

    def __init__(self, startPort: int, kept: Optional[Mapping[str, int]]) -> None:
        self.next = startPort
        self.kept = dict(kept or {})
        self.reserved = set(self.kept.values())

    def take(self, modelId: str) -> int:
        if modelId in self.kept:
            return self.kept[modelId]
        while self.next in self.reserved:
            self.next += 1
        port = self.next
        self.next += 1
        return port


def sanitizeCommand(text: str) -> str:
    """
    @return: C{text} without C{#} comment lines, with every line ending in
        C{\\} joined to the next by one space, and trimmed.
    """
    logical: List[str] = []
    pending: List[str] = []
    for raw in text.split("\n"):
        stripped = raw.strip()
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            piece = stripped[:-1].strip()
            if piece:
                pending.append(piece)
            continue
        if pending:
            if stripped:
                pending.append(stripped)
            logical.append(" ".join(pending))
            pending = []
        else:
            logical.append(raw)
    if pending:
        logical.append(" ".join(pending))
    return "\n".join(logical).strip()


def sanitizeStripParams(text: str) -> Tuple[str, ...]:
    """
    @return: the names of a comma list, trimmed, de-duplicated and sorted,
        without blanks and C{model}.
    """
    names = {part.strip() for part in text.split(",")}
    return tuple(sorted(n for n in names if n and n not in PROTECTED_PARAMS))


def _sanitizeParams(params: Mapping[str, Any]) -> Dict[str, Any]:
    return {key: params[key] for key in sorted(params) if key not in PROTECTED_PARAMS}


def _urlProblem(url: str) -> Optional[str]:
    """
    @return: why C{url} is not a usable http(s) base URL, or L{None}.
    """
    try:
        parts = urlsplit(url)
        parts.port
    except ValueError as e:
        return f'parse "{url}": {e}'
    if parts.scheme not in ("http", "https"):
        return f'parse "{url}": expected an http or https URL'
    if not parts.hostname:
        return f'parse "{url}": missing host'
    return None


def _split(text: str) -> Tuple[str, ...]:
    return tuple(shlex.split(text, posix=True)) if text else ()


def _wherePath(base: str, where: Sequence[Any]) -> str:
    path = base
    for part in where:
        path = indexPath(path, part) if isinstance(part, int) else childPath(path, part)
    return path


def _unknownMacro(name: str) -> str:
    return "unknown macro '${" + name + "}'"


class _Builder:
    """
    Turns the composed document into a L{Config}, collecting warnings.
    """

    def __init__(self, ports: Optional[Mapping[str, int]] = None) -> None:
        self.warnings: List[str] = []
        self.ports = ports

    def section(self, node: Optional[Node], path: str, anchor: Optional[Node] = None) -> Section:
        return Section(node, path, self.warnings, anchor)

    def build(self, root: Optional[Node]) -> Config:
        top = self.section(root, "")

        healthCheckTimeout = top.int("healthCheckTimeout", 120)
        if healthCheckTimeout < 15:
            self.warnings.append(
                f"healthCheckTimeout: {healthCheckTimeout}s is raised to its minimum, 15s")
            healthCheckTimeout = 15
        shutdownTimeout = top.int("shutdownTimeout", 10)
        if shutdownTimeout < 0:
            raise top.error("shutdownTimeout", "shutdownTimeout must be >= 0")

        logLevel = top.str("logLevel", "info").strip().lower()
        if logLevel == "warning":
            logLevel = "warn"
        if logLevel not in LOG_LEVELS:
            logLevel = "info"

        logTimeFormat = top.str("logTimeFormat", "").strip().lower()
        if logTimeFormat not in LOG_TIME_FORMATS:
            logTimeFormat = ""

        logToStdout = top.str("logToStdout", "proxy").strip().lower()
        if logToStdout not in LOG_TO_STDOUT:
            raise top.error("logToStdout", "logToStdout must be one of: proxy, upstream, both, none")

        metricsMaxInMemory = top.int("metricsMaxInMemory", 1000)
        if metricsMaxInMemory <= 0:
            metricsMaxInMemory = 1000

        captureBuffer = max(top.int("captureBuffer", 5), 0)
        performance = self.performance(top.section("performance"))

        startPort = top.int("startPort", 5800)
        if startPort < 1:
            raise top.error("startPort", "startPort must be greater than 1")

        globalTTL = top.int("globalTTL", 0)
        if globalTTL < 0:
            raise top.error("globalTTL", "globalTTL must be >= 0")

        unloadTimeout = top.int("unloadTimeout", 10)
        if unloadTimeout < 0:
            raise top.error("unloadTimeout", "unloadTimeout must be >= 0")

        sendLoadingState = top.bool("sendLoadingState", False)
        includeAliasesInList = top.bool("includeAliasesInList", False)

        maxRequestBodyMB = top.int("maxRequestBodyMB", 64)
        if maxRequestBodyMB <= 0:
            raise top.error("maxRequestBodyMB", "maxRequestBodyMB must be greater than 0")

        maxQueueWait = self.maxQueueWait(top)

        macros = self.macros(top.section("macros"), "")

        profiles = top.raw("profiles")
        if profiles is not None and (isinstance(profiles, ScalarNode) or profiles.value):
            self.warnings.append(f"profiles: {PROFILES_WARNING}")
        top.ignore("logRequests")

        models, aliasOwner = self.models(
            top.section("models"),
            startPort=startPort,
            globalTTL=globalTTL,
            globalMacros=macros,
            sendLoadingState=sendLoadingState,
            unloadTimeout=unloadTimeout,
        )

        swap: Any
        matrixNode = top.raw("matrix")
        groupsNode = top.raw("groups")
        if matrixNode is not None:
            if groupsNode is not None and not (
                isinstance(groupsNode, MappingNode) and not groupsNode.value
            ):
                raise top.error(
                    "matrix", "config cannot use both 'groups' and 'matrix'", top.keyNode("matrix")
                )
            top.ignore("groups")
            swap = self.matrix(top, models)
        else:
            swap = self.groups(top.section("groups"), models, aliasOwner)

        hooks = self.hooks(top.section("hooks"), models, aliasOwner)
        apiKeys = self.apiKeys(top)
        peers = self.peers(top.section("peers"), macros)
        memory = parseMemory(top.section("memory"), models)

        top.finish()
        return Config(
            healthCheckTimeout=healthCheckTimeout,
            shutdownTimeout=shutdownTimeout,
            logLevel=logLevel,
            logTimeFormat=logTimeFormat,
            logToStdout=logToStdout,
            metricsMaxInMemory=metricsMaxInMemory,
            captureBuffer=captureBuffer,
            performance=performance,
            startPort=startPort,
            globalTTL=globalTTL,
            unloadTimeout=unloadTimeout,
            sendLoadingState=sendLoadingState,
            includeAliasesInList=includeAliasesInList,
            maxRequestBodyMB=maxRequestBodyMB,
            maxQueueWait=maxQueueWait,
            macros=macros,
            models=models,
            swap=swap,
            hooks=hooks,
            apiKeys=apiKeys,
            peers=peers,
            warnings=tuple(self.warnings),
            memory=memory,
        )

    # -- top-level pieces -------------------------------------------------

    def maxQueueWait(self, top: Any) -> int:
        """
        llamaswap's bound on waiting: an integer number of seconds, C{0} or
        C{off} to wait as long as the reference does (without bound).
        """
        node = top.raw("maxQueueWait")
        if isinstance(node, ScalarNode) and str(node.value).strip().lower() == "off":
            top.ignore("maxQueueWait")
            return 0
        value = top.int("maxQueueWait", 30)
        if value < 0:
            raise top.error("maxQueueWait", "maxQueueWait must be >= 0 (or off)")
        return value

    def performance(self, sec: Section) -> PerformanceConfig:
        disabled = sec.bool("disabled", False)
        node = sec.raw("every")
        every = MIN_PERFORMANCE_EVERY_NS
        if node is not None:
            value = plain(node, sec.childPath("every"))
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise sec.error(
                    "every", f"expected a duration such as 5s, got {describe(node)}", node
                )
            if isinstance(value, str):
                try:
                    every = parseDuration(value)
                except ValueError as e:
                    raise sec.error("every", f"performance: {e}", node) from None
            else:
                every = int(round(value * 1_000_000_000))
            if every < MIN_PERFORMANCE_EVERY_NS:
                raise sec.error(
                    "every",
                    f"performance: every must be at least 5s, got {formatDuration(every)}",
                    node,
                )
        sec.finish()
        return PerformanceConfig(disabled=disabled, every=every / 1_000_000_000)

    def macros(self, sec: Section, errorPrefix: str) -> MacroList:
        result = []
        for name, keyNode, valueNode in sec.entries():
            value = None if isNull(valueNode) else plain(valueNode, sec.childPath(name))
            problem = validateMacro(name, value)
            if problem is not None:
                raise ConfigError(sec.childPath(name), errorPrefix + problem, line(valueNode) or line(keyNode))
            result.append((name, value))
        return tuple(result)

    def timeouts(self, sec: Section, defaults: TimeoutsConfig) -> TimeoutsConfig:
        values = {}
        for key in TIMEOUT_KEYS:
            value = sec.int(key, getattr(defaults, key))
            if value < 0:
                raise sec.error(key, f"timeouts.{key} must be >= 0")
            values[key] = value
        sec.finish()
        return TimeoutsConfig(**values)

    def apiKeys(self, top: Section) -> Tuple[str, ...]:
        keys = []
        path = top.childPath("apiKeys")
        for i, (key, node) in enumerate(top.strList("apiKeys")):
            if key == "":
                raise ConfigError(indexPath(path, i), "empty api key found in apiKeys", line(node))
            if " " in key:
                raise ConfigError(
                    indexPath(path, i), f"api key cannot contain spaces: `{key}`", line(node)
                )
            keys.append(key)
        return tuple(keys)

    def hooks(
        self, sec: Section, models: Mapping[str, ModelConfig], aliasOwner: Mapping[str, str]
    ) -> HooksConfig:
        startup = sec.section("on_startup")
        preload = []
        for name, _ in startup.strList("preload"):
            name = name.strip()
            if not name:
                continue
            real = name if name in models else aliasOwner.get(name)
            if real is not None:
                preload.append(real)
        startup.finish()
        sec.finish()
        return HooksConfig(preload=tuple(preload))

    # -- models -----------------------------------------------------------

    def models(
        self,
        sec: Section,
        startPort: int,
        globalTTL: int,
        globalMacros: MacroList,
        sendLoadingState: bool,
        unloadTimeout: int,
    ) -> Tuple[Dict[str, ModelConfig], Dict[str, str]]:
        allIds = set(sec.keys())
        aliasOwner: Dict[str, str] = {}
        nextPort = _Ports(startPort, self.ports)
        models = {}
        entries = {key: (keyNode, valueNode) for key, keyNode, valueNode in sec.entries()}
        for modelId in sorted(entries):
            keyNode, valueNode = entries[modelId]
            models[modelId] = _ModelBuilder(
                self,
                modelId,
                keyNode,
                valueNode,
                sec.childPath(modelId),
                allIds=allIds,
                aliasOwner=aliasOwner,
                nextPort=nextPort,
                globalTTL=globalTTL,
                globalMacros=globalMacros,
                sendLoadingState=sendLoadingState,
                unloadTimeout=unloadTimeout,
            ).build()
        return models, aliasOwner

    # -- swap configuration -----------------------------------------------

    def groups(
        self, sec: Section, models: Mapping[str, ModelConfig], aliasOwner: Mapping[str, str]
    ) -> GroupsConfig:
        groups: Dict[str, GroupConfig] = {}
        usage: Dict[str, str] = {}
        for groupId, keyNode, valueNode in sec.entries():
            g = self.section(valueNode, sec.childPath(groupId), keyNode)
            swap = g.bool("swap", True)
            exclusive = g.bool("exclusive", True)
            persistent = g.bool("persistent", False)
            members = g.strList("members")
            g.finish()
            seen: Set[str] = set()
            for i, (member, node) in enumerate(members):
                memberPath = indexPath(g.childPath("members"), i)
                if member in seen:
                    raise ConfigError(
                        memberPath,
                        f"duplicate model member {member} found in group: {groupId}",
                        line(node),
                    )
                seen.add(member)
                if member in usage:
                    raise ConfigError(
                        memberPath,
                        f"model member {member} is used in multiple groups: "
                        f"{usage[member]} and {groupId}",
                        line(node),
                    )
                if member not in models:
                    hint = ""
                    if member in aliasOwner:
                        hint = f" ({member} is an alias of {aliasOwner[member]}; use the model id)"
                    raise ConfigError(
                        memberPath, f"unknown model {member} in group: {groupId}{hint}", line(node)
                    )
                usage[member] = groupId
            groups[groupId] = GroupConfig(
                id=groupId,
                swap=swap,
                exclusive=exclusive,
                persistent=persistent,
                members=tuple(m for m, _ in members),
            )
        ungrouped = [m for m in sorted(models) if m not in usage]
        existing = groups.pop(DEFAULT_GROUP, None)
        if existing is None:
            groups[DEFAULT_GROUP] = GroupConfig(id=DEFAULT_GROUP, members=tuple(ungrouped))
        else:
            groups[DEFAULT_GROUP] = GroupConfig(
                id=DEFAULT_GROUP,
                swap=existing.swap,
                exclusive=existing.exclusive,
                persistent=existing.persistent,
                members=tuple(sorted(existing.members + tuple(ungrouped))),
            )
        return GroupsConfig(groups=groups)

    def matrix(self, top: Section, models: Mapping[str, ModelConfig]) -> MatrixConfig:
        try:
            return self._matrix(top.section("matrix"), models)
        except ConfigError as e:
            if not e.message.startswith("matrix: "):
                e.message = "matrix: " + e.message
                e.args = (e.keyPath, e.message, e.line)
            raise

    def _matrix(self, sec: Section, models: Mapping[str, ModelConfig]) -> MatrixConfig:
        varsSec = sec.section("vars")
        variables: Dict[str, str] = {}
        for varId, keyNode, valueNode in varsSec.entries():
            path = varsSec.childPath(varId)
            if not VAR_KEY.match(varId):
                raise ConfigError(
                    path, f'var key "{varId}" must be alphanumeric and 1-8 characters', line(keyNode)
                )
            if not isinstance(valueNode, ScalarNode):
                raise ConfigError(path, f"expected a model id, got {describe(valueNode)}", line(valueNode))
            modelId = "" if isNull(valueNode) else str(valueNode.value)
            if modelId not in models:
                raise ConfigError(
                    path, f'var key "{varId}" references unknown model "{modelId}"', line(valueNode)
                )
            variables[varId] = modelId
        if not variables:
            raise ConfigError(varsSec.path, "matrix must define at least one var", sec.line())

        costsSec = sec.section("evict_costs")
        costs: Dict[str, int] = {}
        for varId in costsSec.keys():
            cost = costsSec.int(varId, 1)
            if cost <= 0:
                raise costsSec.error(
                    varId, f'evict_cost for "{varId}" must be a positive integer, got {cost}'
                )
            if varId not in variables:
                raise costsSec.error(
                    varId, f'evict_costs: unknown var ID "{varId}"', costsSec.keyNode(varId)
                )
            costs[varId] = cost

        setsSec = sec.section("sets")
        sets: Dict[str, str] = {}
        for name in setsSec.keys():
            sets[name] = setsSec.str(name, "")
        if not sets:
            raise ConfigError(setsSec.path, "matrix must define at least one set", sec.line())
        sec.finish()

        try:
            expanded = expandSets(sets, variables)
        except MatrixSetError as e:
            if e.setName is None:
                raise ConfigError(setsSec.path, e.message, setsSec.line()) from None
            raise setsSec.error(e.setName, e.message) from None
        return MatrixConfig(
            vars=variables,
            evictCosts=costs,
            sets=sets,
            expanded=tuple(
                ExpandedSet(
                    name=name,
                    dsl=dsl,
                    varIds=varIds,
                    models=frozenset(variables[v] for v in varIds),
                )
                for name, dsl, varIds in expanded
            ),
        )

    # -- peers ------------------------------------------------------------

    def peers(self, sec: Section, globalMacros: MacroList) -> Dict[str, PeerConfig]:
        peers: Dict[str, PeerConfig] = {}
        entries = {key: (keyNode, valueNode) for key, keyNode, valueNode in sec.entries()}
        servedBy: Dict[str, str] = {}
        for peerId in sorted(entries):
            keyNode, valueNode = entries[peerId]
            p = self.section(valueNode, sec.childPath(peerId), keyNode)
            proxy = p.str("proxy", "").strip()
            models = p.strList("models")
            apiKey = p.str("apiKey", "")
            filters = p.section("filters")
            stripParams = filters.str("stripParams", "")
            setParams, setParamsNode = filters.plainMapping("setParams")
            filters.finish()
            timeouts = self.timeouts(p.section("timeouts"), TimeoutsConfig(responseHeader=60))
            p.finish()

            if not proxy:
                raise p.error("proxy", "proxy is required")
            problem = _urlProblem(proxy)
            if problem is not None:
                raise p.error("proxy", f"invalid peer proxy URL ({proxy}): {problem}")
            if not models:
                raise p.error("models", "peer models can not be empty")

            apiKey = substituteText(apiKey, globalMacros)
            stripParams = substituteText(stripParams, globalMacros)
            setParams = substituteData(setParams, globalMacros)
            leftover = leftoverInText(apiKey)
            if leftover is not None:
                raise p.error("apiKey", _unknownMacro(leftover))
            leftover = leftoverInText(stripParams)
            if leftover is not None:
                raise filters.error("stripParams", _unknownMacro(leftover))
            found = leftoverInData(setParams)
            if found is not None:
                where, name = found
                raise ConfigError(
                    _wherePath(filters.childPath("setParams"), where),
                    _unknownMacro(name),
                    line(nodeAt(setParamsNode, list(where))),
                )

            for i, (model, _) in enumerate(models):
                first = servedBy.setdefault(model, peerId)
                if first != peerId:
                    self.warnings.append(
                        f"{indexPath(p.childPath('models'), i)}: model {model} is also "
                        f"listed by peer {first}, which serves it"
                    )
            peers[peerId] = PeerConfig(
                id=peerId,
                proxy=proxy,
                models=tuple(m for m, _ in models),
                apiKey=apiKey,
                filters=FiltersConfig(
                    stripParams=sanitizeStripParams(stripParams),
                    setParams=_sanitizeParams(setParams),
                ),
                timeouts=timeouts,
            )
        return peers


class _ModelBuilder:
    """
    Reads and validates one model (SPEC.md sections 2.2 to 2.4).
    """

    def __init__(
        self,
        builder: _Builder,
        modelId: str,
        keyNode: Node,
        valueNode: Node,
        path: str,
        allIds: Set[str],
        aliasOwner: Dict[str, str],
        nextPort: _Ports,
        globalTTL: int,
        globalMacros: MacroList,
        sendLoadingState: bool,
        unloadTimeout: int,
    ) -> None:
        self.builder = builder
        self.id = modelId
        self.keyNode = keyNode
        self.valueNode = valueNode
        self.path = path
        self.allIds = allIds
        self.aliasOwner = aliasOwner
        self.nextPort = nextPort
        self.globalTTL = globalTTL
        self.globalMacros = globalMacros
        self.sendLoadingState = sendLoadingState
        self.unloadTimeout = unloadTimeout

    def fail(self, field: str, message: str, node: Optional[Node] = None) -> ConfigError:
        """
        @return: a L{ConfigError} at C{models.<id>.<field>}, on the line of
            C{node}, or of the model when the field has no node.
        """
        if node is None:
            node = self.keyNode
        return ConfigError(childPath(self.path, field), message, line(node))

    def build(self) -> ModelConfig:
        modelId = self.id
        m = self.builder.section(self.valueNode, self.path, self.keyNode)
        nodes: Dict[str, Optional[Node]] = {}

        def text(key: str, default: str, field: Optional[str] = None, sec: Section = m) -> str:
            nodes[field or key] = sec.raw(key)
            return sec.str(key, default)

        cmd = sanitizeCommand(text("cmd", ""))
        cmdStop = sanitizeCommand(text("cmdStop", ""))
        proxy = text("proxy", DEFAULT_PROXY)
        aliases = m.strList("aliases")
        env = []
        for i, (entry, node) in enumerate(m.strList("env")):
            name, sep, value = entry.partition("=")
            if not sep or not name.strip():
                raise ConfigError(
                    indexPath(m.childPath("env"), i),
                    f'invalid env entry "{entry}": expected NAME=value',
                    line(node),
                )
            env.append((name, value))
        checkEndpoint = text("checkEndpoint", "/health")
        ttl = m.int("ttl", -1)
        unlisted = m.bool("unlisted", False)
        useModelName = m.str("useModelName", "")
        name = text("name", "")
        description = text("description", "")
        concurrencyLimit = m.int("concurrencyLimit", 0)

        filters = m.section("filters")
        stripParams = text("stripParams", "", "filters.stripParams", filters)
        if not stripParams:
            stripParams = text("strip_params", "", "filters.stripParams", filters)
        else:
            filters.ignore("strip_params")
        setParams, _ = filters.plainMapping("setParams")
        byIdSec = filters.section("setParamsByID")
        byId: List[Tuple[str, Node, Node, Dict[str, Any]]] = []
        for key, keyNode, valueNode in byIdSec.entries():
            if isNull(valueNode):
                params: Dict[str, Any] = {}
            elif isinstance(valueNode, MappingNode):
                params = plain(valueNode, byIdSec.childPath(key))
            else:
                raise ConfigError(
                    byIdSec.childPath(key),
                    f"expected a mapping, got {describe(valueNode)}",
                    line(valueNode),
                )
            byId.append((key, keyNode, valueNode, params))
        filters.finish()

        macros = self.builder.macros(m.section("macros"), f"model {modelId}: ")
        metadata, metadataNode = m.plainMapping("metadata")
        sendLoadingState = m.bool("sendLoadingState", None)
        timeouts = self.builder.timeouts(m.section("timeouts"), TimeoutsConfig())
        unloadTimeout = m.int("unloadTimeout", 0)
        loadFile = text("loadFile", "")
        if unloadTimeout < 0:
            raise m.error("unloadTimeout", f"model {modelId}: unloadTimeout must be >= 0")
        m.finish()

        # ttl
        if ttl == -1:
            ttl = self.globalTTL
        if ttl < 0:
            raise m.error("ttl", f"model {modelId}: invalid TTL value {ttl}")

        # macros, last to first
        merged = mergeMacros(modelId, self.globalMacros, macros)
        cmd = substituteText(cmd, merged)
        cmdStop = substituteText(cmdStop, merged)
        proxy = substituteText(proxy, merged)
        checkEndpoint = substituteText(checkEndpoint, merged)
        stripParams = substituteText(stripParams, merged)
        name = substituteText(name, merged)
        description = substituteText(description, merged)
        loadFile = substituteText(loadFile, merged)
        metadata = substituteData(metadata, merged)
        byId = [
            (substituteText(key, merged), keyNode, valueNode, substituteData(params, merged))
            for key, keyNode, valueNode, params in byId
        ]

        # ${PORT}
        port = None
        cmdHasPort = "${PORT}" in cmd
        if cmdHasPort or "${PORT}" in proxy:
            if not cmdHasPort:
                raise self.fail(
                    "proxy",
                    f"model {modelId}: proxy uses ${{PORT}} but cmd does not - "
                    "${PORT} is only available when used in cmd",
                    nodes["proxy"],
                )
            port = self.nextPort.take(modelId)
            portText = str(port)
            cmd = cmd.replace("${PORT}", portText)
            cmdStop = cmdStop.replace("${PORT}", portText)
            proxy = proxy.replace("${PORT}", portText)
            name = name.replace("${PORT}", portText)
            description = description.replace("${PORT}", portText)
            metadata = substituteOne(metadata, "PORT", port)

        # macros left over
        for field, value, allowed in (
            ("cmd", cmd, ()),
            ("cmdStop", cmdStop, ("PID",)),
            ("proxy", proxy, ()),
            ("checkEndpoint", checkEndpoint, ()),
            ("filters.stripParams", stripParams, ()),
            ("name", name, ()),
            ("description", description, ()),
            ("loadFile", loadFile, ()),
        ):
            leftover = leftoverInText(value, allowed)
            if leftover is not None:
                message = f"unknown macro '${{{leftover}}}' found in {modelId}.{field}"
                if leftover == "PORT":
                    message += " (${PORT} is only available when used in cmd)"
                raise self.fail(field, message, nodes.get(field))
        found = leftoverInData(metadata)
        if found is not None:
            where, macro = found
            raise ConfigError(
                _wherePath(m.childPath("metadata"), where),
                f"model {modelId} metadata: {_unknownMacro(macro)}",
                line(nodeAt(metadataNode, list(where))),
            )
        for key, keyNode, valueNode, params in byId:
            leftover = leftoverInText(key)
            if leftover is not None:
                raise ConfigError(
                    byIdSec.childPath(key),
                    f"unknown macro '${{{leftover}}}' found in model {modelId} "
                    "filters.setParamsByID key",
                    line(keyNode),
                )
            found = leftoverInData(params)
            if found is not None:
                where, macro = found
                raise ConfigError(
                    _wherePath(byIdSec.childPath(key), where),
                    f"model {modelId} filters.setParamsByID[{key}]: {_unknownMacro(macro)}",
                    line(nodeAt(valueNode, list(where))),
                )

        # aliases, globally unique
        aliasList: List[str] = []
        for i, (alias, node) in enumerate(aliases):
            if alias in self.aliasOwner:
                raise ConfigError(
                    indexPath(m.childPath("aliases"), i),
                    f"duplicate alias {alias} found in model: {modelId}",
                    line(node),
                )
            self.aliasOwner[alias] = modelId
            aliasList.append(alias)

        # setParamsByID keys act as aliases
        for key, keyNode, _, _ in byId:
            if key == modelId:
                continue
            keyPath = byIdSec.childPath(key)
            if key in self.allIds:
                raise ConfigError(
                    keyPath,
                    f"model {modelId} filters.setParamsByID: key '{key}' conflicts with an "
                    "existing model ID",
                    line(keyNode),
                )
            owner = self.aliasOwner.get(key)
            if owner is not None:
                if owner != modelId:
                    raise ConfigError(
                        keyPath,
                        f"duplicate alias '{key}' in model {modelId} filters.setParamsByID, "
                        f"already used by model {owner}",
                        line(keyNode),
                    )
                continue
            self.aliasOwner[key] = modelId
            aliasList.append(key)

        problem = _urlProblem(proxy)
        if problem is not None:
            raise self.fail("proxy", f"model {modelId}: invalid proxy URL: {problem}", nodes["proxy"])

        try:
            argv = _split(cmd)
        except ValueError as e:
            raise self.fail(
                "cmd", f"model {modelId}: cmd cannot be split into words: {e}", nodes["cmd"]
            ) from None
        try:
            cmdStopArgv = _split(cmdStop)
        except ValueError:
            cmdStopArgv = ()  # unparsable: the process is sent SIGTERM instead

        endpoint: Optional[str] = checkEndpoint.strip()
        if not endpoint or endpoint.lower() == "none":
            endpoint = None

        return ModelConfig(
            id=modelId,
            cmd=cmd,
            argv=argv,
            cmdStop=cmdStop,
            cmdStopArgv=cmdStopArgv,
            proxy=proxy,
            aliases=tuple(aliasList),
            env=tuple(env),
            checkEndpoint=endpoint,
            ttl=ttl,
            unlisted=unlisted,
            useModelName=useModelName,
            name=name.strip(),
            description=description.strip(),
            metadata=metadata,
            concurrencyLimit=concurrencyLimit if concurrencyLimit > 0 else 10,
            filters=FiltersConfig(
                stripParams=sanitizeStripParams(stripParams),
                setParams=_sanitizeParams(setParams),
                setParamsByID={key: _sanitizeParams(params) for key, _, _, params in byId},
            ),
            macros=macros,
            sendLoadingState=self.sendLoadingState if sendLoadingState is None else sendLoadingState,
            timeouts=timeouts,
            unloadTimeout=unloadTimeout if unloadTimeout > 0 else self.unloadTimeout,
            port=port,
            loadFile=loadFile.strip() or None,
        )
