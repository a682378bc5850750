-- billing_prod: usage metering. Edges flush batches of usage events; the control plane stores
-- each event id once, keeps every raw event, and maintains one aggregate per
-- (account, meter, period) incrementally in the same statement (control-plane/src/usage.rs).
--
-- Retention (applied by an operator or a future job, never by ingest):
-- * raw event partitions (usage_events_YYYY_MM) older than the retention horizon (13 months by
--   default, `usage::RETENTION_MONTHS`) may be DETACHed and archived once every period they
--   hold has been invoiced;
-- * usage_event_ids rows received before the same horizon may be deleted. After that, a
--   redelivery of such an event would count again (in the current period, as late): edges
--   delete what was acknowledged, so this needs an edge to hold an acknowledged event for
--   over a year; refusing events older than the horizon at ingest would close it for good;
-- * usage_aggregates and usage_unique_values are kept: invoices refer to them.

-- Dedup: one row per event id ever stored. The primary key, not a read-then-write, decides
-- which of two concurrent deliveries of the same event counts.
CREATE TABLE usage_event_ids (
    event_id     text PRIMARY KEY CHECK (length(event_id) BETWEEN 1 AND 512),
    received_at  timestamptz NOT NULL
);
CREATE INDEX usage_event_ids_received ON usage_event_ids (received_at);

-- Every stored event, partitioned by month of occurrence (UTC). No unique constraint here:
-- usage_event_ids already admits each id once, and a partitioned unique index would have to
-- include occurred_at anyway.
CREATE TABLE usage_events (
    event_id      text NOT NULL,
    account_id    uuid NOT NULL,
    meter         text NOT NULL,
    quantity      bigint NOT NULL CHECK (quantity >= 0),
    occurred_at   timestamptz NOT NULL,
    -- The period the event was counted in: its own, or the current one when it arrived after
    -- its period's grace window (late). NULL: the meter was not in the catalog (unmetered).
    period_start  timestamptz,
    properties    jsonb NOT NULL DEFAULT '{}',
    edge_id       text NOT NULL,
    batch_id      uuid NOT NULL,
    received_at   timestamptz NOT NULL,
    late          boolean NOT NULL,
    CHECK (NOT late OR period_start IS NOT NULL)
) PARTITION BY RANGE (occurred_at);
-- Rebuilding or auditing one aggregate reads exactly its events.
CREATE INDEX usage_events_aggregate ON usage_events (account_id, meter, period_start);

-- Catches events outside every monthly partition (far past or future, or a month whose
-- partition was detached). usage_ensure_partitions moves them into a partition it creates.
CREATE TABLE usage_events_default PARTITION OF usage_events DEFAULT;

-- Creates the monthly partitions usage_events_YYYY_MM for `months` months starting with the
-- month (UTC) containing `p_from`; existing ones (attached or detached for archival) are left
-- alone. Rows of the default partition that fall into a new month are moved into it. Returns
-- the number of partitions created. Safe to call concurrently (advisory lock) and repeatedly.
CREATE FUNCTION usage_ensure_partitions(p_from timestamptz, p_months int) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    first_month timestamp := date_trunc('month', p_from AT TIME ZONE 'UTC');
    month_start timestamp;
    lower_bound timestamptz;
    upper_bound timestamptz;
    part        text;
    created     int := 0;
BEGIN
    IF p_months < 0 OR p_months > 120 THEN
        RAISE EXCEPTION 'usage_ensure_partitions: months must be 0..120, got %', p_months;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('usage_ensure_partitions'));
    FOR i IN 0 .. p_months - 1 LOOP
        month_start := first_month + make_interval(months => i);
        lower_bound := month_start AT TIME ZONE 'UTC';
        upper_bound := (month_start + interval '1 month') AT TIME ZONE 'UTC';
        part := 'usage_events_' || to_char(month_start, 'YYYY_MM');
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        EXECUTE format('CREATE TABLE %I (LIKE usage_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
        EXECUTE format(
            'WITH moved AS (DELETE FROM usage_events_default WHERE occurred_at >= $1 AND occurred_at < $2 RETURNING *)
             INSERT INTO %I SELECT * FROM moved', part)
            USING lower_bound, upper_bound;
        EXECUTE format('ALTER TABLE usage_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
            part, lower_bound, upper_bound);
        created := created + 1;
    END LOOP;
    RETURN created;
END
$$;

-- One aggregate per account, meter and period, updated by every batch that brings new events.
CREATE TABLE usage_aggregates (
    account_id       uuid NOT NULL,
    meter            text NOT NULL,
    period_start     timestamptz NOT NULL,
    period_end       timestamptz NOT NULL CHECK (period_end > period_start),
    -- The aggregation the value was computed with (the meter's, from the catalog).
    aggregation      text NOT NULL CHECK (aggregation IN ('sum', 'count', 'max', 'latest', 'unique_count')),
    value            bigint NOT NULL CHECK (value >= 0),
    -- Events counted, for every aggregation.
    events           bigint NOT NULL CHECK (events >= 0),
    -- `latest` only: the event whose quantity is the value. The newest occurred_at wins, the
    -- greater event id breaks ties, so the value does not depend on arrival order.
    latest_at        timestamptz,
    latest_event_id  text,
    updated_at       timestamptz NOT NULL,
    PRIMARY KEY (account_id, meter, period_start),
    CHECK ((latest_at IS NULL) = (latest_event_id IS NULL))
);

-- unique_count meters: each distinct property value once per account, meter and period.
CREATE TABLE usage_unique_values (
    account_id    uuid NOT NULL,
    meter         text NOT NULL,
    period_start  timestamptz NOT NULL,
    value         text NOT NULL,
    PRIMARY KEY (account_id, meter, period_start, value)
);
