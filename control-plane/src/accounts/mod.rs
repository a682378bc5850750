//! Accounts and their API tokens: sign-up (the provider Customer every other process refers to,
//! and a token scoped to that one account), reading an account, and which account a token
//! belongs to.
//!
//! Sign-up runs under its `Idempotency-Key` ([`crate::idempotency::run`]): validation first
//! (nothing reaches the provider that a later step could refuse), the provider customer with a
//! key derived from the account id the key reserved, then the account, its token and the
//! entitlements recompute in one transaction. A replay returns the token again only within
//! [`TOKEN_REPLAY_SECS`] of the sign-up.

pub mod profile;
pub mod store;
pub mod support;
pub mod tokens;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tollgate_protocol::AccountStanding;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::idempotency::{self, Ran};
use crate::ids::{AccountId, PaymentMethodId, TokenId};
use crate::outbox;
use crate::state::AppState;
use tokens::{derive_token, token_hash};

/// An account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Account {
    #[sqlx(try_from = "Uuid")]
    pub id: AccountId,
    pub email: String,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub standing: AccountStanding,
    /// The provider's customer id (`cus_…`).
    pub gateway_customer_id: String,
    pub default_payment_method_id: Option<PaymentMethodId>,
    pub created_at: DateTime<Utc>,
    /// Billing's dunning of it (0: none), as last applied.
    #[serde(default)]
    pub dunning_level: i32,
    #[serde(default)]
    pub past_due_since: Option<DateTime<Utc>>,
    /// A renewal failed for good with its method: purchases and plan changes wait for a new
    /// one.
    #[serde(default)]
    pub payment_method_required: bool,
    /// Written off and not recovered.
    #[serde(default)]
    pub bad_debt_minor: i64,
    /// Where invoices are addressed.
    #[serde(default)]
    pub billing_address: Option<sqlx::types::Json<profile::BillingAddress>>,
    /// The customer's tax id, printed on invoices.
    #[serde(default)]
    pub tax_id: Option<String>,
}

/// `402 payment_method_required` when dunning needs a new payment method from the account
/// before it buys or changes anything.
pub fn require_usable_method(account: &Account) -> Result<()> {
    if account.payment_method_required {
        return Err(Error::new(
            crate::error::Kind::PaymentRequired,
            "payment_method_required",
            "a renewal could not be charged to the payment method on file: add a new one first",
        ));
    }
    Ok(())
}

/// The consumer of billing's `billing.dunning_changed`: a newer snapshot is applied (a ban for
/// bad debt above the policy's threshold, lifted once it is paid), and the facts recomputed.
pub async fn on_dunning_changed(state: &AppState, d: &outbox::Delivery) -> anyhow::Result<()> {
    let ev: crate::dunning::DunningChanged = d.payload()?;
    let mut tx = state.cf.begin().await?;
    let applied = store::apply_dunning(
        &mut tx,
        ev.account_id,
        ev.version,
        ev.state.level,
        ev.state.past_due_since,
        ev.state.payment_method_required,
        ev.state.bad_debt_minor,
        state.dunning.bans(ev.state.bad_debt_minor),
    )
    .await?;
    let Some((before, after)) = applied else {
        tx.rollback().await?;
        return Ok(());
    };
    use crate::events::{self, EventType};
    let account = Some(ev.account_id);
    let event = crate::dunning::DunningChanged {
        changed_at_us: None,
        ..ev.clone()
    };
    events::record(&mut tx, EventType::DunningChanged, account, &event, d.now).await?;
    let why = serde_json::json!({ "account_id": ev.account_id, "reason": "bad_debt",
                                  "bad_debt_minor": ev.state.bad_debt_minor });
    match (before.as_str(), after.as_str()) {
        ("active", "banned") => {
            events::record(&mut tx, EventType::AccountBanned, account, &why, d.now).await?;
        }
        ("banned", "active") => {
            events::record(&mut tx, EventType::AccountUnbanned, account, &why, d.now).await?;
        }
        _ => {}
    }
    if let Some(step) = &ev.step {
        crate::mail::queue(&mut tx, state, ev.account_id, step, d.now).await?;
    }
    let changed_at_us = ev.changed_at_us.unwrap_or_else(crate::clock::wall_us);
    outbox::account_changed_at(&mut tx, ev.account_id, d.now, changed_at_us).await?;
    tx.commit().await?;
    state.outbox_wake.notify_waiters();
    tracing::info!(account_id = %ev.account_id, level = ev.state.level, bad_debt_minor = ev.state.bad_debt_minor, "dunning applied");
    Ok(())
}

