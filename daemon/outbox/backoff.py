"""Retry delays: exponential backoff with full jitter.

Full jitter (a uniform draw between 0 and the exponential ceiling) spreads the retries of many
rows that failed together — say, every document of a run during a 1C outage — so they do not
return in one burst when the remote comes back.
"""

from __future__ import annotations

import random
from collections.abc import Callable

# 2**60 seconds is far beyond any cap; limiting the exponent keeps the float arithmetic finite
# for rows that have been retried thousands of times.
_MAX_EXPONENT = 60


def backoff_ceiling(attempt: int, base_s: float, cap_s: float) -> float:
    """The largest delay allowed after failed attempt number ``attempt`` (1-based).

    ``base_s`` after the first failure, doubling with each further one, never above ``cap_s``.
    """
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, got {attempt}")
    exponent = min(attempt - 1, _MAX_EXPONENT)
    return float(min(cap_s, base_s * 2.0**exponent))


def full_jitter_delay(
    attempt: int,
    base_s: float,
    cap_s: float,
    draw: Callable[[], float] = random.random,
) -> float:
    """A delay drawn uniformly from ``[0, backoff_ceiling(attempt, base_s, cap_s))``.

    ``draw`` returns a float in [0, 1); tests pass a seeded ``random.Random().random``.
    """
    return draw() * backoff_ceiling(attempt, base_s, cap_s)
