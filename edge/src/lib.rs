//! Tollgate's edge sidecar: answers product services' entitlement checks from memory.
//!
//! Check path: moka cache of account → materialised decisions. A miss reads the Redis L2
//! copy, then the control plane's internal API. The Redis change stream keeps cached accounts
//! current (see [`stream`]). Decisions are materialised when facts or the rule bundle change,
//! by the bundle's WebAssembly module (see [`bundles`]); the check path never enters it.

pub mod auth;
pub mod bundles;
pub mod cache;
pub mod config;
pub mod dead_letter;
pub mod gate;
pub mod metrics;
pub mod ofrep;
pub mod state;
pub mod stream;
pub mod upstream;
pub mod usage;
pub mod usage_api;
pub mod usage_log;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tollgate_protocol::{AccountId, Reason};

use crate::cache::CacheLimits;
use crate::config::Config;
use crate::state::EdgeState;
use crate::upstream::{L2, Upstream};

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// An RFC 9457 problem with a stable `code`.
pub(crate) fn problem(
    status: StatusCode,
    code: &'static str,
    detail: impl Into<String>,
) -> Response {
    problem_with(status, code, detail, serde_json::Map::new())
}

/// [`problem`] with extension members (RFC 9457 §3.2), e.g. per-item results.
pub(crate) fn problem_with(
    status: StatusCode,
    code: &'static str,
    detail: impl Into<String>,
    extensions: serde_json::Map<String, serde_json::Value>,
) -> Response {
    let mut body = json!({
        "type": format!("https://tollgate.dev/problems/{code}"),
        "title": status.canonical_reason().unwrap_or("error"),
        "status": status.as_u16(),
        "code": code,
        "detail": detail.into(),
    });
    if let serde_json::Value::Object(b) = &mut body {
        b.extend(extensions);
    }
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

pub fn app(state: EdgeState) -> Router {
    use axum::routing::post;
    use gate::{BoundedBodyLayer, GateLayer};
    // What product services call: a service token when any is configured.
    let service = Router::new()
        .route("/v1/check", get(check).post(check_batch))
        .route("/v1/usage", post(usage_api::post_usage))
        .route("/v1/accounts/{id}/entitlements", get(entitlements))
        .route("/ofrep/v1/evaluate/flags/{key}", post(ofrep::evaluate_flag))
        .route("/ofrep/v1/evaluate/flags", post(ofrep::evaluate_all))
        .route_layer(GateLayer::new({
            let tokens = state.tokens.clone();
            move |req: &axum::extract::Request| auth::service(&tokens, req.headers())
        }));
    // What operators call: an operator token, always.
    let operator = Router::new()
        .route("/v1/dead-letter", get(usage_api::dead_letters))
        .route(
            "/v1/dead-letter/replay",
            post(usage_api::replay_dead_letters),
        )
        .route(
            "/v1/dead-letter/discard",
            post(usage_api::discard_dead_letters),
        )
        .route_layer(GateLayer::new({
            let tokens = state.tokens.clone();
            move |req: &axum::extract::Request| auth::operator(&tokens, req.headers())
        }));
    Router::new()
        .merge(service)
        .merge(operator)
        .route("/v1/status", get(status))
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "route_not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        // Last, so that it wraps every route and both fallbacks.
        .layer(BoundedBodyLayer)
        .with_state(state)
}

pub use gate::{DRAIN_BYTES_MAX, REQUEST_BODY_BYTES_MAX};

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckResponse<'a> {
    pub allowed: bool,
    #[serde(borrow)]
    pub feature: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// Metered features: current-period usage (the control plane's aggregate plus this
    /// edge's unacknowledged events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<i64>,
    /// Metered features: `limit - usage` (negative past a `soft` quota).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<i64>,
    pub reason: Reason,
    /// Facts version the answer came from (0 for an unknown account).
    pub version: i64,
    /// Rule bundle the decision came from.
    pub bundle_version: u64,
    pub stale: bool,
}

/// `account`, `feature` and `quantity` from a query string, borrowed when not
/// percent-encoded.
type CheckParams<'a> = (
    Option<Cow<'a, str>>,
    Option<Cow<'a, str>>,
    Option<Cow<'a, str>>,
);

