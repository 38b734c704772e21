# -*- test-case-name: tests.test_config -*-
"""
Reading composed YAML nodes with key paths, line numbers and type checks.

The file is composed (not constructed) so that every value keeps the line it
came from.  Implicit typing follows the YAML 1.2 core schema, as the
reference's YAML library does: C{yes}, C{on}, C{1:30} and C{2024-01-01} are
strings, not booleans, sexagesimal integers or dates.
"""

from __future__ import annotations

import builtins
import difflib
import json
import math
import re
from typing import Any, Dict, Iterator, List, Optional, Tuple

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from llamaswap.config.errors import ConfigError

NULL_TAG = "tag:yaml.org,2002:null"
BOOL_TAG = "tag:yaml.org,2002:bool"
INT_TAG = "tag:yaml.org,2002:int"
FLOAT_TAG = "tag:yaml.org,2002:float"
STR_TAG = "tag:yaml.org,2002:str"
MERGE_TAG = "tag:yaml.org,2002:merge"

_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class Loader(_BaseLoader):
    """
    A safe loader resolving plain scalars by the YAML 1.2 core schema (plus
    merge keys and C{_} digit separators in integers).
    """

    yaml_implicit_resolvers: Dict[Any, Any] = {}


Loader.add_implicit_resolver(
    NULL_TAG, re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
Loader.add_implicit_resolver(
    BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
Loader.add_implicit_resolver(
    INT_TAG,
    re.compile(r"^(?:[-+]?[0-9][0-9_]*|0o[0-7_]+|0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
Loader.add_implicit_resolver(
    FLOAT_TAG,
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)
Loader.add_implicit_resolver(MERGE_TAG, re.compile(r"^(?:<<)$"), ["<"])


def compose(text: str) -> Optional[Node]:
    """
    Compose C{text} into a node tree.

    @return: the root node, or L{None} for an empty document.
    @raise ConfigError: for invalid YAML (with the line of the problem).
    """
    try:
        return yaml.compose(text, Loader=Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        parts = [p for p in (e.context, e.problem) if p]
        raise ConfigError(
            "",
            "invalid YAML: " + (", ".join(parts) or "syntax error"),
            None if mark is None else mark.line + 1,
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError("", f"invalid YAML: {e}") from None


def line(node: Optional[Node]) -> Optional[int]:
    """
    @return: the 1-based line where C{node} starts.
    """
    if node is None or node.start_mark is None:
        return None
    return int(node.start_mark.line) + 1


def isNull(node: Optional[Node]) -> bool:
    """
    @return: whether C{node} is absent or a YAML null.
    """
    return node is None or (isinstance(node, ScalarNode) and node.tag == NULL_TAG)


def childPath(path: str, key: str) -> str:
    """
    @return: the key path of C{key} inside C{path}.
    """
    return f"{path}.{key}" if path else key


def indexPath(path: str, index: int) -> str:
    """
    @return: the key path of item C{index} of the list at C{path}.
    """
    return f"{path}[{index}]"


def _parseInt(text: str) -> int:
    text = text.replace("_", "")
    sign = 1
    if text[:1] in "+-":
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    if text[:2] in ("0x", "0X"):
        return sign * int(text[2:], 16)
    if text[:2] in ("0o", "0O"):
        return sign * int(text[2:], 8)
    return sign * int(text, 10)


def _parseFloat(text: str) -> float:
    lowered = text.lower()
    if lowered in (".inf", "+.inf"):
        return math.inf
    if lowered == "-.inf":
        return -math.inf
    if lowered == ".nan":
        return math.nan
    return float(text.replace("_", ""))


def scalarValue(node: Node) -> Any:
    """
    @return: the Python value of a scalar node: L{None}, L{bool}, L{int},
        L{float} or L{str}.  A value that does not parse as its explicit tag
        is kept as a string.
    """
    tag, text = node.tag, node.value
    try:
        if tag == NULL_TAG:
            return None
        if tag == BOOL_TAG:
            return text.lower() in ("true", "yes", "on", "y")
        if tag == INT_TAG:
            return _parseInt(text)
        if tag == FLOAT_TAG:
            return _parseFloat(text)
    except ValueError:
        pass
    return text


def describe(node: Node) -> str:
    """
    @return: how a wrong value reads in an error message: a quoted string,
        a bare number or boolean, C{a list} or C{a mapping}.
    """
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    value = scalarValue(node)
    if value is None:
        return "null"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return str(node.value)


def _flattenPairs(node: MappingNode, path: str) -> List[Tuple[str, Node, Node]]:
    own: List[Tuple[str, Node, Node]] = []
    merged: List[Tuple[str, Node, Node]] = []
    seen: Dict[str, Node] = {}
    for keyNode, valueNode in node.value:
        if isinstance(keyNode, ScalarNode) and keyNode.tag == MERGE_TAG:
            sources = valueNode.value if isinstance(valueNode, SequenceNode) else [valueNode]
            for source in sources:
                if not isinstance(source, MappingNode):
                    raise ConfigError(
                        path,
                        f"expected a mapping to merge, got {describe(source)}",
                        line(source),
                    )
                merged.extend(_flattenPairs(source, path))
            continue
        if not isinstance(keyNode, ScalarNode):
            raise ConfigError(path, f"expected a string key, got {describe(keyNode)}", line(keyNode))
        key = keyNode.value
        if key in seen:
            raise ConfigError(
                childPath(path, key),
                f'mapping key "{key}" already defined at line {line(seen[key])}',
                line(keyNode),
            )
        seen[key] = keyNode
        own.append((key, keyNode, valueNode))
    if not merged:
        return own
    # Merged keys come first (earlier merge sources win over later ones);
    # the mapping's own keys override them in place.
    result: Dict[str, Tuple[str, Node, Node]] = {}
    for entry in merged:
        result.setdefault(entry[0], entry)
    for entry in own:
        result[entry[0]] = entry
    return list(result.values())


def pairs(node: Node, path: str) -> List[Tuple[str, Node, Node]]:
    """
    @return: the C{(key, keyNode, valueNode)} entries of a mapping node, in
        file order, merge keys (C{<<}) applied.
    @raise ConfigError: if C{node} is not a mapping, a key is not a scalar,
        or a key is repeated.
    """
    if not isinstance(node, MappingNode):
        raise ConfigError(path, f"expected a mapping, got {describe(node)}", line(node))
    return _flattenPairs(node, path)


def plain(node: Node, path: str, _active: Tuple[int, ...] = ()) -> Any:
    """
    @return: C{node} as plain Python data (dicts with string keys, lists,
        scalars).
    @raise ConfigError: for a recursive structure.
    """
    if id(node) in _active:
        raise ConfigError(path, "recursive YAML structure", line(node))
    if isinstance(node, MappingNode):
        active = _active + (id(node),)
        return {
            key: plain(value, childPath(path, key), active)
            for key, _, value in pairs(node, path)
        }
    if isinstance(node, SequenceNode):
        active = _active + (id(node),)
        return [plain(item, indexPath(path, i), active) for i, item in enumerate(node.value)]
    return scalarValue(node)


def nodeAt(node: Optional[Node], parts: List[Any]) -> Optional[Node]:
    """
    @param parts: mapping keys (L{str}) and list indices (L{int}).

    @return: the node at C{parts} below C{node}, or the deepest one found.
    """
    for part in parts:
        if isinstance(part, int) and isinstance(node, SequenceNode) and part < len(node.value):
            node = node.value[part]
        elif isinstance(part, str) and isinstance(node, MappingNode):
            for key, _, value in _flattenPairs(node, ""):
                if key == part:
                    node = value
                    break
            else:
                return node
        else:
            return node
    return node


def _fold(key: str) -> str:
    return key.lower().replace("_", "").replace("-", "")


def closestKey(key: str, known: List[str]) -> Optional[str]:
    """
    @return: the key of C{known} that C{key} most likely misspells (case,
        C{_} and C{-} aside), or L{None} when none is close.
    """
    folded = {_fold(k): k for k in reversed(known)}
    matches = difflib.get_close_matches(_fold(key), list(folded), n=1, cutoff=0.6)
    return folded[matches[0]] if matches else None


class Section:
    """
    A mapping being read: typed getters that know each value's key path and
    line, and a record of the keys read so that the rest can be reported as
    unknown.

    @ivar path: the key path of this mapping.
    @ivar node: its node (L{None} when the mapping is absent or null).
    @ivar anchor: the key node that names this mapping, if any: errors about
        missing keys are reported on its line.
    """

    def __init__(
        self,
        node: Optional[Node],
        path: str,
        warnings: List[str],
        anchor: Optional[Node] = None,
    ) -> None:
        self.path = path
        self.node = node
        self.anchor = anchor
        self._warnings = warnings
        self._entries: Dict[str, Tuple[Node, Node]] = {}
        if not isNull(node):
            assert node is not None
            for key, keyNode, valueNode in pairs(node, path):
                self._entries[key] = (keyNode, valueNode)
        self._used: set = set()

    def line(self) -> Optional[int]:
        """
        @return: the line of the key naming this mapping, else of the
            mapping itself.
        """
        return line(self.anchor) or line(self.node)

    def keys(self) -> List[str]:
        """
        @return: every key, in file order.
        """
        return list(self._entries)

    def childPath(self, key: str) -> str:
        """
        @return: the key path of C{key}.
        """
        return childPath(self.path, key)

    def keyNode(self, key: str) -> Optional[Node]:
        """
        @return: the node of the key C{key} itself, or L{None}.
        """
        entry = self._entries.get(key)
        return None if entry is None else entry[0]

    def raw(self, key: str) -> Optional[Node]:
        """
        Mark C{key} as known.

        @return: its value node, L{None} when absent or null.
        """
        self._used.add(key)
        entry = self._entries.get(key)
        if entry is None or isNull(entry[1]):
            return None
        return entry[1]

    def ignore(self, *keys: str) -> None:
        """
        Mark C{keys} as known without reading them.
        """
        self._used.update(keys)

    def error(self, key: str, message: str, node: Optional[Node] = None) -> ConfigError:
        """
        @return: a L{ConfigError} at C{key}, on the line of C{node}, of
            C{key}'s value, or of this mapping.
        """
        if node is None:
            node = self.raw(key)
            if node is None:
                node = self.keyNode(key)
        if node is None:
            return ConfigError(self.childPath(key), message, self.line())
        return ConfigError(self.childPath(key), message, line(node))

    def int(self, key: str, default: int) -> int:
        """
        @return: the YAML integer at C{key}, or C{default}.
        """
        node = self.raw(key)
        if node is None:
            return default
        if isinstance(node, ScalarNode) and node.tag == INT_TAG:
            value = scalarValue(node)
            if isinstance(value, int):
                return value
        raise self.error(key, f"expected integer, got {describe(node)}", node)

    def bool(self, key: str, default: Any) -> Any:
        """
        @return: the YAML boolean at C{key}, or C{default}.
        """
        node = self.raw(key)
        if node is None:
            return default
        if isinstance(node, ScalarNode) and node.tag == BOOL_TAG:
            return bool(scalarValue(node))
        raise self.error(key, f"expected boolean, got {describe(node)}", node)

    def str(self, key: builtins.str, default: builtins.str) -> builtins.str:
        """
        @return: the text of the scalar at C{key} (any scalar, as written),
            or C{default}.
        """
        node = self.raw(key)
        if node is None:
            return default
        if isinstance(node, ScalarNode):
            return str(node.value)
        raise self.error(key, f"expected a string, got {describe(node)}", node)

    def strList(self, key: builtins.str) -> Tuple[Tuple[builtins.str, Node], ...]:
        """
        @return: the C{(text, node)} items of the list of scalars at C{key};
            empty when absent.
        """
        node = self.raw(key)
        if node is None:
            return ()
        if not isinstance(node, SequenceNode):
            raise self.error(key, f"expected a list of strings, got {describe(node)}", node)
        items = []
        for i, item in enumerate(node.value):
            if not isinstance(item, ScalarNode):
                raise ConfigError(
                    indexPath(self.childPath(key), i),
                    f"expected a list of strings, got {describe(item)} in it",
                    line(item),
                )
            items.append(("" if isNull(item) else str(item.value), item))
        return tuple(items)

    def section(self, key: builtins.str) -> "Section":
        """
        @return: the L{Section} of the mapping at C{key} (empty when absent
            or null).
        """
        node = self.raw(key)
        if node is not None and not isinstance(node, MappingNode):
            raise self.error(key, f"expected a mapping, got {describe(node)}", node)
        return Section(node, self.childPath(key), self._warnings, self.keyNode(key))

    def entrySection(self, key: builtins.str, keyNode: Node, valueNode: Node) -> "Section":
        """
        @return: the L{Section} of the mapping C{valueNode} that L{entries}
            gave for C{key}.
        """
        return Section(valueNode, self.childPath(key), self._warnings, keyNode)

    def entries(self) -> Iterator[Tuple[builtins.str, Node, Node]]:
        """
        Iterate over every C{(key, keyNode, valueNode)} in file order (null
        values included as nodes), marking them all as known.
        """
        for key, (keyNode, valueNode) in list(self._entries.items()):
            self._used.add(key)
            yield key, keyNode, valueNode

    def plainMapping(self, key: builtins.str) -> Tuple[Dict[builtins.str, Any], Optional[Node]]:
        """
        @return: the mapping at C{key} as plain data, and its node.
        """
        node = self.raw(key)
        if node is None:
            return {}, None
        if not isinstance(node, MappingNode):
            raise self.error(key, f"expected a mapping, got {describe(node)}", node)
        return plain(node, self.childPath(key)), node

    def finish(self) -> None:
        """
        Report every key not read as unknown.
        """
        known = sorted(self._used - set(self._entries))
        for key, (keyNode, _) in self._entries.items():
            if key in self._used:
                continue
            warning = f"{self.childPath(key)}: unknown key (line {line(keyNode)})"
            meant = closestKey(key, known)
            if meant is not None:
                warning += f"; did you mean {meant}?"
            self._warnings.append(warning)
