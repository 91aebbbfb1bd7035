-- 0006: at most one running run per job, enforced by the database (issue 19).
-- The in-memory single-flight rule alone let concurrent triggers each insert a run. A run left
-- 'running' here was cut off by a daemon that is gone (migrations run under the state lock),
-- and several of them would stop the index from being built: close them first, as start-up does.

UPDATE runs
   SET status = 'failed',
       reason = 'interrupted: hubd stopped; nothing was enqueued',
       finished_at = COALESCE(finished_at, (julianday('now') - 2440587.5) * 86400.0)
 WHERE status = 'running';

CREATE UNIQUE INDEX runs_one_running_per_job ON runs(job) WHERE status = 'running';
