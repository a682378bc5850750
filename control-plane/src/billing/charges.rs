//! Collecting open invoices off-session ([`charge_due`]).
//!
//! Every try is a `charge_attempts` row written **before** the provider call, in its own
//! committed transaction, with the provider's idempotency key derived from the attempt id. No
//! lock or transaction is held across the call. Its outcome is recorded afterwards under the
//! attempt's row lock. When the outcome never gets recorded (the process died, the provider
//! timed out after charging), the attempt stays `pending` and is driven again after
//! [`RETRY_PENDING_AFTER`] with the *same* key: the provider answers with the first payment
//! instead of charging twice.
//!
//! Outcomes: succeeded → the invoice is paid (the ledger's `payment`) and `billing.invoice_paid`
//! goes out through billing's outbox; declined → the invoice stays open, the attempt records the
//! decline, `billing.payment_failed` goes out (dunning consumes it); a decline asking for
//! authentication (`authentication_required`) also marks the invoice `action_required`: the
//! customer pays it on-session.

use chrono::{DateTime, TimeDelta, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use super::invoices;
use super::store;
use crate::gateways::{
    GatewayAmount, GatewayError, PaymentOutcome, PaymentRequest, PaymentStatus, Presence,
};
use crate::ids::{AccountId, ChargeAttemptId, InvoiceId, SubscriptionId};
use crate::ledger::{self, Draft, Header, LedgerAccount, TxKind};
use crate::money::Currency;
use crate::outbox::{self, Topic};
use crate::payment_methods::{self, ChargeTarget};
use crate::state::AppState;

/// Provider calls one charging pass has in flight at once.
pub const CHARGE_CONCURRENCY: usize = 4;

/// A pending attempt whose outcome was not recorded is driven again (same key) after this.
pub const RETRY_PENDING_AFTER: TimeDelta = TimeDelta::minutes(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum AttemptStatus {
    /// Written before the provider call; outcome not recorded yet.
    Pending,
    Succeeded,
    Declined,
    /// Waiting for the customer's authentication (on-session payments).
    RequiresAction,
    /// The provider refused the request itself (nothing was charged).
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum AttemptPresence {
    OffSession,
    OnSession,
}

/// One try to collect an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct ChargeAttempt {
    pub id: ChargeAttemptId,
    pub invoice_id: InvoiceId,
    #[sqlx(try_from = "uuid::Uuid")]
    pub account_id: AccountId,
    pub amount_minor: i64,
    pub currency: Currency,
    pub presence: AttemptPresence,
    pub status: AttemptStatus,
    pub processor: String,
    /// The provider's payment method an on-session attempt pays with.
    pub payment_method: Option<String>,
    pub provider_payment_id: Option<String>,
    pub decline_code: Option<String>,
    pub error: Option<String>,
    pub idempotency_key: String,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// Payload of `billing.payment_failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFailed {
    pub invoice_id: InvoiceId,
    pub account_id: AccountId,
    pub subscription_id: Option<SubscriptionId>,
    pub attempt_id: ChargeAttemptId,
    pub amount_minor: i64,
    pub currency: Currency,
    /// The provider's error code (`card_declined`, `authentication_required`,
    /// `payment_method_required` when the account has no usable method).
    pub code: String,
    pub decline_code: Option<String>,
    /// Whose try it was (events written before this field: off-session).
    #[serde(default = "off_session")]
    pub presence: AttemptPresence,
}

fn off_session() -> AttemptPresence {
    AttemptPresence::OffSession
}

/// Payload of `billing.invoice_paid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoicePaid {
    pub invoice_id: InvoiceId,
    pub account_id: AccountId,
    pub subscription_id: Option<SubscriptionId>,
    pub amount_minor: i64,
    pub currency: Currency,
}

/// The provider key of an attempt.
pub fn provider_key(id: ChargeAttemptId) -> String {
    crate::idempotency::provider_key("charge", id.0)
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Collected {
    Paid,
    Declined {
        code: String,
    },
    /// On-session: the customer must authenticate (`client_secret` for the browser).
    RequiresAction {
        client_secret: String,
    },
    /// Unknown yet (provider away or processing): driven again later with the same key.
    Pending,
    Failed,
}

/// One attempt a pass drove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Driven {
    pub amount_minor: i64,
    pub currency: Currency,
    pub collected: Collected,
}

/// Charges open invoices that are due, and drives again pending attempts whose outcome was
/// never recorded. Returns the attempts driven.
pub async fn charge_due(state: &AppState, batch: i64) -> anyhow::Result<Vec<Driven>> {
    let now = state.clock.now();
    let attempts = {
        let mut tx = state.billing.begin().await?;
        let mut attempts = Vec::new();
        for inv in store::claim_chargeable(&mut tx, now, batch).await? {
            let id = ChargeAttemptId::new_v7();
            let a = store::insert_attempt(
                &mut tx,
                &store::NewAttempt {
                    id,
                    invoice: inv.0,
                    account: inv.1,
                    amount_minor: inv.2,
                    currency: inv.3,
                    presence: AttemptPresence::OffSession,
                    processor: state.gateway.name(),
                    payment_method: None,
                    idempotency_key: &provider_key(id),
                    retry_at: now + RETRY_PENDING_AFTER,
                    now,
                },
            )
            .await?;
            attempts.push(a);
        }
        attempts.extend(
            store::claim_stale_attempts(&mut tx, now, now + RETRY_PENDING_AFTER, batch).await?,
        );
        tx.commit().await?;
        attempts
    };
    // Provider calls are network-bound: a few at once, each attempt on its own connections.
    let out = futures::stream::iter(attempts)
        .map(|a| {
            let state = state.clone();
            async move { drive_one(&state, a).await }
        })
        .buffer_unordered(CHARGE_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    Ok(out)
}

/// [`drive`], its failure logged (the attempt stays pending and is driven again later).
async fn drive_one(state: &AppState, a: ChargeAttempt) -> Driven {
    let collected = match drive(state, &a).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(attempt_id = %a.id, error = %format!("{e:#}"), "charge attempt not recorded; retried later");
            Collected::Pending
        }
    };
    Driven {
        amount_minor: a.amount_minor,
        currency: a.currency,
        collected,
    }
}

