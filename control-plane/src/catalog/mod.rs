//! The plan catalog in cf_prod: what can be bought, at what price, granting what, and which
//! meters usage is counted under.
//!
//! Seeded from the stable rule bundle's manifest when it is promoted or rolled back to (and
//! from [`tollgate_rules::Catalog::demo`] by `TOLLGATE_SEED_DEMO` and tests), so billing and
//! entitlements read one source. The sold catalog is exactly the last seeded one: every seed
//! first marks every plan and add-on unsold and every feature unlisted, then marks sold/listed
//! exactly what the new catalog holds, in its order. Rows a newer bundle drops are kept
//! (subscriptions and checkouts refer to them) but can no longer be bought.

pub mod mirror;
pub mod store;

use std::collections::HashMap;

use sqlx::{PgConnection, PgPool};
use tollgate_protocol::usage::{Aggregation, MeterPeriod, MeterSpec};
use tollgate_rules::{Addon, Catalog, Feature, FeatureKind, Grant, Interval, Plan};

use crate::error::{Error, Result};
use crate::state::AppState;

/// Replaces the catalog with `catalog` in one transaction (plans and features no longer
/// listed are kept if subscriptions still refer to them; their grants are cleared).
pub async fn seed(pool: &PgPool, catalog: &Catalog) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    seed_in(&mut tx, catalog).await?;
    tx.commit().await?;
    Ok(())
}

