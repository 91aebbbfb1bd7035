"""The gRPC server: a Unix socket with owner/group-only permissions, health and reflection."""

from __future__ import annotations

import contextlib
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
from daemon.errors import ConfigError
from protos.hub.v1 import control_pb2, control_pb2_grpc

_log = structlog.get_logger(__name__)

# Answers may be large (a 100,000-item plan); the request limit is the configured one.
MAX_ANSWER_BYTES = 512 * 1024 * 1024

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


class _TokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Checks the bearer token on the TCP listener (the Unix socket relies on permissions)."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        metadata = dict(handler_call_details.invocation_metadata or ())
        if metadata.get("authorization") == f"Bearer {self._token}":
            return await continuation(handler_call_details)

        async def deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        return grpc.unary_unary_rpc_method_handler(deny)


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
        ]
        self._servers: list[grpc.aio.Server] = []
        self._unix = grpc.aio.server(options=options)
        self._servers.append(self._unix)
        self._tcp: grpc.aio.Server | None = None
        if settings.tcp_listen:
            if not grpc_token:
                raise ConfigError(
                    "environment",
                    "HUB_GRPC_TOKEN",
                    "control.tcp_listen needs a bearer token (credential grpc_token)",
                )
            self._tcp = grpc.aio.server(
                options=options, interceptors=[_TokenInterceptor(grpc_token)]
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
