//! SQL for accounts and tokens (cf_prod).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::Account;
use crate::ids::{AccountId, PaymentMethodId, TokenId};

const ACCOUNT_COLUMNS: &str =
    "id, email, name, standing, gateway_customer_id, default_payment_method_id, created_at,
     dunning_level, past_due_since, payment_method_required, bad_debt_minor, billing_address,
     tax_id";

#[allow(clippy::too_many_arguments)]
pub async fn insert_account(
    conn: &mut PgConnection,
    id: AccountId,
    email: &str,
    name: &str,
    gateway: &str,
    gateway_customer_id: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<Account> {
    sqlx::query_as(sqlf!(
        "INSERT INTO accounts (id, email, name, standing, gateway, gateway_customer_id, created_at)
         VALUES ($1, $2, $3, 'active', $4, $5, $6) RETURNING {ACCOUNT_COLUMNS}"
    ))
    .bind(id.0)
    .bind(email)
    .bind(name)
    .bind(gateway)
    .bind(gateway_customer_id)
    .bind(now)
    .fetch_one(conn)
    .await
}

/// One account; `lock` takes its row lock (in the caller's transaction).
pub async fn get_account(
    conn: &mut PgConnection,
    id: AccountId,
    lock: bool,
) -> sqlx::Result<Option<Account>> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    sqlx::query_as(sqlf!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1{lock}"
    ))
    .bind(id.0)
    .fetch_optional(conn)
    .await
}

/// Which of `ids` name an account (one query, for a whole usage batch).
pub async fn existing(
    conn: &mut PgConnection,
    ids: &[AccountId],
) -> sqlx::Result<std::collections::HashSet<AccountId>> {
    let ids: Vec<Uuid> = ids.iter().map(|a| a.0).collect();
    let rows: Vec<(Uuid,)> = sqlx::query_as("SELECT id FROM accounts WHERE id = ANY($1)")
        .bind(&ids)
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().map(|(id,)| AccountId(id)).collect())
}

pub async fn insert_token(
    conn: &mut PgConnection,
    token_id: TokenId,
    account: AccountId,
    token_hash: &[u8],
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO api_tokens (id, account_id, token_hash, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(token_id)
    .bind(account.0)
    .bind(token_hash)
    .bind(now)
    .execute(conn)
    .await
    .map(drop)
}

/// The account a live token belongs to.
pub async fn account_for_token(
    conn: &mut PgConnection,
    token_hash: &[u8],
) -> sqlx::Result<Option<AccountId>> {
    let row: Option<(Uuid,)> = sqlx::query_as(
        "SELECT account_id FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
    )
    .bind(token_hash)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(id,)| AccountId(id)))
}

pub async fn set_default_payment_method(
    conn: &mut PgConnection,
    account: AccountId,
    payment_method: PaymentMethodId,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE accounts SET default_payment_method_id = $2 WHERE id = $1")
        .bind(account.0)
        .bind(payment_method)
        .execute(conn)
        .await
        .map(drop)
}

/// The account's standing alone, locking its row (entitlements recompute under it).
pub async fn standing_for_update(
    conn: &mut PgConnection,
    account: AccountId,
) -> sqlx::Result<Option<tollgate_protocol::AccountStanding>> {
    Ok(facts_inputs_for_update(conn, account)
        .await?
        .map(|f| f.standing))
}

/// What an account's facts are computed from, besides its subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactsInputs {
    pub standing: tollgate_protocol::AccountStanding,
    pub dunning_level: i32,
    pub past_due_since: Option<DateTime<Utc>>,
}

