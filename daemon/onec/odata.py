"""OData 3 as 1C speaks it: literals, filter building, exact URL encoding, error bodies.

Everything that becomes part of a URL goes through here, so one place guarantees that

* a value taken from data (a warehouse called ``Склад "О'Брайен"``) is a single string literal:
  quotes are doubled inside literals, so it can never change the meaning of a filter;
* a ``Condition`` of a virtual table goes in the form the server reads (``balance_call``): the
  guide's, its inner quotes left as they are; the OData-escaped one, doubled again; or as query
  options. The guide's form has no escape, so an expression holding a doubled quote is never
  written in it;
* names are checked to be plain identifiers and keys to be GUIDs before they are spliced in;
* spaces are sent as ``%20`` (1C does not read ``+`` as a space) and ``+``, ``&``, ``#``, ``%``,
  ``=`` in values are percent-encoded, so no value can add a query option;
* a request stays under both IIS limits (``UrlLimits``): the bytes of the URL, which bound the
  query string (``maxQueryString``), and the characters of each path segment once decoded
  (HTTP.sys ``UrlSegmentMaxLength``); GUID lists are cut into batches that fit both.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, NamedTuple
from urllib.parse import quote, unquote
from xml.etree import ElementTree

import orjson

from daemon.errors import PermanentError

_NAME = re.compile(r"[^\W\d]\w*")
# Characters left as they are. Everything else, including space, "+", "&", "#", "%", "=" and
# every non-ASCII byte, is percent-encoded (UTF-8).
_PATH_SAFE = "/(),'=_-.$*"
_QUERY_SAFE = "(),'_-.$*/:"


def name(text: str) -> str:
    """An entity set / property / function name, checked to be an identifier."""
    if not _NAME.fullmatch(text):
        raise ValueError(f"not an OData name: {text!r}")
    return text


def literal(value: str) -> str:
    """A string literal: ``O'Брайен`` → ``'O''Брайен'``."""
    return "'" + value.replace("'", "''") + "'"


def guid(key: str) -> str:
    """A GUID literal; anything that is not a GUID is refused before it reaches a URL."""
    try:
        canonical = str(uuid.UUID(key))
    except (ValueError, AttributeError, TypeError):
        raise ValueError(f"not a GUID: {key!r}") from None
    return f"guid'{canonical}'"


def is_guid(key: str) -> bool:
    try:
        uuid.UUID(key)
    except (ValueError, AttributeError, TypeError):
        return False
    return True


def date_text(moment: datetime) -> str:
    """1C's naive date form ``YYYY-MM-DDTHH:MM:SS`` (no zone, no fraction)."""
    return moment.replace(tzinfo=None, microsecond=0).isoformat()


def datetime_literal(moment: datetime) -> str:
    return f"datetime'{date_text(moment)}'"


def eq(field: str, value_literal: str) -> str:
    return f"{name(field)} eq {value_literal}"


def any_of(field: str, value_literals: Sequence[str]) -> str:
    """``(F eq a or F eq b …)``; parenthesised so it can sit inside an ``and``."""
    if not value_literals:
        raise ValueError("any_of needs at least one value")
    return "(" + " or ".join(eq(field, v) for v in value_literals) + ")"


def all_of(*terms: str) -> str:
    return " and ".join(terms)


def substringof(needle: str, field: str) -> str:
    """``substringof('…', F) eq true``, as the guide writes it (it never uses a bare one)."""
    return f"substringof({literal(needle)}, {name(field)}) eq true"


def call(function: str, **params: str) -> str:
    """A bound function segment with string parameters, e.g. ``Balance(Condition='…')``."""
    args = ",".join(f"{name(key)}={literal(value)}" for key, value in params.items())
    return f"{name(function)}({args})"


ConditionForm = Literal["guide", "doubled", "query"]
CONDITION_FORMS: tuple[ConditionForm, ...] = ("guide", "doubled", "query")
# Literals that hold no quote of their own: what the guide's form can carry safely.
_TYPED = re.compile(r"(?:guid|datetime)'[^']*'")
_STRING = re.compile(r"'([^']*)'")
_SYNTAX = frozenset("'(),=/")