/// `POST /v1/accounts` as the customer sends it.
#[derive(utoipa::ToSchema, Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignUp {
    #[schema(format = Email, max_length = 254, example = "ada@example.com")]
    pub email: String,
    #[schema(min_length = 1, max_length = 200, example = "Ada")]
    pub name: String,
}

/// Sign-up input after validation.
#[derive(Debug, Clone)]
pub struct NewAccount {
    pub email: String,
    pub name: String,
}

/// What sign-up answers.
#[derive(Debug, Clone)]
pub struct SignedUp {
    pub account: Account,
    /// The account's API token; `None` on a replay later than [`TOKEN_REPLAY_SECS`].
    pub api_token: Option<String>,
    /// A replay came too late to carry the token.
    pub token_replay_expired: bool,
}

/// What sign-up keeps under its key: the token's id, never the token.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SignUpRecord {
    account: Account,
    token_id: TokenId,
}

pub const EMAIL_BYTES_MAX: usize = 254;
pub const NAME_BYTES_MAX: usize = 200;

/// How long after sign-up a replay still returns the API token, s. Later replays return the
/// account without it: whoever learns the (key, email, name) of a sign-up a day later gets no
/// credential.
pub const TOKEN_REPLAY_SECS: i64 = 600;

/// Validates sign-up fields; every problem is returned.
/// The shape of an address we accept (sign-up, profile, contacts, agents): at most
/// [`EMAIL_BYTES_MAX`] bytes, one `@` with text on both sides, no whitespace. Control
/// characters are refused separately ([`has_control`]), each caller with its own message.
pub fn valid_email(email: &str) -> bool {
    email.len() <= EMAIL_BYTES_MAX
        && !email.chars().any(char::is_whitespace)
        && email
            .find('@')
            .is_some_and(|i| i > 0 && i + 1 < email.len() && !email[i + 1..].contains('@'))
}

/// The length of a name we accept: 1 to [`NAME_BYTES_MAX`] bytes.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= NAME_BYTES_MAX
}

/// PostgreSQL text cannot hold NUL, and no name or address needs a control character.
pub fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

pub fn validate_new_account(email: &str, name: &str) -> Result<NewAccount, Vec<String>> {
    let email = email.trim();
    let name = name.trim();
    let mut errors = Vec::new();
    if !valid_email(email) {
        errors.push(format!(
            "email must be an address like name@example.com of at most {EMAIL_BYTES_MAX} bytes"
        ));
    }
    if !valid_name(name) {
        errors.push(format!("name must be 1-{NAME_BYTES_MAX} bytes"));
    }
    // PostgreSQL text cannot hold NUL, and no name or address needs a control character:
    // refused here, before anything reaches the provider.
    if has_control(email) || has_control(name) {
        errors.push("email and name must not contain control characters (NUL included)".into());
    }
    if errors.is_empty() {
        Ok(NewAccount {
            email: email.to_owned(),
            name: name.to_owned(),
        })
    } else {
        Err(errors)
    }
}

/// Scope of a sign-up's idempotency key (no account exists yet): the hash of the e-mail
/// address, so unrelated clients reusing a simple key do not collide (and a key alone names
/// nothing).
fn signup_scope(email: &str) -> String {
    format!(
        "signup:{}",
        hex::encode(Sha256::digest(email.to_ascii_lowercase().as_bytes()))
    )
}

