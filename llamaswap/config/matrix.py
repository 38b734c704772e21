# -*- test-case-name: tests.test_matrix_dsl,tests.test_config -*-
"""
The matrix set DSL (SPEC.md section 2.6): tokenizer, parser, expander and the
expansion of a whole C{sets} block.

Grammar (whitespace ignored; C{&} binds tighter than C{|})::

    expr    = andExpr ('|' andExpr)*
    andExpr = atom ('&' atom)*
    atom    = IDENT | '+' IDENT | '(' expr ')'
    IDENT   = (letter | digit | '_' | '-' | '.')+

C{|} is a union of alternatives (duplicates kept, left first), C{&} the
cartesian product; every combination is de-duplicated and sorted.  C{+name}
inlines the expansion of another set.
"""

from __future__ import annotations

from typing import Collection, Dict, List, Mapping, Sequence, Tuple, Union

import attr

MAX_COMBINATIONS = 1000

Combination = Tuple[str, ...]


class DSLError(ValueError):
    """
    A DSL text that cannot be parsed or expanded.

    @ivar message: what is wrong (the reference's text).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MatrixSetError(ValueError):
    """
    A problem with one set of a C{sets} block, or with the block as a whole.

    @ivar setName: the set at fault, or L{None} for the whole block.
    @ivar message: what is wrong.
    """

    def __init__(self, setName: Union[str, None], message: str) -> None:
        super().__init__(message)
        self.setName = setName
        self.message = message


IDENT, AND, OR, LPAREN, RPAREN, REF, END = "ident", "&", "|", "(", ")", "ref", "end"


@attr.s(frozen=True, auto_attribs=True)
class Token:
    """
    @ivar kind: one of C{ident}, C{&}, C{|}, C{(}, C{)}, C{ref}, C{end}.
    @ivar value: the identifier or set name (C{""} for the others).
    @ivar position: the 0-based character offset in the text.
    """

    kind: str
    value: str
    position: int


@attr.s(frozen=True, auto_attribs=True)
class Leaf:
    """A var id."""

    name: str


@attr.s(frozen=True, auto_attribs=True)
class Ref:
    """C{+setName}: another set's expansion."""

    setName: str


@attr.s(frozen=True, auto_attribs=True)
class And:
    """Models that run together: the cartesian product of the children."""

    children: Tuple["Expr", ...]


@attr.s(frozen=True, auto_attribs=True)
class Or:
    """Alternatives: the union of the children's expansions, in order."""

    children: Tuple["Expr", ...]


Expr = Union[Leaf, Ref, And, Or]


def _isIdentChar(ch: str) -> bool:
    return ch.isalpha() or ch.isdigit() or ch in "_-."


