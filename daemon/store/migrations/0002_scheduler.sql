-- 0002: what the scheduler remembers about each job besides "paused".
--   schedule_key  "<cron>|<zone>" the job was last scheduled with; '' = not scheduled
--                 (disabled, or no longer in the config).
--   since_at      unix seconds from which fires of that schedule are owed. A job seen for the
--                 first time, re-enabled, or given a new cron/zone owes nothing before it, so a
--                 fresh install or a schedule change never "catches up" history.
ALTER TABLE job_state ADD COLUMN schedule_key TEXT NOT NULL DEFAULT '';
ALTER TABLE job_state ADD COLUMN since_at REAL NOT NULL DEFAULT 0;
