//! The check path, the edge's hot path: `GET /v1/check` (one answer), `POST /v1/check` (a
//! batch) and `GET /v1/accounts/{id}/entitlements` (every feature of one account), with
//! [`decide`], the core every check endpoint (OFREP's too, [`crate::ofrep`]) shares.
//!
//! A check reads the account's materialised decisions from the cache ([`EdgeState::entry`]),
//! then applies what depends on the request rather than on the facts: a `limit` feature's
//! quantity must fit the limit, and a metered feature's usage must leave room for the quantity
//! ([`quota_fits`], the one metered-quota rule, which the entitlements view applies too; see
//! [`crate::usage`] for leases and the usage a check sees). On a cache hit
//! `GET /v1/check` allocates nothing beyond its response body and never enters WebAssembly.

use std::borrow::Cow;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tollgate_protocol::check::{
    BATCH_CHECKS_MAX, BatchAnswer, BatchRequest, BatchResults, CheckResponse, ItemError,
};
use tollgate_protocol::usage::{Aggregation, MeterSpec};
use tollgate_protocol::{AccountId, Reason};

use crate::cache;
use crate::clock::now_ms;
use crate::problem::problem;
use crate::state::{Denial, EdgeState};

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
/// endpoint (and what the benchmarks time). Errors are (status, code, detail).
pub async fn decide<'a>(
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
            let stale = state.entry_stale(&account, &entry);
            // An entry of an older bundle answers from that bundle (its own index) until the
            // background pass re-materialises it; a feature that bundle lacks makes this one
            // re-materialise now.
            let entry = match entry.decision_in(view, index, &feature) {
                None if entry.has_facts() && entry.generation() != view.generation => {
                    state.cache.rematerialise(account, view).unwrap_or(entry)
                }
                _ => entry,
            };
            match entry.decision_in(view, index, &feature) {
                Some(d) => CheckResponse {
                    allowed: d.allowed,
                    feature,
                    limit: d.limit,
                    usage: None,
                    remaining: None,
                    reason: d.reason,
                    version: entry.version(),
                    bundle_version: entry.bundle_version(),
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
                    bundle_version: entry.bundle_version(),
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
        // Sum meters: the edge's lease of the quota decides (bounded overspend across
        // edges); otherwise, or without the control plane, the usage just read.
        let leased = if !spec.soft && spec.aggregation == Aggregation::Sum {
            state
                .lease_allows(account, &resp.feature, spec, limit, quantity)
                .await
        } else {
            None
        };
        if !quota_fits(spec, limit, used, quantity, leased) {
            resp.allowed = false;
            resp.reason = Reason::DeniedQuotaExceeded;
        }
    }
    if resp.allowed {
        state.metrics.checks_allowed.inc();
    } else {
        state.metrics.checks_denied.inc();
        state.record_denial(Denial {
            at_ms: now_ms(),
            account,
            feature: resp.feature.to_string(),
            reason: resp.reason,
            version: resp.version,
            bundle_version: resp.bundle_version,
            stale: resp.stale,
        });
    }
    Ok(resp)
}

/// The metered-quota rule, the one every answer applies (`GET`/`POST /v1/check`, OFREP, and
/// `GET /v1/accounts/{id}/entitlements` with quantity 1): whether `quantity` more units fit a
/// granted, finite quota `limit` of which `used` is used. A `soft` meter always fits (it never
/// denies; `remaining` may go negative). Otherwise this edge's lease of the quota decides when
/// the check consulted one (`leased`: `sum` meters on the check path); without it, the
/// quantity must fit on top of the usage read: `used + quantity ≤ limit` (saturating).
pub(crate) fn quota_fits(
    spec: &MeterSpec,
    limit: i64,
    used: i64,
    quantity: i64,
    leased: Option<bool>,
) -> bool {
    spec.soft || leased.unwrap_or_else(|| used.saturating_add(quantity) <= limit)
}

/// `GET /v1/check?account=ID&feature=KEY` — the hot path: on a cache hit, no allocation
/// beyond the response body and no WebAssembly.
#[utoipa::path(
    get, path = "/v1/check", tag = "checks",
    params(crate::openapi::CheckQuery),
    security((), ("service" = [])),
    responses(
        (status = 200, description = "The decision.", body = CheckResponse),
        (status = 400, description = "`invalid_query`, `invalid_quantity`, `invalid_account_id`."),
        (status = 404, description = "`unknown_feature`: the bundle has no such feature."),
        (status = 503, description = "`not_ready`: no rule bundle loaded yet."),
    ),
)]
pub(crate) async fn check(State(state): State<EdgeState>, RawQuery(raw): RawQuery) -> Response {
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
#[utoipa::path(
    post, path = "/v1/check", tag = "checks",
    request_body = tollgate_protocol::check::BatchRequest,
    security((), ("service" = [])),
    responses(
        (status = 200, description = "The answers in request order; an item that cannot be decided carries `error`.", body = tollgate_protocol::check::BatchResults),
        (status = 400, description = "`invalid_body`: not a batch."),
        (status = 422, description = "`batch_too_large`: more than 256 checks."),
        (status = 503, description = "`not_ready`: no rule bundle loaded yet."),
    ),
)]
pub(crate) async fn check_batch(
    State(state): State<EdgeState>,
    body: axum::body::Bytes,
) -> Response {
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
        let failed = |code: &str, detail: &str| BatchAnswer::Failed {
            account: item.account.clone(),
            feature: item.feature.clone(),
            error: ItemError {
                code: code.to_owned(),
                detail: detail.to_owned(),
            },
        };
        let Ok(account) = item.account.parse::<AccountId>() else {
            results.push(failed("invalid_account_id", "account must be a UUID"));
            continue;
        };
        let Some(quantity) = item_quantity(item.quantity.as_ref()) else {
            results.push(failed("invalid_quantity", QUANTITY_RULE));
            continue;
        };
        let feature = Cow::Borrowed(item.feature.as_str());
        results.push(
            match decide(&state, &view, account, feature, quantity).await {
                Ok(result) => BatchAnswer::Checked {
                    account: item.account.clone(),
                    result,
                },
                Err((_, code, detail)) => failed(code, &detail),
            },
        );
    }
    axum::Json(BatchResults { results }).into_response()
}

