//! Rule bundles: upload (verified and self-tested), canary activation, promotion, rollback,
//! the audit of every action, the bundle each edge should run, and fleet status.
//!
//! Canary selection is deterministic by edge id (`tollgate_protocol::canary`): an edge is in
//! the canary when `fnv1a(edge_id) % 100 < canary_percent`, so the same edges stay canaries as
//! the share grows. The stable bundle's plan catalog is what checkout sells: promoting or
//! rolling back re-seeds the catalog tables from that bundle in the same transaction. Rollout
//! changes run one at a time (an advisory lock: racing ones see each other's result), and a
//! rollback goes to the last stable bundle *different* from the current one.

pub mod store;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use tollgate_protocol::canary::in_canary;
use tollgate_protocol::internal_api::{EdgeStatus, LAST_ERROR_CHARS_MAX, valid_edge_id};
use tollgate_rules::bundle::{self, Manifest, VerifiedBundle};

use crate::actor::Actor;
use crate::catalog;
use crate::error::{Error, Result};
use crate::state::AppState;

/// What a rollout action did (the audit's `action`).
#[derive(
    utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Action {
    Upload,
    Activate,
    Promote,
    Rollback,
}

/// Which bundles serve: the stable one, and a canary on a share of the edges.
#[derive(utoipa::ToSchema, Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Rollout {
    pub stable_version: Option<i64>,
    pub canary_version: Option<i64>,
    pub canary_percent: i32,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

impl Rollout {
    /// The version `edge_id` should run.
    fn assigned(&self, edge_id: &str) -> Option<i64> {
        match self.canary_version {
            Some(c) if in_canary(edge_id, self.canary_percent) => Some(c),
            _ => self.stable_version,
        }
    }
}

/// What an uploaded bundle holds, as the upload answers it.
#[derive(utoipa::ToSchema, Debug, Clone, Serialize)]
pub struct Summary {
    pub version: u64,
    pub sha256: String,
    pub source_hash: String,
    pub compiler_version: String,
    pub key_id: String,
    pub features: Vec<String>,
    pub plans: Vec<PlanPrice>,
    pub tests: usize,
}

#[derive(utoipa::ToSchema, Debug, Clone, Serialize)]
#[schema(as = BundlePlanPrice)]
pub struct PlanPrice {
    pub key: String,
    pub price_minor: i64,
    pub currency: String,
}

impl Summary {
    fn of(m: &Manifest, sha256: &str, key_id: &str) -> Self {
        Self {
            version: m.bundle_version,
            sha256: sha256.to_owned(),
            source_hash: m.source_hash.clone(),
            compiler_version: m.compiler_version.clone(),
            key_id: key_id.to_owned(),
            features: m.features.iter().map(|f| f.key.clone()).collect(),
            plans: m
                .plans
                .iter()
                .map(|p| PlanPrice {
                    key: p.key.clone(),
                    price_minor: p.price_minor,
                    currency: p.currency.clone(),
                })
                .collect(),
            tests: m.tests.len(),
        }
    }
}

/// An upload's result: `created` is false when the same bundle was there already.
#[derive(Debug, Clone)]
pub struct Uploaded {
    pub created: bool,
    pub summary: Summary,
}

/// A bundle's part in the rollout.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[schema(as = BundleRole)]
pub enum Role {
    Stable,
    Canary,
    Inactive,
}

/// A stored bundle, as listed.
#[derive(utoipa::ToSchema, Debug, Clone, Serialize)]
pub struct Listed {
    pub version: i64,
    pub sha256: String,
    pub source_hash: String,
    pub key_id: String,
    pub uploaded_at: DateTime<Utc>,
    pub uploaded_by: String,
    pub role: Role,
    /// This build (and its edges) can load it; another format must be rebuilt and uploaded.
    pub readable: bool,
}

/// What a rollout change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new stable bundle (the canary, if any, withdrawn).
    Stable {
        stable_version: i64,
        previous_stable: Option<i64>,
    },
    /// The bundle was stable already: nothing but a canary's withdrawal changed.
    Unchanged { stable_version: i64 },
    /// The canary was set (`None`: withdrawn) next to the stable bundle.
    Canary {
        stable_version: Option<i64>,
        canary: Option<(i64, i32)>,
    },
}

/// An edge as the fleet view shows it.
#[derive(utoipa::ToSchema, Debug, Clone, Serialize)]
pub struct Edge {
    pub edge_id: String,
    pub bundle_version: Option<i64>,
    pub assigned_version: Option<i64>,
    pub converged: bool,
    pub last_error: Option<String>,
    pub last_seen: DateTime<Utc>,
}

/// One audit record.
#[derive(utoipa::ToSchema, Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditEntry {
    pub action: Action,
    pub version: i64,
    pub previous_stable: Option<i64>,
    pub detail: serde_json::Value,
    pub actor: String,
    pub at: DateTime<Utc>,
}

