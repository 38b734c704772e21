"""
Tests for L{llamaswap.config}: loading, defaults, validation errors (key path,
message and line), macros, ports, aliases, groups, matrix, hooks, peers.

Numbers in docstrings refer to the parity checklist of SPEC.md section 7.
"""

from __future__ import annotations

import os
import re
from textwrap import dedent
from typing import Mapping, Optional

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from llamaswap.config import (
    DEFAULT_GROUP,
    Config,
    ConfigError,
    ExpandedSet,
    FiltersConfig,
    GroupConfig,
    GroupsConfig,
    HooksConfig,
    MatrixConfig,
    ModelConfig,
    PeerConfig,
    PerformanceConfig,
    TimeoutsConfig,
    loadConfig,
    loadConfigText,
)
from llamaswap.config.durations import formatDuration, parseDuration
from llamaswap.config.macros import goFormat
from llamaswap.interfaces import IGroupsConfig, IMatrixConfig

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "config.example.yaml")


def load(text: str, environ: Optional[Mapping[str, str]] = None) -> Config:
    """
    Load dedented YAML whose first non-blank line is line 1.
    """
    return loadConfigText(dedent(text).lstrip("\n"), environ if environ is not None else {})


class ConfigTestCase(SynchronousTestCase):
    def assertConfigError(
        self,
        text: str,
        keyPath: str,
        fragment: str,
        line: Optional[int] = None,
        environ: Optional[Mapping[str, str]] = None,
    ) -> ConfigError:
        """
        Assert that C{text} fails to load with an error at C{keyPath} whose
        message contains C{fragment}, on C{line} when given.
        """
        with self.assertRaises(ConfigError) as caught:
            load(text, environ)
        error = caught.exception
        self.assertEqual(error.keyPath, keyPath, str(error))
        self.assertIn(fragment, error.message)
        self.assertIn(fragment, str(error))
        if line is not None:
            self.assertEqual(error.line, line, str(error))
            self.assertTrue(str(error).endswith(f" (line {line})"))
        return error


class ConfigErrorTests(SynchronousTestCase):
    def test_strJoinsKeyPathMessageAndLine(self) -> None:
        """
        C{str()} reads C{keyPath: message (line N)}.
        """
        self.assertEqual(str(ConfigError("models.m.ttl", "bad", 3)), "models.m.ttl: bad (line 3)")

    def test_strWithoutLine(self) -> None:
        self.assertEqual(str(ConfigError("startPort", "bad")), "startPort: bad")

    def test_strWithoutKeyPath(self) -> None:
        """
        Errors of the file as a whole have no key path and read as the
        message alone.
        """
        self.assertEqual(str(ConfigError("", "cannot read x: gone")), "cannot read x: gone")

    def test_attributes(self) -> None:
        error = ConfigError("a.b", "msg", 7)
        self.assertEqual((error.keyPath, error.message, error.line), ("a.b", "msg", 7))
        self.assertIsInstance(error, Exception)


class TopLevelDefaultsTests(ConfigTestCase):
    def test_minimalConfigDefaults(self) -> None:
        """
        1. A minimal config gets every documented default.
        """
        config = load(
            """
            models:
              m: {cmd: "srv --port ${PORT}"}
            """
        )
        self.assertEqual(config.healthCheckTimeout, 120)
        self.assertEqual(config.startPort, 5800)
        self.assertEqual(config.logLevel, "info")
        self.assertEqual(config.logToStdout, "proxy")
        self.assertEqual(config.metricsMaxInMemory, 1000)
        m = config.models["m"]
        self.assertEqual(m.cmd, "srv --port 5800")
        self.assertEqual(m.argv, ("srv", "--port", "5800"))
        self.assertEqual(m.proxy, "http://localhost:5800")
        self.assertEqual(m.checkEndpoint, "/health")
        self.assertEqual(m.ttl, 0)
        # SPEC item 1 says 0 for the raw value; the effective limit is 10.
        self.assertEqual(m.concurrencyLimit, 10)
        self.assertEqual(m.port, 5800)

    def test_emptyFileIsValid(self) -> None:
        config = load("")
        self.assertEqual(config.models, {})
        self.assertEqual(config.warnings, ())
        self.assertEqual(config.swap, GroupsConfig({DEFAULT_GROUP: GroupConfig(DEFAULT_GROUP)}))

    def test_commentsOnlyFileIsValid(self) -> None:
        self.assertEqual(load("# nothing here\n").models, {})

    def test_fileWithoutModelsIsValid(self) -> None:
        config = load("logLevel: debug\n")
        self.assertEqual(config.models, {})
        self.assertEqual(config.logLevel, "debug")

    def test_nullModelsIsValid(self) -> None:
        self.assertEqual(load("models:\n").models, {})

    def test_everyTopLevelDefault(self) -> None:
        """
        With nothing set, every top-level value is its default.
        """
        config = load("{}")
        self.assertEqual(
            (
                config.healthCheckTimeout,
                config.logLevel,
                config.logTimeFormat,
                config.logToStdout,
                config.metricsMaxInMemory,
                config.captureBuffer,
                config.performance,
                config.startPort,
                config.globalTTL,
                config.unloadTimeout,
                config.sendLoadingState,
                config.includeAliasesInList,
                config.maxRequestBodyMB,
                config.macros,
                config.models,
                config.hooks,
                config.apiKeys,
                config.peers,
                config.warnings,
            ),
            (
                120,
                "info",
                "",
                "proxy",
                1000,
                5,
                PerformanceConfig(disabled=False, every=5.0),
                5800,
                0,
                10,
                False,
                False,
                64,
                (),
                {},
                HooksConfig(preload=()),
                (),
                {},
                (),
            ),
        )

    def test_defaultsMatchAttrsDefaults(self) -> None:
        """
        A default-constructed L{Config} equals the loaded empty file, so that
        code building configs by hand gets the same defaults.
        """
        self.assertEqual(Config(), load(""))

    def test_rootMustBeAMapping(self) -> None:
        self.assertConfigError("- a\n- b\n", "", "expected a mapping, got a list", 1)

    def test_healthCheckTimeoutBelowFifteenIsRaised(self) -> None:
        self.assertEqual(load("healthCheckTimeout: 3").healthCheckTimeout, 15)

    def test_healthCheckTimeoutKept(self) -> None:
        self.assertEqual(load("healthCheckTimeout: 300").healthCheckTimeout, 300)

    def test_logLevelCaseInsensitive(self) -> None:
        self.assertEqual(load("logLevel: DEBUG").logLevel, "debug")
        self.assertEqual(load("logLevel: ' Error '").logLevel, "error")

    def test_logLevelWarningMeansWarn(self) -> None:
        self.assertEqual(load("logLevel: warning").logLevel, "warn")
        self.assertEqual(load("logLevel: warn").logLevel, "warn")

    def test_logLevelUnknownMeansInfo(self) -> None:
        self.assertEqual(load("logLevel: verbose").logLevel, "info")

    def test_logTimeFormatKnown(self) -> None:
        self.assertEqual(load("logTimeFormat: RFC3339").logTimeFormat, "rfc3339")

    def test_logTimeFormatUnknownMeansNone(self) -> None:
        self.assertEqual(load("logTimeFormat: iso").logTimeFormat, "")

    def test_logToStdoutValues(self) -> None:
        for value in ("proxy", "upstream", "both", "none"):
            self.assertEqual(load(f"logToStdout: {value}").logToStdout, value)

    def test_logToStdoutInvalidIsRejected(self) -> None:
        self.assertConfigError(
            "logToStdout: stderr\n",
            "logToStdout",
            "logToStdout must be one of: proxy, upstream, both, none",
            1,
        )

    def test_metricsMaxInMemoryNotPositiveMeans1000(self) -> None:
        self.assertEqual(load("metricsMaxInMemory: 0").metricsMaxInMemory, 1000)
        self.assertEqual(load("metricsMaxInMemory: -3").metricsMaxInMemory, 1000)
        self.assertEqual(load("metricsMaxInMemory: 50").metricsMaxInMemory, 50)

    def test_captureBuffer(self) -> None:
        self.assertEqual(load("captureBuffer: 0").captureBuffer, 0)
        self.assertEqual(load("captureBuffer: 12").captureBuffer, 12)

    def test_captureBufferNegativeMeansDisabled(self) -> None:
        self.assertEqual(load("captureBuffer: -1").captureBuffer, 0)

    def test_startPortBelowOneIsRejected(self) -> None:
        """
        3. C{startPort: 0} is an error.
        """
        self.assertConfigError("startPort: 0\n", "startPort", "startPort must be greater than 1", 1)

    def test_globalTTLBelowZeroIsRejected(self) -> None:
        """
        3. C{globalTTL: -1} is an error.
        """
        self.assertConfigError("globalTTL: -1\n", "globalTTL", "globalTTL must be >= 0", 1)

    def test_unloadTimeoutDefault(self) -> None:
        self.assertEqual(load("").unloadTimeout, 10)

    def test_unloadTimeoutNegativeIsRejected(self) -> None:
        self.assertConfigError("unloadTimeout: -1\n", "unloadTimeout", "unloadTimeout must be >= 0", 1)

    def test_unloadTimeoutZeroAllowedGlobally(self) -> None:
        self.assertEqual(load("unloadTimeout: 0").unloadTimeout, 0)

    def test_sendLoadingStateAndIncludeAliasesInList(self) -> None:
        config = load("sendLoadingState: true\nincludeAliasesInList: true\n")
        self.assertTrue(config.sendLoadingState)
        self.assertTrue(config.includeAliasesInList)

    def test_maxRequestBodyMB(self) -> None:
        self.assertEqual(load("maxRequestBodyMB: 200").maxRequestBodyMB, 200)

    def test_maxRequestBodyMBNotPositiveIsRejected(self) -> None:
        self.assertConfigError(
            "maxRequestBodyMB: 0\n", "maxRequestBodyMB", "maxRequestBodyMB must be greater than 0", 1
        )


