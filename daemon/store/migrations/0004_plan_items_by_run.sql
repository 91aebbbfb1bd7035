-- 0004: plan_items are found by run through an index on run_id alone.
--   The primary key (run_id, target, item_key) made every run insert its 20,000 rows into an
--   index in random item-key order (a quarter of the plan's store time). An index on run_id
--   takes them in order, and it is all the plan query (WHERE run_id = ? ORDER BY target, code,
--   item_key) uses. One row per item and target is the planner's own guarantee (a property
--   test pins it).
CREATE TABLE plan_items_new (
    run_id        TEXT NOT NULL REFERENCES runs(id),
    target        TEXT NOT NULL,                 -- target warehouse name
    item_key      TEXT NOT NULL,                 -- 1C Ref_Key
    code          TEXT NOT NULL DEFAULT '',
    article       TEXT NOT NULL DEFAULT '',
    name          TEXT NOT NULL DEFAULT '',
    decision      TEXT NOT NULL,                 -- planner decision code
    reason        TEXT NOT NULL,                 -- a sentence a warehouse manager can read
    detail_json   TEXT NOT NULL                  -- inputs and quantities
);
INSERT INTO plan_items_new (run_id, target, item_key, code, article, name, decision, reason,
                            detail_json)
    SELECT run_id, target, item_key, code, article, name, decision, reason, detail_json
    FROM plan_items ORDER BY run_id, target, code, item_key;
DROP TABLE plan_items;
ALTER TABLE plan_items_new RENAME TO plan_items;
CREATE INDEX plan_items_by_run ON plan_items(run_id);
