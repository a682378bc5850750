//! On-session checkout: the first period's payment while the customer is present, with 3-D
//! Secure when the card asks, and the subscription it buys.
//!
//! # No lock across the provider call
//!
//! A purchase runs in three steps, and no transaction or row lock is held while the provider
//! works:
//!
//! 1. **Reserve** (one short transaction, under the `Idempotency-Key`:
//!    [`crate::idempotency::run`]): the account's checks (not banned, no live subscription, no
//!    other purchase in flight — the partial unique index `checkouts_one_open_per_account`
//!    makes concurrent purchases lose cleanly) and a `pending` checkout row holding the
//!    **snapshot** of what is sold: plan, price, currency, interval and the stable bundle's
//!    version.
//! 2. **Call** the provider (no transaction) with a provider idempotency key derived from the
//!    checkout id, so repeating the call — a client's retry, a resume after a crash, the
//!    reconciler — can never charge twice.
//! 3. **Settle** (one short transaction, under the checkout row's lock: [`settle`]): whatever
//!    the provider said is applied to the checkout if it is still waiting for it; a concurrent
//!    settle of the same checkout finds it settled and changes nothing.
//!
//! A provider that fails or times out leaves the checkout `pending`: the client's retry with
//! the same key resumes it, and so does [`reconcile`] (the maintenance worker) after
//! [`reconcile::PENDING_RECONCILE_SECS`].
//!
//! # No payment without its purchase
//!
//! A succeeded payment always ends in the subscription its snapshot describes, at the snapshot's
//! price, whatever the catalog became meanwhile — except when the plan is no longer sold when
//! the purchase completes (a promotion dropped it: the edges' bundle no longer grants it): then
//! the payment is refunded in full (`refunding` → `refunded`, `refund_reason`
//! `plan_withdrawn`), never kept for nothing. Expiry looks at the payment first: a checkout past
//! its expiry whose payment succeeded (the customer passed 3-D Secure and closed the tab) is
//! completed; one still waiting is canceled at the provider first (and completed if the
//! provider says it succeeded meanwhile); one the provider cannot be asked about is left for
//! the next pass. A customer abandons a waiting checkout with [`cancel`].
//!
//! # States
//!
//! `pending` → `requires_action` → `succeeded` | `failed` | `expired` | `canceled`, and a paid
//! checkout whose plan was withdrawn → `refunding` → `refunded` ([`CheckoutStatus`]).

pub mod reconcile;
pub mod settle;
pub mod store;

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use tollgate_protocol::AccountStanding;
use tollgate_rules::Interval;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::gateways::{GatewayError, PaymentStatus};
use crate::idempotency::{self, Attempt, Ran};
use crate::ids::{AccountId, CheckoutId, PaymentMethodId, SubscriptionId};
use crate::metrics::CheckoutOutcome;
use crate::payment_methods::{self, PaymentMethodStatus};
use crate::state::AppState;
use crate::subscriptions::{self, Subscription};
use crate::{accounts, catalog, rollout};
use settle::{Settled, after_settle, charge, describe};

pub use reconcile::reconcile;

/// Where a checkout stands.
#[derive(
    utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum CheckoutStatus {
    /// Reserved; the provider has not answered yet.
    Pending,
    /// Waiting for the customer's 3-D Secure (or the provider's processing).
    RequiresAction,
    Succeeded,
    Failed,
    Expired,
    Canceled,
    /// Paid but not bought: the refund is under way.
    Refunding,
    Refunded,
}

impl CheckoutStatus {
    /// Still waiting for the provider or the customer.
    pub fn waiting(self) -> bool {
        matches!(self, Self::Pending | Self::RequiresAction)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::RequiresAction => "requires_action",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Canceled => "canceled",
            Self::Refunding => "refunding",
            Self::Refunded => "refunded",
        }
    }
}

/// Why a paid checkout bought nothing and was refunded.
#[derive(
    utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum RefundReason {
    /// The plan was no longer sold when the purchase completed.
    PlanWithdrawn,
    /// The account got a live subscription meanwhile.
    SubscriptionExists,
    /// An add-on it bought was no longer sold when the purchase completed.
    AddonWithdrawn,
}