/// What an edge gets when it asks for its bundle.
#[derive(Debug, Clone)]
pub enum ForEdge {
    /// Its `If-None-Match` is current.
    NotModified {
        etag: String,
    },
    Bundle {
        bytes: Vec<u8>,
        etag: String,
    },
}

/// Verifies, loads under wasmtime and self-tests a bundle.
pub fn verify_and_test(state: &AppState, bytes: &[u8]) -> Result<VerifiedBundle> {
    let verified = bundle::verify(bytes, &state.trusted_keys)
        .map_err(|e| Error::unprocessable("bundle_invalid", e.to_string()))?;
    let loaded = state
        .rules_engine
        .load(&verified.module, verified.program.shape())
        .map_err(|e| Error::unprocessable("bundle_module_refused", e.to_string()))?;
    tollgate_rules::compiler::run_tests(&verified.program, &loaded).map_err(|failures| {
        Error::unprocessable("bundle_tests_failed", failures.join("; ")).with("failures", failures)
    })?;
    Ok(verified)
}

fn version_i64(v: u64) -> Result<i64> {
    i64::try_from(v)
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| Error::unprocessable("bundle_invalid", "bundle versions are 1..=i64::MAX"))
}

/// Stores a signed bundle after verifying and self-testing it; the same bundle again is a
/// no-op, other content under a stored version is refused.
pub async fn upload(state: &AppState, actor: &Actor, bytes: Vec<u8>) -> Result<Uploaded> {
    // Verifying, compiling and self-testing is CPU work (and may meet a hostile module):
    // keep it off the async workers.
    let st = state.clone();
    let (bytes, verified) = tokio::task::spawn_blocking(move || {
        let verified = verify_and_test(&st, &bytes);
        (bytes, verified)
    })
    .await
    .map_err(Error::internal)?;
    let verified = verified?;
    let version = version_i64(verified.manifest.bundle_version)?;
    let now = state.clock.now();
    let summary = Summary::of(&verified.manifest, &verified.sha256, &verified.key_id);
    let mut tx = state.cf.begin().await?;
    match store::sha256_of(&mut tx, version).await? {
        Some(sha) if sha == verified.sha256 => {
            return Ok(Uploaded {
                created: false,
                summary,
            });
        }
        Some(_) => {
            return Err(Error::conflict(
                "bundle_version_exists",
                format!(
                    "version {version} was uploaded with different content; compile with a new --version"
                ),
            ));
        }
        None => {}
    }
    let manifest = serde_json::to_value(&verified.manifest).map_err(Error::internal)?;
    let who = actor.name();
    store::insert_bundle(&mut tx, version, &verified, &manifest, &bytes, now, &who).await?;
    store::audit(
        &mut tx,
        Action::Upload,
        version,
        None,
        serde_json::json!({ "sha256": verified.sha256 }),
        &who,
        now,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(version, actor = %who, "rule bundle uploaded");
    Ok(Uploaded {
        created: true,
        summary,
    })
}

/// Every stored bundle and the rollout.
pub async fn list(state: &AppState) -> Result<(Vec<Listed>, Option<Rollout>)> {
    let mut conn = state.cf.acquire().await?;
    let rows = store::bundles(&mut conn, i64::from(bundle::FORMAT_VERSION)).await?;
    let rollout = store::rollout(&mut conn, false).await?;
    let listed = rows
        .into_iter()
        .map(
            |(version, sha256, source_hash, key_id, uploaded_at, uploaded_by, readable)| {
                let role = match &rollout {
                    Some(r) if r.stable_version == Some(version) => Role::Stable,
                    Some(r) if r.canary_version == Some(version) => Role::Canary,
                    _ => Role::Inactive,
                };
                Listed {
                    version,
                    sha256,
                    source_hash,
                    key_id,
                    uploaded_at,
                    uploaded_by,
                    role,
                    readable,
                }
            },
        )
        .collect();
    Ok((listed, rollout))
}

/// A stored bundle's manifest, if this build can read its format.
async fn load_manifest(conn: &mut PgConnection, version: i64) -> Result<Manifest> {
    let manifest = store::manifest(conn, version)
        .await?
        .ok_or_else(|| Error::not_found("bundle"))?;
    let manifest: Manifest = serde_json::from_value(manifest).map_err(|e| {
        tracing::warn!(version, error = %e, "stored bundle manifest unreadable by this build");
        unreadable(version)
    })?;
    if manifest.format != bundle::FORMAT_VERSION {
        return Err(unreadable(version));
    }
    Ok(manifest)
}

/// A stored bundle this build cannot read (made by an older compiler, another bundle format):
/// it cannot be activated, promoted or rolled back to; it must be rebuilt and uploaded as a
/// new version. Edges refuse it too.
fn unreadable(version: i64) -> Error {
    Error::conflict(
        "bundle_format_unsupported",
        format!(
            "bundle {version} was built for another bundle format than this build reads ({}): rebuild it from its source and upload it as a new version",
            bundle::FORMAT_VERSION
        ),
    )
}

/// Makes `version` the stable bundle and sells exactly its catalog, in the caller's
/// (serialised) transaction.
async fn make_stable(
    state: &AppState,
    conn: &mut PgConnection,
    version: i64,
    action: Action,
    actor: &str,
) -> Result<Change> {
    let now = state.clock.now();
    let current = store::rollout(conn, true).await?;
    let manifest = load_manifest(conn, version).await?;
    let previous = current.as_ref().and_then(|r| r.stable_version);
    if previous == Some(version) {
        // Already stable: nothing to record (a "previous stable" equal to itself would make
        // the next rollback go nowhere). A canary, if any, is withdrawn.
        if current.as_ref().and_then(|r| r.canary_version).is_some() {
            store::set_rollout(conn, previous, None, actor, now).await?;
            store::audit(
                conn,
                Action::Activate,
                version,
                previous,
                serde_json::json!({ "canary_percent": 0 }),
                actor,
                now,
            )
            .await?;
        }
        return Ok(Change::Unchanged {
            stable_version: version,
        });
    }
    store::set_rollout(conn, Some(version), None, actor, now).await?;
    catalog::seed_in(
        conn,
        &tollgate_rules::Catalog::from_parts(&manifest.features, &manifest.plans, &manifest.addons),
    )
    .await
    .map_err(Error::internal)?;
    catalog::mirror::request(conn, version, &manifest.plans, now).await?;
    store::audit(
        conn,
        action,
        version,
        previous,
        serde_json::json!({}),
        actor,
        now,
    )
    .await?;
    tracing::info!(version, ?action, actor, "rule bundle made stable");
    Ok(Change::Stable {
        stable_version: version,
        previous_stable: previous,
    })
}

/// Activates `version` as a canary on `canary_percent` of the edges (0: withdraws the canary;
/// 100, or no stable bundle yet: a promotion).
pub async fn activate(
    state: &AppState,
    actor: &Actor,
    version: i64,
    canary_percent: i32,
) -> Result<Change> {
    if !(0..=100).contains(&canary_percent) {
        return Err(Error::unprocessable(
            "invalid_canary_percent",
            "canary_percent must be 0-100",
        ));
    }
    let who = actor.name();
    let mut tx = state.cf.begin().await?;
    store::serialise(&mut tx).await?;
    load_manifest(&mut tx, version).await?;
    let current = store::rollout(&mut tx, true).await?;
    let stable = current.as_ref().and_then(|r| r.stable_version);
    let change = if stable.is_none() || canary_percent == 100 {
        make_stable(state, &mut tx, version, Action::Promote, &who).await?
    } else {
        let now = state.clock.now();
        let canary =
            (canary_percent != 0 && stable != Some(version)).then_some((version, canary_percent));
        store::set_rollout(&mut tx, stable, canary, &who, now).await?;
        store::audit(
            &mut tx,
            Action::Activate,
            version,
            stable,
            serde_json::json!({ "canary_percent": canary.map_or(0, |c| c.1) }),
            &who,
            now,
        )
        .await?;
        Change::Canary {
            stable_version: stable,
            canary,
        }
    };
    tx.commit().await?;
    Ok(change)
}

/// Makes `version` stable on every edge.
pub async fn promote(state: &AppState, actor: &Actor, version: i64) -> Result<Change> {
    let mut tx = state.cf.begin().await?;
    store::serialise(&mut tx).await?;
    let change = make_stable(state, &mut tx, version, Action::Promote, &actor.name()).await?;
    tx.commit().await?;
    Ok(change)
}

/// Goes back to `to`, or by default to the stable bundle the current one replaced.
pub async fn rollback(state: &AppState, actor: &Actor, to: Option<i64>) -> Result<Change> {
    let mut tx = state.cf.begin().await?;
    store::serialise(&mut tx).await?;
    let current = store::rollout(&mut tx, true).await?;
    let stable = current.as_ref().and_then(|r| r.stable_version);
    let nothing = || {
        Error::conflict(
            "nothing_to_roll_back_to",
            "there is no earlier stable bundle different from the current one; name one with to_version",
        )
    };
    let target = match to {
        Some(v) if Some(v) == stable => return Err(nothing()),
        Some(v) => v,
        None => store::replaced_by(&mut tx, stable)
            .await?
            .ok_or_else(nothing)?,
    };
    let change = make_stable(state, &mut tx, target, Action::Rollback, &actor.name()).await?;
    tx.commit().await?;
    Ok(change)
}

/// The fleet: every edge that reported, what it runs and what it should.
pub async fn edges(state: &AppState) -> Result<Vec<Edge>> {
    let mut conn = state.cf.acquire().await?;
    let rows = store::edges(&mut conn).await?;
    let rollout = store::rollout(&mut conn, false).await?;
    Ok(rows
        .into_iter()
        .map(|(edge_id, bundle_version, last_error, last_seen)| {
            let assigned = rollout.as_ref().and_then(|r| r.assigned(&edge_id));
            Edge {
                converged: bundle_version.is_some() && bundle_version == assigned,
                assigned_version: assigned,
                edge_id,
                bundle_version,
                last_error,
                last_seen,
            }
        })
        .collect())
}

/// Every rollout action, oldest first.
pub async fn audit_log(state: &AppState) -> Result<Vec<AuditEntry>> {
    let mut conn = state.cf.acquire().await?;
    Ok(store::audit_log(&mut conn).await?)
}

/// The bundle meant for `edge_id`, unless its `If-None-Match` is current.
pub async fn bundle_for(
    state: &AppState,
    edge_id: &str,
    if_none_match: Option<&str>,
) -> Result<ForEdge> {
    let mut conn = state.cf.acquire().await?;
    let rollout = store::rollout(&mut conn, false).await?;
    let Some(version) = rollout.as_ref().and_then(|r| r.assigned(edge_id)) else {
        return Err(Error::new(
            crate::error::Kind::NotFound,
            "no_active_bundle",
            "no rule bundle is active yet",
        ));
    };
    let etag = format!("\"v{version}\"");
    if if_none_match == Some(etag.as_str()) {
        return Ok(ForEdge::NotModified { etag });
    }
    let bytes = store::bytes(&mut conn, version)
        .await?
        .ok_or_else(|| Error::internal("the assigned bundle is not stored"))?;
    Ok(ForEdge::Bundle { bytes, etag })
}

/// Records what an edge reports it runs.
pub async fn report_status(state: &AppState, edge_id: &str, status: EdgeStatus) -> Result<()> {
    if !valid_edge_id(edge_id) {
        return Err(Error::unprocessable(
            "invalid_edge_id",
            "edge ids are 1-128 characters of A-Z a-z 0-9 - _ .",
        ));
    }
    let bundle_version = status
        .bundle_version
        .map(i64::try_from)
        .transpose()
        .map_err(|_| {
            Error::unprocessable(
                "invalid_bundle_version",
                "bundle_version is at most 9223372036854775807",
            )
        })?;
    // An edge's own words, shown to operators: bounded, and without control characters
    // (PostgreSQL text cannot hold NUL).
    let error = status.last_error.map(|e| {
        e.chars()
            .take(LAST_ERROR_CHARS_MAX)
            .map(|c| {
                if c.is_control() && c != '\n' {
                    '\u{fffd}'
                } else {
                    c
                }
            })
            .collect::<String>()
    });
    let mut conn = state.cf.acquire().await?;
    store::upsert_edge(
        &mut conn,
        edge_id,
        bundle_version,
        error.as_deref(),
        state.clock.now(),
    )
    .await?;
    Ok(())
}

/// The stable bundle's version and program, verified as an edge verifies it (`None`: no
/// bundle is stable yet).
pub async fn stable_program(
    state: &AppState,
) -> Result<Option<(i64, tollgate_rules::ir::Program)>> {
    let mut conn = state.cf.acquire().await?;
    let Some(version) = stable_version(&mut conn).await? else {
        return Ok(None);
    };
    let bytes = store::bytes(&mut conn, version)
        .await?
        .ok_or_else(|| Error::internal("the stable bundle is not stored"))?;
    let verified = bundle::verify(&bytes, &state.trusted_keys).map_err(Error::internal)?;
    Ok(Some((version, verified.program)))
}

/// The stable bundle's version, in the caller's transaction (what a checkout snapshots).
pub async fn stable_version(conn: &mut PgConnection) -> sqlx::Result<Option<i64>> {
    Ok(store::rollout(conn, false)
        .await?
        .and_then(|r| r.stable_version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canary_membership_is_deterministic_and_grows_monotonically() {
        let edges: Vec<String> = (0..1000).map(|i| format!("edge-{i}")).collect();
        let count = |p| edges.iter().filter(|e| in_canary(e, p)).count();
        assert_eq!(count(0), 0);
        assert_eq!(count(100), 1000);
        let half = count(50);
        assert!((400..600).contains(&half), "{half}");
        for e in &edges {
            assert!(
                !in_canary(e, 10) || in_canary(e, 50),
                "a 10 % canary edge stays in at 50 %"
            );
        }
        assert_eq!(
            tollgate_protocol::canary::fnv1a("edge-1"),
            tollgate_protocol::canary::fnv1a("edge-1")
        );
    }
}