/// Calls the provider for one off-session attempt and records what it said. The first drive
/// pins the attempt to the account's default method (and its gateway) before calling; a
/// drive again after a crash or a timeout goes to the pinned one, so one key never reaches two
/// methods or two providers.
async fn drive(state: &AppState, a: &ChargeAttempt) -> anyhow::Result<Collected> {
    let target = {
        let mut conn = state.cf.acquire().await?;
        if a.payment_method.is_some() {
            pinned_target(&mut conn, a).await?
        } else {
            payment_methods::charge_target(&mut conn, a.account_id).await?
        }
    };
    let Some(target) = target else {
        return record(state, a, Err(NoMethod)).await;
    };
    if a.payment_method.is_none() {
        let mut conn = state.billing.acquire().await?;
        if !store::pin_attempt(&mut conn, a.id, &target.gateway, &target.payment_method).await? {
            // Pinned (or recorded) by another driver meanwhile: that one goes on.
            return Ok(Collected::Pending);
        }
    }
    let result = call_provider(state, a, &target).await;
    record(state, a, Ok(result)).await
}

/// The method attempt `a` is pinned to, if it is.
pub(super) async fn pinned_target(
    conn: &mut sqlx::PgConnection,
    a: &ChargeAttempt,
) -> sqlx::Result<Option<ChargeTarget>> {
    match &a.payment_method {
        Some(pm) => {
            payment_methods::target_by_provider_id(conn, a.account_id, &a.processor, pm).await
        }
        None => Ok(None),
    }
}

/// The provider call of attempt `a`, with the attempt's own key and presence, at the gateway
/// holding the method: the same call, and the same payment, however often it is made.
pub(super) async fn call_provider(
    state: &AppState,
    a: &ChargeAttempt,
    target: &ChargeTarget,
) -> Result<PaymentOutcome, GatewayError> {
    let presence = match a.presence {
        AttemptPresence::OnSession => Presence::OnSession,
        AttemptPresence::OffSession => Presence::OffSession,
    };
    state
        .gateway_named(&target.gateway)?
        .create_payment(PaymentRequest {
            customer: &target.customer,
            payment_method: &target.payment_method,
            amount: GatewayAmount {
                amount_minor: a.amount_minor,
                currency: a.currency.as_str(),
            },
            presence,
            idempotency_key: &a.idempotency_key,
            description: &format!("Tollgate invoice {}", a.invoice_id),
        })
        .await
}

/// The account has no usable payment method.
pub(super) struct NoMethod;