/// A purchase attempt and the snapshot of what it sells.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Checkout {
    pub id: CheckoutId,
    pub plan: String,
    pub status: CheckoutStatus,
    pub amount_minor: i64,
    pub currency: String,
    pub interval: String,
    /// The stable rule bundle when the checkout was made (what its plan granted then).
    pub bundle_version: Option<i64>,
    pub payment_method_id: Option<PaymentMethodId>,
    pub client_secret: Option<String>,
    pub decline_code: Option<String>,
    pub subscription_id: Option<SubscriptionId>,
    pub refund_reason: Option<RefundReason>,
    pub expires_at: DateTime<Utc>,
    pub payment_intent_id: Option<String>,
    pub provider_key: Option<String>,
    #[sqlx(try_from = "Uuid")]
    pub account_id: AccountId,
    pub created_at: DateTime<Utc>,
    /// What the plan bills besides its price (metered usage), as sold; absent on checkouts
    /// made before billing existed.
    pub terms: Option<sqlx::types::Json<crate::billing::Terms>>,
}

impl Checkout {
    /// What was sold: the snapshot the subscription is created from (the checkout's amount
    /// is the plan's price plus its add-ons').
    fn snapshot(&self) -> Result<subscriptions::Sold> {
        let terms = self.terms.as_ref().map(|t| t.0.clone()).unwrap_or_default();
        let plan_minor = terms
            .addons_minor()
            .ok()
            .and_then(|a| self.amount_minor.checked_sub(a))
            .filter(|p| *p >= 0)
            .ok_or_else(|| Error::internal("checkout amount below its add-ons"))?;
        Ok(subscriptions::Sold {
            plan: self.plan.clone(),
            amount_minor: plan_minor,
            currency: self.currency.clone(),
            interval: Interval::parse(&self.interval)
                .ok_or_else(|| Error::internal("checkout interval"))?,
            terms,
        })
    }

    /// The add-ons bought with the plan.
    pub fn addons(&self) -> &[crate::billing::AddonTerms] {
        self.terms.as_ref().map_or(&[], |t| &t.0.addons)
    }
}

/// `POST /v1/checkout` as the customer sends it.
#[derive(utoipa::ToSchema, Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    #[schema(example = "pro")]
    pub plan: String,
    #[serde(default)]
    pub payment_method: Option<PaymentMethodId>,
    /// Start with the plan's free trial (a first subscription only): nothing is charged until
    /// it ends; the payment method is charged off-session then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trial: bool,
    /// Add-ons bought with the plan: key → quantity ([`subscriptions::addons::select`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub addons: BTreeMap<String, i64>,
}

/// What a purchase answers when it did not fail.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purchase {
    /// Paid (or free): the subscription exists.
    Subscribed {
        checkout: Checkout,
        subscription: Box<Subscription>,
    },
    /// The customer must authenticate with `client_secret`, then confirm.
    RequiresAction {
        checkout: Checkout,
        client_secret: String,
    },
    /// The provider is still working on it.
    Processing { checkout: Checkout },
}

/// What canceling a checkout did.
#[derive(Debug, Clone)]
pub enum Canceled {
    Canceled(Checkout),
    /// The payment went through before the cancel: the purchase completed instead.
    AlreadyPaid(Checkout, Box<Subscription>),
}

fn in_progress(open: CheckoutId) -> Error {
    Error::conflict(
        "checkout_in_progress",
        "another purchase of this account is waiting for payment or authentication; confirm or cancel it first",
    )
    .with("checkout_id", open.to_string())
}

fn checkout_expired() -> Error {
    Error::gone(
        "checkout_expired",
        "the checkout expired before it was authenticated; start a new one",
    )
}

fn refunded(c: &Checkout) -> Error {
    let why = match c.refund_reason {
        Some(RefundReason::SubscriptionExists) => "the account already has a live subscription",
        Some(RefundReason::AddonWithdrawn) => "an add-on it bought is no longer sold",
        _ => "the plan is no longer sold",
    };
    Error::conflict(
        "checkout_refunded",
        format!("{why}: the payment is refunded in full and nothing was bought"),
    )
    .with("checkout_id", c.id.to_string())
    .with(
        "refund_reason",
        match c.refund_reason {
            Some(RefundReason::PlanWithdrawn) => "plan_withdrawn",
            Some(RefundReason::SubscriptionExists) => "subscription_exists",
            Some(RefundReason::AddonWithdrawn) => "addon_withdrawn",
            None => "",
        },
    )
}

fn payment_processing(detail: &str) -> Error {
    Error::conflict("payment_processing", detail.to_owned())
}