fn check_params(raw: Option<&str>) -> CheckParams<'_> {
    let (mut account, mut feature, mut quantity) = (None, None, None);
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "account" => account = Some(v),
            "feature" => feature = Some(v),
            "quantity" => quantity = Some(v),
            _ => {}
        }
    }
    (account, feature, quantity)
}

/// Decides one (account, feature) under the bundle in force; the shared core of every check
/// endpoint. Errors are (status, code, detail).
pub(crate) async fn decide<'a>(
    state: &EdgeState,
    view: &Arc<cache::RulesView>,
    account: AccountId,
    feature: Cow<'a, str>,
    quantity: i64,
) -> Result<CheckResponse<'a>, (StatusCode, &'static str, String)> {
    let Some(index) = view.feature_index(&feature) else {
        return Err((
            StatusCode::NOT_FOUND,
            "unknown_feature",
            format!("no feature `{feature}`"),
        ));
    };
    let mut resp = match state.entry(account, view).await {
        Ok(entry) => {
            let stale = state.entry_stale(&entry);
            // An entry of an older bundle answers from that bundle (its own index) until the
            // background pass re-materialises it; a feature that bundle lacks makes this one
            // re-materialise now.
            let entry = match entry.decision(&feature) {
                None if entry.facts.is_some() && entry.generation != view.generation => {
                    state.cache.rematerialise(account, view).unwrap_or(entry)
                }
                _ => entry,
            };
            match entry.decision(&feature) {
                Some(d) => CheckResponse {
                    allowed: d.allowed,
                    feature,
                    limit: d.limit,
                    usage: None,
                    remaining: None,
                    reason: d.reason,
                    version: entry.version(),
                    bundle_version: entry.bundle_version,
                    stale,
                },
                None => CheckResponse {
                    allowed: false,
                    feature,
                    limit: None,
                    usage: None,
                    remaining: None,
                    reason: Reason::UnknownAccount,
                    version: 0,
                    bundle_version: entry.bundle_version,
                    stale,
                },
            }
        }
        Err(e) => {
            // Never seen and the control plane is unreachable: the feature's policy decides.
            tracing::warn!(account_id = %account, error = %e, "fill failed; fail-open/closed policy answers");
            state.metrics.checks_unavailable.inc();
            let fail_open = view
                .program
                .features
                .get(index)
                .is_some_and(|f| f.fail_open);
            CheckResponse {
                allowed: fail_open,
                feature,
                limit: None,
                usage: None,
                remaining: None,
                reason: Reason::Fallback,
                version: 0,
                bundle_version: view.bundle_version,
                stale: true,
            }
        }
    };
    // A limit feature: the quantity asked for must fit the limit (11 seats on a limit of 10
    // is denied). An unlimited grant (no limit) fits any.
    if let (true, Some(limit), tollgate_rules::ir::FeatureKind::Limit) =
        (resp.allowed, resp.limit, view.program.features[index].kind)
        && quantity > limit
    {
        resp.allowed = false;
        resp.reason = Reason::DeniedQuotaExceeded;
    }
    // Metered: the counter comparison. Only for a granted quota; a denial stays what it was.
    if let (true, Some(limit), Some(spec)) = (
        resp.allowed,
        resp.limit,
        view.program.features[index].meter.as_ref(),
    ) {
        let (used, unavailable) = state.usage_of(account, &resp.feature, spec).await;
        resp.usage = Some(used);
        resp.remaining = Some(limit.saturating_sub(used));
        resp.stale |= unavailable;
        if !spec.soft {
            // Sum meters: the edge's lease of the quota decides (bounded overspend across
            // edges); otherwise, or without the control plane, the usage just read.
            let leased = if spec.aggregation == tollgate_protocol::usage::Aggregation::Sum {
                state
                    .lease_allows(account, &resp.feature, spec, limit, quantity)
                    .await
            } else {
                None
            };
            let fits = leased.unwrap_or_else(|| used.saturating_add(quantity) <= limit);
            if !fits {
                resp.allowed = false;
                resp.reason = Reason::DeniedQuotaExceeded;
            }
        }
    }
    if resp.allowed {
        state.metrics.checks_allowed.inc();
    } else {
        state.metrics.checks_denied.inc();
        state.record_denial(account, &resp);
    }
    Ok(resp)
}

