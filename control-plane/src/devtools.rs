//! What development mode adds (`TOLLGATE_DEV_MODE=true`; the `dev` router is mounted only
//! then): the advanceable clock — advancing runs the time-driven transitions at once — and
//! the simulated provider's 3-D Secure challenge.

use chrono::{DateTime, TimeDelta, Utc};

use crate::clock::ADVANCE_MAX_SECS;
use crate::error::{Error, Result};
use crate::gateways::GatewayError;
use crate::maintenance;
use crate::state::AppState;

/// Moves the clock forward by `seconds` and runs the maintenance pass; returns the new time
/// and how many rows changed state.
pub async fn advance_clock(state: &AppState, seconds: i64) -> Result<(DateTime<Utc>, usize)> {
    if seconds <= 0 || seconds > ADVANCE_MAX_SECS {
        return Err(Error::unprocessable(
            "invalid_advance",
            format!("seconds must be 1..={ADVANCE_MAX_SECS}"),
        ));
    }
    let by = TimeDelta::seconds(seconds);
    let now = if state.clock.follows_shared_offset() {
        // The shared clock: every process and edge follows the stored offset.
        let offset =
            crate::clock::advance_offset(&state.cf, by.num_milliseconds(), Utc::now()).await?;
        state.clock.follow_offset_ms(offset);
        state.clock.now()
    } else {
        state.clock.advance(by).ok_or_else(|| {
            Error::conflict("clock_not_advanceable", "this clock is the wall clock")
        })?
    };
    let changed = maintenance::run(state).await.map_err(Error::internal)?;
    Ok((now, changed))
}

/// The clock as edges read it (`GET /internal/v1/clock`).
pub fn clock_reading(state: &AppState) -> tollgate_protocol::internal_api::ClockReading {
    tollgate_protocol::internal_api::ClockReading {
        now_ms: state.clock.now().timestamp_millis(),
        offset_ms: state.clock.offset_ms(),
    }
}

/// The customer passes (`succeed`) or fails a 3-D Secure challenge of the simulated provider.
pub async fn authenticate(state: &AppState, intent: &str, succeed: bool) -> Result<()> {
    let Some(sim) = &state.simulator else {
        return Err(Error::not_found("simulator"));
    };
    match sim.authenticate(intent, succeed).await {
        Ok(()) => Ok(()),
        Err(GatewayError::NotFound(_)) => Err(Error::not_found("intent")),
        Err(e) => Err(Error::conflict(
            "not_awaiting_authentication",
            e.to_string(),
        )),
    }
}

/// The cardholder disputes simulated payment `payment` (`pi_…`): opened at the simulator and
/// applied as its webhook would be (the simulator sends none). Returns the dispute as billing
/// holds it.
pub async fn open_dispute(
    state: &AppState,
    payment: &str,
    reason: &str,
    inquiry: bool,
) -> Result<crate::disputes::Dispute> {
    let Some(sim) = &state.simulator else {
        return Err(Error::not_found("simulator"));
    };
    let d = sim
        .open_dispute(payment, reason, inquiry)
        .await
        .map_err(|e| match e {
            GatewayError::NotFound(_) => Error::not_found("payment"),
            e => Error::unprocessable("not_disputable", e.to_string()),
        })?;
    applied_dispute(state, "simulated", &d.id).await
}

/// Moves simulated dispute `id` on (`under_review`, `won`, `lost`, …) and applies it.
pub async fn update_dispute(
    state: &AppState,
    id: &str,
    status: crate::disputes::DisputeStatus,
) -> Result<crate::disputes::Dispute> {
    let Some(sim) = &state.simulator else {
        return Err(Error::not_found("simulator"));
    };
    sim.update_dispute(id, status).await.map_err(|e| match e {
        GatewayError::NotFound(_) => Error::not_found("dispute"),
        e => Error::conflict("dispute_closed", e.to_string()),
    })?;
    applied_dispute(state, "simulated", id).await
}

async fn applied_dispute(
    state: &AppState,
    provider: &str,
    id: &str,
) -> Result<crate::disputes::Dispute> {
    if crate::disputes::refresh(state, provider, id, "dev").await?
        == crate::disputes::Applied::NotOurs
    {
        return Err(Error::unprocessable(
            "not_disputable",
            "the payment is not one Tollgate booked",
        ));
    }
    state.billing_outbox_wake.notify_waiters();
    crate::disputes::find(state, provider, id)
        .await?
        .map(|(d, _)| d)
        .ok_or_else(|| Error::not_found("dispute"))
}
