//! The maintenance worker's part of checkout: settles checkouts nobody will settle otherwise,
//! never holding a transaction across a provider call (each checkout: provider calls, then one
//! short transaction). A provider that cannot be reached leaves the checkout for the next pass.

use chrono::TimeDelta;

use super::settle::{self, Settled, after_settle, charge};
use super::store;
use super::{CheckoutStatus, Error, Result};
use crate::gateways::PaymentStatus;
use crate::idempotency;
use crate::ids::CheckoutId;
use crate::state::AppState;

/// A pending checkout older than this is settled by the reconciler (the provider call of its
/// request failed or the process died), s: past the idempotency lease, so a client's own
/// retry goes first.
pub const PENDING_RECONCILE_SECS: i64 = 2 * idempotency::LEASE_SECS;
/// Checkouts one maintenance pass settles at most.
pub const RECONCILE_BATCH_MAX: i64 = 100;

/// * `pending` for longer than [`PENDING_RECONCILE_SECS`]: the payment is created again with
///   its provider key (the provider answers with the first one, if there was one) and settled.
/// * `requires_action` past its expiry: the payment is read; paid → completed; else canceled
///   at the provider and settled (completed if it got paid after all).
/// * `refunding`: the refund is retried.
///
/// Returns how many checkouts changed state.
pub async fn reconcile(state: &AppState) -> anyhow::Result<usize> {
    let now = state.clock.now();
    let due = {
        let mut conn = state.cf.acquire().await?;
        store::due(
            &mut conn,
            now - TimeDelta::seconds(PENDING_RECONCILE_SECS),
            now,
            RECONCILE_BATCH_MAX,
        )
        .await?
    };
    let mut changed = 0;
    for (id, status) in due {
        match reconcile_one(state, id, status).await {
            Ok(true) => changed += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(checkout_id = %id, error = %e, "checkout not reconciled; next pass")
            }
        }
    }
    Ok(changed)
}

async fn reconcile_one(state: &AppState, id: CheckoutId, status: CheckoutStatus) -> Result<bool> {
    if status == CheckoutStatus::Refunding {
        settle::refund(state, id).await?;
        return Ok(true);
    }
    let c = {
        let mut conn = state.cf.acquire().await?;
        store::get(&mut conn, id, false).await?
    };
    let Some(c) = c.filter(|c| c.status == status) else {
        return Ok(false);
    };
    let outcome = if status == CheckoutStatus::Pending {
        charge(state, &c).await?
    } else {
        let Some(pi) = &c.payment_intent_id else {
            return Err(Error::internal("waiting checkout without a payment"));
        };
        let gateway = settle::gateway_of(state, &c).await?;
        let read = gateway.retrieve_payment(pi).await?;
        if read.status == PaymentStatus::Succeeded {
            read
        } else {
            gateway.cancel_payment(pi).await?
        }
    };
    let mut tx = state.cf.begin().await?;
    let settled = settle::settle(state, &mut tx, id, &outcome, state.clock.now()).await?;
    tx.commit().await?;
    let what = match &settled {
        Settled::Subscribed(..) => "completed",
        Settled::Refunded(..) => "refunding",
        Settled::Expired(..) | Settled::Canceled(..) => "expired",
        Settled::Failed(..) => "failed",
        Settled::RequiresAction(..) | Settled::Processing(..) => "waiting",
    };
    tracing::info!(checkout_id = %id, outcome = what, "checkout reconciled");
    after_settle(state, settled.refunding()).await;
    Ok(!matches!(
        settled,
        Settled::RequiresAction(..) | Settled::Processing(..)
    ))
}

/// A provider webhook named payment `pi`: the waiting checkout it pays, if any, is settled from
/// the payment's current state (read from the provider, whatever the webhook said). Returns
/// whether a checkout was found.
pub async fn settle_payment(state: &AppState, pi: &str) -> Result<bool> {
    let c = {
        let mut conn = state.cf.acquire().await?;
        store::waiting_by_payment(&mut conn, pi).await?
    };
    let Some(c) = c else {
        return Ok(false);
    };
    let outcome = settle::gateway_of(state, &c)
        .await?
        .retrieve_payment(pi)
        .await?;
    let mut tx = state.cf.begin().await?;
    let settled = settle::settle(state, &mut tx, c.id, &outcome, state.clock.now()).await?;
    tx.commit().await?;
    after_settle(state, settled.refunding()).await;
    tracing::info!(checkout_id = %c.id, "checkout settled from a provider webhook");
    Ok(true)
}
