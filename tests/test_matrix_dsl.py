"""
Tests for L{llamaswap.config.matrix}: the set DSL's tokenizer, parser and
expander, the expansion of a whole C{sets} block, and its limits (SPEC.md
section 2.6).
"""

from __future__ import annotations

from typing import List, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from llamaswap.config.matrix import (
    MAX_COMBINATIONS,
    And,
    DSLError,
    Leaf,
    MatrixSetError,
    Or,
    Ref,
    Token,
    expandDSL,
    expandSets,
    expandTree,
    parse,
    references,
    tokenize,
)


class TokenizeTests(SynchronousTestCase):
    def test_identifier(self) -> None:
        self.assertEqual(tokenize("abc"), [Token("ident", "abc", 0), Token("end", "", 3)])

    def test_identifierCharacters(self) -> None:
        """
        Identifiers are letters, digits, C{_}, C{-} and C{.}.
        """
        self.assertEqual(
            [t.value for t in tokenize("model-name.v2 a_b Ünï 7")][:-1],
            ["model-name.v2", "a_b", "Ünï", "7"],
        )

    def test_operatorsAndParentheses(self) -> None:
        self.assertEqual(
            [(t.kind, t.value) for t in tokenize("(a | b) & c")],
            [("(", ""), ("ident", "a"), ("|", ""), ("ident", "b"), (")", ""), ("&", ""), ("ident", "c"), ("end", "")],
        )

    def test_whitespaceIgnored(self) -> None:
        self.assertEqual(
            [(t.kind, t.value) for t in tokenize("(a|b)&c")],
            [(t.kind, t.value) for t in tokenize(" ( a\t| b\n) &  c ")],
        )

    def test_reference(self) -> None:
        self.assertEqual(
            [(t.kind, t.value) for t in tokenize("+llms & v")],
            [("ref", "llms"), ("&", ""), ("ident", "v"), ("end", "")],
        )

    def test_plusWithoutNameIsAnError(self) -> None:
        e = self.assertRaises(DSLError, tokenize, "a & +")
        self.assertIn("expected set name after '+'", e.message)

    def test_plusFollowedBySpaceIsAnError(self) -> None:
        e = self.assertRaises(DSLError, tokenize, "+ a")
        self.assertIn("expected set name after '+'", e.message)

    def test_unexpectedCharacter(self) -> None:
        e = self.assertRaises(DSLError, tokenize, "a @ b")
        self.assertEqual(e.message, "unexpected character '@' at position 2")


class ParseTests(SynchronousTestCase):
    def test_leaf(self) -> None:
        self.assertEqual(parse("L"), Leaf("L"))

    def test_andBindsTighterThanOr(self) -> None:
        """
        C{a | b & c} is C{a | (b & c)}.
        """
        self.assertEqual(parse("a | b & c"), Or((Leaf("a"), And((Leaf("b"), Leaf("c"))))))

    def test_parenthesesGroup(self) -> None:
        self.assertEqual(
            parse("(a | b) & c"), And((Or((Leaf("a"), Leaf("b"))), Leaf("c")))
        )

    def test_chainsAreFlat(self) -> None:
        self.assertEqual(parse("a & b & c"), And((Leaf("a"), Leaf("b"), Leaf("c"))))
        self.assertEqual(parse("a | b | c"), Or((Leaf("a"), Leaf("b"), Leaf("c"))))

    def test_reference(self) -> None:
        self.assertEqual(parse("+s & x"), And((Ref("s"), Leaf("x"))))

    def test_references(self) -> None:
        self.assertEqual(references(parse("+llms & v & (+other | +llms)")), ["llms", "other"])
        self.assertEqual(references(parse("a & b")), [])

    def test_emptyExpression(self) -> None:
        for text in ("", "   ", "\n"):
            e = self.assertRaises(DSLError, parse, text)
            self.assertEqual(e.message, "empty DSL expression")

    def test_missingClosingParenthesis(self) -> None:
        e = self.assertRaises(DSLError, parse, "(a | b")
        self.assertIn("missing closing parenthesis", e.message)

    def test_unmatchedClosingParenthesis(self) -> None:
        e = self.assertRaises(DSLError, parse, "a | b)")
        self.assertIn("unexpected token", e.message)

    def test_emptyParentheses(self) -> None:
        e = self.assertRaises(DSLError, parse, "()")
        self.assertIn("unexpected token", e.message)

    def test_danglingOperator(self) -> None:
        for text in ("a &", "| a", "a & | b", "a b"):
            e = self.assertRaises(DSLError, parse, text)
            self.assertIn("unexpected token", e.message, text)


