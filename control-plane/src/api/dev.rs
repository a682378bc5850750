//! Development-only routes (`/dev/v1`), mounted only when `TOLLGATE_DEV_MODE=true`:
//! * `GET /dev/v1/clock`, `POST /dev/v1/clock/advance {seconds}` — the advanceable clock;
//!   advancing runs the time-driven transitions (period-end cancels, checkout expiry) at once.
//! * `POST /dev/v1/simulator/intents/{id}/authenticate {outcome}` — completes a 3-D Secure
//!   challenge of the simulated gateway. Absent when a real Stripe key is configured.
//! * `POST /dev/v1/simulator/payments/{id}/dispute {reason, inquiry?}` — the cardholder
//!   disputes a simulated payment; `POST /dev/v1/simulator/disputes/{id} {status}` moves the
//!   dispute on (`under_review`, `won`, `lost`). Each is applied as its webhook would be.

use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::devtools;
use crate::error::Result;
use crate::http::{Json, Path};
use crate::state::AppState;

pub fn routes(with_simulator: bool) -> OpenApiRouter<AppState> {
    let dev = OpenApiRouter::new()
        .routes(routes!(clock))
        .routes(routes!(advance));
    if with_simulator {
        dev.routes(routes!(authenticate))
            .routes(routes!(open_dispute))
            .routes(routes!(update_dispute))
    } else {
        dev
    }
}

#[utoipa::path(
    get, path = "/dev/v1/clock", tag = "dev",
    responses(
        (status = 200, description = "The development clock's now.", body = super::shapes::DevNow),
    ),
)]
async fn clock(State(state): State<AppState>) -> axum::Json<Value> {
    axum::Json(json!({ "now": state.clock.now() }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Advance {
    seconds: i64,
}

#[utoipa::path(
    post, path = "/dev/v1/clock/advance", tag = "dev",
    request_body = Advance,
    responses(
        (status = 200, description = "Advanced; the time-driven transitions ran.", body = super::shapes::DevAdvanced),
        (status = 409, description = "`clock_not_advanceable`."),
        (status = 422, description = "`invalid_advance`."),
    ),
)]
async fn advance(
    State(state): State<AppState>,
    Json(body): Json<Advance>,
) -> Result<axum::Json<Value>> {
    let (now, changed) = devtools::advance_clock(&state, body.seconds).await?;
    Ok(axum::Json(json!({ "now": now, "transitions": changed })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
struct Authenticate {
    outcome: AuthOutcome,
}

#[derive(Debug, Deserialize, Clone, Copy, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
enum AuthOutcome {
    Succeed,
    Fail,
}

#[utoipa::path(
    post, path = "/dev/v1/simulator/intents/{id}/authenticate", tag = "dev",
    params(("id" = String, Path, description = "The simulator's id.")),
    request_body = Authenticate,
    responses(
        (status = 200, description = "The challenge completed.", body = super::shapes::DevAuthenticated),
        (status = 409, description = "`not_awaiting_authentication`."),
    ),
)]
async fn authenticate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<Authenticate>,
) -> Result<axum::Json<Value>> {
    let succeed = matches!(body.outcome, AuthOutcome::Succeed);
    devtools::authenticate(&state, &id, succeed).await?;
    Ok(axum::Json(
        json!({ "intent": id, "authenticated": succeed }),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct OpenDispute {
    reason: String,
    #[serde(default)]
    inquiry: bool,
}

#[utoipa::path(
    post, path = "/dev/v1/simulator/payments/{id}/dispute", tag = "dev",
    params(("id" = String, Path, description = "The simulator's id.")),
    request_body = OpenDispute,
    responses(
        (status = 200, description = "The dispute, applied as its webhook would be.", body = crate::disputes::Dispute),
        (status = 422, description = "`not_disputable`."),
    ),
)]
async fn open_dispute(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<OpenDispute>,
) -> Result<axum::Json<Value>> {
    let d = devtools::open_dispute(&state, &id, &body.reason, body.inquiry).await?;
    Ok(axum::Json(json!(d)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateDispute {
    status: crate::disputes::DisputeStatus,
}

#[utoipa::path(
    post, path = "/dev/v1/simulator/disputes/{id}", tag = "dev",
    params(("id" = String, Path, description = "The simulator's id.")),
    request_body = UpdateDispute,
    responses(
        (status = 200, description = "The dispute.", body = crate::disputes::Dispute),
        (status = 409, description = "`dispute_closed`."),
    ),
)]
async fn update_dispute(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<UpdateDispute>,
) -> Result<axum::Json<Value>> {
    let d = devtools::update_dispute(&state, &id, body.status).await?;
    Ok(axum::Json(json!(d)))
}
