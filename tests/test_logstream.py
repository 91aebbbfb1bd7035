"""Log fan-out, history batching and secret redaction."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import structlog

from daemon.observability.logs import REDACTED, SecretRedactor, configure_logging
from daemon.observability.logstream import LogHub, LogRecord, read_history
from daemon.store import open_database


def _record(n: int, level: str = "info", run_id: str = "") -> LogRecord:
    return LogRecord(float(n), level, f"event_{n}", "test", run_id, "", {"n": n})


async def test_slow_follower_drops_oldest_and_is_told() -> None:
    """A full follower queue loses its oldest events and reports how many on the next one."""
    hub = LogHub(follower_capacity=3)
    hub.bind_loop()
    follower = hub.subscribe()
    for n in range(5):
        hub.publish(_record(n))
    hub.close_followers()
    got = [r async for r in hub.follow(follower)]
    assert [r.event for r in got] == ["event_2", "event_3", "event_4"]
    assert got[0].dropped_before == 2
    assert got[1].dropped_before == 0


async def test_followers_filter_by_level_and_run() -> None:
    """A follower sees only events at or above its level and of its run."""
    hub = LogHub()
    hub.bind_loop()
    follower = hub.subscribe(min_level="warning", run_id="r1")
    hub.publish(_record(1, "info", "r1"))
    hub.publish(_record(2, "error", "r2"))
    hub.publish(_record(3, "error", "r1"))
    hub.close_followers()
    assert [r.event async for r in hub.follow(follower)] == ["event_3"]


async def test_history_then_follow_neither_repeats_nor_misses(tmp_path: Path) -> None:
    """Flushed, unflushed and later events are each delivered exactly once."""
    db = await open_database(tmp_path / "hub.sqlite3")
    try:
        hub = LogHub()
        hub.bind_loop()
        hub.publish(_record(1))
        await hub.flush(db)
        hub.publish(_record(2))  # not flushed yet
        history, follower = await hub.history_then_follow(db, last=10)
        hub.publish(_record(3))
        await hub.flush(db)
        hub.close_followers()
        live = [r.event async for r in hub.follow(follower)]
        assert [r.event for r in history] == ["event_1", "event_2"]
        assert live == ["event_3"]
        stored = await read_history(db, last=10)
        assert [r.event for r in stored] == ["event_1", "event_2", "event_3"]
    finally:
        await db.close()


def test_redactor_scrubs_values_keys_and_nesting() -> None:
    """Known secret values vanish anywhere in an event; sensitive keys are masked."""
    redactor = SecretRedactor(["s3cr3t-value"])
    event = redactor(
        None,
        "info",
        {
            "event": "x",
            "url": "http://u:s3cr3t-value@h/",
            "Authorization": "Basic abc",
            "nested": {"list": ["a s3cr3t-value b"], "token": "t"},
        },
    )
    text = json.dumps(event)
    assert "s3cr3t-value" not in text
    assert event["Authorization"] == REDACTED
    assert event["nested"]["token"] == REDACTED


def test_stdlib_logging_goes_through_the_same_chain() -> None:
    """A standard-library logger's record is rendered as JSON and redacted."""
    stream = io.StringIO()
    hub = LogHub()
    configure_logging(fmt="json", redactor=SecretRedactor(["pa55word-xyz"]), hub=hub, stream=stream)
    try:
        logging.getLogger("aiohttp.client").warning("failed with pa55word-xyz inside")
        structlog.get_logger("t").info("structured_event", password="pa55word-xyz")
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["event"] == f"failed with {REDACTED} inside"
    assert lines[0]["level"] == "warning"
    assert lines[1]["event"] == "structured_event" and lines[1]["password"] == REDACTED
    assert "pa55word-xyz" not in stream.getvalue()


async def test_debug_level_history_does_not_feed_on_itself(tmp_path: Path) -> None:
    """At debug level, writing the history must not log more events about that writing."""
    db = await open_database(tmp_path / "hub.sqlite3")
    hub = LogHub()
    hub.bind_loop()
    configure_logging(level="debug", fmt="json", hub=hub, stream=io.StringIO())
    try:
        structlog.get_logger("t").info("one_event")
        counts = []
        for _ in range(4):
            await hub.flush(db)
            row = await db.fetchone("SELECT COUNT(*) FROM integration_logs")
            assert row is not None
            counts.append(row[0])
        assert counts[-1] == counts[1], counts
    finally:
        logging.getLogger().handlers.clear()
        await db.close()
