"""HTTP to МойСклад: headers, auth, sessions, pacing, retries and error translation.

Everything protocol-level lives here so that ``connector.py`` only speaks entities:

- every request carries ``Accept-Encoding: gzip`` (without it the API answers 415 with no body)
  and ``Accept: application/json;charset=utf-8``; ``Content-Type`` only with a body;
- credentials are a Bearer token or Basic ``user@account:password``; ``/security/token`` is
  never called (it would revoke the user's other tokens);
- connections are kept alive but never reused after ``keepalive_s`` idle (the provider warns
  about 30 s) nor for more than ``max_requests_per_connection`` requests: aiohttp has no
  per-connection request cap, so the session (and its connection pool) is replaced after that
  many requests and the old one is closed once its last request finishes;
- the rate limiter and the circuit breaker are consulted around every request; 429s are
  waited out and retried (they do not count toward the breaker: a 429 is the pace, not a
  broken remote; the limiter keeps their number far from the provider's cut-off); idempotent
  reads are retried a few times on transient failures; POSTs are never retried here (the
  outbox resends them with the same ``syncId``).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import random
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import structlog
from multidict import CIMultiDictProxy
from pydantic import SecretStr
from yarl import URL

import daemon
from daemon.errors import (
    ConfigError,
    ConnectorError,
    OutcomeUnknownError,
    TransientError,
)
from daemon.gcpause import collector_paused
from daemon.moysklad.circuit import CircuitBreaker
from daemon.moysklad.failures import (
    SYSTEM,
    error_for_status,
    first_code,
    parse_errors,
    signature,
)
from daemon.moysklad.ratelimit import RateLimiter
from daemon.moysklad.settings import MoySkladSettings

log = structlog.get_logger(__name__)

ACCEPT = "application/json;charset=utf-8"
HEAVY_REPORTS = ("report/stock/all", "report/stock/bystore")
BACKOFF_CAP_S = 30.0

QueryValue = str | int
Query = dict[str, QueryValue]


def authorization(
    settings: MoySkladSettings, token: SecretStr | None, password: SecretStr | None
) -> str:
    """The Authorization header value; a missing secret is a configuration error."""
    if settings.auth == "token":
        if token is None or not token.get_secret_value():
            raise ConfigError(
                "HUB_MOYSKLAD_TOKEN",
                "",
                "a МойСклад access token (environment variable or systemd credential "
                "'moysklad_token') is required when moysklad.auth = 'token'",
            )
        return f"Bearer {token.get_secret_value()}"
    if password is None or not password.get_secret_value():
        raise ConfigError(
            "HUB_MOYSKLAD_PASSWORD",
            "",
            "a МойСклад password (environment variable or systemd credential "
            "'moysklad_password') is required when moysklad.auth = 'password'",
        )
    pair = f"{settings.login}:{password.get_secret_value()}".encode()
    return f"Basic {base64.b64encode(pair).decode('ascii')}"


@dataclass
class _Generation:
    """One ClientSession and the requests it has carried."""

    session: aiohttp.ClientSession
    issued: int = 0
    active: int = 0
    retired: bool = False


@dataclass
class _Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    code: int | None = field(default=None)


class MoySkladTransport:
    """Owns the HTTP session(s), the rate limiter and the circuit breaker."""

    def __init__(
        self, settings: MoySkladSettings, token: SecretStr | None, password: SecretStr | None
    ) -> None:
        self._settings = settings
        self._authorization = authorization(settings, token, password)
        self._base = URL(str(settings.base_url))
        if not self._base.path.endswith("/"):
            self._base = self._base.with_path(self._base.path + "/")
        self.limiter = RateLimiter(
            capacity=settings.bucket_units,
            interval_s=settings.bucket_interval_ms / 1000,
            max_in_flight=settings.max_in_flight,
            request_weight=settings.request_weight,
        )
        self.circuit = CircuitBreaker(
            threshold=settings.circuit_threshold,
            window_s=settings.circuit_window_s,
            open_s=settings.circuit_open_s,
        )
        self._current: _Generation | None = None
        self._retired: list[_Generation] = []
        self._closed = False
        self.requests_sent = 0
        self.sessions_opened = 0

    @property
    def base_url(self) -> URL:
        return self._base

    # -- sessions ----------------------------------------------------------------------------

    def _new_generation(self) -> _Generation:
        settings = self._settings
        connector = aiohttp.TCPConnector(
            limit=settings.max_in_flight, keepalive_timeout=settings.keepalive_s
        )
        session = aiohttp.ClientSession(
            connector=connector,
            # bodies are gunzipped here, not by aiohttp: its gzip reader accepts a stream cut
            # before the CRC trailer, and a cut answer must never pass for a whole one
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(
                total=settings.request_timeout_s, sock_connect=settings.connect_timeout_s
            ),
            headers={
                "Authorization": self._authorization,
                "Accept-Encoding": "gzip",
                "Accept": ACCEPT,
                "User-Agent": f"bisnesmedia-hub/{daemon.__version__}",
            },
        )
        self.sessions_opened += 1
        return _Generation(session)

    def _checkout(self) -> _Generation:
        if self._closed:
            raise RuntimeError("the МойСклад transport is closed")
        current = self._current
        if current is None or current.issued >= self._settings.max_requests_per_connection:
            if current is not None:
                current.retired = True
                self._retired.append(current)
            current = self._current = self._new_generation()
        current.issued += 1
        current.active += 1
        return current

    async def _checkin(self, generation: _Generation) -> None:
        generation.active -= 1
        if generation.retired and generation.active == 0:
            self._retired.remove(generation)
            await generation.session.close()

    async def close(self) -> None:
        self._closed = True
        generations = [*self._retired, *([self._current] if self._current else [])]
        self._current = None
        self._retired = []
        for generation in generations:
            await generation.session.close()

    # -- requests ----------------------------------------------------------------------------

    def _weight(self, path: str) -> int:
        if path.startswith(HEAVY_REPORTS) and "/current" not in path:
            return self._settings.report_weight
        return self._settings.request_weight

    async def get(
        self, path: str, params: Query | None = None, *, convert: Callable[[Any], Any] | None = None
    ) -> Any:
        """GET; ``convert``, if given, turns the decoded document into what the caller keeps,
        with the garbage collector still paused from decoding (see ``_decode``)."""
        return await self.request("GET", path, params=params, convert=convert)

    async def post(self, path: str, body: Any, params: Query | None = None) -> Any:
        return await self.request("POST", path, params=params, body=body)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Query | None = None,
        body: Any = None,
        convert: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Send ``method base_url+path`` and return the decoded JSON document."""
        settings = self._settings
        url = self._base.join(URL(path))
        if params:
            url = url.with_query({key: str(value) for key, value in params.items()})
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
        weight = self._weight(path)
        read_failures = 0
        throttled = 0
        for _ in range(settings.max_429_retries + settings.read_retries + 2):
            probe = self.circuit.before_call()
            settled = False
            try:
                try:
                    answer = await self._send_once(method, url, data, weight)
                except ConnectorError as exc:
                    settled = True
                    self.circuit.record_failure(
                        signature(method, path, None, None, type(exc.__cause__).__name__), probe
                    )
                    if isinstance(exc, OutcomeUnknownError) or read_failures >= (
                        settings.read_retries if method == "GET" else 0
                    ):
                        raise
                    read_failures += 1
                    await self._backoff(read_failures, method, path, exc)
                    continue
                settled = True
                if 200 <= answer.status < 300:
                    self.circuit.record_success(probe)
                    return _decode(method, path, answer, convert)
                if answer.status == 429 and throttled < settings.max_429_retries:
                    # A rate limit is not a failure of the remote: the limiter is already
                    # paused for the server's Retry-After and has slowed its pace, so this
                    # is waited out without counting toward the breaker.
                    throttled += 1
                    self.circuit.release_probe(probe)
                    continue
                self.circuit.record_failure(
                    signature(method, path, answer.status, answer.code, "http"), probe
                )
                error = error_for_status(method, path, answer.status, answer.body)
                retryable = type(error) is TransientError and answer.status != 429
                if method == "GET" and retryable and read_failures < settings.read_retries:
                    read_failures += 1
                    await self._backoff(read_failures, method, path, error)
                    continue
                raise error
            finally:
                if not settled:
                    self.circuit.release_probe(probe)
        raise TransientError(f"{method} {path}: gave up after repeated failures", system=SYSTEM)

    async def _backoff(self, attempt: int, method: str, path: str, exc: ConnectorError) -> None:
        delay = min(BACKOFF_CAP_S, self._settings.retry_base_s * 2 ** (attempt - 1))
        delay *= random.uniform(0.5, 1.5)
        log.warning(
            "moysklad_request_retry",
            method=method,
            path=path,
            attempt=attempt,
            delay_s=round(delay, 2),
            error=exc.describe(),
        )
        await asyncio.sleep(delay)

    async def _send_once(self, method: str, url: URL, data: bytes | None, weight: int) -> _Answer:
        headers = {"Content-Type": "application/json;charset=utf-8"} if data is not None else {}
        async with self.limiter.slot(weight) as permit:
            generation = self._checkout()
            try:
                self.requests_sent += 1
                async with generation.session.request(
                    method, url, data=data, headers=headers, allow_redirects=False
                ) as response:
                    body = _gunzip(method, url, response.headers, await response.read())
                    answer = _Answer(response.status, response.headers, body)
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise _transport_error(method, url, exc) from exc
            finally:
                await self._checkin(generation)
            if answer.status >= 400:
                answer.code = first_code(parse_errors(answer.body))
            await self.limiter.observe(permit, answer.status, answer.headers, answer.code)
            return answer


