"""Values taken from 1C answers, checked before use: GUID keys, quantities, text and flags.

1C itself answers in a fixed shape; what reaches the hub may not be in it (a proxy page, a
half-updated publication, an extension that breaks a handler). Every reader takes the values it
uses through these functions, so a missing key, a ``null``, a number that is not a number or a
key that is not a GUID becomes one ``daemon.errors`` exception that names the request, the row
and what was wrong: never a ``KeyError``/``TypeError``/``InvalidOperation`` from inside a loop,
and never a made-up value (a quantity that cannot be read is not 0).

The functions return ``None`` for a value that is not what 1C sends; the reader decides what
that costs, because only it knows: an item row without a key may be skipped (it costs only its
own item), a stock, norm or open-order row may not (that would change the plan). ``malformed``
builds the read error: ``PermanentError`` with code ``malformed``, an answer the hub cannot
understand. The write turns it into ``OutcomeUnknownError`` where the order may exist (see
``daemon.onec.transfers``).
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any

from daemon.errors import PermanentError

SYSTEM = "1c"
MALFORMED = "malformed"

_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# For loops over tens of thousands of rows: ``type(k) is str and guid_text(k) is not None``
# is ``valid_key`` without a call per row (a set of keys already seen is no faster).
guid_text = _GUID.fullmatch
# Edm.Int64 (and, in some publications, Edm.Decimal) arrive as JSON text: only plain ASCII
# numbers are read as numbers ("12,5", "NaN", "1_000" or "٣" are not).
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# UT stores quantities as Число(15, 3): a magnitude of 10^15 or more is not a quantity.
LIMIT = 10**15
_LIMIT = Decimal(LIMIT)


def valid_key(value: Any) -> str | None:
    """``value`` if it is a GUID string (a ``Ref_Key``/``…_Key`` as 1C writes it), else None."""
    if type(value) is str and _GUID.fullmatch(value) is not None:
        return value
    return None


def quantity(value: Any) -> Decimal | None:
    """A finite JSON number (or numeric text) below 10^15 in magnitude, else None.

    Fractions arrive as floats (``odata.loads``) and become the Decimal of their shortest
    text; bools, nulls, containers, NaN and infinities are not quantities."""
    kind = type(value)
    if kind is int:
        return Decimal(value) if -LIMIT < value < LIMIT else None
    if kind is float:
        return quantity(Decimal(repr(value))) if math.isfinite(value) else None
    if kind is Decimal:
        return value if value.is_finite() and -_LIMIT < value < _LIMIT else None
    if kind is str and _NUMBER.fullmatch(value.strip()) is not None:
        return quantity(Decimal(value.strip()))
    return None


def text(value: Any) -> str | None:
    """A string field: the string, ``""`` for a null, None for anything else."""
    if type(value) is str:
        return value
    return "" if value is None else None


def flag(value: Any) -> bool | None:
    """A JSON boolean, None for anything else (``"yes"``, 1, null are not flags)."""
    return value if type(value) is bool else None


def shape(value: Any) -> str:
    """A short description of a bad value for a message (never a whole row or body)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value[:40]) if value else "empty text"
    if isinstance(value, int | float | Decimal):
        return str(value)[:40]
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def field_shape(row: Any, name: str) -> str:
    """What ``row[name]`` is, for a message: "missing", "null", a short repr."""
    if not isinstance(row, dict):
        return f"in a row that is {shape(row)}"
    if name not in row:
        return "missing"
    return shape(row[name])


def row_label(row: Any, key_field: str) -> str:
    """How a message names a row: by its key when that is a GUID, else by what it is."""
    if isinstance(row, dict):
        found = valid_key(row.get(key_field))
        return f"{key_field} {found}" if found else f"{key_field} {field_shape(row, key_field)}"
    return f"a row that is {shape(row)}"


def need_key(row: dict[str, Any], name: str, what: str, label: str) -> str:
    """``row[name]`` as a GUID, else the read of ``what`` fails naming ``label`` (the row)."""
    found = valid_key(row.get(name))
    if found is None:
        raise malformed(what, f"{label}: {name} is {field_shape(row, name)}, not a GUID")
    return found


def need_quantity(row: dict[str, Any], name: str, what: str, label: str) -> Decimal:
    """``row[name]`` as a quantity, else the read of ``what`` fails naming ``label``."""
    found = quantity(row.get(name))
    if found is None:
        raise malformed(what, f"{label}: {name} is {field_shape(row, name)}, not a quantity")
    return found


def malformed(what: str, detail: str) -> PermanentError:
    """The error for an answer to ``what`` (e.g. "stock balance") the hub cannot use."""
    return PermanentError(
        f"1C's answer to {what} is malformed: {detail}", system=SYSTEM, code=MALFORMED
    )
