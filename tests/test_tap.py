"""
Tests for L{llamaswap.tap} and the twistd plugin: options, the default
config, endpoint descriptions and the service tree.
"""

import os

from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from llamaswap.config import loadConfig
from llamaswap.service import makeRootService
from llamaswap.tap import Options, bundledConfigPath, listenDescription


class ListenTests(SynchronousTestCase):
    def test_hostAndPort(self):
        self.assertEqual(listenDescription("0.0.0.0:9000"), "tcp:9000:interface=0.0.0.0")

    def test_portAloneListensEverywhere(self):
        self.assertEqual(listenDescription(":9000"), "tcp:9000")

    def test_ipv6HostIsEscaped(self):
        self.assertEqual(listenDescription("[::1]:8080"), "tcp:8080:interface=\\:\\:1")

    def test_hostnameIsNotAnEndpointType(self):
        self.assertEqual(listenDescription("localhost:80"), "tcp:80:interface=localhost")

    def test_endpointDescriptionsPassThrough(self):
        for value in ["tcp:8080:interface=127.0.0.1", "unix:/run/llamaswap.sock",
                      "ssl:8443:privateKey=k.pem", "tcp6:8080"]:
            self.assertEqual(listenDescription(value), value)

    def test_tlsFilesMakeAnSslEndpoint(self):
        self.assertEqual(
            listenDescription("127.0.0.1:8443", "/c.pem", "/k.pem"),
            "ssl:8443:interface=127.0.0.1:certKey=/c.pem:privateKey=/k.pem",
        )

    def test_garbageIsAUsageError(self):
        for value in ["nonsense", "host:port", "1.2.3.4:99999"]:
            self.assertRaises(usage.UsageError, listenDescription, value)


class OptionsTests(SynchronousTestCase):
    def writeConfig(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_defaultsServeTheBundledDemo(self):
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["endpoint"], "tcp:8080:interface=127.0.0.1")
        self.assertEqual(options["configPath"], os.path.abspath(bundledConfigPath()))
        self.assertGreaterEqual(len(options["parsed"].models), 3)

    def test_bundledDemoModelsRunTheDemoResponder(self):
        config = loadConfig(bundledConfigPath(), environ={"LLAMASWAP_PYTHON": "/py"})
        for model in config.models.values():
            self.assertEqual(model.argv[:3], ("/py", "-m", "llamaswap.demo"))

    def test_configAndListen(self):
        path = self.writeConfig("models:\n  m:\n    cmd: srv --port ${PORT}\n")
        options = Options()
        options.parseOptions(["-c", path, "--listen", ":9000"])
        self.assertEqual(list(options["parsed"].models), ["m"])
        self.assertEqual(options["endpoint"], "tcp:9000")

    def test_badConfigIsAUsageErrorNamingTheKey(self):
        path = self.writeConfig("models:\n  qwen:\n    cmd: srv\n    ttl: ten\n")
        error = self.assertRaises(usage.UsageError, Options().parseOptions, ["-c", path])
        self.assertIn("models.qwen.ttl", str(error))
        self.assertIn("line 4", str(error))

    def test_missingConfigIsAUsageError(self):
        error = self.assertRaises(
            usage.UsageError, Options().parseOptions, ["-c", self.mktemp()]
        )
        self.assertIn("cannot read", str(error))

    def test_tlsFilesGoTogether(self):
        self.assertRaises(
            usage.UsageError, Options().parseOptions, ["--tls-cert-file", "c.pem"]
        )


class ServiceTests(SynchronousTestCase):
    def test_treeHasRouterAndWeb(self):
        config = loadConfig(bundledConfigPath(), environ={"LLAMASWAP_PYTHON": "/py"})
        root = makeRootService(config, MemoryReactorClock(), "tcp:0:interface=127.0.0.1")
        self.assertIsInstance(root, MultiService)
        names = [s.name for s in root]
        self.assertEqual(names, ["housekeeping", "observatory", "router", "web"])
        self.assertEqual(set(root.getServiceNamed("router").machines), set(config.models))


class PluginTests(SynchronousTestCase):
    def test_pluginIsDiscovered(self):
        [plugin] = [p for p in getPlugins(IServiceMaker) if p.tapname == "llamaswap"][:1]
        self.assertEqual(plugin.options, Options)