/// `GET /v1/check?account=ID&feature=KEY` — the hot path: on a cache hit, no allocation
/// beyond the response body and no WebAssembly.
async fn check(State(state): State<EdgeState>, RawQuery(raw): RawQuery) -> Response {
    let (Some(account), Some(feature), quantity) = check_params(raw.as_deref()) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "expected ?account=ID&feature=KEY[&quantity=N]",
        );
    };
    let quantity = match quantity.map(|q| q.parse::<i64>()) {
        None => 1,
        Some(Ok(q)) if tollgate_protocol::usage::quantity_ok(q) => q,
        Some(_) => {
            return problem(StatusCode::BAD_REQUEST, "invalid_quantity", QUANTITY_RULE);
        }
    };
    let Ok(account) = account.parse::<AccountId>() else {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid_account_id",
            "account must be a UUID",
        );
    };
    // A guard, not a clone of the Arc: no reference-count traffic on the hot path.
    let guard = state.rules.load();
    let Some(view) = guard.as_ref() else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "no rule bundle loaded yet",
        );
    };
    match decide(&state, view, account, feature, quantity).await {
        Ok(resp) => axum::Json(resp).into_response(),
        Err((status, code, detail)) => problem(status, code, detail),
    }
}

/// What a check's `quantity` must be.
pub const QUANTITY_RULE: &str = "quantity must be a whole number from 0 to 1099511627776 (2^40)";

/// Checks in one `POST /v1/check` at most.
pub const BATCH_CHECKS_MAX: usize = 256;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchItem {
    pub account: String,
    pub feature: String,
    /// Units the caller is about to use of a metered or limit feature (default 1). Checked per
    /// item: a bad one refuses that item, not the batch.
    #[serde(default)]
    pub quantity: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub checks: Vec<BatchItem>,
}

/// An item's quantity, or why it is not one.
fn item_quantity(v: Option<&serde_json::Value>) -> Option<i64> {
    match v {
        None => Some(1),
        Some(v) => v
            .as_i64()
            .filter(|q| tollgate_protocol::usage::quantity_ok(*q)),
    }
}

/// `POST /v1/check {"checks":[{account, feature, quantity?}, …]}` → `{"results":[…]}` in
/// request order; an item that cannot be decided carries `{"error": {code, detail}}` instead.
/// The accounts the edge does not hold are fetched together first (one L2 `MGET`, one
/// control-plane request per 256), not one after another.
async fn check_batch(State(state): State<EdgeState>, body: axum::body::Bytes) -> Response {
    let req: BatchRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return problem(StatusCode::BAD_REQUEST, "invalid_body", e.to_string()),
    };
    if req.checks.len() > BATCH_CHECKS_MAX {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "batch_too_large",
            format!("at most {BATCH_CHECKS_MAX} checks per request"),
        );
    }
    let Some(view) = state.rules.load_full() else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "no rule bundle loaded yet",
        );
    };
    let accounts: Vec<AccountId> = req
        .checks
        .iter()
        .filter_map(|i| i.account.parse().ok())
        .collect();
    state.fill_many(&accounts, &view).await;
    let mut results = Vec::with_capacity(req.checks.len());
    for item in &req.checks {
        let error = |code: &str, detail: &str| {
            json!({ "account": item.account, "feature": item.feature,
                    "error": { "code": code, "detail": detail } })
        };
        let Ok(account) = item.account.parse::<AccountId>() else {
            results.push(error("invalid_account_id", "account must be a UUID"));
            continue;
        };
        let Some(quantity) = item_quantity(item.quantity.as_ref()) else {
            results.push(error("invalid_quantity", QUANTITY_RULE));
            continue;
        };
        let feature = Cow::Borrowed(item.feature.as_str());
        results.push(
            match decide(&state, &view, account, feature, quantity).await {
                Ok(resp) => json!({ "account": item.account, "result": resp }),
                Err((_, code, detail)) => error(code, &detail),
            },
        );
    }
    axum::Json(json!({ "results": results })).into_response()
}

