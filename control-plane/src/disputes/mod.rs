//! Disputes (chargebacks) of payments we booked, in billing_prod.
//!
//! A provider tells us about a dispute by webhook (Stripe's `charge.dispute.*`, Braintree's
//! `dispute_*`); the periodic [`reconcile`] re-reads open disputes whose news may have been
//! lost. Every path ends in [`apply`], which:
//!
//! * finds whose payment it is ([`crate::billing::provider_payments::owner_of`]); a dispute
//!   of a payment we never booked changes nothing;
//! * keeps the **newest** state: an observation older than the one held is ignored (two
//!   webhooks out of order end in the later state), and a decided dispute (`won`, `lost`,
//!   `closed`) is never reopened;
//! * books the money once per step, idempotent by the dispute's id: opened, the processor
//!   withholds it (`cash` → `disputed`); won, it returns; lost, it goes to `chargebacks`
//!   ([`crate::ledger::dispute`]). An inquiry books nothing until it becomes a dispute;
//! * records the change in `dispute_events` (status, cause, time) and announces it on
//!   billing's outbox (`billing.dispute_changed`), which cf turns into the outbound
//!   `dispute.created` / `dispute.updated` / `dispute.closed` events — all in one transaction.

pub mod store;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use crate::gateways::{DisputeState, DisputeStatus};
use crate::ids::{AccountId, DisputeId, InvoiceId};
use crate::ledger::{self, Header, TxKind};
use crate::money::Currency;
use crate::outbox::{self, Topic};
use crate::state::AppState;

/// An open dispute not heard of for this long is read again from its provider.
pub const RECONCILE_AFTER: TimeDelta = TimeDelta::hours(6);
/// Providers whose disputes can be read back (Braintree's arrive only by webhook).
const READABLE: &[&str] = &["stripe", "simulated"];

/// A dispute as billing_prod holds it.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Dispute {
    pub id: DisputeId,
    pub provider: String,
    pub provider_dispute_id: String,
    #[sqlx(try_from = "uuid::Uuid")]
    pub account_id: AccountId,
    pub invoice_id: Option<InvoiceId>,
    pub provider_payment_id: String,
    pub amount_minor: i64,
    pub currency: Currency,
    pub status: DisputeStatus,
    pub reason: Option<String>,
    pub observed_at: DateTime<Utc>,
    pub opened_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
}

/// What a provider said about a dispute, and when it was true.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    /// The gateway's name (`stripe`, `braintree`, `simulated`).
    pub provider: &'a str,
    pub state: DisputeState,
    pub observed_at: DateTime<Utc>,
    /// What told us: a webhook event id, `reconcile`, `dev`.
    pub cause: &'a str,
}

/// What [`apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A dispute of a payment we did not book: nothing changed.
    NotOurs,
    /// Older than (or the same as) what we hold, or the dispute is decided: nothing changed.
    Unchanged,
    Opened,
    Updated,
    Closed,
}

/// `billing.dispute_changed` (cf records it as an outbound event).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DisputeChanged {
    pub dispute_id: DisputeId,
    pub account_id: AccountId,
    pub invoice_id: Option<InvoiceId>,
    pub provider: String,
    pub provider_dispute_id: String,
    pub status: DisputeStatus,
    pub reason: Option<String>,
    pub amount_minor: i64,
    pub currency: Currency,
    /// `created`, `updated` or `closed`.
    pub change: String,
}

/// Applies one observation (see the module doc).
pub async fn apply(state: &AppState, obs: &Observation<'_>) -> Result<Applied> {
    let Some(owner) =
        crate::billing::provider_payments::owner_of(state, &obs.state.payment_id).await?
    else {
        tracing::info!(dispute = %obs.state.id, payment = %obs.state.payment_id, "dispute of a payment that is not ours");
        return Ok(Applied::NotOurs);
    };
    let mut tx = state.billing.begin().await?;
    let applied = apply_in(&mut tx, obs, &owner, state.clock.now()).await?;
    tx.commit().await?;
    Ok(applied)
}

