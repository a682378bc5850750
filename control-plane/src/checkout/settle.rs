//! Step 2 and 3 of a purchase: the provider's payment, and applying what it says to the
//! checkout under its row lock — completing the purchase from the snapshot, or refunding a
//! payment that can buy nothing.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::store::{self, Update};
use super::{Checkout, CheckoutStatus, RefundReason};
use crate::billing::FirstPayment;
use crate::error::{Error, Result};
use crate::gateways::{
    Decline, GatewayAmount, GatewayError, PaymentOutcome, PaymentRequest, PaymentStatus, Presence,
};
use crate::idempotency;
use crate::ids::CheckoutId;
use crate::metrics::CheckoutOutcome;
use crate::state::AppState;
use crate::subscriptions::{self, Subscription};
use crate::{catalog, payment_methods};

/// The name of the gateway a checkout pays through: its payment method's (the card gateway's
/// for a free one).
pub async fn gateway_name_of(
    state: &AppState,
    conn: &mut PgConnection,
    c: &Checkout,
) -> sqlx::Result<String> {
    let held = match c.payment_method_id {
        Some(id) => payment_methods::get(conn, c.account_id, id)
            .await?
            .map(|pm| pm.gateway),
        None => None,
    };
    Ok(held.unwrap_or_else(|| state.gateway.name().to_owned()))
}

/// The gateway a checkout pays through ([`gateway_name_of`]).
pub async fn gateway_of<'s>(
    state: &'s AppState,
    c: &Checkout,
) -> Result<&'s dyn crate::gateways::PaymentGateway> {
    let name = {
        let mut conn = state.cf.acquire().await?;
        gateway_name_of(state, &mut conn, c).await?
    };
    Ok(state.gateway_named(&name)?)
}

/// How a checkout ended up after settling.
#[derive(Debug)]
pub enum Settled {
    /// Paid (or free): the subscription exists.
    Subscribed(Checkout, Box<Subscription>),
    /// Waiting for the customer's authentication (`client_secret` for the browser).
    RequiresAction(Checkout, String),
    /// The provider is still working on it.
    Processing(Checkout),
    Failed(Checkout, Decline),
    Expired(Checkout),
    Canceled(Checkout),
    /// Paid, but the plan is no longer sold: refunded (or being refunded).
    Refunded(Checkout),
}

impl Settled {
    /// The checkout whose refund is still to be made, if this is one.
    pub fn refunding(&self) -> Option<CheckoutId> {
        match self {
            Self::Refunded(c) if c.status == CheckoutStatus::Refunding => Some(c.id),
            _ => None,
        }
    }
}