class PerformanceTests(ConfigTestCase):
    def test_performanceEveryBelowFiveSecondsIsRejected(self) -> None:
        """
        4. C{every: 1s} is an error naming the value as Go prints it.
        """
        self.assertConfigError(
            "performance:\n  every: 1s\n",
            "performance.every",
            "performance: every must be at least 5s, got 1s",
            2,
        )

    def test_performanceEveryMillisecondsInMessage(self) -> None:
        self.assertConfigError(
            "performance: {every: 500ms}\n", "performance.every", "got 500ms"
        )

    def test_performanceEveryGoDurations(self) -> None:
        self.assertEqual(load("performance: {every: 1m30s}").performance.every, 90.0)
        self.assertEqual(load("performance: {every: 7.5s}").performance.every, 7.5)
        self.assertEqual(load("performance: {every: 1h}").performance.every, 3600.0)

    def test_performanceEveryPlainNumberIsSeconds(self) -> None:
        self.assertEqual(load("performance: {every: 10}").performance.every, 10.0)
        self.assertEqual(load("performance: {every: 5.5}").performance.every, 5.5)

    def test_performanceEveryPlainNumberBelowFiveIsRejected(self) -> None:
        self.assertConfigError("performance: {every: 2}\n", "performance.every", "got 2s")

    def test_performanceEveryInvalidDuration(self) -> None:
        self.assertConfigError(
            "performance: {every: soon}\n", "performance.every", 'invalid duration "soon"', 1
        )

    def test_performanceEveryOfWrongType(self) -> None:
        self.assertConfigError(
            "performance:\n  every: [5]\n", "performance.every", "expected a duration such as 5s, got a list", 2
        )
        self.assertConfigError("performance: {every: true}\n", "performance.every", "got true")

    def test_performanceDisabled(self) -> None:
        self.assertEqual(
            load("performance: {disabled: true}").performance, PerformanceConfig(True, 5.0)
        )

    def test_performanceEnableIsNotAKey(self) -> None:
        """
        C{enable:} (as in the reference's example file) is an unknown key.
        """
        config = load("performance: {enable: true}")
        self.assertEqual(config.warnings, ("performance.enable: unknown key (line 1)",))


class TypeErrorTests(ConfigTestCase):
    def test_intRejectsString(self) -> None:
        self.assertConfigError(
            "healthCheckTimeout: ten\n", "healthCheckTimeout", 'expected integer, got "ten"', 1
        )

    def test_intRejectsQuotedNumber(self) -> None:
        self.assertConfigError('startPort: "5800"\n', "startPort", 'expected integer, got "5800"')

    def test_intRejectsBool(self) -> None:
        self.assertConfigError("startPort: true\n", "startPort", "expected integer, got true")

    def test_intRejectsFloat(self) -> None:
        self.assertConfigError("globalTTL: 1.5\n", "globalTTL", "expected integer, got 1.5")

    def test_intAcceptsHexAndUnderscores(self) -> None:
        self.assertEqual(load("startPort: 0x1000").startPort, 4096)
        self.assertEqual(load("startPort: 9_000").startPort, 9000)

    def test_boolRejectsString(self) -> None:
        self.assertConfigError(
            "sendLoadingState: maybe\n", "sendLoadingState", 'expected boolean, got "maybe"', 1
        )

    def test_boolRejectsYesAsYAML12String(self) -> None:
        """
        YAML 1.2 core schema: C{yes} is a string, not a boolean.
        """
        self.assertConfigError("sendLoadingState: yes\n", "sendLoadingState", 'expected boolean, got "yes"')

    def test_boolRejectsInt(self) -> None:
        self.assertConfigError("includeAliasesInList: 1\n", "includeAliasesInList", "expected boolean, got 1")

    def test_listOfStringsRejectsString(self) -> None:
        self.assertConfigError(
            'apiKeys: "abc"\n', "apiKeys", 'expected a list of strings, got "abc"', 1
        )

    def test_listOfStringsRejectsNestedList(self) -> None:
        self.assertConfigError(
            "apiKeys:\n  - a\n  - [b]\n", "apiKeys[1]", "expected a list of strings, got a list", 3
        )

    def test_mappingRejectsList(self) -> None:
        self.assertConfigError("models: [a, b]\n", "models", "expected a mapping, got a list", 1)

    def test_modelMustBeAMapping(self) -> None:
        self.assertConfigError(
            "models:\n  m: srv\n", "models.m", 'expected a mapping, got "srv"', 2
        )

    def test_stringAcceptsAnyScalar(self) -> None:
        """
        A string field takes any scalar as written.
        """
        config = load(
            """
            models:
              m:
                cmd: srv
                proxy: http://h:1
                name: 2024
                description: 1.50
            """
        )
        self.assertEqual(config.models["m"].name, "2024")
        self.assertEqual(config.models["m"].description, "1.50")

    def test_stringRejectsMapping(self) -> None:
        self.assertConfigError(
            "models:\n  m:\n    cmd: {a: b}\n", "models.m.cmd", "expected a string, got a mapping", 3
        )


class YAMLTests(ConfigTestCase):
    def test_syntaxErrorCarriesLine(self) -> None:
        error = self.assertConfigError("a: 1\nb: [1, 2\n", "", "invalid YAML")
        self.assertIsNotNone(error.line)

    def test_duplicateKeyIsRejected(self) -> None:
        self.assertConfigError(
            "models:\n  m: {cmd: a, proxy: 'http://h'}\n  m: {cmd: b, proxy: 'http://h'}\n",
            "models.m",
            'mapping key "m" already defined at line 2',
            3,
        )

    def test_mergeKeys(self) -> None:
        """
        C{<<: *anchor} merges keys; the mapping's own keys win.
        """
        config = load(
            """
            x-common: &common
              proxy: http://h:9000
              ttl: 5
            models:
              a:
                <<: *common
                cmd: srv-a
              b:
                <<: *common
                cmd: srv-b
                ttl: 7
            """
        )
        self.assertEqual(config.models["a"].ttl, 5)
        self.assertEqual(config.models["b"].ttl, 7)
        self.assertEqual(config.models["b"].proxy, "http://h:9000")

    def test_nonScalarKeyIsRejected(self) -> None:
        self.assertConfigError("? [a, b]\n: 1\n", "", "expected a string key, got a list", 1)

    def test_mergeOfNonMappingIsRejected(self) -> None:
        self.assertConfigError("x: &a [1]\nmodels:\n  <<: *a\n", "models", "expected a mapping to merge, got 1", 1)

    def test_yaml12Scalars(self) -> None:
        """
        Octal, infinities and NaN follow the YAML 1.2 core schema; C{on} and
        dates stay strings.
        """
        config = load("macros:\n  o: 0o17\n  i: -.inf\n  n: .nan\n  p: .Inf\n  s: on\n  d: 2024-01-01\n  z: ~x\n")
        values = dict(config.macros)
        self.assertEqual(values["o"], 15)
        self.assertEqual(values["i"], float("-inf"))
        self.assertNotEqual(values["n"], values["n"])
        self.assertEqual(values["p"], float("inf"))
        self.assertEqual((values["s"], values["d"], values["z"]), ("on", "2024-01-01", "~x"))

    def test_explicitTags(self) -> None:
        config = load("macros:\n  a: !!str 12\n  b: !!int '7'\n  c: !!int 'x'\n  d: !!bool yes\n")
        self.assertEqual(config.macros, (("a", "12"), ("b", 7), ("c", "x"), ("d", True)))

    def test_recursiveStructureIsRejected(self) -> None:
        self.assertConfigError(
            "models:\n  m:\n    cmd: x\n    proxy: http://h\n    metadata: &a {self: *a}\n",
            "models.m.metadata.self",
            "recursive YAML structure",
        )


class WarningTests(ConfigTestCase):
    def test_unknownTopLevelKeyIsAWarning(self) -> None:
        config = load("healthCheckTimout: 30\n")
        self.assertEqual(config.warnings, (
            "healthCheckTimout: unknown key (line 1); did you mean healthCheckTimeout?",
        ))
        self.assertEqual(config.healthCheckTimeout, 120)

    def test_unknownModelKeyIsAWarning(self) -> None:
        config = load(
            """
            models:
              qwen:
                cmdd: srv
                cmd: srv --port ${PORT}
            """
        )
        self.assertEqual(config.warnings, ("models.qwen.cmdd: unknown key (line 3)",))

    def test_unknownNestedKeysAreWarnings(self) -> None:
        config = load(
            """
            models:
              m:
                cmd: srv --port ${PORT}
                filters: {stripParam: x}
                timeouts: {conect: 3}
            groups:
              g: {members: [m], exclusiv: false}
            hooks:
              on_start: {}
              on_startup: {preloads: [m]}
            peers:
              p: {proxy: "http://h", models: [x], api_key: k, timeouts: {idle: 1}}
            """
        )
        self.assertEqual(
            sorted(config.warnings),
            sorted(
                [
                    "models.m.filters.stripParam: unknown key (line 4); did you mean stripParams?",
                    "models.m.timeouts.conect: unknown key (line 5); did you mean connect?",
                    "groups.g.exclusiv: unknown key (line 7); did you mean exclusive?",
                    "hooks.on_start: unknown key (line 9)",
                    "hooks.on_startup.preloads: unknown key (line 10); did you mean preload?",
                    "peers.p.api_key: unknown key (line 12); did you mean apiKey?",
                    "peers.p.timeouts.idle: unknown key (line 12); did you mean idleConn?",
                ]
            ),
        )

    def test_misspeltKeyNamesTheKeyMeant(self) -> None:
        """
        An unknown key close to a known one that the mapping lacks names it.
        """
        config = load(
            """
            models:
              m:
                cmd: srv --port ${PORT}
                ttll: 60
            """
        )
        self.assertEqual(
            config.warnings, ("models.m.ttll: unknown key (line 4); did you mean ttl?",)
        )
        self.assertEqual(config.models["m"].ttl, 0)

    def test_unknownKeyNearAKeyPresentSuggestsNothing(self) -> None:
        """
        A key the mapping already has is never the suggestion: C{ttl} and
        C{ttll} side by side is a stray key, not a misspelling.
        """
        config = load("models:\n  m:\n    cmd: srv --port ${PORT}\n    ttl: 5\n    ttll: 6\n")
        self.assertEqual(config.warnings, ("models.m.ttll: unknown key (line 5)",))

    def test_suggestionIgnoresCaseAndUnderscores(self) -> None:
        config = load("Loglevel: debug\nmax_request_body_mb: 3\n")
        self.assertEqual(
            config.warnings,
            (
                "Loglevel: unknown key (line 1); did you mean logLevel?",
                "max_request_body_mb: unknown key (line 2); did you mean maxRequestBodyMB?",
            ),
        )

    def test_unknownMatrixKeyIsAWarning(self) -> None:
        config = load(
            """
            models:
              a: {cmd: "srv --port ${PORT}"}
            matrix:
              vars: {a: a}
              sets: {s: a}
              solver: greedy
            """
        )
        self.assertEqual(config.warnings, ("matrix.solver: unknown key (line 6)",))

    def test_profilesGiveTheReferenceWarning(self) -> None:
        config = load("profiles:\n  p: [a, b]\n")
        self.assertEqual(len(config.warnings), 1)
        self.assertIn(
            "Profile functionality has been removed in favor of Groups", config.warnings[0]
        )

    def test_logRequestsIsSilentlyIgnored(self) -> None:
        self.assertEqual(load("logRequests: true\n").warnings, ())

    def test_peerListedModelTwiceIsAWarning(self) -> None:
        """
        A model listed by two peers goes to the first peer in sorted order;
        the other listing is reported.
        """
        config = load(
            """
            peers:
              b: {proxy: "http://b", models: [x]}
              a: {proxy: "http://a", models: [x, y]}
            """
        )
        self.assertEqual(
            config.warnings, ("peers.b.models[0]: model x is also listed by peer a, which serves it",)
        )


