-- `dcctl queue --since/--until` lists the jobs that ended in a window of time.
CREATE INDEX jobs_end_ts ON jobs(end_ts);
