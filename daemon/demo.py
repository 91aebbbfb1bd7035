"""``hubd demo``: the hub doing its real job against the built-in sandbox emulators.

Starts both emulators on loopback ports with the demo data set, starts the daemon on a state
directory with a config pointing at them, triggers a replenishment run through the control API
and follows it, waits until the outbox has delivered every document, and prints a summary a
newcomer understands. Then it keeps running until Ctrl-C (or exits, with ``--once``).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

import grpc

from daemon.app import Hub
from daemon.config import load_config
from daemon.sandbox.dataset import DONOR_NAMES, TARGET_NAME, DemoDataset, build_demo_dataset
from daemon.sandbox.moysklad_emulator import MoySkladSandbox, run_moysklad_sandbox
from daemon.sandbox.onec_emulator import OneCSandbox, run_onec_sandbox
from protos.hub.v1 import control_pb2 as pb
from protos.hub.v1 import control_pb2_grpc

FINAL = {"delivered", "dead", "discarded"}

MS_ORGANIZATION = "ООО «Бизнесмедиа»"
MS_AGENT = "ООО «Поставщик»"
MS_STORE = "Основной склад"


def demo_config_text(state_dir: Path, onec_url: str, moysklad_url: str) -> str:
    donors = ", ".join(f'"{name}"' for name in DONOR_NAMES)
    return f"""# Written by `hubd demo`: the hub against its built-in sandbox emulators.
[hub]
state_dir = "{state_dir}"
shutdown_timeout_s = 10

[control]
socket_path = "{state_dir / "hubd.sock"}"

[logging]
level = "info"
format = "json"

[onec]
base_url = "{onec_url}"
username = "hub"
request_timeout_s = 30

[moysklad]
base_url = "{moysklad_url}"
organization = "{MS_ORGANIZATION}"
agent = "{MS_AGENT}"
store = "{MS_STORE}"
request_timeout_s = 30

[[replenishment.targets]]
warehouse = "{TARGET_NAME}"
donors = [{donors}]

[outbox]
interval_s = 5
retry_base_s = 1
retry_cap_s = 10

