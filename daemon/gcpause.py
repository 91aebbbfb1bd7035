"""``collector_paused()``: the cyclic garbage collector off for a stretch of CPU work.

Parsing an answer of thousands of rows, or planning 100,000 items, allocates objects that are
freed by reference counting (or live on in a plan) and are never part of a reference cycle.
Left to the collector, they are walked while they live and pushed toward the old generation,
which then triggers full collections over the daemon's whole heap, for nothing.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic GC for the body; left as it was when something else turned it off
    (so nested and concurrent pauses never switch it back on early)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
