"""Human output: aligned tables, local times, colours only on a terminal; and stable JSON."""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

_COLOURS = {"red": "31", "green": "32", "yellow": "33", "blue": "34", "dim": "2", "bold": "1"}
STATUS_COLOURS = {
    "succeeded": "green",
    "delivered": "green",
    "ok": "green",
    "SERVING": "green",
    "running": "yellow",
    "pending": "yellow",
    "in_flight": "yellow",
    "retry_wait": "yellow",
    "outcome_unknown": "yellow",
    "failed": "red",
    "dead": "red",
    "NOT_SERVING": "red",
    "discarded": "dim",
}


class Output:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.colour = self.stream.isatty()

    def paint(self, text: str, colour: str) -> str:
        code = _COLOURS.get(colour)
        if not self.colour or not code:
            return text
        return f"\x1b[{code}m{text}\x1b[0m"

    def status(self, text: str) -> str:
        return self.paint(text, STATUS_COLOURS.get(text, ""))

    def line(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        if not rows:
            self.line("(none)")
            return
        widths = [display_width(h) for h in headers]
        for row in rows:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], display_width(strip_ansi(cell)))
        self.line(self.paint(_join(headers, widths).rstrip(), "bold"))
        for row in rows:
            self.line(_join(row, widths).rstrip())

    def json(self, value: Any) -> None:
        print(json.dumps(value, ensure_ascii=False, sort_keys=True), file=self.stream, flush=True)


def strip_ansi(text: str) -> str:
    out, skip = [], False
    for ch in text:
        if ch == "\x1b":
            skip = True
        elif skip and ch == "m":
            skip = False
        elif not skip:
            out.append(ch)
    return "".join(out)


def display_width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _join(cells: Sequence[str], widths: Sequence[int]) -> str:
    parts = []
    for cell, width in zip(cells, widths, strict=True):
        pad = width - display_width(strip_ansi(cell))
        parts.append(cell + " " * max(pad, 0))
    return "  ".join(parts)


def local_time(ms: int, *, seconds: bool = True) -> str:
    """Unix ms → the operator's local time; '-' when not set."""
    if not ms:
        return "-"
    moment = datetime.fromtimestamp(ms / 1000).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z" if seconds else "%Y-%m-%d %H:%M %Z")


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def to_dict(message: Message) -> dict[str, Any]:
    """A message as a stable JSON-ready dict: proto field names, defaults included."""
    return MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
