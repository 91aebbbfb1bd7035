"""A circuit breaker keyed on *identical* failures.

МойСклад switches a user's API access off (only support can restore it) after more than 200
identical failing requests in a minute. The breaker opens long before that: after
``threshold`` failures with the same signature (method, path, status, code) inside
``window_s``. While open every call fails fast with ``CircuitOpenError``; after ``open_s`` one
probe call is let through, and its outcome closes or re-opens the circuit.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import structlog

from daemon.errors import CircuitOpenError

log = structlog.get_logger(__name__)

SYSTEM = "moysklad"


class CircuitBreaker:
    def __init__(
        self,
        *,
        threshold: int,
        window_s: float,
        open_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = threshold
        self._window_s = window_s
        self._open_s = open_s
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._open_until: float | None = None
        self._probe_out = False
        self.reason = ""
        self.times_opened = 0

    @property
    def state(self) -> str:
        if self._open_until is None:
            return "closed"
        if self._clock() < self._open_until:
            return "open"
        return "half_open"

    def open_until(self) -> datetime | None:
        """Wall-clock time the circuit stays open until (for operators)."""
        if self._open_until is None:
            return None
        left = max(0.0, self._open_until - self._clock())
        return datetime.now(UTC) + timedelta(seconds=left)

    def before_call(self) -> bool:
        """Raise ``CircuitOpenError`` if calls are refused; True when this call is the probe."""
        state = self.state
        if state == "closed":
            return False
        if state == "half_open" and not self._probe_out:
            self._probe_out = True
            log.info("moysklad_circuit_probe", reason=self.reason)
            return True
        until = self.open_until()
        when = until.isoformat(timespec="seconds") if until else "a probe completes"
        raise CircuitOpenError(
            f"circuit open until {when}: {self.reason}",
            system=SYSTEM,
            remote_message=self.reason,
        )

    def release_probe(self, probe: bool) -> None:
        """A probe that ended without an answer (cancelled) lets the next call probe."""
        if probe:
            self._probe_out = False

    def record_success(self, probe: bool) -> None:
        # Successes do not clear the failure windows: the provider counts identical failing
        # requests per minute whatever else succeeds in between.
        if probe or self._open_until is not None:
            log.info("moysklad_circuit_closed", reason=self.reason)
            self._open_until = None
            self._probe_out = False
            self.reason = ""

    def record_failure(self, signature: str, probe: bool) -> None:
        now = self._clock()
        if probe:
            self._trip(now, f"probe failed: {signature}")
            return
        window = self._failures.setdefault(signature, deque())
        window.append(now)
        while window and window[0] < now - self._window_s:
            window.popleft()
        if len(window) >= self._threshold and self.state == "closed":
            self._trip(
                now,
                f"{len(window)} identical failures within {self._window_s:g} s: {signature}",
            )

    def _trip(self, now: float, reason: str) -> None:
        self._open_until = now + self._open_s
        self._probe_out = False
        self.reason = reason
        self.times_opened += 1
        self._failures.clear()
        log.error("moysklad_circuit_opened", reason=reason, open_s=self._open_s)

    def health(self) -> dict[str, str]:
        until = self.open_until()
        return {
            "circuit": self.state,
            "circuit_reason": self.reason,
            "circuit_until": until.isoformat(timespec="seconds") if until else "",
        }
