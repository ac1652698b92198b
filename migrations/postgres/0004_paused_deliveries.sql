-- Deliveries of a disabled webhook are `paused` (out of the due index) until it is enabled
-- again, so that claiming never has to look at webhooks.
UPDATE deliveries SET state = 'paused'
WHERE state = 'pending' AND webhook_id IN (SELECT id FROM webhooks WHERE disabled_at IS NOT NULL);

-- Due deliveries in the order they are claimed, so that a claim can start past the last one.
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (next_at, id) WHERE state = 'pending';

-- Room on each page for a claim's new row version: leases are then written without new
-- index entries (heap-only tuples).
ALTER TABLE deliveries SET (fillfactor = 70);
