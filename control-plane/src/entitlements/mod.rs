//! Entitlement facts: what the control plane knows about an account that decides its features,
//! versioned per account and published to edges.
//!
//! Facts are recomputed by the outbox relay (never inline in a Dashboard request: a change
//! announces itself with `outbox::account_changed`, [`on_recompute`] consumes it), stored in
//! `entitlement_facts` with a version that grows by one whenever they change, and published to
//! the Redis change stream plus an L2 copy ([`publish`]). Decisions are *not* computed here:
//! edges evaluate the facts with the stable (or canary) rule bundle's WebAssembly module.
//!
//! An account's facts are computed under its row lock from its standing and its live
//! subscription; a state this build does not know is an error (the row is retried), never a
//! default.

pub mod overrides;
pub mod publish;
pub mod store;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use tollgate_protocol::{AccountFacts, FACTS_BATCH_MAX, SubscriptionFacts};

use crate::accounts;
use crate::error::{Error, Kind, Result};
use crate::ids::AccountId;
use crate::outbox::{self, AccountEvent, Delivery, Topic};
use crate::state::AppState;
use crate::subscriptions;

pub use publish::repair_redis_if_behind;

/// A change-stream id, `ms-seq`, ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamId {
    pub ms: i64,
    pub seq: i64,
}

impl StreamId {
    pub fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-')?;
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

/// Locks the account and computes its facts from current state at `now` (days past due count
/// whole days since its oldest unpaid case opened); `version` is left at 0.
pub async fn compute_facts(
    conn: &mut PgConnection,
    account: AccountId,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<AccountFacts>> {
    let Some(inputs) = accounts::store::facts_inputs_for_update(conn, account).await? else {
        return Ok(None);
    };
    let standing = inputs.standing;
    let days_past_due = inputs
        .past_due_since
        .map_or(0, |since| (now - since).num_days().max(0));
    let live = subscriptions::live(conn, account).await?;
    // The add-ons come with the subscription that holds them.
    let addons = live
        .as_ref()
        .map(|sub| subscriptions::addons::quantities(&sub.terms.addons))
        .unwrap_or_default();
    let subscription = live.map(|sub| SubscriptionFacts {
        plan: sub.plan,
        status: sub.status,
        current_period_end_ms: sub.current_period_end.timestamp_millis(),
        billing_anchor_ms: Some(sub.billing_anchor.timestamp_millis()),
    });
    // A banned account is denied everything: a support grant does not reopen a feature to it
    // (the rules apply overrides last, so the grant is left out of its facts; denies stay).
    let mut live_overrides = overrides::live(conn, account, now).await?;
    if standing == tollgate_protocol::AccountStanding::Banned {
        live_overrides.retain(|o| o.mode == overrides::Mode::Deny);
    }
    let overrides = overrides::as_facts(&live_overrides);
    Ok(Some(AccountFacts {
        standing,
        subscription,
        addons,
        overrides,
        dunning_level: i64::from(inputs.dunning_level),
        days_past_due,
        ..AccountFacts::new(account, 0)
    }))
}

/// Recomputes and, when changed, stores the next version. Returns the current facts and
/// whether they changed.
pub async fn recompute(
    conn: &mut PgConnection,
    account: AccountId,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<(AccountFacts, bool)>> {
    let Some(mut fresh) = compute_facts(conn, account, now).await? else {
        return Ok(None);
    };
    let current = store::stored_facts(conn, account).await?;
    if let Some(cur) = &current {
        fresh.version = cur.version;
        if *cur == fresh {
            return Ok(Some((fresh, false)));
        }
    }
    fresh.version = current.map_or(1, |c| c.version + 1);
    store::store_facts(conn, &fresh, now).await?;
    Ok(Some((fresh, true)))
}

/// The consumer of `entitlements.recompute`: new facts are stored and their publication
/// enqueued, in the relay's transaction; once that commits, they are published at once
/// ([`publish_now`]) rather than by a second relay pass over the publish row.
pub async fn on_recompute(
    state: &AppState,
    conn: &mut PgConnection,
    d: &Delivery,
) -> anyhow::Result<()> {
    let ev: AccountEvent = d.payload()?;
    if let Some((facts, true)) = recompute(conn, ev.account_id, d.now).await? {
        tracing::debug!(account_id = %ev.account_id, version = facts.version, "facts changed");
        let row = outbox::enqueue_fallback(
            conn,
            Topic::EntitlementsPublish,
            &ev,
            d.now,
            PUBLISH_FALLBACK_AFTER,
        )
        .await?;
        d.after_commit(Box::pin(publish_now(
            state.clone(),
            row,
            facts,
            ev.changed_at_us,
        )));
    }
    Ok(())
}

/// How long a publish row waits for its fast path ([`publish_now`]) before the relay takes it:
/// a publish is late by this much only when the fast path failed or its process died.
pub const PUBLISH_FALLBACK_AFTER: chrono::TimeDelta = chrono::TimeDelta::seconds(2);

/// The fast path of a publish, run right after the recompute committed `facts`: publishes
/// them and marks their publish row (`row`) delivered. On any failure (Redis down, the
/// database gone) it stops and the row stays: the relay publishes the current facts once it
/// falls due ([`PUBLISH_FALLBACK_AFTER`]), with its backoff after. A publish both here and by
/// the relay is harmless: edges and the L2 copy keep the highest version.
async fn publish_now(
    state: AppState,
    row: crate::ids::EventId,
    facts: AccountFacts,
    changed_at_us: Option<i64>,
) {
    let published = match publish::publish(&state, &facts, changed_at_us).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(account_id = %facts.account_id, error = %format!("{e:#}"), "publish failed; the outbox retries it");
            return;
        }
    };
    let marked: sqlx::Result<bool> = async {
        let mut tx = state.cf.begin().await?;
        let marked = outbox::mark_processed(&mut tx, row, state.clock.now()).await?;
        if let Some((shard, id)) = published {
            store::record_published(&mut tx, facts.account_id, shard, id).await?;
        }
        tx.commit().await?;
        Ok(marked)
    }
    .await;
    match marked {
        Ok(true) => outbox::Host::count(&state, Topic::EntitlementsPublish, true),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(account_id = %facts.account_id, error = %e, "published; recording it failed, the outbox publishes again");
        }
    }
}

