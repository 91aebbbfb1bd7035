"""The IIS in front of a 1C publication: what it answers before 1C sees a request."""

from __future__ import annotations

from urllib.parse import unquote

from aiohttp import web

# HTTP.sys's page, then request filtering's (IIS 10 detailed error, trimmed).
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