class ModelTests(ConfigTestCase):
    def test_everyModelDefault(self) -> None:
        config = load("models:\n  m:\n    cmd: srv --port ${PORT}\n")
        self.assertEqual(
            config.models["m"],
            ModelConfig(
                id="m",
                cmd="srv --port 5800",
                argv=("srv", "--port", "5800"),
                cmdStop="",
                cmdStopArgv=(),
                proxy="http://localhost:5800",
                aliases=(),
                env=(),
                checkEndpoint="/health",
                ttl=0,
                unlisted=False,
                useModelName="",
                name="",
                description="",
                metadata={},
                concurrencyLimit=10,
                filters=FiltersConfig((), {}, {}),
                macros=(),
                sendLoadingState=False,
                timeouts=TimeoutsConfig(30, 30, 0, 10, 1, 90),
                unloadTimeout=10,
                port=5800,
            ),
        )

    def test_modelWithoutCmdSaysCmdIsRequired(self) -> None:
        """
        A model with no keys has no cmd: that is the error, reported on the
        model's line (not the default proxy's C{${PORT}}).
        """
        error = self.assertConfigError("models:\n  m:\n", "models.m.cmd", "cmd is required", 2)
        self.assertEqual(str(error), "models.m.cmd: model m: cmd is required (line 2)")
        self.assertNotIn("PORT", str(error))

    def test_emptyCmdSaysCmdIsRequired(self) -> None:
        self.assertConfigError(
            "models:\n  m:\n    ttl: 5\n    cmd: ''\n", "models.m.cmd", "cmd is required", 4
        )

    def test_cmdOfCommentsOnlyIsRequiredToo(self) -> None:
        self.assertConfigError(
            "models:\n  m:\n    cmd: |\n      # srv --port ${PORT}\n",
            "models.m.cmd",
            "cmd is required",
            3,
        )

    def test_modelWithFixedProxyAndNoCmdLoadsWithAWarning(self) -> None:
        """
        With a proxy of its own a model without cmd loads, as in the
        reference (starting it fails with C{empty command}), but it is
        reported.
        """
        config = load("models:\n  m:\n    proxy: http://127.0.0.1:9000\n")
        self.assertEqual(config.models["m"].argv, ())
        self.assertEqual(
            config.warnings,
            ("models.m.cmd: model m has no cmd (line 2); starting it will fail",),
        )

    def test_modelIdsMayContainSlash(self) -> None:
        config = load("models:\n  author/model: {cmd: 'srv --port ${PORT}'}\n")
        self.assertEqual(list(config.models), ["author/model"])

    def test_modelsSortedById(self) -> None:
        config = load(
            """
            models:
              c: {cmd: srv, proxy: "http://h"}
              a: {cmd: srv, proxy: "http://h"}
              b: {cmd: srv, proxy: "http://h"}
            """
        )
        self.assertEqual(list(config.models), ["a", "b", "c"])

    def test_cmdCommentLinesRemoved(self) -> None:
        config = load(
            """
            models:
              m:
                cmd: |
                  srv --port ${PORT}
                  # --verbose
                    # indented comment
                  --ctx 4096
            """
        )
        self.assertEqual(config.models["m"].cmd, "srv --port 5800\n--ctx 4096")
        self.assertEqual(config.models["m"].argv, ("srv", "--port", "5800", "--ctx", "4096"))

    def test_cmdContinuationLinesJoined(self) -> None:
        config = load(
            """
            models:
              m:
                cmd: |
                  srv \\
                    --port ${PORT} \\
                    # a comment between continuations
                    --model "/models/my model.gguf"
            """
        )
        self.assertEqual(config.models["m"].cmd, 'srv --port 5800 --model "/models/my model.gguf"')
        self.assertEqual(
            config.models["m"].argv, ("srv", "--port", "5800", "--model", "/models/my model.gguf")
        )

    def test_commentedMacroReferenceIsNotAnError(self) -> None:
        """
        Comment lines are removed before macros are checked.
        """
        config = load(
            """
            models:
              m:
                cmd: |
                  srv --port ${PORT}
                  # --flag ${NOT_DEFINED}
            """
        )
        self.assertEqual(config.models["m"].argv, ("srv", "--port", "5800"))

    def test_emptyCmdLoadsWithEmptyArgv(self) -> None:
        """
        An empty cmd is not a load error (starting it fails later).
        """
        config = load("models:\n  m: {proxy: 'http://h:1'}\n")
        self.assertEqual((config.models["m"].cmd, config.models["m"].argv), ("", ()))

    def test_cmdUnbalancedQuoteIsRejected(self) -> None:
        self.assertConfigError(
            "models:\n  m:\n    cmd: 'srv \"oops'\n    proxy: http://h\n",
            "models.m.cmd",
            "model m: cmd cannot be split into words",
            3,
        )

    def test_cmdEndingWithContinuation(self) -> None:
        config = load("models:\n  m:\n    proxy: http://h\n    cmd: |\n      srv \\\n      -v \\\n")
        self.assertEqual(config.models["m"].cmd, "srv -v")

    def test_cmdStopKeepsPID(self) -> None:
        config = load(
            """
            models:
              m:
                cmd: srv --port ${PORT}
                cmdStop: "docker stop ${MODEL_ID} --pid ${PID} --port ${PORT}"
            """
        )
        m = config.models["m"]
        self.assertEqual(m.cmdStop, "docker stop m --pid ${PID} --port 5800")
        self.assertEqual(m.cmdStopArgv, ("docker", "stop", "m", "--pid", "${PID}", "--port", "5800"))

    def test_cmdStopUnsplittableMeansNoArgv(self) -> None:
        config = load("models:\n  m: {cmd: srv, proxy: 'http://h', cmdStop: 'kill \"'}\n")
        self.assertEqual(config.models["m"].cmdStopArgv, ())

    def test_pidInCmdIsAnUnknownMacro(self) -> None:
        self.assertConfigError(
            "models:\n  m: {cmd: 'srv ${PID}', proxy: 'http://h'}\n",
            "models.m.cmd",
            "unknown macro '${PID}' found in m.cmd",
            2,
        )

    def test_explicitProxy(self) -> None:
        config = load("models:\n  m: {cmd: srv, proxy: 'https://example.com:8443/base'}\n")
        self.assertEqual(config.models["m"].proxy, "https://example.com:8443/base")
        self.assertIsNone(config.models["m"].port)

    def test_invalidProxyURLIsRejected(self) -> None:
        self.assertConfigError(
            "models:\n  m:\n    cmd: srv\n    proxy: 'ftp://h'\n",
            "models.m.proxy",
            "model m: invalid proxy URL",
            4,
        )

    def test_proxyWithoutHostIsRejected(self) -> None:
        self.assertConfigError(
            "models:\n  m: {cmd: srv, proxy: 'http://'}\n", "models.m.proxy", "missing host"
        )

    def test_proxyWithBadPortIsRejected(self) -> None:
        self.assertConfigError(
            "models:\n  m: {cmd: srv, proxy: 'http://h:port'}\n", "models.m.proxy", "invalid proxy URL"
        )

    def test_env(self) -> None:
        config = load(
            """
            models:
              m:
                cmd: srv --port ${PORT}
                env: ["FOO=bar", "EMPTY=", "EQ=a=b"]
            """
        )
        self.assertEqual(config.models["m"].env, (("FOO", "bar"), ("EMPTY", ""), ("EQ", "a=b")))

    def test_envEntryWithoutEqualsIsRejected(self) -> None:
        self.assertConfigError(
            """
            models:
              llama:
                cmd: srv --port ${PORT}
                env:
                  - A=1
                  - JUSTNAME
            """,
            "models.llama.env[1]",
            'invalid env entry "JUSTNAME"',
            6,
        )

    def test_envIsNotMacroTarget(self) -> None:
        config = load(
            """
            macros: {x: y}
            models:
              m: {cmd: "srv --port ${PORT}", env: ["A=${x}"]}
            """
        )
        self.assertEqual(config.models["m"].env, (("A", "${x}"),))

    def test_checkEndpointNoneMeansNoCheck(self) -> None:
        for value in ("none", "NONE", "None", "''"):
            config = load(f"models:\n  m: {{cmd: srv, proxy: 'http://h', checkEndpoint: {value}}}\n")
            self.assertIsNone(config.models["m"].checkEndpoint, value)

    def test_checkEndpointCustom(self) -> None:
        config = load("models:\n  m: {cmd: srv, proxy: 'http://h', checkEndpoint: /v1/models}\n")
        self.assertEqual(config.models["m"].checkEndpoint, "/v1/models")

    def test_ttlDefaultsToGlobalTTL(self) -> None:
        """
        7. A model without ttl gets globalTTL; C{ttl: 0} stays 0.
        """
        config = load(
            """
            globalTTL: 30
            models:
              a: {cmd: srv, proxy: "http://h"}
              b: {cmd: srv, proxy: "http://h", ttl: 0}
              c: {cmd: srv, proxy: "http://h", ttl: -1}
              d: {cmd: srv, proxy: "http://h", ttl: 5}
            """
        )
        self.assertEqual([m.ttl for m in config.models.values()], [30, 0, 30, 5])

    def test_negativeTTLIsRejected(self) -> None:
        """
        7. C{ttl: -5} is an error.
        """
        self.assertConfigError(
            """
            models:
              m:
                cmd: srv
                proxy: http://h
                ttl: -5
            """,
            "models.m.ttl",
            "model m: invalid TTL value -5",
            5,
        )

    def test_unlistedAndUseModelName(self) -> None:
        config = load(
            "models:\n  m: {cmd: srv, proxy: 'http://h', unlisted: true, useModelName: up}\n"
        )
        self.assertTrue(config.models["m"].unlisted)
        self.assertEqual(config.models["m"].useModelName, "up")

    def test_nameAndDescriptionTrimmed(self) -> None:
        config = load(
            "models:\n  m: {cmd: srv, proxy: 'http://h', name: '  Pretty  ', description: ' d '}\n"
        )
        self.assertEqual((config.models["m"].name, config.models["m"].description), ("Pretty", "d"))

    def test_concurrencyLimitEffective(self) -> None:
        config = load(
            """
            models:
              a: {cmd: srv, proxy: "http://h", concurrencyLimit: 0}
              b: {cmd: srv, proxy: "http://h", concurrencyLimit: 1}
              c: {cmd: srv, proxy: "http://h", concurrencyLimit: -2}
            """
        )
        self.assertEqual([m.concurrencyLimit for m in config.models.values()], [10, 1, 10])

    def test_sendLoadingStateInheritsGlobal(self) -> None:
        config = load(
            """
            sendLoadingState: true
            models:
              a: {cmd: srv, proxy: "http://h"}
              b: {cmd: srv, proxy: "http://h", sendLoadingState: false}
            """
        )
        self.assertEqual([m.sendLoadingState for m in config.models.values()], [True, False])

    def test_sendLoadingStatePerModelOverride(self) -> None:
        config = load("models:\n  a: {cmd: srv, proxy: 'http://h', sendLoadingState: true}\n")
        self.assertTrue(config.models["a"].sendLoadingState)

    def test_timeouts(self) -> None:
        config = load(
            "models:\n  m: {cmd: srv, proxy: 'http://h', timeouts: {connect: 5, responseHeader: 600}}\n"
        )
        self.assertEqual(
            config.models["m"].timeouts,
            TimeoutsConfig(connect=5, keepalive=30, responseHeader=600, tlsHandshake=10, expectContinue=1, idleConn=90),
        )

    def test_responseIdleTimeout(self) -> None:
        """
        C{timeouts.responseIdle} (llamaswap's own): 600 s unless set.
        """
        config = load(
            "models:\n  m: {cmd: srv, proxy: 'http://h', timeouts: {responseIdle: 45}}\n"
            "  n: {cmd: srv, proxy: 'http://h'}\n"
        )
        self.assertEqual(config.models["m"].timeouts.responseIdle, 45)
        self.assertEqual(config.models["n"].timeouts.responseIdle, 600)

    def test_negativeTimeoutIsRejected(self) -> None:
        self.assertConfigError(
            "models:\n  m:\n    cmd: srv\n    proxy: http://h\n    timeouts:\n      idleConn: -1\n",
            "models.m.timeouts.idleConn",
            "timeouts.idleConn must be >= 0",
            6,
        )

    def test_unloadTimeoutPerModelDefaultsToGlobal(self) -> None:
        """
        106. A model without its own unloadTimeout (or with 0) gets the
        global one.
        """
        config = load(
            """
            unloadTimeout: 2
            models:
              a: {cmd: srv, proxy: "http://h"}
              b: {cmd: srv, proxy: "http://h", unloadTimeout: 0}
            """
        )
        self.assertEqual([m.unloadTimeout for m in config.models.values()], [2, 2])

    def test_unloadTimeoutPerModelOverride(self) -> None:
        """
        105. C{unloadTimeout: 3} on a model is its grace period.
        """
        config = load("models:\n  a: {cmd: srv, proxy: 'http://h', unloadTimeout: 3}\n")
        self.assertEqual(config.models["a"].unloadTimeout, 3)

    def test_unloadTimeoutPerModelNegativeIsRejected(self) -> None:
        self.assertConfigError(
            "models:\n  a: {cmd: srv, proxy: 'http://h', unloadTimeout: -1}\n",
            "models.a.unloadTimeout",
            "unloadTimeout must be >= 0",
            2,
        )

    def test_modelKeyErrorsCarryTheLine(self) -> None:
        """
        Type errors of model keys are reported on the line of the value.
        """
        self.assertConfigError(
            """
            models:
              a:
                cmd: srv
                proxy: http://h
              b:
                cmd: srv
                proxy: http://h
                concurrencyLimit: lots
            """,
            "models.b.concurrencyLimit",
            'expected integer, got "lots"',
            8,
        )