/// The answer a purchase request gets for a settled checkout.
fn purchase(s: Settled) -> Result<Purchase> {
    match s {
        Settled::Subscribed(checkout, subscription) => Ok(Purchase::Subscribed {
            checkout,
            subscription,
        }),
        Settled::RequiresAction(checkout, client_secret) => Ok(Purchase::RequiresAction {
            checkout,
            client_secret,
        }),
        Settled::Processing(checkout) => Ok(Purchase::Processing { checkout }),
        Settled::Failed(c, d) => Err(Error::declined(&d).with("checkout_id", c.id.to_string())),
        Settled::Expired(c) => Err(checkout_expired().with("checkout_id", c.id.to_string())),
        Settled::Canceled(c) => Err(Error::conflict(
            "checkout_canceled",
            "this checkout was canceled",
        )
        .with("checkout_id", c.id.to_string())),
        Settled::Refunded(c) => Err(refunded(&c)),
    }
}

/// The answer `confirm` and `cancel` give for a checkout that is no longer waiting.
fn settled_answer(s: Settled) -> Result<(Checkout, Subscription)> {
    match s {
        Settled::Subscribed(c, sub) => Ok((c, *sub)),
        Settled::RequiresAction(_, secret) => Err(Error::conflict(
            "authentication_required",
            "the customer has not completed authentication yet",
        )
        .with("client_secret", secret)),
        Settled::Processing(_) => Err(payment_processing("the provider is still processing")),
        Settled::Failed(_, d) => Err(Error::declined(&d)),
        Settled::Expired(_) => Err(checkout_expired()),
        Settled::Canceled(_) => Err(Error::gone(
            "checkout_canceled",
            "this checkout was canceled",
        )),
        Settled::Refunded(c) => Err(refunded(&c)),
    }
}

/// Buys a plan (see the module doc for the three steps).
pub async fn start(
    state: &AppState,
    account: AccountId,
    key: idempotency::Key,
    input: &CheckoutRequest,
) -> Result<Ran<Purchase>> {
    let request = idempotency::Request::new(account.to_string(), key, "POST /v1/checkout", input)?;
    let now = state.clock.now();
    idempotency::run(
        &state.cf,
        &request,
        now,
        async |tx, id| reserve(state, tx, account, input, CheckoutId(id), now).await,
        async |attempt, reserved| match reserved {
            Some(Reserved::Free(settled)) => {
                // Completed in the key's transaction; stored now.
                let answer = purchase(*settled);
                let mut tx = state.cf.begin().await?;
                attempt.complete(&mut tx, &answer).await?;
                tx.commit().await?;
                state.outbox_wake.notify_waiters();
                answer
            }
            Some(Reserved::Pending(c)) => pay(state, attempt, &c).await,
            None => resume(state, attempt).await,
        },
    )
    .await
}

/// What step 1 left.
enum Reserved {
    /// A free plan: subscribed at once.
    Free(Box<Settled>),
    /// A paid plan: the pending checkout to pay.
    Pending(Box<Checkout>),
}

/// Step 1: the account's checks and the pending checkout with its snapshot, in the key's
/// transaction (the account row is locked only there).
async fn reserve(
    state: &AppState,
    tx: &mut PgConnection,
    account: AccountId,
    input: &CheckoutRequest,
    id: CheckoutId,
    now: DateTime<Utc>,
) -> Result<Reserved> {
    let catalog = catalog::load(tx).await.map_err(Error::internal)?;
    let plan = catalog.plan(&input.plan).cloned().ok_or_else(|| {
        Error::unprocessable("unknown_plan", format!("there is no plan `{}`", input.plan))
    })?;
    let acct = accounts::store::get_account(tx, account, true)
        .await?
        .ok_or_else(|| Error::not_found("account"))?;
    if acct.standing == AccountStanding::Banned {
        return Err(Error::forbidden(
            "account_banned",
            "this account cannot buy plans",
        ));
    }
    accounts::require_usable_method(&acct)?;
    if subscriptions::live(tx, account).await?.is_some() {
        return Err(subscriptions::subscription_exists());
    }
    if let Some(open) = store::open_of(tx, account).await? {
        return Err(in_progress(open));
    }
    if input.trial {
        if plan.trial_days == 0 {
            return Err(Error::unprocessable(
                "no_trial",
                format!("plan `{}` has no trial", plan.key),
            ));
        }
        if subscriptions::had_any(tx, account).await? {
            return Err(Error::conflict(
                "trial_used",
                "trials are for an account's first subscription",
            ));
        }
    }
    let trial_days = if input.trial { plan.trial_days } else { 0 };
    let terms = crate::billing::Terms {
        trial_days,
        addons: subscriptions::addons::select(
            &catalog,
            &plan.currency,
            plan.interval,
            &[],
            &input.addons,
        )?,
        ..crate::billing::Terms::of_plan(&plan)
    };
    let amount_minor = terms
        .addons_minor()
        .and_then(|a| crate::money::add(plan.price_minor, a))
        .map_err(|_| Error::unprocessable("amount_too_large", "the purchase overflows"))?;
    let stable = rollout::stable_version(tx).await?;
    let pm = if amount_minor == 0 {
        None
    } else {
        let pm_id = input
            .payment_method
            .or(acct.default_payment_method_id)
            .ok_or_else(|| {
                Error::unprocessable(
                    "payment_method_required",
                    "this plan needs a payment method",
                )
            })?;
        let pm = payment_methods::get(tx, account, pm_id)
            .await?
            .ok_or_else(|| Error::not_found("payment method"))?;
        if pm.status != PaymentMethodStatus::Ready {
            return Err(Error::conflict(
                "payment_method_not_ready",
                "finish setting up this payment method first",
            ));
        }
        Some(pm.id)
    };
    let c = store::insert_pending(
        tx,
        &store::NewCheckout {
            id,
            account,
            plan: &plan,
            payment_method: pm,
            bundle_version: stable,
            provider_key: idempotency::provider_key("checkout", id.0),
            expires_at: now + TimeDelta::seconds(state.checkout_expiry_secs),
            now,
            amount_minor,
            terms,
        },
    )
    .await
    .map_err(
        |e| match e.as_database_error().and_then(|d| d.constraint()) {
            Some("checkouts_one_open_per_account") => in_progress(id),
            _ => Error::from(e),
        },
    )?;
    if amount_minor == 0 || trial_days > 0 {
        // Nothing to pay now: subscribed in the key's transaction.
        return Ok(Reserved::Free(Box::new(
            settle::complete_paid(state, tx, &c, None, now).await?,
        )));
    }
    Ok(Reserved::Pending(Box::new(c)))
}

