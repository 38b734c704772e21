# -*- test-case-name: tests.test_config -*-
"""
Reading and validating one model of C{models} (SPEC.md sections 2.2 to
2.4): its fields, macros, C{${PORT}}, aliases and filters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

from yaml.nodes import MappingNode, Node

from llamaswap.config.errors import ConfigError
from llamaswap.config.fields import (
    readMacros,
    readTimeouts,
    sanitizeCommand,
    sanitizeParams,
    sanitizeStripParams,
    splitWords,
    unknownMacro,
    urlProblem,
    wherePath,
)
from llamaswap.config.macros import (
    leftoverInData,
    leftoverInText,
    mergeMacros,
    substituteData,
    substituteOne,
    substituteText,
)
from llamaswap.config.model import FiltersConfig, MacroList, ModelConfig, TimeoutsConfig
from llamaswap.config.nodes import (
    Section,
    childPath,
    describe,
    indexPath,
    isNull,
    line,
    nodeAt,
    plain,
)

DEFAULT_PROXY = "http://localhost:${PORT}"

#: One C{filters.setParamsByID} entry: key, key node, value node, params.
ParamsById = Tuple[str, Node, Node, Dict[str, Any]]


class Ports:
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
        """
        @return: C{modelId}'s port: the one it kept, else the next free one.
        """
        if modelId in self.kept:
            return self.kept[modelId]
        while self.next in self.reserved:
            self.next += 1
        port = self.next
        self.next += 1
        return port


@dataclass
class ModelDefaults:
    """
    What a model takes from the top level of the file.

    @ivar nextPort: hands out each model's C{${PORT}}.
    @ivar aliasOwner: every alias seen so far, mapped to its model id.
    """

    allIds: Set[str]
    aliasOwner: Dict[str, str]
    nextPort: Ports
    globalTTL: int
    globalMacros: MacroList
    sendLoadingState: bool
    unloadTimeout: int


@dataclass
class _Fields:
    """
    A model's values as read, then substituted in place.
    """

    cmd: str
    cmdStop: str
    proxy: str
    aliases: Tuple[Tuple[str, Node], ...]
    env: Tuple[Tuple[str, str], ...]
    checkEndpoint: str
    ttl: int
    unlisted: bool
    useModelName: str
    name: str
    description: str
    concurrencyLimit: int
    stripParams: str
    setParams: Dict[str, Any]
    byIdPath: str
    byId: List[ParamsById]
    macros: MacroList
    metadata: Any
    metadataNode: Optional[Node]
    sendLoadingState: Optional[bool]
    timeouts: TimeoutsConfig
    unloadTimeout: int
    loadFile: str = ""
    port: Optional[int] = None


class ModelBuilder:
    """
    Reads and validates one model.

    @ivar nodes: the value node of each text field read, by field name, for
        error lines.
    """

    def __init__(
        self,
        section: Section,
        modelId: str,
        keyNode: Node,
        defaults: ModelDefaults,
        warnings: List[str],
    ) -> None:
        self.section = section
        self.id = modelId
        self.keyNode = keyNode
        self.defaults = defaults
        self.warnings = warnings
        self.nodes: Dict[str, Optional[Node]] = {}

    def fail(self, field: str, message: str, node: Optional[Node] = None) -> ConfigError:
        """
        @return: a L{ConfigError} at C{models.<id>.<field>}, on the line of
            C{node}, or of the model when the field has no node.
        """
        if node is None:
            node = self.keyNode
        return ConfigError(childPath(self.section.path, field), message, line(node))

    def build(self) -> ModelConfig:
        """
        @return: the model, every value effective.
        @raise ConfigError: for the first problem found.
        """
        fields = self.read(self.section)
        self.substitute(fields)
        self.assignPort(fields)
        self.checkLeftovers(fields)
        aliases = self.claimAliases(fields)
        problem = urlProblem(fields.proxy)
        if problem is not None:
            raise self.fail(
                "proxy", f"model {self.id}: invalid proxy URL: {problem}", self.nodes["proxy"]
            )
        return self.assemble(fields, aliases)

    # -- reading ------------------------------------------------------------

    def text(self, sec: Section, key: str, default: str, field: Optional[str] = None) -> str:
        """
        @return: the text at C{key} of C{sec}, its node kept as C{field}.
        """
        self.nodes[field or key] = sec.raw(key)
        return sec.str(key, default)

    def read(self, m: Section) -> _Fields:
        """
        @return: every field of the model as written (commands cleaned up).
        """
        cmd = sanitizeCommand(self.text(m, "cmd", ""))
        cmdStop = sanitizeCommand(self.text(m, "cmdStop", ""))
        proxy = self.text(m, "proxy", DEFAULT_PROXY)
        aliases = m.strList("aliases")
        env = self.readEnv(m)
        checkEndpoint = self.text(m, "checkEndpoint", "/health")
        ttl = m.int("ttl", -1)
        unlisted = m.bool("unlisted", False)
        useModelName = m.str("useModelName", "")
        name = self.text(m, "name", "")
        description = self.text(m, "description", "")
        concurrencyLimit = m.int("concurrencyLimit", 0)

        filters = m.section("filters")
        stripParams = self.text(filters, "stripParams", "", "filters.stripParams")
        if not stripParams:
            stripParams = self.text(filters, "strip_params", "", "filters.stripParams")
        else:
            filters.ignore("strip_params")
        setParams, _ = filters.plainMapping("setParams")
        byIdSec = filters.section("setParamsByID")
        byId = self.readParamsById(byIdSec)
        filters.finish()

        macros = readMacros(m.section("macros"), f"model {self.id}: ")
        metadata, metadataNode = m.plainMapping("metadata")
        sendLoadingState = m.bool("sendLoadingState", None)
        timeouts = readTimeouts(m.section("timeouts"), TimeoutsConfig())
        unloadTimeout = m.int("unloadTimeout", 0)
        loadFile = self.text(m, "loadFile", "")
        if unloadTimeout < 0:
            raise m.error("unloadTimeout", f"model {self.id}: unloadTimeout must be >= 0")
        m.finish()

        if ttl == -1:
            ttl = self.defaults.globalTTL
        if ttl < 0:
            raise m.error("ttl", f"model {self.id}: invalid TTL value {ttl}")
        return _Fields(
            cmd=cmd, cmdStop=cmdStop, proxy=proxy, aliases=aliases, env=env,
            checkEndpoint=checkEndpoint, ttl=ttl, unlisted=unlisted,
            useModelName=useModelName, name=name, description=description,
            concurrencyLimit=concurrencyLimit, stripParams=stripParams,
            setParams=setParams, byIdPath=byIdSec.path, byId=byId, macros=macros,
            metadata=metadata, metadataNode=metadataNode,
            sendLoadingState=sendLoadingState, timeouts=timeouts,
            unloadTimeout=unloadTimeout, loadFile=loadFile,
        )

    def readEnv(self, m: Section) -> Tuple[Tuple[str, str], ...]:
        """
        @return: the C{(NAME, value)} pairs of C{env}.
        """
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
        return tuple(env)

    def readParamsById(self, byIdSec: Section) -> List[ParamsById]:
        """
        @return: the entries of C{filters.setParamsByID}, each a mapping.
        """
        byId: List[ParamsById] = []
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
        return byId

    # -- substitution -------------------------------------------------------

    def substitute(self, f: _Fields) -> None:
        """
        Apply the model's macros (and the globals), last to first.
        """
        merged = mergeMacros(self.id, self.defaults.globalMacros, f.macros)
        f.cmd = substituteText(f.cmd, merged)
        f.cmdStop = substituteText(f.cmdStop, merged)
        f.proxy = substituteText(f.proxy, merged)
        f.checkEndpoint = substituteText(f.checkEndpoint, merged)
        f.stripParams = substituteText(f.stripParams, merged)
        f.name = substituteText(f.name, merged)
        f.description = substituteText(f.description, merged)
        f.loadFile = substituteText(f.loadFile, merged)
        f.metadata = substituteData(f.metadata, merged)
        f.byId = [
            (substituteText(key, merged), keyNode, valueNode, substituteData(params, merged))
            for key, keyNode, valueNode, params in f.byId
        ]

    def assignPort(self, f: _Fields) -> None:
        """
        Give the model the next free port if its C{cmd} uses C{${PORT}}.

        @raise ConfigError: if there is no C{cmd} to run, or C{proxy} uses
            C{${PORT}} while C{cmd} does not.
        """
        cmdHasPort = "${PORT}" in f.cmd
        if not f.cmd:
            if "${PORT}" in f.proxy:
                raise self.fail("cmd", f"model {self.id}: cmd is required", self.nodes["cmd"])
            self.warnings.append(
                f"{childPath(self.section.path, 'cmd')}: model {self.id} has no cmd "
                f"(line {line(self.nodes['cmd'] or self.keyNode)}); starting it will fail"
            )
        if not (cmdHasPort or "${PORT}" in f.proxy):
            return
        if not cmdHasPort:
            raise self.fail(
                "proxy",
                f"model {self.id}: proxy uses ${{PORT}} but cmd does not - "
                "${PORT} is only available when used in cmd",
                self.nodes["proxy"],
            )
        port = self.defaults.nextPort.take(self.id)
        portText = str(port)
        f.port = port
        f.cmd = f.cmd.replace("${PORT}", portText)
        f.cmdStop = f.cmdStop.replace("${PORT}", portText)
        f.proxy = f.proxy.replace("${PORT}", portText)
        f.name = f.name.replace("${PORT}", portText)
        f.description = f.description.replace("${PORT}", portText)
        f.metadata = substituteOne(f.metadata, "PORT", port)

    def checkLeftovers(self, f: _Fields) -> None:
        """
        @raise ConfigError: for the first macro left after substitution.
        """
        for field, value, allowed in (
            ("cmd", f.cmd, ()),
            ("cmdStop", f.cmdStop, ("PID",)),
            ("proxy", f.proxy, ()),
            ("checkEndpoint", f.checkEndpoint, ()),
            ("filters.stripParams", f.stripParams, ()),
            ("name", f.name, ()),
            ("description", f.description, ()),
            ("loadFile", f.loadFile, ()),
        ):
            leftover = leftoverInText(value, allowed)
            if leftover is not None:
                message = f"unknown macro '${{{leftover}}}' found in {self.id}.{field}"
                if leftover == "PORT":
                    message += " (${PORT} is only available when used in cmd)"
                raise self.fail(field, message, self.nodes.get(field))
        found = leftoverInData(f.metadata)
        if found is not None:
            where, macro = found
            raise ConfigError(
                wherePath(self.section.childPath("metadata"), where),
                f"model {self.id} metadata: {unknownMacro(macro)}",
                line(nodeAt(f.metadataNode, list(where))),
            )
        for key, keyNode, valueNode, params in f.byId:
            self.checkParamsByIdLeftovers(f.byIdPath, key, keyNode, valueNode, params)

    def checkParamsByIdLeftovers(
        self, byIdPath: str, key: str, keyNode: Node, valueNode: Node, params: Dict[str, Any]
    ) -> None:
        leftover = leftoverInText(key)
        if leftover is not None:
            raise ConfigError(
                childPath(byIdPath, key),
                f"unknown macro '${{{leftover}}}' found in model {self.id} "
                "filters.setParamsByID key",
                line(keyNode),
            )
        found = leftoverInData(params)
        if found is not None:
            where, macro = found
            raise ConfigError(
                wherePath(childPath(byIdPath, key), where),
                f"model {self.id} filters.setParamsByID[{key}]: {unknownMacro(macro)}",
                line(nodeAt(valueNode, list(where))),
            )

    # -- aliases ------------------------------------------------------------

    def claimAliases(self, f: _Fields) -> List[str]:
        """
        Record the model's aliases (explicit ones, then C{setParamsByID}
        keys) as globally owned by it.

        @return: its aliases.
        """
        owners = self.defaults.aliasOwner
        aliasList: List[str] = []
        for i, (alias, node) in enumerate(f.aliases):
            if alias in owners:
                raise ConfigError(
                    indexPath(self.section.childPath("aliases"), i),
                    f"duplicate alias {alias} found in model: {self.id}",
                    line(node),
                )
            owners[alias] = self.id
            aliasList.append(alias)

        for key, keyNode, _, _ in f.byId:
            if key == self.id:
                continue
            keyPath = childPath(f.byIdPath, key)
            if key in self.defaults.allIds:
                raise ConfigError(
                    keyPath,
                    f"model {self.id} filters.setParamsByID: key '{key}' conflicts with an "
                    "existing model ID",
                    line(keyNode),
                )
            owner = owners.get(key)
            if owner is not None:
                if owner != self.id:
                    raise ConfigError(
                        keyPath,
                        f"duplicate alias '{key}' in model {self.id} filters.setParamsByID, "
                        f"already used by model {owner}",
                        line(keyNode),
                    )
                continue
            owners[key] = self.id
            aliasList.append(key)
        return aliasList

    # -- the result ---------------------------------------------------------

    def assemble(self, f: _Fields, aliases: List[str]) -> ModelConfig:
        """
        @return: the L{ModelConfig} of the checked fields.
        """
        try:
            argv = splitWords(f.cmd)
        except ValueError as e:
            raise self.fail(
                "cmd", f"model {self.id}: cmd cannot be split into words: {e}", self.nodes["cmd"]
            ) from None
        try:
            cmdStopArgv = splitWords(f.cmdStop)
        except ValueError:
            cmdStopArgv = ()  # unparsable: the process is sent SIGTERM instead

        endpoint: Optional[str] = f.checkEndpoint.strip()
        if not endpoint or endpoint.lower() == "none":
            endpoint = None
        defaults = self.defaults
        return ModelConfig(
            id=self.id,
            cmd=f.cmd,
            argv=argv,
            cmdStop=f.cmdStop,
            cmdStopArgv=cmdStopArgv,
            proxy=f.proxy,
            aliases=tuple(aliases),
            env=f.env,
            checkEndpoint=endpoint,
            ttl=f.ttl,
            unlisted=f.unlisted,
            useModelName=f.useModelName,
            name=f.name.strip(),
            description=f.description.strip(),
            metadata=f.metadata,
            concurrencyLimit=f.concurrencyLimit if f.concurrencyLimit > 0 else 10,
            filters=FiltersConfig(
                stripParams=sanitizeStripParams(f.stripParams),
                setParams=sanitizeParams(f.setParams),
                setParamsByID={key: sanitizeParams(params) for key, _, _, params in f.byId},
            ),
            macros=f.macros,
            sendLoadingState=(
                defaults.sendLoadingState if f.sendLoadingState is None else f.sendLoadingState
            ),
            timeouts=f.timeouts,
            unloadTimeout=f.unloadTimeout if f.unloadTimeout > 0 else defaults.unloadTimeout,
            port=f.port,
            loadFile=f.loadFile.strip() or None,
        )
