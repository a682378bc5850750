//! Time-driven transitions, run every second by the maintenance worker (and at once after a
//! development clock advance): subscriptions whose period ended (renewed) or whose cancel at
//! period end came due, drafts past their grace window (finalised), dunning retries that came
//! due and accounts whose days past due moved on, open invoices due for an off-session charge, checkouts nobody else will settle, plan prices to mirror to the payment
//! provider, open disputes not heard of for hours (re-read), abandoned card set-ups, expired idempotency records, and outbox rows (with
//! billing's inbox ids) past the retention window. Provider calls happen outside any
//! transaction; each part is one domain's own function.

use crate::state::AppState;

/// Subscriptions renewed per pass.
pub const RENEWAL_BATCH: i64 = 500;
/// Drafts finalised per pass (one billing transaction).
pub const FINALIZE_BATCH: i64 = 200;
/// Invoices charged per pass.
pub const CHARGE_BATCH: i64 = 100;
/// Plan prices mirrored to the payment provider per pass.
pub const MIRROR_BATCH: i64 = 20;
use crate::{
    billing, catalog, checkout, disputes, dunning, entitlements, idempotency, outbox,
    payment_methods, subscriptions,
};

/// One pass; returns how many rows changed state (pruning is not a change of state).
pub async fn run(state: &AppState) -> anyhow::Result<usize> {
    let mut changed = subscriptions::end_due(state).await?;
    changed += subscriptions::renew_due(state, RENEWAL_BATCH).await?;
    changed += billing::invoices::finalize_due(state, FINALIZE_BATCH)
        .await?
        .len();
    changed += dunning::retry_due(state, CHARGE_BATCH).await?;
    changed += entitlements::refresh_days_past_due(state, RENEWAL_BATCH).await?;
    changed += entitlements::overrides::expire_due(state, RENEWAL_BATCH).await?;
    changed += billing::charges::charge_due(state, CHARGE_BATCH)
        .await?
        .len();
    changed += billing::charges::reconcile_abandoned(state, CHARGE_BATCH).await?;
    changed += checkout::reconcile(state).await?;
    changed += disputes::reconcile(state, CHARGE_BATCH).await?;
    changed += catalog::mirror::run_due(state, MIRROR_BATCH).await?;
    changed += payment_methods::reconcile_abandoned(
        state,
        chrono::TimeDelta::seconds(state.checkout_expiry_secs),
    )
    .await?;
    let now = state.clock.now();
    idempotency::sweep(&state.cf, now).await?;
    let pruned = outbox::retention::prune(&state.cf, now, state.outbox_retention).await?
        + outbox::retention::prune(&state.billing, now, state.outbox_retention).await?
        + billing::prune_inbox(state, now - state.outbox_retention).await?;
    if pruned > 0 {
        state.metrics.outbox_pruned.inc_by(pruned);
        tracing::debug!(pruned, "outbox rows and inbox ids past retention deleted");
    }
    if changed > 0 {
        state.outbox_wake.notify_waiters();
        state.billing_outbox_wake.notify_waiters();
    }
    Ok(changed)
}
