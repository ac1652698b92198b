-- Work that one process of those sharing the database does at a time (replicating a thread):
-- who holds it, and until when (ms since the epoch).
CREATE TABLE leases (
    name     TEXT    PRIMARY KEY,
    holder   TEXT    NOT NULL,
    until_ms INTEGER NOT NULL
);
