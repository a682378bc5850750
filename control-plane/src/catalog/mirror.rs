//! The sold catalog mirrored to the payment provider's own catalog (Stripe Products and
//! Prices), so the company's finance tools and Stripe's dashboard see the plans Tollgate bills.
//!
//! * Promoting (or rolling back to) a bundle writes, in the promotion's transaction, one
//!   `plan_prices` row per plan: the intent survives any crash and is never lost to a provider
//!   being down.
//! * The maintenance worker claims due rows with a lease ([`store::claim_prices`], committed
//!   before any provider call), calls
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

use super::store;
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
    let keys: Vec<String> = plans.iter().map(|p| lookup_key(&p.key, version)).collect();
    store::request_prices(conn, version, &keys, plans, now).await
}

/// Whether a plan's price is at the provider yet.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum MirrorStatus {
    Pending,
    Mirrored,
}

/// One plan price and where it is at the provider.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct PlanPrice {
    pub lookup_key: String,
    #[sqlx(rename = "plan_key")]
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
    /// When a pending price is (next) tried; `None` once mirrored.
    pub next_try_at: Option<DateTime<Utc>>,
    pub mirrored_at: Option<DateTime<Utc>>,
}

/// Every plan price, newest bundle first (what an operator reads to see the mirror's state).
pub async fn list(state: &AppState) -> Result<Vec<PlanPrice>> {
    Ok(store::prices(&state.cf).await?)
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
    let mut claimed = store::claim_prices(pool, now, now + CLAIM_LEASE, batch).await?;
    // Older bundles first: the product's name ends as the newest bundle's.
    claimed.sort_by(|a, b| (a.bundle_version, &a.plan).cmp(&(b.bundle_version, &b.plan)));
    for price in claimed {
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
                store::price_mirrored(pool, &price.lookup_key, gateway.name(), &found, now).await?;
                tracing::info!(lookup_key = %price.lookup_key, price = %found.price_id,
                               "plan price mirrored to the payment provider");
                mirrored += 1;
            }
            Err(err) => {
                tracing::warn!(lookup_key = %price.lookup_key, attempts = price.attempts,
                               error = %err, "mirroring a plan price failed; retrying later");
                store::price_failed(
                    pool,
                    &price.lookup_key,
                    &err.to_string(),
                    now + backoff(price.attempts),
                )
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
