"""The control API's status codes, straight from a gRPC client over the Unix socket."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from protos.hub.v1 import control_pb2 as pb
from protos.hub.v1 import control_pb2_grpc
from tests.conftest import base_sections, write_config


@pytest.fixture
async def api(tmp_path: Path, hub_factory: Any) -> Any:
    sections = base_sections(tmp_path)
    sections["control"]["max_message_bytes"] = 4096
    config = write_config(tmp_path / "config.toml", sections)
    hub = await hub_factory(config, tmp_path / "hubd.sock")
    await hub.wait_socket()
    async with grpc.aio.insecure_channel(f"unix:{tmp_path / 'hubd.sock'}") as channel:
        yield control_pb2_grpc.HubControlStub(channel)
    assert await hub.stop() == 0, hub.stderr[-3000:] + hub.stdout[-3000:]


async def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), caught.value.details() or ""


async def test_bad_arguments_are_invalid_argument(api: Any) -> None:
    """Each bad argument gets INVALID_ARGUMENT and one sentence saying what was wrong."""
    cases = [
        api.TriggerRun(pb.TriggerRunRequest(job="")),
        api.ListRuns(pb.ListRunsRequest(limit=5000)),
        api.GetRun(pb.GetRunRequest(run_id="")),
        api.GetOutboxEntry(pb.OutboxEntryRequest(id=-4)),
        api.ListOutbox(pb.ListOutboxRequest(state="nowhere")),
        api.DiscardOutboxEntry(pb.DiscardOutboxEntryRequest(id=1, reason="  ")),
        api.NextFireTimes(pb.NextFireTimesRequest(job="replenishment", count=5000)),
        api.PauseSchedule(pb.ScheduleRequest(job="")),
    ]
    for call in cases:
        code, details = await _code(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert details and "Traceback" not in details
    stream = api.TailLogs(pb.TailLogsRequest(level="loud"))
    code, details = await _code(stream.read())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "level must be one of" in details


async def test_unknown_ids_are_not_found(api: Any) -> None:
    """Unknown run, outbox entry and job ids get NOT_FOUND."""
    for call in (
        api.GetRun(pb.GetRunRequest(run_id="20990101-000000-replenishment-0000")),
        api.GetOutboxEntry(pb.OutboxEntryRequest(id=77)),
        api.RetryOutboxEntry(pb.OutboxEntryRequest(id=77)),
        api.NextFireTimes(pb.NextFireTimesRequest(job="nightly", count=3)),
        api.TriggerRun(pb.TriggerRunRequest(job="nightly")),
    ):
        code, details = await _code(call)
        assert code == grpc.StatusCode.NOT_FOUND, details


async def test_oversized_request_is_refused(api: Any) -> None:
    """A request larger than control.max_message_bytes is refused; the daemon keeps serving."""
    code, _ = await _code(
        api.DiscardOutboxEntry(pb.DiscardOutboxEntryRequest(id=1, reason="x" * 10_000))
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = await api.GetStatus(pb.GetStatusRequest())
    assert status.version
