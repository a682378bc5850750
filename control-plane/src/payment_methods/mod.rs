//! Payment methods: client-side PaymentMethod ids (as Stripe.js produces) attached to the
//! account's provider customer through a SetupIntent, with 3-D Secure when the card asks.
//! Raw card numbers are never accepted, echoed or sent on.
//!
//! Adding one runs under its `Idempotency-Key` ([`crate::idempotency::run`]): the provider's
//! SetupIntent with no transaction open, then the method's row with the stored outcome.
//! Confirming after the customer authenticated reads the SetupIntent, then applies it under
//! the row's lock. Set-ups abandoned at 3-D Secure are canceled at the provider by the
//! maintenance worker ([`reconcile_abandoned`]).
//!
//! States: `pending` | `requires_action` → `ready` | `failed` | `canceled`.

pub mod store;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::accounts;
use crate::error::{Error, Result};
use crate::gateways::{MethodKind, SetupOutcome, SetupStatus};
use crate::idempotency::{self, Ran};
use crate::ids::{AccountId, PaymentMethodId};
use crate::state::AppState;

/// Longest provider payment-method id.
pub const PM_ID_BYTES_MAX: usize = 255;
/// The decline code gateways report for a canceled SetupIntent.
pub const CANCELED_CODE: &str = "setup_intent_canceled";
/// Digits in a row (spaces and dashes between them allowed) from which a value is taken for a
/// card number: the shortest card numbers have 12.
pub const CARD_DIGITS_MIN: usize = 12;

/// Where a payment method's set-up stands.
#[derive(
    utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum PaymentMethodStatus {
    /// The provider is working on it.
    Pending,
    /// The customer must authenticate (3-D Secure).
    RequiresAction,
    /// Usable for payments.
    Ready,
    /// The provider refused it.
    Failed,
    /// Abandoned and canceled at the provider.
    Canceled,
    /// Removed by the customer: kept for the records, never charged again.
    Removed,
}

impl PaymentMethodStatus {
    /// Still waiting for the provider or the customer.
    pub fn waiting(self) -> bool {
        matches!(self, Self::Pending | Self::RequiresAction)
    }

    /// Over, and never usable.
    pub fn dead(self) -> bool {
        matches!(self, Self::Failed | Self::Canceled | Self::Removed)
    }
}

/// A payment method of an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct PaymentMethod {
    pub id: PaymentMethodId,
    pub status: PaymentMethodStatus,
    /// A card or a PayPal billing agreement (outcomes stored before PayPal are cards).
    #[serde(default)]
    pub kind: MethodKind,
    pub brand: Option<String>,
    pub last4: Option<String>,
    pub exp_month: Option<i32>,
    pub exp_year: Option<i32>,
    /// The PayPal account's email.
    #[serde(default)]
    pub payer_email: Option<String>,
    /// The gateway holding it ([`crate::gateways::PaymentGateway::name`]).
    #[serde(default)]
    pub gateway: String,
    /// The provider customer it is attached to.
    #[serde(default)]
    pub gateway_customer_id: String,
    /// The provider's id (`pm_…`).
    pub gateway_pm_id: String,
    pub setup_intent_id: String,
    /// For the browser while the customer must authenticate.
    pub client_secret: Option<String>,
    /// Asked to become the default once ready.
    pub make_default: bool,
    pub created_at: DateTime<Utc>,
}

/// `POST /v1/payment-methods` as the customer sends it.
#[derive(utoipa::ToSchema, Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddPaymentMethod {
    /// The provider's payment method (`pm_…`), never a card number.
    #[schema(example = "pm_card_visa")]
    pub payment_method: String,
    #[serde(default)]
    pub make_default: bool,
}

/// `POST /v1/payment-methods/paypal` as the customer sends it: the nonce Braintree's client
/// SDK produced when the customer approved a billing agreement at PayPal.
#[derive(utoipa::ToSchema, Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddPaypal {
    pub nonce: String,
    #[serde(default)]
    pub make_default: bool,
}

/// Longest nonce taken.
pub const NONCE_BYTES_MAX: usize = 255;