class PortTests(ConfigTestCase):
    def test_portsAllocatedInSortedIdOrder(self) -> None:
        """
        5. Ports go out in sorted id order; models without C{${PORT}} take
        none.
        """
        config = load(
            """
            startPort: 9000
            models:
              b: {cmd: "srv --port ${PORT}"}
              c: {cmd: "srv --port 7000", proxy: "http://localhost:7000"}
              a: {cmd: "srv --port ${PORT}"}
              d: {cmd: "srv --port ${PORT}"}
            """
        )
        self.assertEqual(
            [(m.id, m.port, m.proxy) for m in config.models.values()],
            [
                ("a", 9000, "http://localhost:9000"),
                ("b", 9001, "http://localhost:9001"),
                ("c", None, "http://localhost:7000"),
                ("d", 9002, "http://localhost:9002"),
            ],
        )

    def test_proxyUsingPortWithoutCmdIsRejected(self) -> None:
        """
        6. C{proxy} uses C{${PORT}} but C{cmd} does not.
        """
        self.assertConfigError(
            """
            models:
              m:
                cmd: srv --port 8080
                proxy: "http://localhost:${PORT}"
            """,
            "models.m.proxy",
            "model m: proxy uses ${PORT} but cmd does not - ${PORT} is only available when used in cmd",
            4,
        )

    def test_fixedPortCmdNeedsExplicitProxy(self) -> None:
        """
        The default proxy uses C{${PORT}}, so a fixed-port cmd without a
        proxy is the same error, reported on the model's line.
        """
        self.assertConfigError(
            "models:\n  m:\n    cmd: srv --port 8080\n",
            "models.m.proxy",
            "proxy uses ${PORT} but cmd does not",
            2,
        )

    def test_portReplacedInEveryPortField(self) -> None:
        config = load(
            """
            models:
              m:
                cmd: srv --port ${PORT}
                cmdStop: stop ${PORT}
                proxy: http://127.0.0.1:${PORT}/x
                name: on ${PORT}
                description: port ${PORT}
                metadata: {port: "${PORT}", url: "http://h:${PORT}"}
            """
        )
        m = config.models["m"]
        self.assertEqual(
            (m.cmdStop, m.proxy, m.name, m.description, m.metadata),
            ("stop 5800", "http://127.0.0.1:5800/x", "on 5800", "port 5800", {"port": 5800, "url": "http://h:5800"}),
        )

    def test_portInCheckEndpointIsLeftOver(self) -> None:
        self.assertConfigError(
            "models:\n  m: {cmd: 'srv --port ${PORT}', checkEndpoint: '/h/${PORT}'}\n",
            "models.m.checkEndpoint",
            "unknown macro '${PORT}' found in m.checkEndpoint",
            2,
        )

    def test_portInNameWithoutPortInCmdIsLeftOver(self) -> None:
        self.assertConfigError(
            "models:\n  m: {cmd: srv, proxy: 'http://h', name: 'p ${PORT}'}\n",
            "models.m.name",
            "unknown macro '${PORT}' found in m.name",
        )

    def test_portFromMacroCountsAsCmdPort(self) -> None:
        """
        A C{${PORT}} that comes from a macro counts (ports are handled after
        macros).
        """
        config = load(
            """
            macros: {base: "srv --port ${PORT}"}
            models:
              m: {cmd: "${base} -v"}
            """
        )
        self.assertEqual(config.models["m"].cmd, "srv --port 5800 -v")


