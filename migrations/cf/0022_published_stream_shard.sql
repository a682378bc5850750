-- The change stream is sharded (protocol/src/redis_keys.rs): the stream id an account was last
-- published under belongs to its shard's stream, and ids of different shards (different Redis
-- nodes, in a cluster) do not compare. The repair (control-plane/src/entitlements/publish.rs)
-- compares, per shard, the newest id recorded here with that shard's stream. Rows published
-- before sharding (no shard) went to the old unsharded stream and are left out of it.
ALTER TABLE entitlement_facts ADD COLUMN published_stream_shard integer
    CHECK (published_stream_shard >= 0);
ALTER TABLE entitlement_facts ADD CONSTRAINT entitlement_facts_published_stream_shard
    CHECK (published_stream_shard IS NULL OR published_stream_ms IS NOT NULL);
DROP INDEX entitlement_facts_published;
CREATE INDEX entitlement_facts_published
    ON entitlement_facts (published_stream_shard, published_stream_ms, published_stream_seq);
