//! Rule bundles: upload (verified and self-tested), canary activation, promotion, rollback,
//! the audit of every action, the bundle each edge should run, and fleet status.
//!
//! Canary selection is deterministic by edge id (`tollgate_protocol::canary`): an edge is in
//! the canary when `fnv1a(edge_id) % 100 < canary_percent`, so the same edges stay canaries as
//! the share grows.
//! The stable bundle's plan catalog is what checkout sells: promoting or rolling back re-seeds
//! the catalog tables from that bundle in the same transaction.

use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgConnection;
use tollgate_protocol::canary::in_canary;
use tollgate_protocol::internal_api::{
    BundleQuery, EdgeStatus, LAST_ERROR_CHARS_MAX, valid_edge_id,
};
use tollgate_rules::bundle::{self, Manifest, VerifiedBundle};
use uuid::Uuid;

use crate::http::{ApiError, ApiResult, Json, Path};
use crate::internal::EdgeAuth;
use crate::state::AppState;

pub const ACTOR_HEADER: &str = "tollgate-actor";
pub const ACTOR_BYTES_MAX: usize = 128;

/// An authenticated platform engineer (admin token) and the name they act under.
pub struct Admin {
    pub actor: String,
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        crate::http::auth::require_secret(parts, &state.admin_token, "admin token")?;
        let actor = parts
            .headers
            .get(ACTOR_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|a| !a.is_empty() && a.len() <= ACTOR_BYTES_MAX)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "actor_required",
                    "send Tollgate-Actor: <your name> (1-128 characters)",
                )
            })?;
        Ok(Self {
            actor: actor.to_owned(),
        })
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Rollout {
    pub stable_version: Option<i64>,
    pub canary_version: Option<i64>,
    pub canary_percent: i32,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

async fn rollout(conn: &mut PgConnection, lock: bool) -> sqlx::Result<Option<Rollout>> {
    let sql = if lock {
        "SELECT stable_version, canary_version, canary_percent, updated_at, updated_by FROM rule_rollout WHERE id = 1 FOR UPDATE"
    } else {
        "SELECT stable_version, canary_version, canary_percent, updated_at, updated_by FROM rule_rollout WHERE id = 1"
    };
    sqlx::query_as(sql).fetch_optional(conn).await
}

async fn set_rollout(
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

async fn audit(
    conn: &mut PgConnection,
    action: &str,
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

/// Verifies, loads under wasmtime and self-tests a bundle.
pub fn verify_and_test(state: &AppState, bytes: &[u8]) -> Result<VerifiedBundle, ApiError> {
    let verified = bundle::verify(bytes, &state.trusted_keys)
        .map_err(|e| ApiError::unprocessable("bundle_invalid", e.to_string()))?;
    let loaded = state
        .rules_engine
        .load(&verified.module, verified.program.shape())
        .map_err(|e| ApiError::unprocessable("bundle_module_refused", e.to_string()))?;
    tollgate_rules::compiler::run_tests(&verified.program, &loaded).map_err(|failures| {
        ApiError::unprocessable("bundle_tests_failed", failures.join("; "))
            .with("failures", failures)
    })?;
    Ok(verified)
}

fn version_i64(v: u64) -> Result<i64, ApiError> {
    i64::try_from(v).ok().filter(|v| *v > 0).ok_or_else(|| {
        ApiError::unprocessable("bundle_invalid", "bundle versions are 1..=i64::MAX")
    })
}

/// `POST /admin/v1/bundles` — body: the signed bundle file.
pub async fn upload(
    State(state): State<AppState>,
    admin: Admin,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Response> {
    let body = body.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("bundles are limited to {} bytes", bundle::BUNDLE_BYTES_MAX),
        )
    })?;
    // Verifying, compiling and self-testing is CPU work (and may meet a hostile module):
    // keep it off the async workers.
    let st = state.clone();
    let bytes = body.clone();
    let verified = tokio::task::spawn_blocking(move || verify_and_test(&st, &bytes))
        .await
        .map_err(ApiError::internal)??;
    let version = version_i64(verified.manifest.bundle_version)?;
    let now = state.clock.now();
    let mut tx = state.cf.begin().await?;
    let existing: Option<(String,)> =
        sqlx::query_as("SELECT sha256 FROM rule_bundles WHERE version = $1")
            .bind(version)
            .fetch_optional(&mut *tx)
            .await?;
    let summary = bundle_summary(&verified.manifest, &verified.sha256, &verified.key_id);
    match existing {
        Some((sha,)) if sha == verified.sha256 => {
            return Ok((StatusCode::OK, axum::Json(summary)).into_response());
        }
        Some(_) => {
            return Err(ApiError::conflict(
                "bundle_version_exists",
                format!(
                    "version {version} was uploaded with different content; compile with a new --version"
                ),
            ));
        }
        None => {}
    }
    let manifest = serde_json::to_value(&verified.manifest).map_err(ApiError::internal)?;
    sqlx::query(
        "INSERT INTO rule_bundles (version, sha256, source_hash, compiler_version, key_id, manifest, bytes, uploaded_at, uploaded_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(version)
    .bind(&verified.sha256)
    .bind(&verified.manifest.source_hash)
    .bind(&verified.manifest.compiler_version)
    .bind(&verified.key_id)
    .bind(&manifest)
    .bind(body.as_ref())
    .bind(now)
    .bind(&admin.actor)
    .execute(&mut *tx)
    .await?;
    audit(
        &mut tx,
        "upload",
        version,
        None,
        json!({ "sha256": verified.sha256 }),
        &admin.actor,
        now,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(version, actor = %admin.actor, "rule bundle uploaded");
    Ok((StatusCode::CREATED, axum::Json(summary)).into_response())
}

fn bundle_summary(m: &Manifest, sha256: &str, key_id: &str) -> Value {
    json!({
        "version": m.bundle_version,
        "sha256": sha256,
        "source_hash": m.source_hash,
        "compiler_version": m.compiler_version,
        "key_id": key_id,
        "features": m.features.iter().map(|f| &f.key).collect::<Vec<_>>(),
        "plans": m.plans.iter().map(|p| json!({ "key": p.key, "price_minor": p.price_minor, "currency": p.currency })).collect::<Vec<_>>(),
        "tests": m.tests.len(),
    })
}

/// `GET /admin/v1/bundles`
pub async fn list(State(state): State<AppState>, _: Admin) -> ApiResult<axum::Json<Value>> {
    let mut conn = state.cf.acquire().await?;
    /// version, sha256, source hash, key id, uploaded at, by, readable by this build.
    type Row = (i64, String, String, String, DateTime<Utc>, String, bool);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT version, sha256, source_hash, key_id, uploaded_at, uploaded_by,
                COALESCE((manifest->>'format')::bigint = $1, false)
           FROM rule_bundles ORDER BY version",
    )
    .bind(i64::from(tollgate_rules::bundle::FORMAT_VERSION))
    .fetch_all(&mut *conn)
    .await?;
    let rollout = rollout(&mut conn, false).await?;
    let data: Vec<Value> = rows
        .into_iter()
        .map(|(version, sha256, source_hash, key_id, at, by, readable)| {
            let role = match &rollout {
                Some(r) if r.stable_version == Some(version) => "stable",
                Some(r) if r.canary_version == Some(version) => "canary",
                _ => "inactive",
            };
            // `readable`: this build (and its edges) can load it; an older format must be
            // rebuilt and uploaded again.
            json!({ "version": version, "sha256": sha256, "source_hash": source_hash, "key_id": key_id,
                    "uploaded_at": at, "uploaded_by": by, "role": role, "readable": readable })
        })
        .collect();
    Ok(axum::Json(json!({ "data": data, "rollout": rollout })))
}

async fn load_manifest(conn: &mut PgConnection, version: i64) -> Result<Manifest, ApiError> {
    let row: Option<(Value,)> =
        sqlx::query_as("SELECT manifest FROM rule_bundles WHERE version = $1")
            .bind(version)
            .fetch_optional(&mut *conn)
            .await?;
    let (manifest,) = row.ok_or_else(|| ApiError::not_found("bundle"))?;
    let manifest: Manifest = serde_json::from_value(manifest).map_err(|e| {
        tracing::warn!(version, error = %e, "stored bundle manifest unreadable by this build");
        unreadable(version)
    })?;
    if manifest.format != tollgate_rules::bundle::FORMAT_VERSION {
        return Err(unreadable(version));
    }
    Ok(manifest)
}

/// A stored bundle this build cannot read (made by an older compiler, another bundle format):
/// it cannot be activated, promoted or rolled back to; it must be rebuilt and uploaded as a
/// new version. Edges refuse it too.
fn unreadable(version: i64) -> ApiError {
    ApiError::conflict(
        "bundle_format_unsupported",
        format!(
            "bundle {version} was built for another bundle format than this build reads ({}): rebuild it from its source and upload it as a new version",
            tollgate_rules::bundle::FORMAT_VERSION
        ),
    )
}

/// Rollout changes run one at a time: promote, activate and rollback racing each other see
/// each other's result (the rollout row may not exist yet to lock).
async fn serialise(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tollgate_rule_rollout'))")
        .execute(conn)
        .await
        .map(drop)
}

async fn make_stable(
    state: &AppState,
    conn: &mut PgConnection,
    version: i64,
    action: &str,
    actor: &str,
) -> ApiResult<Value> {
    let now = state.clock.now();
    let current = rollout(conn, true).await?;
    let manifest = load_manifest(conn, version).await?;
    let previous = current.as_ref().and_then(|r| r.stable_version);
    if previous == Some(version) {
        // Already stable: nothing to record (a "previous stable" equal to itself would make
        // the next rollback go nowhere). A canary, if any, is withdrawn.
        let canary = current.as_ref().and_then(|r| r.canary_version);
        if canary.is_some() {
            set_rollout(conn, previous, None, actor, now).await?;
            audit(
                conn,
                "activate",
                version,
                previous,
                json!({ "canary_percent": 0 }),
                actor,
                now,
            )
            .await?;
        }
        return Ok(json!({ "stable_version": version, "unchanged": true,
                          "canary_version": null, "canary_percent": 0 }));
    }
    set_rollout(conn, Some(version), None, actor, now).await?;
    crate::catalog::seed_in(
        conn,
        &tollgate_rules::Catalog::from_parts(&manifest.features, &manifest.plans),
    )
    .await
    .map_err(ApiError::internal)?;
    audit(conn, action, version, previous, json!({}), actor, now).await?;
    tracing::info!(version, action, actor, "rule bundle made stable");
    Ok(
        json!({ "stable_version": version, "previous_stable": previous, "canary_version": null, "canary_percent": 0 }),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivateRequest {
    pub canary_percent: i32,
}

/// `POST /admin/v1/bundles/{version}/activate {canary_percent}`
pub async fn activate(
    State(state): State<AppState>,
    admin: Admin,
    Path(version): Path<i64>,
    Json(body): Json<ActivateRequest>,
) -> ApiResult<axum::Json<Value>> {
    if !(0..=100).contains(&body.canary_percent) {
        return Err(ApiError::unprocessable(
            "invalid_canary_percent",
            "canary_percent must be 0-100",
        ));
    }
    let mut tx = state.cf.begin().await?;
    serialise(&mut tx).await?;
    load_manifest(&mut tx, version).await?;
    let current = rollout(&mut tx, true).await?;
    let stable = current.as_ref().and_then(|r| r.stable_version);
    // With no stable bundle yet, or at 100 %, activation is a promotion.
    let out = if stable.is_none() || body.canary_percent == 100 {
        make_stable(&state, &mut tx, version, "promote", &admin.actor).await?
    } else if body.canary_percent == 0 || stable == Some(version) {
        let now = state.clock.now();
        set_rollout(&mut tx, stable, None, &admin.actor, now).await?;
        audit(
            &mut tx,
            "activate",
            version,
            stable,
            json!({ "canary_percent": 0 }),
            &admin.actor,
            now,
        )
        .await?;
        json!({ "stable_version": stable, "canary_version": null, "canary_percent": 0 })
    } else {
        let now = state.clock.now();
        set_rollout(
            &mut tx,
            stable,
            Some((version, body.canary_percent)),
            &admin.actor,
            now,
        )
        .await?;
        audit(
            &mut tx,
            "activate",
            version,
            stable,
            json!({ "canary_percent": body.canary_percent }),
            &admin.actor,
            now,
        )
        .await?;
        json!({ "stable_version": stable, "canary_version": version, "canary_percent": body.canary_percent })
    };
    tx.commit().await?;
    Ok(axum::Json(out))
}

/// `POST /admin/v1/bundles/{version}/promote`
pub async fn promote(
    State(state): State<AppState>,
    admin: Admin,
    Path(version): Path<i64>,
) -> ApiResult<axum::Json<Value>> {
    let mut tx = state.cf.begin().await?;
    serialise(&mut tx).await?;
    let out = make_stable(&state, &mut tx, version, "promote", &admin.actor).await?;
    tx.commit().await?;
    Ok(axum::Json(out))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    #[serde(default)]
    pub to_version: Option<i64>,
}

/// `POST /admin/v1/rollback {to_version?}` — without a target: the stable bundle before the
/// current one.
pub async fn rollback(
    State(state): State<AppState>,
    admin: Admin,
    Json(body): Json<RollbackRequest>,
) -> ApiResult<axum::Json<Value>> {
    let mut tx = state.cf.begin().await?;
    serialise(&mut tx).await?;
    let current = rollout(&mut tx, true).await?;
    let stable = current.as_ref().and_then(|r| r.stable_version);
    let nothing = || {
        ApiError::conflict(
            "nothing_to_roll_back_to",
            "there is no earlier stable bundle different from the current one; name one with to_version",
        )
    };
    let target = match body.to_version {
        Some(v) if Some(v) == stable => return Err(nothing()),
        Some(v) => v,
        None => {
            // The stable bundle the current one replaced, skipping records (from before this
            // was checked) that name the current one as its own predecessor.
            let prev: Option<(Option<i64>,)> = sqlx::query_as(
                "SELECT previous_stable FROM rule_audit
                  WHERE action IN ('promote', 'rollback') AND version = $1
                    AND previous_stable IS NOT NULL AND previous_stable <> $1
                  ORDER BY at DESC, id DESC LIMIT 1",
            )
            .bind(stable)
            .fetch_optional(&mut *tx)
            .await?;
            prev.and_then(|(p,)| p).ok_or_else(nothing)?
        }
    };
    let out = make_stable(&state, &mut tx, target, "rollback", &admin.actor).await?;
    tx.commit().await?;
    Ok(axum::Json(out))
}

/// edge id, bundle version, last error, last seen
type EdgeRow = (String, Option<i64>, Option<String>, DateTime<Utc>);
/// action, version, previous stable, detail, actor, at
type AuditRow = (String, i64, Option<i64>, Value, String, DateTime<Utc>);

/// `GET /admin/v1/edges`
pub async fn edges(State(state): State<AppState>, _: Admin) -> ApiResult<axum::Json<Value>> {
    let mut conn = state.cf.acquire().await?;
    let rows: Vec<EdgeRow> = sqlx::query_as(
        "SELECT edge_id, bundle_version, last_error, last_seen FROM edges ORDER BY edge_id",
    )
    .fetch_all(&mut *conn)
    .await?;
    let rollout = rollout(&mut conn, false).await?;
    let data: Vec<Value> = rows
        .into_iter()
        .map(|(edge_id, v, err, seen)| {
            let assigned = rollout.as_ref().and_then(|r| assigned_version(r, &edge_id));
            json!({ "edge_id": edge_id, "bundle_version": v, "assigned_version": assigned,
                    "converged": v.is_some() && v == assigned, "last_error": err, "last_seen": seen })
        })
        .collect();
    Ok(axum::Json(json!({ "data": data })))
}

/// `GET /admin/v1/audit`
pub async fn audit_log(State(state): State<AppState>, _: Admin) -> ApiResult<axum::Json<Value>> {
    let rows: Vec<AuditRow> = sqlx::query_as(
        "SELECT action, version, previous_stable, detail, actor, at FROM rule_audit ORDER BY at, id",
    )
    .fetch_all(&state.cf)
    .await?;
    let data: Vec<Value> = rows
        .into_iter()
        .map(|(action, version, prev, detail, actor, at)| {
            json!({ "action": action, "version": version, "previous_stable": prev, "detail": detail, "actor": actor, "at": at })
        })
        .collect();
    Ok(axum::Json(json!({ "data": data })))
}

fn assigned_version(r: &Rollout, edge_id: &str) -> Option<i64> {
    match r.canary_version {
        Some(c) if in_canary(edge_id, r.canary_percent) => Some(c),
        _ => r.stable_version,
    }
}

/// `GET /internal/v1/bundle?edge_id=…` — the bundle meant for this edge (ETag / 304).
pub async fn bundle_for_edge(
    State(state): State<AppState>,
    _: EdgeAuth,
    headers: HeaderMap,
    crate::http::Query(q): crate::http::Query<BundleQuery>,
) -> ApiResult<Response> {
    let mut conn = state.cf.acquire().await?;
    let rollout = rollout(&mut conn, false).await?;
    let Some(version) = rollout
        .as_ref()
        .and_then(|r| assigned_version(r, &q.edge_id))
    else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_active_bundle",
            "no rule bundle is active yet",
        ));
    };
    let etag = format!("\"v{version}\"");
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let (bytes,): (Vec<u8>,) = sqlx::query_as("SELECT bytes FROM rule_bundles WHERE version = $1")
        .bind(version)
        .fetch_one(&mut *conn)
        .await?;
    let mut resp = (StatusCode::OK, bytes).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    Ok(resp)
}

/// `POST /internal/v1/edges/{edge_id}/status`
pub async fn edge_status(
    State(state): State<AppState>,
    _: EdgeAuth,
    Path(edge_id): Path<String>,
    Json(body): Json<EdgeStatus>,
) -> ApiResult<StatusCode> {
    if !valid_edge_id(&edge_id) {
        return Err(ApiError::unprocessable(
            "invalid_edge_id",
            "edge ids are 1-128 characters of A-Z a-z 0-9 - _ .",
        ));
    }
    let bundle_version = body
        .bundle_version
        .map(i64::try_from)
        .transpose()
        .map_err(|_| {
            ApiError::unprocessable(
                "invalid_bundle_version",
                "bundle_version is at most 9223372036854775807",
            )
        })?;
    // An edge's own words, shown to operators: bounded, and without control characters
    // (PostgreSQL text cannot hold NUL).
    let error = body.last_error.map(|e| {
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
    sqlx::query(
        "INSERT INTO edges (edge_id, bundle_version, last_error, last_seen) VALUES ($1, $2, $3, $4)
         ON CONFLICT (edge_id) DO UPDATE SET bundle_version = EXCLUDED.bundle_version,
             last_error = EXCLUDED.last_error, last_seen = EXCLUDED.last_seen",
    )
    .bind(&edge_id)
    .bind(bundle_version)
    .bind(error)
    .bind(state.clock.now())
    .execute(&state.cf)
    .await?;
    Ok(StatusCode::NO_CONTENT)
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
