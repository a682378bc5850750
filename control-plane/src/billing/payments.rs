//! On-session payment of an open invoice by its customer: `POST /v1/invoices/{id}/pay` under
//! an `Idempotency-Key` ([`pay`]), then `POST /v1/invoices/{id}/confirm` after 3-D Secure
//! ([`confirm`]) — the same 202/confirm shape as checkout.
//!
//! The payment is a charge attempt like the off-session ones ([`super::charges`]): its row is
//! written before the provider call, the provider key derives from its id (the idempotency
//! record's resource id, so a resumed request drives the same attempt with the same key), and
//! its outcome is recorded under its row lock. At most one attempt is in flight per invoice (a
//! unique index): an off-session charge never runs while the customer pays on-session.

use serde::{Deserialize, Serialize};

use super::charges::{
    self, AttemptPresence, AttemptStatus, ChargeAttempt, Collected, NoMethod, provider_key,
};
use super::invoices::{Invoice, InvoiceStatus};
use super::store;
use crate::error::{Error, Kind, Result};
use crate::gateways::{Decline, GatewayError};
use crate::idempotency::{self, Attempt, Ran};
use crate::ids::{AccountId, ChargeAttemptId, InvoiceId, PaymentMethodId};
use crate::payment_methods::{self, ChargeTarget, PaymentMethodStatus};
use crate::state::AppState;

/// `POST /v1/invoices/{id}/pay` as the customer sends it: the payment method to use (the
/// default when absent).
#[derive(utoipa::ToSchema, Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayInvoice {
    #[serde(default)]
    pub payment_method: Option<PaymentMethodId>,
}

/// What paying answers (stored in the idempotency record: its shape is stored data).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payment {
    Paid(Invoice),
    /// The customer must authenticate with `client_secret`, then confirm.
    RequiresAction {
        invoice: Invoice,
        client_secret: String,
    },
    Processing(Invoice),
}

fn not_payable(inv: &Invoice) -> Error {
    let (code, detail) = match inv.status {
        InvoiceStatus::Paid => ("invoice_paid", "this invoice is paid already"),
        InvoiceStatus::Draft => ("invoice_draft", "this invoice is not finalised yet"),
        _ => ("invoice_not_payable", "this invoice is not open"),
    };
    Error::conflict(code, detail).with("invoice_id", inv.id.to_string())
}

/// Pays one of the account's open invoices on-session (see the module doc).
pub async fn pay(
    state: &AppState,
    account: AccountId,
    id: InvoiceId,
    key: idempotency::Key,
    input: &PayInvoice,
) -> Result<Ran<Payment>> {
    let request = idempotency::Request::new(
        account.to_string(),
        key,
        &format!("POST /v1/invoices/{id}/pay"),
        input,
    )?;
    let now = state.clock.now();
    idempotency::run(
        &state.cf,
        &request,
        now,
        async |tx, _| {
            // Checks only; the attempt is written once the key is.
            let inv = super::invoices::get(state, account, id).await?;
            if !inv.collectable() {
                return Err(not_payable(&inv));
            }
            if let Some(pm) = input.payment_method {
                let pm = payment_methods::get(tx, account, pm)
                    .await?
                    .ok_or_else(|| Error::not_found("payment method"))?;
                if pm.status != PaymentMethodStatus::Ready {
                    return Err(Error::conflict(
                        "payment_method_not_ready",
                        "finish setting up this payment method first",
                    ));
                }
            }
            Ok(())
        },
        async |attempt, _| proceed(state, account, id, input, attempt).await,
    )
    .await
}

async fn proceed(
    state: &AppState,
    account: AccountId,
    id: InvoiceId,
    input: &PayInvoice,
    attempt: &Attempt,
) -> Result<Payment> {
    let attempt_id = ChargeAttemptId(attempt.resource());
    let chosen = {
        let mut conn = state.cf.acquire().await?;
        match input.payment_method {
            Some(pm) => payment_methods::target_of(&mut conn, account, pm).await?,
            None => payment_methods::charge_target(&mut conn, account).await?,
        }
    };
    let a = ensure_attempt(state, id, attempt_id, chosen.as_ref()).await?;
    // A resumed request charges what its attempt was pinned to the first time.
    let target = {
        let mut conn = state.cf.acquire().await?;
        charges::pinned_target(&mut conn, &a).await?
    };
    let result = match target {
        Some(target) => Ok(charges::call_provider(state, &a, &target).await),
        None => Err(NoMethod),
    };
    if let Ok(Err(GatewayError::Unavailable(e))) = &result {
        // Unknown whether it was charged: the retry (same key) drives the same attempt.
        return Err(Error::unavailable("payment_provider_unavailable", e)
            .with("invoice_id", id.to_string()));
    }
    let collected = charges::record(state, &a, result)
        .await
        .map_err(Error::internal)?;
    let answer = answer(state, account, id, collected).await;
    state.billing_outbox_wake.notify_waiters();
    attempt.store(&state.cf, answer).await
}

