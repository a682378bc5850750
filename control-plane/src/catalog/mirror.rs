//! The sold catalog mirrored to the payment provider's own catalog (Stripe Products and
//! Prices), so the company's finance tools and Stripe's dashboard see the plans Tollgate bills.
//!
//! * Promoting (or rolling back to) a bundle writes, in the promotion's transaction, one
//!   `plan_prices` row per plan: the intent survives any crash and is never lost to a provider
//!   being down.
//! * The maintenance worker claims due rows with a lease (`FOR UPDATE SKIP LOCKED` in one
//!   statement, committed before any provider call), calls
//!   [`PaymentGateway::ensure_price`](crate::gateways::PaymentGateway::ensure_price), and
//!   records the provider's ids; a failure is recorded and retried with backoff.
//! * Idempotent end to end: one product per plan (`tg_plan_<key>`), one immutable price per
//!   plan and bundle version found again by its lookup key `<plan>:v<version>` (and created
//!   under an idempotency key derived from it), so a retry after a crash, a timeout after the
//!   provider created the price, or two workers at once never create a second price.

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use tollgate_rules::ir;

use crate::error::Result;
use crate::gateways::{GatewayAmount, PaymentGateway, PriceSpec};
use crate::state::AppState;

/// How long a claimed row is left to its worker before another may try it.
pub const CLAIM_LEASE: TimeDelta = TimeDelta::minutes(2);
/// The first retry after a failure; doubled per attempt up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: TimeDelta = TimeDelta::seconds(30);
pub const MAX_BACKOFF: TimeDelta = TimeDelta::hours(1);

/// The lookup key of `plan`'s price in bundle `version`.
pub fn lookup_key(plan: &str, version: i64) -> String {
    format!("{plan}:v{version}")
}

/// Asks, in the caller's (promotion's) transaction, for every plan of bundle `version` to be
/// mirrored. A version promoted again (a rollback to it) asks for nothing new.
pub async fn request(
    conn: &mut PgConnection,
    version: i64,
    plans: &[ir::Plan],
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    let mut keys = Vec::with_capacity(plans.len());
    let mut plan_keys = Vec::with_capacity(plans.len());
    let mut names = Vec::with_capacity(plans.len());
    let mut amounts = Vec::with_capacity(plans.len());
    let mut currencies = Vec::with_capacity(plans.len());
    let mut intervals = Vec::with_capacity(plans.len());
    for p in plans {
        keys.push(lookup_key(&p.key, version));
        plan_keys.push(p.key.clone());
        names.push(p.name.clone());
        amounts.push(p.price_minor);
        currencies.push(p.currency.clone());
        intervals.push(p.interval.as_str());
    }
    sqlx::query(
        "INSERT INTO plan_prices (lookup_key, plan_key, bundle_version, name, amount_minor,
                                  currency, interval, requested_at, next_try_at)
         SELECT k, p, $2, n, a, c, i, $8, $8
         FROM UNNEST($1::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[])
              AS t(k, p, n, a, c, i)
         ON CONFLICT (lookup_key) DO NOTHING",
    )
    .bind(&keys)
    .bind(version)
    .bind(&plan_keys)
    .bind(&names)
    .bind(&amounts)
    .bind(&currencies)
    .bind(&intervals)
    .bind(now)
    .execute(conn)
    .await
    .map(drop)
}

/// Whether a plan's price is at the provider yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MirrorStatus {
    Pending,
    Mirrored,
}

/// One plan price and where it is at the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanPrice {
    pub lookup_key: String,
    pub plan: String,
    pub bundle_version: i64,
    pub name: String,
    pub amount_minor: i64,
    pub currency: String,
    pub interval: String,
    pub status: MirrorStatus,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub provider: Option<String>,
    pub product_id: Option<String>,
    pub price_id: Option<String>,
    pub requested_at: DateTime<Utc>,
    pub next_try_at: Option<DateTime<Utc>>,
    pub mirrored_at: Option<DateTime<Utc>>,
}