/// The paid (or free) purchase becomes its subscription, from the snapshot — unless the plan is
/// no longer sold or the account got a subscription meanwhile: then the payment is to be
/// refunded (`refunding`; [`refund`] finishes it after the transaction). Under the checkout's
/// row lock, in the caller's transaction.
pub async fn complete_paid(
    state: &AppState,
    conn: &mut PgConnection,
    c: &Checkout,
    pi: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Settled> {
    let reason = if !catalog::is_sold(conn, &c.plan).await? {
        Some(RefundReason::PlanWithdrawn)
    } else if !catalog::addons_sold(conn, c.addons()).await? {
        Some(RefundReason::AddonWithdrawn)
    } else if subscriptions::live(conn, c.account_id).await?.is_some() {
        Some(RefundReason::SubscriptionExists)
    } else {
        None
    };
    if let Some(reason) = reason {
        let paid = c.amount_minor > 0;
        let status = if paid {
            CheckoutStatus::Refunding
        } else {
            CheckoutStatus::Failed
        };
        let c = store::update(
            conn,
            c.id,
            Update {
                pi,
                refund_reason: Some(reason),
                ..Update::status(status)
            },
            now,
        )
        .await?;
        tracing::warn!(checkout_id = %c.id, ?reason, "paid checkout cannot complete: refunding");
        return Ok(Settled::Refunded(c));
    }
    let processor = gateway_name_of(state, conn, c).await?;
    let paid = (c.amount_minor > 0)
        .then(|| {
            pi.map(str::to_owned)
                .or_else(|| c.payment_intent_id.clone())
        })
        .flatten()
        .map(|provider_payment_id| FirstPayment {
            checkout_id: c.id,
            provider_payment_id,
            processor,
            amount_minor: c.amount_minor,
        });
    let sub = subscriptions::create(conn, c.account_id, &c.snapshot()?, paid, now).await?;
    let c = store::update(
        conn,
        c.id,
        Update {
            pi,
            subscription: Some(sub.id),
            ..Update::status(CheckoutStatus::Succeeded)
        },
        now,
    )
    .await?;
    state.metrics.checkout(CheckoutOutcome::Succeeded);
    Ok(Settled::Subscribed(c, Box::new(sub)))
}

/// Applies what the provider said about a checkout's payment, under its row lock, in the
/// caller's transaction. A checkout that is no longer waiting (settled concurrently) is
/// described as it is.
pub async fn settle(
    state: &AppState,
    conn: &mut PgConnection,
    id: CheckoutId,
    outcome: &PaymentOutcome,
    now: DateTime<Utc>,
) -> Result<Settled> {
    let c = store::get(conn, id, true)
        .await?
        .ok_or_else(|| Error::not_found("checkout"))?;
    if !c.status.waiting() {
        return describe(conn, c).await;
    }
    let pi = Some(outcome.payment_intent_id.as_str()).filter(|s| !s.is_empty());
    Ok(match &outcome.status {
        PaymentStatus::Succeeded => complete_paid(state, conn, &c, pi, now).await?,
        PaymentStatus::RequiresAction { client_secret } => {
            let c = store::update(
                conn,
                id,
                Update {
                    pi,
                    client_secret: Some(client_secret),
                    ..Update::status(CheckoutStatus::RequiresAction)
                },
                now,
            )
            .await?;
            Settled::RequiresAction(c, client_secret.clone())
        }
        PaymentStatus::Processing => {
            let c = store::update(
                conn,
                id,
                Update {
                    pi,
                    ..Update::status(CheckoutStatus::RequiresAction)
                },
                now,
            )
            .await?;
            Settled::Processing(c)
        }
        PaymentStatus::Failed(d) => {
            let c = store::update(
                conn,
                id,
                Update {
                    pi,
                    decline: Some(d.decline_code.as_deref().unwrap_or(&d.code)),
                    ..Update::status(CheckoutStatus::Failed)
                },
                now,
            )
            .await?;
            state.metrics.checkout(CheckoutOutcome::Declined);
            Settled::Failed(c, d.clone())
        }
        PaymentStatus::Canceled => {
            let c = store::update(
                conn,
                id,
                Update {
                    pi,
                    ..Update::status(CheckoutStatus::Expired)
                },
                now,
            )
            .await?;
            state.metrics.checkout(CheckoutOutcome::Expired);
            Settled::Expired(c)
        }
    })
}

/// A settled checkout, as [`Settled`].
pub async fn describe(conn: &mut PgConnection, c: Checkout) -> Result<Settled> {
    Ok(match c.status {
        CheckoutStatus::Succeeded => {
            let sub = match c.subscription_id {
                Some(id) => subscriptions::get(conn, id).await?,
                None => None,
            }
            .ok_or_else(|| Error::internal("succeeded checkout without subscription"))?;
            Settled::Subscribed(c, Box::new(sub))
        }
        CheckoutStatus::Failed => {
            let code = c
                .decline_code
                .clone()
                .unwrap_or_else(|| "card_declined".into());
            Settled::Failed(
                c,
                Decline {
                    code: "card_declined".into(),
                    decline_code: Some(code),
                    message: "the payment was declined".into(),
                },
            )
        }
        CheckoutStatus::Expired => Settled::Expired(c),
        CheckoutStatus::Canceled => Settled::Canceled(c),
        CheckoutStatus::Refunding | CheckoutStatus::Refunded => Settled::Refunded(c),
        CheckoutStatus::RequiresAction => match c.client_secret.clone() {
            Some(secret) => Settled::RequiresAction(c, secret),
            None => Settled::Processing(c),
        },
        CheckoutStatus::Pending => Settled::Processing(c),
    })
}

/// Refunds a `refunding` checkout's payment in full (idempotent: the provider key is derived
/// from the checkout), then marks it `refunded`. A provider failure leaves it `refunding` for
/// the reconciler.
pub async fn refund(state: &AppState, id: CheckoutId) -> Result<()> {
    let c = {
        let mut conn = state.cf.acquire().await?;
        store::get(&mut conn, id, false)
            .await?
            .ok_or_else(|| Error::not_found("checkout"))?
    };
    if c.status != CheckoutStatus::Refunding {
        return Ok(());
    }
    let Some(pi) = &c.payment_intent_id else {
        return Err(Error::internal("refunding checkout without a payment"));
    };
    let r = gateway_of(state, &c)
        .await?
        .refund(
            pi,
            c.amount_minor,
            &idempotency::provider_key("refund", c.id.0),
        )
        .await?;
    let mut tx = state.cf.begin().await?;
    let now = state.clock.now();
    if store::get(&mut tx, id, true)
        .await?
        .is_some_and(|c| c.status == CheckoutStatus::Refunding)
    {
        store::update(
            &mut tx,
            id,
            Update {
                refund_id: Some(&r.id),
                ..Update::status(CheckoutStatus::Refunded)
            },
            now,
        )
        .await?;
    }
    tx.commit().await?;
    tracing::info!(checkout_id = %id, refund_id = %r.id, amount_minor = r.amount_minor, "checkout refunded");
    Ok(())
}

/// After a settle's commit: finishes a refund it started (best effort: the reconciler
/// retries), and wakes the outbox relay.
pub async fn after_settle(state: &AppState, refunding: Option<CheckoutId>) {
    if let Some(id) = refunding
        && let Err(e) = refund(state, id).await
    {
        tracing::warn!(checkout_id = %id, error = %e, "refund not done yet; the reconciler retries");
    }
    state.outbox_wake.notify_waiters();
}

/// Step 2 for a pending checkout: the provider's PaymentIntent, created (or, on a repeat,
/// found again by the provider key).
pub async fn charge(state: &AppState, c: &Checkout) -> Result<PaymentOutcome, GatewayError> {
    let unavailable = |e: sqlx::Error| GatewayError::Unavailable(e.to_string());
    let pm = {
        let mut conn = state.cf.acquire().await.map_err(unavailable)?;
        match c.payment_method_id {
            Some(id) => payment_methods::get(&mut conn, c.account_id, id)
                .await
                .map_err(unavailable)?
                .ok_or_else(|| GatewayError::NotFound("payment method".into()))?,
            None => {
                return Err(GatewayError::Invalid(
                    "a paid checkout without a payment method".into(),
                ));
            }
        }
    };
    let key = c
        .provider_key
        .clone()
        .unwrap_or_else(|| idempotency::provider_key("checkout", c.id.0));
    let description = format!("Tollgate {} plan, first period", c.plan);
    state
        .gateway_named(&pm.gateway)?
        .create_payment(PaymentRequest {
            customer: &pm.gateway_customer_id,
            payment_method: &pm.gateway_pm_id,
            amount: GatewayAmount {
                amount_minor: c.amount_minor,
                currency: &c.currency,
            },
            presence: Presence::OnSession,
            idempotency_key: &key,
            description: &description,
        })
        .await
}
