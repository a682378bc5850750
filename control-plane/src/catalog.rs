//! The plan catalog in cf_prod: what can be bought, at what price, granting what.
//!
//! Seeded from the stable rule bundle's manifest when it is promoted or rolled back to (and
//! from [`tollgate_rules::Catalog::demo`] by `TOLLGATE_SEED_DEMO` and tests), so billing and
//! entitlements read one source. The sold catalog is exactly the last seeded one: every seed
//! first marks every plan unsold and every feature unlisted, then marks sold/listed exactly
//! what the new catalog holds, in its order. Rows a newer bundle drops are kept (subscriptions
//! and checkouts refer to them) but can no longer be bought.

use std::collections::HashMap;

use sqlx::{PgConnection, PgPool};
use tollgate_protocol::usage::{Aggregation, MeterPeriod, MeterSpec};
use tollgate_rules::{Catalog, Feature, FeatureKind, Grant, Interval, Plan};

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
    // Nothing is sold or listed unless this catalog says so; positions are freed first (they
    // are unique among what is sold).
    sqlx::query("UPDATE features SET in_catalog = false, position = NULL")
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE plans SET sold = false, position = NULL")
        .execute(&mut *tx)
        .await?;
    for (i, f) in catalog.features.iter().enumerate() {
        sqlx::query(
            "INSERT INTO features (key, kind, period, position, meter, in_catalog) VALUES ($1, $2, $3, $4, $5, true)
             ON CONFLICT (key) DO UPDATE SET kind = EXCLUDED.kind, period = EXCLUDED.period,
                 position = EXCLUDED.position, meter = EXCLUDED.meter, in_catalog = true",
        )
        .bind(&f.key)
        .bind(f.kind.as_str())
        .bind(&f.period)
        .bind(i32::try_from(i)?)
        .bind(f.meter.as_ref().map(sqlx::types::Json))
        .execute(&mut *tx)
        .await?;
    }
    for (i, p) in catalog.plans.iter().enumerate() {
        sqlx::query(
            "INSERT INTO plans (key, name, price_minor, currency, interval, position, sold) VALUES ($1, $2, $3, $4, $5, $6, true)
             ON CONFLICT (key) DO UPDATE SET name = EXCLUDED.name, price_minor = EXCLUDED.price_minor,
                 currency = EXCLUDED.currency, interval = EXCLUDED.interval, position = EXCLUDED.position,
                 sold = true",
        )
        .bind(&p.key)
        .bind(&p.name)
        .bind(p.price_minor)
        .bind(&p.currency)
        .bind(p.interval.as_str())
        .bind(i32::try_from(i)?)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM plan_features WHERE plan_key = $1")
            .bind(&p.key)
            .execute(&mut *tx)
            .await?;
        for g in &p.grants {
            sqlx::query("INSERT INTO plan_features (plan_key, feature_key, limit_value) VALUES ($1, $2, $3)")
                .bind(&p.key)
                .bind(&g.feature)
                .bind(g.limit)
                .execute(&mut *tx)
                .await?;
        }
    }

    Ok(())
}

/// Loads the catalog the control plane sells from (plans and features still in it, in order).
pub async fn load(conn: &mut PgConnection) -> anyhow::Result<Catalog> {
    type Row = (
        String,
        String,
        Option<String>,
        Option<sqlx::types::Json<MeterSpec>>,
    );
    let features: Vec<Row> = sqlx::query_as(
        "SELECT key, kind, period, meter FROM features WHERE in_catalog ORDER BY position",
    )
    .fetch_all(&mut *conn)
    .await?;
    let plans: Vec<(String, String, i64, String, String)> = sqlx::query_as(
        "SELECT key, name, price_minor, currency, interval FROM plans WHERE sold ORDER BY position",
    )
    .fetch_all(&mut *conn)
    .await?;
    let grants: Vec<(String, String, Option<i64>)> = sqlx::query_as(
        "SELECT pf.plan_key, pf.feature_key, pf.limit_value FROM plan_features pf
         JOIN features f ON f.key = pf.feature_key JOIN plans p ON p.key = pf.plan_key
         WHERE p.sold AND f.in_catalog ORDER BY f.position",
    )
    .fetch_all(&mut *conn)
    .await?;
    let features = features
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
    let plans = plans
        .into_iter()
        .map(|(key, name, price_minor, currency, interval)| {
            let interval =
                Interval::parse(&interval).ok_or_else(|| anyhow::anyhow!("interval {interval}"))?;
            let grants = grants
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
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Catalog { features, plans })
}

/// The meters usage is counted under, by key: the stable catalog's metered features, plus
/// those only the canary bundle declares (edges running the canary accept their usage; it is
/// counted under the canary's spec instead of dropped). Where both declare a meter, the
/// stable one's spec wins. A metered feature seeded before meters were declared sums per its
/// period (a month when none), with the default lease.
pub async fn meters(conn: &mut PgConnection) -> anyhow::Result<HashMap<String, MeterSpec>> {
    let mut meters = stable_meters(conn).await?;
    /// The part of a manifest's feature this needs (the rest may change shape freely).
    #[derive(serde::Deserialize)]
    struct ManifestFeature {
        key: String,
        #[serde(default)]
        meter: Option<MeterSpec>,
    }
    let canary: Option<(sqlx::types::Json<Vec<ManifestFeature>>,)> = sqlx::query_as(
        "SELECT b.manifest->'features' FROM rule_rollout r
           JOIN rule_bundles b ON b.version = r.canary_version
          WHERE r.id = 1",
    )
    .fetch_optional(&mut *conn)
    .await?;
    for f in canary.map(|(f,)| f.0).unwrap_or_default() {
        if let Some(spec) = f.meter {
            meters.entry(f.key).or_insert(spec);
        }
    }
    Ok(meters)
}

/// The stable catalog's meters.
async fn stable_meters(conn: &mut PgConnection) -> anyhow::Result<HashMap<String, MeterSpec>> {
    type Row = (String, Option<String>, Option<sqlx::types::Json<MeterSpec>>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT key, period, meter FROM features WHERE in_catalog AND kind = 'metered'",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
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
        .collect())
}

/// `GET /v1/plans` — public: what can be bought.
pub async fn list_plans(
    axum::extract::State(state): axum::extract::State<crate::state::AppState>,
) -> crate::http::ApiResult<axum::Json<serde_json::Value>> {
    let mut conn = state.cf.acquire().await?;
    let catalog = load(&mut conn)
        .await
        .map_err(crate::http::ApiError::internal)?;
    Ok(axum::Json(
        serde_json::json!({ "data": catalog.plans, "features": catalog.features }),
    ))
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
