//! SQL of the ledger (billing_prod): inserts only.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Header, LedgerAccount, Posting, Transaction, TxKind};
use crate::ids::AccountId;
use crate::money::Currency;

/// Inserts the transaction row; `false` when `(kind, reference)` was posted before.
pub async fn insert_transaction(
    conn: &mut PgConnection,
    id: Uuid,
    tx: &Transaction,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let h = &tx.header;
    let inserted = sqlx::query(
        "INSERT INTO ledger_transactions (id, kind, reference, account_id, currency, description, posted_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (kind, reference) DO NOTHING",
    )
    .bind(id)
    .bind(h.kind)
    .bind(&h.reference)
    .bind(h.account.0)
    .bind(h.currency)
    .bind(&h.description)
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

pub async fn insert_entries(
    conn: &mut PgConnection,
    id: Uuid,
    postings: &[Posting],
) -> sqlx::Result<()> {
    let accounts: Vec<String> = postings.iter().map(|p| p.account.to_string()).collect();
    let amounts: Vec<i64> = postings.iter().map(|p| p.amount_minor).collect();
    sqlx::query(
        "INSERT INTO ledger_entries (transaction_id, ledger_account, amount_minor)
         SELECT $1, a, m FROM UNNEST($2::text[], $3::bigint[]) AS t (a, m)",
    )
    .bind(id)
    .bind(&accounts)
    .bind(&amounts)
    .execute(conn)
    .await?;
    Ok(())
}

/// The transaction posted under `(kind, reference)`, with its entries.
pub async fn existing(
    conn: &mut PgConnection,
    kind: TxKind,
    reference: &str,
) -> anyhow::Result<(Uuid, Transaction)> {
    let (id, account, currency, description): (Uuid, Uuid, Currency, String) = sqlx::query_as(
        "SELECT id, account_id, currency, description FROM ledger_transactions
         WHERE kind = $1 AND reference = $2",
    )
    .bind(kind)
    .bind(reference)
    .fetch_one(&mut *conn)
    .await?;
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT ledger_account, amount_minor FROM ledger_entries WHERE transaction_id = $1
         ORDER BY id",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let postings = rows
        .into_iter()
        .map(|(a, amount_minor)| {
            Ok(Posting {
                account: a.parse()?,
                amount_minor,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((
        id,
        Transaction {
            header: Header {
                kind,
                reference: reference.to_owned(),
                account: AccountId::from(account),
                currency,
                description,
            },
            postings,
        },
    ))
}

pub async fn balance(
    conn: &mut PgConnection,
    customer: AccountId,
    account: &LedgerAccount,
    currency: Currency,
) -> sqlx::Result<i64> {
    let sum: Option<i64> = sqlx::query_scalar(
        "SELECT sum(e.amount_minor)::bigint FROM ledger_entries e
         JOIN ledger_transactions t ON t.id = e.transaction_id
         WHERE t.account_id = $1 AND t.currency = $2 AND e.ledger_account = $3",
    )
    .bind(customer.0)
    .bind(currency)
    .bind(account.to_string())
    .fetch_one(conn)
    .await?;
    Ok(sum.unwrap_or(0))
}

/// Every (ledger account, currency) balance over all customers.
pub async fn balances(conn: &mut PgConnection) -> sqlx::Result<Vec<(String, Currency, i64)>> {
    sqlx::query_as(
        "SELECT e.ledger_account, t.currency, sum(e.amount_minor)::bigint
         FROM ledger_entries e JOIN ledger_transactions t ON t.id = e.transaction_id
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(conn)
    .await
}

/// The amount (sum of the debits) of the transaction `(kind, reference)`, if posted.
pub async fn amount_of(
    conn: &mut PgConnection,
    kind: super::TxKind,
    reference: &str,
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        "SELECT sum(e.amount_minor)::bigint FROM ledger_transactions t
         JOIN ledger_entries e ON e.transaction_id = t.id
         WHERE t.kind = $1 AND t.reference = $2 AND e.amount_minor > 0",
    )
    .bind(kind)
    .bind(reference)
    .fetch_one(conn)
    .await
}