/// Steps 2 and 3 for a pending checkout of this request.
async fn pay(state: &AppState, attempt: &Attempt, c: &Checkout) -> Result<Purchase> {
    let outcome = match charge(state, c).await {
        Ok(o) => o,
        Err(GatewayError::Unavailable(e)) => {
            // Unknown whether the provider charged: the checkout stays pending; the client's
            // retry (same key) or the reconciler settles it.
            return Err(Error::unavailable("payment_provider_unavailable", e)
                .with("checkout_id", c.id.to_string()));
        }
        Err(e) => {
            // The provider refused the request itself: nothing was charged.
            let err = Error::from(e);
            let mut tx = state.cf.begin().await?;
            if let Some(done) = attempt.overtaken(&mut tx).await? {
                return done;
            }
            if store::get(&mut tx, c.id, true)
                .await?
                .is_some_and(|c| c.status == CheckoutStatus::Pending)
            {
                store::update(
                    &mut tx,
                    c.id,
                    store::Update {
                        decline: Some(&err.code),
                        ..store::Update::status(CheckoutStatus::Failed)
                    },
                    state.clock.now(),
                )
                .await?;
            }
            let answer = Err(err.with("checkout_id", c.id.to_string()));
            attempt.complete(&mut tx, &answer).await?;
            tx.commit().await?;
            return answer;
        }
    };
    let mut tx = state.cf.begin().await?;
    if let Some(done) = attempt.overtaken(&mut tx).await? {
        return done;
    }
    let settled = settle::settle(state, &mut tx, c.id, &outcome, state.clock.now()).await?;
    if let Settled::RequiresAction(..) = settled {
        state.metrics.checkout(CheckoutOutcome::RequiresAction);
    }
    let refund = settled.refunding();
    let answer = purchase(settled);
    attempt.complete(&mut tx, &answer).await?;
    tx.commit().await?;
    after_settle(state, refund).await;
    answer
}

/// A request whose earlier attempt stopped before its answer was stored: the checkout it
/// reserved is paid for again (the provider key makes that the same payment) or described as
/// the reconciler left it.
async fn resume(state: &AppState, attempt: &Attempt) -> Result<Purchase> {
    let id = CheckoutId(attempt.resource());
    let c = {
        let mut conn = state.cf.acquire().await?;
        store::get(&mut conn, id, false).await?
    };
    let Some(c) = c else {
        return Err(Error::internal(
            "an in-progress checkout key without its checkout",
        ));
    };
    if c.status == CheckoutStatus::Pending {
        return pay(state, attempt, &c).await;
    }
    let mut tx = state.cf.begin().await?;
    let answer = purchase(describe(&mut tx, c).await?);
    attempt.complete(&mut tx, &answer).await?;
    tx.commit().await?;
    answer
}

/// One of the account's checkouts (`not_found` for another account's id).
pub async fn get(state: &AppState, account: AccountId, id: CheckoutId) -> Result<Checkout> {
    let mut conn = state.cf.acquire().await?;
    store::get_of(&mut conn, account, id)
        .await?
        .ok_or_else(|| Error::not_found("checkout"))
}