def expressible(condition: str, form: ConditionForm) -> bool:
    """Whether ``condition`` can be sent in ``form`` without a chance of being misread.

    In a path segment (``guide``, ``doubled``) a ``/`` would start a new segment, encoded or
    not (HTTP.sys decodes ``%2F`` before it splits). The guide's form has no escape, so where
    the parameter ends is the server's guess: a string literal holding a quote (a name like
    ``O'Брайен``), a parenthesis, a comma or ``=`` could end it early and have the rest read as
    more parameters. GUID and date literals, and string literals of plain text, leave no doubt
    (the hub's own conditions hold GUIDs only)."""
    if form == "query":
        return True
    if "/" in condition:
        return False
    if form == "doubled":
        return True
    rest = _TYPED.sub("", condition)
    # Unescaped, a string literal's quotes look like the parameter's own, so what is inside
    # one stands outside any quotes to a reader counting them: it must hold no syntax at all.
    return "''" not in rest and all(
        not _SYNTAX.intersection(text) for text in _STRING.findall(rest)
    )


def balance_call(
    register: str, condition: str, form: ConditionForm, *, dimensions: str
) -> tuple[str, list[tuple[str, str]]]:
    """(path, leading query options) of ``register/Balance`` with ``Condition`` and
    ``Dimensions`` in ``form``; ValueError when ``condition`` is not ``expressible`` in it:

    * ``guide``: ``Balance(Condition='Склад_Key eq guid'…'',Dimensions='…')`` (guide §17.4.9,
      §17.4.13.2), the expression as it is;
    * ``doubled``: the expression as an OData string literal, its quotes doubled;
    * ``query``: ``Balance?Condition=Склад_Key eq guid'…'&Dimensions=…``, as the guide passes
      them to ``SliceLast``; percent-encoding keeps every value inside its option.
    """
    for part in dimensions.split(","):
        name(part)
    if not expressible(condition, form):
        raise ValueError(f"this Condition cannot be sent in the {form!r} form: {condition!r}")
    head = name(register) + "/"
    if form == "query":
        return head + "Balance", [("Condition", condition), ("Dimensions", dimensions)]
    if form == "doubled":
        return head + call("Balance", Condition=condition, Dimensions=dimensions), []
    return head + f"Balance(Condition='{condition}',Dimensions='{dimensions}')", []


class UrlLimits(NamedTuple):
    """What IIS lets through: ``url_bytes`` of encoded path and query together (this bounds the
    query string, ``maxQueryString``, 2048 bytes by default), and ``segment_chars`` characters
    in each path segment (HTTP.sys ``UrlSegmentMaxLength``, 260 by default). HTTP.sys measures
    the URL it has decoded — a decoded ``%2F`` starts a new segment — so a segment counts its
    decoded characters: a Cyrillic letter is one, not the six bytes it takes on the wire."""

    url_bytes: int
    segment_chars: int

    def excess(self, relative: str) -> str | None:
        """Which limit the encoded ``relative`` URL breaks, naming the key; None if it fits."""
        if len(relative) > self.url_bytes:
            return (
                f"{len(relative)} bytes long, over the {self.url_bytes}-byte limit "
                "(onec.max_url_bytes)"
            )
        segment = longest_segment(relative)
        if segment > self.segment_chars:
            return (
                f"a path segment of {segment} characters, over the {self.segment_chars}-character "
                "limit (onec.max_path_segment_chars)"
            )
        return None


def longest_segment(relative: str) -> int:
    """Characters of the longest path segment of an encoded relative URL, once decoded."""
    return max(len(part) for part in unquote(relative.split("?", 1)[0]).split("/"))


def encode_path(path: str) -> str:
    return quote(path, safe=_PATH_SAFE)


def encode_query(params: Sequence[tuple[str, str]]) -> str:
    return "&".join(f"{quote(k, safe='$')}={quote(v, safe=_QUERY_SAFE)}" for k, v in params)


