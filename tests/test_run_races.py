"""One run per job under concurrency, callers that give up, and watchers that come late:
hubd as a subprocess against both emulators, driven over its real gRPC socket."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from daemon.store import open_database, schedules
from protos.hub.v1 import control_pb2 as pb
from protos.hub.v1 import control_pb2_grpc
from tests.conftest import Sandboxes, base_sections, hubctl, write_config

FINAL = {"delivered", "dead", "discarded"}
#: reconnect at once when the socket appears, so queued calls arrive together
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.min_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 50),
]


def _sections(sandboxes: Sandboxes, tmp_path: Path) -> dict[str, dict[str, Any]]:
    """The sandboxes' config as sections to edit (the emulators' URLs kept)."""
    config = tomllib.loads(sandboxes.config.read_text(encoding="utf-8"))
    return base_sections(tmp_path, config["onec"]["base_url"], config["moysklad"]["base_url"])


def _channel(socket_path: Path) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"unix:{socket_path}", options=FAST_RECONNECT)


def _rows(db_path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return list(conn.execute(sql, params))
    finally:
        conn.close()


def _logged(hub: Any, event: str) -> list[dict[str, Any]]:
    found = []
    for line in hub.stdout.splitlines():
        if f'"event": "{event}"' in line:
            found.append(json.loads(line))
    return found


async def _wait_no_running(db_path: Path, timeout: float = 45) -> None:
    async with asyncio.timeout(timeout):
        while _rows(db_path, "SELECT id FROM runs WHERE status = 'running'"):
            await asyncio.sleep(0.1)


async def _wait_delivered(db_path: Path, timeout: float = 45) -> list[sqlite3.Row]:
    async with asyncio.timeout(timeout):
        while True:
            rows = _rows(db_path, "SELECT run_id, kind, state FROM outbox")
            if rows and all(r["state"] in FINAL for r in rows):
                return rows
            await asyncio.sleep(0.2)


def _this_minute_daily() -> str:
    """A cron (UTC) that fired at the start of the current minute and not again for a day."""
    now = datetime.now(UTC)
    return f"{now.minute} {now.hour} * * *"


async def _owe_a_fire_at_start(db_path: Path, cron: str, zone: str) -> None:
    """Record that the job has followed ``cron`` for 90 s, so it owes the fire at the start of
    this minute the moment the scheduler starts (trigger "schedule", or "catch_up" if the
    minute has just turned)."""
    db = await open_database(db_path)
    try:
        now = time.time()
        await schedules.set_schedule(db, "replenishment", f"{cron}|{zone}", now - 90, now - 90)
    finally:
        await db.close()


def _exists(path: Path) -> bool:
    return path.exists()


async def _burst(socket_path: Path, n: int, *, wait_for_ready: bool = False) -> list[Any]:
    """``n`` concurrent TriggerRun calls on 4 channels, and 3 `hubctl run` at the same time:
    the gRPC replies and hubctl's JSON answers (each {"run": ..., "already_running": ...})."""
    channels = [_channel(socket_path) for _ in range(4)]
    try:
        stubs = [control_pb2_grpc.HubControlStub(c) for c in channels]
        calls = [
            stubs[i % 4].TriggerRun(
                pb.TriggerRunRequest(job="replenishment"),
                timeout=30,
                wait_for_ready=wait_for_ready,
            )
            for i in range(n)
        ]
        replies = asyncio.gather(*calls)
        if wait_for_ready:  # hubctl needs the socket; the calls above wait for it themselves
            async with asyncio.timeout(15):
                while not _exists(socket_path):
                    await asyncio.sleep(0.005)
        ctl = await asyncio.gather(
            *(hubctl(socket_path, "--json", "run", "replenishment") for _ in range(3))
        )
        answered = await replies
    finally:
        for channel in channels:
            await channel.close(None)
    answers: list[Any] = [{"run": r.run.id, "already_running": r.already_running} for r in answered]
    for result in ctl:
        assert result.code == 0, result.err
        reply = json.loads(result.out)
        answers.append({"run": reply["run"]["id"], "already_running": reply["already_running"]})
    return answers