/// Refuses what cannot be a Braintree nonce, and never echoes it. A value that is a card
/// number once spaces and dashes are gone is refused as one.
pub fn validate_nonce(nonce: &str) -> Result<()> {
    let digits: Vec<u8> = nonce.bytes().filter(|b| *b != b' ' && *b != b'-').collect();
    if (CARD_DIGITS_MIN..=19).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit) {
        return Err(Error::unprocessable(
            "raw_card_number_refused",
            "card numbers are never accepted; send the nonce of a PayPal approval",
        ));
    }
    let ok = !nonce.is_empty()
        && nonce.len() <= NONCE_BYTES_MAX
        && nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::unprocessable(
            "invalid_nonce",
            "nonce must be the payment-method nonce of a PayPal approval (letters, digits, _ and -)",
        ))
    }
}

/// What adding a payment method answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Added {
    Ready(PaymentMethod),
    /// The customer must authenticate with `client_secret`, then confirm.
    RequiresAction {
        payment_method: PaymentMethod,
        client_secret: String,
    },
    /// The provider is still processing.
    Processing(PaymentMethod),
}

/// An account's payment methods (failed and canceled ones left out) and its default.
#[derive(Debug, Clone)]
pub struct Wallet {
    pub methods: Vec<PaymentMethod>,
    pub default_payment_method_id: Option<PaymentMethodId>,
}

/// Whether `s` holds something that may be a card number: [`CARD_DIGITS_MIN`] or more digits
/// in a row, spaces or dashes between them allowed (`4242 4242 …`, `pm_4242424242424242`).
pub fn looks_like_card_number(s: &str) -> bool {
    let mut run = 0usize;
    for c in s.chars() {
        if c.is_ascii_digit() {
            run += 1;
            if run >= CARD_DIGITS_MIN {
                return true;
            }
        } else if !(run > 0 && (c == ' ' || c == '-')) {
            run = 0;
        }
    }
    false
}

/// Refuses anything that is not a provider payment-method id. What may be a card number gets
/// its own code and is never echoed back, logged, or sent to the provider.
pub fn validate_pm_id(pm: &str) -> Result<()> {
    if looks_like_card_number(pm) {
        return Err(Error::unprocessable(
            "raw_card_number_refused",
            "card numbers are never accepted; tokenize the card client-side and send its pm_… id",
        ));
    }
    let ok = pm.starts_with("pm_")
        && pm.len() <= PM_ID_BYTES_MAX
        && pm.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::unprocessable(
            "invalid_payment_method",
            "payment_method must be a pm_… id",
        ))
    }
}

fn failed_to_set_up() -> Error {
    Error::conflict(
        "payment_method_failed",
        "this payment method failed to set up; add it again",
    )
}

/// Attaches a payment method (see the module doc).
pub async fn add(
    state: &AppState,
    account: AccountId,
    key: idempotency::Key,
    input: &AddPaymentMethod,
) -> Result<Ran<Added>> {
    validate_pm_id(&input.payment_method)?;
    let customer = accounts::get(state, account).await?.gateway_customer_id;
    let request =
        idempotency::Request::new(account.to_string(), key, "POST /v1/payment-methods", input)?;
    let now = state.clock.now();
    idempotency::run(
        &state.cf,
        &request,
        now,
        async |_, _| Ok(()),
        async |attempt, _| attach(state, attempt, account, &customer, input, now).await,
    )
    .await
}

/// The SetupIntent (no transaction), then the row and the stored outcome (one transaction).
async fn attach(
    state: &AppState,
    attempt: &idempotency::Attempt,
    account: AccountId,
    customer: &str,
    input: &AddPaymentMethod,
    now: DateTime<Utc>,
) -> Result<Added> {
    let outcome = state
        .gateway
        .setup_payment_method(
            customer,
            &input.payment_method,
            &idempotency::provider_key("pm", attempt.resource()),
        )
        .await?;
    let new = store::NewMethod {
        id: PaymentMethodId(attempt.resource()),
        account,
        gateway: state.gateway.name(),
        customer,
        outcome: &outcome,
        make_default: input.make_default,
        now,
    };
    record(state, attempt, &new).await
}

