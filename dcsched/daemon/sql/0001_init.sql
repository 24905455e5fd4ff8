-- dcsched store, schema version 1.
CREATE TABLE jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL,
    "user"        TEXT    NOT NULL,          -- quoted: a reserved word in PostgreSQL
    uid           INTEGER NOT NULL,
    account       TEXT    NOT NULL,
    qos           TEXT    NOT NULL,
    nice          INTEGER NOT NULL DEFAULT 0,
    state         TEXT    NOT NULL,
    reason        TEXT    NOT NULL DEFAULT '',
    spec          TEXT    NOT NULL,          -- the validated JobSpec as JSON
    nodes         INTEGER NOT NULL,
    gpus_per_node INTEGER NOT NULL,
    gpu_type      TEXT,
    time_limit_s  INTEGER NOT NULL,
    submit_ts     REAL    NOT NULL,
    start_ts      REAL,
    end_ts        REAL,
    exit_code     INTEGER,
    signal        INTEGER,
    master_addr   TEXT,
    master_port   INTEGER,
    ending        TEXT    NOT NULL DEFAULT '' -- why a job is stopping: the final state it will get
);
CREATE INDEX jobs_state ON jobs(state);

CREATE TABLE job_nodes (
    job_id     INTEGER NOT NULL REFERENCES jobs(id),
    node_rank  INTEGER NOT NULL,
    host       TEXT    NOT NULL,
    gpus       TEXT    NOT NULL,             -- JSON list of GPU indices
    state      TEXT    NOT NULL DEFAULT 'launching',  -- launching | running | exited
    pid        INTEGER,
    exit_code  INTEGER,
    signal     INTEGER,
    reason     TEXT    NOT NULL DEFAULT '',
    log_path   TEXT    NOT NULL DEFAULT '',
    started_ts REAL,
    exited_ts  REAL,
    PRIMARY KEY (job_id, node_rank)
);
CREATE INDEX job_nodes_host ON job_nodes(host, state);

CREATE TABLE commands (
    cmd_id     TEXT PRIMARY KEY,
    host       TEXT    NOT NULL,
    job_id     INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    payload    BLOB    NOT NULL,             -- the unsigned command; signed afresh on each send
    created_ts REAL    NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    acked_ts   REAL,
    ok         INTEGER,
    error      TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX commands_unacked ON commands(acked_ts) WHERE acked_ts IS NULL;

CREATE TABLE nodes (
    host         TEXT PRIMARY KEY,
    online       INTEGER NOT NULL DEFAULT 0,
    drained      INTEGER NOT NULL DEFAULT 0,
    drain_reason TEXT    NOT NULL DEFAULT '',
    status       TEXT    NOT NULL,           -- last HostStatus as JSON
    updated_ts   REAL    NOT NULL
);

CREATE TABLE job_events (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL,
    ts     REAL    NOT NULL,
    state  TEXT    NOT NULL,
    detail TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX job_events_job ON job_events(job_id);

CREATE TABLE gpu_samples (                  -- telemetry downsampled to one row per flush
    host     TEXT    NOT NULL,
    gpu      INTEGER NOT NULL,
    ts       REAL    NOT NULL,
    util     REAL,
    mem_used INTEGER,
    power_w  REAL,
    temp_c   REAL
);
CREATE INDEX gpu_samples_host_ts ON gpu_samples(host, ts);

CREATE TABLE kv (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