async def test_a_hundred_triggers_hubctl_and_a_scheduled_fire_start_exactly_one_run(
    sandboxes: Sandboxes, hub_factory: Any, tmp_path: Path
) -> None:
    """At start-up 100 TriggerRun calls, 3 `hubctl run` and a due scheduled fire; later 100
    calls and 3 `hubctl run` more: each time one run, which every caller gets, and both
    systems receive one set of documents in all (the second run finds the first's open)."""
    sections = _sections(sandboxes, tmp_path)
    cron = _this_minute_daily()
    sections["jobs.replenishment"].update(cron=cron, timezone="UTC")
    sections["control"]["max_concurrent_rpcs"] = 400  # all 103 callers at once, none refused
    write_config(sandboxes.config, sections)
    db_path = tmp_path / "state" / "hub.sqlite3"
    await _owe_a_fire_at_start(db_path, cron, "UTC")
    sandboxes.onec.latency_s = 0.3  # a run lasts seconds: every caller of a burst meets it

    pending = asyncio.ensure_future(_burst(sandboxes.socket_path, 100, wait_for_ready=True))
    hub = await hub_factory(sandboxes.config, sandboxes.socket_path, **sandboxes.env)
    first = await pending
    await _wait_no_running(db_path)
    runs = _rows(db_path, "SELECT id, trigger, status FROM runs")
    assert len(runs) == 1, [dict(r) for r in runs]
    run_id = runs[0]["id"]
    assert {a["run"] for a in first} == {run_id}
    fires = _rows(
        db_path, "SELECT outcome, run_id, detail FROM schedule_fires WHERE outcome != 'missed'"
    )
    assert len(fires) == 1, [dict(f) for f in fires]
    started_by_a_caller = sum(not a["already_running"] for a in first)
    if runs[0]["trigger"] in ("schedule", "catch_up"):
        assert started_by_a_caller == 0 and fires[0]["run_id"] == run_id
    else:
        assert started_by_a_caller == 1
        assert fires[0]["outcome"] == "skipped" and run_id in fires[0]["detail"]
    assert runs[0]["status"] == "succeeded", hub.stderr[-2000:]
    rows = await _wait_delivered(db_path)
    assert {r["run_id"] for r in rows} == {run_id}

    second = await _burst(sandboxes.socket_path, 100)
    await _wait_no_running(db_path)
    later = _rows(db_path, "SELECT id, status FROM runs WHERE id != ?", (run_id,))
    assert len(later) == 1, [dict(r) for r in later]
    assert {a["run"] for a in second} == {later[0]["id"]}
    assert sum(not a["already_running"] for a in second) == 1
    assert later[0]["status"] == "succeeded", hub.stderr[-2000:]

    rows = await _wait_delivered(db_path)
    transfers = sum(r["kind"] == "onec_transfer_order" for r in rows)
    orders = sum(r["kind"] == "moysklad_customer_order" for r in rows)
    assert transfers >= 1 and orders == 1
    assert {r["run_id"] for r in rows} == {run_id}, "the second run orders nothing again"
    assert len(sandboxes.onec.transfer_orders()) == transfers
    assert len(sandboxes.moysklad.orders()) == orders
    assert len(_logged(hub, "run_started")) == 2
    assert await hub.stop() == 0


async def test_triggers_whose_callers_give_up_within_ms_leave_no_orphan_run(
    sandboxes: Sandboxes, hub_factory: Any
) -> None:
    """60 TriggerRun calls with 0.5–6 ms deadlines: every run they started ends, is logged
    started and finished, and none stays ``running`` after the daemon has settled."""
    hub = await hub_factory(sandboxes.config, sandboxes.socket_path, **sandboxes.env)
    await hub.wait_socket()
    db_path = Path(str(sandboxes.config.parent / "state" / "hub.sqlite3"))
    rng = random.Random(19)
    expired = 0
    async with _channel(sandboxes.socket_path) as channel:
        api = control_pb2_grpc.HubControlStub(channel)
        await api.GetStatus(pb.GetStatusRequest(), timeout=10)  # connected before the clock
        for wave in range(6):
            results = await asyncio.gather(
                *(
                    api.TriggerRun(
                        pb.TriggerRunRequest(job="replenishment", dry_run=True),
                        timeout=rng.uniform(0.0005, 0.006),
                    )
                    for _ in range(10)
                ),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, grpc.aio.AioRpcError):
                    assert result.code() == grpc.StatusCode.DEADLINE_EXCEEDED, result
                    expired += 1
            await asyncio.sleep(0.05 * wave)
    assert expired > 0, "the deadlines were meant to expire"
    await _wait_no_running(db_path, timeout=30)
    runs = _rows(db_path, "SELECT id, status, finished_at FROM runs")
    assert runs, "some trigger must have started a run"
    assert all(r["status"] in ("succeeded", "failed") and r["finished_at"] for r in runs)
    await asyncio.sleep(0.3)  # the last log lines reach stdout
    started = {e["run_id"] for e in _logged(hub, "run_started")}
    finished = {e["run_id"] for e in _logged(hub, "run_finished")}
    assert started == finished == {r["id"] for r in runs}
    assert await hub.stop() == 0


