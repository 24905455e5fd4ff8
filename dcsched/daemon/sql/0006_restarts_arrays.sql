-- Requeue and warning signals: how many times a job went back to the queue (its next run
-- sees DCSCHED_RESTART_COUNT), and when its current run was sent its warning signal (sent
-- once per run, also across a daemon restart).
ALTER TABLE jobs ADD COLUMN restart_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN signal_ts REAL;
-- Job arrays: each task is a job; the array's id is its first task's job id.
ALTER TABLE jobs ADD COLUMN array_job_id INTEGER;
ALTER TABLE jobs ADD COLUMN array_task_id INTEGER;
CREATE INDEX jobs_array ON jobs(array_job_id) WHERE array_job_id IS NOT NULL;
