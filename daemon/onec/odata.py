"""OData 3 as 1C speaks it: literals, filter building, exact URL encoding, error bodies.

Everything that becomes part of a URL goes through here, so one place guarantees that

* a value taken from data (a warehouse called ``Склад "О'Брайен"``) is a single string literal:
  quotes are doubled inside literals, and doubled again when the expression is itself a literal
  (``Balance(Condition='…')``), so it can never change the meaning of a filter;
* names are checked to be plain identifiers and keys to be GUIDs before they are spliced in;
* spaces are sent as ``%20`` (1C does not read ``+`` as a space) and ``+``, ``&``, ``#``, ``%``,
  ``=`` in values are percent-encoded, so no value can add a query option;
* a request stays under the configured URL length (GUID lists are cut into batches).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote
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
    return f"substringof({literal(needle)}, {name(field)})"


def call(function: str, **params: str) -> str:
    """A bound function segment with string parameters, e.g. ``Balance(Condition='…')``."""
    args = ",".join(f"{name(key)}={literal(value)}" for key, value in params.items())
    return f"{name(function)}({args})"


def encode_path(path: str) -> str:
    return quote(path, safe=_PATH_SAFE)


def encode_query(params: Sequence[tuple[str, str]]) -> str:
    return "&".join(f"{quote(k, safe='$')}={quote(v, safe=_QUERY_SAFE)}" for k, v in params)


def relative_url(path: str, params: Sequence[tuple[str, str]] = ()) -> str:
    """The encoded part after the service root: what goes on the wire, byte for byte."""
    encoded = encode_path(path)
    return f"{encoded}?{encode_query(params)}" if params else encoded


def batches(
    values: Sequence[str], render: Callable[[Sequence[str]], str], limit: int
) -> list[list[str]]:
    """Cut ``values`` into runs whose rendered request (``render(run)``, an encoded relative
    URL) stays within ``limit`` bytes. A single value that cannot fit is a PermanentError.

    ``render`` joins per-value terms, so a run's length is the first value's request plus what
    each further value adds; measuring that on two-value runs keeps this linear."""
    runs: list[list[str]] = []
    current: list[str] = []
    size = start = 0
    for value in values:
        if current:
            grown = size + len(render([current[0], value])) - start
            if grown <= limit:
                current.append(value)
                size = grown
                continue
            runs.append(current)
        start = size = len(render([value]))
        if size > limit:
            raise PermanentError(
                f"a request with a single value is {size} bytes, over the {limit}-byte limit "
                "(onec.max_url_bytes)",
                system="1c",
                code="url_length",
            )
        current = [value]
    if current:
        runs.append(current)
    if any(len(render(run)) > limit for run in runs):
        raise AssertionError("batches: render() is not a join of per-value terms")
    return runs


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
