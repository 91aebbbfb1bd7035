"""The 1C emulator's wire: query-string and path parsing, JSON/Atom answers, error bodies.

The query string is parsed here by hand on purpose: aiohttp/yarl read ``+`` as a space, the
real platform does not (reference §4 pitfall 14), and the emulator must be as strict.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote
from xml.sax.saxutils import escape

from aiohttp import web

from daemon.sandbox.onec_database import ODataFault, Row, unknown_segment
from daemon.sandbox.onec_filter import FilterSyntaxError
from daemon.sandbox.onec_params import parse_params

# ---------------------------------------------------------------------------------------------
# Request parsing
# ---------------------------------------------------------------------------------------------


def parse_query(raw: str) -> dict[str, str]:
    # Deliberately not yarl/aiohttp's parser: those read "+" as a space; 1C does not.
    options: dict[str, str] = {}
    for pair in raw.split("&"):
        if pair:
            name, _, value = pair.partition("=")
            options[unquote(name)] = unquote(value)
    return options


def split_call(text: str) -> tuple[str, str | None, str]:
    """``Name(args)/rest`` → (Name, args or None, rest); parentheses inside quotes ignored."""
    index = 0
    while index < len(text) and text[index] not in "(/":
        index += 1
    name = text[:index]
    if index == len(text) or text[index] == "/":
        return name, None, text[index + 1 :]
    depth, quoted, position = 0, False, index
    while position < len(text):
        char = text[position]
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
            if depth == 0:
                break
        position += 1
    if depth != 0:
        raise ODataFault(400, "6", "Extra segments are found in a request to an entity container!")
    rest = text[position + 1 :]
    if rest and not rest.startswith("/"):
        raise ODataFault(400, "6", "Extra segments are found in a request to an entity container!")
    return name, text[index + 1 : position], rest[1:]


def parse_call_params(text: str) -> dict[str, Any]:
    try:
        return parse_params(text)
    except FilterSyntaxError:
        raise ODataFault(400, "1", f"Не удалось разобрать строку '{text}'") from None


def int_option(options: dict[str, str], name: str) -> int | None:
    if name not in options:
        return None
    value = options[name]
    if not value.isdigit():
        raise ODataFault(400, "14", f"Ошибка при разборе опции запроса {name}")
    return int(value)


def selected(select: str, known: frozenset[str]) -> tuple[str, ...]:
    """``$select`` as a tuple of checked names; empty means every property."""
    if not select or select.strip() == "*":
        return ()
    names = tuple(name.strip() for name in select.split(","))
    for name in names:
        if name not in known:
            raise unknown_segment(name)
    return names


def project(rows: list[Row], select: str, known: frozenset[str]) -> list[Row]:
    names = selected(select, known)
    return [{name: row[name] for name in names} for row in rows] if names else rows


# ---------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(payload, ensure_ascii=False).encode("utf-8"),
        content_type="application/json",
        charset="utf-8",
        headers={"DataServiceVersion": "3.0", **(headers or {})},
    )


def atom_response(set_name: str, rows: list[Row]) -> web.Response:
    # Just enough Atom for a client to see it did not get JSON (reference §5.3).
    def entry(row: Row) -> str:
        props = "".join(
            f"<d:{name}>{escape(str(value))}</d:{name}>"
            for name, value in row.items()
            if not isinstance(value, list)
        )
        return (
            f'<entry><category term="StandardODATA.{set_name}"/>'
            '<content type="application/xml">'
            f"<m:properties>{props}</m:properties></content></entry>"
        )

    body = (
        '<?xml version="1.0" encoding="UTF-8"?><feed xmlns="http://www.w3.org/2005/Atom" '
        'xmlns:d="http://schemas.microsoft.com/ado/2007/08/dataservices" '
        'xmlns:m="http://schemas.microsoft.com/ado/2007/08/dataservices/metadata">'
        f'<title type="text">{escape(set_name)}</title>'
        + "".join(entry(row) for row in rows)
        + "</feed>"
    )
    return web.Response(text=body, content_type="application/atom+xml", charset="utf-8")


def error_response(fault: ODataFault, as_json: bool) -> web.Response:
    if as_json:
        payload = {
            "odata.error": {"code": fault.code, "message": {"lang": "ru", "value": fault.message}}
        }
        return json_response(payload, fault.status)
    body = (
        '<?xml version="1.0" encoding="UTF-8"?><m:error '
        'xmlns:m="http://schemas.microsoft.com/ado/2007/08/dataservices/metadata">'
        f"<m:code>{escape(fault.code)}</m:code>"
        f'<m:message xml:lang="ru">{escape(fault.message)}</m:message></m:error>'
    )
    return web.Response(status=fault.status, text=body, content_type="application/xml")


def drop_connection(request: web.Request) -> web.HTTPException:
    """Close the connection without an answer; the caller raises what this returns."""
    if request.transport is not None:
        request.transport.close()
    return web.HTTPInternalServerError()
