-- One row per finished job (sacct): written in the same transaction as the job's final
-- state. The columns filtered and summed on are columns; the whole row is JSON in `row`.
-- Jobs that finished before this migration have none.
CREATE TABLE job_accounting (
    job_id INTEGER PRIMARY KEY REFERENCES jobs(id),
    "user" TEXT NOT NULL,
    account TEXT NOT NULL,
    qos TEXT NOT NULL,
    state TEXT NOT NULL,
    submit_ts REAL NOT NULL,
    end_ts REAL NOT NULL,
    gpu_hours REAL NOT NULL,
    energy_kwh REAL NOT NULL,
    mean_util REAL,
    row TEXT NOT NULL
);
CREATE INDEX job_accounting_end ON job_accounting(end_ts);
CREATE INDEX job_accounting_user_end ON job_accounting("user", end_ts);
CREATE INDEX job_accounting_account_end ON job_accounting(account, end_ts);

-- A node's drains, resumes and GPU faults, newest last: why it is drained, and since when.
CREATE TABLE node_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT NOT NULL,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,     -- drain | resume | fault
    detail TEXT NOT NULL
);
CREATE INDEX node_events_host ON node_events(host, id);
