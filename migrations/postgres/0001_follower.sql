-- The follower's tables. Times are Unix milliseconds; IDs and CIDs are their binary forms.

CREATE TABLE threads (
    id            BYTEA    PRIMARY KEY,
    public        BOOLEAN NOT NULL,
    -- Every log of a thread shares the thread's follow key; pull tokens derive from it.
    follow_key    BYTEA   NOT NULL,
    -- Last arrival sequence number handed out in this thread (advanced under the row lock).
    seq           BIGINT  NOT NULL DEFAULT 0,
    record_count  BIGINT  NOT NULL DEFAULT 0,
    byte_count    BIGINT  NOT NULL DEFAULT 0,
    created_at    BIGINT  NOT NULL
);

CREATE TABLE logs (
    thread_id     BYTEA    NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    log_id        BYTEA    NOT NULL,
    addrs         TEXT    NOT NULL DEFAULT '[]',
    head_cid      BYTEA,
    head_counter  BIGINT  NOT NULL DEFAULT 0,
    byte_count    BIGINT  NOT NULL DEFAULT 0,
    registered_at BIGINT  NOT NULL,
    PRIMARY KEY (thread_id, log_id)
);

CREATE TABLE records (
    thread_id   BYTEA    NOT NULL,
    seq         BIGINT  NOT NULL,
    log_id      BYTEA    NOT NULL,
    counter     BIGINT  NOT NULL,
    cid         BYTEA    NOT NULL,
    prev        BYTEA,
    event_cid   BYTEA    NOT NULL,
    header_cid  BYTEA    NOT NULL,
    body_cid    BYTEA    NOT NULL,
    record      BYTEA    NOT NULL,
    event       BYTEA    NOT NULL,
    header      BYTEA    NOT NULL,
    body        BYTEA    NOT NULL,
    arrived_at  BIGINT  NOT NULL,
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
    thread_id   BYTEA    NOT NULL,
    log_id      BYTEA    NOT NULL,
    cid         BYTEA    NOT NULL,
    prev        BYTEA,
    record      BYTEA    NOT NULL,
    event       BYTEA    NOT NULL,
    header      BYTEA    NOT NULL,
    body        BYTEA    NOT NULL,
    arrived_at  BIGINT  NOT NULL,
    PRIMARY KEY (thread_id, cid),
    FOREIGN KEY (thread_id, log_id) REFERENCES logs (thread_id, log_id) ON DELETE CASCADE
);

-- Nonces of signed requests, remembered until their timestamp window closes.
CREATE TABLE request_nonces (
    nonce       BYTEA    PRIMARY KEY,
    expires_at  BIGINT  NOT NULL
);
CREATE INDEX request_nonces_expiry ON request_nonces (expires_at);

-- Registration tokens issued by the operator, stored as SHA-256 hashes.
CREATE TABLE registration_tokens (
    token_hash  BYTEA    PRIMARY KEY,
    note        TEXT    NOT NULL DEFAULT '',
    created_at  BIGINT  NOT NULL
);

-- Settings shared by every server process using this database (e.g. `server_id`).
CREATE TABLE settings (
    name        TEXT    PRIMARY KEY,
    value       TEXT    NOT NULL
);
