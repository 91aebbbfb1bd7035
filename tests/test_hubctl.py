"""Every hubctl command as a subprocess against a running hubd: human and --json output, and
the documented exit statuses (0 ok, 1 failed, 2 usage, 69 unreachable)."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path
from typing import Any

from tests.conftest import Sandboxes


async def _hub(sandboxes: Sandboxes, hub_factory: Any) -> Any:
    hub = await hub_factory(sandboxes.config, sandboxes.socket_path, **sandboxes.env)
    await hub.wait_socket()
    return hub


async def _delivered(hub: Any) -> list[dict[str, Any]]:
    async with asyncio.timeout(60):
        while True:
            entries: list[dict[str, Any]] = json.loads((await hub.ctl("--json", "outbox")).out)[
                "entries"
            ]
            if entries and all(e["state"] == "delivered" for e in entries):
                return entries
            await asyncio.sleep(0.3)


async def test_every_command_human_and_json(
    sandboxes: Sandboxes, hub_factory: Any, tmp_path: Path
) -> None:
    """status, health, logs, run, runs, runs show (+CSV), outbox, schedules, check, reload."""
    hub = await _hub(sandboxes, hub_factory)

    run = await hub.ctl("run", "replenishment", "--follow", timeout=120)
    assert run.code == 0, run.err
    assert "▸" in run.out and "succeeded" in run.out

    runs = json.loads((await hub.ctl("--json", "runs")).out)["runs"]
    run_id = runs[0]["id"]
    human_runs = await hub.ctl("runs")
    assert run_id in human_runs.out and "succeeded" in human_runs.out

    await _delivered(hub)
    show = await hub.ctl("runs", "show", run_id, "--csv", str(tmp_path / "plan.csv"))
    assert show.code == 0, show.err
    assert "Plan (" in show.out and "Documents:" in show.out and "delivered" in show.out
    with (tmp_path / "plan.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and {"code", "article", "reason", "from Бестужевых"} <= set(rows[0])
    detail = json.loads((await hub.ctl("--json", "runs", "show", run_id)).out)
    assert all(d["number"] for d in detail["documents"])

    status = await hub.ctl("status")
    assert status.code == 0 and "Last runs:" in status.out and "replenishment" in status.out
    status_json = json.loads((await hub.ctl("--json", "status")).out)
    assert status_json["outbox_depth"]["delivered"] == str(len(detail["documents"]))

    health = await hub.ctl("--json", "health")
    assert json.loads(health.out) == {"status": "SERVING"}

    logs = await hub.ctl("--json", "logs", "-n", "500", "--run", run_id)
    events = [json.loads(line) for line in logs.out.splitlines()]
    assert {"run_started", "run_finished"} <= {e["event"] for e in events}
    assert all(e["run_id"] == run_id for e in events)
    errors_only = await hub.ctl("logs", "-n", "50", "--level", "error")
    assert errors_only.code == 0

    outbox = await hub.ctl("outbox")
    assert "1C transfer" in outbox.out and "delivered" in outbox.out
    first = json.loads((await hub.ctl("--json", "outbox", "--state", "delivered")).out)["entries"]
    shown = await hub.ctl("outbox", "show", first[0]["id"])
    assert "idempotency key" in shown.out
    assert "Ref_Key" in shown.out or "syncId" in shown.out

    schedules = await hub.ctl("schedules")
    assert "0 9 * * 1-5" in schedules.out and "Europe/Moscow" in schedules.out
    nxt = json.loads((await hub.ctl("--json", "schedules", "next", "replenishment", "-n", "5")).out)
    assert len(nxt["fires_ms"]) == 5
    paused = json.loads((await hub.ctl("--json", "schedules", "pause", "replenishment")).out)
    assert paused["paused"] is True
    resumed = await hub.ctl("schedules", "resume", "replenishment")
    assert resumed.code == 0 and "resumed" in resumed.out

    check = await hub.ctl("check", timeout=120)
    assert check.code == 0, check.out + check.err
    assert "1c" in check.out and "moysklad" in check.out and "FAIL" not in check.out

    reload = json.loads((await hub.ctl("--json", "reload")).out)
    assert reload == {"ok": True, "error": "", "changed": []}
    assert await hub.stop() == 0


async def test_error_exit_statuses(sandboxes: Sandboxes, hub_factory: Any) -> None:
    """NOT_FOUND and wrong states exit 1, bad arguments 2, each with one line on stderr."""
    hub = await _hub(sandboxes, hub_factory)
    cases = [
        (("runs", "show", "no-such-run"), 1, "no run with id"),
        (("outbox", "show", "999"), 1, "999"),
        (("outbox", "retry", "999"), 1, "999"),
        (("run", "nightly"), 1, "no job named 'nightly'"),
        (("schedules", "pause", "nightly"), 1, "nightly"),
        (("outbox", "show", "0"), 2, "positive"),
        (("outbox", "--state", "lost"), 2, "state must be one of"),
        (("schedules", "next", "replenishment", "-n", "0"), 2, "at least 1"),
        (("logs", "-n", "-1"), 2, "0 or more"),
        (("outbox", "discard", "1"), 2, "--reason"),
        (("frobnicate",), 2, "invalid choice"),
    ]
    for args, code, text in cases:
        result = await hub.ctl(*args)
        assert result.code == code, (args, result.code, result.out, result.err)
        assert text in result.err, (args, result.err)
        assert "Traceback" not in result.err
    assert await hub.stop() == 0


async def _dead_order(sandboxes: Sandboxes, hub_factory: Any) -> tuple[Any, str, Any]:
    """Run with the counterparty gone from МойСклад: the order is refused and goes dead."""
    agents = sandboxes.moysklad._entities["counterparty"]
    agent_id, agent_row = next(iter(agents.items()))
    del agents[agent_id]
    hub = await _hub(sandboxes, hub_factory)
    run = await hub.ctl("run", "replenishment", "--follow", timeout=120)
    assert run.code == 0, run.err
    async with asyncio.timeout(60):
        while True:
            dead = json.loads((await hub.ctl("--json", "outbox", "--state", "dead")).out)["entries"]
            if dead:
                break
            await asyncio.sleep(0.3)
    assert dead[0]["kind"] == "moysklad_customer_order"
    assert "ООО «Поставщик»" in dead[0]["last_error"], dead[0]
    return hub, str(dead[0]["id"]), (agents, agent_id, agent_row)


async def test_dead_document_retried_after_the_cause_is_fixed(
    sandboxes: Sandboxes, hub_factory: Any
) -> None:
    """A refused order goes dead with the reason; after the fix, retry delivers it once."""
    hub, dead_id, (agents, agent_id, agent_row) = await _dead_order(sandboxes, hub_factory)
    assert sandboxes.moysklad.orders() == []
    agents[agent_id] = agent_row
    retried = await hub.ctl("--json", "outbox", "retry", dead_id)
    assert retried.code == 0, retried.err
    assert json.loads(retried.out)["state"] == "pending"
    async with asyncio.timeout(60):
        while json.loads((await hub.ctl("--json", "outbox", "show", dead_id)).out)["state"] != (
            "delivered"
        ):
            await asyncio.sleep(0.3)
    assert len(sandboxes.moysklad.orders()) == 1
    again = await hub.ctl("outbox", "retry", dead_id)
    assert again.code == 1 and "delivered" in again.err
    assert await hub.stop() == 0


async def test_dead_document_discarded_stays_undelivered(
    sandboxes: Sandboxes, hub_factory: Any
) -> None:
    """discard keeps the entry with its reason; it is never delivered nor retried."""
    hub, dead_id, _ = await _dead_order(sandboxes, hub_factory)
    discarded = await hub.ctl("outbox", "discard", dead_id, "--reason", "ordered by phone")
    assert discarded.code == 0, discarded.err
    assert "discarded" in discarded.out and "ordered by phone" in discarded.out
    retry = await hub.ctl("outbox", "retry", dead_id)
    assert retry.code == 1, retry.out
    status = json.loads((await hub.ctl("--json", "runs")).out)["runs"][0]
    assert status["delivery"] == "delivered"  # the rest was delivered; discarded counts as done
    assert sandboxes.moysklad.orders() == []
    assert await hub.stop() == 0
