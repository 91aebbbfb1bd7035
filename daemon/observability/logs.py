"""structlog configuration: one processor chain for our events and the standard library's.

Chain: contextvars (run_id, job) → level, logger name → secret redaction → fan-out to the
``LogHub`` (followers + integration_logs) → JSON lines (journald) or colours (terminal).
Redaction sits before every sink, so no sink ever sees a secret.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Literal

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from daemon.observability.logstream import LogHub, record_from_event

REDACTED = "***"
_SENSITIVE_KEYS = {"authorization", "password", "passwd", "token", "secret", "cookie", "api_key"}


class SecretRedactor:
    """Replaces known secret values anywhere in an event, and values of sensitive keys."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.set_secrets(secrets)

    def set_secrets(self, secrets: Iterable[str]) -> None:
        # longest first, so a secret containing another is replaced whole
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {
                k: REDACTED if str(k).lower() in _SENSITIVE_KEYS else self.scrub(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.scrub(v) for v in value]
        if isinstance(value, int | float | bool) or value is None:
            return value
        return self.scrub(str(value))

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
        for key in list(event_dict):
            if key.lower() in _SENSITIVE_KEYS:
                event_dict[key] = REDACTED
            elif key == "exc_info":
                continue
            else:
                event_dict[key] = self.scrub(event_dict[key])
        return event_dict


def _format_exception_redacted(redactor: SecretRedactor) -> Processor:
    formatter = structlog.processors.format_exc_info

    def process(logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
        event_dict = formatter(logger, name, event_dict)
        if "exception" in event_dict:
            event_dict["exception"] = redactor.scrub(event_dict["exception"])
        return event_dict

    return process


class _FanOut:
    def __init__(self, hub: LogHub | None) -> None:
        self.hub = hub

    def __call__(
        self, logger: WrappedLogger, name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if self.hub is not None:
            self.hub.publish(record_from_event(dict(event_dict)))
        return event_dict


def configure_logging(
    *,
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    redactor: SecretRedactor | None = None,
    hub: LogHub | None = None,
    stream: Any = None,
) -> SecretRedactor:
    """Configure structlog and the standard library's root logger to use one chain."""
    out = stream if stream is not None else sys.stdout
    redactor = redactor or SecretRedactor()
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=True)
        if use_console
        else structlog.processors.JSONRenderer(ensure_ascii=False, default=str)
    )
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        redactor,
        _FanOut(hub),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if not use_console:
        shared.append(_format_exception_redacted(redactor))
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access log is noise at info level. aiosqlite logs every statement at debug,
    # including the history writer's own INSERTs into integration_logs: left at debug, each
    # batch would log the next one's rows and the history would feed on itself.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)
    return redactor