/// Adds a PayPal billing agreement: the account's customer at the PayPal gateway (made on
/// first use), the nonce vaulted to it (no transaction open), then the method's row and the
/// stored outcome (one transaction). A vault is complete in its request: the method is ready
/// or refused, never waiting.
pub async fn add_paypal(
    state: &AppState,
    account: AccountId,
    key: idempotency::Key,
    input: &AddPaypal,
) -> Result<Ran<Added>> {
    validate_nonce(&input.nonce)?;
    let Some(paypal) = state.paypal.clone() else {
        return Err(Error::new(
            crate::error::Kind::Unavailable,
            "paypal_unavailable",
            "PayPal is not offered here (no Braintree merchant is configured)",
        ));
    };
    let request = idempotency::Request::new(
        account.to_string(),
        key,
        "POST /v1/payment-methods/paypal",
        input,
    )?;
    let now = state.clock.now();
    idempotency::run(
        &state.cf,
        &request,
        now,
        async |_, _| Ok(()),
        async |attempt, _| {
            let customer = paypal_customer(state, paypal.as_ref(), account).await?;
            let outcome = paypal
                .setup_payment_method(
                    &customer,
                    &input.nonce,
                    &idempotency::provider_key("pm", attempt.resource()),
                )
                .await?;
            // A refused vault is answered as the decline it is, whatever it vaulted.
            if outcome.kind != MethodKind::Paypal
                && !matches!(outcome.status, SetupStatus::Failed(_))
            {
                return Err(Error::unprocessable(
                    "not_a_paypal_nonce",
                    "this nonce is not a PayPal billing agreement",
                ));
            }
            let new = store::NewMethod {
                id: PaymentMethodId(attempt.resource()),
                account,
                gateway: paypal.name(),
                customer: &customer,
                outcome: &outcome,
                make_default: input.make_default,
                now,
            };
            record(state, attempt, &new).await
        },
    )
    .await
}

/// The account's customer at the PayPal gateway, made on first use (its key derives from the
/// account, so a retry finds the same one where the provider keeps keys).
async fn paypal_customer(
    state: &AppState,
    paypal: &dyn crate::gateways::PaymentGateway,
    account: AccountId,
) -> Result<String> {
    let acct = {
        let mut conn = state.cf.acquire().await?;
        if let Some(c) = accounts::store::paypal_customer_id(&mut conn, account).await? {
            return Ok(c);
        }
        accounts::store::get_account(&mut conn, account, false)
            .await?
            .ok_or_else(|| Error::not_found("account"))?
    };
    let made = paypal
        .create_customer(
            &acct.email,
            &acct.name,
            &idempotency::provider_key("paypal-customer", account.0),
        )
        .await?;
    let mut conn = state.cf.acquire().await?;
    Ok(accounts::store::keep_paypal_customer_id(&mut conn, account, &made.id).await?)
}

/// What the provider said about a new method, as its row and the request's stored outcome
/// (one transaction; a request that was overtaken answers what the other stored).
async fn record(
    state: &AppState,
    attempt: &idempotency::Attempt,
    new: &store::NewMethod<'_>,
) -> Result<Added> {
    let (account, outcome, now) = (new.account, new.outcome, new.now);
    let mut tx = state.cf.begin().await?;
    if let Some(done) = attempt.overtaken(&mut tx).await? {
        return done;
    }
    let added = match &outcome.status {
        SetupStatus::Succeeded => {
            let pm = store::insert(&mut tx, new, PaymentMethodStatus::Ready, None).await?;
            became_ready(&mut tx, account, pm.id, new.make_default, now).await?;
            Ok(Added::Ready(pm))
        }
        SetupStatus::RequiresAction { client_secret } => {
            let pm = store::insert(
                &mut tx,
                new,
                PaymentMethodStatus::RequiresAction,
                Some(client_secret),
            )
            .await?;
            Ok(Added::RequiresAction {
                payment_method: pm,
                client_secret: client_secret.clone(),
            })
        }
        SetupStatus::Pending => {
            let pm = store::insert(&mut tx, new, PaymentMethodStatus::Pending, None).await?;
            Ok(Added::Processing(pm))
        }
        SetupStatus::Failed(d) => Err(Error::declined(d)),
    };
    attempt.complete(&mut tx, &added).await?;
    tx.commit().await?;
    added
}

