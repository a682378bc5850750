-- A metered feature's meter as the rules declare it (aggregation, period, soft, lease):
-- the control plane aggregates usage and grants leases from it. JSON of
-- tollgate_protocol::usage::MeterSpec; NULL for bool and limit features.
ALTER TABLE features ADD COLUMN meter jsonb;