async def _watch(api: Any, run_id: str) -> list[str]:
    kinds = []
    async for event in api.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=60):
        kinds.append(event.kind)
    return kinds


async def test_every_watcher_gets_finished_however_late_it_subscribes(
    sandboxes: Sandboxes, hub_factory: Any, tmp_path: Path
) -> None:
    """200 concurrent WatchRun streams on one run, and 30 more each opened right after its own
    trigger, all end with the run's "finished" event among what they received."""
    sections = _sections(sandboxes, tmp_path)
    sections["control"]["max_concurrent_rpcs"] = 400  # 200 streams at once, none refused
    write_config(sandboxes.config, sections)
    hub = await hub_factory(sandboxes.config, sandboxes.socket_path, **sandboxes.env)
    await hub.wait_socket()
    async with _channel(sandboxes.socket_path) as channel:
        api = control_pb2_grpc.HubControlStub(channel)
        reply = await api.TriggerRun(pb.TriggerRunRequest(job="replenishment", dry_run=True))
        crowd = await asyncio.gather(*(_watch(api, reply.run.id) for _ in range(200)))
        assert all("finished" in kinds for kinds in crowd), [
            k for k in crowd if "finished" not in k
        ][:3]
        for _ in range(30):
            one = await api.TriggerRun(pb.TriggerRunRequest(job="replenishment", dry_run=True))
            kinds = await _watch(api, one.run.id)
            assert "finished" in kinds, kinds
    assert await hub.stop() == 0


async def test_sigterm_mid_run_ends_within_the_budget_and_fails_the_run(
    sandboxes: Sandboxes, hub_factory: Any, tmp_path: Path
) -> None:
    """1C answering after 5 s and a 3 s shutdown budget: SIGTERM mid-run exits 0 within the
    budget, the run is ``failed`` "stopped by shutdown", and it stored no plan or outbox row."""
    sections = _sections(sandboxes, tmp_path)
    sections["hub"]["shutdown_timeout_s"] = 3
    write_config(sandboxes.config, sections)
    hub = await hub_factory(sandboxes.config, sandboxes.socket_path, **sandboxes.env)
    await hub.wait_socket()
    sandboxes.onec.latency_s = 5.0
    result = await hub.ctl("--json", "run", "replenishment")
    assert result.code == 0, result.err
    run_id = json.loads(result.out)["run"]["id"]
    await asyncio.sleep(1.0)  # the run waits on 1C
    began = time.monotonic()
    code = await hub.stop(timeout=20)
    took = time.monotonic() - began
    assert code == 0, hub.stderr[-2000:]
    assert took < 3 + 1.5, took
    db_path = tmp_path / "state" / "hub.sqlite3"
    (run,) = _rows(db_path, "SELECT status, reason, finished_at FROM runs WHERE id = ?", (run_id,))
    assert (run["status"], run["reason"]) == ("failed", "stopped by shutdown")
    assert not _rows(db_path, "SELECT 1 FROM plan_items WHERE run_id = ?", (run_id,))
    assert not _rows(db_path, "SELECT 1 FROM outbox WHERE run_id = ?", (run_id,))
    assert not _logged(hub, "hub_shutdown_timed_out")
    assert _logged(hub, "run_stopped")