/// The attempt of this request: made on the first try, found again on a resume.
async fn ensure_attempt(
    state: &AppState,
    invoice: InvoiceId,
    id: ChargeAttemptId,
    target: Option<&ChargeTarget>,
) -> Result<ChargeAttempt> {
    let now = state.clock.now();
    let mut tx = state.billing.begin().await?;
    if let Some(a) = store::attempt_for_update(&mut tx, id).await? {
        tx.commit().await?;
        return Ok(a);
    }
    let refused = match store::invoice_for_update(&mut tx, invoice).await? {
        None => Some(Error::not_found("invoice")),
        Some(inv) if !inv.collectable() || inv.amount_remaining_minor <= 0 => {
            Some(not_payable(&inv))
        }
        Some(_) => None,
    };
    if let Some(e) = refused {
        // Now: a dropped transaction keeps the invoice locked until its connection is reused.
        tx.rollback().await?;
        return Err(e);
    }
    let inv = store::invoice(&mut tx, invoice)
        .await?
        .ok_or_else(|| Error::not_found("invoice"))?;
    let a = store::insert_attempt(
        &mut tx,
        &store::NewAttempt {
            id,
            invoice,
            account: inv.account_id,
            amount_minor: inv.amount_remaining_minor,
            currency: inv.currency,
            presence: AttemptPresence::OnSession,
            processor: target.map_or(state.gateway.name(), |t| t.gateway.as_str()),
            payment_method: target.map(|t| t.payment_method.as_str()),
            idempotency_key: &provider_key(id),
            retry_at: now,
            now,
        },
    )
    .await
    .map_err(
        |e| match e.as_database_error().and_then(|d| d.constraint()) {
            Some("charge_attempts_one_pending") => Error::conflict(
                "payment_in_progress",
                "a payment of this invoice is in progress; wait for it or confirm it",
            ),
            _ => Error::from(e),
        },
    )?;
    tx.commit().await?;
    Ok(a)
}

async fn answer(
    state: &AppState,
    account: AccountId,
    id: InvoiceId,
    collected: Collected,
) -> Result<Payment> {
    let inv = super::invoices::get(state, account, id).await?;
    match collected {
        Collected::Paid => Ok(Payment::Paid(inv)),
        Collected::RequiresAction { client_secret } => Ok(Payment::RequiresAction {
            invoice: inv,
            client_secret,
        }),
        Collected::Pending => Ok(Payment::Processing(inv)),
        Collected::Declined { code } if code == "payment_method_required" => {
            Err(Error::unprocessable(
                "payment_method_required",
                "add a payment method to pay this invoice",
            ))
        }
        Collected::Declined { code } => Err(Error::declined(&Decline {
            message: "the payment was declined".into(),
            decline_code: Some(code.clone()),
            code,
        })
        .with("invoice_id", id.to_string())),
        Collected::Failed => Err(Error::new(
            Kind::PaymentRequired,
            "payment_failed",
            "the payment provider refused this payment",
        )),
    }
}

/// After the customer authenticated: reads the waiting payment's state at the provider and
/// records it. An invoice with nothing waiting is described as it is.
pub async fn confirm(state: &AppState, account: AccountId, id: InvoiceId) -> Result<Payment> {
    let inv = super::invoices::get(state, account, id).await?;
    let waiting = {
        let mut conn = state.billing.acquire().await?;
        store::attempts_of(&mut conn, id)
            .await?
            .into_iter()
            .rfind(|a| a.status == AttemptStatus::RequiresAction)
    };
    let Some(a) = waiting else {
        return match inv.status {
            InvoiceStatus::Paid => Ok(Payment::Paid(inv)),
            _ => Err(Error::conflict(
                "nothing_to_confirm",
                "no payment of this invoice waits for authentication",
            )),
        };
    };
    let Some(pi) = a.provider_payment_id.clone() else {
        return Err(Error::internal("a waiting attempt without its payment"));
    };
    let outcome = state
        .gateway_named(&a.processor)?
        .retrieve_payment(&pi)
        .await;
    if let Err(GatewayError::Unavailable(e)) = &outcome {
        return Err(Error::unavailable("payment_provider_unavailable", e));
    }
    let collected = charges::record(state, &a, Ok(outcome))
        .await
        .map_err(Error::internal)?;
    state.billing_outbox_wake.notify_waiters();
    answer(state, account, id, collected).await
}
