# -*- test-case-name: tests.test_config -*-
"""
Small value checks and clean-ups shared by the config builders: start
commands, parameter lists, proxy URLs and leftover-macro messages.

Pure functions of their arguments.
"""

from __future__ import annotations

import shlex
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from llamaswap.config.errors import ConfigError
from llamaswap.config.macros import validateMacro
from llamaswap.config.model import MacroList, TimeoutsConfig
from llamaswap.config.nodes import Section, childPath, indexPath, isNull, line, plain

PROTECTED_PARAMS = ("model",)
TIMEOUT_KEYS = (
    "connect", "keepalive", "responseHeader", "tlsHandshake", "expectContinue", "idleConn",
    "responseIdle",
)


def readMacros(sec: Section, errorPrefix: str) -> MacroList:
    """
    @return: the macros of C{sec}, in file order.
    @raise ConfigError: for an invalid name or value (the message starting
        with C{errorPrefix}).
    """
    result: List[Tuple[str, Any]] = []
    for name, keyNode, valueNode in sec.entries():
        value = None if isNull(valueNode) else plain(valueNode, sec.childPath(name))
        problem = validateMacro(name, value)
        if problem is not None:
            raise ConfigError(sec.childPath(name), errorPrefix + problem, line(valueNode) or line(keyNode))
        result.append((name, value))
    return tuple(result)


def readTimeouts(sec: Section, defaults: TimeoutsConfig) -> TimeoutsConfig:
    """
    @return: the C{timeouts} mapping C{sec}, C{defaults} for what it omits.
    """
    values = {}
    for key in TIMEOUT_KEYS:
        value = sec.int(key, getattr(defaults, key))
        if value < 0:
            raise sec.error(key, f"timeouts.{key} must be >= 0")
        values[key] = value
    sec.finish()
    return TimeoutsConfig(**values)


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


def sanitizeParams(params: Mapping[str, Any]) -> Dict[str, Any]:
    """
    @return: C{params} sorted by key, without C{model}.
    """
    return {key: params[key] for key in sorted(params) if key not in PROTECTED_PARAMS}


def urlProblem(url: str) -> Optional[str]:
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


def splitWords(text: str) -> Tuple[str, ...]:
    """
    @return: C{text} split into words by POSIX shell rules.
    @raise ValueError: for unbalanced quotes.
    """
    return tuple(shlex.split(text, posix=True)) if text else ()


def wherePath(base: str, where: Sequence[Any]) -> str:
    """
    @return: the key path of C{where} (keys and list indices) below C{base}.
    """
    path = base
    for part in where:
        path = indexPath(path, part) if isinstance(part, int) else childPath(path, part)
    return path


def unknownMacro(name: str) -> str:
    """
    @return: the message for a macro left over after substitution.
    """
    return "unknown macro '${" + name + "}'"
