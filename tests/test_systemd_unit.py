"""The production install: the systemd unit, the sysusers entry and the install scripts.

The unit is parsed and its contract with the daemon pinned (notify protocol, exit status 78,
stop budget, credential names, user and directories); systemd's own tools then judge it through
``scripts/check_systemd.sh``. The install script is exercised under a ``DESTDIR`` staging root.
"""

from __future__ import annotations

import codecs
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from daemon.config import EX_CONFIG, SECRET_SOURCES, HubSection, load_secrets

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "hubd.service"
SYSUSERS = ROOT / "systemd" / "hubd.sysusers"
CHECK = ROOT / "scripts" / "check_systemd.sh"
INSTALL = ROOT / "scripts" / "install.sh"
MAX_EXPOSURE = 2.0

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Sections → key → every value in order (systemd keys may repeat)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        line, logical = logical + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"directive outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def timespan_s(value: str) -> float:
    """A systemd time span ("40s", "1min 30s", "90") in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0}
    units |= {"h": 3600.0, "hr": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert parts and "".join(n + u for n, u in parts) == value.replace(" ", "")
    return sum(float(number) * units[unit] for number, unit in parts)


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text(encoding="utf-8"))["Service"]


def only(service: dict[str, list[str]], key: str) -> str:
    values = service.get(key, [])
    assert len(values) == 1, f"{key}= should be set exactly once, found {values}"
    return values[0]


def sysusers_entries() -> list[list[str]]:
    lines = SYSUSERS.read_text(encoding="utf-8").splitlines()
    return [shlex.split(line) for line in lines if line.strip() and not line.startswith("#")]


# ---- the unit's contract with the daemon -------------------------------------------------------


def test_unit_uses_notify_protocol_from_main_process_only(
    service: dict[str, list[str]],
) -> None:
    """Type=notify with NotifyAccess=main: only hubd itself reports READY/WATCHDOG/STOPPING."""
    assert only(service, "Type") == "notify"
    assert only(service, "NotifyAccess") == "main"


def test_unit_restarts_on_failure_but_not_on_a_bad_config(service: dict[str, list[str]]) -> None:
    """Restart=on-failure, and the daemon's config-error exit status stops the restart loop."""
    assert only(service, "Restart") == "on-failure"
    prevented = " ".join(service["RestartPreventExitStatus"]).split()
    assert str(EX_CONFIG) in prevented


def test_stop_timeout_outlasts_the_daemons_shutdown_budget(
    service: dict[str, list[str]],
) -> None:
    """TimeoutStopSec= leaves the default hub.shutdown_timeout_s room to finish before SIGKILL."""
    budget = HubSection().shutdown_timeout_s
    assert timespan_s(only(service, "TimeoutStopSec")) > budget


def test_watchdog_is_armed_and_reload_sends_sighup(service: dict[str, list[str]]) -> None:
    """WatchdogSec= is set (hubd pings at half of it) and a reload is SIGHUP to the main PID."""
    assert timespan_s(only(service, "WatchdogSec")) > 0
    assert only(service, "ExecReload").split() == ["/bin/kill", "-HUP", "$MAINPID"]


def test_exec_start_runs_the_installed_hubd_with_the_etc_config(
    service: dict[str, list[str]],
) -> None:
    """ExecStart= runs the venv's `hubd` console script with `run --config /etc/hubd/...`."""
    argv = only(service, "ExecStart").split()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert argv[0] == "/opt/hubd/venv/bin/hubd" and "hubd" in scripts
    assert argv[1:] == ["run", "--config", "/etc/hubd/config.toml"]
    assert only(service, "ConfigurationDirectory") == "hubd"


def test_unit_directories_and_umask_fit_the_socket_and_state(
    service: dict[str, list[str]],
) -> None:
    """StateDirectory/RuntimeDirectory are hubd; the runtime dir lets the group reach the socket."""
    assert only(service, "StateDirectory") == "hubd"
    assert only(service, "RuntimeDirectory") == "hubd"
    assert only(service, "RuntimeDirectoryMode") == "0750"
    assert only(service, "UMask") == "0007"


def test_credentials_are_exactly_the_daemons_secret_names(
    service: dict[str, list[str]],
) -> None:
    """Each SECRET_SOURCES name is a LoadCredential= from /etc/hubd/credentials/<name>."""
    loaded = dict(value.split(":", 1) for value in service["LoadCredential"])
    assert set(loaded) == set(SECRET_SOURCES)
    for name, path in loaded.items():
        assert path == f"/etc/hubd/credentials/{name}"


