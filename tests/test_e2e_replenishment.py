"""The whole job end to end: hubd as a subprocess against both emulators with the demo data."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from tests.conftest import Sandboxes

FINAL = {"delivered", "dead", "discarded"}


async def _start(sandboxes: Sandboxes, hub_factory: Any) -> Any:
    hub = await hub_factory(sandboxes.config, sandboxes.socket_path, **sandboxes.env)
    await hub.wait_socket()
    return hub


async def _run(hub: Any, *extra: str) -> dict[str, Any]:
    result = await hub.ctl("run", "replenishment", "--follow", *extra, timeout=120)
    assert result.code == 0, (result.out, result.err, hub.stderr[-2000:])
    listing = json.loads((await hub.ctl("--json", "runs", "-n", "1")).out)
    run_id = listing["runs"][0]["id"]
    shown = await hub.ctl("--json", "runs", "show", run_id)
    assert shown.code == 0, shown.err
    detail: dict[str, Any] = json.loads(shown.out)
    return detail


async def _wait_delivered(hub: Any, timeout: float = 60) -> list[dict[str, Any]]:
    async with asyncio.timeout(timeout):
        while True:
            entries: list[dict[str, Any]] = json.loads((await hub.ctl("--json", "outbox")).out)[
                "entries"
            ]
            if entries and all(e["state"] in FINAL for e in entries):
                return entries
            await asyncio.sleep(0.3)


def _dec(text: str) -> Decimal:
    return Decimal(text) if text else Decimal(0)


async def test_plan_matches_the_data_set_case_by_case_and_documents_are_delivered(
    sandboxes: Sandboxes, hub_factory: Any
) -> None:
    """hubctl run --follow, then the plan equals the data set's expected outcome for every item,
    the outbox holds exactly the expected documents, and both systems receive them once."""
    hub = await _start(sandboxes, hub_factory)
    detail = await _run(hub)
    assert detail["run"]["status"] == "succeeded"
    expected = sandboxes.dataset.expected
    by_key = {item["item_key"]: item for item in detail["items"]}
    assert set(expected) <= set(by_key)
    cases_seen = set()
    for key, outcome in expected.items():
        item = by_key[key]
        takes = {d["donor"]: _dec(d["take"]) for d in item["donors"] if _dec(d["take"])}
        expected_takes = {k: v for k, v in outcome.takes.items() if v}
        assert takes == expected_takes, (outcome.case, item)
        assert _dec(item["external"]) == outcome.external, (outcome.case, item)
        assert _dec(item["unmapped"]) == outcome.unmapped, (outcome.case, item)
        cases_seen.add(outcome.case)
    assert len(cases_seen) >= 12

    # the outbox: one transfer per donor that gives something, one МойСклад order
    donors_giving = {d for o in expected.values() for d, q in o.takes.items() if q}
    external_items = [k for k, o in expected.items() if o.external]
    entries = await _wait_delivered(hub)
    kinds = sorted(e["kind"] for e in entries)
    assert kinds == sorted(
        ["onec_transfer_order"] * len(donors_giving)
        + (["moysklad_customer_order"] if external_items else [])
    )
    assert all(e["state"] == "delivered" for e in entries), entries

    # both systems hold exactly those documents, posted, with the planned quantities
    orders_1c = sandboxes.onec.transfer_orders()
    assert len(orders_1c) == len(donors_giving)
    assert all(o["Posted"] for o in orders_1c)
    moved = {
        (o["sender"], line["item_key"]): line["quantity"] for o in orders_1c for line in o["lines"]
    }
    for key, outcome in expected.items():
        for donor, qty in outcome.takes.items():
            if qty:
                assert moved[(sandboxes.dataset.warehouse_key(donor), key)] == qty
    orders_ms = sandboxes.moysklad.orders()
    assert len(orders_ms) == 1
    assert len(orders_ms[0]["positions"]) == len(external_items)

    # a second run while those documents are open orders nothing new for the same deficit
    second = await _run(hub)
    assert second["run"]["status"] == "succeeded"
    assert second["run"]["counts"].get("documents", "0") in ("0", 0)
    again = {item["item_key"]: item for item in second["items"]}
    for key, outcome in expected.items():
        if outcome.takes or outcome.external:
            assert not _dec(again[key]["external"]), again[key]
            assert not any(_dec(d["take"]) for d in again[key]["donors"]), again[key]
    assert len(sandboxes.onec.transfer_orders()) == len(donors_giving)
    assert len(sandboxes.moysklad.orders()) == 1
    # the first run planned while МойСклад's products were read; the second could not (its
    # open МойСклад order is incoming stock only the products attribute to items), and both
    # plans are exact (checked above)
    assert await _planned_before_products(hub, detail["run"]["id"])
    assert not await _planned_before_products(hub, second["run"]["id"])
    assert await hub.stop() == 0


async def _planned_before_products(hub: Any, run_id: str) -> bool:
    logs = await hub.ctl("--json", "logs", "-n", "500", "--run", run_id)
    events = {json.loads(line)["event"] for line in logs.out.splitlines()}
    assert "run_finished" in events, events
    return "run_planning_before_products" in events


async def test_dry_run_stores_a_plan_and_touches_no_outbox(
    sandboxes: Sandboxes, hub_factory: Any
) -> None:
    """--dry-run computes and stores the plan; nothing is enqueued or created."""
    hub = await _start(sandboxes, hub_factory)
    detail = await _run(hub, "--dry-run")
    assert detail["run"]["dry_run"] is True and detail["run"]["status"] == "succeeded"
    assert detail["items"], "the plan is stored"
    assert json.loads((await hub.ctl("--json", "outbox")).out)["entries"] == []
    assert sandboxes.onec.transfer_orders() == [] and sandboxes.moysklad.orders() == []
    assert await hub.stop() == 0


async def test_failed_read_fails_the_run_and_enqueues_nothing(
    sandboxes: Sandboxes, hub_factory: Any
) -> None:
    """A permanent error reading 1C (credentials refused) fails the run with 1C's reason."""
    sandboxes.onec.password = "changed-by-the-1c-admin"
    hub = await _start(sandboxes, hub_factory)
    result = await hub.ctl("run", "replenishment", "--follow", timeout=120)
    assert result.code == 1
    runs = json.loads((await hub.ctl("--json", "runs")).out)["runs"]
    assert runs[0]["status"] == "failed"
    assert "401" in runs[0]["reason"]
    assert json.loads((await hub.ctl("--json", "outbox")).out)["entries"] == []
    assert await hub.stop() == 0