/// `GET /v1/accounts/{id}/entitlements` — every feature of the bundle for one account.
async fn entitlements(
    State(state): State<EdgeState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let Ok(account) = id.parse::<AccountId>() else {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid_account_id",
            "account must be a UUID",
        );
    };
    let Some(view) = state.rules.load_full() else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "no rule bundle loaded yet",
        );
    };
    let (entry, stale) = match state.entry(account, &view).await {
        // Every feature of the bundle in force is listed: the entry is brought to it first.
        Ok(e) => {
            let stale = state.entry_stale(&e);
            let e = if e.generation == view.generation {
                e
            } else {
                state.cache.rematerialise(account, &view).unwrap_or(e)
            };
            (Some(e), stale)
        }
        Err(_) => (None, true),
    };
    let mut features: Vec<serde_json::Value> = Vec::with_capacity(view.program.features.len());
    let mut stale = stale;
    for (i, f) in view.program.features.iter().enumerate() {
        let kind = f.kind.as_str();
        features.push(match entry.as_ref().and_then(|e| e.decisions.get(i)) {
            Some(d) => {
                let mut v = json!({ "feature": f.key, "kind": kind, "allowed": d.allowed, "limit": d.limit, "reason": d.reason });
                if let (Some(spec), Some(limit)) = (f.meter.as_ref(), d.limit) {
                    let (used, unavailable) = state.usage_of(account, &f.key, spec).await;
                    stale |= unavailable;
                    v["usage"] = json!(used);
                    v["remaining"] = json!(limit.saturating_sub(used));
                    v["aggregation"] = json!(spec.aggregation.as_str());
                    v["soft"] = json!(spec.soft);
                    if d.allowed && used >= limit && !spec.soft {
                        v["allowed"] = json!(false);
                        v["reason"] = json!(Reason::DeniedQuotaExceeded);
                    }
                }
                v
            }
            None if entry.as_ref().is_some_and(|e| e.facts.is_none()) => {
                json!({ "feature": f.key, "kind": kind, "allowed": false, "limit": null, "reason": Reason::UnknownAccount })
            }
            None => json!({ "feature": f.key, "kind": kind, "allowed": f.fail_open, "limit": null, "reason": Reason::Fallback }),
        });
    }
    axum::Json(json!({
        "account": account,
        "version": entry.as_ref().map_or(0, |e| e.version()),
        "bundle_version": entry.as_ref().map_or(view.bundle_version, |e| e.bundle_version),
        "stale": stale,
        "features": features,
    }))
    .into_response()
}

/// `GET /v1/status` — what this edge runs, its usage buffer and dead letters, and (to callers
/// with a service or operator token only: they name accounts) its recent denials.
async fn status(State(state): State<EdgeState>, headers: axum::http::HeaderMap) -> Response {
    let caller = state.tokens.caller(&headers);
    let mut body = json!({
        "edge_id": state.edge_id,
        "bundle_version": state.bundle_version(),
        "stale": state.is_stale(),
        "restored_unconfirmed": state.restored_waiting(),
        "stream_position": state.stream_position(),
        "cached_accounts": state.cache.entry_count(),
        "usage": state.usage.get().map(|u| u.status()),
    });
    if caller == auth::Caller::Anonymous {
        body["recent_denials"] = json!(null);
        body["recent_denials_hidden"] =
            json!("account ids are shown to callers with a service or operator token");
    } else {
        body["recent_denials"] = json!(state.recent_denials());
    }
    axum::Json(body).into_response()
}

