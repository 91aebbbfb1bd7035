"""A hostile control-API caller: raw request bytes on a real channel, and the daemon's RSS."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

SERVICE = "/bisnesmedia.hub.v1.HubControl/"
#: Enough for the old 4 MiB default to accept it; the issue's requests were 3.9–4.1 MB.
LARGE = 4_000_000


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def unix_channel(socket_path: Path) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"unix:{socket_path}")


async def raw_unary(
    channel: grpc.aio.Channel,
    method: str,
    body: bytes,
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> tuple[grpc.StatusCode, str]:
    """Send ``body`` as the request of ``method`` (bytes as they are), return the status."""
    path = method if method.startswith("/") else SERVICE + method
    call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
    try:
        await call(body, timeout=30, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def raw_stream(
    channel: grpc.aio.Channel, method: str, body: bytes
) -> tuple[grpc.StatusCode, str]:
    """The same for a server-streaming method: the status the stream ends with."""
    stream = channel.unary_stream(
        SERVICE + method, request_serializer=None, response_deserializer=None
    )
    call = stream(body, timeout=30)
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def flood(
    channel: grpc.aio.Channel,
    calls: list[tuple[str, bytes]],
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> set[grpc.StatusCode]:
    """All ``calls`` at once; the set of status codes they got."""
    results = await asyncio.gather(*(raw_unary(channel, m, b, metadata) for m, b in calls))
    return {code for code, _ in results}
