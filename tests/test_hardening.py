"""Start-up hardening: no core dumps, a control socket directory no other user can write to,
and credentials kept out of URLs."""

from __future__ import annotations

import asyncio
import resource
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from daemon.config import EX_CONFIG, parse_config
from daemon.errors import ConfigError
from daemon.hardening import unsafe_directory
from tests.conftest import REPO, base_sections, child_env, render_config, write_config


def _core_limit(pid: int) -> list[str]:
    """[soft, hard] of the process's core file size limit."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            return line.split()[4:6]
    raise AssertionError("no core limit line")


def test_the_test_environment_allows_core_dumps() -> None:
    """The test below would prove nothing where core dumps are off already."""
    assert resource.getrlimit(resource.RLIMIT_CORE)[1] != 0


async def test_running_daemon_writes_no_core_dumps(tmp_path: Path, hub_factory: Any) -> None:
    """hubd started with core dumps allowed runs with a core file limit of 0 (soft and hard),
    so a crash never writes its secrets to disk."""
    config = write_config(tmp_path / "config.toml", base_sections(tmp_path))
    ours = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (ours[1], ours[1]))  # inherited by the child
    try:
        hub = await hub_factory(config, tmp_path / "hubd.sock")
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, ours)
    await hub.wait_socket()
    assert _core_limit(hub.proc.pid) == ["0", "0"]
    assert await hub.stop() == 0


async def _start(config: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "run", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=child_env(HUB_ONEC_PASSWORD="x", HUB_MOYSKLAD_TOKEN="y"), cwd=REPO,
    )  # fmt: skip
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("hubd did not refuse the socket directory") from None
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_world_writable_socket_directory_refuses_start(tmp_path: Path) -> None:
    """A socket in a world-writable directory without the sticky bit: exit 78 with one line
    naming control.socket_path and the directory, before the database is created."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    sections = base_sections(tmp_path)
    sections["control"]["socket_path"] = str(shared / "run" / "hubd.sock")
    code, err = await _start(write_config(tmp_path / "config.toml", sections))
    assert code == EX_CONFIG, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "control.socket_path" in err and f"{shared} is writable by others" in err
    assert not (tmp_path / "state").exists()
    assert not (shared / "run").exists()


async def test_sticky_world_writable_directory_is_accepted(
    tmp_path: Path, hub_factory: Any
) -> None:
    """A /tmp-like directory (world-writable with the sticky bit) may hold the socket."""
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    sections = base_sections(tmp_path)
    sections["control"]["socket_path"] = str(sticky / "hubd.sock")
    config = write_config(tmp_path / "config.toml", sections)
    hub = await hub_factory(config, sticky / "hubd.sock")
    await hub.wait_socket()
    assert await hub.stop() == 0


def test_unsafe_directory_looks_at_every_ancestor(tmp_path: Path) -> None:
    """A world-writable, non-sticky ancestor makes the whole path unsafe (it could be renamed
    away and replaced); directories not created yet are skipped."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert unsafe_directory(tmp_path / "a" / "b" / "not-yet") is None
    (tmp_path / "a").chmod(0o777)
    assert unsafe_directory(tmp_path / "a" / "b" / "not-yet") == tmp_path / "a"
    (tmp_path / "a").chmod(0o1777)
    assert unsafe_directory(tmp_path / "a" / "b") is None


@pytest.mark.parametrize(
    ("section", "url", "credential"),
    [
        ("onec", "http://hub:S3cret-pw@1c.local/ut/odata/standard.odata/", "onec_password"),
        ("onec", "https://hub@1c.local/ut/odata/standard.odata/", "onec_password"),
        ("moysklad", "https://me:S3cret-pw@api.moysklad.ru/api/remap/1.2/", "moysklad_token"),
    ],
)
def test_credentials_in_a_base_url_are_a_config_error(
    tmp_path: Path, section: str, url: str, credential: str
) -> None:
    """user:pass@ in a base_url is a ConfigError naming the key and the credential to use
    instead, and the error never repeats the password."""
    sections = base_sections(tmp_path)
    sections[section]["base_url"] = url
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(render_config(sections)), "config.toml")
    assert caught.value.key == f"{section}.base_url"
    assert credential in str(caught.value)
    assert "S3cret-pw" not in str(caught.value)