async def test_a_running_run_only_the_database_knows_of_is_returned_not_doubled(
    sandboxes: Sandboxes, hub_factory: Any, tmp_path: Path
) -> None:
    """A run row left ``running`` behind the daemon's back (a writer that bypassed the state
    lock) makes a trigger answer "already running" with that run instead of starting one;
    once the row is closed, the next trigger starts a run."""
    hub = await hub_factory(sandboxes.config, sandboxes.socket_path, **sandboxes.env)
    await hub.wait_socket()
    db_path = tmp_path / "state" / "hub.sqlite3"
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute(
            "INSERT INTO runs (id, job, trigger, dry_run, status, started_at)"
            " VALUES ('elsewhere', 'replenishment', 'manual', 0, 'running', ?)",
            (time.time(),),
        )
        first = await hub.ctl("--json", "run", "replenishment")
        assert first.code == 0, first.err
        answer = json.loads(first.out)
        assert answer["already_running"] is True and answer["run"]["id"] == "elsewhere"
        assert _logged(hub, "run_already_running_in_database")
        assert len(_rows(db_path, "SELECT id FROM runs")) == 1
        conn.execute("UPDATE runs SET status = 'failed' WHERE id = 'elsewhere'")
    finally:
        conn.close()
    second = await hub.ctl("--json", "run", "replenishment")
    assert second.code == 0, second.err
    assert json.loads(second.out)["already_running"] is False
    await _wait_no_running(db_path)
    assert await hub.stop() == 0


async def test_a_run_cut_off_by_sigkill_is_closed_at_restart_and_does_not_block_the_next(
    sandboxes: Sandboxes, hub_factory: Any, tmp_path: Path
) -> None:
    """hubd killed mid-run leaves the run ``running``; the next hubd closes it as failed
    "interrupted: hubd stopped" before serving, and a trigger then starts a new run."""
    hub = await hub_factory(sandboxes.config, sandboxes.socket_path, **sandboxes.env)
    await hub.wait_socket()
    sandboxes.onec.latency_s = 30.0
    started = await hub.ctl("--json", "run", "replenishment")
    assert started.code == 0, started.err
    cut = json.loads(started.out)["run"]["id"]
    hub.proc.kill()
    await hub.proc.wait()
    db_path = tmp_path / "state" / "hub.sqlite3"
    assert _rows(db_path, "SELECT status FROM runs WHERE id = ?", (cut,))[0]["status"] == "running"
    sandboxes.onec.latency_s = 0.0
    again = await hub_factory(sandboxes.config, sandboxes.socket_path, **sandboxes.env)
    await again.wait_socket()
    (closed,) = _rows(db_path, "SELECT status, reason FROM runs WHERE id = ?", (cut,))
    assert closed["status"] == "failed"
    assert closed["reason"].startswith("interrupted: hubd stopped")
    fresh = await again.ctl("--json", "run", "replenishment")
    assert fresh.code == 0, fresh.err
    answer = json.loads(fresh.out)
    assert answer["already_running"] is False and answer["run"]["id"] != cut
    await _wait_no_running(db_path)
    assert await again.stop() == 0


async def test_a_shutdown_held_past_its_budget_says_so(
    sandboxes: Sandboxes, hub_factory: Any, tmp_path: Path
) -> None:
    """SIGTERM mid-run while another process holds the database's write lock: recording the
    stopped run cannot finish within a 1 s budget, so hub_shutdown_timed_out is logged; once
    the lock is gone hubd records the run failed "stopped by shutdown" and exits."""
    sections = _sections(sandboxes, tmp_path)
    sections["hub"]["shutdown_timeout_s"] = 1
    write_config(sandboxes.config, sections)
    hub = await hub_factory(sandboxes.config, sandboxes.socket_path, **sandboxes.env)
    await hub.wait_socket()
    sandboxes.onec.latency_s = 30.0
    started = await hub.ctl("--json", "run", "replenishment")
    assert started.code == 0, started.err
    run_id = json.loads(started.out)["run"]["id"]
    db_path = tmp_path / "state" / "hub.sqlite3"
    blocker = sqlite3.connect(db_path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        hub.proc.terminate()
        try:
            async with asyncio.timeout(4):  # SQLite waits 5 s for a lock; the budget is 1 s
                while not _logged(hub, "hub_shutdown_timed_out"):
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(hub.stdout[-4000:]) from None
    finally:
        blocker.close()
    assert await hub.stop(timeout=15) == 0, hub.stderr[-2000:]
    assert _logged(hub, "hub_shutdown_timed_out")[0]["budget_s"] == 1
    (run,) = _rows(db_path, "SELECT status, reason FROM runs WHERE id = ?", (run_id,))
    assert (run["status"], run["reason"]) == ("failed", "stopped by shutdown")
