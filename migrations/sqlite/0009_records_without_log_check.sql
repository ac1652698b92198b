-- Postgres drops the foreign key from records to logs here; SQLite's check is an index lookup.
SELECT 1;
