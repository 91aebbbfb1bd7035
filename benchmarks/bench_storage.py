"""Issue 19's storage and start-up figures, measured against any checkout of the hub.

Both emulators run in this process; hubd is started from ``--repo`` (default: this checkout),
so the same measurement can be taken on the code before and after a change:

- diskfull (root only: it mounts a 2 MiB tmpfs for the state directory): replenishment runs
  until the disk is full, and for each whether it succeeded, whether ``hubctl status`` answered
  and whether hubd was still running; then, after a clean stop, a restart on the disk full to
  the last block, and after space returns how many documents 1C and МойСклад hold (expected:
  2 and 1, each document once);
- startup: ``hubd run`` on a garbage database, a half-truncated one, one a newer hubd migrated,
  a config whose TLS files are missing and (root only) a read-only state directory: exit status
  and how many lines it wrote to stderr.

    sudo .venv/bin/python benchmarks/bench_storage.py [--repo DIR] [--only diskfull,startup]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent


def use_repo(repo: Path) -> None:
    """Import the hub (emulators, test helpers) from the checkout being measured."""
    sys.path.insert(0, str(repo))


def child_env(**extra: str) -> dict[str, str]:
    from tests.conftest import child_env as environment

    return dict(environment(**extra))


def env() -> dict[str, str]:
    from tests.conftest import MOYSKLAD_TEST_TOKEN, ONEC_TEST_PASSWORD

    return {"HUB_ONEC_PASSWORD": ONEC_TEST_PASSWORD, "HUB_MOYSKLAD_TOKEN": MOYSKLAD_TEST_TOKEN}


def config_for(repo: Path, work: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """The test config, less any key the measured checkout does not know yet."""
    from tests.conftest import render_config

    known = tomllib.loads((repo / "config.toml").read_text(encoding="utf-8"))
    for name, values in sections.items():
        section = known.get(name.split(".")[0], {}) if not name.startswith("[[") else None
        if isinstance(section, dict) and section:
            for key in [k for k in values if k not in section]:
                del values[key]
    path = work / "config.toml"
    path.write_text(render_config(sections), encoding="utf-8")
    return path


async def sh(*args: str) -> int:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await proc.wait()


class Hubd:
    def __init__(self, repo: Path, config: Path, socket: Path) -> None:
        self.repo, self.config, self.socket = repo, config, socket
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", "run", "--config", str(self.config),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            env=child_env(**env()), cwd=self.repo,
        )  # fmt: skip

    async def ctl(self, *args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "client.cli", "--socket", str(self.socket), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=child_env(), cwd=self.repo,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 180)
        return proc.returncode or 0, out.decode(), err.decode()

    async def ready(self) -> bool:
        assert self.proc is not None
        for _ in range(200):
            if self.proc.returncode is not None:
                return False
            if (await self.ctl("health"))[0] == 0:
                return True
            await asyncio.sleep(0.1)
        return False

    async def stop(self) -> int | None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
        await self.proc.communicate()
        return self.proc.returncode


async def diskfull(repo: Path) -> None:
    from daemon.sandbox.dataset import build_demo_dataset
    from daemon.sandbox.moysklad_emulator import MoySkladSandbox, run_moysklad_sandbox
    from daemon.sandbox.onec_emulator import OneCSandbox, run_onec_sandbox
    from tests.conftest import MOYSKLAD_TEST_TOKEN, ONEC_TEST_PASSWORD, base_sections

    if os.geteuid() != 0:
        print("diskfull: skipped (mounting a tmpfs needs root)")
        return
    dataset = build_demo_dataset(n_items=300, seed=42)
    onec = OneCSandbox(dataset, username="hub", password=ONEC_TEST_PASSWORD)
    moysklad = MoySkladSandbox(dataset.moysklad_products, token=MOYSKLAD_TEST_TOKEN, weight=1)
    with tempfile.TemporaryDirectory() as tmp:
        work, mount = Path(tmp), Path(tmp) / "small"
        mount.mkdir()
        assert await sh("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)) == 0
        try:
            async with run_onec_sandbox(onec) as onec_url, run_moysklad_sandbox(moysklad) as ms_url:
                sections = base_sections(work, onec_url, ms_url)
                sections["hub"]["state_dir"] = str(mount / "state")
                sections["outbox"]["lease_s"] = 5
                hub = Hubd(repo, config_for(repo, work, sections), work / "hubd.sock")
                await hub.start()
                assert await hub.ready(), "hubd did not start"
                for n in range(1, 13):
                    code, out, err = await hub.ctl("--json", "run", "replenishment", "--follow")
                    status = (await hub.ctl("status"))[0]
                    assert hub.proc is not None
                    alive = hub.proc.returncode is None
                    reason = ""
                    if code:
                        last = out.strip().splitlines()[-1] if out.strip() else ""
                        reason = json.loads(last)["message"] if last else err.strip()
                    print(
                        f"diskfull: run {n}: {'ok' if code == 0 else 'failed'}; "
                        f"status exit {status}; hubd {'running' if alive else 'EXITED'} "
                        f"{reason[:90]}"
                    )
                    if not alive:
                        break
                print(f"diskfull: hubd exit status after the runs: {await hub.stop()}")
                # a clean stop with room (the WAL and its index go), then the disk full to
                # the last block, then a restart
                await sh("mount", "-o", "remount,size=4m", str(mount))
                clean = Hubd(repo, hub.config, hub.socket)
                await clean.start()
                await clean.ready()
                await clean.stop()
                await sh("dd", "if=/dev/zero", f"of={mount / 'filler'}", "bs=4k")
                again = Hubd(repo, hub.config, hub.socket)
                await again.start()
                served = await again.ready()
                answered = (await again.ctl("status"))[0] if served else None
                print(f"diskfull: restart on a full disk: serves {served}, status exit {answered}")
                if not served:
                    print(f"diskfull: restart exit {await again.stop()}")
                await sh("rm", str(mount / "filler"))
                await sh("mount", "-o", "remount,size=64m", str(mount))
                if not served:
                    again = Hubd(repo, hub.config, hub.socket)
                    await again.start()
                    assert await again.ready()
                for _ in range(120):
                    entries = json.loads((await again.ctl("--json", "outbox"))[1])["entries"]
                    if entries and all(e["state"] == "delivered" for e in entries):
                        break
                    await asyncio.sleep(0.5)
                print(
                    f"diskfull: after space returned: {len(onec.transfer_orders())} 1C transfer "
                    f"orders, {len(moysklad.orders())} МойСклад orders; outbox "
                    f"{sorted(e['state'] for e in entries)}"
                )
                await again.stop()
        finally:
            await sh("umount", "-l", str(mount))


async def startup(repo: Path) -> None:
    from tests.conftest import base_sections

    with tempfile.TemporaryDirectory() as tmp:
        for case in ("garbage", "half-truncated", "newer-schema", "missing-tls", "read-only"):
            work = Path(tmp) / case
            state = work / "state"
            state.mkdir(parents=True)
            sections = base_sections(work)
            db = state / "hub.sqlite3"
            if case in ("half-truncated", "newer-schema"):
                with sqlite3.connect(db) as conn:
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("CREATE TABLE t (x)")
                    conn.executemany("INSERT INTO t VALUES (?)", [("x" * 500,)] * 2000)
                    if case == "newer-schema":
                        conn.execute("PRAGMA user_version = 999")
                conn.close()
                if case == "half-truncated":
                    os.truncate(db, db.stat().st_size // 2)
            elif case == "garbage":
                db.write_bytes(os.urandom(64 * 1024))
            elif case == "missing-tls":
                sections["control"].update(
                    tcp_listen="127.0.0.1:50999",
                    tls_cert_file=str(work / "missing-cert.pem"),
                    tls_key_file=str(work / "missing-key.pem"),
                )
            mounted = False
            if case == "read-only":
                if os.geteuid() != 0:
                    print("startup: read-only: skipped (a read-only bind mount needs root)")
                    continue
                mounted = await sh("mount", "--bind", str(state), str(state)) == 0
                await sh("mount", "-o", "remount,bind,ro", str(state))
            config = config_for(repo, work, sections)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "daemon", "run", "--config", str(config),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                env=child_env(**env(), HUB_GRPC_TOKEN="t" * 40), cwd=repo,
            )  # fmt: skip
            try:
                _, err = await asyncio.wait_for(proc.communicate(), 15)
            except TimeoutError:
                proc.terminate()
                _, err = await proc.communicate()
                print(f"startup: {case}: did not stop by itself (stopped: {proc.returncode})")
                continue
            finally:
                if mounted:
                    await sh("umount", str(state))
            lines = err.decode().strip().splitlines()
            print(
                f"startup: {case}: exit {proc.returncode}, {len(lines)} stderr line(s): "
                f"{lines[-1][:150] if lines else ''}"
            )


async def main(repo: Path, wanted: list[str]) -> None:
    if "startup" in wanted:
        await startup(repo)
    if "diskfull" in wanted:
        await diskfull(repo)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=HERE)
    parser.add_argument("--only", default="diskfull,startup")
    args = parser.parse_args()
    use_repo(args.repo.resolve())
    asyncio.run(main(args.repo.resolve(), args.only.split(",")))
