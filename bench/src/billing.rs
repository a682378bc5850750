//! Billing at scale against its physical baseline in the same run:
//!
//! ```text
//! cargo run --release -p tollgate-bench -- billing [--accounts 100000]
//! ```
//!
//! N accounts on `pro` with metered usage in the period that just ended (set up in SQL, not
//! timed) are renewed by the real billing code: the renewal events applied through billing's
//! consumer (`billing::apply_schedule_event`: schedule, draft invoice), the drafts finalised
//! (`invoices::finalize_due`: metered line priced, number, ledger), and the invoices charged
//! off-session through the simulated gateway (`charges::charge_due`: attempt row, provider
//! call, payment booked). The baseline writes the same rows — invoices, lines, charge attempts,
//! ledger transactions and entries — with plain batched `INSERT … SELECT FROM UNNEST` (1,000
//! invoices per transaction) into the same tables with their triggers disabled: the cost of
//! just storing what billing produces.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use sqlx::PgPool;
use tollgate_control_plane::billing::{
    self, MeterTerms, ScheduleEvent, ScheduleStatus, Started, Terms,
};
use tollgate_control_plane::clock::{Clock, ManualClock};
use tollgate_control_plane::ids::{AccountId, EventId, SubscriptionId};
use tollgate_control_plane::{BILLING_MIGRATOR, CF_MIGRATOR, Deps, build_state, connect_redis};
use tollgate_rules::ir::Pricing;
use uuid::Uuid;

use crate::usage::arg;

const BATCH: usize = 1000;

async fn fresh_db(admin: &PgPool, server: &str, name: &str) -> anyhow::Result<PgPool> {
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(admin)
        .await?;
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&format!("{server}/{name}"))
        .await?)
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2027, 3, 1, 0, 0, 0)
        .single()
        .expect("time")
}

fn terms() -> Terms {
    Terms {
        meters: vec![MeterTerms {
            meter: "api_calls".into(),
            included: Some(100_000),
            pricing: Pricing::PerUnit { unit_minor: 2 },
        }],
        trial_days: 0,
        addons: Vec::new(),
    }
}

/// Accounts with a ready default card at the simulated provider, and their usage in the period
/// `[t0 − 1 month, t0)`.
async fn setup(
    cf: &PgPool,
    billing: &PgPool,
    n: usize,
) -> anyhow::Result<Vec<(AccountId, SubscriptionId)>> {
    let accounts: Vec<(AccountId, SubscriptionId)> = (0..n)
        .map(|_| (AccountId::new_v7(), SubscriptionId::new_v7()))
        .collect();
    let prev = t0() - TimeDelta::days(28);
    for chunk in accounts.chunks(BATCH) {
        let ids: Vec<Uuid> = chunk.iter().map(|a| a.0.0).collect();
        let pms: Vec<Uuid> = chunk.iter().map(|_| Uuid::now_v7()).collect();
        let mut tx = cf.begin().await?;
        sqlx::query(
            "INSERT INTO sim_customers (id, email, name, created_at)
             SELECT 'cus_b' || replace(a::text, '-', ''), 'b@example.com', 'Bench', now() FROM UNNEST($1::uuid[]) a",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO sim_payment_methods (id, customer, behaviour, brand, last4)
             SELECT 'pm_b' || replace(a::text, '-', ''), 'cus_b' || replace(a::text, '-', ''), 'succeeds', 'visa', '4242'
             FROM UNNEST($1::uuid[]) a",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO accounts (id, email, name, standing, gateway, gateway_customer_id, created_at)
             SELECT a, 'b' || replace(a::text, '-', '') || '@example.com', 'Bench', 'active', 'simulated',
                    'cus_b' || replace(a::text, '-', ''), now() FROM UNNEST($1::uuid[]) a",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO payment_methods (id, account_id, gateway, gateway_pm_id, setup_intent_id, status,
                 make_default, brand, last4, created_at, updated_at)
             SELECT p, a, 'simulated', 'pm_b' || replace(a::text, '-', ''), 'seti_bench', 'ready', false,
                    'visa', '4242', now(), now()
             FROM UNNEST($1::uuid[], $2::uuid[]) AS x (a, p)",
        )
        .bind(&ids)
        .bind(&pms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE accounts SET default_payment_method_id = x.p
             FROM UNNEST($1::uuid[], $2::uuid[]) AS x (a, p) WHERE accounts.id = x.a",
        )
        .bind(&ids)
        .bind(&pms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let values: Vec<i64> = (0..chunk.len())
            .map(|i| 99_500 + (i as i64 % 1000))
            .collect();
        sqlx::query(
            "INSERT INTO usage_aggregates (account_id, meter, period_start, period_end, aggregation,
                 value, events, updated_at)
             SELECT a, 'api_calls', $3, $4, 'sum', v, 1, now() FROM UNNEST($1::uuid[], $2::bigint[]) AS x (a, v)",
        )
        .bind(&ids)
        .bind(&values)
        .bind(prev)
        .bind(t0())
        .execute(billing)
        .await?;
    }
    Ok(accounts)
}

