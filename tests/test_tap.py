"""
Tests for L{llamaswap.tap} and the twistd plugin: options, the default
config, endpoint descriptions, start-up errors and the service tree.
"""

import gc
import io
import os
import sys

from twisted.application.service import IServiceMaker, MultiService, Service
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.scripts._twistd_unix import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from llamaswap.config import loadConfig
from llamaswap.service import makeRootService
from llamaswap.tap import (
    GC_FIRST_GENERATION,
    Options,
    StartupError,
    StartupGuard,
    bundledConfigPath,
    endpointParameters,
    listenDescription,
    tuneCollector,
)
from tests.fakes import writeCertificate


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

    def test_tlsFilesTurnATcpEndpointIntoTls(self):
        """
        TLS asked for with a C{tcp:} endpoint is applied to it: never plain
        HTTP where TLS was asked.
        """
        self.assertEqual(
            listenDescription("tcp:8443:interface=127.0.0.1:backlog=9", "/c.pem", "/k:.pem"),
            "ssl:8443:interface=127.0.0.1:backlog=9:certKey=/c.pem:privateKey=/k\\:.pem",
        )

    def test_tlsFilesCompleteAnSslEndpointWithoutKey(self):
        self.assertEqual(
            listenDescription("ssl:8443", "/c.pem", "/k.pem"),
            "ssl:8443:certKey=/c.pem:privateKey=/k.pem",
        )

    def test_tlsFilesAndAnSslEndpointWithItsOwnKeyAreRefused(self):
        error = self.assertRaises(
            StartupError, listenDescription, "ssl:8443:privateKey=o.pem", "/c.pem", "/k.pem"
        )
        self.assertIn("names its own TLS key", error.message)

    def test_tlsFilesCannotApplyToAUnixSocket(self):
        error = self.assertRaises(
            StartupError, listenDescription, "unix:/tmp/l.sock", "/c.pem", "/k.pem"
        )
        self.assertIn("unix:/tmp/l.sock", error.message)
        self.assertEqual(error.code, "llamaswap: " + error.message)

    def test_garbageIsAUsageError(self):
        for value in ["nonsense", "host:port", "1.2.3.4:99999"]:
            self.assertRaises(usage.UsageError, listenDescription, value)

    def test_endpointParameters(self):
        self.assertEqual(
            endpointParameters("SSL:443:interface=\\:\\:1:privateKey=/a\\:b.pem"),
            ("ssl", ["443"], {"interface": "::1", "privateKey": "/a:b.pem"}),
        )


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
        self.assertEqual(options["endpoints"], ["tcp:8080:interface=127.0.0.1"])
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

    def test_listenMayBeRepeated(self):
        options = Options()
        options.parseOptions(["--listen", ":9000", "-l", "unix:/tmp/l.sock"])
        self.assertEqual(options["endpoints"], ["tcp:9000", "unix:/tmp/l.sock"])

    def test_badConfigIsAStartupErrorNamingFileKeyAndLine(self):
        path = self.writeConfig("models:\n  qwen:\n    cmd: srv\n    ttl: ten\n")
        error = self.assertRaises(StartupError, Options().parseOptions, ["-c", path])
        self.assertEqual(
            error.code,
            f'llamaswap: config {os.path.abspath(path)}: models.qwen.ttl: expected integer, '
            'got "ten" (line 4)',
        )

    def test_missingConfigIsAStartupError(self):
        path = os.path.abspath(self.mktemp())
        error = self.assertRaises(StartupError, Options().parseOptions, ["-c", path])
        self.assertEqual(
            error.code, f"llamaswap: config: cannot read {path}: No such file or directory"
        )

    def test_tlsFilesGoTogether(self):
        self.assertRaises(
            usage.UsageError, Options().parseOptions, ["--tls-cert-file", "c.pem"]
        )

    def test_tlsFilesAreChecked(self):
        cert, key = writeCertificate(self.mktemp())
        other, otherKey = writeCertificate(self.mktemp(), "other")
        missing = os.path.abspath(self.mktemp())
        cases = [
            ([missing, key], f"cannot read TLS certificate {missing}: No such file"),
            ([cert, os.path.dirname(key)], "cannot read TLS key"),
            ([key, key], "no PEM certificate in it"),
            ([cert, cert], "no PEM private key in it"),
            ([cert, otherKey], "does not match the certificate"),
        ]
        for (certFile, keyFile), fragment in cases:
            error = self.assertRaises(
                StartupError, Options().parseOptions,
                ["--tls-cert-file", certFile, "--tls-key-file", keyFile],
            )
            self.assertIn(fragment, error.message)
        options = Options()
        options.parseOptions(["--tls-cert-file", cert, "--tls-key-file", key])
        self.assertTrue(options["endpoint"].startswith("ssl:8080:"))

    def test_sslEndpointFilesAreChecked(self):
        missing = os.path.abspath(self.mktemp())
        error = self.assertRaises(
            StartupError, Options().parseOptions, ["--listen", f"ssl:0:privateKey={missing}"]
        )
        self.assertIn("cannot read TLS", error.message)


