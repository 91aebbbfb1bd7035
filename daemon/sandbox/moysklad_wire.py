"""Wire format of the МойСклад emulator: error bodies, JSON/gzip responses, meta objects, ids.

Every answer is ``application/json;charset=utf-8``, gzip-compressed unless the sandbox is told
to skip compression now and then (the API documents that it may). Errors always have the
``{"errors": [{"error", "code", "parameter"?, "moreInfo"}]}`` shape.
"""

from __future__ import annotations

import gzip
import json
import random
import string
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from aiohttp import web

JSON_TYPE = "application/json;charset=utf-8"
MEDIA_TYPE = "application/json"
PREFIX = "/api/remap/1.2/"
MORE_INFO = "https://dev.moysklad.ru/doc/api/remap/1.2/#error_{code}"
MSK = timezone(timedelta(hours=3))
EXTERNAL_CODE_CHARS = string.ascii_letters + string.digits + "-_"


class ApiError(Exception):
    """An error the emulator answers with ``{"errors": [...]}``."""

    def __init__(
        self, status: int, code: int, message: str, *, parameter: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.parameter = parameter

    def entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"error": self.message, "code": self.code}
        if self.parameter is not None:
            entry["parameter"] = self.parameter
        entry["moreInfo"] = MORE_INFO.format(code=self.code)
        return entry


def errors_body(errors: list[ApiError]) -> dict[str, Any]:
    return {"errors": [error.entry() for error in errors]}


def encode(payload: Any, *, compress: bool) -> tuple[bytes, dict[str, str]]:
    """The body bytes and the content headers for a JSON payload."""
    raw = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    headers = {"Content-Type": JSON_TYPE, "Vary": "Accept-Encoding", "Cache-Control": "no-cache"}
    if compress:
        headers["Content-Encoding"] = "gzip"
        return gzip.compress(raw, compresslevel=1), headers
    return raw, headers


def json_response(
    payload: Any, *, status: int, compress: bool, extra: Mapping[str, str]
) -> web.Response:
    body, headers = encode(payload, compress=compress)
    headers.update(extra)
    return web.Response(status=status, body=body, headers=headers)


def now_msk() -> datetime:
    return datetime.now(MSK).replace(tzinfo=None)


def timestamp(moment: datetime) -> str:
    """ "YYYY-MM-DD HH:MM:SS.mmm", the API's date-time form."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def minute_timestamp(moment: datetime) -> str:
    """``moment``-style fields are stored to the minute."""
    return timestamp(moment.replace(second=0, microsecond=0))


class Ids:
    """Time-based ids and random external codes from a seeded generator."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def new_id(self) -> str:
        return str(uuid.uuid1(node=self._random.getrandbits(48), clock_seq=None))

    def external_code(self) -> str:
        return "".join(self._random.choice(EXTERNAL_CODE_CHARS) for _ in range(22))

    def token(self) -> str:
        return f"{self._random.getrandbits(160):040x}"

    def chance(self, rate: float) -> bool:
        return rate > 0 and self._random.random() < rate

    def choice(self, options: list[int]) -> int:
        return self._random.choice(options)


def meta(base: str, kind: str, entity_id: str, *, path: str | None = None) -> dict[str, Any]:
    """The full meta of an entity as the API renders it."""
    where = path or f"entity/{kind}"
    return {
        "href": f"{base}{where}/{entity_id}",
        "metadataHref": f"{base}{where}/metadata",
        "type": kind,
        "mediaType": MEDIA_TYPE,
        "uuidHref": f"{base.split(PREFIX)[0]}/app/#{kind}/edit?id={entity_id}",
    }


def reference(base: str, kind: str, entity_id: str) -> dict[str, Any]:
    return {"meta": meta(base, kind, entity_id)}
