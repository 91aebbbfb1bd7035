"""Delivery of planned documents: the ``processor`` leases outbox entries and sends them to 1C
or МойСклад, ``settle`` writes each attempt's outcome, ``backoff`` spaces the retries. The rows
themselves live in ``daemon.store.outbox``."""