/// [`FactsInputs`] under the account's row lock.
pub async fn facts_inputs_for_update(
    conn: &mut PgConnection,
    account: AccountId,
) -> sqlx::Result<Option<FactsInputs>> {
    let row: Option<(String, i32, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT standing, dunning_level, past_due_since FROM accounts WHERE id = $1 FOR UPDATE",
    )
    .bind(account.0)
    .fetch_optional(conn)
    .await?;
    row.map(|(s, dunning_level, past_due_since)| {
        let standing = tollgate_protocol::AccountStanding::try_from(s)
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        Ok(FactsInputs {
            standing,
            dunning_level,
            past_due_since,
        })
    })
    .transpose()
}

/// Applies billing's dunning snapshot when it is newer than the stored one, banning for bad
/// debt (`bans`) or lifting a ban for bad debt once it is paid. Returns the standing before
/// and after when it applied.
#[allow(clippy::too_many_arguments)]
pub async fn apply_dunning(
    conn: &mut PgConnection,
    account: AccountId,
    version: i64,
    level: i32,
    past_due_since: Option<DateTime<Utc>>,
    payment_method_required: bool,
    bad_debt_minor: i64,
    bans: bool,
) -> sqlx::Result<Option<(String, String)>> {
    sqlx::query_as(
        "WITH before AS (SELECT standing FROM accounts WHERE id = $1)
         UPDATE accounts SET dunning_version = $2, dunning_level = $3, past_due_since = $4,
             payment_method_required = $5, bad_debt_minor = $6,
             standing = CASE WHEN $7 AND standing = 'active' THEN 'banned'
                             WHEN NOT $7 AND ban_reason = 'bad_debt' THEN 'active'
                             ELSE standing END,
             ban_reason = CASE WHEN $7 AND standing = 'active' THEN 'bad_debt'
                               WHEN NOT $7 AND ban_reason = 'bad_debt' THEN NULL
                               ELSE ban_reason END
         WHERE id = $1 AND dunning_version < $2
         RETURNING (SELECT standing FROM before), standing",
    )
    .bind(account.0)
    .bind(version)
    .bind(level)
    .bind(past_due_since)
    .bind(payment_method_required)
    .bind(bad_debt_minor)
    .bind(bans)
    .fetch_optional(conn)
    .await
}

/// A new payment method is ready: purchases are no longer blocked (dunning confirms or
/// re-sets it once it has retried).
pub async fn clear_payment_method_required(
    conn: &mut PgConnection,
    account: AccountId,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE accounts SET payment_method_required = false WHERE id = $1")
        .bind(account.0)
        .execute(conn)
        .await
        .map(drop)
}

/// The account's customer at the PayPal gateway, once made.
pub async fn paypal_customer_id(
    conn: &mut PgConnection,
    account: AccountId,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT paypal_customer_id FROM accounts WHERE id = $1")
        .bind(account.0)
        .fetch_optional(conn)
        .await
        .map(Option::flatten)
}

/// Remembers the account's PayPal customer unless one was remembered meanwhile; returns the
/// one kept (two first uses at once keep the first, so they converge on one customer).
pub async fn keep_paypal_customer_id(
    conn: &mut PgConnection,
    account: AccountId,
    customer: &str,
) -> sqlx::Result<String> {
    sqlx::query_scalar(
        "UPDATE accounts SET paypal_customer_id = COALESCE(paypal_customer_id, $2)
          WHERE id = $1 RETURNING paypal_customer_id",
    )
    .bind(account.0)
    .bind(customer)
    .fetch_one(conn)
    .await
}

/// Sets the standing and why it is banned (`support`, `bad_debt`; none when active).
pub async fn set_standing(
    conn: &mut PgConnection,
    account: AccountId,
    standing: tollgate_protocol::AccountStanding,
    ban_reason: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE accounts SET standing = $2, ban_reason = $3 WHERE id = $1")
        .bind(account.0)
        .bind(standing.as_str())
        .bind(ban_reason)
        .execute(conn)
        .await
        .map(drop)
}

pub async fn set_payment_method_required(
    conn: &mut PgConnection,
    account: AccountId,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE accounts SET payment_method_required = true WHERE id = $1")
        .bind(account.0)
        .execute(conn)
        .await
        .map(drop)
}