/// Creates the account, its provider customer and an API token (see the module doc).
pub async fn sign_up(
    state: &AppState,
    key: idempotency::Key,
    input: &SignUp,
) -> Result<Ran<SignedUp>> {
    let new = validate_new_account(&input.email, &input.name)
        .map_err(|errs| Error::unprocessable("invalid_account", errs.join("; ")))?;
    let request =
        idempotency::Request::new(signup_scope(&new.email), key, "POST /v1/accounts", input)?;
    let now = state.clock.now();
    let ran = idempotency::run(
        &state.cf,
        &request,
        now,
        async |_, _| Ok(()),
        async |attempt, _| create(state, attempt, &new, now).await,
    )
    .await?;
    let fresh = ran
        .replay_of
        .is_none_or(|at| now - at <= TimeDelta::seconds(TOKEN_REPLAY_SECS));
    Ok(ran.map(|r: SignUpRecord| SignedUp {
        api_token: fresh.then(|| derive_token(&state.token_secret, r.token_id)),
        token_replay_expired: !fresh,
        account: r.account,
    }))
}

/// The provider call (no transaction), then the account, its token and the recompute with
/// the stored outcome (one transaction).
async fn create(
    state: &AppState,
    attempt: &idempotency::Attempt,
    new: &NewAccount,
    now: DateTime<Utc>,
) -> Result<SignUpRecord> {
    let id = AccountId(attempt.resource());
    // Derived from the account id the key reserved: a resumed attempt gets the same customer.
    let customer = state
        .gateway
        .create_customer(
            &new.email,
            &new.name,
            &idempotency::provider_key("signup", id.0),
        )
        .await?;
    let mut tx = state.cf.begin().await?;
    if let Some(done) = attempt.overtaken(&mut tx).await? {
        // A slower attempt of the same request finished first.
        return done;
    }
    let account = store::insert_account(
        &mut tx,
        id,
        &new.email,
        &new.name,
        state.gateway.name(),
        &customer.id,
        now,
    )
    .await?;
    let token_id = TokenId::new_v7();
    let token = derive_token(&state.token_secret, token_id);
    store::insert_token(&mut tx, token_id, id, &token_hash(&token), now).await?;
    outbox::account_changed(&mut tx, id, now).await?;
    let record = SignUpRecord { account, token_id };
    attempt.complete(&mut tx, &Ok(record.clone())).await?;
    tx.commit().await?;
    state.outbox_wake.notify_waiters();
    tracing::info!(account_id = %id, "account created");
    Ok(record)
}

/// One account (`not_found` for an unknown id).
pub async fn get(state: &AppState, id: AccountId) -> Result<Account> {
    let mut conn = state.cf.acquire().await?;
    store::get_account(&mut conn, id, false)
        .await?
        .ok_or_else(|| Error::not_found("account"))
}

/// The account a live API token belongs to.
pub async fn authenticate(state: &AppState, token: &str) -> Result<AccountId> {
    let mut conn = state.cf.acquire().await?;
    store::account_for_token(&mut conn, &token_hash(token))
        .await?
        .ok_or_else(|| Error::unauthorized("invalid_token", "the API token is not valid"))
}

/// Which of `ids` name an account (one query, for a whole usage batch).
pub async fn existing(
    state: &AppState,
    ids: &[AccountId],
) -> Result<std::collections::HashSet<AccountId>> {
    let mut conn = state.cf.acquire().await?;
    Ok(store::existing(&mut conn, ids).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_up_validation_reports_all_problems() {
        assert!(validate_new_account("a@example.com", "Ada").is_ok());
        for (email, name, n) in [
            ("nope", "Ada", 1),
            ("a@", "Ada", 1),
            ("@b", "", 2),
            ("a b@c.d", " ", 2),
            ("a@b@c", "x", 1),
            ("a@example.com", "Ada\0", 1),
            ("a\0@example.com", "Ada", 1),
        ] {
            assert_eq!(
                validate_new_account(email, name).expect_err(email).len(),
                n,
                "{email:?} {name:?}"
            );
        }
    }
}
