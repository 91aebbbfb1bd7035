-- 0005: outbox.retried_at, when an operator last sent a dead entry again (hubctl outbox retry).
--   A retry gives the entry a fresh budget: max_attempts counts attempts from 0 again, and
--   max_age_h now counts from retried_at instead of created_at, so an entry revived after its
--   age ran out is not dead-lettered again by its first failure. NULL: never retried.
ALTER TABLE outbox ADD COLUMN retried_at REAL;