/// Records what the provider said about attempt `a`, under its row lock: from `pending` (or
/// `requires_action`, after the customer authenticated) to its outcome. An attempt recorded
/// meanwhile by another driver is described as it is.
pub(super) async fn record(
    state: &AppState,
    a: &ChargeAttempt,
    result: Result<Result<PaymentOutcome, GatewayError>, NoMethod>,
) -> anyhow::Result<Collected> {
    let now = state.clock.now();
    let mut tx = state.billing.begin().await?;
    let Some(current) = store::attempt_for_update(&mut tx, a.id).await? else {
        tx.rollback().await?;
        anyhow::bail!("attempt {} vanished", a.id);
    };
    if !matches!(
        current.status,
        AttemptStatus::Pending | AttemptStatus::RequiresAction
    ) {
        // Recorded meanwhile by another driver of the same attempt. Rolled back now: a
        // dropped transaction keeps the row locked until its connection is released.
        tx.rollback().await?;
        return Ok(match current.status {
            AttemptStatus::Succeeded => Collected::Paid,
            AttemptStatus::Declined => Collected::Declined {
                code: current.decline_code.unwrap_or_default(),
            },
            _ => Collected::Failed,
        });
    }
    // The locked row, not the caller's copy: a first drive pinned the attempt to its method
    // and gateway after the caller read it, and the money is booked at that gateway.
    let a = &current;
    let collected = match result {
        Err(NoMethod) => {
            declined(
                &mut tx,
                a,
                None,
                "payment_method_required",
                None,
                "the account has no usable default payment method",
                now,
            )
            .await?
        }
        Ok(Ok(PaymentOutcome {
            payment_intent_id,
            status,
        })) => match status {
            PaymentStatus::Succeeded => {
                succeeded(&mut tx, a, &payment_intent_id, now).await?;
                Collected::Paid
            }
            PaymentStatus::Failed(d) => {
                declined(
                    &mut tx,
                    a,
                    Some(&payment_intent_id),
                    &d.code,
                    d.decline_code.as_deref(),
                    &d.message,
                    now,
                )
                .await?
            }
            PaymentStatus::RequiresAction { client_secret }
                if a.presence == AttemptPresence::OnSession =>
            {
                store::complete_attempt(
                    &mut tx,
                    a.id,
                    AttemptStatus::RequiresAction,
                    Some(&payment_intent_id),
                    None,
                    None,
                    now,
                )
                .await?;
                Collected::RequiresAction { client_secret }
            }
            PaymentStatus::RequiresAction { .. } => {
                // Off-session, a payment that wants the customer is a decline that asks for
                // them: they pay on-session.
                declined(
                    &mut tx,
                    a,
                    Some(&payment_intent_id),
                    "authentication_required",
                    Some("authentication_required"),
                    "the customer must authenticate this payment",
                    now,
                )
                .await?
            }
            PaymentStatus::Processing => {
                store::note_provider_payment(&mut tx, a.id, &payment_intent_id).await?;
                Collected::Pending
            }
            PaymentStatus::Canceled => {
                store::complete_attempt(
                    &mut tx,
                    a.id,
                    AttemptStatus::Failed,
                    Some(&payment_intent_id),
                    None,
                    Some("the provider canceled the payment"),
                    now,
                )
                .await?;
                Collected::Failed
            }
        },
        Ok(Err(GatewayError::Unavailable(e))) => {
            // Unknown whether the provider charged: stays pending, driven again with the key.
            tracing::warn!(attempt_id = %a.id, error = %e, "payment provider unavailable during a charge");
            Collected::Pending
        }
        Ok(Err(e)) => {
            declined(&mut tx, a, None, "payment_error", None, &e.to_string(), now).await?;
            Collected::Failed
        }
    };
    tx.commit().await?;
    Ok(collected)
}

async fn succeeded(
    conn: &mut PgConnection,
    a: &ChargeAttempt,
    provider_payment: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    store::complete_attempt(
        conn,
        a.id,
        AttemptStatus::Succeeded,
        Some(provider_payment),
        None,
        None,
        now,
    )
    .await?;
    let inv = store::invoice_for_update(conn, a.invoice_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("invoice {} vanished", a.invoice_id))?;
    let reference = format!("charge:{}", a.id);
    if inv.collectable() {
        invoices::record_payment(conn, &inv, &reference, &a.processor, a.amount_minor, now).await?;
        outbox::enqueue(
            conn,
            Topic::BillingInvoicePaid,
            &InvoicePaid {
                invoice_id: inv.id,
                account_id: inv.account_id,
                subscription_id: inv.subscription_id,
                amount_minor: a.amount_minor,
                currency: a.currency,
            },
            now,
        )
        .await?;
    } else {
        // The invoice stopped being owed while the charge was in flight (voided, paid another
        // way): the money is the customer's, held as credit.
        tracing::warn!(invoice_id = %inv.id, status = ?inv.status, "charge succeeded for an invoice no longer open: credited");
        let header = Header {
            kind: TxKind::Payment,
            reference,
            account: a.account_id,
            currency: a.currency,
            description: format!("overpayment of invoice {}", inv.id),
        };
        if let Some(tx) = Draft::new(header)
            .debit(LedgerAccount::cash(&a.processor)?, a.amount_minor)
            .credit(LedgerAccount::Credit, a.amount_minor)
            .seal()?
        {
            ledger::post(conn, &tx, now).await?;
        }
    }
    Ok(())
}