fn renewal(account: AccountId, sub: SubscriptionId) -> ScheduleEvent {
    let start = t0();
    ScheduleEvent {
        subscription_id: sub,
        account_id: account,
        plan_key: "pro".into(),
        amount_minor: 2900,
        currency: "USD".into(),
        interval: "month".into(),
        next_bill_at: Some(start + TimeDelta::days(31)),
        status: ScheduleStatus::Active,
        revision: 2,
        period_start: Some(start),
        period_end: Some(start + TimeDelta::days(31)),
        terms: terms(),
        started: Some(Started::Renewal {
            previous_start: start - TimeDelta::days(28),
        }),
        change: None,
    }
}

struct Timings {
    drafts: f64,
    finalize: f64,
    charge: f64,
}

async fn tollgate(cf: PgPool, billing: PgPool, n: usize) -> anyhow::Result<(Timings, i64)> {
    let accounts = setup(&cf, &billing, n).await?;
    let clock = Arc::new(ManualClock::at(t0()));
    let key = tollgate_rules::bundle::SigningKey::generate("bench");
    let public = key.public().to_file_string();
    let words: Vec<&str> = public.split_whitespace().collect();
    let trusted = format!("{}:{}", words[1], words[2]);
    let config = tollgate_control_plane::config::Config::from_source(
        &tollgate_settings::MapSource::from_pairs(vec![
            ("edge_token", "bench-edge-token"),
            ("token_secret", "bench-token-secret"),
            ("admin_token", "bench-admin-token"),
            ("dev_mode", "true"),
            ("redis_key_prefix", "tg-bench-billing"),
            ("trusted_keys", trusted.as_str()),
        ]),
    )
    .map_err(|e| anyhow::anyhow!("config: {e}"))?;
    let redis = connect_redis(
        &tollgate_e2e::redis_url(),
        std::time::Duration::from_secs(5),
    )
    .await?;
    let state = build_state(
        &config,
        Deps {
            cf,
            billing: billing.clone(),
            redis,
            clock: clock.clone(),
            wrap_gateway: None,
        },
    )?;
    let grace = TimeDelta::hours(1);
    let started = Instant::now();
    for chunk in accounts.chunks(BATCH) {
        let mut tx = billing.begin().await?;
        for (a, s) in chunk {
            billing::apply_schedule_event(
                &mut tx,
                EventId::new_v7(),
                &renewal(*a, *s),
                grace,
                t0(),
            )
            .await?;
        }
        tx.commit().await?;
    }
    let drafts = started.elapsed().as_secs_f64();
    clock.advance(TimeDelta::hours(2));
    let started = Instant::now();
    while !billing::invoices::finalize_due(&state, 500)
        .await?
        .is_empty()
    {}
    let finalize = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut paid = 0i64;
    loop {
        let driven = billing::charges::charge_due(&state, 500).await?;
        if driven.is_empty() {
            break;
        }
        paid += driven
            .iter()
            .filter(|d| d.collected == billing::charges::Collected::Paid)
            .count() as i64;
    }
    let charge = started.elapsed().as_secs_f64();
    Ok((
        Timings {
            drafts,
            finalize,
            charge,
        },
        paid,
    ))
}

