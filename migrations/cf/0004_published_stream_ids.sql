-- The change-stream id each account's facts were last published under (control-plane/src/
-- entitlements.rs, "A Redis that lost writes"). Redis keeps nothing authoritative, but edges
-- read its L2 copies: a Redis restored from an older snapshot (or failed over to a lagging
-- replica) would serve facts older than these rows. Its stream's newest id then lies before
-- the newest id recorded here, and exactly the accounts published after it are republished.
ALTER TABLE entitlement_facts ADD COLUMN published_stream_ms bigint CHECK (published_stream_ms >= 0);
ALTER TABLE entitlement_facts ADD COLUMN published_stream_seq bigint CHECK (published_stream_seq >= 0);
ALTER TABLE entitlement_facts ADD CONSTRAINT entitlement_facts_published_stream_id
    CHECK ((published_stream_ms IS NULL) = (published_stream_seq IS NULL));
CREATE INDEX entitlement_facts_published ON entitlement_facts (published_stream_ms, published_stream_seq);