async def test_failure_among_concurrent_reads_keeps_the_remote_reason(
    sandboxes: Sandboxes, hub_factory: Any
) -> None:
    """МойСклад refusing the token while 1C is read concurrently fails the run with
    МойСклад's own reason, not a generic internal error."""
    sandboxes.moysklad.issue_token("hub@bisnesmedia")  # revokes the hub's token
    hub = await _start(sandboxes, hub_factory)
    result = await hub.ctl("run", "replenishment", "--follow", timeout=120)
    assert result.code == 1
    run = json.loads((await hub.ctl("--json", "runs")).out)["runs"][0]
    assert run["status"] == "failed"
    assert run["reason"].startswith("moysklad: ") and "401" in run["reason"], run["reason"]
    assert json.loads((await hub.ctl("--json", "outbox")).out)["entries"] == []
    assert await hub.stop() == 0


async def test_unknown_warehouse_fails_the_run_by_name_while_items_are_read(
    sandboxes: Sandboxes, hub_factory: Any
) -> None:
    """A donor 1C does not know fails the run with a reason naming it, although the items were
    already being read alongside, and nothing is enqueued."""
    text = sandboxes.config.read_text(encoding="utf-8")
    sandboxes.config.write_text(text.replace('"Контейнер"', '"Контейнер «Север»"'), "utf-8")
    hub = await _start(sandboxes, hub_factory)
    result = await hub.ctl("run", "replenishment", "--follow", timeout=120)
    assert result.code == 1
    run = json.loads((await hub.ctl("--json", "runs")).out)["runs"][0]
    assert run["status"] == "failed" and "Контейнер «Север»" in run["reason"], run["reason"]
    assert json.loads((await hub.ctl("--json", "outbox")).out)["entries"] == []
    assert await hub.stop() == 0


async def test_follow_streams_the_phases_in_order_with_their_counts(
    sandboxes: Sandboxes, hub_factory: Any
) -> None:
    """hubctl --json run --dry-run --follow streams each phase once, in order, with the counts
    known then, and ends with one finished event; the stored run keeps every phase's duration."""
    hub = await _start(sandboxes, hub_factory)
    result = await hub.ctl("--json", "run", "replenishment", "--dry-run", "--follow", timeout=120)
    assert result.code == 0, (result.out, result.err)
    events = [json.loads(line) for line in result.out.splitlines() if line.strip()]
    phases = [e for e in events if e["kind"] == "phase"]
    assert [e["phase"] for e in phases] == [
        "resolve warehouses",
        "read 1C and МойСклад",
        "match МойСклад products",
        "plan",
        "store plan",
    ]
    assert phases[0]["counts"] == {"warehouses": "3"}
    live_items = [i for i in sandboxes.dataset.items if not i.is_folder and not i.deletion_mark]
    assert phases[2]["counts"] == {"items": str(len(live_items))}
    assert set(phases[3]["counts"]) == {"items", "norms", "products_matched"}
    assert phases[4]["counts"]["documents"] == "0"  # a dry run creates nothing
    assert events[-1]["kind"] == "finished" and [e["kind"] for e in events].count("finished") == 1
    final = events[-1]["run"]
    assert final["status"] == "succeeded" and final["dry_run"] is True
    assert [p["name"] for p in final["phases"]] == [e["phase"] for e in phases]
    assert all(p["seconds"] >= 0 for p in final["phases"])
    assert {k: v for k, v in final["counts"].items() if k in phases[4]["counts"]} == phases[4][
        "counts"
    ]


