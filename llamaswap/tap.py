"""
The twistd plugin's options and service factory.

C{twistd -n llamaswap [-c config.yaml] [--listen 127.0.0.1:8080]}.  With no
C{-c}, the bundled demo config is served.
"""

from __future__ import annotations

import os
import re
import sys
from importlib import resources
from pathlib import Path

from twisted.logger import Logger
from twisted.python import usage

from llamaswap._version import __version__
from llamaswap.config import ConfigError, loadConfig

log = Logger()

DEFAULT_LISTEN = "127.0.0.1:8080"
_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d+)$")


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

    prefixes = {name.lower() for name in endpoints._serverParsers}  # type: ignore[attr-defined]
    prefixes.update(p.prefix.lower() for p in getPlugins(IStreamServerEndpointStringParser))
    return prefixes


def listenDescription(value: str, certFile: str | None = None, keyFile: str | None = None) -> str:
    """
    Turn a C{--listen} value into a Twisted server endpoint description.

    C{host:port}, C{[v6]:port} and C{:port} (every interface) are accepted,
    as is any endpoint description (C{tcp:...}, C{ssl:...}, C{unix:...}).
    With a certificate and key, a C{host:port} form listens with TLS.

    @raise usage.UsageError: for a value that is neither.
    """
    if value.split(":", 1)[0].lower() in _endpointPrefixes():
        return value
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


class Options(usage.Options):
    synopsis = "[-c config.yaml] [--listen host:port]"
    longdesc = (
        "Serve OpenAI- and Anthropic-compatible APIs in front of local inference "
        "servers, starting and swapping them on demand.  Without -c, the bundled "
        "demo config is served."
    )
    optParameters = [
        ["config", "c", None, "Path to the YAML configuration (default: the bundled demo)."],
        ["listen", "l", DEFAULT_LISTEN,
         "host:port, :port, or a Twisted endpoint description (tcp:..., ssl:..., unix:...)."],
        ["tls-cert-file", None, None, "TLS certificate (PEM); requires --tls-key-file."],
        ["tls-key-file", None, None, "TLS private key (PEM); requires --tls-cert-file."],
    ]
    optFlags = [
        ["version", "V", "Print the version and exit."],
        ["watch-config", "w",
         "Reload the config when its file changes (SIGHUP always reloads it)."],
    ]

    def opt_version(self) -> None:
        print(f"llamaswap {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        cert, key = self["tls-cert-file"], self["tls-key-file"]
        if bool(cert) != bool(key):
            raise usage.UsageError("--tls-cert-file and --tls-key-file go together")
        if cert:
            cert, key = os.path.abspath(cert), os.path.abspath(key)
        self["endpoint"] = listenDescription(self["listen"], cert, key)
        # twistd may chdir (--rundir) after this: resolve the path now.
        path = os.path.abspath(self["config"] or bundledConfigPath())
        # Lets configs (the bundled demo among them) name this interpreter.
        os.environ.setdefault("LLAMASWAP_PYTHON", sys.executable)
        self["configPath"] = path
        try:
            self["parsed"] = loadConfig(path)
        except ConfigError as e:
            raise usage.UsageError(f"{path}: {e}")


def makeService(options: Options):
    """
    @return: the root service of llamaswap for the parsed C{options}.
    """
    from twisted.internet import reactor  # only now: twistd has chosen it

    from llamaswap.service import makeRootService

    config = options["parsed"]
    for warning in config.warnings:
        log.warn("config: {warning}", warning=warning)
    log.info(
        "llamaswap {version}: {count} models from {path}, listening on {endpoint}",
        version=__version__,
        count=len(config.models),
        path=options["configPath"],
        endpoint=options["endpoint"],
    )
    return makeRootService(config, reactor, options["endpoint"], daemon=True,
                           configPath=options["configPath"],
                           watchConfig=bool(options["watch-config"]))
