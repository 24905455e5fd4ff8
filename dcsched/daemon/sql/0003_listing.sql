-- Finished jobs are listed newest first per state or user with a limit; the daemon keeps
-- only live jobs in memory, so these reads must not scan the whole history.
CREATE INDEX jobs_state_id ON jobs(state, id);
CREATE INDEX jobs_user_id ON jobs("user", id);