class MacroTests(ConfigTestCase):
    def test_macrosReferenceEarlierMacros(self) -> None:
        """
        10. A macro may use the macros defined before it.
        """
        config = load(
            """
            macros:
              base: /models
              path: ${base}/llama
              full: ${path}/m.gguf
            models:
              m: {cmd: "load ${full}", proxy: "http://h"}
            """
        )
        self.assertEqual(config.models["m"].cmd, "load /models/llama/m.gguf")

    def test_macroCannotReferenceLaterMacro(self) -> None:
        self.assertConfigError(
            """
            macros:
              early: ${late}/x
              late: /y
            models:
              m: {cmd: "load ${early}", proxy: "http://h"}
            """,
            "models.m.cmd",
            "unknown macro '${late}' found in m.cmd",
            5,
        )

    def test_modelMacroReplacesGlobalInPlace(self) -> None:
        """
        11. A model macro named like a global replaces it in place, so
        earlier-defined globals that use it see the model's value.
        """
        config = load(
            """
            macros:
              tag: global
              msg: value-${tag}
            models:
              m:
                cmd: echo ${msg}
                proxy: http://h
                macros:
                  tag: model-level
            """
        )
        self.assertEqual(config.models["m"].cmd, "echo value-model-level")
        self.assertEqual(config.models["m"].macros, (("tag", "model-level"),))

    def test_modelOnlyMacroMayUseGlobals(self) -> None:
        config = load(
            """
            macros: {dir: /m}
            models:
              m:
                cmd: load ${file}
                proxy: http://h
                macros: {file: "${dir}/x.gguf"}
            """
        )
        self.assertEqual(config.models["m"].cmd, "load /m/x.gguf")

    def test_modelIdMacro(self) -> None:
        config = load(
            """
            macros: {name: "container-${MODEL_ID}"}
            models:
              org/m: {cmd: "docker run --name ${name}", proxy: "http://h"}
            """
        )
        self.assertEqual(config.models["org/m"].cmd, "docker run --name container-org/m")

    def test_globalMacrosKeptInFileOrder(self) -> None:
        config = load("macros:\n  z: 1\n  a: two\n  m: true\n  f: 0.5\n")
        self.assertEqual(config.macros, (("z", 1), ("a", "two"), ("m", True), ("f", 0.5)))

    def test_selfReferencingMacroIsRejected(self) -> None:
        """
        12. A macro whose value contains itself.
        """
        self.assertConfigError(
            'macros:\n  recursive: "value-${recursive}"\n',
            "macros.recursive",
            "macro 'recursive' contains self-reference",
            2,
        )

    def test_undefinedMacroIsRejected(self) -> None:
        """
        13. A macro that uses an undefined one, used in cmd.
        """
        error = self.assertConfigError(
            """
            macros:
              A: "value-${UNDEFINED}"
            models:
              m: {cmd: "run ${A}", proxy: "http://h"}
            """,
            "models.m.cmd",
            "unknown macro '${UNDEFINED}' found in m.cmd",
            4,
        )
        self.assertIn("UNDEFINED", str(error))

    def test_reservedMacroNamesAreRejected(self) -> None:
        """
        14. C{PORT} and C{MODEL_ID} are reserved.
        """
        self.assertConfigError("macros:\n  PORT: 1\n", "macros.PORT", "macro name 'PORT' is reserved", 2)
        self.assertConfigError(
            "macros:\n  MODEL_ID: x\n", "macros.MODEL_ID", "macro name 'MODEL_ID' is reserved", 2
        )

    def test_nonScalarMacroIsRejected(self) -> None:
        """
        14. List and mapping values.
        """
        self.assertConfigError(
            "macros:\n  l: [1, 2]\n", "macros.l", "must be a scalar type (string, int, float, or bool)", 2
        )
        self.assertConfigError("macros:\n  d: {a: 1}\n", "macros.d", "must be a scalar type", 2)

    def test_nullMacroIsRejected(self) -> None:
        self.assertConfigError("macros:\n  n:\n", "macros.n", "must be a scalar type", 2)

    def test_macroNameTooLongIsRejected(self) -> None:
        name = "a" * 64
        self.assertConfigError(
            f"macros:\n  {name}: x\n",
            f"macros.{name}",
            f"macro name '{name}' exceeds maximum length of 63 characters",
            2,
        )

    def test_macroName63CharsIsAccepted(self) -> None:
        name = "a" * 63
        self.assertEqual(load(f"macros:\n  {name}: x\n").macros, ((name, "x"),))

    def test_macroNameWithInvalidCharactersIsRejected(self) -> None:
        self.assertConfigError("macros:\n  a.b: x\n", "macros.a.b", "contains invalid characters", 2)

    def test_modelMacroErrorsNameTheModel(self) -> None:
        self.assertConfigError(
            "models:\n  m:\n    cmd: srv\n    proxy: http://h\n    macros:\n      PORT: 1\n",
            "models.m.macros.PORT",
            "model m: macro name 'PORT' is reserved",
            6,
        )

    def test_metadataMacroTypes(self) -> None:
        """
        15. A value exactly C{${name}} keeps the macro's type; otherwise it
        is interpolated.
        """
        config = load(
            """
            macros:
              temp: 0.7
              on: true
              n: 3
            models:
              m:
                cmd: srv --port ${PORT}
                metadata:
                  port: ${PORT}
                  t: ${temp}
                  s: "x ${temp}"
                  flag: ${on}
                  nested: {list: ["${n}", "n=${n}", 1], b: "${on}!"}
            """
        )
        self.assertEqual(
            config.models["m"].metadata,
            {
                "port": 5800,
                "t": 0.7,
                "s": "x 0.7",
                "flag": True,
                "nested": {"list": [3, "n=3", 1], "b": "true!"},
            },
        )

    def test_macroValuesInterpolateAsGoPrintsThem(self) -> None:
        config = load(
            """
            macros: {big: 1000000.0, yes: true, whole: 2.0}
            models:
              m: {cmd: "srv ${big} ${yes} ${whole}", proxy: "http://h"}
            """
        )
        self.assertEqual(config.models["m"].argv, ("srv", "1e+06", "true", "2"))

    def test_macroTargets(self) -> None:
        """
        Macros apply to cmd, cmdStop, proxy, checkEndpoint,
        filters.stripParams, name, description, setParamsByID and metadata.
        """
        config = load(
            """
            macros: {v: X}
            models:
              m:
                cmd: srv-${v}
                cmdStop: stop-${v}
                proxy: http://${v}.local
                checkEndpoint: /${v}
                name: n-${v}
                description: d-${v}
                filters:
                  stripParams: "a${v}, b"
                  setParamsByID:
                    "m:${v}": {k: "${v}"}
                metadata: {k: "${v}"}
            """
        )
        m = config.models["m"]
        self.assertEqual(
            (m.cmd, m.cmdStop, m.proxy, m.checkEndpoint, m.name, m.description),
            ("srv-X", "stop-X", "http://X.local", "/X", "n-X", "d-X"),
        )
        self.assertEqual(m.filters.stripParams, ("aX", "b"))
        self.assertEqual(m.filters.setParamsByID, {"m:X": {"k": "X"}})
        self.assertEqual(m.metadata, {"k": "X"})

    def test_macroNonTargets(self) -> None:
        """
        Macros do not apply to env, aliases, useModelName or setParams.
        """
        config = load(
            """
            macros: {v: X}
            models:
              m:
                cmd: srv
                proxy: http://h
                env: ["A=${v}"]
                aliases: ["al-${v}"]
                useModelName: "u-${v}"
                filters:
                  setParams: {k: "${v}"}
            """
        )
        m = config.models["m"]
        self.assertEqual(m.env, (("A", "${v}"),))
        self.assertEqual(m.aliases, ("al-${v}",))
        self.assertEqual(m.useModelName, "u-${v}")
        self.assertEqual(m.filters.setParams, {"k": "${v}"})

    def test_unknownMacroInMetadataIsRejected(self) -> None:
        self.assertConfigError(
            """
            models:
              m:
                cmd: srv
                proxy: http://h
                metadata:
                  a:
                    - ok
                    - "${nope}"
            """,
            "models.m.metadata.a[1]",
            "model m metadata: unknown macro '${nope}'",
            8,
        )

    def test_unknownMacroInDescriptionIsRejected(self) -> None:
        self.assertConfigError(
            "models:\n  m: {cmd: srv, proxy: 'http://h', description: '${what}'}\n",
            "models.m.description",
            "unknown macro '${what}' found in m.description",
            2,
        )

    def test_unknownMacroInStripParamsIsRejected(self) -> None:
        self.assertConfigError(
            "models:\n  m:\n    cmd: srv\n    proxy: http://h\n    filters:\n      stripParams: '${x}'\n",
            "models.m.filters.stripParams",
            "unknown macro '${x}' found in m.filters.stripParams",
            6,
        )

    def test_unknownMacroInSetParamsByIDKeyIsRejected(self) -> None:
        self.assertConfigError(
            "models:\n  m:\n    cmd: srv\n    proxy: http://h\n    filters:\n      setParamsByID:\n        'm:${x}': {a: 1}\n",
            "models.m.filters.setParamsByID.m:${x}",
            "unknown macro '${x}' found in model m filters.setParamsByID key",
            7,
        )

    def test_unknownMacroInSetParamsByIDValueIsRejected(self) -> None:
        self.assertConfigError(
            "models:\n  m:\n    cmd: srv\n    proxy: http://h\n    filters:\n      setParamsByID:\n        'm:a':\n          k: '${x}'\n",
            "models.m.filters.setParamsByID.m:a.k",
            "model m filters.setParamsByID[m:a]: unknown macro '${x}'",
            8,
        )


class EnvMacroTests(ConfigTestCase):
    def test_envMacroSubstitutedBeforeParsing(self) -> None:
        """
        16. C{${env.NAME}} is replaced in the raw text, anywhere.
        """
        config = load(
            """
            apiKeys: ["${env.KEY}"]
            startPort: ${env.PORT_BASE}
            macros: {home: "${env.HOME}"}
            models:
              m: {cmd: "srv ${home}", proxy: "http://h"}
            """,
            {"HOME": "/home/u", "KEY": "secret", "PORT_BASE": "7000"},
        )
        self.assertEqual(config.apiKeys, ("secret",))
        self.assertEqual(config.startPort, 7000)
        self.assertEqual(config.models["m"].cmd, "srv /home/u")

    def test_unsetEnvMacroIsRejected(self) -> None:
        """
        16. An unset variable in active YAML is an error.
        """
        self.assertConfigError(
            "logLevel: info\nmacros: {x: '${env.UNSET}'}\n",
            "",
            "environment variable 'UNSET' is not set",
            2,
        )

    def test_envMacroOnlyInCommentIsIgnored(self) -> None:
        """
        16. A reference only inside a comment is not an error.
        """
        config = load("# uses ${env.UNSET}\nlogLevel: debug # ${env.ALSO_UNSET}\n")
        self.assertEqual(config.logLevel, "debug")

    def test_envValueWithNewlineIsRejected(self) -> None:
        self.assertConfigError(
            "macros: {x: '${env.BAD}'}\n", "", "contains newlines", 1, {"BAD": "a\nb"}
        )

    def test_envValueWithNulIsRejected(self) -> None:
        self.assertConfigError("macros: {x: '${env.BAD}'}\n", "", "contains newlines", 1, {"BAD": "a\x00b"})

    def test_envValueQuotesAndBackslashesEscaped(self) -> None:
        config = load('macros: {x: "${env.V}"}\n', {"V": 'a"b\\c'})
        self.assertEqual(config.macros, (("x", 'a"b\\c'),))

    def test_envMacroUnquotedInFlowMapping(self) -> None:
        """
        Text that is not valid YAML before substitution is scanned whole, as
        the reference does, so an unquoted reference in a flow mapping works.
        """
        config = load("macros: {x: ${env.V}}\n", {"V": "12"})
        self.assertEqual(config.macros, (("x", 12),))

    def test_envMacroInKey(self) -> None:
        config = load("models:\n  ${env.ID}: {cmd: srv, proxy: 'http://h'}\n", {"ID": "m1"})
        self.assertEqual(list(config.models), ["m1"])

    def test_loadConfigTextDefaultsToOsEnviron(self) -> None:
        name = "LLAMASWAP_TEST_CONFIG_ENV"
        os.environ[name] = "7001"
        self.addCleanup(os.environ.pop, name, None)
        self.assertEqual(loadConfigText("startPort: ${env.%s}\n" % name).startPort, 7001)


class AliasTests(ConfigTestCase):
    def test_aliasesResolve(self) -> None:
        config = load("models:\n  m: {cmd: srv, proxy: 'http://h', aliases: [x, y]}\n")
        self.assertEqual(config.models["m"].aliases, ("x", "y"))
        self.assertEqual(config.resolve("x"), "m")
        self.assertEqual(config.resolve("m"), "m")
        self.assertIsNone(config.resolve("nope"))
        self.assertIs(config.model("y"), config.models["m"])
        self.assertIsNone(config.model("nope"))

    def test_duplicateAliasIsRejected(self) -> None:
        """
        8. Two models with the same alias.
        """
        self.assertConfigError(
            """
            models:
              a: {cmd: srv, proxy: "http://h", aliases: [x]}
              b:
                cmd: srv
                proxy: http://h
                aliases:
                  - x
            """,
            "models.b.aliases[0]",
            "duplicate alias x found in model: b",
            7,
        )

    def test_setParamsByIDKeyActsAsAlias(self) -> None:
        """
        9. A setParamsByID key other than the model's id resolves to it.
        """
        config = load(
            """
            models:
              m:
                cmd: srv
                proxy: http://h
                aliases: [fast]
                filters:
                  setParamsByID:
                    "m": {a: 1}
                    "m:high": {reasoning: high, model: ignored}
                    "fast": {b: 2}
            """
        )
        m = config.models["m"]
        self.assertEqual(config.resolve("m:high"), "m")
        self.assertEqual(m.aliases, ("fast", "m:high"))
        self.assertEqual(
            m.filters.setParamsByID, {"m": {"a": 1}, "m:high": {"reasoning": "high"}, "fast": {"b": 2}}
        )

    def test_setParamsByIDKeyConflictingWithModelIdIsRejected(self) -> None:
        """
        9. A key that is another model's id.
        """
        self.assertConfigError(
            """
            models:
              a:
                cmd: srv
                proxy: http://h
                filters:
                  setParamsByID:
                    b: {x: 1}
              b: {cmd: srv, proxy: "http://h"}
            """,
            "models.a.filters.setParamsByID.b",
            "model a filters.setParamsByID: key 'b' conflicts with an existing model ID",
            7,
        )

    def test_setParamsByIDKeyEqualToAnotherModelsAliasIsRejected(self) -> None:
        """
        9. A key that is another model's alias.
        """
        self.assertConfigError(
            """
            models:
              a: {cmd: srv, proxy: "http://h", aliases: [shared]}
              b:
                cmd: srv
                proxy: http://h
                filters:
                  setParamsByID:
                    shared: {x: 1}
            """,
            "models.b.filters.setParamsByID.shared",
            "duplicate alias 'shared' in model b filters.setParamsByID, already used by model a",
            8,
        )

    def test_aliasEqualToAnotherModelsSetParamsByIDKeyIsRejected(self) -> None:
        self.assertConfigError(
            """
            models:
              a:
                cmd: srv
                proxy: http://h
                filters: {setParamsByID: {"a:x": {}}}
              b: {cmd: srv, proxy: "http://h", aliases: ["a:x"]}
            """,
            "models.b.aliases[0]",
            "duplicate alias a:x found in model: b",
        )


