-- The fleet server's schema, shared by SQLite and PostgreSQL. `{{id}}` is the one word the
-- dialects spell differently (an auto-increment primary key); src/db/migrate.rs replaces it.
-- Times are Unix seconds (BIGINT): both databases and sqlx's `Any` driver agree on integers.

-- Enrolled devices. `id` is the server's name for a device (the CN of its certificate);
-- `serial` is what the device says its hardware serial is; `cert_sha256` the SHA-256 of its
-- certificate's DER, which identifies it on every mutual-TLS request.
CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    serial TEXT NOT NULL,
    cert_sha256 TEXT NOT NULL UNIQUE,
    tags TEXT NOT NULL DEFAULT '[]',
    channel TEXT NOT NULL DEFAULT 'stable',
    enrolled_at BIGINT NOT NULL,
    revoked_at BIGINT,
    last_seen_at BIGINT,
    last_report TEXT,
    -- The per-device report rate limit: the minute (Unix seconds / 60) being counted and how
    -- many reports arrived in it. One atomic UPDATE reads and bumps both.
    rate_window BIGINT NOT NULL DEFAULT 0,
    rate_count BIGINT NOT NULL DEFAULT 0
);

-- One-time enrollment tokens, stored as the SHA-256 of the token (never the token).
CREATE TABLE enrollment_tokens (
    hash TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    device_id TEXT
);

-- A bounded history of each device's reports (the newest is also devices.last_report).
CREATE TABLE device_reports (
    id {{id}},
    device_id TEXT NOT NULL REFERENCES devices (id),
    received_at BIGINT NOT NULL,
    report TEXT NOT NULL
);
CREATE INDEX device_reports_by_device ON device_reports (device_id, id);

-- Administrators' API tokens, stored as the SHA-256 of the token.
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    revoked_at BIGINT
);

-- Every administrative action and enrollment: who, what, on what, when. Append-only: migration
-- 2 makes the database itself refuse UPDATE and DELETE.
CREATE TABLE audit_log (
    id {{id}},
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
