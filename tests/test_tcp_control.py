"""The optional TCP control listener: TLS and a bearer token, or nothing."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from protos.hub.v1 import control_pb2 as pb
from protos.hub.v1 import control_pb2_grpc
from tests.conftest import REPO, base_sections, child_env, write_config
from tests.control_support import LARGE, flood, raw_unary, rss_mib

TOKEN = "tcp-token-" + "9f3c" * 8  # 42 bytes: at least the 32 the daemon insists on


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
    hub = await hub_factory(config, tmp_path / "hubd.sock", HUB_GRPC_TOKEN=TOKEN)
    await hub.wait_socket()
    code, out, err = await _tcp_ctl(port, cert, TOKEN, "status")
    assert code == 0, err
    assert "hubd 0.1.0" in out
    code, _, err = await _tcp_ctl(port, cert, "wrong-token", "status")
    assert code == 1 and "bearer token" in err
    code, _, err = await _tcp_ctl(port, cert, None, "status")
    assert code == 2 and "HUB_GRPC_TOKEN" in err
    assert await hub.stop() == 0


def _tls_sections(tmp_path: Path, port: int) -> dict[str, dict[str, Any]]:
    cert, key = _self_signed(tmp_path)
    sections = base_sections(tmp_path)
    sections["control"].update(
        tcp_listen=f"127.0.0.1:{port}", tls_cert_file=str(cert), tls_key_file=str(key)
    )
    return sections


async def _start_refused(tmp_path: Path, **env: str) -> str:
    """Start hubd with the TLS listener and ``env``; assert exit 78 before any database or
    socket exists, and return its stderr."""
    config = write_config(tmp_path / "config.toml", _tls_sections(tmp_path, _free_port()))
    child = child_env(HUB_ONEC_PASSWORD="x", HUB_MOYSKLAD_TOKEN="y", **env)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "run", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=child, cwd=REPO,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 78, err
    assert not (tmp_path / "hubd.sock").exists()
    assert not (tmp_path / "state" / "hub.sqlite3").exists()
    return err.decode()


async def test_tcp_listener_without_token_refuses_to_start(tmp_path: Path) -> None:
    """tcp_listen with TLS but no grpc_token credential is a config error (exit 78)."""
    err = await _start_refused(tmp_path)
    assert "HUB_GRPC_TOKEN" in err


async def test_tcp_listener_with_a_short_token_refuses_to_start(tmp_path: Path) -> None:
    """A bearer token under 32 bytes is a config error naming the credential, in one line."""
    short = "s" * 31
    err = await _start_refused(tmp_path, HUB_GRPC_TOKEN=short)
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "HUB_GRPC_TOKEN" in err and "grpc_token" in err and "at least 32 bytes" in err
    assert short not in err


async def test_unauthenticated_large_requests_are_refused_without_growing_memory(
    tmp_path: Path, hub_factory: Any
) -> None:
    """Over TLS, 2 rounds of 100 concurrent 4 MB requests without the token, or with a token
    wrong only in its last byte, all get UNAUTHENTICATED (streams too), not the
    RESOURCE_EXHAUSTED that reading them would give, and hubd's RSS stays within 40 MiB
    (unauthenticated 3.9 MB requests used to leave it at 420 MB)."""
    port = _free_port()
    config = write_config(tmp_path / "config.toml", _tls_sections(tmp_path, port))
    hub = await hub_factory(config, tmp_path / "hubd.sock", HUB_GRPC_TOKEN=TOKEN)
    await hub.wait_socket()
    before = rss_mib(hub.proc.pid)
    body = pb.GetRunRequest(run_id="x" * LARGE).SerializeToString()
    creds = grpc.ssl_channel_credentials((tmp_path / "cert.pem").read_bytes())
    near_miss = (("authorization", f"Bearer {TOKEN[:-1]}0"),)
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as channel:
        for metadata in (None, near_miss):
            codes = await flood(channel, [("GetRun", body)] * 100, metadata)
            assert codes == {grpc.StatusCode.UNAUTHENTICATED}
        stream = control_pb2_grpc.HubControlStub(channel).TailLogs(
            pb.TailLogsRequest(follow=True), metadata=near_miss
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream.read()
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        authorized = (("authorization", f"Bearer {TOKEN}"),)
        code, _ = await raw_unary(channel, "GetStatus", b"", authorized)
        assert code == grpc.StatusCode.OK
    await asyncio.sleep(1)
    assert rss_mib(hub.proc.pid) - before < 40
    assert await hub.stop() == 0
