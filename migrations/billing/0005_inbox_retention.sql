-- The inbox's event ids are pruned after the outbox retention window
-- (`TOLLGATE_OUTBOX_RETENTION_HOURS`): once cf has pruned an event's outbox row it can never be
-- delivered again, so its id guards nothing.
CREATE INDEX inbox_processed ON inbox (processed_at);
