//! SQL for the catalog (cf_prod `features`, `plans`, `plan_features`, `addons`, and
//! `plan_prices`, the mirror of the plans at the payment provider).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use tollgate_protocol::usage::MeterSpec;
use tollgate_rules::{Addon, AddonEffect, Feature, Plan, PlanMeter, ir};

use super::mirror::PlanPrice;
use crate::gateways::PriceRef;

/// Nothing is sold or listed unless the next seed says so; positions are freed first (they
/// are unique among what is sold).
pub async fn withdraw_all(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("UPDATE features SET in_catalog = false, position = NULL")
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE plans SET sold = false, position = NULL")
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE addons SET sold = false, position = NULL")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Sells an add-on at `position`.
pub async fn sell_addon(conn: &mut PgConnection, a: &Addon, position: i32) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO addons (key, name, price_minor, currency, interval, effects, position, sold)
         VALUES ($1, $2, $3, $4, $5, $6, $7, true)
         ON CONFLICT (key) DO UPDATE SET name = EXCLUDED.name, price_minor = EXCLUDED.price_minor,
             currency = EXCLUDED.currency, interval = EXCLUDED.interval,
             effects = EXCLUDED.effects, position = EXCLUDED.position, sold = true",
    )
    .bind(&a.key)
    .bind(&a.name)
    .bind(a.price_minor)
    .bind(&a.currency)
    .bind(a.interval.as_str())
    .bind(sqlx::types::Json(&a.effects))
    .bind(position)
    .execute(conn)
    .await
    .map(drop)
}

/// An add-on as stored.
#[derive(sqlx::FromRow)]
pub struct AddonRow {
    pub key: String,
    pub name: String,
    pub price_minor: i64,
    pub currency: String,
    pub interval: String,
    pub effects: sqlx::types::Json<Vec<AddonEffect>>,
}

/// Lists a feature at `position`.
pub async fn list_feature(conn: &mut PgConnection, f: &Feature, position: i32) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO features (key, kind, period, position, meter, in_catalog) VALUES ($1, $2, $3, $4, $5, true)
         ON CONFLICT (key) DO UPDATE SET kind = EXCLUDED.kind, period = EXCLUDED.period,
             position = EXCLUDED.position, meter = EXCLUDED.meter, in_catalog = true",
    )
    .bind(&f.key)
    .bind(f.kind.as_str())
    .bind(&f.period)
    .bind(position)
    .bind(f.meter.as_ref().map(sqlx::types::Json))
    .execute(conn)
    .await
    .map(drop)
}

/// Sells a plan at `position`, with exactly its grants.
pub async fn sell_plan(conn: &mut PgConnection, p: &Plan, position: i32) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO plans (key, name, price_minor, currency, interval, position, sold, trial_days, meters)
         VALUES ($1, $2, $3, $4, $5, $6, true, $7, $8)
         ON CONFLICT (key) DO UPDATE SET name = EXCLUDED.name, price_minor = EXCLUDED.price_minor,
             currency = EXCLUDED.currency, interval = EXCLUDED.interval, position = EXCLUDED.position,
             sold = true, trial_days = EXCLUDED.trial_days, meters = EXCLUDED.meters",
    )
    .bind(&p.key)
    .bind(&p.name)
    .bind(p.price_minor)
    .bind(&p.currency)
    .bind(p.interval.as_str())
    .bind(position)
    .bind(i32::try_from(p.trial_days).unwrap_or(i32::MAX))
    .bind(sqlx::types::Json(&p.meters))
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM plan_features WHERE plan_key = $1")
        .bind(&p.key)
        .execute(&mut *conn)
        .await?;
    for g in &p.grants {
        sqlx::query(
            "INSERT INTO plan_features (plan_key, feature_key, limit_value) VALUES ($1, $2, $3)",
        )
        .bind(&p.key)
        .bind(&g.feature)
        .bind(g.limit)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// key, kind, period, meter
pub type FeatureRow = (
    String,
    String,
    Option<String>,
    Option<sqlx::types::Json<MeterSpec>>,
);
/// key, name, price, currency, interval, trial days, meters
pub type PlanRow = (
    String,
    String,
    i64,
    String,
    String,
    i32,
    sqlx::types::Json<Vec<PlanMeter>>,
);
/// plan, feature, limit
pub type GrantRow = (String, String, Option<i64>);

/// The rows of what is sold, in catalog order.
pub struct Sold {
    pub features: Vec<FeatureRow>,
    pub plans: Vec<PlanRow>,
    pub grants: Vec<GrantRow>,
    pub addons: Vec<AddonRow>,
}

pub async fn sold(conn: &mut PgConnection) -> sqlx::Result<Sold> {
    let features = sqlx::query_as(
        "SELECT key, kind, period, meter FROM features WHERE in_catalog ORDER BY position",
    )
    .fetch_all(&mut *conn)
    .await?;
    let plans = sqlx::query_as(
        "SELECT key, name, price_minor, currency, interval, trial_days, meters FROM plans
         WHERE sold ORDER BY position",
    )
    .fetch_all(&mut *conn)
    .await?;
    let grants = sqlx::query_as(
        "SELECT pf.plan_key, pf.feature_key, pf.limit_value FROM plan_features pf
         JOIN features f ON f.key = pf.feature_key JOIN plans p ON p.key = pf.plan_key
         WHERE p.sold AND f.in_catalog ORDER BY f.position",
    )
    .fetch_all(&mut *conn)
    .await?;
    let addons = sqlx::query_as(
        "SELECT key, name, price_minor, currency, interval, effects FROM addons
         WHERE sold ORDER BY position",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(Sold {
        features,
        plans,
        grants,
        addons,
    })
}