pub async fn insert_note(
    conn: &mut PgConnection,
    id: crate::ids::NoteId,
    account: AccountId,
    agent: crate::ids::AgentId,
    body: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<super::support::Note> {
    sqlx::query_as(
        "INSERT INTO account_notes (id, account_id, agent_id, body, created_at)
         VALUES ($1, $2, $3, $4, $5) RETURNING id, agent_id, body, created_at",
    )
    .bind(id)
    .bind(account.0)
    .bind(agent)
    .bind(body)
    .bind(now)
    .fetch_one(conn)
    .await
}

pub async fn notes(
    conn: &mut PgConnection,
    account: AccountId,
) -> sqlx::Result<Vec<super::support::Note>> {
    sqlx::query_as(
        "SELECT id, agent_id, body, created_at FROM account_notes WHERE account_id = $1
         ORDER BY created_at DESC, id DESC",
    )
    .bind(account.0)
    .fetch_all(conn)
    .await
}

/// Accounts whose email, name, id or provider customer id matches `q`, newest first.
pub async fn search(
    conn: &mut PgConnection,
    q: &str,
    limit: i64,
) -> sqlx::Result<Vec<super::Account>> {
    let pattern = format!(
        "%{}%",
        q.replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    );
    sqlx::query_as(sqlf!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts
         WHERE email ILIKE $1 OR name ILIKE $1 OR id::text = $2 OR gateway_customer_id = $2
            OR paypal_customer_id = $2
         ORDER BY created_at DESC, id LIMIT $3"
    ))
    .bind(pattern)
    .bind(q)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Writes the profile fields.
pub async fn update_profile(
    conn: &mut PgConnection,
    account: AccountId,
    name: &str,
    email: &str,
    address: Option<&super::profile::BillingAddress>,
    tax_id: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE accounts SET name = $2, email = $3, billing_address = $4, tax_id = $5 WHERE id = $1",
    )
    .bind(account.0)
    .bind(name)
    .bind(email)
    .bind(address.map(sqlx::types::Json))
    .bind(tax_id)
    .execute(conn)
    .await
    .map(drop)
}

pub async fn contacts(
    conn: &mut PgConnection,
    account: AccountId,
) -> sqlx::Result<Vec<super::profile::Contact>> {
    sqlx::query_as(
        "SELECT id, email, name, created_at FROM account_contacts
         WHERE account_id = $1 AND removed_at IS NULL ORDER BY created_at, id",
    )
    .bind(account.0)
    .fetch_all(conn)
    .await
}

