-- The follower's tables. Times are Unix milliseconds; IDs and CIDs are their binary forms.

CREATE TABLE threads (
    id            BLOB    PRIMARY KEY,
    public        BOOLEAN NOT NULL,
    -- Every log of a thread shares the thread's follow key; pull tokens derive from it.
    follow_key    BLOB    NOT NULL,
    -- Last arrival sequence number handed out in this thread (advanced under the row lock).
    seq           INTEGER NOT NULL DEFAULT 0,
    record_count  INTEGER NOT NULL DEFAULT 0,
    byte_count    INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL
);

CREATE TABLE logs (
    thread_id     BLOB    NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    log_id        BLOB    NOT NULL,
    addrs         TEXT    NOT NULL DEFAULT '[]',
    head_cid      BLOB,
    head_counter  INTEGER NOT NULL DEFAULT 0,
    byte_count    INTEGER NOT NULL DEFAULT 0,
    registered_at INTEGER NOT NULL,
    PRIMARY KEY (thread_id, log_id)
);

CREATE TABLE records (
    thread_id   BLOB    NOT NULL,
    seq         INTEGER NOT NULL,
    log_id      BLOB    NOT NULL,
    counter     INTEGER NOT NULL,
    cid         BLOB    NOT NULL,
    prev        BLOB,
    event_cid   BLOB    NOT NULL,
    header_cid  BLOB    NOT NULL,
    body_cid    BLOB    NOT NULL,
    record      BLOB    NOT NULL,
    event       BLOB    NOT NULL,
    header      BLOB    NOT NULL,
    body        BLOB    NOT NULL,
    arrived_at  INTEGER NOT NULL,
    PRIMARY KEY (thread_id, seq),
    FOREIGN KEY (thread_id, log_id) REFERENCES logs (thread_id, log_id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX records_log_counter ON records (thread_id, log_id, counter);
CREATE INDEX records_cid ON records (cid);
CREATE INDEX records_event_cid ON records (event_cid);
CREATE INDEX records_header_cid ON records (header_cid);
CREATE INDEX records_body_cid ON records (body_cid);

-- Second records claiming an already-taken predecessor: kept as evidence, never served as the log.
CREATE TABLE forks (
    thread_id   BLOB    NOT NULL,
    log_id      BLOB    NOT NULL,
    cid         BLOB    NOT NULL,
    prev        BLOB,
    record      BLOB    NOT NULL,
    event       BLOB    NOT NULL,
    header      BLOB    NOT NULL,
    body        BLOB    NOT NULL,
    arrived_at  INTEGER NOT NULL,
    PRIMARY KEY (thread_id, cid),
    FOREIGN KEY (thread_id, log_id) REFERENCES logs (thread_id, log_id) ON DELETE CASCADE
);

-- Nonces of signed requests, remembered until their timestamp window closes.
CREATE TABLE request_nonces (
    nonce       BLOB    PRIMARY KEY,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX request_nonces_expiry ON request_nonces (expires_at);

-- Registration tokens issued by the operator, stored as SHA-256 hashes.
CREATE TABLE registration_tokens (
    token_hash  BLOB    PRIMARY KEY,
    note        TEXT    NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL
);

-- Settings shared by every server process using this database (e.g. `server_id`).
CREATE TABLE settings (
    name        TEXT    PRIMARY KEY,
    value       TEXT    NOT NULL
);
