"""The hub's exception tree. Every error the hub raises on purpose is a ``HubError``.

::

    HubError
    ├── ConfigError                 bad config.toml / secret; names file, key and what was expected
    ├── StoreError                  the SQLite store refused an operation
    │   ├── DiskFullError           no room for a write (disk or hub.max_database_mb): that
    │   │                           write fails, the daemon stays up and retries later
    │   └── StateUnusableError      at start: the database is damaged, newer than this hub, or
    │                               the state directory is not writable (exit 78)
    ├── StateLockedError            another hubd holds the state directory's lock (exit 78)
    ├── NotFoundError               an id asked about does not exist (run, outbox entry, job)
    ├── InvalidStateError           an operation is not allowed in the current state
    ├── DrainingError               the daemon is shutting down and takes no new work
    ├── BadArgumentError            a control-API request argument is invalid
    ├── RunFailedError              a replenishment run could not complete (reason in message)
    └── ConnectorError              anything that went wrong talking to 1C or MoySklad
        ├── TransientError          worth retrying: timeouts, connection errors, 429, 5xx
        │   └── OutcomeUnknownError the request may have been applied: look up before resending
        ├── PermanentError          never retried: 4xx other than 429, a posting refusal
        └── CircuitOpenError        the connector refuses to call for a while (a TransientError
                                    too, so callers that only split transient/permanent work)

Connector errors carry ``system`` ("1c" or "moysklad"), the HTTP ``status`` if any, the remote's
own ``code`` and ``remote_message`` (the text 1C or MoySklad gave), so an operator sees why.
Connectors translate library exceptions at the edge (``raise TransientError(...) from exc``).
"""

from __future__ import annotations


class HubError(Exception):
    """Root of every error the hub raises on purpose."""


class ConfigError(HubError):
    """A configuration file or secret is missing or invalid.

    ``str(err)`` is one line naming the file, the key and what was expected.
    """

    def __init__(self, path: str, key: str, expected: str) -> None:
        self.path = path
        self.key = key
        self.expected = expected
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {expected}")


class StoreError(HubError):
    """The SQLite store refused an operation."""


class DiskFullError(StoreError):
    """A write found no room (a full filesystem, or the database at ``hub.max_database_mb``).

    ``str(err)`` starts with "disk full:". Only that write fails; writers try again later.
    """


class StateUnusableError(StoreError):
    """The state directory or database cannot be used; an operator must act (exit 78)."""


class StateLockedError(HubError):
    """Another hubd holds the state directory (``<state_dir>/hubd.lock``); one line, the
    holder's PID and the lock file in it."""


class NotFoundError(HubError):
    """An id that was asked about does not exist."""


class InvalidStateError(HubError):
    """The operation is not allowed in the object's current state."""


class DrainingError(HubError):
    """The daemon is shutting down and accepts no new work."""


class BadArgumentError(HubError):
    """A request argument is missing or invalid."""


class RunFailedError(HubError):
    """A run could not complete; the message is the reason shown to operators."""


class ConnectorError(HubError):
    """A call to an external system failed."""

    def __init__(
        self,
        message: str,
        *,
        system: str,
        status: int | None = None,
        code: str | None = None,
        remote_message: str | None = None,
    ) -> None:
        self.system = system
        self.status = status
        self.code = code
        self.remote_message = remote_message
        super().__init__(message)

    def describe(self) -> str:
        """One line for operators: what failed, the HTTP status, the remote's code and text."""
        parts = [f"{self.system}: {self}"]
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.code is not None:
            parts.append(f"code {self.code}")
        if self.remote_message and self.remote_message not in str(self):
            parts.append(self.remote_message)
        return "; ".join(parts)


class TransientError(ConnectorError):
    """Worth retrying later: a timeout, a dropped connection, 429, 5xx."""


class OutcomeUnknownError(TransientError):
    """The request may or may not have been applied; look the document up before resending."""


class PermanentError(ConnectorError):
    """Retrying cannot help: bad request, no rights, a posting refusal."""


class CircuitOpenError(TransientError):
    """The connector's circuit breaker is open; it refuses to call until it cools down."""