/// The same rows with plain batched INSERTs, triggers off.
async fn baseline(billing: PgPool, n: usize) -> anyhow::Result<f64> {
    for table in [
        "invoices",
        "invoice_lines",
        "charge_attempts",
        "ledger_transactions",
        "ledger_entries",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE {table} DISABLE TRIGGER ALL"
        )))
        .execute(&billing)
        .await?;
    }
    let start = t0();
    let end = start + TimeDelta::days(31);
    let prev = start - TimeDelta::days(28);
    let started = Instant::now();
    let mut number = 0i64;
    for chunk_start in (0..n).step_by(BATCH) {
        let k = BATCH.min(n - chunk_start);
        let invoices: Vec<Uuid> = (0..k).map(|_| Uuid::now_v7()).collect();
        let accounts: Vec<Uuid> = (0..k).map(|_| Uuid::now_v7()).collect();
        let numbers: Vec<String> = (0..k)
            .map(|_| {
                number += 1;
                format!("TG-2027-{number:06}")
            })
            .collect();
        let metered: Vec<i64> = (0..k).map(|i| (i as i64 % 1000 - 500).max(0) * 2).collect();
        let totals: Vec<i64> = metered.iter().map(|m| 2900 + m).collect();
        let mut tx = billing.begin().await?;
        sqlx::query(
            "INSERT INTO invoices (id, account_id, subscription_id, number, status, reason, currency,
                 subtotal_minor, credit_applied_minor, total_minor, amount_due_minor, amount_paid_minor,
                 period_start, period_end, usage_start, usage_end, terms, finalize_at, finalized_at,
                 paid_at, created_at, updated_at)
             SELECT i, a, a, n, 'paid', 'subscription_cycle', 'USD', t, 0, t, t, t, $5, $6, $7, $5,
                    '{\"meters\":[]}', $5, $5, $5, $5, $5
             FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::bigint[]) AS x (i, a, n, t)",
        )
        .bind(&invoices)
        .bind(&accounts)
        .bind(&numbers)
        .bind(&totals)
        .bind(start)
        .bind(end)
        .bind(prev)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO invoice_lines (invoice_id, position, kind, description, quantity, amount_minor,
                 revenue_key, meter, period_start, period_end)
             SELECT i, 0, 'plan', 'pro plan, 2027-03-01 to 2027-04-01', 1, 2900, 'pro', NULL, $3, $4
             FROM UNNEST($1::uuid[]) i
             UNION ALL
             SELECT i, 1, 'metered', 'api_calls usage, 2027-02-01 to 2027-03-01: 100000 units', 100000, m,
                    'api_calls', 'api_calls', $5, $3
             FROM UNNEST($1::uuid[], $2::bigint[]) AS x (i, m)",
        )
        .bind(&invoices)
        .bind(&metered)
        .bind(start)
        .bind(end)
        .bind(prev)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO charge_attempts (id, invoice_id, account_id, amount_minor, currency, presence,
                 status, processor, provider_payment_id, idempotency_key, created_at, completed_at)
             SELECT gen_random_uuid(), i, a, t, 'USD', 'off_session', 'succeeded', 'simulated',
                    'pi_' || i::text, 'tollgate-charge-' || i::text, $4, $4
             FROM UNNEST($1::uuid[], $2::uuid[], $3::bigint[]) AS x (i, a, t)",
        )
        .bind(&invoices)
        .bind(&accounts)
        .bind(&totals)
        .bind(start)
        .execute(&mut *tx)
        .await?;
        let fin: Vec<Uuid> = (0..k).map(|_| Uuid::now_v7()).collect();
        let pay: Vec<Uuid> = (0..k).map(|_| Uuid::now_v7()).collect();
        sqlx::query(
            "INSERT INTO ledger_transactions (id, kind, reference, account_id, currency, description, posted_at)
             SELECT f, 'invoice_finalized', i::text, a, 'USD', 'invoice', $5 FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[]) AS x (f, i, a)
             UNION ALL
             SELECT p, 'payment', 'charge:' || i::text, a, 'USD', 'payment', $5 FROM UNNEST($4::uuid[], $2::uuid[], $3::uuid[]) AS y (p, i, a)",
        )
        .bind(&fin)
        .bind(&invoices)
        .bind(&accounts)
        .bind(&pay)
        .bind(start)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO ledger_entries (transaction_id, ledger_account, amount_minor)
             SELECT f, 'receivable', t FROM UNNEST($1::uuid[], $3::bigint[]) AS x (f, t)
             UNION ALL SELECT f, 'revenue:plan:pro', -2900 FROM UNNEST($1::uuid[]) f
             UNION ALL SELECT f, 'revenue:meter:api_calls', -m FROM UNNEST($1::uuid[], $4::bigint[]) AS y (f, m) WHERE m <> 0
             UNION ALL SELECT p, 'cash:simulated', t FROM UNNEST($2::uuid[], $3::bigint[]) AS z (p, t)
             UNION ALL SELECT p, 'receivable', -t FROM UNNEST($2::uuid[], $3::bigint[]) AS w (p, t)",
        )
        .bind(&fin)
        .bind(&pay)
        .bind(&totals)
        .bind(&metered)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    Ok(started.elapsed().as_secs_f64())
}

