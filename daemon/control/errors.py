"""The one place where hub errors become gRPC status codes with one clear sentence."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog
from google.protobuf.message import Message

from daemon.errors import (
    BadArgumentError,
    ConfigError,
    ConnectorError,
    DiskFullError,
    DrainingError,
    HubError,
    InvalidStateError,
    NotFoundError,
    RunFailedError,
    StoreError,
)

_log = structlog.get_logger(__name__)

#: How much of an input an error message may repeat, and how long the whole message may be.
ECHO_CHARS = 100
MAX_DETAILS_CHARS = 600


_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (BadArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (InvalidStateError, grpc.StatusCode.FAILED_PRECONDITION),
    (DrainingError, grpc.StatusCode.UNAVAILABLE),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    (RunFailedError, grpc.StatusCode.ABORTED),
    (ConnectorError, grpc.StatusCode.UNAVAILABLE),
    # gRPC's own words for RESOURCE_EXHAUSTED include "the entire file system is out of space"
    (DiskFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StoreError, grpc.StatusCode.INTERNAL),
]


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    for kind, code in _CODES:
        if isinstance(exc, kind):
            text = exc.describe() if isinstance(exc, ConnectorError) else str(exc)
            return code, text
    return grpc.StatusCode.INTERNAL, "internal error in hubd; see its log for details"


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Self = TypeVar("Self")


def clip_details(text: str, request: object = None) -> str:
    """``text`` with every long string of ``request`` it repeats cut to ``ECHO_CHARS``, and
    the whole cut to ``MAX_DETAILS_CHARS``: the details travel in a header, which a client
    refuses past 8 KiB (percent-encoded, a Cyrillic letter takes 6 bytes)."""
    if isinstance(request, Message):
        for _, value in request.ListFields():
            if isinstance(value, str) and len(value) > ECHO_CHARS:
                short = value[:ECHO_CHARS] + "…"
                text = text.replace(value, short)
                text = text.replace(repr(value)[1:-1], repr(short)[1:-1])
    if len(text) > MAX_DETAILS_CHARS:
        text = text[: MAX_DETAILS_CHARS - 1] + "…"
    return text


async def abort(
    context: grpc.aio.ServicerContext[Any, Any],
    rpc: str,
    exc: Exception,
    request: object = None,
) -> None:
    """End the call with the mapped status; unexpected errors are logged with their traceback
    here and reach the client only as one sentence, which never repeats a whole input."""
    if not isinstance(exc, HubError):
        _log.error("rpc_failed", rpc=rpc, exc_info=exc)
    code, text = status_for(exc)
    await context.abort(code, clip_details(text, request))


def unary(
    method: Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]],
) -> Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]:
    @functools.wraps(method)
    async def wrapper(
        self: Self, request: Req, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Resp:
        try:
            return await method(self, request, context)
        except Exception as exc:
            await abort(context, method.__name__, exc, request)
        raise AssertionError("unreachable: context.abort raises")

    return wrapper


def streaming(
    method: Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]],
) -> Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]]:
    @functools.wraps(method)
    async def wrapper(
        self: Self, request: Req, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Resp]:
        try:
            async for item in method(self, request, context):
                yield item
        except Exception as exc:
            await abort(context, method.__name__, exc, request)

    return wrapper