/// [`seed`] inside the caller's transaction (promotion of a rule bundle). Validates first:
/// an invalid catalog writes nothing.
pub async fn seed_in(tx: &mut PgConnection, catalog: &Catalog) -> anyhow::Result<()> {
    catalog.validate().map_err(|errs| {
        anyhow::anyhow!(
            "invalid catalog: {}",
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    store::withdraw_all(tx).await?;
    for (i, f) in catalog.features.iter().enumerate() {
        store::list_feature(tx, f, i32::try_from(i)?).await?;
    }
    for (i, p) in catalog.plans.iter().enumerate() {
        store::sell_plan(tx, p, i32::try_from(i)?).await?;
    }
    for (i, a) in catalog.addons.iter().enumerate() {
        store::sell_addon(tx, a, i32::try_from(i)?).await?;
    }
    Ok(())
}

/// The catalog the control plane sells from (plans and features still in it, in order).
pub async fn load(conn: &mut PgConnection) -> anyhow::Result<Catalog> {
    let rows = store::sold(conn).await?;
    let features = rows
        .features
        .into_iter()
        .map(|(key, kind, period, meter)| {
            let kind =
                FeatureKind::parse(&kind).ok_or_else(|| anyhow::anyhow!("feature kind {kind}"))?;
            Ok(Feature {
                key,
                kind,
                period,
                meter: meter.map(|m| m.0),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let plans = rows
        .plans
        .into_iter()
        .map(
            |(key, name, price_minor, currency, interval, trial_days, meters)| {
                let interval = Interval::parse(&interval)
                    .ok_or_else(|| anyhow::anyhow!("interval {interval}"))?;
                let grants = rows
                    .grants
                    .iter()
                    .filter(|(p, _, _)| *p == key)
                    .map(|(_, feature, limit)| Grant {
                        feature: feature.clone(),
                        limit: *limit,
                    })
                    .collect();
                Ok(Plan {
                    key,
                    name,
                    price_minor,
                    currency,
                    interval,
                    grants,
                    trial_days: u32::try_from(trial_days).unwrap_or(0),
                    meters: meters.0,
                })
            },
        )
        .collect::<anyhow::Result<Vec<_>>>()?;
    let addons = rows
        .addons
        .into_iter()
        .map(|a| {
            let interval = Interval::parse(&a.interval)
                .ok_or_else(|| anyhow::anyhow!("interval {}", a.interval))?;
            Ok(Addon {
                key: a.key,
                name: a.name,
                price_minor: a.price_minor,
                currency: a.currency,
                interval,
                effects: a.effects.0,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Catalog {
        features,
        plans,
        addons,
    })
}

/// What can be bought now (`GET /v1/plans`).
pub async fn on_sale(state: &AppState) -> Result<Catalog> {
    let mut conn = state.cf.acquire().await?;
    load(&mut conn).await.map_err(Error::internal)
}

/// Whether `plan` is sold now, in the caller's transaction.
pub async fn is_sold(conn: &mut PgConnection, plan: &str) -> sqlx::Result<bool> {
    store::is_sold(conn, plan).await
}

/// Whether every one of `addons` is sold now, in the caller's transaction.
pub async fn addons_sold(
    conn: &mut PgConnection,
    addons: &[crate::billing::AddonTerms],
) -> sqlx::Result<bool> {
    if addons.is_empty() {
        return Ok(true);
    }
    let keys: Vec<&str> = addons.iter().map(|a| a.addon.as_str()).collect();
    Ok(store::count_sold_addons(conn, &keys).await?
        == i64::try_from(keys.len()).unwrap_or(i64::MAX))
}

/// The meters usage is counted under, by key: the stable catalog's metered features, plus
/// those only the canary bundle declares (edges running the canary accept their usage; it is
/// counted under the canary's spec instead of dropped). Where both declare a meter, the
/// stable one's spec wins. A metered feature seeded before meters were declared sums per its
/// period (a month when none), with the default lease.
pub async fn meters(conn: &mut PgConnection) -> anyhow::Result<HashMap<String, MeterSpec>> {
    let mut meters: HashMap<String, MeterSpec> = store::stable_meters(conn)
        .await?
        .into_iter()
        .map(|(key, period, meter)| {
            let spec = meter.map_or_else(
                || MeterSpec {
                    aggregation: Aggregation::Sum,
                    period: period
                        .as_deref()
                        .and_then(MeterPeriod::parse)
                        .unwrap_or(MeterPeriod::Month),
                    soft: false,
                    lease: tollgate_rules::ir::DEFAULT_LEASE,
                },
                |m| m.0,
            );
            (key, spec)
        })
        .collect();
    for f in store::canary_features(conn).await? {
        if let Some(spec) = f.meter {
            meters.entry(f.key).or_insert(spec);
        }
    }
    Ok(meters)
}

/// [`meters`] over a connection of its own.
pub async fn meters_in_force(state: &AppState) -> Result<HashMap<String, MeterSpec>> {
    let mut conn = state.cf.acquire().await?;
    meters(&mut conn).await.map_err(Error::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[sqlx::test(migrations = "../migrations/cf")]
    async fn seeding_twice_round_trips_the_demo_catalog(pool: PgPool) -> anyhow::Result<()> {
        let demo = Catalog::demo();
        seed(&pool, &demo).await?;
        seed(&pool, &demo).await?;
        let mut conn = pool.acquire().await?;
        assert_eq!(load(&mut conn).await?, demo);
        let mut bad = demo.clone();
        bad.plans[0].grants.push(Grant {
            feature: "nope".into(),
            limit: None,
        });
        assert!(
            seed(&pool, &bad).await.is_err(),
            "an invalid catalog is refused"
        );
        assert_eq!(load(&mut conn).await?, demo, "and nothing was written");
        Ok(())
    }

    #[sqlx::test(migrations = "../migrations/cf")]
    async fn the_sold_catalog_is_exactly_the_last_seeded_one(pool: PgPool) -> anyhow::Result<()> {
        let demo = Catalog::demo();
        let mut without_enterprise = demo.clone();
        without_enterprise.plans.retain(|p| p.key != "enterprise");
        // A dropped add-on is no longer sold either.
        without_enterprise.addons.clear();
        let mut with_new = without_enterprise.clone();
        let mut team = with_new.plans[0].clone();
        team.key = "team".into();
        team.name = "Team".into();
        with_new.plans.insert(0, team);
        let mut conn = pool.acquire().await?;
        seed(&pool, &demo).await?;
        // Two seeds in a row without enterprise: it stays unsold (the old scheme un-hid it).
        seed(&pool, &without_enterprise).await?;
        seed(&pool, &without_enterprise).await?;
        assert_eq!(load(&mut conn).await?, without_enterprise);
        // A new plan right after a drop: no position clash.
        seed(&pool, &with_new).await?;
        assert_eq!(load(&mut conn).await?, with_new);
        seed(&pool, &demo).await?;
        assert_eq!(load(&mut conn).await?, demo, "and back");
        Ok(())
    }
}
