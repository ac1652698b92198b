-- Webhooks, their deliveries and failed attempts keyed by thread first, like every other
-- per-thread table: a distributed Postgres can then place them with their thread, and every
-- key, unique index and foreign key of theirs holds within one thread.
ALTER TABLE delivery_attempts ADD COLUMN thread_id BYTEA;
UPDATE delivery_attempts a SET thread_id = d.thread_id FROM deliveries d WHERE d.id = a.delivery_id;
ALTER TABLE delivery_attempts ALTER COLUMN thread_id SET NOT NULL;

ALTER TABLE delivery_attempts DROP CONSTRAINT delivery_attempts_delivery_id_fkey;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_webhook_id_fkey;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_pkey;
ALTER TABLE webhooks DROP CONSTRAINT webhooks_pkey;

ALTER TABLE webhooks ADD PRIMARY KEY (thread_id, id);
ALTER TABLE deliveries ADD PRIMARY KEY (thread_id, id);
ALTER TABLE deliveries ADD FOREIGN KEY (thread_id, webhook_id)
    REFERENCES webhooks (thread_id, id) ON DELETE CASCADE;
ALTER TABLE delivery_attempts ADD FOREIGN KEY (thread_id, delivery_id)
    REFERENCES deliveries (thread_id, id) ON DELETE CASCADE;

-- The API names a webhook by its ID alone (random, so unique without a constraint).
DROP INDEX webhooks_thread;
CREATE INDEX webhooks_id ON webhooks (id);
DROP INDEX deliveries_webhook;
CREATE INDEX deliveries_webhook ON deliveries (thread_id, webhook_id, id);
DROP INDEX delivery_attempts_delivery;
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (thread_id, delivery_id, at);
