//! Quota leases across edges: a counter per (account, meter, period) of units leased out,
//! seeded from the period's aggregate, that never passes the quota. An edge serves metered
//! checks from its lease, asks for `need` (all or nothing: a check that would be denied
//! reserves nothing) plus `extra`, and gives back what it did not use.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tollgate_protocol::usage::{LeaseGrant, LeaseRelease, LeaseRequest, limits};

use super::periods::from_ms;
use super::store::{self, CounterKey};
use super::valid_edge_id;
use crate::error::{Error, Result};
use crate::state::AppState;

/// Largest lease one request may ask for: `need` and `extra` are each at most a quantity.
pub const LEASE_WANT_MAX: i64 = limits::QUANTITY_MAX;

/// What a lease request gets from a counter at `leased` of quota `limit`: `need` when it fits
/// (all or nothing: a check that would be denied reserves nothing), plus as much of `extra`
/// as fits after it.
pub fn grant_for(leased: i64, limit: i64, need: i64, extra: i64) -> i64 {
    let room = i128::from(limit) - i128::from(leased);
    let need = i128::from(need);
    if need > room {
        return 0;
    }
    let granted = need + i128::from(extra).min(room - need).max(0);
    i64::try_from(granted).unwrap_or(0)
}

/// Grants what [`grant_for`] allows to the edge: the counter never passes `limit`. One
/// transaction; the counter row's lock orders concurrent edges.
pub async fn lease(
    pool: &PgPool,
    req: &LeaseRequest,
    now: DateTime<Utc>,
) -> Result<LeaseGrant, sqlx::Error> {
    let key = CounterKey {
        account: req.account,
        meter: &req.meter,
        period_start: from_ms(req.period_start_ms),
    };
    let mut tx = pool.begin().await?;
    let leased = store::counter_for_update(&mut tx, &key, now).await?;
    let granted = grant_for(leased, req.limit, req.need, req.extra);
    if granted == 0 {
        tx.rollback().await?;
        return Ok(LeaseGrant { granted, leased });
    }
    let leased = leased.saturating_add(granted);
    store::grant(&mut tx, &key, &req.edge_id, leased, granted, now).await?;
    tx.commit().await?;
    Ok(LeaseGrant { granted, leased })
}

/// Takes back units an edge did not use, never more than it was granted and has not
/// returned yet; returns how many.
pub async fn release(
    pool: &PgPool,
    rel: &LeaseRelease,
    now: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    let key = CounterKey {
        account: rel.account,
        meter: &rel.meter,
        period_start: from_ms(rel.period_start_ms),
    };
    let mut tx = pool.begin().await?;
    let taken = store::take_back(&mut tx, &key, &rel.edge_id, rel.units, now).await?;
    tx.commit().await?;
    Ok(taken)
}

fn lease_problem(detail: &str) -> Error {
    Error::unprocessable("invalid_lease", detail.to_owned())
}

/// What names a lease: a meter key, an edge id, a period start a timestamp can hold.
fn lease_key_ok(meter: &str, edge_id: &str, period_start_ms: i64) -> Result<()> {
    if tollgate_protocol::usage::validate_key(meter).is_err() || !valid_edge_id(edge_id) {
        return Err(lease_problem("meter and edge_id must be 1-128 characters"));
    }
    if !(0..=limits::TIMESTAMP_MS_MAX).contains(&period_start_ms) {
        return Err(lease_problem("period_start_ms must lie in 1970..=9999"));
    }
    Ok(())
}

/// An edge asks for a slice of an account's quota.
pub async fn request(state: &AppState, req: &LeaseRequest) -> Result<LeaseGrant> {
    if !(1..=LEASE_WANT_MAX).contains(&req.need)
        || !(0..=LEASE_WANT_MAX).contains(&req.extra)
        || req.limit < 0
    {
        return Err(lease_problem(
            "need must be 1..=2^40, extra 0..=2^40, limit not negative",
        ));
    }
    lease_key_ok(&req.meter, &req.edge_id, req.period_start_ms)?;
    let grant = lease(&state.billing, req, state.clock.now()).await?;
    tracing::debug!(account_id = %req.account, meter = %req.meter, edge_id = %req.edge_id,
        need = req.need, extra = req.extra, granted = grant.granted, leased = grant.leased, "quota lease");
    Ok(grant)
}

/// An edge gives back what it did not use.
pub async fn give_back(state: &AppState, rel: &LeaseRelease) -> Result<()> {
    if !(0..=LEASE_WANT_MAX).contains(&rel.units) {
        return Err(lease_problem("units must be 0..=2^40"));
    }
    lease_key_ok(&rel.meter, &rel.edge_id, rel.period_start_ms)?;
    release(&state.billing, rel, state.clock.now()).await?;
    Ok(())
}