/// [`apply`] in the caller's billing transaction, the payment's owner known.
async fn apply_in(
    tx: &mut sqlx::PgConnection,
    obs: &Observation<'_>,
    owner: &crate::billing::provider_payments::Owner,
    now: DateTime<Utc>,
) -> Result<Applied> {
    let s = &obs.state;
    if s.amount_minor <= 0 {
        return Err(Error::unprocessable(
            "invalid_dispute",
            "a dispute's amount is positive",
        ));
    }
    let currency: Currency = s
        .currency
        .parse()
        .map_err(|_| Error::unprocessable("invalid_dispute", "unknown dispute currency"))?;
    // A provider's free-text reason is kept short (the column's bound), on a char boundary.
    let reason: Option<String> = s.reason.as_deref().map(|r| r.chars().take(100).collect());
    let (held, inserted) = store::upsert_for_update(
        &mut *tx,
        &store::New {
            provider: obs.provider,
            provider_dispute_id: &s.id,
            account_id: owner.account_id.0,
            invoice_id: owner.invoice_id.map(|i| i.0),
            provider_payment_id: &owner.payment_id,
            amount_minor: s.amount_minor,
            currency: currency.as_str(),
            status: s.status,
            reason: reason.as_deref(),
            observed_at: obs.observed_at,
        },
        now,
    )
    .await?;
    let applied = if inserted {
        if s.status.is_closed() {
            Applied::Closed
        } else {
            Applied::Opened
        }
    } else if held.status.is_closed()
        || obs.observed_at < held.observed_at
        || (held.status == s.status && held.amount_minor == s.amount_minor)
    {
        store::touch(&mut *tx, held.id, obs.observed_at.min(now)).await?;
        return Ok(Applied::Unchanged);
    } else if s.status.is_closed() {
        Applied::Closed
    } else {
        Applied::Updated
    };
    let d = if inserted {
        held
    } else {
        store::update(
            &mut *tx,
            held.id,
            s.status,
            s.amount_minor,
            reason.as_deref(),
            obs.observed_at,
            now,
        )
        .await?
    };
    store::record_event(&mut *tx, d.id, d.status, obs.cause, obs.observed_at, now).await?;
    book(&mut *tx, &d, &owner.processor, now).await?;
    outbox::enqueue(
        &mut *tx,
        Topic::BillingDisputeChanged,
        &DisputeChanged {
            dispute_id: d.id,
            account_id: d.account_id,
            invoice_id: d.invoice_id,
            provider: d.provider.clone(),
            provider_dispute_id: d.provider_dispute_id.clone(),
            status: d.status,
            reason: d.reason.clone(),
            amount_minor: d.amount_minor,
            currency: d.currency,
            change: match applied {
                Applied::Opened => "created",
                Applied::Closed => "closed",
                _ => "updated",
            }
            .to_owned(),
        },
        now,
    )
    .await?;
    tracing::info!(dispute = %d.provider_dispute_id, status = d.status.as_str(), cause = obs.cause, "dispute");
    Ok(applied)
}

/// The ledger steps the dispute's status implies, each posted once (by the dispute's id).
async fn book(
    conn: &mut sqlx::PgConnection,
    d: &Dispute,
    processor: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    let mut steps = Vec::new();
    if d.status.withholds() {
        steps.push(TxKind::DisputeOpened);
    }
    match d.status {
        DisputeStatus::Won => steps.push(TxKind::DisputeWon),
        DisputeStatus::Lost => steps.push(TxKind::DisputeLost),
        _ => {}
    }
    for kind in steps {
        let header = Header {
            kind,
            reference: format!("dispute:{}", d.id),
            account: d.account_id,
            currency: d.currency,
            description: format!(
                "dispute {} of payment {} ({})",
                d.provider_dispute_id,
                d.provider_payment_id,
                d.status.as_str()
            ),
        };
        // The amount withheld is the one first booked: a later amount change (Stripe does not
        // make one) must not post a different transaction under the same reference.
        let amount = ledger::amount_of(conn, TxKind::DisputeOpened, &header.reference)
            .await
            .map_err(Error::internal)?
            .unwrap_or(d.amount_minor);
        if let Some(t) = ledger::dispute(header, processor, amount).map_err(Error::internal)? {
            ledger::post(conn, &t, now).await.map_err(Error::internal)?;
        }
    }
    Ok(())
}

/// Reads dispute `id` at `provider` and applies what it says now.
pub async fn refresh(state: &AppState, provider: &str, id: &str, cause: &str) -> Result<Applied> {
    let observed_at = state.clock.now();
    let s = state.gateway_named(provider)?.retrieve_dispute(id).await?;
    apply(
        state,
        &Observation {
            provider,
            state: s,
            observed_at,
            cause,
        },
    )
    .await
}

