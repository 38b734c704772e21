# -*- test-case-name: tests.test_filters -*-
"""
Request body filters for JSON bodies (SPEC.md section 3.4 "JSON filters",
parity items 40-42).

For a request whose name resolves to a local model or a peer, and whose
C{Content-Type} contains C{application/json}, the body sent upstream is the
client's body with, in this order:

    1. C{model} set to the model's C{useModelName} (local models only: the
       caller passes C{useModelName=""} for peers);
    2. every key of C{filters.stripParams} deleted (never C{model});
    3. every key of C{filters.setParams} set, in sorted key order (C{model}
       ignored);
    4. every key of C{filters.setParamsByID[<name as the client sent it>]}
       set, in sorted key order (C{model} ignored), so that it wins over
       C{setParams}.

Keys are literal top-level keys (no path syntax).  The edits are made on
the body's text, the way the reference edits it with C{sjson}: a key that is
set keeps its place, a new key is appended at the end, a deleted key takes
its separator with it, and every byte of every other member (whitespace,
number spelling, escapes) is kept.  A duplicated key is deleted or set at
every occurrence.

L{applyFilters} returns L{None} when the body needs no change, so that the
caller forwards the client's bytes untouched.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, Mapping, Sequence, Union

import attr

from llamaswap.errors import LlamaSwapError

#: The key no filter may remove or set (only C{useModelName} sets it).
MODEL_KEY = "model"


class FilterError(LlamaSwapError):
    """
    A body could not be rewritten (SPEC.md section 3.4: "Error -> 500").
    """

    code = 500
    kind = "server_error"


@attr.s(frozen=True, auto_attribs=True)
class SetParam:
    """
    Set the top-level key C{key} to C{value} (any JSON-able value).
    """

    key: str
    value: Any


@attr.s(frozen=True, auto_attribs=True)
class DeleteParam:
    """
    Remove every occurrence of the top-level key C{key}.
    """

    key: str


Edit = Union[SetParam, DeleteParam]


def filterEdits(filters, requestedName: str, useModelName: str = "") -> tuple[Edit, ...]:
    """
    The edits the filters of a model or peer make to a body, in the order
    they apply.

    @param filters: a L{llamaswap.config.model.FiltersConfig} (or L{None}
        for none).
    @param requestedName: the model name exactly as the client sent it (it
        selects the C{setParamsByID} entry).
    @param useModelName: the local model's C{useModelName}; C{""} for none
        and for peers.

    @return: a tuple of L{SetParam} and L{DeleteParam}; empty when the
        filters change nothing.
    """
    edits: list[Edit] = []
    if useModelName:
        edits.append(SetParam(MODEL_KEY, useModelName))
    if filters is None or not (filters.stripParams or filters.setParams
                               or filters.setParamsByID):
        return tuple(edits)
    for key in filters.stripParams:
        if key != MODEL_KEY:
            edits.append(DeleteParam(key))
    edits.extend(_sets(filters.setParams))
    byId = filters.setParamsByID.get(requestedName)
    if byId:
        edits.extend(_sets(byId))
    return tuple(edits)


def _sets(params: Mapping[str, Any]) -> Iterable[SetParam]:
    for key in sorted(params):
        if key != MODEL_KEY:
            yield SetParam(key, params[key])


def applyFilters(
    raw: bytes, filters, requestedName: str, useModelName: str = ""
) -> bytes | None:
    """
    Apply a model's (or a peer's) filters to a JSON request body.

    @param raw: the body as the client sent it; it must be a JSON object
        (L{llamaswap.proxy.body.inspectBody} has checked that).
    @param filters: the L{llamaswap.config.model.FiltersConfig} of the
        model or peer the request resolved to.
    @param requestedName: the model name exactly as the client sent it.
    @param useModelName: the local model's C{useModelName} (C{""} for peers).

    @return: the body to send upstream, or L{None} when the filters change
        nothing, in which case C{raw} is forwarded byte for byte.  When a
        body is returned the caller must send it with a new
        C{Content-Length} and without C{Transfer-Encoding}.

    @raise FilterError: when C{raw} is not a JSON object or a value cannot
        be encoded as JSON.
    """
    return applyEdits(raw, filterEdits(filters, requestedName, useModelName))


def applyEdits(raw: bytes, edits: Sequence[Edit]) -> bytes | None:
    """
    Apply L{SetParam} and L{DeleteParam} edits, in order, to the JSON object
    C{raw}.

    @return: the edited body, or L{None} when no edit changes anything.

    @raise FilterError: when C{raw} is not a JSON object or a value cannot
        be encoded as JSON.
    """
    if not edits:
        return None
    try:
        encoding = json.detect_encoding(raw)
        text = raw.decode(encoding)
    except (UnicodeDecodeError, LookupError) as e:
        raise FilterError(f"error applying filters: body is not valid text: {e}") from None
    wanted = {edit.key for edit in edits}
    try:
        obj = _scanObject(text, wanted)
    except ValueError as e:
        raise FilterError(f"error applying filters: {e}") from None

    changed = False
    entries: list[_Entry] = list(obj.members)
    for edit in edits:
        if isinstance(edit, DeleteParam):
            kept = [entry for entry in entries if entry.key != edit.key]
            if len(kept) != len(entries):
                changed = True
                entries = kept
            continue
        encoded = _encode(edit)
        found = False
        for index, entry in enumerate(entries):
            if entry.key != edit.key:
                continue
            found = True
            if entry.hasValue and _sameJSON(entry.value, edit.value):
                continue
            changed = True
            entries[index] = attr.evolve(
                entry, value=edit.value, hasValue=True, encoded=encoded)
        if not found:
            changed = True
            entries.append(_Entry(edit.key, -1, -1, -1, edit.value, True, encoded))
    if not changed:
        return None
    return _render(text, obj, entries).encode(encoding)


def _encode(edit: SetParam) -> str:
    try:
        return json.dumps(edit.value, ensure_ascii=False, separators=(",", ":"),
                          allow_nan=False, default=str)
    except (TypeError, ValueError) as e:
        raise FilterError(f"error setting parameter {edit.key} in request: {e}") from None


def _sameJSON(a: Any, b: Any) -> bool:
    """
    Whether two decoded JSON values are the same JSON: unlike C{==}, C{1},
    C{1.0} and C{true} all differ.
    """
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_sameJSON(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_sameJSON(x, y) for x, y in zip(a, b))
    return bool(a == b)


# -- the object scanner ----------------------------------------------------

_WS = re.compile(r"[ \t\n\r]*")


def _skipWS(text: str, i: int) -> int:
    """
    @return: the index of the first non-whitespace character from C{i}.
    """
    match = _WS.match(text, i)
    return i if match is None else match.end()

_decoder = json.JSONDecoder()
_scanString = getattr(json.decoder, "scanstring")


@attr.s(frozen=True, auto_attribs=True)
class _Entry:
    """
    One member of the object: an original one (C{start >= 0}: its text
    runs from C{start}, the key's quote, to C{valueEnd}) or a new one.

    @ivar value: the decoded value, when C{hasValue} (only decoded for keys
        an edit names).
    @ivar encoded: the new value's JSON text, or L{None} to keep the
        original value text.
    """

    key: str
    start: int
    valueStart: int
    valueEnd: int
    value: Any = None
    hasValue: bool = False
    encoded: str | None = None


@attr.s(frozen=True, auto_attribs=True)
class _Object:
    """
    @ivar members: the original members in order.
    @ivar close: the index of the closing C{}}.
    """

    members: tuple[_Entry, ...]
    close: int


def _scanObject(text: str, wanted: set) -> _Object:
    """
    Find the top-level members of the JSON object C{text}, decoding the
    values of the keys in C{wanted} only.

    @raise ValueError: when C{text} is not a single JSON object.
    """
    i = _skipWS(text, 0)
    if text[i:i + 1] != "{":
        raise ValueError("the body is not a JSON object")
    i = _skipWS(text, i + 1)
    members: list[_Entry] = []
    if text[i:i + 1] == "}":
        close = i
    else:
        while True:
            if text[i:i + 1] != '"':
                raise ValueError(f"expecting a property name at character {i}")
            start = i
            key, i = _scanString(text, i + 1)
            i = _skipWS(text, i)
            if text[i:i + 1] != ":":
                raise ValueError(f"expecting ':' at character {i}")
            i = _skipWS(text, i + 1)
            valueStart = i
            if key in wanted:
                value, i = _decoder.raw_decode(text, i)
                members.append(_Entry(key, start, valueStart, i, value, True))
            else:
                i = _decoder.raw_decode(text, i)[1]
                members.append(_Entry(key, start, valueStart, i))
            i = _skipWS(text, i)
            c = text[i:i + 1]
            if c == ",":
                i = _skipWS(text, i + 1)
                continue
            if c == "}":
                close = i
                break
            raise ValueError(f"expecting ',' or '}}' at character {i}")
    if _skipWS(text, close + 1) != len(text):
        raise ValueError(f"extra data at character {close + 1}")
    return _Object(tuple(members), close)


def _render(text: str, obj: _Object, entries: list[_Entry]) -> str:
    """
    Reassemble the object from C{entries}: original members keep their
    text (and the separator that preceded them), new ones are appended in
    compact form.
    """
    members = obj.members
    if members:
        head = text[:members[0].start]
        tail = text[members[-1].valueEnd:]
    else:
        head = text[:obj.close]
        tail = text[obj.close:]
    # The separator before an original member is the text between it and
    # the original member before it (a comma and the file's whitespace).
    separatorBefore: dict[int, str] = {}
    for previous, member in zip(members, members[1:]):
        separatorBefore[member.start] = text[previous.valueEnd:member.start]
    defaultSeparator = separatorBefore[members[1].start] if len(members) > 1 else ","
    pieces = [head]
    for index, entry in enumerate(entries):
        if index:
            pieces.append(separatorBefore.get(entry.start, defaultSeparator))
        if entry.start < 0:
            pieces.append(json.dumps(entry.key, ensure_ascii=False))
            pieces.append(":")
            pieces.append(entry.encoded or "")
        elif entry.encoded is None:
            pieces.append(text[entry.start:entry.valueEnd])
        else:
            pieces.append(text[entry.start:entry.valueStart])
            pieces.append(entry.encoded)
    pieces.append(tail)
    return "".join(pieces)
