-- Lookups by CID go through 8 bytes of the digest (bytes 5-12 of a CIDv1 sha2-256) and then
-- compare the whole CID. The keys are random, so every insert lands on a random index page:
-- 8-byte keys make indexes a third the size, and a commit rewrites a third as many pages.
DROP INDEX records_cid;
DROP INDEX records_event_cid;
DROP INDEX records_header_cid;
DROP INDEX records_body_cid;
CREATE INDEX records_cid_prefix ON records ((substr(cid, 5, 8)));
CREATE INDEX records_event_cid_prefix ON records ((substr(event_cid, 5, 8)));
CREATE INDEX records_header_cid_prefix ON records ((substr(header_cid, 5, 8)));
CREATE INDEX records_body_cid_prefix ON records ((substr(body_cid, 5, 8)));
