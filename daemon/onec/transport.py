"""HTTP to the 1C publication: one session, exact URLs, bounded concurrency, retries, errors.

* URLs are built by ``daemon.onec.odata`` and handed to aiohttp as ``yarl.URL(…, encoded=True)``
  so nothing is re-encoded: what ``relative_url`` returns is what goes on the wire, and what is
  measured against both IIS limits (``limits``) before it is sent.
* At most ``max_concurrency`` requests are in flight (``Slots`` around each exchange). When all
  are busy, requests that open more work (lookups, counts, first pages) go first, then the
  follow-up pages of reads that have work left once their pages are in (``ahead``), then the
  other pages: a count asked for never waits behind another read's twenty pages.
* Only idempotent GETs are retried (``read_attempts`` tries, jittered exponential backoff);
  writes are sent once. A write whose answer is lost (timeout, dropped connection, a 5xx without
  ``odata.error``) raises ``OutcomeUnknownError``: it may have been applied.
* HTTP failures become ``daemon.errors`` classes here and nowhere else: 401/403/404/400, a 500
  *with* ``odata.error`` (a refusal by 1C itself: posting check, handler) are permanent;
  timeouts, connection errors, 429, 502/503/504 and a 500 without ``odata.error`` (a cold or
  crashed worker) are transient. A *read* answered 500 with the generic code -1 («Произошла
  внутренняя ошибка OData сервиса», also what 1C says while it restarts or hits a lock) is
  transient too: a GET has no side effect. A write answered so stays permanent: it is never
  sent blind again (the outbox decides about writes). IIS's own refusals of a URL too long
  (HTTP.sys 400 «Invalid URL», request filtering 404.15) name the setting that keeps URLs short.
* The password lives only in the prepared ``Authorization`` header, never in a message or log.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import unquote

import aiohttp
import structlog
import yarl
from pydantic import SecretStr

from daemon.errors import (
    ConnectorError,
    OutcomeUnknownError,
    PermanentError,
    TransientError,
)
from daemon.gcpause import collector_paused
from daemon.onec import odata
from daemon.onec.answers import MALFORMED, SYSTEM
from daemon.onec.settings import OneCSettings
from daemon.onec.slots import Slots

log = structlog.get_logger(__name__)

R = TypeVar("R")

_TRANSIENT_STATUS = {429, 502, 503, 504}
# 1C's generic internal error: for a read, a blip (restart, lock), not a refusal.
GENERIC_ERROR_CODE = "-1"
# Slot priorities (lowest first; see the module docstring).
OPENING, AHEAD, FOLLOW_UP = 0, 1, 2


class ODataTransport:
    """Owns the one ``aiohttp.ClientSession`` of the 1C connector."""

    def __init__(self, settings: OneCSettings, password: SecretStr | None) -> None:
        self._settings = settings
        base = str(yarl.URL(str(settings.base_url)))
        self.base = base if base.endswith("/") else base + "/"
        secret = password.get_secret_value() if password is not None else ""
        self._headers = {
            "Authorization": aiohttp.encode_basic_auth(settings.username, secret, "utf-8"),
            "Accept": "application/json",
        }
        self.limits = odata.UrlLimits(settings.max_url_bytes, settings.max_path_segment_chars)
        self._slots = Slots(settings.max_concurrency)
        self._session: aiohttp.ClientSession | None = None
        self._rng = random.Random()
        self.request_count = 0

    def __repr__(self) -> str:
        return f"ODataTransport(base={self.base!r}, user={self._settings.username!r})"

    @property
    def page_size(self) -> int:
        return self._settings.page_size

    async def open(self) -> None:
        timeout = aiohttp.ClientTimeout(
            total=self._settings.request_timeout_s + self._settings.connect_timeout_s,
            connect=self._settings.connect_timeout_s,
            sock_read=self._settings.request_timeout_s,
        )
        connector = aiohttp.TCPConnector(limit=self._settings.max_concurrency)
        self._session = aiohttp.ClientSession(
            timeout=timeout, connector=connector, headers=self._headers
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, path: str, params: Sequence[tuple[str, str]] = ()) -> str:
        """The encoded relative URL, refused if it breaks one of the ``limits``."""
        return self.checked(odata.relative_url(path, params))

    def checked(self, relative: str) -> str:
        """An encoded relative URL, refused if it breaks one of the ``limits``."""
        problem = self.limits.excess(relative)
        if problem is not None:
            target = unquote(relative.split("?")[0].split("(")[0])
            raise PermanentError(
                f"request to {target} would have {problem}",
                system=SYSTEM,
                code="url_length",
            )
        return relative

    # -- reads -----------------------------------------------------------------------------

    async def get(
        self, relative: str, *, what: str, priority: int = OPENING, accept: str | None = None
    ) -> bytes:
        """GET with retries; returns the body of a 2xx answer. ``accept`` replaces the JSON
        ``Accept`` header (``$metadata`` is XML only)."""
        attempts = self._settings.read_attempts
        for attempt in range(1, attempts + 1):
            try:
                _, body, _ = await self._exchange(
                    "GET", relative, None, what=what, unsafe=False, priority=priority, accept=accept
                )
                # Let the request waiting for the slot just freed go out before this answer is
                # parsed: parsing is CPU work, and the next request's round trip can run under it.
                await asyncio.sleep(0)
                return body
            except TransientError as exc:
                if attempt == attempts:
                    raise
                delay = min(
                    self._settings.retry_cap_s, self._settings.retry_base_s * 2 ** (attempt - 1)
                ) * self._rng.uniform(0.5, 1.0)
                log.warning(
                    "onec_read_retry",
                    what=what,
                    attempt=attempt,
                    delay_s=round(delay, 3),
                    error=exc.describe(),
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")

    async def get_json(self, relative: str, *, what: str) -> Any:
        return _parse(await self.get(relative, what=what), what)

    async def get_rows(
        self,
        relative: str,
        *,
        what: str,
        convert: Callable[[list[Any]], R],
        most: int | None = None,
        priority: int = OPENING,
    ) -> tuple[int, R]:
        """(rows 1C sent, ``convert(rows)``) of a collection answer of at most ``most`` rows.

        Parsed and converted with the cyclic garbage collector paused: the rows are thousands
        of dicts that reference counting frees as soon as they are converted. Left to the
        collector, they are walked while they live and moved toward the old generation,
        which then triggers full collections over the whole heap (25 ms each with 20,000
        items, several per run)."""
        body = await self.get(relative, what=what, priority=priority)
        with collector_paused():
            rows = rows_of(_parse(body, what), what)
            del body
            if most is not None and len(rows) > most:
                raise PermanentError(
                    f"1C answered {what} with {len(rows)} rows, more than the $top={most} "
                    "asked for",
                    system=SYSTEM,
                    code=MALFORMED,
                )
            return len(rows), convert(rows)

    async def count(self, set_name: str, where: str, *, what: str) -> int:
        """``<Set>/$count`` (a bare number; ``$inlinecount`` is not combined with paging)."""
        filters = [("$filter", where)] if where else []
        relative = self.url(f"{set_name}/$count", [("$format", "json"), *filters])
        text = (await self.get(relative, what=f"{what} (count)")).decode("utf-8", "replace")
        text = text.strip().strip('"')
        # ASCII digits only ("²".isdigit() is true), and short enough for int() to take.
        if not (text.isascii() and text.isdigit() and len(text) <= 18):
            raise PermanentError(
                f"1C answered {what} (count) with {text[:40]!r}, not a row count",
                system=SYSTEM,
                code=MALFORMED,
            )
        return int(text)

    # -- writes ----------------------------------------------------------------------------

    async def send(
        self, method: str, relative: str, payload: Any, *, what: str
    ) -> tuple[int, bytes, str | None]:
        """A write, sent once. Returns (status, body, Location header) of a 2xx answer."""
        body = None if payload is None else odata.dumps(payload)
        return await self._exchange(method, relative, body, what=what, unsafe=True)

    # -- one exchange ----------------------------------------------------------------------

    async def _exchange(
        self,
        method: str,
        relative: str,
        body: bytes | None,
        *,
        what: str,
        unsafe: bool,
        priority: int = OPENING,
        accept: str | None = None,
    ) -> tuple[int, bytes, str | None]:
        if self._session is None:
            raise RuntimeError("the 1C connector is not open (use 'async with')")
        url = yarl.URL(self.base + relative, encoded=True)
        headers: dict[str, str] = {}
        if body is not None:
            headers["Content-Type"] = "application/json; charset=utf-8"
        if accept is not None:
            headers["Accept"] = accept
        started = time.monotonic()
        async with self._slots.held(priority):
            self.request_count += 1
            try:
                async with self._session.request(
                    method, url, data=body, headers=headers or None
                ) as resp:
                    content = await resp.read()
                    status = resp.status
                    location = resp.headers.get("Location")
            except aiohttp.ClientConnectorError as exc:
                # Never reached the server: nothing can have been applied.
                raise TransientError(
                    f"cannot connect to 1C for {what}: {exc.os_error}", system=SYSTEM
                ) from exc
            except (TimeoutError, aiohttp.ClientError) as exc:
                kind = "timed out" if isinstance(exc, TimeoutError) else "lost the connection"
                cls = OutcomeUnknownError if unsafe else TransientError
                raise cls(f"1C {kind} during {what}", system=SYSTEM) from exc
        log.debug(
            "onec_request",
            what=what,
            method=method,
            status=status,
            elapsed_s=since(started),
        )
        if 200 <= status < 300:
            return status, content, location
        raise classify(status, content, what=what, unsafe=unsafe, user=self._settings.username)


def classify(status: int, body: bytes, *, what: str, unsafe: bool, user: str) -> ConnectorError:
    """The ``daemon.errors`` class for a non-2xx answer."""
    code, message = odata.parse_error(body)
    cls: type[ConnectorError] = PermanentError
    if status == 401:
        text = f"1C rejected the credentials of user {user!r}"
    elif status == 403:
        text = f"1C user {user!r} has no rights for {what}"
    elif status in _TRANSIENT_STATUS or (status >= 500 and code is None):
        cls = OutcomeUnknownError if unsafe else TransientError
        text = f"1C answered {what} with HTTP {status}"
    elif status == 500 and code == GENERIC_ERROR_CODE and not unsafe:
        cls = TransientError
        text = f"1C answered {what} with its internal error (HTTP 500, code -1)"
    elif code is None and status == 400 and b"Invalid URL" in body[:2000]:
        text = (
            f"the web server refused the URL of {what} (HTTP.sys «Invalid URL»: is a path "
            "segment longer than its UrlSegmentMaxLength? lower onec.max_path_segment_chars)"
        )
    elif code is None and status == 404 and b"404.15" in body[:4000]:
        text = (
            f"the web server refused the URL of {what} (IIS 404.15: the query string is longer "
            "than its maxQueryString; lower onec.max_url_bytes)"
        )
    elif status == 404 and code == "9":
        text = f"{what}: no such object in 1C"
    elif status >= 500:
        text = f"1C refused {what}"
    else:
        text = f"1C rejected {what}"
    return cls(text, system=SYSTEM, status=status, code=code, remote_message=message)


@asynccontextmanager
async def task_group() -> AsyncIterator[asyncio.TaskGroup]:
    """``asyncio.TaskGroup`` that fails with the error itself, not an ExceptionGroup.

    When tasks fail, the others are cancelled (as usual) and one failure is raised — a
    ``PermanentError`` in preference to a transient one — so callers keep seeing the
    ``daemon.errors`` classes. Cancellation of the caller passes through untouched."""
    try:
        async with asyncio.TaskGroup() as group:
            yield group
    except BaseExceptionGroup as failed:
        leaves = list(_leaves(failed))
        raise next(
            (e for e in leaves if isinstance(e, PermanentError)),
            next((e for e in leaves if isinstance(e, ConnectorError)), leaves[0]),
        ) from None


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


def _parse(body: bytes, what: str) -> Any:
    try:
        return odata.loads(body)
    except (ValueError, RecursionError) as exc:
        raise PermanentError(
            f"1C answered {what} with something that is not JSON", system=SYSTEM, code=MALFORMED
        ) from exc


def since(started: float) -> float:
    """Seconds since ``started`` (``time.monotonic()``), rounded for a log line."""
    return round(time.monotonic() - started, 3)


def rows_of(answer: Any, what: str) -> list[Any]:
    """The ``value`` list of a collection answer."""
    value = answer.get("value") if isinstance(answer, dict) else None
    if not isinstance(value, list):
        raise PermanentError(
            f"1C answered {what} without a 'value' list", system=SYSTEM, code=MALFORMED
        )
    return value
