//! SQL for rule bundles, the rollout, its audit and the fleet (cf_prod).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use tollgate_rules::bundle::VerifiedBundle;
use uuid::Uuid;

use super::{Action, AuditEntry, Rollout};

pub async fn rollout(conn: &mut PgConnection, lock: bool) -> sqlx::Result<Option<Rollout>> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    sqlx::query_as(sqlf!(
        "SELECT stable_version, canary_version, canary_percent, updated_at, updated_by FROM rule_rollout WHERE id = 1{lock}"
    ))
    .fetch_optional(conn)
    .await
}

pub async fn set_rollout(
    conn: &mut PgConnection,
    stable: Option<i64>,
    canary: Option<(i64, i32)>,
    actor: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO rule_rollout (id, stable_version, canary_version, canary_percent, updated_at, updated_by)
         VALUES (1, $1, $2, $3, $4, $5)
         ON CONFLICT (id) DO UPDATE SET stable_version = EXCLUDED.stable_version,
             canary_version = EXCLUDED.canary_version, canary_percent = EXCLUDED.canary_percent,
             updated_at = EXCLUDED.updated_at, updated_by = EXCLUDED.updated_by",
    )
    .bind(stable)
    .bind(canary.map(|c| c.0))
    .bind(canary.map_or(0, |c| c.1))
    .bind(now)
    .bind(actor)
    .execute(conn)
    .await
    .map(drop)
}

/// Rollout changes run one at a time: promote, activate and rollback racing each other see
/// each other's result (the rollout row may not exist yet to lock).
pub async fn serialise(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tollgate_rule_rollout'))")
        .execute(conn)
        .await
        .map(drop)
}

#[allow(clippy::too_many_arguments)]
pub async fn audit(
    conn: &mut PgConnection,
    action: Action,
    version: i64,
    previous_stable: Option<i64>,
    detail: Value,
    actor: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO rule_audit (id, action, version, previous_stable, detail, actor, at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(Uuid::now_v7())
    .bind(action)
    .bind(version)
    .bind(previous_stable)
    .bind(detail)
    .bind(actor)
    .bind(now)
    .execute(conn)
    .await
    .map(drop)
}

pub async fn audit_log(conn: &mut PgConnection) -> sqlx::Result<Vec<AuditEntry>> {
    sqlx::query_as(
        "SELECT action, version, previous_stable, detail, actor, at FROM rule_audit ORDER BY at, id",
    )
    .fetch_all(conn)
    .await
}

/// The stable bundle `stable` replaced, skipping records (from before this was checked) that
/// name it as its own predecessor.
pub async fn replaced_by(
    conn: &mut PgConnection,
    stable: Option<i64>,
) -> sqlx::Result<Option<i64>> {
    let prev: Option<(Option<i64>,)> = sqlx::query_as(
        "SELECT previous_stable FROM rule_audit
          WHERE action IN ('promote', 'rollback') AND version = $1
            AND previous_stable IS NOT NULL AND previous_stable <> $1
          ORDER BY at DESC, id DESC LIMIT 1",
    )
    .bind(stable)
    .fetch_optional(conn)
    .await?;
    Ok(prev.and_then(|(p,)| p))
}

pub async fn sha256_of(conn: &mut PgConnection, version: i64) -> sqlx::Result<Option<String>> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT sha256 FROM rule_bundles WHERE version = $1")
            .bind(version)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(s,)| s))
}

pub async fn insert_bundle(
    conn: &mut PgConnection,
    version: i64,
    verified: &VerifiedBundle,
    manifest: &Value,
    bytes: &[u8],
    now: DateTime<Utc>,
    by: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO rule_bundles (version, sha256, source_hash, compiler_version, key_id, manifest, bytes, uploaded_at, uploaded_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(version)
    .bind(&verified.sha256)
    .bind(&verified.manifest.source_hash)
    .bind(&verified.manifest.compiler_version)
    .bind(&verified.key_id)
    .bind(manifest)
    .bind(bytes)
    .bind(now)
    .bind(by)
    .execute(conn)
    .await
    .map(drop)
}

/// version, sha256, source hash, key id, uploaded at, by, readable by this build.
pub type BundleRow = (i64, String, String, String, DateTime<Utc>, String, bool);

/// Every stored bundle; `readable` compares its format with `format`.
pub async fn bundles(conn: &mut PgConnection, format: i64) -> sqlx::Result<Vec<BundleRow>> {
    sqlx::query_as(
        "SELECT version, sha256, source_hash, key_id, uploaded_at, uploaded_by,
                COALESCE((manifest->>'format')::bigint = $1, false)
           FROM rule_bundles ORDER BY version",
    )
    .bind(format)
    .fetch_all(conn)
    .await
}

pub async fn manifest(conn: &mut PgConnection, version: i64) -> sqlx::Result<Option<Value>> {
    let row: Option<(Value,)> =
        sqlx::query_as("SELECT manifest FROM rule_bundles WHERE version = $1")
            .bind(version)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(m,)| m))
}

pub async fn bytes(conn: &mut PgConnection, version: i64) -> sqlx::Result<Option<Vec<u8>>> {
    let row: Option<(Vec<u8>,)> =
        sqlx::query_as("SELECT bytes FROM rule_bundles WHERE version = $1")
            .bind(version)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(b,)| b))
}

/// edge id, bundle version, last error, last seen
pub type EdgeRow = (String, Option<i64>, Option<String>, DateTime<Utc>);

pub async fn edges(conn: &mut PgConnection) -> sqlx::Result<Vec<EdgeRow>> {
    sqlx::query_as(
        "SELECT edge_id, bundle_version, last_error, last_seen FROM edges ORDER BY edge_id",
    )
    .fetch_all(conn)
    .await
}

pub async fn upsert_edge(
    conn: &mut PgConnection,
    edge_id: &str,
    bundle_version: Option<i64>,
    last_error: Option<&str>,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO edges (edge_id, bundle_version, last_error, last_seen) VALUES ($1, $2, $3, $4)
         ON CONFLICT (edge_id) DO UPDATE SET bundle_version = EXCLUDED.bundle_version,
             last_error = EXCLUDED.last_error, last_seen = EXCLUDED.last_seen",
    )
    .bind(edge_id)
    .bind(bundle_version)
    .bind(last_error)
    .bind(now)
    .execute(conn)
    .await
    .map(drop)
}
