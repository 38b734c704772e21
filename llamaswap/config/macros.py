# -*- test-case-name: tests.test_config -*-
"""
Macros: C{${env.NAME}} substitution in the raw text, validation of macro
names and values, and substitution of C{${name}} in model and peer fields
(SPEC.md section 2.4).
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import yaml

from llamaswap.config.errors import ConfigError

ENV_MACRO = re.compile(r"\$\{env\.([A-Za-z_][A-Za-z0-9_]*)\}")
MACRO_REFERENCE = re.compile(r"\$\{([a-zA-Z0-9_-]+)\}")
MACRO_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")
MAX_NAME_LENGTH = 63
RESERVED = ("PORT", "MODEL_ID")

Macros = Sequence[Tuple[str, Any]]


def _activeEnvReferences(text: str) -> List[Tuple[str, int]]:
    """
    @return: C{(name, line)} for every C{${env.NAME}} in a YAML scalar (key
        or value) of C{text}, so that references in comments are left out;
        when C{text} is not valid YAML, every reference in it (as the
        reference does, so that the user sees the environment error rather
        than a confusing YAML one).
    """
    from llamaswap.config.nodes import Loader

    if ENV_MACRO.search(text) is None:
        return []
    try:
        root = yaml.compose(text, Loader=Loader)
    except yaml.YAMLError:
        return [
            (match.group(1), text.count("\n", 0, match.start()) + 1)
            for match in ENV_MACRO.finditer(text)
        ]
    found: List[Tuple[str, int]] = []
    seen = set()
    pending = [] if root is None else [root]
    while pending:
        node = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            for match in ENV_MACRO.finditer(node.value):
                found.append((match.group(1), node.start_mark.line + 1))
        elif isinstance(node, yaml.SequenceNode):
            pending.extend(reversed(node.value))
        elif isinstance(node, yaml.MappingNode):
            for keyNode, valueNode in reversed(node.value):
                pending.extend((valueNode, keyNode))
    return found


def substituteEnvMacros(text: str, environ: Mapping[str, str]) -> str:
    """
    Replace every C{${env.NAME}} used outside comments by the value of the
    environment variable C{NAME}, with C{\\} and C{"} backslash-escaped.

    @raise ConfigError: for an unset variable, or one whose value has a
        newline, carriage return or NUL.
    """
    values = {}
    for name, lineNumber in _activeEnvReferences(text):
        if name in values:
            continue
        if name not in environ:
            raise ConfigError("", f"environment variable '{name}' is not set", lineNumber)
        value = environ[name]
        if any(c in value for c in "\n\r\x00"):
            raise ConfigError(
                "",
                f"environment variable '{name}' contains newlines or null bytes "
                "which are not allowed in YAML substitution",
                lineNumber,
            )
        values[name] = value.replace("\\", "\\\\").replace('"', '\\"')
    if not values:
        return text
    return ENV_MACRO.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def goFormat(value: Any) -> str:
    """
    @return: C{value} as Go's C{%v} prints it (C{true}, C{0.7}, C{1e+06}),
        which is how the reference interpolates macro values into strings.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _goFloat(value)
    return str(value)


def _goFloat(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign, digitTuple, exponent = Decimal(repr(value)).as_tuple()
    assert isinstance(exponent, int)
    allDigits = "".join(map(str, digitTuple))
    digits = allDigits.rstrip("0")
    exponent += len(allDigits) - len(digits)
    point = len(digits) + exponent  # decimal point position after the first digits
    exp = point - 1
    prefix = "-" if sign else ""
    # %v is %g with the shortest precision: exponent form below 1e-4 and
    # from 1e+06 on.
    if exp < -4 or exp >= 6:
        return prefix + _goExponent(digits, exp)
    if point <= 0:
        return prefix + "0." + "0" * (-point) + digits
    if point >= len(digits):
        return prefix + digits + "0" * (point - len(digits))
    return prefix + digits[:point] + "." + digits[point:]


def _goExponent(digits: str, exp: int) -> str:
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"


def validateMacro(name: str, value: Any) -> Optional[str]:
    """
    @return: why the macro C{name} with C{value} is not allowed, or
        L{None}.
    """
    if len(name) > MAX_NAME_LENGTH:
        return f"macro name '{name}' exceeds maximum length of {MAX_NAME_LENGTH} characters"
    if not MACRO_NAME.match(name):
        return (
            f"macro name '{name}' contains invalid characters, "
            "must match pattern ^[a-zA-Z0-9_-]+$"
        )
    if isinstance(value, str):
        if "${" + name + "}" in value:
            return f"macro '{name}' contains self-reference"
    elif not isinstance(value, (bool, int, float)):
        kind = {dict: "mapping", list: "list", type(None): "null"}.get(type(value), type(value).__name__)
        return (
            f"macro '{name}' has invalid type {kind}, "
            "must be a scalar type (string, int, float, or bool)"
        )
    if name in RESERVED:
        return f"macro name '{name}' is reserved"
    return None


def mergeMacros(modelId: str, globalMacros: Macros, modelMacros: Macros) -> List[Tuple[str, Any]]:
    """
    @return: the effective macro list of a model: C{MODEL_ID}, the globals
        in file order, with each model macro replacing the global of the same
        name in place or else appended.
    """
    merged: List[Tuple[str, Any]] = [("MODEL_ID", modelId)]
    merged.extend(globalMacros)
    for name, value in modelMacros:
        for i, (existing, _) in enumerate(merged):
            if existing == name:
                merged[i] = (name, value)
                break
        else:
            merged.append((name, value))
    return merged


def substituteText(text: str, macros: Macros) -> str:
    """
    @return: C{text} with the macros substituted last to first, so that a
        macro's value may use the macros before it.
    """
    for name, value in reversed(macros):
        slug = "${" + name + "}"
        if slug in text:
            text = text.replace(slug, goFormat(value))
    return text


def substituteOne(value: Any, name: str, macroValue: Any) -> Any:
    """
    Substitute one macro in nested data, preserving types: a string that is
    exactly C{${name}} becomes C{macroValue} itself.
    """
    slug = "${" + name + "}"
    if isinstance(value, str):
        if value == slug:
            return macroValue
        if slug in value:
            return value.replace(slug, goFormat(macroValue))
        return value
    if isinstance(value, dict):
        return {k: substituteOne(v, name, macroValue) for k, v in value.items()}
    if isinstance(value, list):
        return [substituteOne(v, name, macroValue) for v in value]
    return value


def substituteData(value: Any, macros: Macros) -> Any:
    """
    @return: nested data with the macros substituted last to first,
        type-preserving (see L{substituteOne}).
    """
    for name, macroValue in reversed(macros):
        value = substituteOne(value, name, macroValue)
    return value


def leftoverInText(text: str, allowed: Sequence[str] = ()) -> Optional[str]:
    """
    @return: the name of the first C{${name}} left in C{text} (other than
        C{allowed}), or L{None}.
    """
    for match in MACRO_REFERENCE.finditer(text):
        if match.group(1) not in allowed:
            return match.group(1)
    return None


def leftoverInData(value: Any, where: Tuple[Any, ...] = ()) -> Optional[Tuple[Tuple[Any, ...], str]]:
    """
    @return: C{(where, name)} for the first C{${name}} left in a string of
        nested data (C{where}: the keys and indices leading to it), or
        L{None}.
    """
    if isinstance(value, str):
        name = leftoverInText(value)
        return None if name is None else (where, name)
    if isinstance(value, dict):
        for k, v in value.items():
            found = leftoverInData(v, where + (k,))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = leftoverInData(v, where + (i,))
            if found is not None:
                return found
    return None
