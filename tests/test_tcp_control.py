"""The optional TCP control listener: TLS and a bearer token, or nothing."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import REPO, base_sections, child_env, write_config


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


async def _tcp_ctl(port: int, cert: Path, token: str | None, *args: str) -> tuple[int, str, str]:
    env = child_env()
    if token is not None:
        env["HUB_GRPC_TOKEN"] = token
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client.cli", "--tcp", f"127.0.0.1:{port}", "--ca-cert", str(cert),
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=REPO,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_tls_listener_needs_the_token(tmp_path: Path, hub_factory: Any) -> None:
    """Over TLS with the right token hubctl works; without it or with a wrong one it is refused."""
    cert, key = _self_signed(tmp_path)
    port = _free_port()
    sections = base_sections(tmp_path)
    sections["control"].update(
        tcp_listen=f"127.0.0.1:{port}", tls_cert_file=str(cert), tls_key_file=str(key)
    )
    config = write_config(tmp_path / "config.toml", sections)
    hub = await hub_factory(config, tmp_path / "hubd.sock", HUB_GRPC_TOKEN="tcp-token-1234")
    await hub.wait_socket()
    code, out, err = await _tcp_ctl(port, cert, "tcp-token-1234", "status")
    assert code == 0, err
    assert "hubd 0.1.0" in out
    code, _, err = await _tcp_ctl(port, cert, "wrong-token", "status")
    assert code == 1 and "bearer token" in err
    code, _, err = await _tcp_ctl(port, cert, None, "status")
    assert code == 2 and "HUB_GRPC_TOKEN" in err
    assert await hub.stop() == 0


async def test_tcp_listener_without_token_refuses_to_start(tmp_path: Path) -> None:
    """tcp_listen with TLS but no grpc_token credential is a config error (exit 78)."""
    cert, key = _self_signed(tmp_path)
    sections = base_sections(tmp_path)
    sections["control"].update(
        tcp_listen=f"127.0.0.1:{_free_port()}", tls_cert_file=str(cert), tls_key_file=str(key)
    )
    config = write_config(tmp_path / "config.toml", sections)
    env = child_env(HUB_ONEC_PASSWORD="x", HUB_MOYSKLAD_TOKEN="y")
    env.pop("HUB_GRPC_TOKEN", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "run", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=REPO,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 78, err
    assert b"HUB_GRPC_TOKEN" in err
    assert not (tmp_path / "hubd.sock").exists()