/// The consumer of `entitlements.publish`: the account's current facts go to Redis, and the
/// shard stream and id they went out under are recorded.
pub async fn on_publish(
    state: &AppState,
    conn: &mut PgConnection,
    d: &Delivery,
) -> anyhow::Result<()> {
    let ev: AccountEvent = d.payload()?;
    let Some(facts) = store::stored_facts(conn, ev.account_id).await? else {
        return Ok(());
    };
    if let Some((shard, id)) = publish::publish(state, &facts, ev.changed_at_us).await? {
        store::record_published(conn, ev.account_id, shard, id).await?;
    }
    Ok(())
}

/// Accounts in dunning whose stored facts count fewer (or more) days past due than `now` does
/// get their facts recomputed (the day count moves once a day). Returns how many.
pub async fn refresh_days_past_due(state: &AppState, batch: i64) -> anyhow::Result<usize> {
    let now = state.clock.now();
    let mut tx = state.cf.begin().await?;
    let stale = store::days_past_due_stale(&mut tx, now, batch).await?;
    for account in &stale {
        outbox::account_changed(&mut tx, *account, now).await?;
    }
    tx.commit().await?;
    Ok(stale.len())
}

/// The stored facts of one account (`404 unknown_account`).
pub async fn facts_of(state: &AppState, account: AccountId) -> Result<AccountFacts> {
    let mut conn = state.cf.acquire().await?;
    store::stored_facts(&mut conn, account)
        .await?
        .ok_or_else(|| Error::new(Kind::NotFound, "unknown_account", "no such account"))
}

/// What a stable edge answers for the account now: every feature's decision with its reason,
/// from the stored facts and the stable bundle (its reference semantics, which the edges'
/// WebAssembly is tested equal to). `None` before any bundle is stable.
pub async fn decisions(
    state: &AppState,
    account: AccountId,
) -> Result<Option<(i64, Vec<(String, tollgate_protocol::Decision)>)>> {
    let facts = facts_of(state, account).await?;
    let Some((version, program)) = crate::rollout::stable_program(state).await? else {
        return Ok(None);
    };
    let v =
        tollgate_rules::facts::fact_vector(&program, &facts, state.clock.now().timestamp_millis());
    let raw = tollgate_rules::interp::evaluate(&program, &v);
    let out = program
        .features
        .iter()
        .zip(raw)
        .map(|(f, d)| (f.key.clone(), tollgate_rules::facts::decision(d)))
        .collect();
    Ok(Some((version, out)))
}

/// The stored facts of up to [`FACTS_BATCH_MAX`] accounts (unknown ones are absent).
pub async fn facts_of_many(state: &AppState, accounts: &[AccountId]) -> Result<Vec<AccountFacts>> {
    if accounts.len() > FACTS_BATCH_MAX {
        return Err(Error::too_large(
            "batch_too_large",
            format!("at most {FACTS_BATCH_MAX} accounts per request"),
        ));
    }
    let mut conn = state.cf.acquire().await?;
    Ok(store::stored_facts_many(&mut conn, accounts).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::store::insert_account;
    use sqlx::PgPool;
    use tollgate_protocol::AccountStanding;

    #[sqlx::test(migrations = "../migrations/cf")]
    async fn versions_grow_only_when_facts_change(pool: PgPool) -> anyhow::Result<()> {
        let mut conn = pool.acquire().await?;
        let now = Utc::now();
        let id = AccountId::new_v7();
        insert_account(
            &mut conn,
            id,
            "a@example.com",
            "A",
            "simulated",
            "cus_a",
            now,
        )
        .await?;
        let (f1, changed) = recompute(&mut conn, id, now).await?.expect("exists");
        assert!(changed);
        assert_eq!((f1.version, f1.subscription.is_none()), (1, true));
        let (f2, changed) = recompute(&mut conn, id, now).await?.expect("exists");
        assert!(!changed, "same facts, same version");
        assert_eq!(f2.version, 1);
        sqlx::query("UPDATE accounts SET standing = 'banned' WHERE id = $1")
            .bind(id.0)
            .execute(&mut *conn)
            .await?;
        let (f3, changed) = recompute(&mut conn, id, now).await?.expect("exists");
        assert!(changed);
        assert_eq!((f3.version, f3.standing), (2, AccountStanding::Banned));
        assert_eq!(store::stored_facts(&mut conn, id).await?, Some(f3));
        assert!(
            recompute(&mut conn, AccountId::new_v7(), now)
                .await?
                .is_none()
        );
        Ok(())
    }
}