/// How many of `keys` (distinct) are sold add-ons.
pub async fn count_sold_addons(conn: &mut PgConnection, keys: &[&str]) -> sqlx::Result<i64> {
    let (n,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM addons WHERE sold AND key = ANY($1::text[])")
            .bind(keys)
            .fetch_one(conn)
            .await?;
    Ok(n)
}

pub async fn is_sold(conn: &mut PgConnection, plan: &str) -> sqlx::Result<bool> {
    let sold: Option<(bool,)> = sqlx::query_as("SELECT sold FROM plans WHERE key = $1")
        .bind(plan)
        .fetch_optional(conn)
        .await?;
    Ok(sold.is_some_and(|(s,)| s))
}

/// The stable catalog's metered features: key, period, meter.
pub async fn stable_meters(
    conn: &mut PgConnection,
) -> sqlx::Result<Vec<(String, Option<String>, Option<sqlx::types::Json<MeterSpec>>)>> {
    sqlx::query_as("SELECT key, period, meter FROM features WHERE in_catalog AND kind = 'metered'")
        .fetch_all(conn)
        .await
}

/// The part of a manifest's feature the meters need (the rest may change shape freely).
#[derive(serde::Deserialize)]
pub struct ManifestFeature {
    pub key: String,
    #[serde(default)]
    pub meter: Option<MeterSpec>,
}

/// The canary bundle's features, if a canary is active.
pub async fn canary_features(conn: &mut PgConnection) -> sqlx::Result<Vec<ManifestFeature>> {
    let canary: Option<(sqlx::types::Json<Vec<ManifestFeature>>,)> = sqlx::query_as(
        "SELECT b.manifest->'features' FROM rule_rollout r
           JOIN rule_bundles b ON b.version = r.canary_version
          WHERE r.id = 1",
    )
    .fetch_optional(conn)
    .await?;
    Ok(canary.map(|(f,)| f.0).unwrap_or_default())
}

/// Records that `plans` of bundle `version` are to be mirrored under `keys` (one per plan, in
/// order); a key already recorded is left as it is.
pub async fn request_prices(
    conn: &mut PgConnection,
    version: i64,
    keys: &[String],
    plans: &[ir::Plan],
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    let plan_keys: Vec<&str> = plans.iter().map(|p| p.key.as_str()).collect();
    let names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
    let amounts: Vec<i64> = plans.iter().map(|p| p.price_minor).collect();
    let currencies: Vec<&str> = plans.iter().map(|p| p.currency.as_str()).collect();
    let intervals: Vec<&str> = plans.iter().map(|p| p.interval.as_str()).collect();
    sqlx::query(
        "INSERT INTO plan_prices (lookup_key, plan_key, bundle_version, name, amount_minor,
                                  currency, interval, requested_at, next_try_at)
         SELECT k, p, $2, n, a, c, i, $8, $8
         FROM UNNEST($1::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[])
              AS t(k, p, n, a, c, i)
         ON CONFLICT (lookup_key) DO NOTHING",
    )
    .bind(keys)
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

/// `plan_prices` as [`PlanPrice`] (status and next try derived from `mirrored_at`).
const PRICE_COLUMNS: &str = "lookup_key, plan_key, bundle_version, name, amount_minor, \
     currency, interval, attempts, last_error, provider, product_id, price_id, requested_at, \
     mirrored_at, CASE WHEN mirrored_at IS NULL THEN 'pending' ELSE 'mirrored' END AS status, \
     CASE WHEN mirrored_at IS NULL THEN next_try_at END AS next_try_at";

pub async fn prices(pool: &PgPool) -> sqlx::Result<Vec<PlanPrice>> {
    sqlx::query_as(sqlf!(
        "SELECT {PRICE_COLUMNS} FROM plan_prices ORDER BY bundle_version DESC, plan_key"
    ))
    .fetch_all(pool)
    .await
}

/// Claims up to `batch` rows due at `now` in one statement (committed on return): each is
/// leased until `until`, so no lock is held across the provider call and no other worker calls
/// for it meanwhile; every claim counts as an attempt.
pub async fn claim_prices(
    pool: &PgPool,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
    batch: i64,
) -> sqlx::Result<Vec<PlanPrice>> {
    sqlx::query_as(sqlf!(
        "UPDATE plan_prices SET next_try_at = $2, attempts = attempts + 1
         WHERE lookup_key IN (
             SELECT lookup_key FROM plan_prices
             WHERE mirrored_at IS NULL AND next_try_at <= $1
             ORDER BY bundle_version, next_try_at
             LIMIT $3
             FOR UPDATE SKIP LOCKED)
         RETURNING {PRICE_COLUMNS}"
    ))
    .bind(now)
    .bind(until)
    .bind(batch)
    .fetch_all(pool)
    .await
}

pub async fn price_mirrored(
    pool: &PgPool,
    lookup_key: &str,
    provider: &str,
    found: &PriceRef,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE plan_prices SET provider = $2, product_id = $3, price_id = $4,
                mirrored_at = $5, last_error = NULL
         WHERE lookup_key = $1 AND mirrored_at IS NULL",
    )
    .bind(lookup_key)
    .bind(provider)
    .bind(&found.product_id)
    .bind(&found.price_id)
    .bind(now)
    .execute(pool)
    .await
    .map(drop)
}

pub async fn price_failed(
    pool: &PgPool,
    lookup_key: &str,
    error: &str,
    retry_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE plan_prices SET last_error = $2, next_try_at = $3
         WHERE lookup_key = $1 AND mirrored_at IS NULL",
    )
    .bind(lookup_key)
    .bind(error)
    .bind(retry_at)
    .execute(pool)
    .await
    .map(drop)
}