/// `GET /v1/accounts/{id}/entitlements` — every feature of the bundle for one account.
#[utoipa::path(
    get, path = "/v1/accounts/{id}/entitlements", tag = "checks",
    params(("id" = String, Path, description = "The account's id (a UUID).")),
    security((), ("service" = [])),
    responses(
        (status = 200, description = "Every feature of the bundle for the account.", body = crate::openapi::Entitlements),
        (status = 400, description = "`invalid_account_id`."),
        (status = 503, description = "`not_ready`: no rule bundle loaded yet."),
    ),
)]
pub(crate) async fn entitlements(
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
            let stale = state.entry_stale(&account, &e);
            let e = if e.generation() == view.generation {
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
        features.push(match entry.as_ref().and_then(|e| e.decision_at(i)) {
            Some(d) => {
                let mut v = json!({ "feature": f.key, "kind": kind, "allowed": d.allowed, "limit": d.limit, "reason": d.reason });
                if let (Some(spec), Some(limit)) = (f.meter.as_ref(), d.limit) {
                    let (used, unavailable) = state.usage_of(account, &f.key, spec).await;
                    stale |= unavailable;
                    v["usage"] = json!(used);
                    v["remaining"] = json!(limit.saturating_sub(used));
                    v["aggregation"] = json!(spec.aggregation.as_str());
                    v["soft"] = json!(spec.soft);
                    // The check's rule for quantity 1, without a lease: this view never
                    // asks for one.
                    if d.allowed && !quota_fits(spec, limit, used, 1, None) {
                        v["allowed"] = json!(false);
                        v["reason"] = json!(Reason::DeniedQuotaExceeded);
                    }
                }
                v
            }
            None if entry.as_ref().is_some_and(|e| !e.has_facts()) => {
                json!({ "feature": f.key, "kind": kind, "allowed": false, "limit": null, "reason": Reason::UnknownAccount })
            }
            None => json!({ "feature": f.key, "kind": kind, "allowed": f.fail_open, "limit": null, "reason": Reason::Fallback }),
        });
    }
    axum::Json(json!({
        "account": account,
        "version": entry.as_ref().map_or(0, |e| e.version()),
        "bundle_version": entry.as_ref().map_or(view.bundle_version, |e| e.bundle_version()),
        "stale": stale,
        "features": features,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use tollgate_protocol::usage::{Aggregation, MeterPeriod, MeterSpec};

    use super::quota_fits;

    fn meter(aggregation: Aggregation, soft: bool) -> MeterSpec {
        MeterSpec {
            period: MeterPeriod::Month,
            aggregation,
            soft,
            lease: 100,
        }
    }

    #[test]
    fn a_quota_fits_when_the_quantity_fits_on_top_of_the_usage_unless_a_lease_answered() {
        let hard = meter(Aggregation::Count, false);
        let soft = meter(Aggregation::Sum, true);
        for (spec, limit, used, quantity, leased, fits) in [
            (&hard, 10, 9, 1, None, true),
            (&hard, 10, 10, 1, None, false),
            (&hard, 10, 11, 1, None, false),
            (&hard, 10, 7, 3, None, true),
            (&hard, 10, 7, 4, None, false),
            // Quantity 0 asks whether the quota is not passed yet.
            (&hard, 10, 10, 0, None, true),
            (&hard, 10, 11, 0, None, false),
            // A lease, when the check asked for one, decides either way.
            (&hard, 10, 0, 1, Some(false), false),
            (&hard, 10, 10, 1, Some(true), true),
            // A soft meter never denies.
            (&soft, 10, 11, 1, None, true),
            (&soft, 10, 11, 1, Some(false), true),
            // Saturating: the check's rule. The entitlements view used to compare
            // `used >= limit` and denied here; it now answers as the check does.
            (&hard, i64::MAX, i64::MAX, 1, None, true),
        ] {
            assert_eq!(
                quota_fits(spec, limit, used, quantity, leased),
                fits,
                "{used} + {quantity} of {limit} (soft {}, lease {leased:?})",
                spec.soft
            );
        }
    }
}