class FilterTests(ConfigTestCase):
    def test_stripParamsSanitised(self) -> None:
        """
        25. Trimmed, de-duplicated, sorted, without C{model} and blanks.
        """
        config = load(
            """
            models:
              m:
                cmd: srv
                proxy: http://h
                filters:
                  stripParams: " model, top_k, temperature, top_k ,"
            """
        )
        self.assertEqual(config.models["m"].filters.stripParams, ("temperature", "top_k"))

    def test_legacyStripParamsAccepted(self) -> None:
        """
        25. C{strip_params} is honoured when C{stripParams} is empty.
        """
        config = load(
            "models:\n  m: {cmd: srv, proxy: 'http://h', filters: {strip_params: 'b, a'}}\n"
        )
        self.assertEqual(config.models["m"].filters.stripParams, ("a", "b"))
        self.assertEqual(config.warnings, ())

    def test_stripParamsWinsOverLegacy(self) -> None:
        config = load(
            "models:\n  m: {cmd: srv, proxy: 'http://h', filters: {stripParams: a, strip_params: b}}\n"
        )
        self.assertEqual(config.models["m"].filters.stripParams, ("a",))

    def test_setParamsSortedWithoutModel(self) -> None:
        config = load(
            """
            models:
              m:
                cmd: srv
                proxy: http://h
                filters:
                  setParams: {z: [1, {a: null}], model: other, a: 0.5}
            """
        )
        params = config.models["m"].filters.setParams
        self.assertEqual(params, {"a": 0.5, "z": [1, {"a": None}]})
        self.assertEqual(list(params), ["a", "z"])

    def test_nullSetParamsByIDValueIsAnAliasWithoutParams(self) -> None:
        config = load("models:\n  m: {cmd: srv, proxy: 'http://h', filters: {setParamsByID: {'m:x': }}}\n")
        self.assertEqual(config.models["m"].filters.setParamsByID, {"m:x": {}})
        self.assertEqual(config.resolve("m:x"), "m")

    def test_setParamsByIDValueMustBeAMapping(self) -> None:
        self.assertConfigError(
            "models:\n  m:\n    cmd: srv\n    proxy: http://h\n    filters:\n      setParamsByID:\n        'm:x': 3\n",
            "models.m.filters.setParamsByID.m:x",
            "expected a mapping, got 3",
            7,
        )


class GroupTests(ConfigTestCase):
    MODELS = """
        models:
          a: {cmd: srv, proxy: "http://h"}
          b: {cmd: srv, proxy: "http://h"}
          c: {cmd: srv, proxy: "http://h", aliases: [see]}
        """

    def test_noGroupsMeansDefaultGroupOfAllModels(self) -> None:
        """
        2. Without groups, every model is in C{(default)}: swap, exclusive,
        not persistent, members sorted.
        """
        config = load(self.MODELS)
        self.assertEqual(
            config.swap.groups,
            {DEFAULT_GROUP: GroupConfig(DEFAULT_GROUP, True, True, False, ("a", "b", "c"))},
        )
        self.assertEqual(config.swap.groupOf("b").id, DEFAULT_GROUP)

    def test_groupsWithDefaults(self) -> None:
        config = load(
            self.MODELS
            + """
        groups:
          g1:
            members: [c, a]
          g2:
            swap: false
            exclusive: false
            persistent: true
            members: []
        """
        )
        groups = config.swap.groups
        self.assertEqual(list(groups), ["g1", "g2", DEFAULT_GROUP])
        self.assertEqual(groups["g1"], GroupConfig("g1", True, True, False, ("c", "a")))
        self.assertEqual(groups["g2"], GroupConfig("g2", False, False, True, ()))
        self.assertEqual(groups[DEFAULT_GROUP].members, ("b",))
        self.assertEqual(config.swap.groupOf("a").id, "g1")
        self.assertEqual(config.swap.groupOf("b").id, DEFAULT_GROUP)

    def test_everyModelInExactlyOneGroup(self) -> None:
        config = load(self.MODELS + "\n        groups:\n          g: {members: [b]}\n")
        members = [m for g in config.swap.groups.values() for m in g.members]
        self.assertEqual(sorted(members), sorted(config.models))

    def test_groupOfUnknownModelRaisesKeyError(self) -> None:
        self.assertRaises(KeyError, load(self.MODELS).swap.groupOf, "nope")

    def test_modelInTwoGroupsIsRejected(self) -> None:
        """
        19. A model in two groups.
        """
        self.assertConfigError(
            self.MODELS + "\n        groups:\n          g1: {members: [a]}\n          g2: {members: [b, a]}\n",
            "groups.g2.members[1]",
            "model member a is used in multiple groups: g1 and g2",
            8,
        )

    def test_duplicateMemberIsRejected(self) -> None:
        """
        19. The same member twice in a group.
        """
        self.assertConfigError(
            self.MODELS + "\n        groups:\n          g:\n            members: [a, a]\n",
            "groups.g.members[1]",
            "duplicate model member a found in group: g",
            8,
        )

    def test_unknownMemberIsRejected(self) -> None:
        self.assertConfigError(
            self.MODELS + "\n        groups:\n          g:\n            members:\n              - zz\n",
            "groups.g.members[0]",
            "unknown model zz in group: g",
            9,
        )

    def test_aliasMemberIsRejected(self) -> None:
        error = self.assertConfigError(
            self.MODELS + "\n        groups:\n          g: {members: [see]}\n",
            "groups.g.members[0]",
            "unknown model see in group: g",
        )
        self.assertIn("alias of c", error.message)

    def test_userDefinedDefaultGroupGetsTheUngroupedModels(self) -> None:
        config = load(
            self.MODELS
            + "\n        groups:\n          '(default)': {swap: false, members: [c]}\n          g: {members: [a]}\n"
        )
        self.assertEqual(
            config.swap.groups[DEFAULT_GROUP], GroupConfig(DEFAULT_GROUP, False, True, False, ("b", "c"))
        )

    def test_groupsProvideIGroupsConfig(self) -> None:
        config = load(self.MODELS)
        self.assertTrue(verifyObject(IGroupsConfig, config.swap))
        self.assertIsInstance(config.swap, GroupsConfig)

    def test_groupsAndMatrixTogetherAreRejected(self) -> None:
        """
        20. Both C{groups} and C{matrix}.
        """
        self.assertConfigError(
            self.MODELS
            + "\n        groups:\n          g: {members: [a]}\n        matrix:\n          vars: {a: a}\n          sets: {s: a}\n",
            "matrix",
            "config cannot use both 'groups' and 'matrix'",
            8,
        )

    def test_emptyGroupsWithMatrixIsAllowed(self) -> None:
        config = load(self.MODELS + "\n        groups: {}\n        matrix: {vars: {a: a}, sets: {s: a}}\n")
        self.assertIsInstance(config.swap, MatrixConfig)