/// A method became ready: the default if wanted (or the first), and dunning learns that a
/// method is there to retry with (in the same transaction).
async fn became_ready(
    conn: &mut PgConnection,
    account: AccountId,
    pm: PaymentMethodId,
    make_default: bool,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    set_default_if_wanted(conn, account, pm, make_default).await?;
    accounts::store::clear_payment_method_required(conn, account).await?;
    crate::outbox::enqueue(
        conn,
        crate::outbox::Topic::DunningPaymentMethodAdded,
        &crate::dunning::PaymentMethodAdded {
            account_id: account,
        },
        now,
    )
    .await?;
    Ok(())
}

/// The first ready method becomes the default; later ones only when asked.
async fn set_default_if_wanted(
    conn: &mut PgConnection,
    account: AccountId,
    pm: PaymentMethodId,
    wanted: bool,
) -> sqlx::Result<()> {
    let Some(acct) = accounts::store::get_account(conn, account, false).await? else {
        return Ok(());
    };
    if wanted || acct.default_payment_method_id.is_none() {
        accounts::store::set_default_payment_method(conn, account, pm).await?;
    }
    Ok(())
}

/// What the provider's SetupIntent says, applied to a waiting payment method under its row
/// lock (another confirm, or the reconciler, may have applied it first: then nothing
/// changes). Returns the method after.
async fn apply_setup(
    conn: &mut PgConnection,
    account: AccountId,
    id: PaymentMethodId,
    outcome: &SetupOutcome,
    now: DateTime<Utc>,
) -> Result<PaymentMethod> {
    let pm = store::get(conn, account, id, true)
        .await?
        .ok_or_else(|| Error::not_found("payment method"))?;
    if !pm.status.waiting() {
        return Ok(pm);
    }
    match &outcome.status {
        SetupStatus::Succeeded => {
            store::set_status(conn, pm.id, PaymentMethodStatus::Ready, now).await?;
            became_ready(conn, account, pm.id, pm.make_default, now).await?;
        }
        SetupStatus::Failed(d) => {
            // Canceled (abandoned, reconciled) or refused by the provider.
            let status = if d.code == CANCELED_CODE {
                PaymentMethodStatus::Canceled
            } else {
                PaymentMethodStatus::Failed
            };
            store::set_status(conn, pm.id, status, now).await?;
        }
        SetupStatus::RequiresAction { .. } | SetupStatus::Pending => {}
    }
    store::get(conn, account, id, false)
        .await?
        .ok_or_else(|| Error::not_found("payment method"))
}

/// After the customer authenticated: the provider is asked with no transaction open; the
/// answer is applied under the row's lock. A ready method is answered as it is.
pub async fn confirm(
    state: &AppState,
    account: AccountId,
    id: PaymentMethodId,
) -> Result<PaymentMethod> {
    let pm = {
        let mut conn = state.cf.acquire().await?;
        store::get(&mut conn, account, id, false)
            .await?
            .ok_or_else(|| Error::not_found("payment method"))?
    };
    match pm.status {
        PaymentMethodStatus::Ready => return Ok(pm),
        s if s.dead() => return Err(failed_to_set_up()),
        _ => {}
    }
    let outcome = state
        .gateway_named(&pm.gateway)?
        .retrieve_setup(&pm.setup_intent_id)
        .await?;
    let mut tx = state.cf.begin().await?;
    let pm = apply_setup(&mut tx, account, id, &outcome, state.clock.now()).await?;
    tx.commit().await?;
    match (pm.status, outcome.status) {
        (PaymentMethodStatus::Ready, _) => Ok(pm),
        (s, SetupStatus::Failed(d)) if s.dead() => Err(Error::declined(&d)),
        (s, _) if s.dead() => Err(failed_to_set_up()),
        (_, SetupStatus::RequiresAction { client_secret }) => Err(Error::conflict(
            "authentication_required",
            "the customer has not completed authentication yet",
        )
        .with("client_secret", client_secret)),
        _ => Err(Error::conflict(
            "setup_processing",
            "the provider is still processing",
        )),
    }
}

