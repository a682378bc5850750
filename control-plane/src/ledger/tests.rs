use std::collections::HashMap;

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;

use super::*;

fn header(kind: TxKind, reference: &str, account: AccountId) -> Header {
    Header {
        kind,
        reference: reference.to_owned(),
        account,
        currency: Currency::USD,
        description: format!("{kind} {reference}"),
    }
}

fn plan(k: &str) -> Revenue {
    Revenue::Plan(k.to_owned())
}

#[test]
fn a_transaction_that_does_not_sum_to_zero_cannot_be_sealed() {
    let a = AccountId::new_v7();
    let h = || header(TxKind::Payment, "p1", a);
    let cash = LedgerAccount::cash("stripe").unwrap();
    let unbalanced = Draft::new(h())
        .debit(cash.clone(), 100)
        .credit(LedgerAccount::Receivable, 99)
        .seal();
    assert_eq!(unbalanced, Err(LedgerError::Unbalanced(1)));
    let negative = Draft::new(h()).debit(cash.clone(), -5).seal();
    assert_eq!(negative, Err(LedgerError::NegativeAmount(-5)));
    let one_sided = Draft::new(h()).debit(cash.clone(), 0).seal();
    assert_eq!(one_sided, Ok(None), "all-zero drafts book nothing");
    // Sums are taken in i128: two i64::MAX debits against one credit cannot wrap to zero.
    let huge = Draft::new(h())
        .debit(cash.clone(), i64::MAX)
        .debit(cash.clone(), i64::MAX)
        .credit(LedgerAccount::Receivable, 2)
        .seal();
    assert!(matches!(huge, Err(LedgerError::Unbalanced(_))));
    assert_eq!(
        Draft::new(h())
            .signed(cash.clone(), i64::MIN)
            .credit(LedgerAccount::Receivable, 1)
            .seal(),
        Err(LedgerError::Overflow)
    );
    let ok = Draft::new(h())
        .debit(cash, 100)
        .credit(LedgerAccount::Receivable, 100)
        .seal()
        .unwrap()
        .unwrap();
    assert_eq!(ok.postings().len(), 2);
}

#[test]
fn ledger_account_names_round_trip_and_bad_ones_are_refused() {
    for name in [
        "receivable",
        "credit",
        "refunds",
        "bad_debt",
        "cash:stripe",
        "revenue:plan:pro",
        "revenue:meter:api.calls-v2",
        "revenue:addon:extra_seats",
    ] {
        let a: LedgerAccount = name.parse().unwrap();
        assert_eq!(a.to_string(), name);
    }
    for bad in [
        "cash:",
        "cash:Stripe",
        "revenue:plan:",
        "revenue:plän:x",
        "revenue:plan:a b",
        "assets",
        "",
    ] {
        assert!(bad.parse::<LedgerAccount>().is_err(), "{bad}");
    }
    assert!(LedgerAccount::revenue(Revenue::Plan("k".repeat(KEY_BYTES_MAX + 1))).is_err());
}

#[test]
fn finalising_an_invoice_books_its_amount_due_as_receivable() {
    let a = AccountId::new_v7();
    let lines = [
        RevenueLine {
            source: plan("pro"),
            amount_minor: 2900,
        },
        RevenueLine {
            source: Revenue::Meter("api_calls".into()),
            amount_minor: 1000,
        },
    ];
    let tx = invoice_finalized(header(TxKind::InvoiceFinalized, "in_1", a), &lines, 900)
        .unwrap()
        .unwrap();
    let by: HashMap<String, i64> = tx.postings().iter().fold(HashMap::new(), |mut m, p| {
        *m.entry(p.account.to_string()).or_default() += p.amount_minor;
        m
    });
    assert_eq!(by["receivable"], 3900 - 900);
    assert_eq!(by["credit"], 900);
    assert_eq!(by["revenue:plan:pro"], -2900);
    assert_eq!(by["revenue:meter:api_calls"], -1000);
    // More credit than the invoice asks for cannot be applied.
    assert!(invoice_finalized(header(TxKind::InvoiceFinalized, "in_2", a), &lines, 3901).is_err());
}