/// `GET /readyz` — ready once a bundle is installed and the usage log works (after a failed
/// fsync it refuses usage until the edge restarts: take it out of rotation, restart it).
async fn readyz(State(state): State<EdgeState>) -> Response {
    let bundle = state.bundle_version();
    let usage_failed = state.usage.get().is_some_and(|u| u.store_failed());
    let ready = bundle.is_some() && !usage_failed;
    let body = json!({ "ready": ready, "bundle_version": bundle, "usage_store_failed": usage_failed,
                       "stale": state.is_stale(), "edge_id": state.edge_id });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics_handler(State(state): State<EdgeState>) -> Response {
    state
        .metrics
        .cached_accounts
        .set(i64::try_from(state.cache.entry_count()).unwrap_or(i64::MAX));
    state
        .metrics
        .cached_bytes
        .set(i64::try_from(state.cache.weighted_size()).unwrap_or(i64::MAX));
    if let Some(usage) = state.usage.get() {
        usage.refresh_gauges();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// How often cached accounts are refetched from the control plane while the change stream is
/// unavailable (Redis down): freshness degrades to this interval instead of stopping.
pub const STALE_POLL_MS: u64 = 2_000;

async fn poll_while_stale(state: EdgeState, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(STALE_POLL_MS)) => {}
            _ = shutdown.changed() => return,
        }
        if state.is_stale() || state.restored_waiting() {
            state.revalidate_all().await;
        }
    }
}

/// Runs the edge until SIGTERM / Ctrl-C.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let redis = redis::Client::open(config.redis_url.as_str()).context("redis url")?;
    // L2 connects in the background: a Redis that is down at boot only sends misses to the
    // control plane until it answers.
    let l2 = L2::default();
    let upstream = Upstream::new(
        &config.control_plane_url,
        config.edge_token.clone(),
        Duration::from_millis(config.upstream_timeout_ms),
        l2.clone(),
    )?
    .with_fill_limits(config.fill_limits)
    .with_redis_keys(tollgate_protocol::redis_keys::Keys::new(
        &config.redis_key_prefix,
    ));
    let state = EdgeState::new(
        state::EdgeOptions {
            edge_id: config.edge_id.clone(),
            cache_limits: CacheLimits {
                entries_max: config.cache_entries_max,
                bytes_max: config.cache_bytes_max,
            },
            freshness_budget_ms: config.freshness_budget_ms,
            negative_ttl_ms: config.negative_ttl_ms,
            tokens: config.tokens.clone(),
        },
        upstream,
    );
    let engine = tollgate_rules::host::RulesEngine::new().context("wasmtime engine")?;
    // The last good bundle answers at once, even with the control plane down.
    bundles::load_persisted(&state, &engine, &config.trusted_keys, &config.data_dir);
    // Restored facts answer stale until the follower has read every change since they were
    // saved (it resumes at their stream position), or they are refetched.
    let restored = bundles::restore_facts(&state, &config.data_dir);
    state.set_restored(restored.accounts as u64);
    // Usage recovered from disk is flushed as soon as the control plane answers.
    let usage = usage::Usage::open(
        &usage::UsageOptions::in_data_dir(
            &config.data_dir,
            config.usage_buffer_bytes_max,
            config.usage_dead_letter_bytes_max,
        ),
        state.meters_fn(),
        state.metrics.usage.clone(),
    )
    .context("usage log")?;
    let _ = state.usage.set(usage.clone());
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let flusher = tokio::spawn(usage::flush_loop(
        state.clone(),
        usage,
        Duration::from_millis(config.usage_flush_ms),
        shutdown_rx.clone(),
    ));
    let l2_task = tokio::spawn({
        let (client, shutdown) = (redis.clone(), shutdown_rx.clone());
        async move { l2.connect(client, shutdown).await }
    });
    let bundle_task = tokio::spawn(bundles::follow(
        state.clone(),
        engine,
        config.trusted_keys.clone(),
        config.data_dir.clone(),
        Duration::from_millis(config.bundle_poll_ms),
        shutdown_rx.clone(),
    ));
    let snapshots = tokio::spawn(bundles::snapshot_facts(
        state.clone(),
        config.data_dir.clone(),
        shutdown_rx.clone(),
    ));
    let poller = tokio::spawn(poll_while_stale(state.clone(), shutdown_rx.clone()));
    let follower = tokio::spawn(stream::follow(state.clone(), redis, shutdown_rx.clone()));
    let listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .context("bind")?;
    tracing::info!(addr = %config.listen_addr, edge_id = %config.edge_id, "edge listening");
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serve")?;
    let _ = shutdown_tx.send(true);
    let _ = tokio::join!(bundle_task, follower, snapshots, poller, l2_task, flusher);
    tracing::info!("edge stopped");
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
