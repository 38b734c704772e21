# -*- test-case-name: tests.test_uiapi -*-
"""
The web UI's own routes (beyond the reference's API):

    - C{GET /api/config}: the effective config, as JSON, secrets redacted
      (L{redactedConfig});
    - C{POST /api/config/reload}: reload the config file; answers with what
      the reload kept, restarted, added and removed, or why it refused;
    - C{POST /api/events/token}: a short-lived token for
      C{GET /api/events?token=...} (see L{llamaswap.web.auth.StreamTokens}).

All three sit behind the API-key check like every C{/api/} route.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import attr
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from llamaswap.errors import LlamaSwapError
from llamaswap.reload import ReloadReport
from llamaswap.web.auth import StreamTokens

#: What replaces a secret.
REDACTED = "[redacted]"

#: Names (of environment variables, macros, command-line flags) whose
#: values are treated as secrets.
SECRET_NAME = re.compile(r"(key|token|secret|passw(or)?d|credential|auth|cookie)", re.IGNORECASE)

#: A command-line flag that names a secret, and its value (C{--api-key X},
#: C{--hf-token=X}).
_SECRET_FLAG = re.compile(
    r"(?P<flag>--?[\w-]*(?:key|token|secret|passw(?:or)?d|credential|auth)[\w-]*)"
    r"(?P<sep>[= ]+)(?P<value>\"[^\"]*\"|'[^']*'|\S+)",
    re.IGNORECASE,
)

#: C{scheme://user:password@host}: the password part.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/@:\s]*:)[^/@\s]+@", re.IGNORECASE)


class ReloadRefused(LlamaSwapError):
    """
    C{POST /api/config/reload} was refused: the new config is invalid
    (400), or a reload is already running or there is no file to read (409).
    """

    kind = "invalid_request_error"

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _redactText(text: str) -> str:
    text = _SECRET_FLAG.sub(lambda m: m.group("flag") + m.group("sep") + REDACTED, text)
    return _URL_PASSWORD.sub(lambda m: m.group("head") + REDACTED + "@", text)


def _redactPairs(pairs: Any) -> list:
    out = []
    for pair in pairs:
        name, value = pair[0], pair[1]
        if SECRET_NAME.search(str(name)) and value not in ("", None):
            value = REDACTED
        elif isinstance(value, str):
            value = _redactText(value)
        out.append([name, value])
    return out


def _plain(value: Any) -> Any:
    """
    @return: C{value} with tuples, sets and attrs objects made JSON-able.
    """
    if attr.has(type(value)):
        return {k: _plain(v) for k, v in attr.asdict(value, recurse=False).items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_plain(v) for v in value]
        return sorted(items, key=str) if isinstance(value, (set, frozenset)) else items
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def redactedConfig(config) -> dict[str, Any]:
    """
    @param config: a validated L{llamaswap.config.Config}.
    @return: the effective config as JSON-able data, with the secrets
        replaced by L{REDACTED}: every C{apiKeys} entry, each peer's
        C{apiKey}, the values of environment variables and macros whose
        names look like secrets (L{SECRET_NAME}), the values of secret
        command-line flags (C{--api-key X}) and URL passwords.
    """
    data = _plain(config)
    data["apiKeys"] = [REDACTED for _ in config.apiKeys]
    data["macros"] = _redactPairs(config.macros)
    for peer in data.get("peers", {}).values():
        if peer.get("apiKey"):
            peer["apiKey"] = REDACTED
        peer["proxy"] = _redactText(peer.get("proxy", ""))
    for model in data.get("models", {}).values():
        model["env"] = _redactPairs(model.get("env", ()))
        model["macros"] = _redactPairs(model.get("macros", ()))
        for key in ("cmd", "cmdStop", "proxy"):
            model[key] = _redactText(model.get(key) or "")
        for key in ("argv", "cmdStopArgv"):
            model[key] = _redactArgv(model.get(key) or [])
    return data


def _redactArgv(argv: list[str]) -> list[str]:
    out: list[str] = []
    secretNext = False
    for word in argv:
        if secretNext:
            out.append(REDACTED)
            secretNext = False
            continue
        if word.startswith("-") and SECRET_NAME.search(word):
            if "=" in word:
                out.append(word.split("=", 1)[0] + "=" + REDACTED)
            else:
                out.append(word)
                secretNext = True
            continue
        out.append(_redactText(word))
    return out


def _json(request, obj: object, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(obj).encode("utf-8")


class UIApi:
    """
    The handlers of the UI's routes (registered in L{llamaswap.web.app}).

    @param config: the config now serving.
    @param tokens: the L{StreamTokens} of C{/api/events}.
    @param reloader: reloads the config; returns a L{Deferred} firing with
        a L{ReloadReport}.  Without one, a reload is refused (409).
    """

    log = Logger()

    def __init__(self, config, tokens: StreamTokens,
                 reloader: Callable[[], Deferred[ReloadReport]] | None = None) -> None:
        self.configNow = config
        self.tokens = tokens
        self.reloader = reloader

    def config(self, request) -> bytes:
        """
        C{GET /api/config}: L{redactedConfig}.
        """
        return _json(request, redactedConfig(self.configNow))

    async def reload(self, request) -> bytes:
        """
        C{POST /api/config/reload}: 200 with the report's JSON when the new
        config serves; otherwise an OpenAI-style error with the reason: 400
        for an invalid config, 409 when a reload is already in progress or
        there is no config file.
        """
        if self.reloader is None:
            raise ReloadRefused("config reload is not available: no config file", 409)
        report = await self.reloader()
        if report.applied:
            self.log.info("config reloaded from the web UI")
            return _json(request, report.toJSON())
        reason = report.reason or "config reload refused"
        busy = "in progress" in reason or "no config file" in reason
        raise ReloadRefused(reason, 409 if busy else 400)

    def eventsToken(self, request) -> bytes:
        """
        C{POST /api/events/token}: C{{"token": str, "expires": epoch s}}.
        """
        token, expires = self.tokens.issue()
        return _json(request, {"token": token, "expires": expires})