type Row = (
    String,
    String,
    i64,
    String,
    i64,
    String,
    String,
    i32,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

fn from_row(r: Row) -> PlanPrice {
    let mirrored = r.14.is_some();
    PlanPrice {
        lookup_key: r.0,
        plan: r.1,
        bundle_version: r.2,
        name: r.3,
        amount_minor: r.4,
        currency: r.5,
        interval: r.6,
        status: if mirrored {
            MirrorStatus::Mirrored
        } else {
            MirrorStatus::Pending
        },
        attempts: r.7,
        last_error: r.8,
        provider: r.9,
        product_id: r.10,
        price_id: r.11,
        requested_at: r.12,
        next_try_at: (!mirrored).then_some(r.13),
        mirrored_at: r.14,
    }
}

const COLUMNS: &str = "lookup_key, plan_key, bundle_version, name, amount_minor, currency, \
     interval, attempts, last_error, provider, product_id, price_id, requested_at, next_try_at, \
     mirrored_at";

/// Every plan price, newest bundle first (what an operator reads to see the mirror's state).
pub async fn list(state: &AppState) -> Result<Vec<PlanPrice>> {
    let rows: Vec<Row> = sqlx::query_as(sqlf!(
        "SELECT {COLUMNS} FROM plan_prices ORDER BY bundle_version DESC, plan_key"
    ))
    .fetch_all(&state.cf)
    .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// Claims up to `batch` due rows in one committed statement: each gets a lease
/// ([`CLAIM_LEASE`]) before its worker calls the provider, so no lock is held across the call
/// and no other worker calls for it meanwhile.
async fn claim(pool: &PgPool, batch: i64, now: DateTime<Utc>) -> sqlx::Result<Vec<PlanPrice>> {
    let rows: Vec<Row> = sqlx::query_as(sqlf!(
        "UPDATE plan_prices SET next_try_at = $2, attempts = attempts + 1
         WHERE lookup_key IN (
             SELECT lookup_key FROM plan_prices
             WHERE mirrored_at IS NULL AND next_try_at <= $1
             ORDER BY bundle_version, next_try_at
             LIMIT $3
             FOR UPDATE SKIP LOCKED)
         RETURNING {COLUMNS}"
    ))
    .bind(now)
    .bind(now + CLAIM_LEASE)
    .bind(batch)
    .fetch_all(pool)
    .await?;
    let mut claimed: Vec<PlanPrice> = rows.into_iter().map(from_row).collect();
    // Older bundles first: the product's name ends as the newest bundle's.
    claimed.sort_by(|a, b| (a.bundle_version, &a.plan).cmp(&(b.bundle_version, &b.plan)));
    Ok(claimed)
}

/// The wait before the next try after `attempts` failed ones.
pub fn backoff(attempts: i32) -> TimeDelta {
    let doublings = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(16);
    FIRST_BACKOFF
        .checked_mul(1 << doublings)
        .map_or(MAX_BACKOFF, |d| d.min(MAX_BACKOFF))
}

/// Mirrors up to `batch` due prices through `gateway`; returns how many were mirrored.
pub async fn mirror_due(
    pool: &PgPool,
    gateway: &dyn PaymentGateway,
    batch: i64,
    now: DateTime<Utc>,
) -> sqlx::Result<usize> {
    let mut mirrored = 0;
    for price in claim(pool, batch, now).await? {
        let spec = PriceSpec {
            plan: &price.plan,
            name: &price.name,
            lookup_key: &price.lookup_key,
            amount: GatewayAmount {
                amount_minor: price.amount_minor,
                currency: &price.currency,
            },
            interval: &price.interval,
        };
        match gateway.ensure_price(&spec).await {
            Ok(found) => {
                sqlx::query(
                    "UPDATE plan_prices SET provider = $2, product_id = $3, price_id = $4,
                            mirrored_at = $5, last_error = NULL
                     WHERE lookup_key = $1 AND mirrored_at IS NULL",
                )
                .bind(&price.lookup_key)
                .bind(gateway.name())
                .bind(&found.product_id)
                .bind(&found.price_id)
                .bind(now)
                .execute(pool)
                .await?;
                tracing::info!(lookup_key = %price.lookup_key, price = %found.price_id,
                               "plan price mirrored to the payment provider");
                mirrored += 1;
            }
            Err(err) => {
                tracing::warn!(lookup_key = %price.lookup_key, attempts = price.attempts,
                               error = %err, "mirroring a plan price failed; retrying later");
                sqlx::query(
                    "UPDATE plan_prices SET last_error = $2, next_try_at = $3
                     WHERE lookup_key = $1 AND mirrored_at IS NULL",
                )
                .bind(&price.lookup_key)
                .bind(err.to_string())
                .bind(now + backoff(price.attempts))
                .execute(pool)
                .await?;
            }
        }
    }
    Ok(mirrored)
}

/// [`mirror_due`] with the process's gateway and clock (the maintenance worker's part).
pub async fn run_due(state: &AppState, batch: i64) -> sqlx::Result<usize> {
    mirror_due(&state.cf, state.gateway.as_ref(), batch, state.clock.now()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        assert_eq!(backoff(1), TimeDelta::seconds(30));
        assert_eq!(backoff(2), TimeDelta::seconds(60));
        assert_eq!(backoff(3), TimeDelta::seconds(120));
        assert_eq!(backoff(8), TimeDelta::hours(1));
        assert_eq!(backoff(i32::MAX), TimeDelta::hours(1));
        assert_eq!(backoff(0), TimeDelta::seconds(30));
        assert_eq!(backoff(-5), TimeDelta::seconds(30));
    }

    #[test]
    fn lookup_keys_name_plan_and_version() {
        assert_eq!(lookup_key("pro", 7), "pro:v7");
    }
}