def test_every_credential_is_optional_and_its_default_reads_as_absent(
    service: dict[str, list[str]], tmp_path: Path
) -> None:
    """A SetCredential= default per name keeps a missing file non-fatal; hubd reads it as unset."""
    defaults = dict(value.split(":", 1) for value in service["SetCredential"])
    assert set(defaults) == set(SECRET_SOURCES)
    creds = tmp_path / "credentials"
    creds.mkdir()
    for name, escaped in defaults.items():
        # what systemd writes to $CREDENTIALS_DIRECTORY/<name>: the C-unescaped value
        (creds / name).write_bytes(codecs.decode(escaped, "unicode_escape").encode())
    (creds / "onec_password").write_text("s3cret\n", encoding="utf-8")
    secrets = load_secrets({"CREDENTIALS_DIRECTORY": str(creds)})
    assert secrets.onec_password is not None
    assert secrets.onec_password.get_secret_value() == "s3cret"
    assert secrets.values() == ["s3cret"]


def size_bytes(value: str) -> int:
    """A systemd byte size ("768M", "1G", "4096") in bytes."""
    match = re.fullmatch(r"(\d+)([KMGT]?)", value)
    assert match, f"not a byte size: {value!r}"
    power: int = " KMGT".index(match[2] or " ")
    return int(match[1]) * int(1024**power)


#: hubd's peak RSS through a delivered 20,000-item run, then 32 concurrent plan reads
#: (benchmarks/bench_control_run_memory.py); the unit comment gives the figures.
MEASURED_RUN_PEAK = 263 * 2**20
MEASURED_WORST_PEAK = 355 * 2**20


def test_unit_caps_memory_with_room_for_the_largest_run(service: dict[str, list[str]]) -> None:
    """MemoryHigh= is 2-3x the measured run peak and above the worst measured peak; MemoryMax=
    is above MemoryHigh=, so a healthy daemon is never throttled and a leak is stopped."""
    high = size_bytes(only(service, "MemoryHigh"))
    top = size_bytes(only(service, "MemoryMax"))
    assert 2 * MEASURED_RUN_PEAK <= high <= 3 * MEASURED_RUN_PEAK
    assert high >= 2 * MEASURED_WORST_PEAK
    assert top > high


def test_unit_never_writes_core_dumps(service: dict[str, list[str]]) -> None:
    """LimitCORE=0: a core file would hold the credentials the process has read."""
    assert only(service, "LimitCORE") == "0"


# ---- the system user ---------------------------------------------------------------------------


def test_unit_user_and_group_are_the_sysusers_account(service: dict[str, list[str]]) -> None:
    """User=/Group= name the account hubd.sysusers creates (a 'u' line makes both)."""
    entries = sysusers_entries()
    assert len(entries) == 1
    kind, name, _id, _gecos, home, *_ = entries[0]
    assert kind == "u"
    assert only(service, "User") == name
    assert only(service, "Group") == name
    assert home == f"/var/lib/{only(service, 'StateDirectory')}"


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="no systemd-sysusers")
def test_systemd_sysusers_creates_the_hubd_user_and_group(tmp_path: Path) -> None:
    """systemd-sysusers, run on a scratch root, creates user and group hubd with one gid."""
    (tmp_path / "etc").mkdir()
    subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    passwd = {
        line.split(":")[0]: line.split(":")
        for line in (tmp_path / "etc" / "passwd").read_text().splitlines()
    }
    groups = {
        line.split(":")[0]: line.split(":")
        for line in (tmp_path / "etc" / "group").read_text().splitlines()
    }
    assert passwd["hubd"][3] == groups["hubd"][2]
    assert passwd["hubd"][6] == "/usr/sbin/nologin"


# ---- systemd's own judgement -------------------------------------------------------------------