/// The on-session payment that bought subscription `sub` (what its first invoice was paid
/// with), if a paid checkout started it: a refund of that invoice goes to this payment.
pub async fn first_payment(
    state: &AppState,
    sub: SubscriptionId,
) -> Result<Option<crate::billing::FirstPayment>> {
    let mut conn = state.cf.acquire().await?;
    let Some(c) = store::of_subscription(&mut conn, sub).await? else {
        return Ok(None);
    };
    let Some(pi) = c.payment_intent_id.clone().filter(|_| c.amount_minor > 0) else {
        return Ok(None);
    };
    let processor = settle::gateway_name_of(state, &mut conn, &c).await?;
    Ok(Some(crate::billing::FirstPayment {
        checkout_id: c.id,
        provider_payment_id: pi,
        processor,
        amount_minor: c.amount_minor,
    }))
}

/// After the customer completed 3-D Secure. The payment is read with no transaction open, then
/// settled; a succeeded payment completes the purchase even past the checkout's expiry.
pub async fn confirm(
    state: &AppState,
    account: AccountId,
    id: CheckoutId,
) -> Result<(Checkout, Subscription)> {
    let c = get(state, account, id).await?;
    match c.status {
        CheckoutStatus::Pending => {
            return Err(payment_processing(
                "the payment is being created; retry in a moment",
            ));
        }
        CheckoutStatus::RequiresAction => {}
        _ => {
            let mut conn = state.cf.acquire().await?;
            return settled_answer(describe(&mut conn, c).await?);
        }
    }
    let Some(pi) = c.payment_intent_id.clone() else {
        return Err(Error::internal("waiting checkout without a payment"));
    };
    let gateway = settle::gateway_of(state, &c).await?;
    let mut outcome = gateway.retrieve_payment(&pi).await?;
    let now = state.clock.now();
    if now >= c.expires_at && outcome.status != PaymentStatus::Succeeded {
        // Past its expiry and not paid: cancel at the provider (which says if it got paid
        // after all), then settle.
        outcome = gateway.cancel_payment(&pi).await?;
    }
    let mut tx = state.cf.begin().await?;
    let settled = settle::settle(state, &mut tx, id, &outcome, now).await?;
    tx.commit().await?;
    after_settle(state, settled.refunding()).await;
    settled_answer(settled)
}

/// The customer abandons a waiting checkout: its payment is canceled at the provider first. If
/// the provider says it was paid meanwhile, the purchase completes instead
/// ([`Canceled::AlreadyPaid`]).
pub async fn cancel(state: &AppState, account: AccountId, id: CheckoutId) -> Result<Canceled> {
    let c = get(state, account, id).await?;
    match c.status {
        CheckoutStatus::Canceled => return Ok(Canceled::Canceled(c)),
        CheckoutStatus::Pending => {
            return Err(payment_processing(
                "the payment is being created; retry in a moment",
            ));
        }
        CheckoutStatus::RequiresAction => {}
        other => {
            return Err(Error::conflict(
                "checkout_not_cancelable",
                format!(
                    "this checkout is {} and can no longer be canceled",
                    other.as_str()
                ),
            ));
        }
    }
    let Some(pi) = c.payment_intent_id.clone() else {
        return Err(Error::internal("waiting checkout without a payment"));
    };
    let outcome = settle::gateway_of(state, &c)
        .await?
        .cancel_payment(&pi)
        .await?;
    let now = state.clock.now();
    let mut tx = state.cf.begin().await?;
    let settled = if outcome.status == PaymentStatus::Canceled {
        let c = store::get(&mut tx, id, true)
            .await?
            .ok_or_else(|| Error::not_found("checkout"))?;
        if c.status == CheckoutStatus::RequiresAction {
            Settled::Canceled(
                store::update(
                    &mut tx,
                    id,
                    store::Update::status(CheckoutStatus::Canceled),
                    now,
                )
                .await?,
            )
        } else {
            describe(&mut tx, c).await?
        }
    } else {
        settle::settle(state, &mut tx, id, &outcome, now).await?
    };
    tx.commit().await?;
    after_settle(state, settled.refunding()).await;
    match settled {
        Settled::Canceled(c) => {
            tracing::info!(checkout_id = %id, "checkout canceled by the customer");
            Ok(Canceled::Canceled(c))
        }
        Settled::Subscribed(c, sub) => Ok(Canceled::AlreadyPaid(c, sub)),
        other => settled_answer(other).map(|(c, sub)| Canceled::AlreadyPaid(c, Box::new(sub))),
    }
}
