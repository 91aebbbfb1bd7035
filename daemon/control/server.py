"""The gRPC server: a Unix socket with owner/group-only permissions, health and reflection."""

from __future__ import annotations

import contextlib
import hmac
import os
import socket
import stat
from pathlib import Path
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from daemon.config import ControlSection
from daemon.control.guard import RequestGuard
from daemon.errors import ConfigError
from protos.hub.v1 import control_pb2, control_pb2_grpc

_log = structlog.get_logger(__name__)

# Answers may be large: GetRun sends a run's whole plan in one message, 6.8 MB for 20,000 items
# (benchmarks/bench_control_run_memory.py), so this allows plans of about 390,000 items. The
# request limit is control.max_message_bytes, kilobytes.
MAX_ANSWER_BYTES = 128 * 1024 * 1024

SERVICE_NAME = control_pb2.DESCRIPTOR.services_by_name["HubControl"].full_name


def _remove_stale_socket(path: Path) -> None:
    """A socket file left by a crashed daemon is removed; a live daemon's is not touched."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(str(path), "control.socket_path", "exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        _log.info("control_socket_stale_removed", path=str(path))
        return
    except OSError:
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise ConfigError(str(path), "control.socket_path", "another hubd is already listening there")


#: A bearer token shorter than this is refused at start: it must not be guessable.
MIN_TOKEN_BYTES = 32


def check_grpc_token(settings: ControlSection, token: str | None) -> None:
    """The TCP listener needs a bearer token of at least ``MIN_TOKEN_BYTES`` (a ConfigError
    naming the credential otherwise); the Unix socket needs none."""
    if not settings.tcp_listen:
        return
    if not token:
        raise ConfigError(
            "environment",
            "HUB_GRPC_TOKEN",
            "control.tcp_listen needs a bearer token (credential grpc_token)",
        )
    if len(token.encode("utf-8")) < MIN_TOKEN_BYTES:
        raise ConfigError(
            "environment",
            "HUB_GRPC_TOKEN",
            f"the bearer token (credential grpc_token) must be at least {MIN_TOKEN_BYTES} "
            "bytes; make one with `openssl rand -base64 48`",
        )


class _TokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Checks the bearer token on the TCP listener (the Unix socket relies on permissions).

    The check sees only the call's headers. A caller without the right token gets a handler
    that never reads the request: its message, however large, is not taken into memory."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        given = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization" and isinstance(value, str):
                given = value
        if hmac.compare_digest(given.encode("utf-8", "replace"), self._expected):
            return await continuation(handler_call_details)
        return grpc.stream_unary_rpc_method_handler(_deny)


async def _deny(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")


class ControlServer:
    """Owns the grpc.aio servers (Unix socket, optional TLS TCP) and the health service."""

    def __init__(
        self,
        servicer: control_pb2_grpc.HubControlServicer,
        settings: ControlSection,
        socket_path: Path,
        *,
        grpc_token: str | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        options = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", MAX_ANSWER_BYTES),
            ("grpc.so_reuseport", 0),
            # Without probing, each call's and each connection's receive window stays at
            # HTTP/2's 64 KiB: a caller, even one without the token, cannot make hubd buffer
            # megabytes it will refuse. Requests are kilobytes; answers use the client's window.
            ("grpc.http2.bdp_probe", 0),
        ]
        limit = settings.max_concurrent_rpcs
        self._servers: list[grpc.aio.Server] = []
        self._unix = grpc.aio.server(
            options=options, interceptors=[RequestGuard()], maximum_concurrent_rpcs=limit
        )
        self._servers.append(self._unix)
        self._tcp: grpc.aio.Server | None = None
        check_grpc_token(settings, grpc_token)
        if settings.tcp_listen and grpc_token:
            self._tcp = grpc.aio.server(
                options=options,
                interceptors=[_TokenInterceptor(grpc_token), RequestGuard()],
                maximum_concurrent_rpcs=limit,
            )
            self._servers.append(self._tcp)
        for server in self._servers:
            control_pb2_grpc.add_HubControlServicer_to_server(servicer, server)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
            reflection.enable_server_reflection(
                (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
            )
        self._settings = settings
        self._tls: tuple[bytes, bytes] | None = None
        if settings.tcp_listen:
            self._tls = (
                Path(settings.tls_key_file).read_bytes(),
                Path(settings.tls_cert_file).read_bytes(),
            )

    async def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_socket(self.socket_path)
        # The socket is created by grpc; a tight umask makes it never world-accessible, even
        # for the instant before chmod below.
        old_umask = os.umask(0o117)
        try:
            self._unix.add_insecure_port(f"unix:{self.socket_path}")
            await self._unix.start()
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, int(self._settings.socket_mode, 8))
        if self._tcp is not None and self._tls is not None:
            creds = grpc.ssl_server_credentials([self._tls])
            self._tcp.add_secure_port(self._settings.tcp_listen, creds)
            await self._tcp.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        _log.info("control_listening", socket=str(self.socket_path), tcp=self._settings.tcp_listen)

    async def set_draining(self) -> None:
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace_s: float) -> None:
        for server in self._servers:
            await server.stop(grace_s)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
