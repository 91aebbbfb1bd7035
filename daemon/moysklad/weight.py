"""What one request really costs at МойСклад, learned from the rate headers of its answers.

МойСклад changes the weight of a request by date and by credential (user tokens cost 2, 3 and
4 units in 2026; a solution in draft costs 4), so ``moysklad.request_weight`` may be stale. Each
answer carries ``X-RateLimit-Limit`` and ``X-RateLimit-Remaining``; how ``Remaining`` moves
between answers, after adding what the bucket refilled in the time between, is what the
requests in between cost.

**Interpretation.** The reference says both headers count *requests* (at the request's weight);
that is unverified, and they might as well count *units*. The code reads ``Remaining / Limit``
as the share of the bucket left, so one header step is ``bucket_units / Limit`` units: 1 when
the headers count units (``Limit`` = 45), about the weight when they count requests
(``Limit`` = 45 // weight). Both are handled the same way, and the emulator serves both.

**Concurrency.** With up to 5 requests in flight, answers arrive out of order and each answer's
``Remaining`` may or may not include the requests still in flight. The estimate therefore is
not per pair of answers but over a window: the units spent between the window's first and last
answer (the refill in between added back, capped at a full bucket step by step) divided by the
requests sent in between. The intermediate readings telescope away, so out-of-order answers
inside the window cost nothing; only the two ends carry rounding (one header step each) and
in-flight ambiguity, both divided by the window's length. When the server read its bucket for
an answer is only known to lie between sending the request and receiving the answer (a big
page takes a while to arrive after its headers were set): a reading is placed at the middle of
that span, and the low bound allows for the refill over half of it at both ends. A 429, an
answer to a request of another weight (the heavy reports) or a request that got no answer start
the window afresh.

Besides the point estimate the estimator gives a lower bound (both ends' rounding against it);
the pace only leaves the configured weight when even the lower bound is above it, so a
correctly configured hub is not slowed down by noise.

Another program spending the same user's budget looks like a higher weight: the hub then
paces slower, which is what the shared budget calls for anyway.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reading:
    """One answer's rate headers, in bucket units."""

    at: float  # middle of the request's round trip (monotonic seconds)
    late: float  # half the round trip: the server read its bucket within ± this of ``at``
    sent: int  # requests sent by the time the answer arrived
    level: float  # the server's bucket level, the middle of what the header allows
    slack: float  # half a header step: the level is exact to ± this


def reading(
    *, sent_at: float, arrived_at: float, sent: int, remaining: int, limit: int, capacity: float
) -> Reading:
    """``Remaining`` of ``Limit`` as units of a ``capacity``-unit bucket."""
    limit = max(1, limit)
    step = capacity / limit
    half_trip = max(0.0, arrived_at - sent_at) / 2
    at = sent_at + half_trip
    if remaining >= limit:
        return Reading(at, half_trip, sent, capacity, 0.0)
    level = min(capacity, (max(0, remaining) + 0.5) * step)
    return Reading(at, half_trip, sent, level, step / 2)


@dataclass(frozen=True, slots=True)
class Estimate:
    weight: float  # units per request, point estimate
    low: float  # no lower than this, with both ends' rounding against it
    requests: int  # how many requests it rests on


class WeightEstimator:
    """Units per request over a sliding window of answers."""

    def __init__(
        self, *, capacity: float, rate: float, window: int = 24, min_requests: int = 6
    ) -> None:
        self._capacity = capacity
        self._rate = rate  # units per second
        self._min_requests = min_requests
        self._readings: deque[Reading] = deque(maxlen=window)

    def reset(self) -> None:
        self._readings.clear()

    def add(self, item: Reading) -> Estimate | None:
        self._readings.append(item)
        return self.estimate()

    def estimate(self) -> Estimate | None:
        readings = self._readings
        if len(readings) < 2:
            return None
        first, last = readings[0], readings[-1]
        requests = last.sent - first.sent
        if requests < self._min_requests:
            return None
        spent = 0.0
        level = first.level
        previous_at = first.at
        for item in list(readings)[1:]:
            # Refill is capped at a full bucket: time spent full refills nothing.
            level = min(self._capacity, level + max(0.0, item.at - previous_at) * self._rate)
            spent += level - item.level
            level = item.level
            previous_at = item.at
        weight = max(0.0, spent / requests)
        doubt = first.slack + last.slack + (first.late + last.late) * self._rate
        low = max(0.0, (spent - doubt) / requests)
        return Estimate(weight, low, requests)