class ExpandTests(SynchronousTestCase):
    def test_single(self) -> None:
        self.assertEqual(expandDSL("L"), [("L",)])

    def test_and(self) -> None:
        self.assertEqual(expandDSL("b & a"), [("a", "b")])

    def test_or(self) -> None:
        self.assertEqual(expandDSL("a | b | c"), [("a",), ("b",), ("c",)])

    def test_cartesianProduct(self) -> None:
        """
        24. C{(a|b) & (c|d)}.
        """
        self.assertEqual(
            expandDSL("(a|b) & (c|d)"), [("a", "c"), ("a", "d"), ("b", "c"), ("b", "d")]
        )

    def test_precedence(self) -> None:
        """
        24. C{a | b & c} -> C{[a]}, C{[b, c]}.
        """
        self.assertEqual(expandDSL("a | b & c"), [("a",), ("b", "c")])

    def test_duplicatesWithinCombinationRemoved(self) -> None:
        """
        24. C{a & a} -> C{[a]}.
        """
        self.assertEqual(expandDSL("a & a"), [("a",)])

    def test_duplicateCombinationsKept(self) -> None:
        """
        C{|} is a union with duplicates kept.
        """
        self.assertEqual(expandDSL("a | a | a & a"), [("a",), ("a",), ("a",)])

    def test_specStandardSet(self) -> None:
        self.assertEqual(expandDSL("(g | q | m) & v"), [("g", "v"), ("q", "v"), ("m", "v")])
        self.assertEqual(expandDSL("(g | q) & v & e"), [("e", "g", "v"), ("e", "q", "v")])

    def test_referenceInlined(self) -> None:
        self.assertEqual(
            expandDSL("+llms & v", {"llms": [("g",), ("q",), ("m",)]}),
            [("g", "v"), ("q", "v"), ("m", "v")],
        )

    def test_referenceChained(self) -> None:
        self.assertEqual(
            expandDSL("+with_tts & e", {"with_tts": [("g", "v"), ("q", "v")]}),
            [("e", "g", "v"), ("e", "q", "v")],
        )

    def test_unknownReference(self) -> None:
        e = self.assertRaises(DSLError, expandDSL, "+unknown")
        self.assertIn("unknown set reference +unknown", e.message)

    def test_productOverLimit(self) -> None:
        """
        24. 32 x 32 = 1024 combinations.
        """
        left = " | ".join(f"a{i}" for i in range(32))
        right = " | ".join(f"b{i}" for i in range(32))
        e = self.assertRaises(DSLError, expandDSL, f"({left}) & ({right})")
        self.assertEqual(e.message, "DSL expansion exceeded 1000 combinations")

    def test_unionOverLimit(self) -> None:
        e = self.assertRaises(DSLError, expandDSL, " | ".join(["a"] * 1001))
        self.assertIn("exceeded", e.message)

    def test_exactlyAtLimit(self) -> None:
        self.assertEqual(len(expandDSL(" | ".join(["a"] * MAX_COMBINATIONS))), MAX_COMBINATIONS)

    def test_customLimit(self) -> None:
        self.assertRaises(DSLError, expandDSL, "(a|b) & (c|d)", {}, 3)


class ExpandSetsTests(SynchronousTestCase):
    SPEC = {
        "standard": "(g | q | m) & v",
        "with_rerank": "(g | q) & v & e",
        "creative": "(g | q) & sd",
        "full": "L",
    }
    VARS = ["g", "q", "m", "v", "e", "L", "sd"]

    def test_specExpandedOrder(self) -> None:
        """
        The SPEC section 2.6 expanded order.
        """
        self.assertEqual(
            [(name, combo) for name, _, combo in expandSets(self.SPEC, self.VARS)],
            [
                ("standard", ("g", "v")),
                ("standard", ("q", "v")),
                ("standard", ("m", "v")),
                ("with_rerank", ("e", "g", "v")),
                ("with_rerank", ("e", "q", "v")),
                ("creative", ("g", "sd")),
                ("creative", ("q", "sd")),
                ("full", ("L",)),
            ],
        )

    def test_dslKept(self) -> None:
        self.assertEqual(expandSets({"s": " a & b "}, "ab"), [("s", " a & b ", ("a", "b"))])

    def test_referencedSetsFirstDepthFirst(self) -> None:
        """
        Sets are visited in definition order; a set's references are emitted
        before it, depth first.
        """
        sets = {"top": "+mid & c", "other": "d", "mid": "+base & b", "base": "a"}
        self.assertEqual(
            [(name, combo) for name, _, combo in expandSets(sets, "abcd")],
            [
                ("base", ("a",)),
                ("mid", ("a", "b")),
                ("top", ("a", "b", "c")),
                ("other", ("d",)),
            ],
        )

    def test_syntaxErrorNamesTheSet(self) -> None:
        e = self.assertRaises(MatrixSetError, expandSets, {"ok": "a", "bad": "a &"}, "a")
        self.assertEqual(e.setName, "bad")
        self.assertTrue(e.message.startswith('set "bad": unexpected token'))

    def test_undefinedSet(self) -> None:
        """
        23. C{+nosuch}.
        """
        e = self.assertRaises(MatrixSetError, expandSets, {"a": "+nosuch"}, "x")
        self.assertEqual((e.setName, e.message), ("a", 'set "a" references undefined set "nosuch"'))

    def test_circularReference(self) -> None:
        """
        23. C{a: +b}, C{b: +a}.
        """
        e = self.assertRaises(MatrixSetError, expandSets, {"a": "+b", "b": "+a"}, "x")
        self.assertEqual(e.message, 'circular reference detected involving set "a"')

    def test_selfReference(self) -> None:
        e = self.assertRaises(MatrixSetError, expandSets, {"a": "x | +a"}, "x")
        self.assertIn("circular reference", e.message)

    def test_unknownVarId(self) -> None:
        """
        23. An identifier that is not a var.
        """
        e = self.assertRaises(MatrixSetError, expandSets, {"s": "a & zz"}, "a")
        self.assertEqual((e.setName, e.message), ("s", 'set "s": unknown var ID "zz"'))

    def test_setOverLimit(self) -> None:
        e = self.assertRaises(MatrixSetError, expandSets, {"s": " | ".join(["a"] * 1001)}, "a")
        self.assertEqual(e.message, 'set "s": DSL expansion exceeded 1000 combinations')

    def test_totalOverLimit(self) -> None:
        """
        Every set within the limit, the total over it.
        """
        many = " | ".join(["a"] * 400)
        e = self.assertRaises(MatrixSetError, expandSets, {"x": many, "y": many, "z": many}, "a")
        self.assertIsNone(e.setName)
        self.assertEqual(e.message, "total expanded combinations (1200) exceed limit of 1000")

    def test_referencedExpansionCountsTowardsTotal(self) -> None:
        """
        Inlined expansions count again in the set that inlines them.
        """
        many = " | ".join(["a"] * 501)
        e = self.assertRaises(MatrixSetError, expandSets, {"x": many, "y": "+x"}, "a")
        self.assertIn("total expanded combinations (1002)", e.message)