/// Re-reads up to `batch` open disputes not heard of for [`RECONCILE_AFTER`]: what a lost
/// webhook would have changed is applied. Returns how many changed.
pub async fn reconcile(state: &AppState, batch: i64) -> anyhow::Result<usize> {
    let before = state.clock.now() - RECONCILE_AFTER;
    let stale = {
        let mut conn = state.billing.acquire().await?;
        store::stale_open(&mut conn, READABLE, before, batch).await?
    };
    let mut changed = 0;
    for (provider, id) in &stale {
        match refresh(state, provider, id, "reconcile").await {
            Ok(Applied::Opened | Applied::Updated | Applied::Closed) => changed += 1,
            Ok(_) => {}
            Err(e) => {
                // Read again after the interval, not every pass.
                let mut conn = state.billing.acquire().await?;
                store::touch_provider(&mut conn, provider, id, state.clock.now()).await?;
                tracing::warn!(dispute = %id, error = %e, "dispute not reconciled; read again later");
            }
        }
    }
    Ok(changed)
}

/// `POST /panel/v1/disputes/{id}/resolve`: accept or contest (with evidence).
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    Accept,
    Contest,
}

/// Longest evidence note, characters.
pub const EVIDENCE_CHARS_MAX: usize = 20_000;

/// A billing admin answers dispute `id` (ours) at its provider: accepted (lost), or contested
/// with `evidence` (under review until the issuer decides). The provider is called first,
/// outside any transaction (answering twice is harmless there); the state it returns is applied
/// with the audit row in one billing transaction. A decided dispute: 409 `dispute_closed`.
pub async fn resolve(
    state: &AppState,
    w: &crate::audit::Write<'_>,
    id: DisputeId,
    resolution: Resolution,
    evidence: &str,
) -> Result<Dispute> {
    if let Some(done) = crate::audit::replayed(&state.billing, w).await? {
        return Ok(done);
    }
    if evidence.chars().count() > EVIDENCE_CHARS_MAX
        || !crate::audit::printable(evidence)
        || (resolution == Resolution::Contest && evidence.trim().is_empty())
    {
        return Err(Error::unprocessable(
            "evidence_required",
            format!("contesting needs evidence (1-{EVIDENCE_CHARS_MAX} characters)"),
        ));
    }
    let held = {
        let mut conn = state.billing.acquire().await?;
        store::by_id(&mut conn, id)
            .await?
            .ok_or_else(|| Error::not_found("dispute"))?
    };
    if held.status.is_closed() {
        return Err(Error::conflict("dispute_closed", "this dispute is decided"));
    }
    let observed_at = state.clock.now();
    let after = state
        .gateway_named(&held.provider)?
        .resolve_dispute(
            &held.provider_dispute_id,
            resolution == Resolution::Accept,
            evidence,
        )
        .await?;
    let owner = crate::billing::provider_payments::owner_of(state, &after.payment_id)
        .await?
        .ok_or_else(|| Error::internal("a held dispute's payment has no owner"))?;
    let cause = format!("agent:{}", w.agent.email);
    crate::audit::audited(&state.billing, w, async |tx| {
        apply_in(
            tx,
            &Observation {
                provider: &held.provider,
                state: after.clone(),
                observed_at,
                cause: &cause,
            },
            &owner,
            w.now,
        )
        .await?;
        let d = store::by_id(tx, id)
            .await?
            .ok_or_else(|| Error::internal("dispute vanished"))?;
        let mut e = crate::audit::Effect::new(
            serde_json::json!({ "status": held.status }),
            serde_json::json!({ "status": d.status, "resolution": resolution, "evidence": evidence }),
            d,
        );
        e.account = Some(held.account_id);
        Ok(e)
    })
    .await
}

/// Disputes of every account, newest first (the panel), optionally only those in `status`.
pub async fn list(state: &AppState, status: Option<DisputeStatus>) -> Result<Vec<Dispute>> {
    let mut conn = state.billing.acquire().await?;
    Ok(store::list(&mut conn, status, 200).await?)
}

/// An account's disputes, newest first.
pub async fn of_account(state: &AppState, account: AccountId) -> Result<Vec<Dispute>> {
    let mut conn = state.billing.acquire().await?;
    Ok(store::of_account(&mut conn, account.0).await?)
}

/// One dispute by its provider's id, with its history `(status, cause, observed_at)`.
pub async fn find(
    state: &AppState,
    provider: &str,
    provider_dispute_id: &str,
) -> Result<Option<(Dispute, Vec<(DisputeStatus, String, DateTime<Utc>)>)>> {
    let mut conn = state.billing.acquire().await?;
    let Some(d) = store::by_provider_id(&mut conn, provider, provider_dispute_id).await? else {
        return Ok(None);
    };
    let h = store::history(&mut conn, d.id).await?;
    Ok(Some((d, h)))
}
