-- A record's log is checked by the group commit, under its thread's row lock, and deleting a
-- log or a thread deletes its records first: the foreign key's per-row check is redundant.
ALTER TABLE records DROP CONSTRAINT records_thread_id_log_id_fkey;
