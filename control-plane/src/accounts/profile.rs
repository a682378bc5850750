//! What a customer keeps about its own account from the Dashboard: the profile (name, email,
//! billing address, tax id), billing contacts (who gets invoices and dunning emails; the
//! account's email when there are none) and its API tokens (list, create, revoke).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Account, has_control, store, valid_email, valid_name};
use crate::error::{Error, Result};
use crate::ids::{AccountId, TokenId};
use crate::state::AppState;

/// Where invoices are addressed. `country` is ISO 3166-1 alpha-2.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingAddress {
    pub line1: String,
    #[serde(default)]
    pub line2: Option<String>,
    pub city: String,
    #[serde(default)]
    pub postal_code: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    pub country: String,
}

/// `PATCH /v1/account`: what is present changes; `null` clears the address or tax id.
#[derive(utoipa::ToSchema, Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Patch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default, with = "double_option")]
    pub billing_address: Option<Option<BillingAddress>>,
    #[serde(default, with = "double_option")]
    pub tax_id: Option<Option<String>>,
}

mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

fn text_ok(s: &str, max: usize) -> bool {
    let n = s.chars().count();
    n >= 1 && n <= max && !s.chars().any(char::is_control)
}

fn validate(p: &Patch) -> Result<()> {
    let mut problems = Vec::new();
    if p.name
        .as_deref()
        .is_some_and(|n| !valid_name(n.trim()) || has_control(n))
    {
        problems.push("name is 1-200 bytes");
    }
    if p.email
        .as_deref()
        .is_some_and(|e| !valid_email(e.trim()) || has_control(e))
    {
        problems.push("email is an address");
    }
    if let Some(Some(a)) = &p.billing_address {
        let country_ok = a.country.len() == 2 && a.country.bytes().all(|b| b.is_ascii_uppercase());
        let fields_ok = text_ok(&a.line1, 200)
            && text_ok(&a.city, 100)
            && a.line2.as_deref().is_none_or(|l| text_ok(l, 200))
            && a.postal_code.as_deref().is_none_or(|l| text_ok(l, 20))
            && a.state.as_deref().is_none_or(|l| text_ok(l, 100));
        if !country_ok || !fields_ok {
            problems.push("billing_address needs line1 and city (≤ 200 characters) and a two-letter upper-case country");
        }
    }
    if let Some(Some(t)) = &p.tax_id
        && (!text_ok(t, 64)
            || !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-. ".contains(c)))
    {
        problems.push("tax_id is 1-64 letters, digits, dots, dashes or spaces");
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::unprocessable("invalid_account", problems.join("; ")))
    }
}

/// Applies a patch of the profile.
pub async fn update(state: &AppState, id: AccountId, p: &Patch) -> Result<Account> {
    validate(p)?;
    let mut tx = state.cf.begin().await?;
    let current = store::get_account(&mut tx, id, true)
        .await?
        .ok_or_else(|| Error::not_found("account"))?;
    let name = p.name.as_deref().map(str::trim).unwrap_or(&current.name);
    let email = p.email.as_deref().map(str::trim).unwrap_or(&current.email);
    let address = match &p.billing_address {
        Some(a) => a.clone(),
        None => current.billing_address.as_ref().map(|j| j.0.clone()),
    };
    let tax_id = match &p.tax_id {
        Some(t) => t.clone(),
        None => current.tax_id.clone(),
    };
    store::update_profile(
        &mut tx,
        id,
        name,
        email,
        address.as_ref(),
        tax_id.as_deref(),
    )
    .await?;
    let after = store::get_account(&mut tx, id, false)
        .await?
        .ok_or_else(|| Error::not_found("account"))?;
    tx.commit().await?;
    Ok(after)
}

/// A billing contact.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Contact {
    pub id: uuid::Uuid,
    pub email: String,
    pub name: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// `POST /v1/account/contacts`.
#[derive(utoipa::ToSchema, Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewContact {
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// Most live contacts an account has.
pub const CONTACTS_MAX: i64 = 10;

pub async fn contacts(state: &AppState, id: AccountId) -> Result<Vec<Contact>> {
    let mut conn = state.cf.acquire().await?;
    Ok(store::contacts(&mut conn, id).await?)
}