#[test]
fn a_negative_invoice_becomes_customer_credit() {
    let a = AccountId::new_v7();
    let lines = [
        RevenueLine {
            source: plan("enterprise"),
            amount_minor: -19900,
        },
        RevenueLine {
            source: plan("pro"),
            amount_minor: 2900,
        },
    ];
    let tx = invoice_finalized(header(TxKind::InvoiceFinalized, "in_3", a), &lines, 0)
        .unwrap()
        .unwrap();
    let credit: i64 = tx
        .postings()
        .iter()
        .filter(|p| p.account == LedgerAccount::Credit)
        .map(|p| p.amount_minor)
        .sum();
    assert_eq!(credit, -17000, "we owe the customer 170.00");
    assert!(
        tx.postings()
            .iter()
            .all(|p| p.account != LedgerAccount::Receivable)
    );
}

proptest! {
    /// Whatever the lines (any signs, up to huge amounts) and credit applied, a finalisation
    /// either is refused or sums to zero, and its receivable is exactly the amount due.
    #[test]
    fn invoice_transactions_always_balance(
        amounts in proptest::collection::vec(-1_000_000_000_000i64..1_000_000_000_000, 1..12),
        credit_share in 0u32..=100,
    ) {
        let a = AccountId::new_v7();
        let lines: Vec<RevenueLine> = amounts
            .iter()
            .enumerate()
            .map(|(i, &amount_minor)| RevenueLine { source: plan(&format!("p{i}")), amount_minor })
            .collect();
        let total: i64 = amounts.iter().sum();
        let applied = total.max(0) / 100 * i64::from(credit_share);
        let tx = invoice_finalized(header(TxKind::InvoiceFinalized, "in", a), &lines, applied).unwrap();
        if let Some(tx) = tx {
            let sum: i128 = tx.postings().iter().map(|p| i128::from(p.amount_minor)).sum();
            prop_assert_eq!(sum, 0);
            let receivable: i64 = tx
                .postings()
                .iter()
                .filter(|p| p.account == LedgerAccount::Receivable)
                .map(|p| p.amount_minor)
                .sum();
            prop_assert_eq!(receivable, total.max(0) - applied);
            prop_assert!(tx.postings().iter().all(|p| p.amount_minor != 0));
        } else {
            prop_assert!(amounts.iter().all(|&a| a == 0));
        }
    }
}

#[sqlx::test(migrations = "../migrations/billing")]
async fn posting_is_idempotent_and_a_different_repost_is_refused(
    pool: PgPool,
) -> anyhow::Result<()> {
    let a = AccountId::new_v7();
    let now = Utc::now();
    let mut conn = pool.acquire().await?;
    let tx = payment(header(TxKind::Payment, "ca_1", a), "simulated", 2900)?.unwrap();
    let first = post(&mut conn, &tx, now).await?;
    let again = post(&mut conn, &tx, now).await?;
    assert_eq!(
        (first.id, first.replayed, again.replayed),
        (again.id, false, true)
    );
    let cash = LedgerAccount::cash("simulated")?;
    assert_eq!(balance(&mut conn, a, &cash, Currency::USD).await?, 2900);
    let other = payment(header(TxKind::Payment, "ca_1", a), "simulated", 3000)?.unwrap();
    let err = post(&mut conn, &other, now).await.unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<LedgerError>(),
            Some(LedgerError::ConflictingRepost { .. })
        ),
        "{err}"
    );
    assert_eq!(balance(&mut conn, a, &cash, Currency::USD).await?, 2900);
    Ok(())
}

