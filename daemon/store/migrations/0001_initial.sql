-- 0001: the hub's first schema. Times are unix seconds (UTC) as REAL unless named *_utc.

CREATE TABLE runs (
    id            TEXT PRIMARY KEY,              -- e.g. "20261126T060000Z-replenishment-3f2a"
    job           TEXT NOT NULL,
    trigger       TEXT NOT NULL,                 -- schedule | catch_up | manual
    dry_run       INTEGER NOT NULL DEFAULT 0,
    status        TEXT NOT NULL,                 -- running | succeeded | failed
    reason        TEXT,                          -- why it failed (one sentence)
    started_at    REAL NOT NULL,
    finished_at   REAL,
    phases_json   TEXT NOT NULL DEFAULT '[]',    -- [{"name", "started_at", "seconds"}]
    counts_json   TEXT NOT NULL DEFAULT '{}',    -- {"items": n, "below_min": n, ...}
    fire_id       INTEGER REFERENCES schedule_fires(id)
);
CREATE INDEX runs_job_started ON runs(job, started_at);

CREATE TABLE plan_items (
    run_id        TEXT NOT NULL REFERENCES runs(id),
    target        TEXT NOT NULL,                 -- target warehouse name
    item_key      TEXT NOT NULL,                 -- 1C Ref_Key
    code          TEXT NOT NULL DEFAULT '',
    article       TEXT NOT NULL DEFAULT '',
    name          TEXT NOT NULL DEFAULT '',
    decision      TEXT NOT NULL,                 -- planner decision code
    reason        TEXT NOT NULL,                 -- a sentence a warehouse manager can read
    detail_json   TEXT NOT NULL,                 -- inputs and quantities
    PRIMARY KEY (run_id, target, item_key)
);

CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY,
    run_id           TEXT NOT NULL REFERENCES runs(id),
    kind             TEXT NOT NULL,              -- onec_transfer_order | moysklad_customer_order
    idempotency_key  TEXT NOT NULL UNIQUE,
    payload_json     TEXT NOT NULL,
    summary          TEXT NOT NULL,
    state            TEXT NOT NULL,              -- pending | in_flight | retry_wait |
                                                 -- outcome_unknown | delivered | dead | discarded
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,
    lease_until      REAL,
    lease_owner      TEXT,
    outcome_unknown  INTEGER NOT NULL DEFAULT 0, -- 1: look up by key before creating again
    last_error       TEXT,
    external_id      TEXT,
    external_number  TEXT,
    discard_reason   TEXT,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    delivered_at     REAL
);
CREATE INDEX outbox_due ON outbox(state, next_attempt_at);
CREATE INDEX outbox_run ON outbox(run_id);

CREATE TABLE documents (
    id            INTEGER PRIMARY KEY,
    outbox_id     INTEGER NOT NULL UNIQUE REFERENCES outbox(id),
    run_id        TEXT NOT NULL,
    system        TEXT NOT NULL,                 -- 1c | moysklad
    kind          TEXT NOT NULL,
    external_id   TEXT NOT NULL,
    number        TEXT NOT NULL,
    created_at    REAL NOT NULL
);
CREATE INDEX documents_run ON documents(run_id);

CREATE TABLE schedule_fires (
    id            INTEGER PRIMARY KEY,
    job           TEXT NOT NULL,
    nominal_at    INTEGER NOT NULL,              -- the nominal fire time, unix seconds UTC
    recorded_at   REAL NOT NULL,
    outcome       TEXT NOT NULL,                 -- started | succeeded | failed | missed | skipped
    run_id        TEXT,
    detail        TEXT,
    UNIQUE (job, nominal_at)
);

CREATE TABLE job_state (
    job           TEXT PRIMARY KEY,
    paused        INTEGER NOT NULL DEFAULT 0,
    updated_at    REAL NOT NULL
);

CREATE TABLE integration_logs (
    id            INTEGER PRIMARY KEY,
    ts            REAL NOT NULL,
    level         TEXT NOT NULL,
    event         TEXT NOT NULL,
    logger        TEXT,
    run_id        TEXT,
    job           TEXT,
    data_json     TEXT NOT NULL
);
CREATE INDEX integration_logs_ts ON integration_logs(ts);
CREATE INDEX integration_logs_run ON integration_logs(run_id);
