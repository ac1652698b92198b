-- What the journal no longer holds but the views include: after compaction, or after starting
-- from a published snapshot. Per log, the highest counter applied up to `compacted_through`
-- (DAG-CBOR list of [log key, counter]); an event at or before that position with a counter
-- at most its log's is covered and skipped.
ALTER TABLE progress ADD COLUMN covered_heads BLOB;
