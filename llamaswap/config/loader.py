# -*- test-case-name: tests.test_config -*-
"""
Loading a configuration file: YAML text -> validated L{Config} (SPEC.md
section 2).

Pure: no reactor, and no I/O except reading the file in L{loadConfig}.
The top level is read here; one model in L{llamaswap.config.modelbuilder},
groups and matrix in L{llamaswap.config.swap}, peers in
L{llamaswap.config.peers}.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from yaml.nodes import MappingNode, Node, ScalarNode

from llamaswap.config.durations import formatDuration, parseDuration
from llamaswap.config.errors import ConfigError
from llamaswap.config.fields import readMacros, readTimeouts
from llamaswap.config.macros import substituteEnvMacros
from llamaswap.config.model import (
    Config,
    GroupsConfig,
    HooksConfig,
    MacroList,
    MatrixConfig,
    ModelConfig,
    PerformanceConfig,
    TimeoutsConfig,
)
from llamaswap.config.memory import parseMemory
from llamaswap.config.modelbuilder import ModelBuilder, ModelDefaults, Ports
from llamaswap.config.nodes import Section, compose, describe, indexPath, line, plain
from llamaswap.config.peers import readPeers
from llamaswap.config.swap import readGroups, readMatrix

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
MIN_PERFORMANCE_EVERY_NS = 5_000_000_000


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
        values: Dict[str, Any] = {}
        values.update(self.logging(top))
        values.update(self.metrics(top))
        values.update(self.serving(top))
        macros = self.macros(top.section("macros"), "")

        profiles = top.raw("profiles")
        if profiles is not None and (isinstance(profiles, ScalarNode) or profiles.value):
            self.warnings.append(f"profiles: {PROFILES_WARNING}")
        top.ignore("logRequests")

        defaults = ModelDefaults(
            allIds=set(),
            aliasOwner={},
            nextPort=Ports(values["startPort"], self.ports),
            globalTTL=values["globalTTL"],
            globalMacros=macros,
            sendLoadingState=values["sendLoadingState"],
            unloadTimeout=values["unloadTimeout"],
        )
        models = self.models(top.section("models"), defaults)
        aliasOwner = defaults.aliasOwner
        swap = self.swap(top, models, aliasOwner)
        hooks = self.hooks(top.section("hooks"), models, aliasOwner)
        apiKeys = self.apiKeys(top)
        peers = readPeers(top.section("peers"), macros, self.warnings)
        memory = parseMemory(top.section("memory"), models)

        top.finish()
        return Config(
            macros=macros,
            models=models,
            swap=swap,
            hooks=hooks,
            apiKeys=apiKeys,
            peers=peers,
            warnings=tuple(self.warnings),
            memory=memory,
            **values,
        )

    # -- top-level settings -----------------------------------------------

    def logging(self, top: Section) -> Dict[str, Any]:
        """
        @return: C{logLevel}, C{logTimeFormat} and C{logToStdout}.
        """
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
        return dict(logLevel=logLevel, logTimeFormat=logTimeFormat, logToStdout=logToStdout)

    def metrics(self, top: Section) -> Dict[str, Any]:
        """
        @return: C{metricsMaxInMemory}, C{captureBuffer} and C{performance}.
        """
        metricsMaxInMemory = top.int("metricsMaxInMemory", 1000)
        if metricsMaxInMemory <= 0:
            metricsMaxInMemory = 1000
        captureBuffer = max(top.int("captureBuffer", 5), 0)
        performance = self.performance(top.section("performance"))
        return dict(
            metricsMaxInMemory=metricsMaxInMemory,
            captureBuffer=captureBuffer,
            performance=performance,
        )

    def serving(self, top: Section) -> Dict[str, Any]:
        """
        @return: the settings of starting models and serving requests.
        """
        healthCheckTimeout = top.int("healthCheckTimeout", 120)
        if healthCheckTimeout < 15:
            self.warnings.append(
                f"healthCheckTimeout: {healthCheckTimeout}s is raised to its minimum, 15s")
            healthCheckTimeout = 15
        shutdownTimeout = top.int("shutdownTimeout", 10)
        if shutdownTimeout < 0:
            raise top.error("shutdownTimeout", "shutdownTimeout must be >= 0")

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

        maxConnections = top.int("maxConnections", 0)
        if maxConnections < 0:
            raise top.error("maxConnections", "maxConnections must be >= 0 (0: automatic)")

        return dict(
            healthCheckTimeout=healthCheckTimeout,
            shutdownTimeout=shutdownTimeout,
            startPort=startPort,
            globalTTL=globalTTL,
            unloadTimeout=unloadTimeout,
            sendLoadingState=sendLoadingState,
            includeAliasesInList=includeAliasesInList,
            maxRequestBodyMB=maxRequestBodyMB,
            maxQueueWait=self.maxQueueWait(top),
            maxConnections=maxConnections,
        )

    def maxQueueWait(self, top: Section) -> int:
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
        return readMacros(sec, errorPrefix)

    def timeouts(self, sec: Section, defaults: TimeoutsConfig) -> TimeoutsConfig:
        return readTimeouts(sec, defaults)

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

    # -- models and how they swap ------------------------------------------

    def models(self, sec: Section, defaults: ModelDefaults) -> Dict[str, ModelConfig]:
        """
        @return: every model by id, in id order (the order ports go out in).
        """
        defaults.allIds.update(sec.keys())
        models = {}
        entries = {key: (keyNode, valueNode) for key, keyNode, valueNode in sec.entries()}
        for modelId in sorted(entries):
            keyNode, valueNode = entries[modelId]
            models[modelId] = ModelBuilder(
                sec.entrySection(modelId, keyNode, valueNode),
                modelId,
                keyNode,
                defaults,
                self.warnings,
            ).build()
        return models

    def swap(
        self, top: Section, models: Mapping[str, ModelConfig], aliasOwner: Mapping[str, str]
    ) -> Union[GroupsConfig, MatrixConfig]:
        """
        @return: the C{matrix} if there is one, else the C{groups}.
        """
        matrixNode = top.raw("matrix")
        groupsNode = top.raw("groups")
        if matrixNode is None:
            return readGroups(top.section("groups"), models, aliasOwner)
        if groupsNode is not None and not (
            isinstance(groupsNode, MappingNode) and not groupsNode.value
        ):
            raise top.error(
                "matrix", "config cannot use both 'groups' and 'matrix'", top.keyNode("matrix")
            )
        top.ignore("groups")
        return readMatrix(top, models)
