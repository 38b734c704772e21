# -*- test-case-name: tests.test_tap,tests.integration.test_daemon -*-
"""
The twistd plugin's options and service factory.

C{twistd -n llamaswap [-c config.yaml] [--listen 127.0.0.1:8080 ...]}.  With
no C{-c}, the bundled demo config is served.

What stops llamaswap from starting (a config it cannot use, a TLS file it
cannot read, a port it cannot listen on) ends twistd with status 1 and one
line on standard error saying so: a L{StartupError}, never a traceback or
twistd's usage text.
"""

from __future__ import annotations

import gc
import os
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any, List, Tuple

from twisted.application.service import IService, MultiService
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from llamaswap._version import __version__
from llamaswap.config import ConfigError, loadConfig

log = Logger()

DEFAULT_LISTEN = "127.0.0.1:8080"
TWISTD_DEFAULT_PIDFILE = "twistd.pid"
_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d+)$")
_UNESCAPED_COLON = re.compile(r"(?<!\\):")


class StartupError(SystemExit):
    """
    A reason llamaswap cannot start.  Raised out of twistd it ends the
    process with status 1, printing C{llamaswap: <message>} (one line) on
    standard error.

    @ivar message: what is wrong, naming the file or port.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"llamaswap: {message}")
        self.message = message


def bundledConfigPath(name: str = "demo.yaml") -> str:
    """
    @return: the path of a config shipped with llamaswap (installed as
        C{llamaswap/configs/}, or C{config/} beside the package in a source
        checkout).
    """
    try:
        candidate = resources.files("llamaswap") / "configs" / name
        if candidate.is_file():
            return str(candidate)
    except (ModuleNotFoundError, FileNotFoundError):
        pass
    return str(Path(__file__).resolve().parent.parent / "config" / name)


def _endpointPrefixes() -> set[str]:
    """
    @return: the prefixes of every server endpoint type Twisted knows
        (C{tcp}, C{ssl}, C{unix}, ... and those of installed plugins).
    """
    from twisted.internet import endpoints
    from twisted.internet.interfaces import IStreamServerEndpointStringParser
    from twisted.plugin import getPlugins

    prefixes = {name.lower() for name in endpoints._serverParsers}
    prefixes.update(p.prefix.lower() for p in getPlugins(IStreamServerEndpointStringParser))
    return prefixes


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def endpointParameters(description: str) -> Tuple[str, List[str], dict[str, str]]:
    """
    @return: the type (lower case), positional and keyword arguments of an
        endpoint description, unescaped.
    """
    parts = _UNESCAPED_COLON.split(description)
    args: List[str] = []
    kwargs: dict[str, str] = {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep and "\\" not in key:
            kwargs[key] = _unescape(value)
        else:
            args.append(_unescape(part))
    return parts[0].lower(), args, kwargs


def _withTLS(value: str, certFile: str, keyFile: str) -> str:
    """
    @return: the endpoint description C{value} listening with TLS: a C{tcp:}
        or C{tcp6:} one becomes C{ssl:}, an C{ssl:} one without its own
        certificate gets this one.

    @raise StartupError: for any other type, or an C{ssl:} one that names
        its own key: never plain HTTP where TLS was asked for, nor a silent
        choice between two certificates.
    """
    kind, _, kwargs = endpointParameters(value)
    rest = value.split(":", 1)[1] if ":" in value else ""
    tls = ":certKey=" + _escape(certFile) + ":privateKey=" + _escape(keyFile)
    if kind in ("tcp", "tcp6"):
        return "ssl:" + rest + tls
    if kind == "ssl":
        if "certKey" in kwargs or "privateKey" in kwargs:
            raise StartupError(
                f"--listen {value} names its own TLS key: give it there or with "
                "--tls-cert-file/--tls-key-file, not both"
            )
        return value + tls
    raise StartupError(
        f"--tls-cert-file/--tls-key-file cannot apply to --listen {value}: TLS is served "
        "on host:port, tcp: and ssl: listeners only"
    )


def listenDescription(value: str, certFile: str | None = None, keyFile: str | None = None) -> str:
    """
    Turn a C{--listen} value into a Twisted server endpoint description.

    C{host:port}, C{[v6]:port} and C{:port} (every interface) are accepted,
    as is any endpoint description (C{tcp:...}, C{ssl:...}, C{unix:...}).
    With a certificate and key, the listener serves TLS (see L{_withTLS}).

    @raise usage.UsageError: for a value that is neither.
    @raise StartupError: for TLS asked of a listener that cannot serve it.
    """
    if value.split(":", 1)[0].lower() in _endpointPrefixes():
        return _withTLS(value, certFile, keyFile or "") if certFile else value
    match = _HOST_PORT.match(value)
    if match is None:
        raise usage.UsageError(
            f"--listen: expected host:port, :port or an endpoint description, got {value!r}"
        )
    port = int(match.group("port"))
    if not 0 <= port <= 65535:
        raise usage.UsageError(f"--listen: port out of range: {port}")
    host = match.group("v6") or match.group("host") or ""
    kind = "ssl" if certFile else "tcp"
    description = f"{kind}:{port}"
    if host:
        description += ":interface=" + host.replace(":", "\\:")
    if certFile:
        description += ":certKey=" + certFile.replace(":", "\\:")
        description += ":privateKey=" + (keyFile or "").replace(":", "\\:")
    return description


def _readFile(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise StartupError(f"cannot read {what} {path}: {e.strerror or e}") from None


def checkTLSFiles(certFile: str, keyFile: str) -> None:
    """
    Check that C{certFile} holds a PEM certificate and C{keyFile} its PEM
    private key (both may be one file).

    @raise StartupError: naming the file that is missing, unreadable or
        not what it should be.
    """
    from OpenSSL import crypto
    from twisted.internet import ssl

    certData = _readFile(certFile, "TLS certificate")
    keyData = _readFile(keyFile, "TLS key")
    try:
        certificate = ssl.Certificate.loadPEM(certData)
    except Exception:
        raise StartupError(f"TLS certificate {certFile}: no PEM certificate in it") from None
    try:
        key = ssl.KeyPair.load(keyData, crypto.FILETYPE_PEM)
    except Exception:
        raise StartupError(f"TLS key {keyFile}: no PEM private key in it") from None
    if not key.keyHash() == certificate.getPublicKey().keyHash():
        raise StartupError(f"TLS key {keyFile} does not match the certificate {certFile}")


def _checkEndpointTLS(description: str) -> None:
    kind, _, kwargs = endpointParameters(description)
    if kind == "ssl":
        key = kwargs.get("privateKey", "server.pem")
        checkTLSFiles(kwargs.get("certKey", key), key)


class Options(usage.Options):
    synopsis = "[-c config.yaml] [--listen host:port ...]"
    longdesc = (
        "Serve OpenAI- and Anthropic-compatible APIs in front of local inference "
        "servers, starting and swapping them on demand.  Without -c, the bundled "
        "demo config is served.  With -n and no --pidfile, no pidfile is written."
    )
    optParameters = [
        ["config", "c", None, "Path to the YAML configuration (default: the bundled demo)."],
        ["tls-cert-file", None, None, "TLS certificate (PEM); requires --tls-key-file."],
        ["tls-key-file", None, None, "TLS private key (PEM); requires --tls-cert-file."],
    ]
    optFlags = [
        ["version", "V", "Print the version and exit."],
        ["watch-config", "w",
         "Reload the config when its file changes (SIGHUP always reloads it)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, value: str) -> None:
        """host:port, :port or an endpoint (tcp:, ssl:, unix:...); repeatable [default: 127.0.0.1:8080]"""
        self["listen"].append(value)

    opt_l = opt_listen

    def opt_version(self) -> None:
        print(f"llamaswap {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        cert, key = self["tls-cert-file"], self["tls-key-file"]
        if bool(cert) != bool(key):
            raise usage.UsageError("--tls-cert-file and --tls-key-file go together")
        if cert:
            cert, key = os.path.abspath(cert), os.path.abspath(key)
            checkTLSFiles(cert, key)
        listen = self["listen"] or [DEFAULT_LISTEN]
        self["endpoints"] = [listenDescription(value, cert, key) for value in listen]
        for description in self["endpoints"]:
            if not cert:
                _checkEndpointTLS(description)
        self["endpoint"] = self["endpoints"][0]
        # twistd may chdir (--rundir) after this: resolve the path now.
        path = os.path.abspath(self["config"] or bundledConfigPath())
        # Lets configs (the bundled demo among them) name this interpreter.
        os.environ.setdefault("LLAMASWAP_PYTHON", sys.executable)
        self["configPath"] = path
        self["parsed"] = readConfig(path)
        self._noDefaultPidfile()

    def _noDefaultPidfile(self) -> None:
        """
        Under C{twistd -n} write no pidfile unless one was asked for: the
        default C{twistd.pid} in the current directory would stop a second
        instance started from the same folder, and a supervisor that runs
        C{-n} knows the process anyway.
        """
        parent = getattr(self, "parent", None)
        if parent is None:
            return
        try:
            nodaemon, pidfile = parent["nodaemon"], parent["pidfile"]
        except KeyError:
            return
        if nodaemon and pidfile == TWISTD_DEFAULT_PIDFILE:
            parent["pidfile"] = ""


def readConfig(path: str) -> Any:
    """
    @return: the validated config at C{path}.
    @raise StartupError: naming the file and the problem.
    """
    try:
        return loadConfig(path)
    except ConfigError as e:
        if not e.keyPath and e.message.startswith("cannot read "):
            raise StartupError(f"config: {e}") from None
        raise StartupError(f"config {path}: {e}") from None


def describeStartFailure(error: BaseException) -> str:
    """
    @return: one line saying why the service tree could not start.
    """
    if isinstance(error, CannotListenError):
        reason = error.socketError
        why = getattr(reason, "strerror", None) or str(reason)
        if isinstance(error.port, int):
            where = f"{error.interface or '*'}:{error.port}"
        elif isinstance(error.port, bytes):
            where = error.port.decode("utf-8", "replace")
        else:
            where = str(error.port)
        return f"cannot listen on {where}: {why}"
    if isinstance(error, OSError) and error.strerror:
        where = error.filename2 or error.filename
        if isinstance(where, bytes):
            where = where.decode("utf-8", "replace")
        return f"cannot start: {where}: {error.strerror}" if where else f"cannot start: {error.strerror}"
    return f"cannot start: {error.__class__.__name__}: {error}"


class StartupGuard(MultiService):
    """
    Starts the root service; turns a failure to start it (a port in use, a
    socket path it may not bind) into one line and exit status 1 instead of
    twistd's traceback.

    Under C{twistd -n} the line goes to standard error.  Daemonized, it is
    logged, and handed to the waiting parent process, which prints it and
    exits with status 1.
    """

    def __init__(self, root: IService, twistdOptions: Any = None) -> None:
        super().__init__()
        self.root = root
        self.twistdOptions = twistdOptions
        root.setServiceParent(self)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except Exception as e:
            self._fail(describeStartFailure(e))

    def _option(self, name: str) -> Any:
        try:
            return self.twistdOptions[name] if self.twistdOptions is not None else None
        except KeyError:
            return None

    def _fail(self, message: str) -> None:
        line = f"llamaswap: {message}"
        # The pidfile goes first: the parent told of the failure exits at
        # once, and whatever checks the pidfile next must not find it.
        pidfile = self._option("pidfile")
        if pidfile:
            try:
                os.unlink(pidfile)
            except OSError:
                pass
        statusPipe = self._option("statusPipe")
        if statusPipe is not None:
            log.critical("{line}", line=line)
            os.write(statusPipe, b"1 " + line.encode("utf-8", "replace")[:98])
            os.close(statusPipe)
            self.twistdOptions["statusPipe"] = None
        else:
            stderr = sys.__stderr__ or sys.stderr
            stderr.write(line + "\n")
            stderr.flush()
        raise SystemExit(1)


#: The cyclic collector's first-generation threshold in the daemon
#: (Python's default is 700).
GC_FIRST_GENERATION = 10000


def tuneCollector() -> tuple[int, int, int]:
    """
    Collect the youngest generation every L{GC_FIRST_GENERATION} net
    allocations instead of 700.  A relayed request's objects are freed by
    reference counting, not by the collector (the relay leaves no cycle
    behind): under load the collections mostly rescan what the requests in
    flight hold and free nothing.  Fewer of them cost about 2.5 % less CPU
    per request (bench/README.md).  The older generations keep their
    thresholds.

    @return: the thresholds before.
    """
    before = gc.get_threshold()
    if before[0] and before[0] < GC_FIRST_GENERATION:
        gc.set_threshold(GC_FIRST_GENERATION, *before[1:])
    return before


def makeService(options: Options) -> IService:
    """
    @return: the root service of llamaswap for the parsed C{options},
        inside a L{StartupGuard}.
    """
    from twisted.internet import reactor  # only now: twistd has chosen it

    from llamaswap.listening import raiseOpenFilesLimit
    from llamaswap.service import makeRootService

    tuneCollector()
    before, after = raiseOpenFilesLimit()
    if after != before:
        log.info("open files limit raised from {before} to {after}", before=before, after=after)
    else:
        log.info("open files limit: {limit}", limit=after)
    config = options["parsed"]
    for warning in config.warnings:
        log.warn("config: {warning}", warning=warning)
    endpoints = options["endpoints"]
    log.info(
        "llamaswap {version}: {count} models from {path}, listening on {endpoint}",
        version=__version__,
        count=len(config.models),
        path=options["configPath"],
        endpoint=", ".join(endpoints),
    )
    listen = endpoints[0] if len(endpoints) == 1 else endpoints
    root = makeRootService(config, reactor, listen, daemon=True,
                           configPath=options["configPath"],
                           watchConfig=bool(options["watch-config"]))
    return StartupGuard(root, getattr(options, "parent", None))
