-- 0003: indexes for the outbox processor's claims.
--   outbox_waiting  rows waiting for an attempt, per kind in due order: a claim reads the first
--                   few entries instead of sorting every waiting row (and never touches the
--                   delivered history).
--   outbox_leased   rows being delivered, by lease expiry: finds leases of workers that died.
-- The claim and next-due queries repeat these WHERE clauses verbatim so SQLite can use them.
CREATE INDEX outbox_waiting ON outbox(kind, next_attempt_at)
    WHERE state IN ('pending', 'retry_wait', 'outcome_unknown');
CREATE INDEX outbox_leased ON outbox(kind, lease_until) WHERE state = 'in_flight';
