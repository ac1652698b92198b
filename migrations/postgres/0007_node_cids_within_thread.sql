-- A record's CID is looked up in any thread; its event, header and body CIDs within their
-- thread. An index keyed by a random digest takes each insert on a random page, and once it
-- outgrows the pages a checkpoint interval changes, each of those pages is written whole to
-- the WAL. Led by the thread ID, a batch's entries land on a few neighbouring pages instead.
DROP INDEX records_event_cid_prefix;
DROP INDEX records_header_cid_prefix;
DROP INDEX records_body_cid_prefix;
CREATE INDEX records_event_cid_prefix ON records (thread_id, (substr(event_cid, 5, 8)));
CREATE INDEX records_header_cid_prefix ON records (thread_id, (substr(header_cid, 5, 8)));
CREATE INDEX records_body_cid_prefix ON records (thread_id, (substr(body_cid, 5, 8)));