async fn declined(
    conn: &mut PgConnection,
    a: &ChargeAttempt,
    provider_payment: Option<&str>,
    code: &str,
    decline_code: Option<&str>,
    message: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<Collected> {
    store::complete_attempt(
        conn,
        a.id,
        AttemptStatus::Declined,
        provider_payment,
        Some(decline_code.unwrap_or(code)),
        Some(message),
        now,
    )
    .await?;
    if code == "authentication_required" {
        store::set_action_required(conn, a.invoice_id, true, now).await?;
    }
    let subscription = store::invoice(conn, a.invoice_id)
        .await?
        .and_then(|i| i.subscription_id);
    outbox::enqueue(
        conn,
        Topic::BillingPaymentFailed,
        &PaymentFailed {
            invoice_id: a.invoice_id,
            account_id: a.account_id,
            subscription_id: subscription,
            attempt_id: a.id,
            amount_minor: a.amount_minor,
            currency: a.currency,
            code: code.to_owned(),
            decline_code: decline_code.map(str::to_owned),
            presence: a.presence,
        },
        now,
    )
    .await?;
    Ok(Collected::Declined {
        code: code.to_owned(),
    })
}

/// An invoice's attempts, oldest first.
pub async fn attempts_of(
    state: &AppState,
    invoice: InvoiceId,
) -> crate::error::Result<Vec<ChargeAttempt>> {
    let mut conn = state.billing.acquire().await?;
    Ok(store::attempts_of(&mut conn, invoice).await?)
}

/// How long a customer may leave an on-session payment waiting (3-D Secure never completed, or
/// the request never came back) before it is settled without them.
pub const ON_SESSION_ABANDONED_AFTER: TimeDelta = TimeDelta::hours(24);

/// Settles on-session attempts their customer left ([`ON_SESSION_ABANDONED_AFTER`]), so they
/// stop holding the invoice: a payment waiting for authentication is canceled at the provider
/// (which says if it went through after all); a pending one is asked again with its own key.
/// Returns how many were settled.
pub async fn reconcile_abandoned(state: &AppState, batch: i64) -> anyhow::Result<usize> {
    let now = state.clock.now();
    let left = {
        let mut tx = state.billing.begin().await?;
        let left =
            store::abandoned_on_session(&mut tx, now - ON_SESSION_ABANDONED_AFTER, batch).await?;
        tx.commit().await?;
        left
    };
    let mut settled = 0;
    for a in &left {
        let result = match (&a.provider_payment_id, a.status) {
            (Some(pi), AttemptStatus::RequiresAction) => match state.gateway_named(&a.processor) {
                Ok(g) => g.cancel_payment(pi).await,
                Err(e) => Err(e),
            },
            _ => {
                let target = {
                    let mut conn = state.cf.acquire().await?;
                    pinned_target(&mut conn, a).await?
                };
                let Some(target) = target else {
                    record(state, a, Err(NoMethod)).await?;
                    settled += 1;
                    continue;
                };
                call_provider(state, a, &target).await
            }
        };
        let outcome = match result {
            // A payment still waiting for the customer after all this time: given up.
            Ok(PaymentOutcome {
                payment_intent_id,
                status: PaymentStatus::RequiresAction { .. },
            }) => Ok(Ok(PaymentOutcome {
                payment_intent_id,
                status: PaymentStatus::Canceled,
            })),
            other => Ok(other),
        };
        match record(state, a, outcome).await {
            Ok(Collected::Pending) => {}
            Ok(_) => settled += 1,
            Err(e) => {
                tracing::warn!(attempt_id = %a.id, error = %format!("{e:#}"), "abandoned payment not settled")
            }
        }
    }
    Ok(settled)
}

/// A provider webhook named payment `pi`: the attempt in flight it belongs to, if any, is
/// recorded from the payment's current state (read from the provider). Returns whether one was
/// found.
pub async fn settle_payment(state: &AppState, pi: &str) -> anyhow::Result<bool> {
    let a = {
        let mut conn = state.billing.acquire().await?;
        store::attempt_by_payment(&mut conn, pi).await?
    };
    let Some(a) = a else {
        return Ok(false);
    };
    let outcome = match state.gateway_named(&a.processor) {
        Ok(g) => g.retrieve_payment(pi).await,
        Err(e) => Err(e),
    };
    if let Err(GatewayError::Unavailable(e)) = &outcome {
        anyhow::bail!("provider unavailable: {e}");
    }
    record(state, &a, Ok(outcome)).await?;
    state.billing_outbox_wake.notify_waiters();
    Ok(true)
}
