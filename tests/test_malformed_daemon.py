"""hubd end to end against an endpoint that answers garbage (issue #9): it stays up.

hubd runs as a subprocess against both emulators, one of them behind ``tests.hostile``'s proxy.
While one endpoint answers garbage, a run fails with a reason that names the system and the
problem, the outbox holds nothing from it, and ``hubctl status``/``health`` still answer; with
the garbage switched off the next run succeeds and its documents are delivered.
"""

from __future__ import annotations

import asyncio
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import Sandboxes, base_sections, write_config
from tests.hostile import HTML_PAGE, Edit, Replace, Spoiler, Truncate, hostile, put

FINAL = {"delivered", "dead", "discarded"}
DELIVERY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Garbage:
    system: str  # "1c" or "moysklad": the emulator behind the proxy
    route: str
    spoiler: Spoiler
    problem: str  # a word the run's reason must carry besides the system


CASES = [
    pytest.param(
        Garbage(
            "1c",
            rf"^GET [^?]*/{quote('AccumulationRegister_ТоварыНаСкладах')}",
            Edit(put(None, "value")),
            "value",
        ),
        id="1c-stock-without-value",
    ),
    pytest.param(
        Garbage(
            "moysklad",
            r"^GET [^?]*/entity/product\b",
            Replace(body=HTML_PAGE, content_type="text/html"),
            "entity/product",
        ),
        id="moysklad-products-html",
    ),
    pytest.param(
        Garbage("moysklad", r"^GET [^?]*/entity/customerorder\b", Truncate(0.5), "customerorder"),
        id="moysklad-orders-truncated-gzip",
    ),
]


def proxied_config(sandboxes: Sandboxes, system: str, proxy_url: str, path: Path) -> Path:
    """The sandboxes' config with ``system`` reached through the proxy and quick retries."""
    current = tomllib.loads(sandboxes.config.read_text(encoding="utf-8"))
    onec_url = current["onec"]["base_url"]
    moysklad_url = current["moysklad"]["base_url"]
    if system == "1c":
        onec_url = proxy_url
    else:
        moysklad_url = proxy_url
    sections = base_sections(path.parent, onec_url, moysklad_url)
    sections["onec"].update({"retry_base_s": 0.05, "retry_cap_s": 0.1})
    sections["moysklad"].update({"retry_base_s": 0.05})
    return write_config(path, sections)


async def latest_run(hub: Any) -> dict[str, Any]:
    listing = json.loads((await hub.ctl("--json", "runs", "-n", "1")).out)
    run: dict[str, Any] = listing["runs"][0]
    return run


async def outbox_entries(hub: Any) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads((await hub.ctl("--json", "outbox")).out)["entries"]
    return entries


async def wait_final(hub: Any, run_id: str) -> list[dict[str, Any]]:
    async with asyncio.timeout(DELIVERY_TIMEOUT_S):
        while True:
            mine = [e for e in await outbox_entries(hub) if e["run_id"] == run_id]
            if mine and all(e["state"] in FINAL for e in mine):
                return mine
            await asyncio.sleep(0.3)


@pytest.mark.parametrize("garbage", CASES)
async def test_hubd_survives_a_garbage_answer_and_the_next_clean_run_succeeds(
    sandboxes: Sandboxes, hub_factory: Any, tmp_path: Path, garbage: Garbage
) -> None:
    """Garbage fails the run with a clear reason, enqueues nothing; the next clean run delivers."""
    upstream_of = {
        "1c": tomllib.loads(sandboxes.config.read_text(encoding="utf-8"))["onec"]["base_url"],
        "moysklad": tomllib.loads(sandboxes.config.read_text(encoding="utf-8"))["moysklad"][
            "base_url"
        ],
    }
    async with hostile(upstream_of[garbage.system]) as (proxy, proxy_url):
        config = proxied_config(sandboxes, garbage.system, proxy_url, tmp_path / "hostile.toml")
        hub = await hub_factory(config, sandboxes.socket_path, **sandboxes.env)
        await hub.wait_socket()

        proxy.arm(garbage.spoiler, garbage.route)
        result = await hub.ctl("run", "replenishment", "--follow", timeout=120)
        assert result.code != 0, result.out
        assert proxy.spoiled > 0, "the garbage was never served"
        failed = await latest_run(hub)
        assert failed["status"] == "failed", failed
        assert [e for e in await outbox_entries(hub) if e["run_id"] == failed["id"]] == []
        for command in ("status", "health"):
            answered = await hub.ctl(command)
            assert answered.code == 0, (command, answered.out, answered.err)
        assert hub.proc.returncode is None, hub.stderr[-2000:]

        proxy.disarm()
        result = await hub.ctl("run", "replenishment", "--follow", timeout=120)
        assert result.code == 0, (result.out, result.err, hub.stderr[-2000:])
        clean = await latest_run(hub)
        assert clean["status"] == "succeeded" and clean["id"] != failed["id"]
        delivered = await wait_final(hub, clean["id"])
        assert all(e["state"] == "delivered" for e in delivered), delivered
        assert len(sandboxes.onec.transfer_orders()) == sum(
            e["kind"] == "onec_transfer_order" for e in delivered
        )
        assert len(sandboxes.moysklad.orders()) == sum(
            e["kind"] == "moysklad_customer_order" for e in delivered
        )
        assert await hub.stop() == 0, hub.stderr[-6000:]
    # Last, so that a lost reason does not hide the checks above.
    reason = failed["reason"]
    assert not reason.startswith("internal error"), reason
    assert garbage.system in reason.lower(), reason
    assert garbage.problem in reason, reason
