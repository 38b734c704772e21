"""
Tests for L{llamaswap.proxy.filters}: JSON body filters (SPEC.md section
3.4, parity items 40-42).
"""

from __future__ import annotations

import json
from textwrap import dedent

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from llamaswap.config import FiltersConfig, loadConfigText
from llamaswap.proxy.filters import (
    DeleteParam,
    FilterError,
    SetParam,
    applyEdits,
    applyFilters,
    filterEdits,
)


def filters(strip=(), set=None, byId=None) -> FiltersConfig:
    return FiltersConfig(stripParams=tuple(strip), setParams=dict(set or {}),
                         setParamsByID=dict(byId or {}))


class FilterEditsTests(SynchronousTestCase):
    """
    L{filterEdits} lists the edits in the order of SPEC.md section 3.4.
    """

    def test_none(self) -> None:
        self.assertEqual(filterEdits(None, "m"), ())
        self.assertEqual(filterEdits(FiltersConfig(), "m"), ())

    def test_order(self) -> None:
        f = filters(strip=["temperature"], set={"b": 2, "a": 1},
                    byId={"m:high": {"r": "high", "a": 9}})
        self.assertEqual(filterEdits(f, "m:high", "up"), (
            SetParam("model", "up"),
            DeleteParam("temperature"),
            SetParam("a", 1),
            SetParam("b", 2),
            SetParam("a", 9),
            SetParam("r", "high"),
        ))

    def test_byIdOnlyForTheRequestedName(self) -> None:
        f = filters(byId={"m:high": {"r": "high"}})
        self.assertEqual(filterEdits(f, "m"), ())
        self.assertEqual(filterEdits(f, "m:high"), (SetParam("r", "high"),))

    def test_modelNeverFiltered(self) -> None:
        """
        Filters never strip or set C{model}, even if a config got through
        with it; only C{useModelName} sets it.
        """
        f = filters(strip=["model"], set={"model": "x"}, byId={"m": {"model": "y"}})
        self.assertEqual(filterEdits(f, "m"), ())
        self.assertEqual(filterEdits(f, "m", "up"), (SetParam("model", "up"),))