pub fn run(args: &[String], out_path: &str) -> anyhow::Result<()> {
    let n: usize = arg(args, "--accounts", 100_000)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = tollgate_e2e::pg_server_url();
        let admin = PgPool::connect(&format!("{server}/postgres")).await?;
        let tag = Uuid::new_v4().simple().to_string();
        let names = [
            format!("tg_bench_cf_{tag}"),
            format!("tg_bench_billing_{tag}"),
            format!("tg_bench_base_{tag}"),
        ];
        let result = async {
            let cf = fresh_db(&admin, &server, &names[0]).await?;
            let billing = fresh_db(&admin, &server, &names[1]).await?;
            let base = fresh_db(&admin, &server, &names[2]).await?;
            CF_MIGRATOR.run(&cf).await?;
            BILLING_MIGRATOR.run(&billing).await?;
            BILLING_MIGRATOR.run(&base).await?;
            tollgate_control_plane::catalog::seed(&cf, &tollgate_rules::Catalog::demo()).await?;
            let base_secs = baseline(base.clone(), n).await?;
            let (t, paid) = tollgate(cf.clone(), billing.clone(), n).await?;
            let invoices: i64 = sqlx::query_scalar("SELECT count(*) FROM invoices WHERE status = 'paid'")
                .fetch_one(&billing)
                .await?;
            anyhow::ensure!(invoices == n as i64 && paid == n as i64, "{invoices} paid invoices, {paid} charges for {n} accounts");
            cf.close().await;
            billing.close().await;
            base.close().await;
            anyhow::Ok((base_secs, t))
        }
        .await;
        for name in &names {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&admin)
            .await;
        }
        let (base_secs, t) = result?;
        let total = t.drafts + t.finalize + t.charge;
        let rate = |secs: f64| n as f64 / secs;
        let report = format!(
            "# Billing: renewals invoiced and charged vs plain batched INSERTs\n\n\
             Command: `cargo run --release -p tollgate-bench -- billing --accounts {n}`\n\n\
             {n} accounts on `pro` with metered usage (about half over the included 100,000 calls), \
             renewed by the real billing code on this machine's PostgreSQL (fsync on): renewal events \
             applied through billing's consumer in transactions of 1,000 (schedule + draft invoice), drafts \
             finalised 500 per transaction (metered line priced, gapless number, ledger transaction), invoices \
             charged off-session 500 per pass through the simulated gateway (a charge attempt committed \
             before each provider call, the simulator's own rows in cf_prod, the outcome and the ledger's \
             payment after it). The baseline inserts the same rows (invoices, 2 lines each, a charge attempt, \
             2 ledger transactions with their 4–5 entries) with one `INSERT … SELECT FROM UNNEST` per table \
             per 1,000 invoices, into the same tables with their triggers disabled.\n\n\
             | | seconds | invoices/s | ratio to baseline |\n|---|---:|---:|---:|\n\
             | batched INSERTs (baseline) | {base_secs:.1} | {:.0} | 1.00 |\n\
             | Tollgate: drafts from renewal events | {:.1} | {:.0} | |\n\
             | Tollgate: finalisation | {:.1} | {:.0} | |\n\
             | Tollgate: off-session charges | {:.1} | {:.0} | |\n\
             | **Tollgate, all three** | {total:.1} | {:.0} | {:.2} |\n",
            rate(base_secs),
            t.drafts,
            rate(t.drafts),
            t.finalize,
            rate(t.finalize),
            t.charge,
            rate(t.charge),
            rate(total),
            base_secs / total,
        );
        std::fs::write(out_path, &report)?;
        println!("{report}");
        anyhow::Ok(())
    })
}
