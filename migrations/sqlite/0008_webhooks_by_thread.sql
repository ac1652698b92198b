-- Failed attempts name their delivery's thread, as on Postgres, where webhooks, deliveries and
-- attempts are keyed by thread first. One SQLite file has no nodes to place rows on, so its
-- keys stay as they are; the queries, shared by both backends, name the thread all the same.
ALTER TABLE delivery_attempts ADD COLUMN thread_id BLOB;
UPDATE delivery_attempts
SET thread_id = (SELECT d.thread_id FROM deliveries d WHERE d.id = delivery_attempts.delivery_id);