class MatrixConfigTests(ConfigTestCase):
    MODELS = """
        models:
          gemma: {cmd: srv, proxy: "http://h"}
          qwen: {cmd: srv, proxy: "http://h", aliases: [qw]}
          mistral: {cmd: srv, proxy: "http://h"}
          voxtral: {cmd: srv, proxy: "http://h"}
          rerank: {cmd: srv, proxy: "http://h"}
          llama70: {cmd: srv, proxy: "http://h"}
          sdxl: {cmd: srv, proxy: "http://h"}
        """

    SPEC_MATRIX = """
        matrix:
          vars: { g: gemma, q: qwen, m: mistral, v: voxtral, e: rerank, L: llama70, sd: sdxl }
          evict_costs: { v: 50, L: 30 }
          sets:
            standard:    "(g | q | m) & v"
            with_rerank: "(g | q) & v & e"
            creative:    "(g | q) & sd"
            full:        "L"
        """

    def matrixError(self, matrix: str, keyPath: str, fragment: str, line: Optional[int] = None) -> ConfigError:
        error = self.assertConfigError(self.MODELS + matrix, keyPath, fragment, line)
        self.assertTrue(error.message.startswith("matrix: "), error.message)
        return error

    def test_specExampleExpandsInOrder(self) -> None:
        """
        The SPEC section 2.6 example: sets in definition order, left
        alternatives first, combinations sorted.
        """
        config = load(self.MODELS + self.SPEC_MATRIX)
        matrix = config.swap
        self.assertIsInstance(matrix, MatrixConfig)
        self.assertEqual(
            [(s.name, s.varIds) for s in matrix.expanded],
            [
                ("standard", ("g", "v")),
                ("standard", ("q", "v")),
                ("standard", ("m", "v")),
                ("with_rerank", ("e", "g", "v")),
                ("with_rerank", ("e", "q", "v")),
                ("creative", ("g", "sd")),
                ("creative", ("q", "sd")),
                ("full", ("L",)),
            ],
        )
        self.assertEqual(
            matrix.expanded[0],
            ExpandedSet("standard", "(g | q | m) & v", ("g", "v"), frozenset({"gemma", "voxtral"})),
        )
        self.assertEqual(list(matrix.sets), ["standard", "with_rerank", "creative", "full"])
        self.assertEqual(matrix.vars["sd"], "sdxl")
        self.assertEqual(matrix.evictCosts, {"v": 50, "L": 30})

    def test_evictCost(self) -> None:
        matrix = load(self.MODELS + self.SPEC_MATRIX).swap
        self.assertEqual(matrix.evictCost("v"), 50)
        self.assertEqual(matrix.evictCost("voxtral"), 50)
        self.assertEqual(matrix.evictCost("L"), 30)
        self.assertEqual(matrix.evictCost("g"), 1)
        self.assertEqual(matrix.evictCost("gemma"), 1)
        self.assertEqual(matrix.evictCost("unknown"), 1)

    def test_matrixProvidesIMatrixConfig(self) -> None:
        matrix = load(self.MODELS + self.SPEC_MATRIX).swap
        self.assertTrue(verifyObject(IMatrixConfig, matrix))
        self.assertIs(matrix.matrix, matrix)

    def test_referencedSetsExpandFirst(self) -> None:
        config = load(
            self.MODELS
            + """
        matrix:
          vars: {g: gemma, q: qwen, v: voxtral, e: rerank}
          sets:
            withE: "+llms & e"
            llms: "g | q"
            voice: "+withE & v"
        """
        )
        self.assertEqual(
            [(s.name, s.varIds) for s in config.swap.expanded],
            [
                ("llms", ("g",)),
                ("llms", ("q",)),
                ("withE", ("e", "g")),
                ("withE", ("e", "q")),
                ("voice", ("e", "g", "v")),
                ("voice", ("e", "q", "v")),
            ],
        )

    def test_dslExamples(self) -> None:
        """
        24. Products, precedence and de-duplication.
        """
        config = load(
            self.MODELS
            + """
        matrix:
          vars: {a: gemma, b: qwen, c: mistral, d: voxtral}
          sets:
            prod: "(a|b) & (c|d)"
            prec: "a | b & c"
            dup: "a & a"
        """
        )
        self.assertEqual(
            [s.varIds for s in config.swap.expanded],
            [("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("a",), ("b", "c"), ("a",)],
        )

    def test_tooManyCombinationsIsRejected(self) -> None:
        """
        24. More than 1000 combinations in one expansion.
        """
        varIds = [f"v{i}" for i in range(32)]
        models = "\n".join(f"          m{i}: {{cmd: srv, proxy: 'http://h'}}" for i in range(32))
        text = (
            "        models:\n"
            + models
            + "\n        matrix:\n          vars: {"
            + ", ".join(f"v{i}: m{i}" for i in range(32))
            + "}\n          sets:\n            big: '("
            + " | ".join(varIds)
            + ") & ("
            + " | ".join(varIds)
            + ")'\n"
        )
        self.assertConfigError(text, "matrix.sets.big", 'matrix: set "big": DSL expansion exceeded 1000 combinations')

    def test_tooManyCombinationsInTotalIsRejected(self) -> None:
        alternatives = " | ".join(["g"] * 600)
        self.matrixError(
            f"""
        matrix:
          vars: {{g: gemma}}
          sets:
            one: "{alternatives}"
            two: "{alternatives}"
        """,
            "matrix.sets",
            "total expanded combinations (1200) exceed limit of 1000",
        )

    def test_varKeyTooLongIsRejected(self) -> None:
        """
        21. A var key of 9 characters.
        """
        self.matrixError(
            "\n        matrix:\n          vars: {abcdefghi: gemma}\n          sets: {s: abcdefghi}\n",
            "matrix.vars.abcdefghi",
            'var key "abcdefghi" must be alphanumeric and 1-8 characters',
            11,
        )

    def test_varKeyWithUnderscoreIsRejected(self) -> None:
        """
        21. A var key with C{_}.
        """
        self.matrixError(
            "\n        matrix:\n          vars: {a_b: gemma}\n          sets: {s: a_b}\n",
            "matrix.vars.a_b",
            "must be alphanumeric and 1-8 characters",
        )

    def test_varToUnknownModelIsRejected(self) -> None:
        """
        21. A var naming an unknown model.
        """
        self.matrixError(
            "\n        matrix:\n          vars:\n            x: nosuch\n          sets: {s: x}\n",
            "matrix.vars.x",
            'var key "x" references unknown model "nosuch"',
            12,
        )

    def test_varToAliasIsRejected(self) -> None:
        """
        21. A var naming an alias.
        """
        self.matrixError(
            "\n        matrix:\n          vars: {x: qw}\n          sets: {s: x}\n",
            "matrix.vars.x",
            'var key "x" references unknown model "qw"',
        )

    def test_varMustNameAModelId(self) -> None:
        self.matrixError(
            "\n        matrix:\n          vars: {x: [gemma]}\n          sets: {s: x}\n",
            "matrix.vars.x",
            "expected a model id, got a list",
            11,
        )

    def test_matrixMustBeAMapping(self) -> None:
        self.matrixError("\n        matrix: [a]\n", "matrix", "matrix: expected a mapping, got a list", 10)

    def test_matrixNeedsAVar(self) -> None:
        self.matrixError(
            "\n        matrix:\n          sets: {s: x}\n", "matrix.vars", "matrix must define at least one var", 10
        )

    def test_matrixNeedsASet(self) -> None:
        self.matrixError(
            "\n        matrix:\n          vars: {g: gemma}\n", "matrix.sets", "matrix must define at least one set", 10
        )

    def test_evictCostZeroIsRejected(self) -> None:
        """
        22. C{evict_costs: {v: 0}}.
        """
        self.matrixError(
            "\n        matrix:\n          vars: {v: voxtral}\n          evict_costs:\n            v: 0\n          sets: {s: v}\n",
            "matrix.evict_costs.v",
            'evict_cost for "v" must be a positive integer, got 0',
            13,
        )

    def test_evictCostForUndeclaredVarIsRejected(self) -> None:
        """
        22. An evict cost for an undeclared var.
        """
        self.matrixError(
            "\n        matrix:\n          vars: {v: voxtral}\n          evict_costs: {z: 3}\n          sets: {s: v}\n",
            "matrix.evict_costs.z",
            'evict_costs: unknown var ID "z"',
            12,
        )

    def test_evictCostTypeErrorIsPrefixed(self) -> None:
        self.matrixError(
            "\n        matrix:\n          vars: {v: voxtral}\n          evict_costs: {v: high}\n          sets: {s: v}\n",
            "matrix.evict_costs.v",
            'matrix: expected integer, got "high"',
        )

    def test_circularReferenceIsRejected(self) -> None:
        """
        23. C{a: "+b"}, C{b: "+a"}.
        """
        self.matrixError(
            '\n        matrix:\n          vars: {g: gemma}\n          sets:\n            a: "+b"\n            b: "+a"\n',
            "matrix.sets.a",
            'circular reference detected involving set "a"',
            13,
        )

    def test_undefinedSetReferenceIsRejected(self) -> None:
        """
        23. C{+nosuch}.
        """
        self.matrixError(
            '\n        matrix:\n          vars: {g: gemma}\n          sets:\n            a: "g & +nosuch"\n',
            "matrix.sets.a",
            'set "a" references undefined set "nosuch"',
            13,
        )

    def test_unknownVarInDSLIsRejected(self) -> None:
        """
        23. A DSL identifier that is not a var.
        """
        self.matrixError(
            '\n        matrix:\n          vars: {g: gemma}\n          sets:\n            a: "g & gemma"\n',
            "matrix.sets.a",
            'set "a": unknown var ID "gemma"',
            13,
        )

    def test_dslSyntaxErrorIsRejected(self) -> None:
        self.matrixError(
            '\n        matrix:\n          vars: {g: gemma}\n          sets:\n            a: "(g"\n',
            "matrix.sets.a",
            'set "a": missing closing parenthesis',
            13,
        )

    def test_emptyDSLIsRejected(self) -> None:
        self.matrixError(
            '\n        matrix:\n          vars: {g: gemma}\n          sets:\n            a: ""\n',
            "matrix.sets.a",
            "empty DSL expression",
        )


class HookTests(ConfigTestCase):
    def test_preloadNormalised(self) -> None:
        """
        26. Trimmed, blanks dropped, aliases resolved, unknown dropped.
        """
        config = load(
            """
            models:
              m1: {cmd: srv, proxy: "http://h"}
              m2: {cmd: srv, proxy: "http://h", aliases: [alias-of-m2]}
            hooks:
              on_startup:
                preload: [" m1 ", "", "alias-of-m2", "unknown"]
            """
        )
        self.assertEqual(config.hooks, HooksConfig(preload=("m1", "m2")))

    def test_preloadResolvesSetParamsByIDKeys(self) -> None:
        config = load(
            """
            models:
              m: {cmd: srv, proxy: "http://h", filters: {setParamsByID: {"m:hi": {}}}}
            hooks: {on_startup: {preload: ["m:hi"]}}
            """
        )
        self.assertEqual(config.hooks.preload, ("m",))


class ApiKeyTests(ConfigTestCase):
    def test_apiKeys(self) -> None:
        self.assertEqual(load("apiKeys: [a, b-2]").apiKeys, ("a", "b-2"))

    def test_emptyApiKeyIsRejected(self) -> None:
        """
        17. An empty key.
        """
        self.assertConfigError('apiKeys:\n  - ok\n  - ""\n', "apiKeys[1]", "empty api key found in apiKeys", 3)

    def test_apiKeyWithSpaceIsRejected(self) -> None:
        """
        17. A key with a space.
        """
        self.assertConfigError(
            'apiKeys: ["key 123"]\n', "apiKeys[0]", "api key cannot contain spaces: `key 123`", 1
        )


class PeerTests(ConfigTestCase):
    def test_peerDefaults(self) -> None:
        config = load("peers:\n  p: {proxy: 'http://peer:8080', models: [x, y]}\n")
        self.assertEqual(
            config.peers["p"],
            PeerConfig(
                id="p",
                proxy="http://peer:8080",
                models=("x", "y"),
                apiKey="",
                filters=FiltersConfig(),
                timeouts=TimeoutsConfig(responseHeader=60),
            ),
        )

    def test_peersSortedById(self) -> None:
        config = load("peers:\n  b: {proxy: 'http://b', models: [x]}\n  a: {proxy: 'http://a', models: [y]}\n")
        self.assertEqual(list(config.peers), ["a", "b"])

    def test_peerWithoutProxyIsRejected(self) -> None:
        """
        18. No proxy.
        """
        self.assertConfigError("peers:\n  p:\n    models: [x]\n", "peers.p.proxy", "proxy is required", 2)

    def test_peerWithBadProxyIsRejected(self) -> None:
        self.assertConfigError(
            "peers:\n  p: {proxy: 'peer:8080', models: [x]}\n",
            "peers.p.proxy",
            "invalid peer proxy URL (peer:8080)",
            2,
        )

    def test_peerWithEmptyModelsIsRejected(self) -> None:
        """
        18. No models.
        """
        self.assertConfigError(
            "peers:\n  p:\n    proxy: http://h\n    models: []\n", "peers.p.models", "peer models can not be empty", 4
        )
        self.assertConfigError("peers:\n  p: {proxy: 'http://h'}\n", "peers.p.models", "peer models can not be empty")

    def test_peerApiKeyUnknownMacroIsRejected(self) -> None:
        """
        18. C{apiKey: ${UNKNOWN}}.
        """
        error = self.assertConfigError(
            "peers:\n  p:\n    proxy: http://h\n    models: [x]\n    apiKey: ${UNKNOWN}\n",
            "peers.p.apiKey",
            "unknown macro '${UNKNOWN}'",
            5,
        )
        self.assertIn("peers.p.apiKey: unknown macro '${UNKNOWN}'", str(error))

    def test_peerMacros(self) -> None:
        """
        Global macros (only) apply to apiKey, stripParams and setParams,
        type-preserving.
        """
        config = load(
            """
            macros: {key: s3cret, t: 0.2, strip: top_k}
            peers:
              p:
                proxy: http://h
                models: [x]
                apiKey: "${key}"
                filters:
                  stripParams: "${strip}, model"
                  setParams: {temperature: "${t}", note: "t=${t}", model: no}
            """
        )
        peer = config.peers["p"]
        self.assertEqual(peer.apiKey, "s3cret")
        self.assertEqual(peer.filters.stripParams, ("top_k",))
        self.assertEqual(peer.filters.setParams, {"note": "t=0.2", "temperature": 0.2})

    def test_peerSetParamsUnknownMacroIsRejected(self) -> None:
        self.assertConfigError(
            "peers:\n  p:\n    proxy: http://h\n    models: [x]\n    filters:\n      setParams:\n        a: ${nope}\n",
            "peers.p.filters.setParams.a",
            "unknown macro '${nope}'",
            7,
        )

    def test_peerStripParamsUnknownMacroIsRejected(self) -> None:
        error = self.assertConfigError(
            "peers:\n  p:\n    proxy: http://h\n    models: [x]\n    filters: {stripParams: '${nope}'}\n",
            "peers.p.filters.stripParams",
            "unknown macro '${nope}'",
        )
        self.assertIn("peers.p.filters.stripParams: unknown macro", str(error))

    def test_peerTimeouts(self) -> None:
        config = load("peers:\n  p: {proxy: 'http://h', models: [x], timeouts: {responseHeader: 5, connect: 2}}\n")
        self.assertEqual(config.peers["p"].timeouts, TimeoutsConfig(connect=2, responseHeader=5))

    def test_peerEnvMacroApiKey(self) -> None:
        config = load("peers:\n  p: {proxy: 'http://h', models: [x], apiKey: '${env.PK}'}\n", {"PK": "k1"})
        self.assertEqual(config.peers["p"].apiKey, "k1")


class DurationTests(SynchronousTestCase):
    def test_parseDuration(self) -> None:
        self.assertEqual(parseDuration("5s"), 5_000_000_000)
        self.assertEqual(parseDuration("1h2m3.5s"), 3_723_500_000_000)
        self.assertEqual(parseDuration("1.5ms"), 1_500_000)
        self.assertEqual(parseDuration("2us"), parseDuration("2\u00b5s"))
        self.assertEqual(parseDuration("-1m"), -60_000_000_000)
        self.assertEqual(parseDuration("+.5s"), 500_000_000)
        self.assertEqual(parseDuration("0"), 0)

    def test_parseDurationErrors(self) -> None:
        for text in ("", "5", "s", "1.s.", "-", "5 s"):
            self.assertRaises(ValueError, parseDuration, text)
        e = self.assertRaises(ValueError, parseDuration, "5x")
        self.assertIn('unknown unit "x"', str(e))

    def test_formatDurationAsGo(self) -> None:
        cases = {
            0: "0s",
            5: "5ns",
            1_500: "1.5\u00b5s",
            500_000_000: "500ms",
            1_000_000_000: "1s",
            1_500_000_000: "1.5s",
            90_000_000_000: "1m30s",
            3_600_000_000_000: "1h0m0s",
            -2_000_000_000: "-2s",
        }
        for nanoseconds, text in cases.items():
            self.assertEqual(formatDuration(nanoseconds), text)


class GoFormatTests(SynchronousTestCase):
    def test_goFormat(self) -> None:
        """
        Macro values interpolate as Go's C{%v} prints them.
        """
        cases = [
            (True, "true"),
            (False, "false"),
            (42, "42"),
            ("s", "s"),
            (0.7, "0.7"),
            (2.0, "2"),
            (123456.0, "123456"),
            (1234567.0, "1.234567e+06"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5, "-2.5"),
            (0.0, "0"),
            (-0.0, "-0"),
            (float("inf"), "+Inf"),
            (float("-inf"), "-Inf"),
            (float("nan"), "NaN"),
        ]
        for value, text in cases:
            self.assertEqual(goFormat(value), text, value)


class LoadConfigTests(ConfigTestCase):
    def test_loadConfigReadsFile(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("startPort: ${env.P}\n")
        self.assertEqual(loadConfig(path, {"P": "6000"}).startPort, 6000)

    def test_unreadableFileIsRejected(self) -> None:
        path = self.mktemp()
        with self.assertRaises(ConfigError) as caught:
            loadConfig(path)
        self.assertEqual(caught.exception.keyPath, "")
        self.assertTrue(caught.exception.message.startswith(f"cannot read {path}: "))
        self.assertIsNone(caught.exception.line)

    def test_nonUTF8FileIsRejected(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"logLevel: \xff\xfe\n")
        with self.assertRaises(ConfigError) as caught:
            loadConfig(path)
        self.assertIn("cannot read", caught.exception.message)

    def test_firstErrorIsRaised(self) -> None:
        """
        With several problems, one L{ConfigError} (the first found) is
        raised.
        """
        with self.assertRaises(ConfigError) as caught:
            load("startPort: 0\nglobalTTL: -1\n")
        self.assertEqual(caught.exception.keyPath, "startPort")


class ExampleFileTests(ConfigTestCase):
    def test_exampleLoadsWithoutWarnings(self) -> None:
        config = loadConfig(EXAMPLE, environ={})
        self.assertEqual(config.warnings, ())
        self.assertIsInstance(config.swap, GroupsConfig)
        self.assertTrue(config.models)
        self.assertTrue(config.peers)
        self.assertTrue(config.hooks.preload)

    def test_exampleMatrixAlternativeLoads(self) -> None:
        """
        The commented-out matrix, uncommented instead of the groups, is
        valid too.
        """
        with open(EXAMPLE) as f:
            text = f.read()
        start = text.index("\ngroups:\n")
        end = text.index("\n# The solver-based alternative")
        text = text[:start] + text[end:]
        matrixBlock = re.search(r"# matrix:\n(?:#.*\n)+", text)
        assert matrixBlock is not None
        uncommented = re.sub(r"^# ?", "", matrixBlock.group(0), flags=re.M)
        text = text.replace(matrixBlock.group(0), uncommented)
        config = loadConfigText(text, environ={})
        self.assertEqual(config.warnings, ())
        self.assertIsInstance(config.swap, MatrixConfig)
        self.assertTrue(config.swap.expanded)

    def test_exampleMentionsEveryKey(self) -> None:
        """
        Every key the loader knows appears in the example file.
        """
        with open(EXAMPLE) as f:
            text = f.read()
        for key in (
            "healthCheckTimeout", "logLevel", "logTimeFormat", "logToStdout", "metricsMaxInMemory",
            "captureBuffer", "performance", "disabled", "every", "startPort", "globalTTL",
            "unloadTimeout", "sendLoadingState", "includeAliasesInList", "maxRequestBodyMB",
            "macros", "models", "groups", "matrix", "vars", "evict_costs", "sets", "hooks",
            "on_startup", "preload", "apiKeys", "peers", "cmd", "cmdStop", "proxy", "aliases",
            "env", "checkEndpoint", "ttl", "unlisted", "useModelName", "name", "description",
            "concurrencyLimit", "filters", "stripParams", "strip_params", "setParams",
            "setParamsByID", "metadata", "timeouts", "connect", "keepalive", "responseHeader",
            "tlsHandshake", "expectContinue", "idleConn", "apiKey", "swap", "exclusive",
            "persistent", "members", "${env.",
        ):
            self.assertIn(key, text)


class MaxQueueWaitTests(SynchronousTestCase):
    """
    llamaswap's own bound on waiting, C{maxQueueWait}.
    """

    def test_defaultIsThirtySeconds(self):
        self.assertEqual(loadConfigText("models: {}").maxQueueWait, 30)

    def test_offAndZeroDisableIt(self):
        self.assertEqual(loadConfigText("maxQueueWait: off").maxQueueWait, 0)
        self.assertEqual(loadConfigText("maxQueueWait: 0").maxQueueWait, 0)

    def test_negativeIsAnError(self):
        e = self.assertRaises(ConfigError, loadConfigText, "maxQueueWait: -1")
        self.assertEqual(e.keyPath, "maxQueueWait")

    def test_notANumberIsAnError(self):
        e = self.assertRaises(ConfigError, loadConfigText, "maxQueueWait: soon")
        self.assertIn("expected integer", str(e))


class LifecycleKeysTests(SynchronousTestCase):
    """
    shutdownTimeout, the logged healthCheckTimeout minimum, and ports kept
    across a reload.
    """

    MODELS = "models:\n  b: {cmd: 'srv --port ${PORT}'}\n  c: {cmd: 'srv --port ${PORT}'}\n"

    def test_shutdownTimeout(self):
        self.assertEqual(loadConfigText(self.MODELS).shutdownTimeout, 10)
        self.assertEqual(loadConfigText("shutdownTimeout: 0\n" + self.MODELS).shutdownTimeout, 0)
        e = self.assertRaises(ConfigError, loadConfigText, "shutdownTimeout: -1\n" + self.MODELS)
        self.assertEqual(e.keyPath, "shutdownTimeout")

    def test_healthCheckTimeoutMinimumIsLogged(self):
        config = loadConfigText("healthCheckTimeout: 5\n" + self.MODELS)
        self.assertEqual(config.healthCheckTimeout, 15)
        self.assertIn("healthCheckTimeout: 5s is raised to its minimum, 15s", config.warnings)

    def test_keptPortsAndFreshOnes(self):
        """
        Models given their former ports keep them; a new model sorted
        before them gets a port none of them uses.
        """
        config = loadConfigText("models:\n  a: {cmd: 'srv --port ${PORT}'}\n" + self.MODELS[8:],
                                ports={"b": 5800, "c": 5801})
        self.assertEqual({m: config.models[m].port for m in "abc"},
                         {"a": 5802, "b": 5800, "c": 5801})
        self.assertEqual(config.models["b"].cmd, "srv --port 5800")
        self.assertEqual(config.models["a"].proxy, "http://localhost:5802")
