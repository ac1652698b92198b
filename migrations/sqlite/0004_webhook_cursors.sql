-- Records reach webhooks through a cursor per webhook over its thread's arrival order, so
-- storing a record writes nothing for its webhooks: the record itself is the pending work.
-- A delivery row is written once the record has been sent (or when it has to be retried),
-- and for replays and test events.
ALTER TABLE webhooks ADD COLUMN cursor_seq BIGINT NOT NULL DEFAULT 0;
-- A worker holds a webhook's cursor until then; another may take it after.
ALTER TABLE webhooks ADD COLUMN leased_until BIGINT NOT NULL DEFAULT 0;
-- Deliveries queued before cursors existed stay rows; the cursor starts after them.
UPDATE webhooks SET cursor_seq = (SELECT seq FROM threads WHERE threads.id = webhooks.thread_id);

-- The `webhook-id` header, stable across retries (NULL: `msg_<id>`).
ALTER TABLE deliveries ADD COLUMN message_id TEXT;
-- The successful attempt's duration; failed attempts are kept in `delivery_attempts`.
ALTER TABLE deliveries ADD COLUMN duration_ms BIGINT;

-- Deliveries of a disabled webhook are `paused` (out of the due index) until it is enabled
-- again, so that claiming never has to look at webhooks.
UPDATE deliveries SET state = 'paused'
WHERE state = 'pending' AND webhook_id IN (SELECT id FROM webhooks WHERE disabled_at IS NOT NULL);
