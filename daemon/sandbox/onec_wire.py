"""The 1C emulator's wire: query-string and path parsing, JSON/Atom answers, error bodies.

The query string is parsed here by hand on purpose: aiohttp/yarl read ``+`` as a space, the
real platform does not (reference §4 pitfall 14), and the emulator must be as strict.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote
from xml.sax.saxutils import escape

from aiohttp import web

from daemon.sandbox.onec_database import ODataFault, Row, unknown_segment
from daemon.sandbox.onec_filter import (
    FilterSyntaxError,
    parse_filter,
    parse_guide_params,
    parse_params,
)

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


FUNCTION_PARAMS = ("Condition", "Dimensions", "Period")
_READERS: dict[str, tuple[Callable[[str], dict[str, Any]], ...]] = {
    "guide": (parse_guide_params,),
    "doubled": (parse_params,),
    "both": (parse_guide_params, parse_params),
}


def balance_params(
    args: str | None, options: dict[str, str], *, form: str, query_options: str
) -> dict[str, Any]:
    """The parameters of a ``Balance`` call as the emulated server reads them: in the path, in
    ``form`` ("guide": inner quotes as they are, the guide's; "doubled": an OData string
    literal; "both"), or as query options (``query_options``: "accept", "refuse", "ignore").
    A Condition that cannot be parsed is refused as 1C refuses a string it cannot read."""
    in_query = {name: options[name] for name in FUNCTION_PARAMS if name in options}
    if args and in_query:
        raise ODataFault(400, "1", f"Не удалось разобрать строку '{args}'")
    if args:
        for read in _READERS[form]:
            try:
                params = read(args)
                parse_filter(str(params.get("Condition", "true")))
            except FilterSyntaxError:
                continue
            return params
        raise ODataFault(400, "1", f"Не удалось разобрать строку '{args}'")
    if not in_query or query_options == "ignore":
        return {}
    if query_options == "refuse":
        raise ODataFault(400, "14", f"Ошибка при разборе опции запроса {next(iter(in_query))}")
    try:
        parse_filter(in_query.get("Condition", "true"))
    except FilterSyntaxError:
        raise ODataFault(
            400, "1", f"Не удалось разобрать строку '{in_query['Condition']}'"
        ) from None
    return in_query


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


# What IIS answers before 1C sees the request (HTTP.sys, then request filtering).
_HTTPSYS_INVALID_URL = (
    '<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01//EN""http://www.w3.org/TR/html4/strict.dtd">\r\n'
    "<HTML><HEAD><TITLE>Bad Request</TITLE>\r\n"
    '<META HTTP-EQUIV="Content-Type" Content="text/html; charset=us-ascii"></HEAD>\r\n'
    "<BODY><h2>Bad Request - Invalid URL</h2>\r\n"
    "<hr><p>HTTP Error 400. The request URL is invalid.</p>\r\n</BODY></HTML>\r\n"
)
_IIS_QUERY_TOO_LONG = (
    '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" '
    '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\r\n'
    '<html xmlns="http://www.w3.org/1999/xhtml"><head>\r\n'
    "<title>IIS 10.0 Detailed Error - 404.15 - Not Found</title></head><body>\r\n"
    "<h3>HTTP Error 404.15 - Not Found</h3>\r\n"
    "<h4>The request filtering module is configured to deny a request where the query string "
    "is too long.</h4>\r\n</body></html>\r\n"
)


def iis_refusal(
    raw_path: str, raw_query: str, *, segment_chars: int | None, query_bytes: int | None
) -> web.Response | None:
    """IIS's answer to a URL over its limits, or None: a path segment longer than HTTP.sys's
    ``UrlSegmentMaxLength`` characters once decoded (a decoded ``%2F`` splits segments too) →
    400 «Invalid URL»; a query string longer than ``maxQueryString`` bytes → 404.15. Plain
    HTML, not ``odata.error``: 1C never sees these requests."""
    if segment_chars and any(len(part) > segment_chars for part in unquote(raw_path).split("/")):
        return web.Response(
            status=400,
            body=_HTTPSYS_INVALID_URL.encode("ascii"),
            headers={
                "Content-Type": "text/html; charset=us-ascii",
                "Server": "Microsoft-HTTPAPI/2.0",
            },
        )
    if query_bytes and len(raw_query.encode("utf-8")) > query_bytes:
        return web.Response(
            status=404,
            body=_IIS_QUERY_TOO_LONG.encode("utf-8"),
            headers={"Content-Type": "text/html", "Server": "Microsoft-IIS/10.0"},
        )
    return None


def drop_connection(request: web.Request) -> web.HTTPException:
    """Close the connection without an answer; the caller raises what this returns."""
    if request.transport is not None:
        request.transport.close()
    return web.HTTPInternalServerError()