class PidfileTests(SynchronousTestCase):
    """
    Under C{twistd -n} no pidfile is written unless one is asked for, so
    two instances can run from one folder.
    """

    def parse(self, *args):
        options = ServerOptions()
        options.parseOptions(list(args))
        return options

    def test_nodaemonWritesNoPidfileByDefault(self):
        self.assertEqual(self.parse("-n", "llamaswap", "--listen", ":0")["pidfile"], "")

    def test_nodaemonKeepsAPidfileAskedFor(self):
        options = self.parse("-n", "--pidfile=mine.pid", "llamaswap", "--listen", ":0")
        self.assertEqual(options["pidfile"], os.path.abspath("mine.pid"))

    def test_daemonKeepsTwistdsDefault(self):
        options = self.parse("llamaswap", "--listen", ":0")
        self.assertEqual(options["pidfile"], os.path.abspath("twistd.pid"))


class FailingService(Service):
    def __init__(self, error):
        self.error = error

    def privilegedStartService(self):
        raise self.error


class StartupGuardTests(SynchronousTestCase):
    def guard(self, error, options=None):
        return StartupGuard(FailingService(error), options)

    def test_portInUseIsOneLineOnStderr(self):
        stderr = io.StringIO()
        self.patch(sys, "__stderr__", stderr)
        error = CannotListenError("127.0.0.1", 8080, OSError(98, "Address already in use"))
        exit = self.assertRaises(SystemExit, self.guard(error).privilegedStartService)
        self.assertEqual(exit.code, 1)
        self.assertEqual(
            stderr.getvalue(), "llamaswap: cannot listen on 127.0.0.1:8080: Address already in use\n"
        )

    def test_unixSocketPathIsNamed(self):
        stderr = io.StringIO()
        self.patch(sys, "__stderr__", stderr)
        error = CannotListenError(None, "/run/x/l.sock", OSError(2, "No such file or directory"))
        self.assertRaises(SystemExit, self.guard(error).privilegedStartService)
        self.assertEqual(
            stderr.getvalue(),
            "llamaswap: cannot listen on /run/x/l.sock: No such file or directory\n",
        )

    def test_daemonizedTheParentIsToldAndThePidfileRemoved(self):
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        pidfile = self.mktemp()
        with open(pidfile, "w") as f:
            f.write("1")
        options = {"statusPipe": w, "pidfile": pidfile}
        error = CannotListenError("", 80, OSError(13, "Permission denied"))
        self.assertRaises(SystemExit, self.guard(error, options).privilegedStartService)
        self.assertEqual(os.read(r, 200), b"1 llamaswap: cannot listen on *:80: Permission denied")
        self.assertIsNone(options["statusPipe"])
        self.assertFalse(os.path.exists(pidfile))

    def test_fileErrorsNameTheFile(self):
        stderr = io.StringIO()
        self.patch(sys, "__stderr__", stderr)
        error = FileNotFoundError(2, "No such file or directory", "123", None, b"/x/l.sock.lock")
        self.assertRaises(SystemExit, self.guard(error).privilegedStartService)
        self.assertEqual(
            stderr.getvalue(), "llamaswap: cannot start: /x/l.sock.lock: No such file or directory\n"
        )

    def test_otherFailuresAreOneLineToo(self):
        stderr = io.StringIO()
        self.patch(sys, "__stderr__", stderr)
        self.assertRaises(SystemExit, self.guard(ValueError("bad")).privilegedStartService)
        self.assertEqual(stderr.getvalue(), "llamaswap: cannot start: ValueError: bad\n")


class ServiceTests(SynchronousTestCase):
    def test_treeHasRouterAndWeb(self):
        config = loadConfig(bundledConfigPath(), environ={"LLAMASWAP_PYTHON": "/py"})
        root = makeRootService(config, MemoryReactorClock(), "tcp:0:interface=127.0.0.1")
        self.assertIsInstance(root, MultiService)
        names = [s.name for s in root]
        self.assertEqual(names, ["housekeeping", "observatory", "router", "web"])
        self.assertEqual(set(root.getServiceNamed("router").machines), set(config.models))

    def test_severalListenersAreOneWebService(self):
        config = loadConfig(bundledConfigPath(), environ={"LLAMASWAP_PYTHON": "/py"})
        root = makeRootService(
            config, MemoryReactorClock(), ["tcp:0:interface=127.0.0.1", "unix:/tmp/x.sock"]
        )
        web = root.getServiceNamed("web")
        self.assertEqual(len(list(web)), 2)


class PluginTests(SynchronousTestCase):
    def test_pluginIsDiscovered(self):
        [plugin] = [p for p in getPlugins(IServiceMaker) if p.tapname == "llamaswap"][:1]
        self.assertEqual(plugin.options, Options)


class CollectorTests(SynchronousTestCase):
    """
    L{tuneCollector}: the daemon's youngest generation is collected
    less often; the other thresholds, and a disabled collector, stay.
    """

    def setUp(self) -> None:
        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)

    def test_firstGenerationRaised(self) -> None:
        gc.set_threshold(700, 10, 10)
        self.assertEqual(tuneCollector(), (700, 10, 10))
        self.assertEqual(gc.get_threshold(), (GC_FIRST_GENERATION, 10, 10))

    def test_higherOrDisabledIsKept(self) -> None:
        gc.set_threshold(50000, 10, 10)
        tuneCollector()
        self.assertEqual(gc.get_threshold(), (50000, 10, 10))
        gc.set_threshold(0, 10, 10)
        tuneCollector()
        self.assertEqual(gc.get_threshold(), (0, 10, 10))

