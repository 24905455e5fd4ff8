-- Attained service: seconds a job's earlier runs took, from allocation until they went back
-- to the queue (the `las` policy's input; the current run is not included).
ALTER TABLE jobs ADD COLUMN attained_s REAL NOT NULL DEFAULT 0;
-- Jobs requeued before this column existed get it from their history: each return to the
-- queue (REQUEUED right after COMPLETING) less the allocation (STARTING) before it.
UPDATE jobs SET attained_s = COALESCE((
    SELECT SUM(r.ts - (
        SELECT MAX(s.ts) FROM job_events s
        WHERE s.job_id = r.job_id AND s.state = 'STARTING' AND s.id < r.id
    ))
    FROM job_events r
    WHERE r.job_id = jobs.id AND r.state = 'REQUEUED' AND (
        SELECT p.state FROM job_events p
        WHERE p.job_id = r.job_id AND p.id < r.id
        ORDER BY p.id DESC LIMIT 1
    ) = 'COMPLETING'
), 0)
WHERE restart_count > 0;
