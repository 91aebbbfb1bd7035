"""Connecting to hubd and turning gRPC failures into one line and a documented exit status."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from protos.hub.v1 import control_pb2_grpc

EXIT_OK = 0
EXIT_FAILED = 1  # the thing asked about failed (run failed, not found, check failed, ...)
EXIT_USAGE = 2  # bad arguments
EXIT_UNREACHABLE = 69  # EX_UNAVAILABLE: the daemon cannot be reached

CONNECT_TIMEOUT_S = 3.0
# A run's plan can be large (tens of MB for 100,000 items); accept answers up to 512 MiB.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 512 * 1024 * 1024)]


def default_socket() -> str:
    explicit = os.environ.get("HUBCTL_SOCKET")
    if explicit:
        return explicit
    system = Path("/run/hubd/hubd.sock")
    if system.exists():
        return str(system)
    return str(Path("state") / "hubd.sock")


class CommandError(Exception):
    """Ends hubctl with ``message`` on stderr and ``exit_status``."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status


@dataclass
class Target:
    socket: str
    tcp: str = ""
    ca_cert: str = ""

    @property
    def description(self) -> str:
        return self.tcp or self.socket


def open_channel(target: Target) -> grpc.Channel:
    if target.tcp:
        token = os.environ.get("HUB_GRPC_TOKEN", "")
        if not token:
            raise CommandError("--tcp needs the bearer token in $HUB_GRPC_TOKEN", EXIT_USAGE)
        root = Path(target.ca_cert).read_bytes() if target.ca_cert else None
        creds = grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(root_certificates=root),
            grpc.access_token_call_credentials(token),
        )
        channel = grpc.secure_channel(target.tcp, creds, options=CHANNEL_OPTIONS)
    else:
        channel = grpc.insecure_channel(f"unix:{target.socket}", options=CHANNEL_OPTIONS)
    try:
        grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT_S)
    except grpc.FutureTimeoutError:
        channel.close()
        raise CommandError(
            f"cannot reach hubd at {target.description}: is it running?", EXIT_UNREACHABLE
        ) from None
    return channel


def stub(channel: grpc.Channel) -> control_pb2_grpc.HubControlStub:
    return control_pb2_grpc.HubControlStub(channel)


_FAILED = {
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def translate(exc: grpc.RpcError, target: Target) -> CommandError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return CommandError(f"hubd refused the request: {details}", EXIT_USAGE)
    if code == grpc.StatusCode.UNAVAILABLE:
        if details and "connect" not in details.lower() and "socket" not in details.lower():
            return CommandError(f"hubd is unavailable: {details}", EXIT_UNREACHABLE)
        return CommandError(
            f"cannot reach hubd at {target.description}: is it running?", EXIT_UNREACHABLE
        )
    if code == grpc.StatusCode.CANCELLED:
        return CommandError("hubd ended the stream (it is shutting down)", EXIT_UNREACHABLE)
    if code in _FAILED:
        return CommandError(details or code.name.lower(), EXIT_FAILED)
    return CommandError(f"{code.name.lower()}: {details}", EXIT_FAILED)