#[sqlx::test(migrations = "../migrations/billing")]
async fn the_database_refuses_unbalanced_and_changed_entries(pool: PgPool) -> anyhow::Result<()> {
    let a = AccountId::new_v7();
    let now = Utc::now();
    // Written around the builder, straight in SQL: refused at commit.
    let mut tx = pool.begin().await?;
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO ledger_transactions (id, kind, reference, account_id, currency, description, posted_at)
         VALUES ($1, 'payment', 'raw', $2, 'USD', '', $3)",
    )
    .bind(id)
    .bind(a.0)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO ledger_entries (transaction_id, ledger_account, amount_minor)
         VALUES ($1, 'cash:stripe', 100), ($1, 'receivable', -99)",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let err = tx.commit().await.unwrap_err();
    assert!(err.to_string().contains("not balanced"), "{err}");

    let mut conn = pool.acquire().await?;
    let posted = post(
        &mut conn,
        &write_off(header(TxKind::WriteOff, "in_9", a), 500)?.unwrap(),
        now,
    )
    .await?;
    for sql in [
        "UPDATE ledger_entries SET amount_minor = amount_minor * 2",
        "DELETE FROM ledger_entries",
        "UPDATE ledger_transactions SET currency = 'EUR'",
        "DELETE FROM ledger_transactions",
        "TRUNCATE ledger_entries, ledger_transactions",
    ] {
        let err = sqlx::query(sql).execute(&mut *conn).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    // Entries added later to a posted transaction must balance too.
    let err = sqlx::query(
        "INSERT INTO ledger_entries (transaction_id, ledger_account, amount_minor)
         VALUES ($1, 'bad_debt', 1)",
    )
    .bind(posted.id)
    .execute(&mut *conn)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("not balanced"), "{err}");
    assert_eq!(
        balance(&mut conn, a, &LedgerAccount::BadDebt, Currency::USD).await?,
        500
    );
    Ok(())
}

async fn usd(
    conn: &mut PgConnection,
    customer: AccountId,
    acct: LedgerAccount,
) -> sqlx::Result<i64> {
    balance(conn, customer, &acct, Currency::USD).await
}

/// What the test believes each customer's books say, from the operations alone.
#[derive(Default)]
struct Model {
    /// Open invoices: (reference, amount due).
    open: Vec<(String, i64)>,
    /// Paid invoices' payments that can still be refunded: (processor, amount).
    paid: Vec<(String, i64)>,
    credit: i64,
    cash: HashMap<String, i64>,
    bad_debt: i64,
    refunds: i64,
    revenue: i64,
}

