-- The database's own journal: every event of the thread in the order views apply them.
-- A position is clock (8 bytes, big-endian) || log key (32) || counter (8, big-endian), so
-- comparing keys as bytes is comparing positions.
CREATE TABLE events (
    pos BLOB PRIMARY KEY,
    actions BLOB NOT NULL
) WITHOUT ROWID;

-- Every view's state just after the event at `pos`, which is the `events`-th of the order.
CREATE TABLE snapshots (
    pos BLOB PRIMARY KEY,
    events INTEGER NOT NULL,
    bytes BLOB NOT NULL
) WITHOUT ROWID;

-- How far into the local record store the journal has read (its arrival sequence number), and
-- the position through which compaction removed events (NULL: none removed).
CREATE TABLE progress (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    seen_seq INTEGER NOT NULL,
    compacted_through BLOB
);
INSERT INTO progress (id, seen_seq) VALUES (0, 0);
