//! A billing pass on demand (`tollgate-control-plane billing-pass`): what is due as of a time
//! ([`preview`], writes nothing), or the same workers the maintenance pass runs, repeated until
//! nothing is left ([`run`]): renewals, billing's consumption of them, finalisation, off-session
//! charges. Safe beside running control planes: every step claims its rows with `FOR UPDATE
//! SKIP LOCKED` and is idempotent.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::charges::{self, Collected};
use super::invoices;
use crate::money::Currency;
use crate::outbox;
use crate::state::{AppState, BillingOutbox};
use crate::subscriptions;

/// What is due as of a time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Due {
    /// Subscriptions whose period ended (each makes an invoice).
    pub renewals: i64,
    /// Drafts past their grace window.
    pub drafts: i64,
    /// Open invoices due for an off-session charge, and what they ask for by currency.
    pub charges: i64,
    pub charge_amounts: BTreeMap<Currency, i64>,
}

impl Due {
    /// Work items the pass will handle at least.
    pub fn items(&self) -> u64 {
        u64::try_from(self.renewals + self.drafts + self.charges).unwrap_or(0)
    }
}

/// What is due as of `as_of`; writes nothing.
pub async fn preview(state: &AppState, as_of: DateTime<Utc>) -> anyhow::Result<Due> {
    let mut cf = state.cf.acquire().await?;
    let renewals = subscriptions::store::count_renewals(&mut cf, as_of).await?;
    let mut billing = state.billing.acquire().await?;
    let (drafts, charges, amounts) = super::store::count_due(&mut billing, as_of).await?;
    Ok(Due {
        renewals,
        drafts,
        charges,
        charge_amounts: amounts.into_iter().collect(),
    })
}

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub renewed: usize,
    pub finalized: usize,
    /// Totals of the finalised invoices, by currency.
    pub invoiced: BTreeMap<Currency, i64>,
    pub charged: usize,
    pub charged_amounts: BTreeMap<Currency, i64>,
    pub declined: usize,
    /// Failed at the provider, or not recorded (retried by a later pass).
    pub failed: usize,
    pub passes: usize,
}

impl Summary {
    /// Work items handled so far.
    pub fn items(&self) -> u64 {
        u64::try_from(self.renewed + self.finalized + self.charged + self.declined + self.failed)
            .unwrap_or(0)
    }
}

/// Batch of each step of a pass.
pub const PASS_BATCH: i64 = 500;

/// Runs billing at the state's clock until nothing is due; `progress` sees the summary after
/// every round.
pub async fn run(state: &AppState, mut progress: impl FnMut(&Summary)) -> anyhow::Result<Summary> {
    let mut s = Summary::default();
    loop {
        s.passes += 1;
        let renewed = subscriptions::renew_due(state, PASS_BATCH).await?;
        s.renewed += renewed;
        let mut relayed = 0;
        loop {
            let n = outbox::relay_once(state).await?;
            relayed += n;
            if n == 0 {
                break;
            }
        }
        let finalized = invoices::finalize_due(state, PASS_BATCH).await?;
        for inv in &finalized {
            *s.invoiced.entry(inv.currency).or_default() += inv.total_minor;
        }
        s.finalized += finalized.len();
        let collected = charges::charge_due(state, PASS_BATCH).await?;
        let attempted = collected.len();
        for d in collected {
            match d.collected {
                Collected::Paid => {
                    s.charged += 1;
                    *s.charged_amounts.entry(d.currency).or_default() += d.amount_minor;
                }
                Collected::Declined { .. } => s.declined += 1,
                _ => s.failed += 1,
            }
        }
        let billing_relay = BillingOutbox(state.clone());
        while outbox::relay_once(&billing_relay).await? > 0 {}
        progress(&s);
        if renewed + relayed + finalized.len() + attempted == 0 {
            return Ok(s);
        }
        if s.passes > 10_000 {
            anyhow::bail!("billing pass did not settle after {} rounds", s.passes);
        }
    }
}
