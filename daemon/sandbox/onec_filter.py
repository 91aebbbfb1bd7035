"""The OData 3 expression subset the 1C emulator understands: ``$filter`` and ``Condition``.

The tokenizer works on the percent-decoded text and refuses anything outside the grammar — in
particular a ``+`` (the real platform does not read ``+`` as a space, so a client that sends
``IsFolder+eq+false`` gets a parse error, not a lucky match).

String comparisons are case-insensitive, as they are in 1C queries on every supported DBMS.
"""

from __future__ import annotations

import operator
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

Row = Any
Getter = Callable[[Row], Any]
Predicate = Callable[[Row], bool]


class Guid(str):
    """A ``guid'…'`` literal (canonical lower case): compared exactly, no case folding needed."""

    __slots__ = ()


class FilterSyntaxError(ValueError):
    """The expression cannot be parsed (1C: HTTP 400, code 14)."""


class UnknownFieldError(ValueError):
    """The expression names a property the entity does not have (1C: HTTP 400, code 6)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(name)


# ---------------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<ws>\ +)
  | (?P<typed>(?:guid|datetime|datetimeoffset|time)'(?:[^']|'')*')
  | (?P<string>'(?:[^']|'')*')
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?[mMdDlLfF]?)
  | (?P<name>[^\W\d][\w]*)
  | (?P<punct>[(),=/])
    """,
    re.VERBOSE,
)

_KEYWORDS = {"eq", "ne", "gt", "ge", "lt", "le", "and", "or", "not"}
_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "literal", "name", "punct", "keyword"
    text: str
    value: Any = None


def _unquote(body: str) -> str:
    return body[1:-1].replace("''", "'")


def _literal(kind: str, text: str) -> Any:
    if kind == "string":
        return _unquote(text)
    if kind == "number":
        digits = text.rstrip("mMdDlLfF")
        try:
            value = Decimal(digits)
        except InvalidOperation as exc:
            raise FilterSyntaxError(text) from exc
        return int(value) if value == value.to_integral_value() and "." not in digits else value
    prefix, _, rest = text.partition("'")
    body = _unquote("'" + rest)
    if prefix == "guid":
        try:
            return Guid(uuid.UUID(body))
        except ValueError as exc:
            raise FilterSyntaxError(text) from exc
    try:
        moment = datetime.fromisoformat(body.rstrip("Z"))
    except ValueError as exc:
        raise FilterSyntaxError(text) from exc
    # 1C stores naive dates as "YYYY-MM-DDTHH:MM:SS"; comparing that text orders correctly.
    return moment.replace(tzinfo=None, microsecond=0).isoformat()


def tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise FilterSyntaxError(f"unexpected {text[position]!r} at {position}")
        position = match.end()
        kind = match.lastgroup or ""
        value = match.group()
        if kind == "ws":
            continue
        if kind in ("typed", "string", "number"):
            tokens.append(_Token("literal", value, _literal(kind, value)))
        elif kind == "name":
            lowered = value.lower()
            if lowered in _KEYWORDS:
                tokens.append(_Token("keyword", lowered))
            elif lowered in ("true", "false"):
                tokens.append(_Token("literal", value, lowered == "true"))
            elif lowered == "null":
                tokens.append(_Token("literal", value, None))
            else:
                tokens.append(_Token("name", value))
        else:
            tokens.append(_Token("punct", value))
    return tokens


# ---------------------------------------------------------------------------------------------
# Syntax tree
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Literal:
    value: Any


@dataclass(frozen=True, slots=True)
class Field:
    name: str


@dataclass(frozen=True, slots=True)
class Compare:
    op: str
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class BoolOp:
    op: str  # "and" / "or"
    parts: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    args: tuple[Node, ...]


Node = Literal | Field | Compare | BoolOp | Not | Call

_FUNCTIONS = {
    "substringof": 2,
    "startswith": 2,
    "endswith": 2,
    "year": 1,
    "month": 1,
    "day": 1,
    "tolower": 1,
    "toupper": 1,
}


class _Parser:
    def __init__(self, tokens: Sequence[_Token]) -> None:
        self._tokens = tokens
        self._index = 0

    def _peek(self) -> _Token | None:
        return self._tokens[self._index] if self._index < len(self._tokens) else None

    def _next(self) -> _Token:
        token = self._peek()
        if token is None:
            raise FilterSyntaxError("unexpected end of expression")
        self._index += 1
        return token

    def _expect(self, text: str) -> None:
        token = self._next()
        if token.text != text:
            raise FilterSyntaxError(f"expected {text!r}, got {token.text!r}")

    def _accept_keyword(self, word: str) -> bool:
        token = self._peek()
        if token is not None and token.kind == "keyword" and token.text == word:
            self._index += 1
            return True
        return False

    def parse(self) -> Node:
        node = self._or()
        if self._peek() is not None:
            raise FilterSyntaxError(f"unexpected {self._next().text!r}")
        return node

    def _or(self) -> Node:
        parts = [self._and()]
        while self._accept_keyword("or"):
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else BoolOp("or", tuple(parts))

    def _and(self) -> Node:
        parts = [self._not()]
        while self._accept_keyword("and"):
            parts.append(self._not())
        return parts[0] if len(parts) == 1 else BoolOp("and", tuple(parts))

    def _not(self) -> Node:
        if self._accept_keyword("not"):
            return Not(self._not())
        return self._comparison()

    def _comparison(self) -> Node:
        left = self._primary()
        token = self._peek()
        if token is not None and token.kind == "keyword" and token.text in _COMPARISONS:
            self._index += 1
            return Compare(token.text, left, self._primary())
        return left

    def _primary(self) -> Node:
        token = self._next()
        if token.kind == "literal":
            return Literal(token.value)
        if token.text == "(":
            node = self._or()
            self._expect(")")
            return node
        if token.kind == "name":
            following = self._peek()
            if following is not None and following.text == "(":
                return self._call(token.text)
            return Field(token.text)
        raise FilterSyntaxError(f"unexpected {token.text!r}")

    def _call(self, name: str) -> Node:
        arity = _FUNCTIONS.get(name.lower())
        if arity is None:
            raise FilterSyntaxError(f"unknown function {name}")
        self._expect("(")
        args = [self._or()]
        while (token := self._peek()) is not None and token.text == ",":
            self._index += 1
            args.append(self._or())
        self._expect(")")
        if len(args) != arity:
            raise FilterSyntaxError(f"{name} takes {arity} arguments")
        return Call(name.lower(), tuple(args))


