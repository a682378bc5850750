-- The service layer (issue 11).
--
-- 1. Idempotency records keep the operation's typed outcome (its value or its error, as the
--    service returned it) instead of an HTTP response: every interface renders it, on the first
--    answer and on replays alike. Completed records of the old shape (at most 24 h of replay
--    caches) cannot be read as outcomes and are dropped; in-progress ones are kept and resume.
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_completed_has_response;
DELETE FROM idempotency_keys WHERE state = 'completed';
ALTER TABLE idempotency_keys DROP COLUMN response_status;
ALTER TABLE idempotency_keys DROP COLUMN response_body;
ALTER TABLE idempotency_keys ADD COLUMN outcome jsonb;
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_completed_has_outcome
    CHECK ((state = 'completed') = (outcome IS NOT NULL));

-- 2. Processed outbox rows are pruned after the retention window
--    (`TOLLGATE_OUTBOX_RETENTION_HOURS`): find them by when they were processed.
CREATE INDEX outbox_processed ON outbox (processed_at) WHERE processed_at IS NOT NULL;
