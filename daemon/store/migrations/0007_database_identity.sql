-- 0007: database_identity, one row naming this database file (daemon/store/identity.py).
--   creation_id is random; hubd keeps a copy in <state_dir>/hub.sqlite3.id, so a start that
--   finds the marker but an empty or missing database knows the history was lost and says so.
--   A backup keeps the id, so restoring one is not mistaken for a loss. created_at is when the
--   id was given: the database's creation, or this upgrade for a database made before it.
CREATE TABLE database_identity (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    creation_id TEXT NOT NULL,
    created_at  REAL NOT NULL
);
INSERT INTO database_identity (id, creation_id, created_at)
VALUES (1, lower(hex(randomblob(16))), (julianday('now') - 2440587.5) * 86400.0);