/// Adds a contact; `None` when the email is a live contact already.
pub async fn insert_contact(
    conn: &mut PgConnection,
    account: AccountId,
    email: &str,
    name: Option<&str>,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<super::profile::Contact>> {
    sqlx::query_as(
        "INSERT INTO account_contacts (id, account_id, email, name, created_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (account_id, lower(email)) WHERE removed_at IS NULL DO NOTHING
         RETURNING id, email, name, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(account.0)
    .bind(email)
    .bind(name)
    .bind(now)
    .fetch_optional(conn)
    .await
}

pub async fn remove_contact(
    conn: &mut PgConnection,
    account: AccountId,
    contact: Uuid,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    Ok(sqlx::query(
        "UPDATE account_contacts SET removed_at = $3
         WHERE id = $2 AND account_id = $1 AND removed_at IS NULL",
    )
    .bind(account.0)
    .bind(contact)
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

pub async fn tokens(
    conn: &mut PgConnection,
    account: AccountId,
) -> sqlx::Result<Vec<super::profile::TokenInfo>> {
    sqlx::query_as(
        "SELECT id, label, created_at, revoked_at FROM api_tokens WHERE account_id = $1
         ORDER BY created_at, id",
    )
    .bind(account.0)
    .fetch_all(conn)
    .await
}

pub async fn insert_labelled_token(
    conn: &mut PgConnection,
    id: TokenId,
    account: AccountId,
    token_hash: &[u8],
    label: Option<&str>,
    now: DateTime<Utc>,
) -> sqlx::Result<super::profile::TokenInfo> {
    sqlx::query_as(
        "INSERT INTO api_tokens (id, account_id, token_hash, label, created_at)
         VALUES ($1, $2, $3, $4, $5) RETURNING id, label, created_at, revoked_at",
    )
    .bind(id)
    .bind(account.0)
    .bind(token_hash)
    .bind(label)
    .bind(now)
    .fetch_one(conn)
    .await
}

pub async fn revoke_token(
    conn: &mut PgConnection,
    account: AccountId,
    token: TokenId,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<super::profile::TokenInfo>> {
    sqlx::query_as(
        "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, $3)
         WHERE id = $2 AND account_id = $1 RETURNING id, label, created_at, revoked_at",
    )
    .bind(account.0)
    .bind(token)
    .bind(now)
    .fetch_optional(conn)
    .await
}

/// The account has no default payment method any more.
pub async fn clear_default_payment_method(
    conn: &mut PgConnection,
    account: AccountId,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE accounts SET default_payment_method_id = NULL WHERE id = $1")
        .bind(account.0)
        .execute(conn)
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::tokens::token_hash;
    use sqlx::PgPool;
    use tollgate_protocol::AccountStanding;

    #[sqlx::test(migrations = "../migrations/cf")]
    async fn accounts_and_tokens_round_trip(pool: PgPool) -> sqlx::Result<()> {
        let mut conn = pool.acquire().await?;
        let id = AccountId::new_v7();
        let now = Utc::now();
        let a = insert_account(
            &mut conn,
            id,
            "a@example.com",
            "Ada",
            "simulated",
            "cus_1",
            now,
        )
        .await?;
        assert_eq!(
            (a.id, a.standing, a.gateway_customer_id.as_str()),
            (id, AccountStanding::Active, "cus_1")
        );
        let tid = TokenId::new_v7();
        insert_token(&mut conn, tid, id, &token_hash("tg_x"), now).await?;
        assert_eq!(
            account_for_token(&mut conn, &token_hash("tg_x")).await?,
            Some(id)
        );
        assert_eq!(
            account_for_token(&mut conn, &token_hash("tg_y")).await?,
            None
        );
        assert!(
            get_account(&mut conn, AccountId::new_v7(), false)
                .await?
                .is_none()
        );
        let dup = insert_account(
            &mut conn,
            AccountId::new_v7(),
            "b@example.com",
            "B",
            "simulated",
            "cus_1",
            now,
        )
        .await;
        let err = dup.expect_err("customer ids are unique per gateway");
        assert_eq!(
            err.as_database_error().and_then(|e| e.constraint()),
            Some("accounts_gateway_customer_unique")
        );
        Ok(())
    }

    #[sqlx::test(migrations = "../migrations/cf")]
    async fn an_unknown_stored_standing_is_an_error_not_active(pool: PgPool) -> sqlx::Result<()> {
        let mut conn = pool.acquire().await?;
        let id = AccountId::new_v7();
        insert_account(
            &mut conn,
            id,
            "a@example.com",
            "Ada",
            "simulated",
            "cus_1",
            Utc::now(),
        )
        .await?;
        // A standing this build does not know (a newer writer): the CHECK is relaxed to let it in.
        sqlx::query("ALTER TABLE accounts DROP CONSTRAINT accounts_standing_check")
            .execute(&mut *conn)
            .await?;
        sqlx::query("UPDATE accounts SET standing = 'suspended' WHERE id = $1")
            .bind(id.0)
            .execute(&mut *conn)
            .await?;
        assert!(standing_for_update(&mut conn, id).await.is_err());
        assert!(get_account(&mut conn, id, false).await.is_err());
        Ok(())
    }
}
