-- The fencing epoch of the leader that wrote each transition (0: written before epochs were
-- stored). A write from a leader whose epoch is older than the store's is refused.
ALTER TABLE job_events ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