def _gunzip(method: str, url: URL, headers: Mapping[str, str], body: bytes) -> bytes:
    """The body as sent, gunzipped when it says so (МойСклад may also answer uncompressed).
    A gzip stream that is cut or corrupt (CRC, length) is a failed request, not an answer."""
    if "gzip" not in headers.get("Content-Encoding", "").lower():
        return body
    try:
        return gzip.decompress(body)
    except (EOFError, OSError, zlib.error) as exc:
        what = f"{method} {url.path}: the gzip answer is cut or corrupt ({exc})"
        if method == "GET":
            raise TransientError(what, system=SYSTEM) from exc
        raise OutcomeUnknownError(
            what + " (the request may have been applied)", system=SYSTEM
        ) from exc


def _transport_error(method: str, url: URL, exc: BaseException) -> ConnectorError:
    path = url.path
    if isinstance(exc, aiohttp.ClientConnectorError):
        # The connection was never established, so nothing reached the server.
        return TransientError(f"{method} {path}: cannot connect: {exc}", system=SYSTEM)
    if isinstance(exc, TimeoutError):
        what = f"{method} {path}: no answer within the timeout"
    else:
        what = f"{method} {path}: connection failed: {type(exc).__name__}: {exc}"
    if method == "GET":
        return TransientError(what, system=SYSTEM)
    return OutcomeUnknownError(what + " (the request may have been applied)", system=SYSTEM)


