-- A journal file keeps each snapshot in a file of its own beside it: `file` is its name in
-- the directory `<journal>.snapshots` and `crc32` the CRC-32 of its bytes; `bytes` is then
-- empty. A journal in memory (and a snapshot stored before this) keeps the bytes in the row.
ALTER TABLE snapshots ADD COLUMN file TEXT;
ALTER TABLE snapshots ADD COLUMN crc32 INTEGER;
