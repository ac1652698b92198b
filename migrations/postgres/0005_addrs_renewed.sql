-- When a log's addresses were last given by its writer: they expire unless renewed.
ALTER TABLE logs ADD COLUMN addrs_at BIGINT NOT NULL DEFAULT 0;
UPDATE logs SET addrs_at = registered_at;
