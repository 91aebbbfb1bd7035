"""config.toml: pydantic models, loading, and secrets.

Every problem is reported as one ``ConfigError`` naming the file, the key and what was
expected. Secrets never come from the file: they come from environment variables or from
systemd credentials (``$CREDENTIALS_DIRECTORY/<name>``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from daemon.errors import ConfigError
from daemon.moysklad.settings import MoySkladSettings
from daemon.onec.settings import OneCSettings

EX_CONFIG = 78  # sysexits.h: configuration error; systemd's RestartPreventExitStatus=78

_SECRET_KEY = re.compile(r"(password|passwd|token|secret|api_key)$", re.IGNORECASE)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"an IANA time zone such as 'Europe/Moscow', got {value!r}") from exc
    return value


class HubSection(_Section):
    state_dir: str = Field(
        default="",
        description="Database directory; empty = $STATE_DIRECTORY (systemd) or ./state",
    )
    shutdown_timeout_s: float = Field(default=20.0, gt=0, le=300)
    max_database_mb: float = Field(
        default=0.0,
        ge=0,
        description="Cap on the database file in MiB (0 = none); at the cap, as on a full disk",
    )


class ControlSection(_Section):
    socket_path: str = Field(
        default="",
        description="Unix socket; empty = $RUNTIME_DIRECTORY/hubd.sock or <state_dir>/hubd.sock",
    )
    socket_mode: str = Field(default="0660", pattern=r"^0?[0-7]{3}$")
    # Requests only: the largest valid one is about 1 KiB (control/guard.py field limits).
    max_message_bytes: int = Field(default=8 * 1024, ge=2 * 1024, le=4 * 1024 * 1024)
    # Per listener; a `hubctl logs -f` or `run --follow` holds one for as long as it runs.
    max_concurrent_rpcs: int = Field(default=100, ge=8, le=10_000)
    tcp_listen: str = Field(default="", description="host:port for remote control (TLS only)")
    tls_cert_file: str = ""
    tls_key_file: str = ""

    @field_validator("socket_mode")
    @classmethod
    def _no_world_access(cls, value: str) -> str:
        if int(value, 8) & 0o007:
            raise ValueError("a mode without any access for others, such as '0660'")
        return value

    @field_validator("tls_cert_file", "tls_key_file")
    @classmethod
    def _readable_pem(cls, value: str) -> str:
        # Checked here, so check-config catches it and hubd run refuses with one line (78)
        # instead of failing when the listener starts.
        if not value:
            return value
        try:
            with open(value, "rb") as pem:
                head = pem.read(64 * 1024)
        except OSError as exc:
            raise ValueError(f"a readable PEM file, got {value!r} ({exc.strerror})") from None
        if b"-----BEGIN " not in head:
            raise ValueError(f"a PEM file (-----BEGIN ...), got {value!r}")
        return value

    @field_validator("tcp_listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if not value:
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
            raise ValueError(f"'host:port' such as '127.0.0.1:50051', got {value!r}")
        host = host.strip("[]")
        if host != "localhost":
            try:
                ipaddress.ip_address(host)
            except ValueError:
                if not re.fullmatch(r"[A-Za-z0-9.-]+", host):
                    raise ValueError(f"a host name or IP address, got {host!r}") from None
        return value

    def model_post_init(self, __context: Any) -> None:
        if self.tcp_listen and not (self.tls_cert_file and self.tls_key_file):
            raise ValueError(
                "tcp_listen needs tls_cert_file and tls_key_file: plaintext TCP is refused"
            )


class LoggingSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    retention_days: int = Field(default=30, ge=1, le=3650)


class TargetSection(_Section):
    warehouse: str = Field(min_length=1, description="the shop warehouse to replenish")
    donors: list[str] = Field(default_factory=lambda: ["Бестужевых", "Контейнер"])

    @field_validator("donors")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("donor names without repeats")
        return value


class ReplenishmentSection(_Section):
    targets: list[TargetSection] = Field(min_length=1)
    desired_arrival_days: int = Field(default=2, ge=0, le=60)
    subtract_open_transfers_at_donors: bool = Field(
        default=True,
        description=(
            "Subtract from each donor's free stock (ТоварыНаСкладах) what the hub's open "
            "transfer orders from it still owe: КОформлению of those posted in 1C (posting one "
            "does not touch ТоварыНаСкладах; its shipment does) and the lines of those still "
            "in the outbox. false only for a УТ whose ТоварыНаСкладах already excludes them"
        ),
    )
    max_positions_per_order: int = Field(default=1000, ge=1, le=1000)
    plan_retention_days: int = Field(default=90, ge=1, le=3650)


class OutboxSection(_Section):
    interval_s: float = Field(default=30.0, gt=0)
    lease_s: float = Field(default=300.0, gt=0)
    concurrency_onec: int = Field(default=2, ge=1, le=16)
    concurrency_moysklad: int = Field(default=2, ge=1, le=5)
    retry_base_s: float = Field(default=5.0, gt=0)
    retry_cap_s: float = Field(default=900.0, gt=0)
    max_attempts: int = Field(default=30, ge=1)
    max_age_h: float = Field(default=72.0, gt=0)


class JobSection(_Section):
    kind: Literal["replenishment"] = "replenishment"
    cron: str = "0 9 * * 1-5"
    timezone: str = "Europe/Moscow"
    enabled: bool = True
    catch_up_window_s: float = Field(default=3 * 3600, ge=0)
    overlap: Literal["skip", "run_after"] = "skip"

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError(f"a 5-field cron expression such as '0 9 * * 1-5', got {value!r}")
        croniter(value, datetime(2026, 1, 1))
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return _check_zone(value)


def _default_jobs() -> dict[str, JobSection]:
    return {"replenishment": JobSection()}


class HubConfig(_Section):
    hub: HubSection = HubSection()
    control: ControlSection = ControlSection()
    logging: LoggingSection = LoggingSection()
    onec: OneCSettings
    moysklad: MoySkladSettings
    replenishment: ReplenishmentSection
    outbox: OutboxSection = OutboxSection()
    jobs: dict[str, JobSection] = Field(default_factory=_default_jobs)

    @field_validator("jobs")
    @classmethod
    def _job_names(cls, value: dict[str, JobSection]) -> dict[str, JobSection]:
        for name in value:
            if not re.fullmatch(r"[a-z][a-z0-9_-]{0,63}", name):
                raise ValueError(f"job names in lower-case letters, digits, '-' and '_': {name!r}")
        return value


# ---------------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------------

#: credential name → environment variable
SECRET_SOURCES: Mapping[str, str] = {
    "onec_password": "HUB_ONEC_PASSWORD",
    "moysklad_token": "HUB_MOYSKLAD_TOKEN",
    "moysklad_password": "HUB_MOYSKLAD_PASSWORD",
    "grpc_token": "HUB_GRPC_TOKEN",
}


class Secrets(BaseModel):
    """Secret values; ``SecretStr`` keeps them out of repr() and logs."""

    model_config = ConfigDict(frozen=True)

    onec_password: SecretStr | None = None
    moysklad_token: SecretStr | None = None
    moysklad_password: SecretStr | None = None
    grpc_token: SecretStr | None = None

    def values(self) -> list[str]:
        """Every non-empty secret value, for the log redactor."""
        found = []
        for name in SECRET_SOURCES:
            secret = getattr(self, name)
            if secret is not None and secret.get_secret_value():
                found.append(secret.get_secret_value())
        return found


def load_secrets(environ: Mapping[str, str] | None = None) -> Secrets:
    """Read secrets from ``$CREDENTIALS_DIRECTORY/<name>`` first, then the environment."""
    env = os.environ if environ is None else environ
    creds_dir = env.get("CREDENTIALS_DIRECTORY")
    values: dict[str, SecretStr] = {}
    for name, var in SECRET_SOURCES.items():
        value: str | None = None
        if creds_dir:
            path = Path(creds_dir) / name
            if path.is_file():
                value = path.read_text(encoding="utf-8").strip()
        if value is None:
            value = env.get(var)
        if value:
            values[name] = SecretStr(value)
    return Secrets(**values)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _find_secret_keys(data: Mapping[str, Any], prefix: str = "") -> str | None:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if _SECRET_KEY.search(key):
            return dotted
        if isinstance(value, Mapping):
            found = _find_secret_keys(value, f"{dotted}.")
            if found:
                return found
        if isinstance(value, list):
            for index, element in enumerate(value):
                if isinstance(element, Mapping):
                    found = _find_secret_keys(element, f"{dotted}[{index}].")
                    if found:
                        return found
    return None


def _loc(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _expected(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key (not one of the documented keys; see config.toml comments)"
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"])
    message = message.removeprefix("Value error, ")
    given = error.get("input")
    message = message.replace("Input should be ", "expected ", 1)
    if kind != "value_error" and not isinstance(given, dict | list):
        return f"{message}, got {given!r}"
    return f"expected {message}" if kind == "value_error" else message


def parse_config(data: Mapping[str, Any], path: str) -> HubConfig:
    secret_key = _find_secret_keys(data)
    if secret_key:
        candidate = re.sub(r"\[\d+\]", "", secret_key).replace(".", "_")
        env = SECRET_SOURCES.get(candidate, "the matching HUB_* environment variable")
        raise ConfigError(
            path,
            secret_key,
            "secrets are never read from the config file; remove it and set "
            f"{env} or a systemd credential (LoadCredential=) instead",
        )
    try:
        return HubConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(path, _loc(first["loc"]), _expected(first)) from None


def load_config(path: str | os.PathLike[str]) -> HubConfig:
    """Read and validate ``path``; any problem is one ``ConfigError``."""
    text_path = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(text_path, "", "file not found") from None
    except OSError as exc:
        raise ConfigError(text_path, "", f"cannot be read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(text_path, "", "is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(text_path, "", f"TOML syntax error: {exc}") from None
    return parse_config(data, text_path)


def resolve_state_dir(config: HubConfig, environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if config.hub.state_dir:
        return Path(config.hub.state_dir)
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    return Path("state")


def resolve_socket_path(config: HubConfig, environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if config.control.socket_path:
        return Path(config.control.socket_path)
    if env.get("RUNTIME_DIRECTORY"):
        return Path(env["RUNTIME_DIRECTORY"].split(":")[0]) / "hubd.sock"
    return resolve_state_dir(config, env) / "hubd.sock"