# 19 digits in a row may be an integer outside 64 bits, which orjson would read as a float.
# Spotted by mapping every digit to "1" and looking for 19 of them: ten times faster than a
# regular expression over a 2 MB page.
_DIGITS_AS_ONES = bytes(0x31 if 0x30 <= byte <= 0x39 else 0x30 for byte in range(256))
_LONG_NUMBER = b"1" * 19


def _loads(body: bytes) -> Any:
    """The JSON of an answer, exactly as ``json`` reads it, but fast.

    20 pages of 1000 products take a third of a second of the hub's CPU with ``json`` alone.
    orjson reads the same values for any document it accepts, except integers beyond 64 bits
    (floats to orjson): a body with a run of 19 digits anywhere goes to ``json``, as does one
    orjson refuses but ``json`` reads (``NaN``, ``Infinity``, a lone surrogate), so the rows
    carrying such values are still judged one by one."""
    if _LONG_NUMBER not in body.translate(_DIGITS_AS_ONES):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    return json.loads(body.decode("utf-8"))


def _decode(
    method: str, path: str, answer: _Answer, convert: Callable[[Any], Any] | None = None
) -> Any:
    """The JSON of a 2xx answer. Every call the hub makes expects a JSON document back, so an
    empty body is as unusable as garbage: a ``TransientError`` for a read, and for a write an
    ``OutcomeUnknownError`` (the server said 2xx, so the document may exist)."""
    kind = TransientError if method == "GET" else OutcomeUnknownError
    if not answer.body:
        raise kind(
            f"{method} {path}: HTTP {answer.status} with an empty body instead of JSON",
            system=SYSTEM,
            status=answer.status,
        )
    # A page of 1000 products is tens of thousands of objects that live only until
    # ``convert`` has kept what matters: the collector would walk them for nothing.
    with collector_paused():
        try:
            document = _loads(answer.body)
        except (ValueError, RecursionError) as exc:
            message = f"{method} {path}: HTTP {answer.status} with a body that is not JSON"
            raise kind(message, system=SYSTEM, status=answer.status) from exc
        return document if convert is None else convert(document)