def run_check(unit: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = [str(CHECK)] + ([str(unit)] if unit is not None else [])
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def exposure(stdout: str) -> float:
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", stdout)
    assert match, stdout
    return float(match.group(1))


@needs_analyze
def test_shipped_unit_passes_systemd_analyze_security_and_verify() -> None:
    """check_systemd.sh: exposure of the shipped unit is <= 2.0 and verify prints nothing."""
    result = run_check()
    assert result.returncode == 0, result.stdout + result.stderr
    assert exposure(result.stdout) <= MAX_EXPOSURE
    assert result.stdout.splitlines()[-1] == "verify: clean"


@needs_analyze
def test_check_script_fails_a_unit_without_the_hardening(tmp_path: Path) -> None:
    """check_systemd.sh exits non-zero when the exposure is above 2.0."""
    hardening = re.compile(
        r"^(ProtectSystem|PrivateUsers|SystemCallFilter|CapabilityBoundingSet|ProtectHome|"
        r"PrivateDevices|RestrictAddressFamilies|RestrictNamespaces)="
    )
    lines = UNIT.read_text(encoding="utf-8").splitlines()
    weak = tmp_path / "hubd.service"
    weak.write_text("\n".join(x for x in lines if not hardening.match(x)) + "\n")
    result = run_check(weak)
    assert result.returncode != 0
    assert exposure(result.stdout) > MAX_EXPOSURE


@needs_analyze
def test_check_script_fails_a_unit_that_verify_complains_about(tmp_path: Path) -> None:
    """check_systemd.sh exits non-zero and shows verify's complaint for an unknown directive."""
    text = UNIT.read_text(encoding="utf-8").replace("UMask=0007\n", "UMask=0007\nUmask=007\n")
    broken = tmp_path / "hubd.service"
    broken.write_text(text)
    result = run_check(broken)
    assert result.returncode != 0
    assert "verify: FAILED" in result.stdout
    assert "Umask" in result.stdout


# ---- install.sh ------------------------------------------------------------------------------


@pytest.mark.parametrize("script", [INSTALL, CHECK], ids=lambda p: p.name)
def test_scripts_are_valid_bash(script: Path) -> None:
    """bash -n accepts both shell scripts."""
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)


def run_install(*args: str, destdir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DESTDIR": str(destdir)}
    return subprocess.run(
        [str(INSTALL), *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_install_refuses_purge_without_uninstall(tmp_path: Path) -> None:
    """--purge alone is an error, so a mistyped upgrade can never delete /etc/hubd."""
    (tmp_path / "etc" / "hubd").mkdir(parents=True)
    result = run_install("--purge", destdir=tmp_path)
    assert result.returncode != 0
    assert "--purge only goes with --uninstall" in result.stderr
    assert (tmp_path / "etc" / "hubd").is_dir()


def _staged_install(root: Path) -> None:
    """What install.sh leaves behind, laid out by hand (building the venv needs an index)."""
    files = {
        "etc/systemd/system/hubd.service": UNIT.read_text(),
        "etc/sysusers.d/hubd.conf": SYSUSERS.read_text(),
        "etc/hubd/config.toml": "# edited by the operator\n",
        "etc/hubd/credentials/onec_password": "s3cret",
        "var/lib/hubd/hub.sqlite3": "",
        "opt/hubd/venv/bin/hubd": "",
        "opt/hubd/README.md": "",
        "opt/hubd/config.toml.example": "",
    }
    for relative, content in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(content)
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "usr/local/bin/hubctl").symlink_to("/opt/hubd/venv/bin/hubctl")
    (root / "usr/local/bin/hubd").symlink_to("/usr/lib/some-other/hubd")


def test_uninstall_keeps_config_and_state_and_purge_removes_them(tmp_path: Path) -> None:
    """--uninstall removes unit, venv and our links only; --purge also /etc/hubd, /var/lib/hubd."""
    _staged_install(tmp_path)
    result = run_install("--uninstall", destdir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "etc/systemd/system/hubd.service").exists()
    assert not (tmp_path / "opt/hubd").exists()
    assert not (tmp_path / "usr/local/bin/hubctl").is_symlink()
    # a hubd link that is not ours is left alone
    assert (tmp_path / "usr/local/bin/hubd").is_symlink()
    assert (tmp_path / "etc/hubd/config.toml").read_text() == "# edited by the operator\n"
    assert (tmp_path / "etc/hubd/credentials/onec_password").exists()
    assert (tmp_path / "var/lib/hubd/hub.sqlite3").exists()

    result = run_install("--uninstall", "--purge", destdir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "etc/hubd").exists()
    assert not (tmp_path / "var/lib/hubd").exists()
    assert not (tmp_path / "etc/sysusers.d/hubd.conf").exists()
