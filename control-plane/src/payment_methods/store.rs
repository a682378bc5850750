//! SQL for payment methods (cf_prod).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{PaymentMethod, PaymentMethodStatus};
use crate::gateways::SetupOutcome;
use crate::ids::{AccountId, PaymentMethodId};

const PM_COLUMNS: &str = "id, status, kind, brand, last4, exp_month, exp_year, payer_email,
    gateway, gateway_customer_id, gateway_pm_id, setup_intent_id, client_secret, make_default,
    created_at";

/// A payment method to insert, from the provider's SetupIntent.
pub struct NewMethod<'a> {
    pub id: PaymentMethodId,
    pub account: AccountId,
    pub gateway: &'a str,
    /// The provider customer it is attached to.
    pub customer: &'a str,
    pub outcome: &'a SetupOutcome,
    pub make_default: bool,
    pub now: DateTime<Utc>,
}

pub async fn insert(
    conn: &mut PgConnection,
    m: &NewMethod<'_>,
    status: PaymentMethodStatus,
    client_secret: Option<&str>,
) -> sqlx::Result<PaymentMethod> {
    sqlx::query_as(sqlf!(
        "INSERT INTO payment_methods (id, account_id, gateway, gateway_pm_id, setup_intent_id, status,
             client_secret, make_default, brand, last4, exp_month, exp_year, created_at, updated_at,
             kind, payer_email, gateway_customer_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $14, $15, $16)
         RETURNING {PM_COLUMNS}"
    ))
    .bind(m.id)
    .bind(m.account.0)
    .bind(m.gateway)
    .bind(&m.outcome.payment_method_id)
    .bind(&m.outcome.setup_intent_id)
    .bind(status)
    .bind(client_secret)
    .bind(m.make_default)
    .bind(&m.outcome.card.brand)
    .bind(&m.outcome.card.last4)
    .bind(m.outcome.card.exp_month)
    .bind(m.outcome.card.exp_year)
    .bind(m.now)
    .bind(m.outcome.kind)
    .bind(&m.outcome.payer_email)
    .bind(m.customer)
    .fetch_one(conn)
    .await
}

/// One payment method of one account (None for other accounts' ids); `lock` takes its row
/// lock.
pub async fn get(
    conn: &mut PgConnection,
    account: AccountId,
    id: PaymentMethodId,
    lock: bool,
) -> sqlx::Result<Option<PaymentMethod>> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    sqlx::query_as(sqlf!(
        "SELECT {PM_COLUMNS} FROM payment_methods WHERE id = $1 AND account_id = $2{lock}"
    ))
    .bind(id)
    .bind(account.0)
    .fetch_optional(conn)
    .await
}

/// The account's method the provider knows as `gateway_pm_id` at `gateway`.
pub async fn by_provider_id(
    conn: &mut PgConnection,
    account: AccountId,
    gateway: &str,
    gateway_pm_id: &str,
) -> sqlx::Result<Option<PaymentMethod>> {
    sqlx::query_as(sqlf!(
        "SELECT {PM_COLUMNS} FROM payment_methods
          WHERE account_id = $1 AND gateway = $2 AND gateway_pm_id = $3
          ORDER BY created_at DESC LIMIT 1"
    ))
    .bind(account.0)
    .bind(gateway)
    .bind(gateway_pm_id)
    .fetch_optional(conn)
    .await
}

/// The account's methods that are not failed or canceled, oldest first.
pub async fn list(conn: &mut PgConnection, account: AccountId) -> sqlx::Result<Vec<PaymentMethod>> {
    sqlx::query_as(sqlf!(
        "SELECT {PM_COLUMNS} FROM payment_methods WHERE account_id = $1 AND status NOT IN ('failed', 'canceled', 'removed') ORDER BY created_at"
    ))
    .bind(account.0)
    .fetch_all(conn)
    .await
}