def relative_url(path: str, params: Sequence[tuple[str, str]] = ()) -> str:
    """The encoded part after the service root: what goes on the wire, byte for byte."""
    encoded = encode_path(path)
    return f"{encoded}?{encode_query(params)}" if params else encoded


def batches(
    values: Sequence[str], render: Callable[[Sequence[str]], str], limit: int | UrlLimits
) -> list[list[str]]:
    """Cut ``values`` into runs whose rendered request (``render(run)``, an encoded relative
    URL) fits ``limit``: a byte count, or both ``UrlLimits``. A single value that cannot fit
    is a PermanentError.

    ``render`` joins per-value terms, so a run's size is the first value's request plus what
    each further value adds; measuring that on two-value runs keeps this linear. Each run is
    measured whole at the end, and one the estimate let over (the longest segment was not the
    one that grows) is cut again by exact measure."""
    limits = limit if isinstance(limit, UrlLimits) else UrlLimits(limit, 1 << 62)

    def measure(run: Sequence[str]) -> tuple[int, int]:
        relative = render(run)
        return len(relative), longest_segment(relative)

    runs: list[list[str]] = []
    current: list[str] = []
    size = segment = start = start_segment = 0
    for value in values:
        if current:
            pair_size, pair_segment = measure([current[0], value])
            grown, grown_segment = size + pair_size - start, segment + pair_segment - start_segment
            if grown <= limits.url_bytes and grown_segment <= limits.segment_chars:
                current.append(value)
                size, segment = grown, grown_segment
                continue
            runs.append(current)
        size, segment = start, start_segment = measure([value])
        problem = limits.excess(render([value]))
        if problem is not None:
            raise PermanentError(
                f"a request with a single value would be {problem}", system="1c", code="url_length"
            )
        current = [value]
    if current:
        runs.append(current)
    exact: list[list[str]] = []
    for run in runs:
        if limits.excess(render(run)) is None:
            exact.append(run)
            continue
        piece: list[str] = []
        for value in run:
            if piece and limits.excess(render([*piece, value])) is not None:
                exact.append(piece)
                piece = []
            piece.append(value)
        exact.append(piece)
    return exact


def json_number(value: Decimal) -> int | float:
    """A quantity for a JSON body (Edm.Double): whole numbers as integers."""
    return int(value) if value == value.to_integral_value() else float(value)


def dumps(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")


def loads(body: bytes) -> Any:
    """Parse a JSON answer (orjson: a run reads tens of MB of Cyrillic-keyed rows).

    Fractions arrive as floats; ``answers.quantity`` turns them into the exact ``Decimal`` of
    their shortest text, which is the value 1C sent (its quantities are N(15,3), within a
    double's 15 exact digits). ``NaN``/``Infinity`` are not JSON and orjson refuses them, so an
    answer carrying them is refused whole (``ValueError``)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not a JSON value: {exc}") from exc


def parse_error(body: bytes) -> tuple[str | None, str | None]:
    """``(code, message)`` from an ``odata.error`` body (JSON or Atom); ``(None, None)`` when
    the body is not one (an IIS page, a proxy's 502, an empty answer)."""
    text = body.strip()
    if text.startswith(b"{"):
        try:
            error = json.loads(text).get("odata.error")
        except (ValueError, AttributeError):
            return None, None
        if not isinstance(error, dict):
            return None, None
        message = error.get("message")
        value = message.get("value") if isinstance(message, dict) else message
        code = error.get("code")
        return (None if code is None else str(code)), (None if value is None else str(value))
    if text.startswith(b"<") and b"error" in text[:400]:
        try:
            root = ElementTree.fromstring(text)
        except ElementTree.ParseError:
            return None, None
        if not root.tag.endswith("}error"):
            return None, None
        found = {child.tag.rsplit("}", 1)[-1]: (child.text or "") for child in root}
        return found.get("code"), found.get("message")
    return None, None
