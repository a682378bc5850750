//! Development-only routes, mounted only when `TOLLGATE_DEV_MODE=true`:
//! * `GET /dev/v1/clock`, `POST /dev/v1/clock/advance {seconds}` — the advanceable clock;
//!   advancing runs the time-driven transitions (period-end cancels, checkout expiry) at once.
//! * `POST /dev/v1/simulator/intents/{id}/authenticate {outcome}` — completes a 3-D Secure
//!   challenge of the simulated gateway. Absent when a real Stripe key is configured.

use axum::extract::State;
use chrono::TimeDelta;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::clock::ADVANCE_MAX_SECS;
use crate::gateways::GatewayError;
use crate::http::{ApiError, ApiResult, Json, Path};
use crate::state::AppState;
use crate::subscriptions;

pub async fn clock(State(state): State<AppState>) -> axum::Json<Value> {
    axum::Json(json!({ "now": state.clock.now() }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Advance {
    pub seconds: i64,
}

pub async fn advance(
    State(state): State<AppState>,
    Json(body): Json<Advance>,
) -> ApiResult<axum::Json<Value>> {
    if body.seconds <= 0 || body.seconds > ADVANCE_MAX_SECS {
        return Err(ApiError::unprocessable(
            "invalid_advance",
            format!("seconds must be 1..={ADVANCE_MAX_SECS}"),
        ));
    }
    let now = state
        .clock
        .advance(TimeDelta::seconds(body.seconds))
        .ok_or_else(|| {
            ApiError::conflict("clock_not_advanceable", "this clock is the wall clock")
        })?;
    let changed = subscriptions::run_maintenance(&state)
        .await
        .map_err(ApiError::internal)?;
    Ok(axum::Json(json!({ "now": now, "transitions": changed })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Authenticate {
    pub outcome: AuthOutcome,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum AuthOutcome {
    Succeed,
    Fail,
}

pub async fn authenticate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<Authenticate>,
) -> ApiResult<axum::Json<Value>> {
    let Some(sim) = &state.simulator else {
        return Err(ApiError::not_found("simulator"));
    };
    match sim
        .authenticate(&id, matches!(body.outcome, AuthOutcome::Succeed))
        .await
    {
        Ok(()) => Ok(axum::Json(
            json!({ "intent": id, "authenticated": matches!(body.outcome, AuthOutcome::Succeed) }),
        )),
        Err(GatewayError::NotFound(_)) => Err(ApiError::not_found("intent")),
        Err(e) => Err(ApiError::conflict(
            "not_awaiting_authentication",
            e.to_string(),
        )),
    }
}
