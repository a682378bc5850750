//! Time-driven transitions, run every second by the maintenance worker (and at once after a
//! development clock advance): subscriptions whose cancel at period end came due, checkouts
//! nobody else will settle, abandoned card set-ups, expired idempotency records, and outbox
//! rows (with billing's inbox ids) past the retention window. Provider calls happen outside
//! any transaction; each part is one domain's own function.

use crate::state::AppState;
use crate::{billing, checkout, idempotency, outbox, payment_methods, subscriptions};

/// One pass; returns how many rows changed state (pruning is not a change of state).
pub async fn run(state: &AppState) -> anyhow::Result<usize> {
    let mut changed = subscriptions::end_due(state).await?;
    changed += checkout::reconcile(state).await?;
    changed += payment_methods::reconcile_abandoned(
        state,
        chrono::TimeDelta::seconds(state.checkout_expiry_secs),
    )
    .await?;
    let now = state.clock.now();
    idempotency::sweep(&state.cf, now).await?;
    let pruned = outbox::retention::prune(&state.cf, now, state.outbox_retention).await?
        + billing::prune_inbox(state, now - state.outbox_retention).await?;
    if pruned > 0 {
        state.metrics.outbox_pruned.inc_by(pruned);
        tracing::debug!(pruned, "outbox rows and inbox ids past retention deleted");
    }
    if changed > 0 {
        state.outbox_wake.notify_one();
    }
    Ok(changed)
}
