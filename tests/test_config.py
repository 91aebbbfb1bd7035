"""config.toml validation: every bad config exits 78 with one line naming the file and key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from daemon.config import HubConfig, JobSection, TargetSection, load_config, load_secrets
from tests.conftest import REPO, base_sections, render_config


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", "check-config", str(path)],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip


def test_repo_config_is_valid() -> None:
    """The documented default config.toml passes check-config."""
    result = check_config(REPO / "config.toml")
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def _mutate(tmp_path: Path, change: Any) -> Path:
    sections = base_sections(tmp_path)
    change(sections)
    path = tmp_path / "bad.toml"
    path.write_text(render_config(sections), encoding="utf-8")
    return path


BAD_CONFIGS: list[tuple[str, Any, str]] = [
    ("unknown key", lambda s: s["hub"].update(colour="red"), "hub.colour"),
    ("unknown section", lambda s: s.update(extra={"a": 1}), "extra"),
    ("wrong type", lambda s: s["outbox"].update(interval_s="soon"), "outbox.interval_s"),
    (
        "bad cron",
        lambda s: s["jobs.replenishment"].update(cron="61 9 * * *"),
        "jobs.replenishment.cron",
    ),
    (
        "six-field cron",
        lambda s: s["jobs.replenishment"].update(cron="0 0 9 * * 1-5"),
        "jobs.replenishment.cron",
    ),
    (
        "unknown zone",
        lambda s: s["jobs.replenishment"].update(timezone="Europe/Atlantis"),
        "jobs.replenishment.timezone",
    ),
    ("bad url", lambda s: s["onec"].update(base_url="not a url"), "onec.base_url"),
    ("password in file", lambda s: s["onec"].update(password="hunter2"), "onec.password"),
    ("token in file", lambda s: s["moysklad"].update(token="abc"), "moysklad.token"),
    ("missing section", lambda s: s.pop("onec"), "onec"),
    ("missing key", lambda s: s["onec"].pop("username"), "onec.username"),
    ("world socket", lambda s: s["control"].update(socket_mode="0666"), "control.socket_mode"),
    ("plaintext tcp", lambda s: s["control"].update(tcp_listen="0.0.0.0:50051"), "control"),
    ("negative", lambda s: s["outbox"].update(max_attempts=0), "outbox.max_attempts"),
    (
        "megabyte requests",
        lambda s: s["control"].update(max_message_bytes=64 * 1024 * 1024),
        "control.max_message_bytes",
    ),
    (
        "unbounded calls",
        lambda s: s["control"].update(max_concurrent_rpcs=0),
        "control.max_concurrent_rpcs",
    ),
    (
        "password in 1C url",
        lambda s: s["onec"].update(base_url="http://hub:pw@1c.local/ut/odata/standard.odata/"),
        "onec.base_url",
    ),
    ("bad enum", lambda s: s["moysklad"].update(match_key="barcode"), "moysklad.match_key"),
    (
        "bad overlap",
        lambda s: s["jobs.replenishment"].update(overlap="queue"),
        "jobs.replenishment.overlap",
    ),
    (
        "duplicate donors",
        lambda s: s["[[replenishment.targets]]"].update(donors=["A", "A"]),
        "replenishment.targets[0].donors",
    ),
]


@pytest.mark.parametrize(("case", "change", "key"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_exits_78_naming_the_key(
    tmp_path: Path, case: str, change: Any, key: str
) -> None:
    """Each bad config gives exit 78 and one line with the file, the key and what was expected."""
    path = _mutate(tmp_path, change)
    result = check_config(path)
    assert result.returncode == 78, (case, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0]
    assert f": {key}" in lines[0]
    assert "Traceback" not in result.stderr


def test_missing_file_and_syntax_error(tmp_path: Path) -> None:
    """A missing file and a TOML syntax error are config errors too, not tracebacks."""
    missing = check_config(tmp_path / "nope.toml")
    assert missing.returncode == 78 and "file not found" in missing.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[hub\nstate_dir = 1\n", encoding="utf-8")
    result = check_config(broken)
    assert result.returncode == 78 and "TOML syntax error" in result.stderr
    assert "Traceback" not in result.stderr


def test_secrets_from_credentials_directory_win_over_environment(tmp_path: Path) -> None:
    """systemd credentials are read first, then HUB_* variables; the file is never read."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "onec_password").write_text("from-credential\n", encoding="utf-8")
    secrets = load_secrets(
        {
            "CREDENTIALS_DIRECTORY": str(creds),
            "HUB_ONEC_PASSWORD": "from-env",
            "HUB_MOYSKLAD_TOKEN": "token-env",
        }
    )
    assert secrets.onec_password is not None
    assert secrets.onec_password.get_secret_value() == "from-credential"
    assert secrets.moysklad_token is not None
    assert secrets.moysklad_token.get_secret_value() == "token-env"
    assert "from-credential" not in repr(secrets)


def test_valid_config_loads_defaults(tmp_path: Path) -> None:
    """Omitted sections take their documented defaults."""
    sections = base_sections(tmp_path)
    del sections["outbox"]
    path = tmp_path / "ok.toml"
    path.write_text(render_config(sections), encoding="utf-8")
    config = load_config(path)
    assert config.outbox.interval_s == 30
    assert config.jobs["replenishment"].cron == "0 9 * * 1-5"


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def test_repo_config_documents_every_key() -> None:
    """Every key the config models accept is present (set or commented) in config.toml."""
    text = (REPO / "config.toml").read_text(encoding="utf-8")
    missing = []
    for dotted in _keys(HubConfig):
        key = dotted.rsplit(".", 1)[-1]
        if dotted.startswith(("jobs", "replenishment.targets")):
            continue  # documented through their [jobs.replenishment] / [[targets]] blocks
        if not re.search(rf"^(# )?{re.escape(key)} = ", text, re.MULTILINE) and not re.search(
            rf"^\[{re.escape(dotted)}\]", text, re.MULTILINE
        ):
            missing.append(dotted)
    assert not missing, f"undocumented in config.toml: {missing}"
    for key in _keys(JobSection):
        assert re.search(rf"^{key} = ", text, re.MULTILINE), key
    for key in _keys(TargetSection):
        assert re.search(rf"^{key} = ", text, re.MULTILINE), key