[jobs.replenishment]
cron = "0 9 * * 1-5"
timezone = "Europe/Moscow"
"""


def _qty(value: str | Decimal) -> str:
    number = Decimal(value) if value else Decimal(0)
    normal = number.normalize()
    return f"{normal:f}" if normal == normal.to_integral() else str(normal)


class DemoPrinter:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)


@dataclass
class DemoSandboxes:
    """Both emulators with the demo data set and fresh random credentials."""

    dataset: DemoDataset
    onec: OneCSandbox
    moysklad: MoySkladSandbox
    onec_password: str
    moysklad_token: str

    @property
    def environ(self) -> dict[str, str]:
        """The secrets as hubd reads them from its environment."""
        return {"HUB_ONEC_PASSWORD": self.onec_password, "HUB_MOYSKLAD_TOKEN": self.moysklad_token}

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[tuple[str, str]]:
        """Serve both on loopback ports; yields (1C base URL, МойСклад base URL)."""
        async with (
            run_onec_sandbox(self.onec) as onec_url,
            run_moysklad_sandbox(self.moysklad) as moysklad_url,
        ):
            yield onec_url, moysklad_url


def demo_sandboxes(items: int = 300, seed: int = 42) -> DemoSandboxes:
    dataset = build_demo_dataset(n_items=items, seed=seed)
    # fresh random credentials: nothing secret is ever written to the state directory
    onec_password = secrets.token_urlsafe(12)
    moysklad_token = secrets.token_hex(20)
    return DemoSandboxes(
        dataset,
        OneCSandbox(dataset, username="hub", password=onec_password),
        MoySkladSandbox(
            dataset.moysklad_products,
            organization=MS_ORGANIZATION,
            agent=MS_AGENT,
            store=MS_STORE,
            token=moysklad_token,
        ),
        onec_password,
        moysklad_token,
    )


async def wait_ready(api: control_pb2_grpc.HubControlAsyncStub, serve: asyncio.Task[int]) -> None:
    """Until hubd (running as the task ``serve``) answers GetStatus."""
    async with asyncio.timeout(60):
        while True:
            if serve.done():
                serve.result()
                raise RuntimeError("hubd stopped before it was ready")
            with contextlib.suppress(grpc.aio.AioRpcError):
                await api.GetStatus(pb.GetStatusRequest(), timeout=2)
                return
            await asyncio.sleep(0.1)


async def _follow(api: control_pb2_grpc.HubControlAsyncStub, run_id: str, say: DemoPrinter) -> None:
    async for event in api.WatchRun(pb.WatchRunRequest(run_id=run_id)):
        if event.kind == "phase":
            counts = ", ".join(f"{k} {v}" for k, v in sorted(event.counts.items()))
            say(f"  ▸ {event.phase}" + (f" ({counts})" if counts else ""))
        elif event.kind == "finished":
            reason = f": {event.run.reason}" if event.run.reason else ""
            say(f"  ■ run {event.run.status}{reason}")
        elif event.kind == "document":
            say(f"  · {event.message}")


async def _wait_delivered(api: control_pb2_grpc.HubControlAsyncStub, run_id: str) -> pb.RunDetail:
    async with asyncio.timeout(180):
        while True:
            detail = await api.GetRun(pb.GetRunRequest(run_id=run_id))
            if all(d.state in FINAL for d in detail.documents):
                return detail
            await asyncio.sleep(0.3)


def summarize(detail: pb.RunDetail, say: DemoPrinter) -> dict[str, Any]:
    """Print the summary; returns the same figures for tests."""
    items = list(detail.items)
    below = [i for i in items if i.decision not in ("ok", "no_norm")]
    moved: dict[str, list[pb.PlanItem]] = {}
    for item in below:
        for donor in item.donors:
            if Decimal(donor.take or "0") > 0:
                moved.setdefault(donor.donor, []).append(item)
    external = [i for i in below if Decimal(i.external or "0") > 0]
    unmapped = [i for i in below if Decimal(i.unmapped or "0") > 0]
    docs = list(detail.documents)
    say()
    say("═" * 72)
    say(f"Replenishment of «{TARGET_NAME}» — run {detail.run.id}")
    say("═" * 72)
    say(f"{len(items)} items analysed; {len(below)} below their minimum.")
    for donor_name, lines in moved.items():
        units = sum(
            (Decimal(d.take) for i in lines for d in i.donors if d.donor == donor_name), Decimal(0)
        )
        numbers = [
            d.number for d in docs if d.kind == "onec_transfer_order" and donor_name in d.summary
        ]
        say(
            f"• Moved from «{donor_name}»: {len(lines)} items, {_qty(units)} units — "
            f"1C «Заказ на перемещение» № {', '.join(numbers) or '?'}"
        )
    if external:
        units = sum((Decimal(i.external) for i in external), Decimal(0))
        numbers = [d.number for d in docs if d.kind == "moysklad_customer_order"]
        say(
            f"• Ordered in МойСклад: {len(external)} items, {_qty(units)} units — "
            f"«Заказ покупателя» № {', '.join(numbers) or '?'}"
        )
    if unmapped:
        say(f"• Could not be ordered ({len(unmapped)} items, no МойСклад product):")
        for item in unmapped[:5]:
            why = item.reason.rsplit("; ", 1)[-1].split(": ", 1)[-1]
            say(f"    {item.code} {item.name}: {_qty(item.unmapped)} units — {why}")
        if len(unmapped) > 5:
            say(f"    … and {len(unmapped) - 5} more (hubctl runs show {detail.run.id})")
    states = Counter(d.state for d in docs)
    say(f"Documents: {', '.join(f'{n} {s}' for s, n in sorted(states.items())) or 'none'}.")
    return {
        "items": len(items),
        "below_min": len(below),
        "moved": {donor: len(lines) for donor, lines in moved.items()},
        "external": len(external),
        "unmapped": len(unmapped),
        "documents": dict(states),
    }


async def _demo(once: bool, items: int, state_dir: Path | None, out: TextIO) -> int:
    say = DemoPrinter(out)
    world = demo_sandboxes(items)
    state = state_dir or Path(tempfile.mkdtemp(prefix="hubd-demo-"))
    state.mkdir(parents=True, exist_ok=True)
    async with world.running() as (onec_url, moysklad_url):
        config_path = state / "config.toml"
        config_path.write_text(demo_config_text(state, onec_url, moysklad_url), encoding="utf-8")
        log_path = state / "hubd.log"
        with log_path.open("a", encoding="utf-8") as log_file:
            hub = Hub(
                config_path,
                load_config(config_path),
                environ=world.environ,
                log_stream=log_file,
            )
            say(f"Sandbox 1C:УТ 11 OData: {onec_url}")
            say(f"Sandbox МойСклад API:  {moysklad_url}")
            say(f"State directory:       {state}  (log: {log_path})")
            serve = asyncio.create_task(hub.serve(), name="hubd")
            socket_path = hub.socket_path
            async with grpc.aio.insecure_channel(
                f"unix:{socket_path}", options=[("grpc.max_receive_message_length", 1 << 29)]
            ) as channel:
                api: control_pb2_grpc.HubControlAsyncStub = control_pb2_grpc.HubControlStub(channel)
                await wait_ready(api, serve)
                say("hubd is up. Triggering a replenishment run and following it:")
                reply = await api.TriggerRun(pb.TriggerRunRequest(job="replenishment"))
                await _follow(api, reply.run.id, say)
                detail = await _wait_delivered(api, reply.run.id)
                summarize(detail, say)
            code = 0 if detail.run.status == "succeeded" else 1
            if not once:
                sock = f"--socket {socket_path}"
                say()
                say("The daemon keeps running. Try, from another terminal:")
                for command in (
                    "status",
                    f"runs show {reply.run.id}",
                    "outbox",
                    "schedules",
                    "logs -n 20",
                    "check",
                    "run replenishment --dry-run --follow",
                ):
                    say(f"  .venv/bin/hubctl {sock} {command}")
                say("Press Ctrl-C to stop.")
            else:
                hub.stop_requested.set()
            await serve
    return code


def run_demo(*, once: bool, items: int, state_dir: Path | None) -> int:
    return asyncio.run(_demo(once, items, state_dir, sys.stdout))
