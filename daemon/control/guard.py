"""What every control request passes before a handler runs: it decodes, and each string field
fits its limit.

A request is a few ids and names: ``FIELD_LIMITS`` gives each string field its longest value in
UTF-8 bytes, so a handler never holds a megabyte "id" and an error never repeats one. The table
is by field name across every request message of the control API (a test checks that each
string field of a ``HubControl`` request has its own entry); strings of the health and
reflection services get ``DEFAULT_FIELD_LIMIT``.

grpc.aio turns an exception raised by a request deserializer into ``UNKNOWN`` and logs a
traceback. ``RequestGuard`` wraps every handler's deserializer so that bytes which are not the
expected message become ``INVALID_ARGUMENT`` with one sentence, like any other bad argument.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import grpc
from google.protobuf.message import Message

from daemon.control.errors import abort
from daemon.errors import BadArgumentError

#: The longest value, in UTF-8 bytes, of each string field of a control request.
FIELD_LIMITS: Mapping[str, int] = {
    "job": 64,  # a job name: [a-z][a-z0-9_-]{0,63} (config.py)
    "run_id": 128,  # "YYYYMMDD-HHMMSS-<job>-xxxx": at most 85
    "state": 32,  # an outbox state name
    "level": 16,  # debug | info | warning | error
    "reason": 1024,  # an operator's sentence on why an outbox entry is discarded
}
#: Any other string field (health service names, reflection symbols and file names).
DEFAULT_FIELD_LIMIT = 256


def string_fields(message: Message, prefix: str = "") -> Iterator[tuple[str, str | bytes]]:
    """(dotted field name, value) of every string and bytes value set in ``message``."""
    for field, value in message.ListFields():
        name = f"{prefix}{field.name}"
        items = value if field.is_repeated else [value]
        if isinstance(items, Mapping):  # a map field: its keys and its values
            items = [*items.keys(), *items.values()]
        for item in items:
            if isinstance(item, str | bytes):
                yield name, item
            elif isinstance(item, Message):
                yield from string_fields(item, f"{name}.")


def field_limit(name: str) -> int:
    return FIELD_LIMITS.get(name.rpartition(".")[2], DEFAULT_FIELD_LIMIT)


def check_request(message: Message) -> None:
    """``BadArgumentError`` naming the first string field longer than its limit."""
    for name, value in string_fields(message):
        size = len(value.encode("utf-8")) if isinstance(value, str) else len(value)
        limit = field_limit(name)
        if size > limit:
            raise BadArgumentError(f"{name} is {size:,} bytes long; at most {limit} bytes")


class Undecodable:
    """Stands for request bytes that are not the expected message."""

    __slots__ = ("message_type",)

    def __init__(self, message_type: str) -> None:
        self.message_type = message_type


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    message_type = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    type_name = message_type.name if message_type is not None else "request"

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception:  # protobuf's DecodeError, or anything a parser raises on garbage
            return Undecodable(type_name)

    return decode


async def _admit(request: Any, context: grpc.aio.ServicerContext[Any, Any], rpc: str) -> Any:
    try:
        if isinstance(request, Undecodable):
            raise BadArgumentError(
                f"the request is not a valid {request.message_type} message (undecodable bytes)"
            )
        if isinstance(request, Message):
            check_request(request)
    except BadArgumentError as exc:
        await abort(context, rpc, exc, request)
    return request


def _guard_unary_request(behavior: Any, rpc: str) -> Any:
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            request = await _admit(request, context, rpc)
            async for item in behavior(request, context):
                yield item

        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await behavior(await _admit(request, context, rpc), context)

    return unary


def _guard_stream_request(behavior: Any, rpc: str) -> Any:
    def admitted(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        async def each() -> AsyncIterator[Any]:
            async for request in requests:
                yield await _admit(request, context, rpc)

        return each()

    if inspect.isasyncgenfunction(behavior):

        async def stream(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async for item in behavior(admitted(requests, context), context):
                yield item

        return stream

    async def unary(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await behavior(admitted(requests, context), context)

    return unary


class RequestGuard(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Every handler decodes its request tolerantly and admits it only within the limits."""

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        rpc = str(handler_call_details.method).rpartition("/")[2]
        changes: dict[str, Any] = {"request_deserializer": _tolerant(handler.request_deserializer)}
        for kind in ("unary_unary", "unary_stream"):
            if getattr(handler, kind) is not None:
                changes[kind] = _guard_unary_request(getattr(handler, kind), rpc)
        for kind in ("stream_unary", "stream_stream"):
            if getattr(handler, kind) is not None:
                changes[kind] = _guard_stream_request(getattr(handler, kind), rpc)
        return handler._replace(**changes)