def tokenize(text: str) -> List[Token]:
    """
    @return: the tokens of C{text}, ending with an C{end} token.
    @raise DSLError: C{unexpected character}, C{expected set name after '+'}.
    """
    tokens: List[Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "&|()":
            tokens.append(Token(ch, "", i))
            i += 1
        elif ch == "+":
            start = i = i + 1
            while i < len(text) and _isIdentChar(text[i]):
                i += 1
            if i == start:
                raise DSLError(f"expected set name after '+' at position {start}")
            tokens.append(Token(REF, text[start:i], start - 1))
        elif _isIdentChar(ch):
            start = i
            while i < len(text) and _isIdentChar(text[i]):
                i += 1
            tokens.append(Token(IDENT, text[start:i], start))
        else:
            raise DSLError(f"unexpected character {ch!r} at position {i}")
    tokens.append(Token(END, "", len(text)))
    return tokens


def _describeToken(token: Token) -> str:
    if token.kind == END:
        return "end of expression"
    if token.kind == IDENT:
        return f'"{token.value}"'
    if token.kind == REF:
        return f'"+{token.value}"'
    return f'"{token.kind}"'


class _Parser:
    def __init__(self, tokens: List[Token]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> Token:
        return self.tokens[self.pos]

    def advance(self) -> Token:
        token = self.tokens[self.pos]
        if token.kind != END:
            self.pos += 1
        return token

    def expr(self) -> Expr:
        children = [self.andExpr()]
        while self.peek().kind == OR:
            self.advance()
            children.append(self.andExpr())
        return children[0] if len(children) == 1 else Or(tuple(children))

    def andExpr(self) -> Expr:
        children = [self.atom()]
        while self.peek().kind == AND:
            self.advance()
            children.append(self.atom())
        return children[0] if len(children) == 1 else And(tuple(children))

    def atom(self) -> Expr:
        token = self.peek()
        if token.kind == IDENT:
            self.advance()
            return Leaf(token.value)
        if token.kind == REF:
            self.advance()
            return Ref(token.value)
        if token.kind == LPAREN:
            self.advance()
            node = self.expr()
            if self.peek().kind != RPAREN:
                raise DSLError(f"missing closing parenthesis at position {self.peek().position}")
            self.advance()
            return node
        raise DSLError(
            f"unexpected token {_describeToken(token)} at position {token.position}"
        )


def parse(text: str) -> Expr:
    """
    @return: the expression tree of C{text}.
    @raise DSLError: C{empty DSL expression}, C{unexpected character},
        C{expected set name after '+'}, C{missing closing parenthesis},
        C{unexpected token}.
    """
    if not text.strip():
        raise DSLError("empty DSL expression")
    parser = _Parser(tokenize(text))
    tree = parser.expr()
    token = parser.peek()
    if token.kind != END:
        raise DSLError(
            f"unexpected token {_describeToken(token)} after expression at position {token.position}"
        )
    return tree


def references(tree: Expr) -> List[str]:
    """
    @return: the set names C{tree} inlines with C{+name}, first use first,
        without repeats.
    """
    found: List[str] = []

    def walk(node: Expr) -> None:
        if isinstance(node, Ref):
            if node.setName not in found:
                found.append(node.setName)
        elif isinstance(node, (And, Or)):
            for child in node.children:
                walk(child)

    walk(tree)
    return found


def leaves(tree: Expr) -> List[str]:
    """
    @return: the var ids C{tree} names directly, first use first, without
        repeats.
    """
    found: List[str] = []

    def walk(node: Expr) -> None:
        if isinstance(node, Leaf):
            if node.name not in found:
                found.append(node.name)
        elif isinstance(node, (And, Or)):
            for child in node.children:
                walk(child)

    walk(tree)
    return found


def _exceeded(limit: int) -> DSLError:
    return DSLError(f"DSL expansion exceeded {limit} combinations")


def _expand(
    node: Expr, resolved: Mapping[str, Sequence[Combination]], limit: int
) -> List[Combination]:
    if isinstance(node, Leaf):
        return [(node.name,)]
    if isinstance(node, Ref):
        if node.setName not in resolved:
            raise DSLError(f"unknown set reference +{node.setName}")
        return list(resolved[node.setName])
    if isinstance(node, Or):
        union: List[Combination] = []
        for child in node.children:
            union.extend(_expand(child, resolved, limit))
            if len(union) > limit:
                raise _exceeded(limit)
        return union
    product: List[Combination] = [()]
    for child in node.children:
        right = _expand(child, resolved, limit)
        if len(product) * len(right) > limit:
            raise _exceeded(limit)
        product = [left + each for left in product for each in right]
    return product


def normalise(combination: Sequence[str]) -> Combination:
    """
    @return: C{combination} de-duplicated and sorted.
    """
    return tuple(sorted(set(combination)))


def expandTree(
    tree: Expr,
    resolved: Mapping[str, Sequence[Combination]] = {},
    limit: int = MAX_COMBINATIONS,
) -> List[Combination]:
    """
    @param resolved: set name -> its expansion, for C{+name}.

    @return: every combination of C{tree}, in order (left alternatives
        first), each de-duplicated and sorted.
    @raise DSLError: C{DSL expansion exceeded 1000 combinations} when a
        union or product grows past C{limit}; C{unknown set reference}.
    """
    return [normalise(c) for c in _expand(tree, resolved, limit)]


def expandDSL(
    text: str,
    resolved: Mapping[str, Sequence[Combination]] = {},
    limit: int = MAX_COMBINATIONS,
) -> List[Combination]:
    """
    Parse and expand C{text}; see L{parse} and L{expandTree}.
    """
    return expandTree(parse(text), resolved, limit)


def expandSets(
    sets: Mapping[str, str], varIds: Collection[str], limit: int = MAX_COMBINATIONS
) -> List[Tuple[str, str, Combination]]:
    """
    Validate and expand a whole C{sets} block.

    @param sets: set name -> DSL text, in definition order.
    @param varIds: the declared var ids.

    @return: C{(setName, dsl, varIds)} for every combination, depth-first
        over the sets in definition order with referenced sets emitted
        before the sets that use them, and within a set left alternatives
        first.
    @raise MatrixSetError: for a syntax error, an undefined or circular
        reference, an unknown var id, or too many combinations.
    """
    trees: Dict[str, Expr] = {}
    deps: Dict[str, List[str]] = {}
    for name, dsl in sets.items():
        try:
            trees[name] = parse(dsl)
        except DSLError as e:
            raise MatrixSetError(name, f'set "{name}": {e.message}') from None
        deps[name] = references(trees[name])
        for ref in deps[name]:
            if ref not in sets:
                raise MatrixSetError(name, f'set "{name}" references undefined set "{ref}"')

    order: List[str] = []
    state: Dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str) -> None:
        if state.get(name) == 1:
            raise MatrixSetError(name, f'circular reference detected involving set "{name}"')
        if state.get(name) == 2:
            return
        state[name] = 1
        for dep in deps[name]:
            visit(dep)
        state[name] = 2
        order.append(name)

    for name in sets:
        visit(name)

    known = set(varIds)
    resolved: Dict[str, List[Combination]] = {}
    expanded: List[Tuple[str, str, Combination]] = []
    for name in order:
        for leaf in leaves(trees[name]):
            if leaf not in known:
                raise MatrixSetError(name, f'set "{name}": unknown var ID "{leaf}"')
        try:
            combos = expandTree(trees[name], resolved, limit)
        except DSLError as e:
            raise MatrixSetError(name, f'set "{name}": {e.message}') from None
        resolved[name] = combos
        expanded.extend((name, sets[name], combo) for combo in combos)
        if len(expanded) > limit:
            raise MatrixSetError(
                None, f"total expanded combinations ({len(expanded)}) exceed limit of {limit}"
            )
    return expanded