def parse_filter(text: str) -> Node:
    """Parse a ``$filter`` / ``Condition`` expression."""
    return _Parser(tokenize(text)).parse()


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def _fold(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value


def _compare(op: str, left: Any, right: Any) -> bool:
    if left is None or right is None:
        return op == ("eq" if left is right else "ne")
    try:
        return _COMPARISONS[op](_fold(left), _fold(right))
    except TypeError:
        return False


def compile_filter(node: Node, field: Callable[[str], Getter]) -> Predicate:
    """Turn a tree into a row predicate. ``field(name)`` returns a getter or raises
    ``UnknownFieldError``; it is called once per name, at compile time."""
    evaluate = _compile(node, field)
    return lambda row: evaluate(row) is True


def _field_equals(get: Getter, value: Any) -> Getter:
    """``Field eq literal``, the hot case: exact for GUIDs, booleans and numbers (the row holds
    them canonically), case-folded only for plain strings."""
    if isinstance(value, Guid) or (value is not None and not isinstance(value, str)):
        return lambda row: get(row) == value
    if value is None:
        return lambda row: get(row) is None
    folded = value.casefold()
    return lambda row: isinstance(v := get(row), str) and v.casefold() == folded


def _compile(node: Node, field: Callable[[str], Getter]) -> Getter:
    if isinstance(node, Literal):
        value = node.value
        return lambda row: value
    if isinstance(node, Field):
        return field(node.name)
    if isinstance(node, Compare):
        if node.op == "eq" and isinstance(node.left, Field) and isinstance(node.right, Literal):
            return _field_equals(field(node.left.name), node.right.value)
        left, right, op = _compile(node.left, field), _compile(node.right, field), node.op
        return lambda row: _compare(op, left(row), right(row))
    if isinstance(node, Not):
        inner = _compile(node.operand, field)
        return lambda row: inner(row) is not True
    if isinstance(node, BoolOp):
        parts = [_compile(part, field) for part in node.parts]
        combined = parts[0]
        for part in parts[1:]:
            combined = _pair(node.op, combined, part)
        return combined
    return _compile_call(node, field)


def _pair(op: str, first: Getter, second: Getter) -> Getter:
    # Nested closures short-circuit without a generator per row.
    if op == "and":
        return lambda row: first(row) is True and second(row) is True
    return lambda row: first(row) is True or second(row) is True


def _text(value: Any) -> str:
    return value.casefold() if isinstance(value, str) else ""


def _compile_call(node: Call, field: Callable[[str], Getter]) -> Getter:
    args = [_compile(arg, field) for arg in node.args]
    if node.name == "substringof":
        needle, haystack = args
        return lambda row: _text(needle(row)) in _text(haystack(row))
    if node.name == "startswith":
        return lambda row: _text(args[0](row)).startswith(_text(args[1](row)))
    if node.name == "endswith":
        return lambda row: _text(args[0](row)).endswith(_text(args[1](row)))
    if node.name in ("tolower", "toupper"):
        return lambda row: _text(args[0](row))
    part = {"year": slice(0, 4), "month": slice(5, 7), "day": slice(8, 10)}[node.name]

    def date_part(row: Row) -> int | None:
        value = args[0](row)
        return int(value[part]) if isinstance(value, str) and len(value) >= 10 else None

    return date_part


def restricted_values(node: Node, name: str) -> set[Any] | None:
    """The values ``name`` can take for the expression to hold, if the expression pins it to a
    finite set (``F eq a``, ``F eq a or F eq b``, or such a term inside an ``and``); else None.
    Lets the emulator use an index instead of scanning every row."""
    if isinstance(node, Compare) and node.op == "eq":
        if isinstance(node.left, Field) and node.left.name == name:
            other = node.right
        elif isinstance(node.right, Field) and node.right.name == name:
            other = node.left
        else:
            return None
        return {other.value} if isinstance(other, Literal) else None
    if isinstance(node, BoolOp):
        found = [restricted_values(part, name) for part in node.parts]
        if node.op == "or":
            if any(values is None for values in found):
                return None
            return set().union(*(values for values in found if values is not None))
        pinned = [values for values in found if values is not None]
        return set.intersection(*pinned) if pinned else None
    return None
