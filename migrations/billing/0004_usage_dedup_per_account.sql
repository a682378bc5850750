-- Usage events deduplicate per (account, event id), not per event id: account X's `order-1`
-- and account Y's `order-1` are two events (control-plane/src/usage.rs, "Ingest").
--
-- `content_sha256` is the SHA-256 of what the event says (meter, quantity, properties; not its
-- timestamp, which an edge fills in when the caller leaves it out, so a retry may differ). A
-- later event with the same (account, id) and another content is refused (`id_reused`)
-- instead of silently counted as a duplicate. Rows stored before this migration have none.
ALTER TABLE usage_event_ids ADD COLUMN account_id uuid;
ALTER TABLE usage_event_ids ADD COLUMN content_sha256 bytea
    CHECK (content_sha256 IS NULL OR length(content_sha256) = 32);

UPDATE usage_event_ids i SET account_id = e.account_id
  FROM usage_events e
 WHERE e.event_id = i.event_id;
-- An id without a stored event cannot exist (both are written by one statement); should one,
-- it admits nothing anymore.
DELETE FROM usage_event_ids WHERE account_id IS NULL;

ALTER TABLE usage_event_ids ALTER COLUMN account_id SET NOT NULL;
ALTER TABLE usage_event_ids DROP CONSTRAINT usage_event_ids_pkey;
ALTER TABLE usage_event_ids ADD PRIMARY KEY (account_id, event_id);