/// A provider webhook named set-up `setup_intent_id` (e.g. `setup_intent.succeeded` after the
/// customer authenticated and closed the tab): the waiting method it sets up is settled from
/// the set-up's current state, read from the provider. Returns whether one was found.
pub async fn settle_setup(state: &AppState, setup_intent_id: &str) -> Result<bool> {
    let found = {
        let mut conn = state.cf.acquire().await?;
        store::waiting_by_setup(&mut conn, setup_intent_id).await?
    };
    let Some((id, account, gateway)) = found else {
        return Ok(false);
    };
    let outcome = state
        .gateway_named(&gateway)?
        .retrieve_setup(setup_intent_id)
        .await?;
    let mut tx = state.cf.begin().await?;
    let pm = apply_setup(&mut tx, account, id, &outcome, state.clock.now()).await?;
    tx.commit().await?;
    state.outbox_wake.notify_waiters();
    tracing::info!(payment_method_id = %id, status = ?pm.status, "set-up settled from a provider webhook");
    Ok(true)
}

/// Makes ready method `id` the account's default (409 `payment_method_not_ready` otherwise).
pub async fn make_default(
    state: &AppState,
    account: AccountId,
    id: PaymentMethodId,
) -> Result<Wallet> {
    let mut tx = state.cf.begin().await?;
    accounts::store::get_account(&mut tx, account, true)
        .await?
        .ok_or_else(|| Error::not_found("account"))?;
    let pm = store::get(&mut tx, account, id, false)
        .await?
        .filter(|pm| pm.status != PaymentMethodStatus::Removed)
        .ok_or_else(|| Error::not_found("payment method"))?;
    if pm.status != PaymentMethodStatus::Ready {
        tx.rollback().await?;
        return Err(Error::conflict(
            "payment_method_not_ready",
            "only a ready payment method can be the default",
        ));
    }
    accounts::store::set_default_payment_method(&mut tx, account, id).await?;
    tx.commit().await?;
    list(state, account).await
}

/// Removes method `id`: never the last usable one while a paid subscription renews with it
/// (409 `payment_method_in_use`: add another first). A removed default is replaced by the
/// newest other ready method. Nothing is charged to it again.
pub async fn remove(state: &AppState, account: AccountId, id: PaymentMethodId) -> Result<Wallet> {
    let mut tx = state.cf.begin().await?;
    let acct = accounts::store::get_account(&mut tx, account, true)
        .await?
        .ok_or_else(|| Error::not_found("account"))?;
    let pm = store::get(&mut tx, account, id, true)
        .await?
        .filter(|pm| pm.status != PaymentMethodStatus::Removed)
        .ok_or_else(|| Error::not_found("payment method"))?;
    let others: Vec<PaymentMethod> = store::list(&mut tx, account)
        .await?
        .into_iter()
        .filter(|m| m.id != id && m.status == PaymentMethodStatus::Ready)
        .collect();
    let paid_live = crate::subscriptions::live(&mut tx, account)
        .await?
        .is_some_and(|s| s.amount_minor > 0);
    if pm.status == PaymentMethodStatus::Ready && others.is_empty() && paid_live {
        tx.rollback().await?;
        return Err(Error::conflict(
            "payment_method_in_use",
            "a paid subscription renews with this method: add another one first",
        ));
    }
    store::set_status(&mut tx, id, PaymentMethodStatus::Removed, state.clock.now()).await?;
    if acct.default_payment_method_id == Some(id) {
        match others.last() {
            Some(next) => {
                accounts::store::set_default_payment_method(&mut tx, account, next.id).await?
            }
            None => accounts::store::clear_default_payment_method(&mut tx, account).await?,
        }
    }
    tx.commit().await?;
    list(state, account).await
}

/// The account's payment methods and its default.
pub async fn list(state: &AppState, account: AccountId) -> Result<Wallet> {
    let mut conn = state.cf.acquire().await?;
    let acct = accounts::store::get_account(&mut conn, account, false)
        .await?
        .ok_or_else(|| Error::not_found("account"))?;
    Ok(Wallet {
        methods: store::list(&mut conn, account).await?,
        default_payment_method_id: acct.default_payment_method_id,
    })
}

/// One payment method of the account, in the caller's transaction (`None` for another
/// account's id).
pub async fn get(
    conn: &mut PgConnection,
    account: AccountId,
    id: PaymentMethodId,
) -> sqlx::Result<Option<PaymentMethod>> {
    store::get(conn, account, id, false).await
}

