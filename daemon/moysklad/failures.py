"""Turning МойСклад error answers and transport failures into ``daemon.errors``.

The API answers errors as ``{"errors": [{"error", "code", "parameter"?, "moreInfo"}]}``. The
split that matters to the rest of the hub: 429, 5xx, timeouts and dropped connections are
transient; every other 4xx is permanent and is never retried (the provider cuts off users
that repeat failing requests). A POST that may have reached the server before the connection
died is ``OutcomeUnknownError``: the outbox resends it with the same ``syncId``, which is safe.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from daemon.errors import ConnectorError, OutcomeUnknownError, PermanentError, TransientError

SYSTEM = "moysklad"


@dataclass(frozen=True, slots=True)
class RemoteError:
    """One entry of an ``errors`` array."""

    message: str
    code: int | None
    parameter: str | None = None


def parse_errors(body: bytes) -> list[RemoteError]:
    """The ``errors`` entries of a body; empty when the body is not an API error document."""
    if not body:
        return []
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return []
    entries = document.get("errors") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        return []
    found = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        code = entry.get("code")
        parameter = entry.get("parameter")
        found.append(
            RemoteError(
                message=str(entry.get("error") or entry.get("error_message") or ""),
                code=code if isinstance(code, int) else None,
                parameter=parameter if isinstance(parameter, str) else None,
            )
        )
    return found


def first_code(errors: list[RemoteError]) -> int | None:
    return next((error.code for error in errors if error.code is not None), None)


def remote_text(errors: list[RemoteError]) -> str | None:
    texts = []
    for error in errors:
        text = error.message
        if error.parameter and error.parameter not in text:
            text = f"{text} (parameter {error.parameter})"
        if text:
            texts.append(text)
    return "; ".join(texts) or None


def error_for_status(method: str, path: str, status: int, body: bytes) -> ConnectorError:
    """The exception for a non-2xx answer to ``method path``."""
    errors = parse_errors(body)
    code = first_code(errors)
    text = remote_text(errors)
    what = f"{method} {path} answered HTTP {status}"
    if code is not None:
        what += f" code {code}"
    if text:
        what += f": {text}"
    kind: type[ConnectorError] = PermanentError
    if status == 429:
        kind = TransientError
    elif status >= 500:
        # A 5xx to a POST may come after the order was committed (a proxy timing out, a crash
        # after the write), so the outbox must look it up before sending again.
        kind = OutcomeUnknownError if method == "POST" else TransientError
    elif status == 415 and not body:
        what += " (no body: the request lacked Accept-Encoding: gzip)"
    return kind(
        what,
        system=SYSTEM,
        status=status,
        code=None if code is None else str(code),
        remote_message=text,
    )


def signature(method: str, path: str, status: int | None, code: int | None, kind: str) -> str:
    """What makes two failures "identical" for the circuit breaker."""
    parts = [method, path, kind]
    if status is not None:
        parts.append(str(status))
    if code is not None:
        parts.append(str(code))
    return " ".join(parts)