class ApplyFiltersTests(SynchronousTestCase):
    def apply(self, body: dict | bytes, f=None, name: str = "m", use: str = "") -> dict | None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
        out = applyFilters(raw, f, name, use)
        return None if out is None else json.loads(out)

    def test_unchangedIsNone(self) -> None:
        """
        A body the filters do not change is reported as L{None}: the
        caller forwards the client's bytes.
        """
        body = {"model": "up", "temperature": 0.5, "top_p": 0.9}
        self.assertIsNone(self.apply(body))
        self.assertIsNone(self.apply(body, FiltersConfig()))
        self.assertIsNone(self.apply(body, use="up"))
        self.assertIsNone(self.apply(body, filters(strip=["absent"])))
        self.assertIsNone(self.apply(body, filters(set={"top_p": 0.9})))

    def test_sameValueOtherTypeChanges(self) -> None:
        """
        C{1}, C{1.0} and C{true} are different JSON: setting one over
        another is a change.
        """
        self.assertEqual(self.apply({"x": 1}, filters(set={"x": True})), {"x": True})
        self.assertEqual(self.apply(b'{"x": 1}', filters(set={"x": 1.0})), {"x": 1.0})
        self.assertIsNone(self.apply({"x": [1, {"a": None}]},
                                     filters(set={"x": [1, {"a": None}]})))

    def test_useModelName(self) -> None:
        """
        Item 40: C{useModelName} replaces C{model}.
        """
        self.assertEqual(self.apply({"model": "m", "messages": []}, use="up"),
                         {"model": "up", "messages": []})

    def test_useModelNameAddsModel(self) -> None:
        self.assertEqual(self.apply({"prompt": "x"}, use="up"), {"prompt": "x", "model": "up"})

    def test_stripAndSet(self) -> None:
        """
        Item 41: C{stripParams: temperature}, C{setParams: {top_p: 0.9}}.
        """
        out = self.apply({"model": "m", "temperature": 0.7, "top_p": 0.1},
                         filters(strip=["temperature"], set={"top_p": 0.9}))
        self.assertEqual(out, {"model": "m", "top_p": 0.9})

    def test_setParamsByID(self) -> None:
        """
        Item 42: the entry for the requested name applies, after
        C{setParams}, so it wins; another name gets none of it.
        """
        f = filters(set={"r": "low", "k": 1}, byId={"m:high": {"r": "high"}})
        self.assertEqual(self.apply({"model": "m:high"}, f, name="m:high"),
                         {"model": "m:high", "k": 1, "r": "high"})
        self.assertEqual(self.apply({"model": "m"}, f, name="m"),
                         {"model": "m", "k": 1, "r": "low"})

    def test_fromConfig(self) -> None:
        """
        Items 40-42 with a loaded configuration: the name as sent selects
        the C{setParamsByID} entry, C{useModelName} renames.
        """
        config = loadConfigText(dedent("""
            models:
              m:
                cmd: srv --port ${PORT}
                useModelName: upstream-name
                filters:
                  stripParams: "temperature, model"
                  setParams: {top_p: 0.9, r: low}
                  setParamsByID:
                    "m:high": {r: high}
        """).lstrip(), {})
        model = config.model("m:high")
        raw = b'{"model": "m:high", "temperature": 1, "messages": [{"role": "user"}]}'
        out = json.loads(applyFilters(raw, model.filters, "m:high", model.useModelName))
        self.assertEqual(out, {"model": "upstream-name", "messages": [{"role": "user"}],
                               "r": "high", "top_p": 0.9})

    def test_existingKeyKeepsItsPlace(self) -> None:
        """
        A key that is set keeps its position; new keys are appended in
        sorted order; other members keep theirs.
        """
        raw = b'{"z": 1, "model": "m", "a": 2, "top_p": 0.1, "y": 3}'
        out = applyFilters(raw, filters(set={"top_p": 0.9, "c": 1, "b": 2}), "m", "up")
        self.assertEqual(
            out, b'{"z": 1, "model": "up", "a": 2, "top_p": 0.9, "y": 3, "b":2, "c":1}')

    def test_otherBytesKept(self) -> None:
        """
        Members the filters do not touch keep their exact text: spacing,
        number spelling, escapes, key order.
        """
        raw = (b'{\n  "model" : "m",\n  "x": 1.50e2,\n  "s": "caf\\u00e9 \\ud83e\\udd99",'
               b'\n  "temperature": 0.7,\n  "n": [1,  2]\n}\n')
        out = applyFilters(raw, filters(strip=["temperature"]), "m")
        self.assertEqual(out, (b'{\n  "model" : "m",\n  "x": 1.50e2,\n'
                               b'  "s": "caf\\u00e9 \\ud83e\\udd99",\n  "n": [1,  2]\n}\n'))

    def test_stripFirstAndLast(self) -> None:
        self.assertEqual(applyFilters(b'{"a": 1, "b": 2, "c": 3}', filters(strip=["a", "c"]), "m"),
                         b'{"b": 2}')
        self.assertEqual(applyFilters(b'{"a": 1}', filters(strip=["a"]), "m"), b'{}')
        self.assertEqual(applyFilters(b'{ "a" : 1 }', filters(strip=["a"]), "m"), b'{  }')

    def test_setIntoEmpty(self) -> None:
        self.assertEqual(applyFilters(b'{}', filters(set={"a": 1}), "m"), b'{"a":1}')
        self.assertEqual(applyFilters(b' {\n} ', filters(set={"a": 1, "b": [1]}), "m"),
                         b' {\n"a":1,"b":[1]} ')

    def test_stripThenSetAppends(self) -> None:
        """
        A key both stripped and set ends up set, at the end (as the
        reference's delete-then-set does).
        """
        out = applyFilters(b'{"k": 1, "z": 2}', filters(strip=["k"], set={"k": 5}), "m")
        self.assertEqual(out, b'{"z": 2, "k":5}')

    def test_duplicateKeys(self) -> None:
        """
        A duplicated key is stripped or set at every occurrence.
        """
        raw = b'{"t": 1, "a": 0, "t": 2}'
        self.assertEqual(applyFilters(raw, filters(strip=["t"]), "m"), b'{"a": 0}')
        self.assertEqual(applyFilters(raw, filters(set={"t": 9}), "m"), b'{"t": 9, "a": 0, "t": 9}')

    def test_valueTypes(self) -> None:
        """
        C{setParams} values may be any JSON type; non-ASCII text is kept
        as UTF-8.
        """
        values = {"b": True, "f": 0.25, "i": -3, "l": [1, "x"], "n": None,
                  "o": {"enable_thinking": False}, "s": "llamá"}
        out = applyFilters(b'{"model": "m"}', filters(set=values), "m")
        self.assertEqual(json.loads(out), {"model": "m", **values})
        self.assertIn("llamá".encode("utf-8"), out)

    def test_utf8BOM(self) -> None:
        raw = '\ufeff{"model": "m", "t": 1}'.encode("utf-8")
        out = applyFilters(raw, filters(strip=["t"]), "m")
        self.assertEqual(out, '\ufeff{"model": "m"}'.encode("utf-8"))

    def test_utf16(self) -> None:
        raw = '{"model": "m", "t": 1}'.encode("utf-16-le")
        out = applyFilters(raw, filters(strip=["t"]), "m")
        self.assertEqual(out.decode("utf-16-le"), '{"model": "m"}')

    def test_notAnObject(self) -> None:
        for raw in (b'[1, 2]', b'"x"', b'', b'{"a": 1} x', b'{"a" 1}', b'{"a": }'):
            self.assertRaises(FilterError, applyFilters, raw, filters(set={"k": 1}), "m")

    def test_notAnObjectWithoutEditsIsUntouched(self) -> None:
        """
        Without filters the body is not even parsed.
        """
        self.assertIsNone(applyFilters(b'not json', None, "m"))

    def test_unencodableValue(self) -> None:
        error = self.assertRaises(FilterError, applyFilters, b'{}',
                                  filters(set={"x": float("nan")}), "m")
        self.assertEqual(error.code, 500)
        self.assertIn("x", error.message)

    def test_applyEdits(self) -> None:
        self.assertEqual(applyEdits(b'{"a":1}', [DeleteParam("a"), SetParam("b", 2)]),
                         b'{"b":2}')
        self.assertIsNone(applyEdits(b'{"a":1}', []))


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=8,
)
_keys = st.sampled_from(["model", "a", "b", "c", "temperature", "x y", "é"])


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(
        body=st.dictionaries(_keys | st.text(max_size=5), _json, max_size=6),
        strip=st.lists(_keys, max_size=3),
        sets=st.dictionaries(_keys, _json, max_size=3),
        byId=st.dictionaries(_keys, _json, max_size=3),
        use=st.sampled_from(["", "up"]),
        indent=st.sampled_from([None, 2]),
    )
    def test_matchesDictSemantics(self, body, strip, sets, byId, use, indent) -> None:
        """
        The result decodes to what the same edits on a dict give, with the
        same key order.
        """
        raw = json.dumps(body, indent=indent).encode("utf-8")
        f = filters(strip=sorted(set(strip) - {"model"}),
                    set={k: v for k, v in sets.items() if k != "model"},
                    byId={"m:x": {k: v for k, v in byId.items() if k != "model"}})
        expected = dict(body)
        if use:
            expected["model"] = use
        for key in f.stripParams:
            expected.pop(key, None)
        for key in sorted(f.setParams):
            expected[key] = f.setParams[key]
        for key in sorted(f.setParamsByID["m:x"]):
            expected[key] = f.setParamsByID["m:x"][key]
        out = applyFilters(raw, f, "m:x", use)
        if out is None:
            self.assertEqual(json.dumps(expected), json.dumps(body))
        else:
            self.assertEqual(list(json.loads(out).items()), list(expected.items()))
