-- Run once by the postgres image on first start (empty data volume), as
-- POSTGRES_USER, who therefore owns both databases. The control plane creates
-- its tables itself (it runs its own migrations).
CREATE DATABASE tollgate_cf;
CREATE DATABASE tollgate_billing;
