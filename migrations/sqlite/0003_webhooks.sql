-- Webhook subscriptions and their delivery queue. A delivery row is written in the same
-- transaction that stores its record, so no accepted record is ever left without its deliveries.

CREATE TABLE webhooks (
    id               TEXT    PRIMARY KEY,
    thread_id        BLOB    NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    -- NULL: every log of the thread.
    log_id           BLOB,
    url              TEXT    NOT NULL,
    -- Standard Webhooks secret, `whsec_` + base64.
    secret           TEXT    NOT NULL,
    created_at       BIGINT  NOT NULL,
    -- Consecutive failed attempts; reset by a success.
    failures         BIGINT  NOT NULL DEFAULT 0,
    disabled_at      BIGINT,
    disabled_reason  TEXT
);
CREATE INDEX webhooks_thread ON webhooks (thread_id);

CREATE TABLE deliveries (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id    TEXT    NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    -- What happened: `record.created` (with the record's place) or `webhook.test`.
    event         TEXT    NOT NULL,
    thread_id     BLOB    NOT NULL,
    log_id        BLOB,
    seq           BIGINT  NOT NULL DEFAULT 0,
    counter       BIGINT  NOT NULL DEFAULT 0,
    cid           BLOB,
    created_at    BIGINT  NOT NULL,
    -- pending, delivered or failed (attempts exhausted).
    state         TEXT    NOT NULL DEFAULT 'pending',
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_at       BIGINT  NOT NULL,
    -- A worker holds a claimed delivery until then; another may take it after.
    leased_until  BIGINT  NOT NULL DEFAULT 0,
    last_status   INTEGER,
    last_error    TEXT,
    delivered_at  BIGINT
);
CREATE INDEX deliveries_due ON deliveries (next_at) WHERE state = 'pending';
CREATE INDEX deliveries_webhook ON deliveries (webhook_id, id);

CREATE TABLE delivery_attempts (
    delivery_id  BIGINT  NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    at           BIGINT  NOT NULL,
    status       INTEGER,
    error        TEXT,
    duration_ms  BIGINT  NOT NULL
);
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id, at);
