-- Rollouts (issue 16): the server's record of each rollout, the outcome of every device that
-- tried it, and the row that serialises signing. Shared by SQLite and PostgreSQL.

-- One rollout of a release (channel and version). `state` is active, paused, halted or
-- cancelled (cancelled is final). `selection` is what the administrator asked for, as JSON
-- ("all", {"tag": "x"} or {"list": [...]}); `devices` the ids it resolved to when it started
-- (NULL: every device of the channel, now and later); `pinned` the ids held where they are.
-- The failure policy: halt once more than `max_failures` devices failed, or more than
-- `max_failure_percent` of the devices that tried, counted only from `min_tried` tries on.
CREATE TABLE rollouts (
    id {{id}},
    channel TEXT NOT NULL,
    version TEXT NOT NULL,
    state TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    waves TEXT NOT NULL,
    selection TEXT NOT NULL,
    devices TEXT,
    pinned TEXT NOT NULL DEFAULT '[]',
    max_failures BIGINT,
    max_failure_percent BIGINT,
    min_tried BIGINT NOT NULL DEFAULT 1,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    halt_reason TEXT
);
-- The repository holds one record per release (rollouts/CHANNEL/VERSION.json): at most one
-- rollout of a release that is not cancelled, decided by the database for every server.
CREATE UNIQUE INDEX rollouts_one_live_per_release ON rollouts (channel, version)
    WHERE state <> 'cancelled';

-- What each device did in a rollout, one row per device, moved forward as its reports arrive
-- (started, then installed, then failed-install or failed-health; never back). `first_at` is
-- its first report about the release, `at` when its outcome last changed, `detail` the
-- report's journal line or health detail at that change: enough to chart progress and the
-- failure rate over time.
CREATE TABLE rollout_devices (
    rollout_id BIGINT NOT NULL REFERENCES rollouts (id),
    device_id TEXT NOT NULL REFERENCES devices (id),
    outcome TEXT NOT NULL,
    first_at BIGINT NOT NULL,
    at BIGINT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (rollout_id, device_id)
);

-- One row: the lock a server holds (SELECT ... FOR UPDATE on PostgreSQL) while it signs the
-- repository's rollouts role, and who signed last.
CREATE TABLE signing_lock (
    id BIGINT PRIMARY KEY,
    holder TEXT NOT NULL,
    at BIGINT NOT NULL
);
INSERT INTO signing_lock (id, holder, at) VALUES (1, '', 0);
