-- Which Launch began a node's current run, so that a late event from an earlier run of a
-- requeued job is recognised and ignored.
ALTER TABLE job_nodes ADD COLUMN launch_id TEXT NOT NULL DEFAULT '';
