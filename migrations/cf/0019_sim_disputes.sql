-- The payment simulator's disputes (development and tests only; control-plane/src/gateways/simulated.rs).
CREATE TABLE sim_disputes (
    id          text PRIMARY KEY,
    state       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL
);