/// Set-ups abandoned at 3-D Secure for longer than `after` (the maintenance worker): the
/// provider's SetupIntent is canceled when still waiting; what the provider says is applied. A
/// provider that cannot be reached leaves the method as it is, for the next pass. Returns how
/// many changed.
pub async fn reconcile_abandoned(
    state: &AppState,
    after: chrono::TimeDelta,
) -> anyhow::Result<usize> {
    let now = state.clock.now();
    let waiting = {
        let mut conn = state.cf.acquire().await?;
        store::waiting_since(&mut conn, now - after).await?
    };
    let mut changed = 0;
    for (id, account, setup) in waiting {
        let outcome = match state.gateway.cancel_setup(&setup).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(payment_method_id = %id, error = %e, "abandoned set-up not reconciled; next pass");
                continue;
            }
        };
        let mut tx = state.cf.begin().await?;
        let before = store::get(&mut tx, account, id, true)
            .await?
            .map(|p| p.status);
        let pm = apply_setup(&mut tx, account, id, &outcome, now)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if before != Some(pm.status) {
            changed += 1;
        }
        tx.commit().await?;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pm_ids_are_accepted() {
        assert!(validate_pm_id("pm_card_visa").is_ok());
        assert_eq!(
            validate_pm_id("4242 4242 4242 4242").expect_err("pan").code,
            "raw_card_number_refused"
        );
        assert_eq!(
            validate_pm_id("4242424242424242").expect_err("pan").code,
            "raw_card_number_refused"
        );
        for card_like in [
            "pm_4242424242424242",
            "pm_4242-4242-4242-4242",
            "pm_card_4000002500003155",
            "4000 0025 0000 3155",
        ] {
            let e = validate_pm_id(card_like).expect_err("card-like");
            assert_eq!(e.code, "raw_card_number_refused", "{card_like}");
            assert!(
                !e.detail.contains("4242") && !e.detail.contains("3155"),
                "echoed: {}",
                e.detail
            );
        }
        assert!(
            validate_pm_id("pm_1N3bXY2eZvKYlo2C0123").is_ok(),
            "a real Stripe id"
        );
        assert_eq!(
            validate_pm_id("card_123").expect_err("other").code,
            "invalid_payment_method"
        );
        assert_eq!(
            validate_pm_id("pm_x;drop").expect_err("chars").code,
            "invalid_payment_method"
        );
    }
}

/// Where a charge goes: the gateway holding the method, its customer there, the method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeTarget {
    /// [`crate::gateways::PaymentGateway::name`] of the gateway holding the method.
    pub gateway: String,
    pub customer: String,
    /// The provider's id of the method (`pm_…`, Braintree's id).
    pub payment_method: String,
}

impl ChargeTarget {
    fn of(pm: PaymentMethod) -> Self {
        Self {
            gateway: pm.gateway,
            customer: pm.gateway_customer_id,
            payment_method: pm.gateway_pm_id,
        }
    }
}

/// The account's default method as a [`ChargeTarget`]; `None` without a ready default method
/// (or account).
pub async fn charge_target(
    conn: &mut PgConnection,
    account: AccountId,
) -> sqlx::Result<Option<ChargeTarget>> {
    let Some(acct) = crate::accounts::store::get_account(conn, account, false).await? else {
        return Ok(None);
    };
    let Some(default) = acct.default_payment_method_id else {
        return Ok(None);
    };
    target_of(conn, account, default).await
}

/// One ready method of the account as a [`ChargeTarget`].
pub async fn target_of(
    conn: &mut PgConnection,
    account: AccountId,
    id: PaymentMethodId,
) -> sqlx::Result<Option<ChargeTarget>> {
    Ok(store::get(conn, account, id, false)
        .await?
        .filter(|pm| pm.status == PaymentMethodStatus::Ready)
        .map(ChargeTarget::of))
}

/// The account's method that `gateway` knows as `provider_id` (a charge attempt names its
/// method so), whatever its status now: a charge driven again goes where it went first.
pub async fn target_by_provider_id(
    conn: &mut PgConnection,
    account: AccountId,
    gateway: &str,
    provider_id: &str,
) -> sqlx::Result<Option<ChargeTarget>> {
    Ok(store::by_provider_id(conn, account, gateway, provider_id)
        .await?
        .map(ChargeTarget::of))
}