/// Adds a contact (409 `contact_exists` for an email already there, 422 past
/// [`CONTACTS_MAX`]).
pub async fn add_contact(state: &AppState, id: AccountId, c: &NewContact) -> Result<Contact> {
    let email = c.email.trim();
    if !valid_email(email)
        || has_control(email)
        || c.name
            .as_deref()
            .is_some_and(|n| !valid_name(n.trim()) || has_control(n))
    {
        return Err(Error::unprocessable(
            "invalid_contact",
            "a contact is an email address and an optional name (1-200 characters)",
        ));
    }
    let mut tx = state.cf.begin().await?;
    store::get_account(&mut tx, id, true)
        .await?
        .ok_or_else(|| Error::not_found("account"))?;
    if store::contacts(&mut tx, id).await?.len() as i64 >= CONTACTS_MAX {
        tx.rollback().await?;
        return Err(Error::unprocessable(
            "too_many_contacts",
            format!("an account has at most {CONTACTS_MAX} billing contacts"),
        ));
    }
    let Some(contact) = store::insert_contact(
        &mut tx,
        id,
        email,
        c.name.as_deref().map(str::trim),
        state.clock.now(),
    )
    .await?
    else {
        tx.rollback().await?;
        return Err(Error::conflict(
            "contact_exists",
            "this email is a contact already",
        ));
    };
    tx.commit().await?;
    Ok(contact)
}

/// Removes a contact of the account (404 for another account's).
pub async fn remove_contact(state: &AppState, id: AccountId, contact: uuid::Uuid) -> Result<()> {
    let mut conn = state.cf.acquire().await?;
    if store::remove_contact(&mut conn, id, contact, state.clock.now()).await? {
        Ok(())
    } else {
        Err(Error::not_found("contact"))
    }
}

/// Where the account's billing emails go: its contacts, or its own email without any.
pub async fn recipients(
    conn: &mut sqlx::PgConnection,
    acct: &Account,
) -> sqlx::Result<Vec<String>> {
    let contacts = store::contacts(conn, acct.id).await?;
    Ok(if contacts.is_empty() {
        vec![acct.email.clone()]
    } else {
        contacts.into_iter().map(|c| c.email).collect()
    })
}

/// An API token as listed (never the token itself, which is shown once when made).
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct TokenInfo {
    pub id: TokenId,
    pub label: Option<String>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A new token and its secret.
#[derive(utoipa::ToSchema, Debug, Clone, Serialize)]
pub struct NewToken {
    pub token: TokenInfo,
    pub api_token: String,
}

/// `POST /v1/tokens`.
#[derive(utoipa::ToSchema, Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    #[serde(default)]
    pub label: Option<String>,
}

/// Most live tokens an account has.
pub const TOKENS_MAX: i64 = 20;

pub async fn tokens(state: &AppState, id: AccountId) -> Result<Vec<TokenInfo>> {
    let mut conn = state.cf.acquire().await?;
    Ok(store::tokens(&mut conn, id).await?)
}

/// Makes another API token for the account.
pub async fn create_token(state: &AppState, id: AccountId, r: &TokenRequest) -> Result<NewToken> {
    if r.label.as_deref().is_some_and(|l| !text_ok(l.trim(), 100)) {
        return Err(Error::unprocessable(
            "invalid_token_label",
            "a label is 1-100 characters",
        ));
    }
    let mut tx = state.cf.begin().await?;
    store::get_account(&mut tx, id, true)
        .await?
        .ok_or_else(|| Error::not_found("account"))?;
    let live = store::tokens(&mut tx, id)
        .await?
        .iter()
        .filter(|t| t.revoked_at.is_none())
        .count() as i64;
    if live >= TOKENS_MAX {
        tx.rollback().await?;
        return Err(Error::unprocessable(
            "too_many_tokens",
            format!("an account has at most {TOKENS_MAX} live tokens"),
        ));
    }
    let token_id = TokenId::new_v7();
    let secret = super::tokens::derive_token(&state.token_secret, token_id);
    let info = store::insert_labelled_token(
        &mut tx,
        token_id,
        id,
        &super::tokens::token_hash(&secret),
        r.label.as_deref().map(str::trim),
        state.clock.now(),
    )
    .await?;
    tx.commit().await?;
    Ok(NewToken {
        token: info,
        api_token: secret,
    })
}

/// Revokes one of the account's tokens (404 for another account's); it stops working at once.
pub async fn revoke_token(state: &AppState, id: AccountId, token: TokenId) -> Result<TokenInfo> {
    let mut conn = state.cf.acquire().await?;
    store::revoke_token(&mut conn, id, token, state.clock.now())
        .await?
        .ok_or_else(|| Error::not_found("token"))
}
