"""Hostile callers on the Unix socket: field and message limits, garbage bytes, floods of
large requests, too many calls at once, and error messages that would repeat a whole input."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from daemon.config import ControlSection
from daemon.control.errors import ECHO_CHARS, MAX_DETAILS_CHARS, clip_details
from daemon.control.guard import DEFAULT_FIELD_LIMIT, FIELD_LIMITS, check_request, field_limit
from daemon.errors import BadArgumentError
from protos.hub.v1 import control_pb2 as pb
from protos.hub.v1 import control_pb2_grpc
from tests.conftest import HubProcess, base_sections, write_config
from tests.control_support import LARGE, flood, raw_stream, raw_unary, rss_mib, unix_channel

SERVICE = pb.DESCRIPTOR.services_by_name["HubControl"]
REQUEST_TYPES = sorted({m.input_type.full_name: m.input_type for m in SERVICE.methods}.items())


def _largest(descriptor: Any) -> Message:
    """A request of this type with every field at its largest valid value."""
    message = message_factory.GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            setattr(message, field.name, "я" * (field_limit(field.name) // 2))
        elif field.type == FieldDescriptor.TYPE_BOOL:
            setattr(message, field.name, True)
        elif field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64):
            setattr(message, field.name, -1)  # negative varints take the most bytes
    return message


def test_every_request_string_field_has_its_own_limit() -> None:
    """Each string field of every HubControl request is in FIELD_LIMITS, not the default."""
    missing = [
        f"{name}.{field.name}"
        for name, descriptor in REQUEST_TYPES
        for field in descriptor.fields
        if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES)
        and field.name not in FIELD_LIMITS
    ]
    assert not missing, f"add these fields to daemon/control/guard.py FIELD_LIMITS: {missing}"
    assert all(limit <= 1024 for limit in FIELD_LIMITS.values()), "bytes, not megabytes"


def test_largest_valid_request_fits_the_default_message_limit() -> None:
    """Every request at its field limits passes check_request and is under max_message_bytes."""
    default = ControlSection().max_message_bytes
    assert default <= 16 * 1024, "the receive limit is kilobytes"
    for name, descriptor in REQUEST_TYPES:
        message = _largest(descriptor)
        check_request(message)
        assert message.ByteSize() <= default, name
    assert default > DEFAULT_FIELD_LIMIT * 4


def test_one_byte_over_a_limit_is_refused_naming_field_and_limit() -> None:
    """check_request counts UTF-8 bytes: the limit passes, one byte more names field and limit."""
    check_request(pb.TriggerRunRequest(job="j" * FIELD_LIMITS["job"]))
    with pytest.raises(BadArgumentError, match=r"^job is 65 bytes long; at most 64 bytes$"):
        check_request(pb.TriggerRunRequest(job="j" * 65))
    with pytest.raises(BadArgumentError, match=r"^reason is 1,026 bytes long; at most 1024"):
        check_request(pb.DiscardOutboxEntryRequest(id=1, reason="ж" * 513))


def test_clip_details_cuts_echoed_input_and_long_messages() -> None:
    """An echoed long input keeps its first 100 characters and an ellipsis; any message is
    at most MAX_DETAILS_CHARS."""
    run_id = "r" * 128
    text = clip_details(f"no run {run_id!r}", pb.GetRunRequest(run_id=run_id))
    assert text == f"no run '{'r' * ECHO_CHARS}…'"
    long = clip_details("ошибка " * 1000)
    assert len(long) == MAX_DETAILS_CHARS and long.endswith("…")


@pytest.fixture
async def hub(tmp_path: Path, hub_factory: Any) -> Any:
    sections = base_sections(tmp_path)
    sections["control"]["max_concurrent_rpcs"] = 8
    config = write_config(tmp_path / "config.toml", sections)
    started: HubProcess = await hub_factory(config, tmp_path / "hubd.sock")
    await started.wait_socket()
    yield started
    assert await started.stop() == 0, started.stderr[-3000:] + started.stdout[-3000:]


async def _status(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), caught.value.details() or ""


async def test_long_fields_are_invalid_argument_naming_field_and_limit(hub: HubProcess) -> None:
    """A field past its limit gets INVALID_ARGUMENT naming it and its limit, not the value."""
    async with unix_channel(hub.socket_path) as channel:
        api = control_pb2_grpc.HubControlStub(channel)
        cases = [
            (api.GetRun(pb.GetRunRequest(run_id="x" * 5000)), "run_id", 128),
            (api.TriggerRun(pb.TriggerRunRequest(job="x" * 65)), "job", 64),
            (api.DiscardOutboxEntry(pb.DiscardOutboxEntryRequest(id=1, reason="x" * 2000)),
             "reason", 1024),
            (api.ListOutbox(pb.ListOutboxRequest(state="x" * 33)), "state", 32),
            (api.TailLogs(pb.TailLogsRequest(level="x" * 17)).read(), "level", 16),
        ]  # fmt: skip
        for call, field, limit in cases:
            code, details = await _status(call)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, details
            assert details.startswith(f"{field} is ") and f"at most {limit} bytes" in details
            assert "xxxx" not in details


async def test_not_found_repeats_at_most_100_characters_of_an_id(hub: HubProcess) -> None:
    """NOT_FOUND for a 128-character run id quotes its first 100 characters and an ellipsis."""
    run_id = "20990101-000000-" + "q" * 112
    async with unix_channel(hub.socket_path) as channel:
        api = control_pb2_grpc.HubControlStub(channel)
        code, details = await _status(api.GetRun(pb.GetRunRequest(run_id=run_id)))
    assert code == grpc.StatusCode.NOT_FOUND
    assert run_id[:ECHO_CHARS] + "…" in details and run_id not in details


async def test_garbage_request_bytes_are_invalid_argument_without_traceback(
    hub: HubProcess,
) -> None:
    """Bytes that are not the request message get INVALID_ARGUMENT (unary, streaming, health),
    the daemon keeps serving, and its log holds no traceback."""
    garbage = [b"\xff\xff\xff\xff", b"\x12\x05abc"]  # no such wire type; a cut-off string
    bad_utf8 = {"GetRun": b"\x0a\x03\xff\xfe\xfd", "TriggerRun": b"\x0a\x02\xc3\x28",
                "DiscardOutboxEntry": b"\x08\x01\x12\x01\x80"}  # fmt: skip
    async with unix_channel(hub.socket_path) as channel:
        for method, spoiled in bad_utf8.items():
            for body in (*garbage, spoiled):
                code, details = await raw_unary(channel, method, body)
                assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, code, details)
                assert "not a valid" in details and "Traceback" not in details
        for body in garbage:
            code, details = await raw_stream(channel, "TailLogs", body)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
            code, _ = await raw_unary(channel, "/grpc.health.v1.Health/Check", body)
            assert code == grpc.StatusCode.INVALID_ARGUMENT
        api = control_pb2_grpc.HubControlStub(channel)
        assert (await api.GetStatus(pb.GetStatusRequest())).version
    assert await hub.stop() == 0
    log = hub.stdout + hub.stderr
    assert "Traceback" not in log and "rpc_failed" not in log and "Unexpected" not in log


async def test_rounds_of_large_requests_do_not_grow_memory(hub: HubProcess) -> None:
    """Two rounds of 100 concurrent 4 MB requests are refused with RESOURCE_EXHAUSTED before
    they are read, and hubd's RSS stays within 40 MiB of where it was (it grew by ~1 GiB per
    round when such requests were read and decoded)."""
    payload = "x" * LARGE
    discard = pb.DiscardOutboxEntryRequest(id=1, reason=payload)
    calls = [
        ("GetRun", pb.GetRunRequest(run_id=payload).SerializeToString()),
        ("TriggerRun", pb.TriggerRunRequest(job=payload).SerializeToString()),
        ("DiscardOutboxEntry", discard.SerializeToString()),
    ]
    before = rss_mib(hub.proc.pid)
    async with unix_channel(hub.socket_path) as channel:
        for _ in range(2):
            codes = await flood(channel, [calls[i % 3] for i in range(100)])
            assert codes == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        api = control_pb2_grpc.HubControlStub(channel)
        assert (await api.GetStatus(pb.GetStatusRequest())).version
    await asyncio.sleep(1)
    assert rss_mib(hub.proc.pid) - before < 40


async def test_calls_beyond_max_concurrent_rpcs_are_refused_until_one_ends(
    hub: HubProcess,
) -> None:
    """With max_concurrent_rpcs = 8 and 8 log followers holding calls, a 9th call gets
    RESOURCE_EXHAUSTED at once; when a follower leaves, calls are served again."""
    async with unix_channel(hub.socket_path) as channel:
        api = control_pb2_grpc.HubControlStub(channel)
        followers = [api.TailLogs(pb.TailLogsRequest(follow=True, last=1)) for _ in range(8)]
        for follower in followers:
            batch = await follower.read()  # the handler runs: the call is held
            assert isinstance(batch, pb.LogBatch) and batch.events
        code, _ = await _status(api.GetStatus(pb.GetStatusRequest(), timeout=5))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        followers.pop().cancel()
        async with asyncio.timeout(10):
            while True:
                try:
                    assert (await api.GetStatus(pb.GetStatusRequest(), timeout=5)).version
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    await asyncio.sleep(0.05)
        for follower in followers:
            follower.cancel()