/// Random sequences of finalisations (credit applied first), payments, credits, refunds,
/// write-offs and credit notes for a few customers, posted through the real store: every transaction sums to
/// zero, every balance equals the model's, the receivable equals the open invoices' amounts due,
/// and the whole ledger sums to zero.
#[sqlx::test(migrations = "../migrations/billing")]
async fn random_operation_sequences_keep_the_books_balanced(pool: PgPool) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    let now = Utc::now();
    for seed in 0..6u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let customers: Vec<AccountId> = (0..3).map(|_| AccountId::new_v7()).collect();
        let mut models: Vec<Model> = (0..3).map(|_| Model::default()).collect();
        for step in 0..80 {
            let c = rng.random_range(0..customers.len());
            let (account, m) = (customers[c], &mut models[c]);
            let reference = format!("s{seed}-{step}");
            match rng.random_range(0..6) {
                0 => {
                    let n = rng.random_range(1..4);
                    let lines: Vec<RevenueLine> = (0..n)
                        .map(|i| RevenueLine {
                            source: if i == 0 {
                                plan("pro")
                            } else {
                                Revenue::Meter("api_calls".into())
                            },
                            amount_minor: rng.random_range(-3000..20000),
                        })
                        .collect();
                    let total: i64 = lines.iter().map(|l| l.amount_minor).sum();
                    let applied = m.credit.min(total.max(0));
                    let h = header(TxKind::InvoiceFinalized, &reference, account);
                    if let Some(tx) = invoice_finalized(h, &lines, applied)? {
                        post(&mut conn, &tx, now).await?;
                    }
                    m.revenue += total;
                    m.credit = m.credit - applied + (-total).max(0);
                    let due = total.max(0) - applied;
                    if due > 0 {
                        m.open.push((reference, due));
                    }
                }
                1 if !m.open.is_empty() => {
                    let (_, due) = m.open.remove(rng.random_range(0..m.open.len()));
                    let processor = if rng.random_bool(0.5) {
                        "stripe"
                    } else {
                        "braintree"
                    };
                    let h = header(TxKind::Payment, &reference, account);
                    post(&mut conn, &payment(h, processor, due)?.unwrap(), now).await?;
                    *m.cash.entry(processor.into()).or_default() += due;
                    m.paid.push((processor.into(), due));
                }
                2 => {
                    let amount = rng.random_range(1..5000);
                    let h = header(TxKind::Credit, &reference, account);
                    post(&mut conn, &credit(h, amount)?.unwrap(), now).await?;
                    m.credit += amount;
                    m.refunds += amount;
                }
                3 if !m.paid.is_empty() => {
                    let (processor, amount) = m.paid.remove(rng.random_range(0..m.paid.len()));
                    let part = rng.random_range(1..=amount);
                    let h = header(TxKind::Refund, &reference, account);
                    post(&mut conn, &refund(h, &processor, part)?.unwrap(), now).await?;
                    *m.cash.entry(processor).or_default() -= part;
                    m.refunds += part;
                }
                4 if !m.open.is_empty() => {
                    let (_, due) = m.open.remove(rng.random_range(0..m.open.len()));
                    let h = header(TxKind::WriteOff, &reference, account);
                    post(&mut conn, &write_off(h, due)?.unwrap(), now).await?;
                    m.bad_debt += due;
                }
                // A credit note on an open invoice: what it still asks for goes down first,
                // the rest (up to what was invoiced) becomes credit.
                5 if !m.open.is_empty() => {
                    let i = rng.random_range(0..m.open.len());
                    let due = m.open[i].1;
                    let reduced = rng.random_range(1..=due);
                    let credited = if reduced == due {
                        rng.random_range(0..1000)
                    } else {
                        0
                    };
                    let h = header(TxKind::CreditNote, &reference, account);
                    post(&mut conn, &credit_note(h, reduced, credited)?.unwrap(), now).await?;
                    if reduced == due {
                        m.open.remove(i);
                    } else {
                        m.open[i].1 -= reduced;
                    }
                    m.credit += credited;
                    m.refunds += reduced + credited;
                }
                _ => {}
            }
        }
        for (account, m) in customers.iter().zip(&models) {
            let open: i64 = m.open.iter().map(|(_, d)| d).sum();
            assert_eq!(
                usd(&mut conn, *account, LedgerAccount::Receivable).await?,
                open
            );
            assert_eq!(
                credit_held(&mut conn, *account, Currency::USD).await?,
                m.credit
            );
            assert_eq!(
                usd(&mut conn, *account, LedgerAccount::BadDebt).await?,
                m.bad_debt
            );
            assert_eq!(
                usd(&mut conn, *account, LedgerAccount::Refunds).await?,
                m.refunds
            );
            for p in ["stripe", "braintree"] {
                let cash = usd(&mut conn, *account, LedgerAccount::cash(p)?).await?;
                assert_eq!(cash, m.cash.get(p).copied().unwrap_or(0), "cash:{p}");
            }
            let plan_rev = usd(&mut conn, *account, LedgerAccount::revenue(plan("pro"))?).await?;
            let meter_rev = usd(
                &mut conn,
                *account,
                LedgerAccount::revenue(Revenue::Meter("api_calls".into()))?,
            )
            .await?;
            assert_eq!(-(plan_rev + meter_rev), m.revenue, "revenue");
        }
    }
    // Every transaction sums to zero, and so does the whole ledger.
    let unbalanced: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT transaction_id FROM ledger_entries GROUP BY 1
         HAVING sum(amount_minor) <> 0) u",
    )
    .fetch_one(&mut *conn)
    .await?;
    assert_eq!(unbalanced, 0);
    let total: i64 = store::balances(&mut conn)
        .await?
        .iter()
        .map(|(_, _, b)| b)
        .sum();
    assert_eq!(total, 0);
    Ok(())
}