# -- properties -------------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "c", "d", "e"])


def _render(tree: object) -> str:
    if isinstance(tree, Leaf):
        return tree.name
    assert isinstance(tree, (And, Or))
    joiner = " & " if isinstance(tree, And) else " | "
    return "(" + joiner.join(_render(child) for child in tree.children) + ")"


TREES = st.recursive(
    NAMES.map(Leaf),
    lambda children: st.one_of(
        st.lists(children, min_size=2, max_size=3).map(lambda cs: And(tuple(cs))),
        st.lists(children, min_size=2, max_size=3).map(lambda cs: Or(tuple(cs))),
    ),
    max_leaves=8,
)


def _product(left: Sequence[tuple], right: Sequence[tuple]) -> List[tuple]:
    return [tuple(sorted(set(a + b))) for a in left for b in right]


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(TREES)
    def test_combinationsSortedAndUnique(self, tree: object) -> None:
        """
        Every expanded combination is sorted and has no repeats.
        """
        for combo in expandDSL(_render(tree)):
            self.assertEqual(list(combo), sorted(set(combo)))

    @settings(max_examples=150, deadline=None)
    @given(TREES)
    def test_renderedTextParsesBack(self, tree: object) -> None:
        self.assertEqual(expandDSL(_render(tree)), expandTree(tree))  # type: ignore[arg-type]

    @settings(max_examples=150, deadline=None)
    @given(TREES, TREES)
    def test_unionIsConcatenation(self, left: object, right: object) -> None:
        """
        C{a | b} expands to the expansions of C{a} then of C{b}.
        """
        a, b = _render(left), _render(right)
        self.assertEqual(expandDSL(f"{a} | {b}"), expandDSL(a) + expandDSL(b))

    @settings(max_examples=150, deadline=None)
    @given(TREES, TREES)
    def test_andIsProduct(self, left: object, right: object) -> None:
        """
        C{a & b} is the cartesian product, left major, each combination
        normalised.
        """
        a, b = _render(left), _render(right)
        self.assertEqual(expandDSL(f"{a} & {b}"), _product(expandDSL(a), expandDSL(b)))

    @settings(max_examples=100, deadline=None)
    @given(TREES, TREES, TREES)
    def test_andBindsTighter(self, x: object, y: object, z: object) -> None:
        a, b, c = _render(x), _render(y), _render(z)
        self.assertEqual(expandDSL(f"{a} | {b} & {c}"), expandDSL(f"{a} | ({b} & {c})"))
        self.assertEqual(expandDSL(f"{a} & {b} | {c}"), expandDSL(f"({a} & {b}) | {c}"))

    @settings(max_examples=100, deadline=None)
    @given(TREES)
    def test_referenceEqualsInlining(self, tree: object) -> None:
        """
        C{+s & x} expands like the text of C{s} in parentheses C{& x}.
        """
        text = _render(tree)
        expanded = expandSets({"s": text, "t": "+s & e"}, "abcde")
        viaRef = [combo for name, _, combo in expanded if name == "t"]
        self.assertEqual(viaRef, expandDSL(f"({text}) & e"))