async def test_plans_older_than_the_retention_are_pruned_and_runs_kept(
    sandboxes: Sandboxes, hub_factory: Any, tmp_path: Path
) -> None:
    """After a run, the per-item plans of runs older than plan_retention_days are removed: the
    old run is still listed with its counts, runs show says its plan is no longer kept, and the
    new run's plan is whole."""
    hub = await _start(sandboxes, hub_factory)
    old = await _run(hub, "--dry-run")
    old_id = old["run"]["id"]
    assert await hub.stop() == 0
    database = tmp_path / "state" / "hub.sqlite3"
    with sqlite3.connect(database) as conn:  # the old run happened 91 days ago
        conn.execute("UPDATE runs SET started_at = started_at - 91 * 86400 WHERE id = ?", (old_id,))
    hub = await _start(sandboxes, hub_factory)
    new = await _run(hub, "--dry-run")
    assert len(new["items"]) == len(old["items"]) > 0
    listed = json.loads((await hub.ctl("--json", "runs")).out)["runs"]
    assert [r["id"] for r in listed] == [new["run"]["id"], old_id]
    shown = json.loads((await hub.ctl("--json", "runs", "show", old_id)).out)
    assert shown.get("items", []) == [] and shown["run"]["counts"] == old["run"]["counts"]
    human = await hub.ctl("runs", "show", old_id)
    assert human.code == 0 and "no longer kept" in human.out, human.out
    assert await hub.stop() == 0
    with sqlite3.connect(database) as conn:
        kept = conn.execute("SELECT DISTINCT run_id FROM plan_items").fetchall()
    assert kept == [(new["run"]["id"],)]


@pytest.mark.parametrize(
    ("server", "setting", "form"),
    [
        ("guide", "auto", "guide"),
        ("doubled", "auto", "doubled"),
        ("both", "auto", "guide"),
        ("guide", "query", "query"),
    ],
)
async def test_two_runs_in_each_condition_form_behind_iis_limits(
    sandboxes: Sandboxes, hub_factory: Any, server: str, setting: str, form: str
) -> None:
    """Against a server reading the Condition one way (IIS's 260-character segments and
    2048-byte query strings enforced), a run delivers its documents and a second run, with
    those orders open in 1C, creates none; the form used is the one the server takes."""
    box = sandboxes.onec
    box.condition_form = server
    assert (box.max_url_segment_chars, box.max_query_string_bytes) == (260, 2048)
    text = sandboxes.config.read_text(encoding="utf-8")
    pinned = text.replace('username = "hub"\n', f'username = "hub"\ncondition_form = "{setting}"\n')
    sandboxes.config.write_text(pinned, encoding="utf-8")
    hub = await _start(sandboxes, hub_factory)
    first = await _run(hub)
    assert first["run"]["status"] == "succeeded"
    documents = int(first["run"]["counts"].get("documents", "0"))
    entries = await _wait_delivered(hub)
    assert documents > 0 and all(e["state"] == "delivered" for e in entries), entries
    orders = len(box.transfer_orders())
    assert orders > 0
    second = await _run(hub)
    assert second["run"]["status"] == "succeeded"
    assert second["run"]["counts"].get("documents", "0") in ("0", 0), second["run"]["counts"]
    assert len(box.transfer_orders()) == orders and len(sandboxes.moysklad.orders()) == 1
    assert box.requests_by_kind["iis_400"] == 0 and box.requests_by_kind["iis_404"] == 0
    calls = [unquote(r) for r in box.raw_requests if "/Balance" in r]
    shapes = {"guide": "eq guid'", "doubled": "eq guid''", "query": "/Balance?Condition="}
    assert calls and all(shapes[form] in call for call in calls[-3:])
    logs = await hub.ctl("--json", "logs", "-n", "2000")
    chosen = [
        json.loads(event["data_json"])["form"]
        for event in map(json.loads, logs.out.splitlines())
        if event["event"] == "onec_condition_form"
    ]
    assert chosen == [form], chosen
    assert await hub.stop() == 0
