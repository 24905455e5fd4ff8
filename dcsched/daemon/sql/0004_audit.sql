-- Who did what, when, and what came of it: every state-changing API call and every refusal.
-- A call that changes jobs or nodes writes its row in the same transaction as the change.
CREATE TABLE audit (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    ts     REAL    NOT NULL,
    uid    INTEGER NOT NULL,                 -- -1 when the caller could not be identified
    "user" TEXT    NOT NULL,
    action TEXT    NOT NULL,                 -- submit, cancel, hold, drain, read_log, ...
    target TEXT    NOT NULL DEFAULT '',      -- "job 12", "node gpu01"
    result TEXT    NOT NULL,                 -- ok | refused | failed
    status INTEGER NOT NULL,                 -- the HTTP status answered
    detail TEXT    NOT NULL DEFAULT ''       -- the refusal's message, or what changed
);
CREATE INDEX audit_user_id ON audit("user", id);
CREATE INDEX audit_ts ON audit(ts);

-- Every drain and resume of a node (the nodes table keeps only the current reason).
CREATE TABLE node_drains (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    host    TEXT    NOT NULL,
    ts      REAL    NOT NULL,
    "user"  TEXT    NOT NULL,
    drained INTEGER NOT NULL,                -- 1: drained, 0: resumed
    reason  TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX node_drains_host ON node_drains(host, id);
