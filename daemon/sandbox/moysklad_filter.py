"""``filter=``, ``search=`` and paging of the МойСклад emulator's lists.

Filter rules (from the API docs): conditions are split on unescaped ``;`` (``\\;`` is a
literal); operators ``= != > < >= <= ~ ~= =~``; ``=`` repeated on one field is an OR, other
operators AND; different fields AND; ``field=`` means null or empty and ``field!=`` has a value;
the like-operators are case-insensitive; reference fields compare full hrefs (by id); an
unknown field is error 1034.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from yarl import URL

from daemon.sandbox.moysklad_wire import MEDIA_TYPE, ApiError

OPERATORS = ("!=", ">=", "<=", "~=", "=~", "=", "~", ">", "<")
FIELD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.")
MAX_LIMIT = 1000

FieldValue = str | float | bool | None
Accessor = Callable[[Any], FieldValue]


@dataclass(frozen=True, slots=True)
class Condition:
    field: str
    op: str
    value: str


def split_conditions(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text) and text[index + 1] == ";":
            current.append(";")
            index += 2
            continue
        if char == ";":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    parts.append("".join(current))
    return [part for part in parts if part]


def parse_filter(text: str) -> list[Condition]:
    conditions = []
    for part in split_conditions(text):
        end = 0
        while end < len(part) and part[end] in FIELD_CHARS:
            end += 1
        op = next((op for op in OPERATORS if part.startswith(op, end)), None)
        if end == 0 or op is None:
            raise ApiError(412, 1034, f"Неверный фильтр: '{part}'", parameter="filter")
        conditions.append(Condition(part[:end], op, part[end + len(op) :]))
    return conditions


def _as_number(value: FieldValue) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _test(actual: FieldValue, op: str, wanted: str) -> bool:
    if isinstance(actual, bool):
        actual = "true" if actual else "false"
    if op in ("=", "!=") and wanted == "":
        empty = actual is None or actual == ""
        return empty if op == "=" else not empty
    if actual is None:
        return op == "!="
    text = actual if isinstance(actual, str) else f"{actual:g}"
    if op == "=":
        if isinstance(actual, float):
            return actual == _as_number(wanted)
        return text == wanted
    if op == "!=":
        return not _test(actual, "=", wanted)
    if op in ("~", "~=", "=~"):
        low, needle = text.lower(), wanted.lower()
        if op == "~":
            return needle in low
        return low.startswith(needle) if op == "~=" else low.endswith(needle)
    left = actual if isinstance(actual, float) else None
    right = _as_number(wanted)
    if left is None or right is None:
        left_s, right_s = text, wanted
        return {">": left_s > right_s, "<": left_s < right_s, ">=": left_s >= right_s}.get(
            op, left_s <= right_s
        )
    return {">": left > right, "<": left < right, ">=": left >= right}.get(op, left <= right)


def compile_filter(
    text: str, fields: Mapping[str, Accessor], references: frozenset[str] = frozenset()
) -> Callable[[Any], bool]:
    """A predicate for ``text`` over entities whose fields ``fields`` can read."""
    conditions = parse_filter(text)
    for condition in conditions:
        if condition.field not in fields:
            raise ApiError(
                412,
                1034,
                f"Неизвестное поле для фильтрации: '{condition.field}'",
                parameter="filter",
            )
    by_field: dict[str, list[Condition]] = {}
    for condition in conditions:
        wanted = condition.value
        if condition.field in references and wanted:
            # Reference fields are filtered by full href; the id at its end identifies it.
            wanted = URL(wanted).path.rstrip("/").rsplit("/", 1)[-1]
        by_field.setdefault(condition.field, []).append(
            Condition(condition.field, condition.op, wanted)
        )

    def predicate(entity: Any) -> bool:
        for name, group in by_field.items():
            actual = fields[name](entity)
            equals = [c for c in group if c.op == "="]
            if equals and not any(_test(actual, "=", c.value) for c in equals):
                return False
            if not all(_test(actual, c.op, c.value) for c in group if c.op != "="):
                return False
        return True

    return predicate


def search_predicate(text: str, fields: Sequence[Accessor]) -> Callable[[Any], bool]:
    needle = text.lower()

    def predicate(entity: Any) -> bool:
        return any(needle in str(read(entity) or "").lower() for read in fields)

    return predicate


def page_params(query: Mapping[str, str]) -> tuple[int, int]:
    """(limit, offset) from the query; limit 1..1000 (default 1000), offset ≥ 0."""
    try:
        limit = int(query.get("limit", MAX_LIMIT))
        offset = int(query.get("offset", 0))
    except ValueError as exc:
        raise ApiError(412, 1014, "Неверное значение параметра limit или offset") from exc
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(
            412, 1014, f"Параметр 'limit' должен быть от 1 до {MAX_LIMIT}", parameter="limit"
        )
    if offset < 0:
        raise ApiError(412, 1014, "Параметр 'offset' не может быть отрицательным")
    return limit, offset


def envelope(
    *,
    base: str,
    request_url: URL,
    kind: str,
    rows: list[Any],
    size: int,
    limit: int,
    offset: int,
) -> dict[str, Any]:
    """The list envelope with ``size``/``limit``/``offset`` and ``nextHref``/``previousHref``."""
    href = f"{base}{request_url.path.split('/api/remap/1.2/', 1)[1]}"
    page_meta: dict[str, Any] = {
        "href": str(URL(href).with_query(request_url.query)),
        "type": kind,
        "mediaType": MEDIA_TYPE,
        "size": size,
        "limit": limit,
        "offset": offset,
    }
    if offset + limit < size:
        page_meta["nextHref"] = str(
            URL(href).with_query({**request_url.query, "limit": limit, "offset": offset + limit})
        )
    if offset > 0:
        page_meta["previousHref"] = str(
            URL(href).with_query(
                {**request_url.query, "limit": limit, "offset": max(0, offset - limit)}
            )
        )
    return {
        "context": {
            "employee": {
                "meta": {
                    "href": f"{base}context/employee",
                    "metadataHref": f"{base}entity/employee/metadata",
                    "type": "employee",
                    "mediaType": MEDIA_TYPE,
                }
            }
        },
        "meta": page_meta,
        "rows": rows,
    }