/// A new status; the client secret goes (nothing waits for the customer any more).
pub async fn set_status(
    conn: &mut PgConnection,
    id: PaymentMethodId,
    status: PaymentMethodStatus,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE payment_methods SET status = $3, client_secret = NULL, updated_at = $2 WHERE id = $1",
    )
    .bind(id)
    .bind(now)
    .bind(status)
    .execute(conn)
    .await
    .map(drop)
}

/// Set-ups still waiting that were made before `before` (at most 100, oldest first): id,
/// account, SetupIntent.
pub async fn waiting_since(
    conn: &mut PgConnection,
    before: DateTime<Utc>,
) -> sqlx::Result<Vec<(PaymentMethodId, AccountId, String)>> {
    let rows: Vec<(PaymentMethodId, Uuid, String)> = sqlx::query_as(
        "SELECT id, account_id, setup_intent_id FROM payment_methods
          WHERE status IN ('pending', 'requires_action') AND created_at <= $1
          ORDER BY created_at LIMIT 100",
    )
    .bind(before)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, account, setup)| (id, AccountId(account), setup))
        .collect())
}

/// The waiting method whose set-up is `setup_intent_id`: its id, account and gateway.
pub async fn waiting_by_setup(
    conn: &mut PgConnection,
    setup_intent_id: &str,
) -> sqlx::Result<Option<(PaymentMethodId, AccountId, String)>> {
    let row: Option<(PaymentMethodId, Uuid, String)> = sqlx::query_as(
        "SELECT id, account_id, gateway FROM payment_methods
          WHERE setup_intent_id = $1 AND status IN ('pending', 'requires_action')",
    )
    .bind(setup_intent_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(id, account, gateway)| (id, AccountId(account), gateway)))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::accounts::store::insert_account;
    use crate::gateways::{CardSummary, SetupStatus};
    use sqlx::PgPool;

    #[sqlx::test(migrations = "../migrations/cf")]
    async fn payment_methods_are_scoped_to_their_account(pool: PgPool) -> sqlx::Result<()> {
        let mut conn = pool.acquire().await?;
        let now = Utc::now();
        let (a, b) = (AccountId::new_v7(), AccountId::new_v7());
        insert_account(
            &mut conn,
            a,
            "a@example.com",
            "A",
            "simulated",
            "cus_a",
            now,
        )
        .await?;
        insert_account(
            &mut conn,
            b,
            "b@example.com",
            "B",
            "simulated",
            "cus_b",
            now,
        )
        .await?;
        let outcome = SetupOutcome {
            setup_intent_id: "seti_1".into(),
            payment_method_id: "pm_1".into(),
            card: CardSummary {
                brand: Some("visa".into()),
                last4: Some("4242".into()),
                exp_month: Some(1),
                exp_year: Some(2030),
            },
            kind: crate::gateways::MethodKind::Card,
            payer_email: None,
            status: SetupStatus::Succeeded,
        };
        let new = NewMethod {
            id: PaymentMethodId::new_v7(),
            account: a,
            gateway: "simulated",
            customer: "cus_a",
            outcome: &outcome,
            make_default: false,
            now,
        };
        let pm = insert(&mut conn, &new, PaymentMethodStatus::Ready, None).await?;
        assert_eq!(
            (pm.last4.as_deref(), pm.status),
            (Some("4242"), PaymentMethodStatus::Ready)
        );
        assert!(get(&mut conn, a, pm.id, false).await?.is_some());
        assert!(
            get(&mut conn, b, pm.id, true).await?.is_none(),
            "another account's method is invisible"
        );
        assert_eq!(list(&mut conn, a).await?.len(), 1);
        assert!(list(&mut conn, b).await?.is_empty());
        super::super::set_default_if_wanted(&mut conn, a, pm.id, false).await?;
        let acct = crate::accounts::store::get_account(&mut conn, a, false)
            .await?
            .expect("account");
        assert_eq!(
            acct.default_payment_method_id,
            Some(pm.id),
            "the first method becomes the default"
        );
        Ok(())
    }
}
