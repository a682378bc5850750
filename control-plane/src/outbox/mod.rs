//! The transactional outbox of cf_prod (and, with the same table and relay, billing_prod's): its topics, how a change enqueues, the relay that
//! delivers to the consumers registered for each topic, and how long delivered rows are kept.
//!
//! A change that another store must learn about writes an outbox row **in the same
//! transaction** as the change ([`enqueue`]); the commit delivers a `NOTIFY` that wakes the
//! relay ([`relay`]). The relay claims rows with `FOR UPDATE SKIP LOCKED` (so N control-plane
//! replicas share the work and never double-process), hands each to the consumer registered
//! for its topic ([`Consumers`]: registered by the process that runs the relay, so this module
//! knows no domain), and marks it processed in the claiming transaction. A failing row is
//! retried with exponential backoff (`attempts`, `available_at`, `last_error` record why);
//! nothing is dropped. Processed rows are pruned after the retention window ([`retention`]).
//!
//! A consumer may also hand back a fast path to run once its transaction commits
//! ([`Delivery::after_commit`]) for work it enqueued durably as a row due a little later
//! ([`enqueue_fallback`]): the fast path does it at once and marks that row processed
//! ([`mark_processed`]); the relay does it only if the fast path did not.
//!
//! Topics ([`Topic`]):
//! * `entitlements.recompute` `{account_id}` — recompute the account's facts; bumps the version
//!   if they changed and enqueues `entitlements.publish` in the same transaction (as a
//!   fallback: right after the commit the consumer's fast path publishes them itself).
//! * `entitlements.publish` `{account_id}` — publish the account's *current* facts to Redis
//!   (stream + L2). Runs only after the facts committed; at-least-once (edges keep the highest
//!   version, so a repeat is harmless).
//! * `billing.schedule` `{subscription…}` — upsert the billing schedule in billing_prod through
//!   its inbox (idempotent by event id, and never applying an older subscription revision), and
//!   make the invoice of a period the revision started.
//!
//! billing_prod's outbox, relayed by a second relay over the billing pool:
//! * `billing.payment_failed` — a charge failed: dunning opens or advances the invoice's case,
//!   and the subscription becomes `past_due`.
//! * `billing.invoice_paid` — an invoice was paid: a `past_due` subscription is active again,
//!   and its dunning case is recovered.
//! * `billing.dunning_changed` — the account's dunning snapshot (versioned) for cf: facts, ban
//!   for bad debt, a required payment method.
//! * `billing.invoice_uncollectible` — dunning wrote an invoice off: its subscription is
//!   canceled.
//!
//! * `billing.invoice_finalized` — an invoice was numbered: an outbound event.
//!
//! Each billing topic is also recorded as an outbound lifecycle event ([`crate::events`]).
//!
//! And cf's `dunning.payment_method_added` `{account_id}` — a method became ready: billing's
//! dunning retries the account's waiting cases at once (through billing's inbox).

pub mod relay;
pub mod retention;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use prometheus_client::encoding::EncodeLabelValue;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;

use crate::ids::{AccountId, EventId};

pub use relay::{Lane, relay_lane_once, relay_once, run_relay};

/// `NOTIFY` channel the relay listens on.
pub const NOTIFY_CHANNEL: &str = "tollgate_outbox";

/// What an outbox row announces (the table's `CHECK` lists the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type, EncodeLabelValue)]
#[sqlx(type_name = "text")]
pub enum Topic {
    #[sqlx(rename = "entitlements.recompute")]
    EntitlementsRecompute,
    #[sqlx(rename = "entitlements.publish")]
    EntitlementsPublish,
    #[sqlx(rename = "billing.schedule")]
    BillingSchedule,
    /// billing_prod's outbox: an off-session charge failed.
    #[sqlx(rename = "billing.payment_failed")]
    BillingPaymentFailed,
    /// billing_prod's outbox: an invoice was paid.
    #[sqlx(rename = "billing.invoice_paid")]
    BillingInvoicePaid,
    /// billing_prod's outbox: what dunning says about an account changed.
    #[sqlx(rename = "billing.dunning_changed")]
    BillingDunningChanged,
    /// billing_prod's outbox: dunning gave an invoice up (written off).
    #[sqlx(rename = "billing.invoice_uncollectible")]
    BillingInvoiceUncollectible,
    /// billing_prod's outbox: an invoice was finalised (numbered, owed).
    #[sqlx(rename = "billing.invoice_finalized")]
    BillingInvoiceFinalized,
    /// billing_prod's outbox: a dispute opened, moved or was decided.
    #[sqlx(rename = "billing.dispute_changed")]
    BillingDisputeChanged,
    /// billing_prod's outbox: a support agent voided an open invoice.
    #[sqlx(rename = "billing.invoice_voided")]
    BillingInvoiceVoided,
    /// A payment method became ready: dunning retries at once.
    #[sqlx(rename = "dunning.payment_method_added")]
    DunningPaymentMethodAdded,
}

impl Topic {
    pub const ALL: [Topic; 11] = [
        Topic::EntitlementsRecompute,
        Topic::EntitlementsPublish,
        Topic::BillingSchedule,
        Topic::BillingPaymentFailed,
        Topic::BillingInvoicePaid,
        Topic::BillingDunningChanged,
        Topic::BillingInvoiceUncollectible,
        Topic::BillingInvoiceFinalized,
        Topic::BillingDisputeChanged,
        Topic::BillingInvoiceVoided,
        Topic::DunningPaymentMethodAdded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::EntitlementsRecompute => "entitlements.recompute",
            Self::EntitlementsPublish => "entitlements.publish",
            Self::BillingSchedule => "billing.schedule",
            Self::BillingPaymentFailed => "billing.payment_failed",
            Self::BillingInvoicePaid => "billing.invoice_paid",
            Self::BillingDunningChanged => "billing.dunning_changed",
            Self::BillingInvoiceUncollectible => "billing.invoice_uncollectible",
            Self::BillingInvoiceFinalized => "billing.invoice_finalized",
            Self::BillingDisputeChanged => "billing.dispute_changed",
            Self::BillingInvoiceVoided => "billing.invoice_voided",
            Self::DunningPaymentMethodAdded => "dunning.payment_method_added",
        }
    }
}

/// Writes an outbox row in the caller's transaction and notifies the relay on commit.
pub async fn enqueue(
    conn: &mut PgConnection,
    topic: Topic,
    payload: &impl Serialize,
    now: DateTime<Utc>,
) -> sqlx::Result<EventId> {
    insert(conn, topic, payload, now, now, true).await
}

/// Writes an outbox row that falls due only `after` from now, without waking the relay: the
/// durable twin of work a fast path does right after the commit ([`Delivery::after_commit`]).
/// The relay takes it if the fast path did not mark it done by then (the process died, the
/// fast path failed); until then no relay of any replica races the fast path for it.
pub async fn enqueue_fallback(
    conn: &mut PgConnection,
    topic: Topic,
    payload: &impl Serialize,
    now: DateTime<Utc>,
    after: chrono::TimeDelta,
) -> sqlx::Result<EventId> {
    insert(conn, topic, payload, now, now + after, false).await
}

/// One outbox row due at `available_at`; with `wake`, its `NOTIFY` in the same round trip (a
/// data-modifying CTE runs to completion).
async fn insert(
    conn: &mut PgConnection,
    topic: Topic,
    payload: &impl Serialize,
    now: DateTime<Utc>,
    available_at: DateTime<Utc>,
    wake: bool,
) -> sqlx::Result<EventId> {
    let id = EventId::new_v7();
    let payload = serde_json::to_value(payload).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let sql = if wake {
        "WITH queued AS (
            INSERT INTO outbox (id, topic, payload, created_at, available_at)
            VALUES ($1, $2, $3, $4, $5) RETURNING id)
         SELECT pg_notify($6, '') FROM queued"
    } else {
        "INSERT INTO outbox (id, topic, payload, created_at, available_at)
         VALUES ($1, $2, $3, $4, $5)"
    };
    let mut query = sqlx::query(sql)
        .bind(id)
        .bind(topic)
        .bind(payload)
        .bind(now)
        .bind(available_at);
    if wake {
        query = query.bind(NOTIFY_CHANNEL);
    }
    query.execute(&mut *conn).await?;
    Ok(id)
}

/// Payload of both entitlement topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AccountEvent {
    pub account_id: AccountId,
    /// When the change was written (wall clock, unix µs; [`crate::clock::wall_us`]), carried
    /// to the change event the edges measure propagation from (`ChangeEvent::changed_at_us`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at_us: Option<i64>,
}

/// Announces, in the caller's transaction, that something deciding an account's entitlements
/// changed (its standing, its subscription): the entitlements consumer recomputes its facts.
pub async fn account_changed(
    conn: &mut PgConnection,
    account: AccountId,
    now: DateTime<Utc>,
) -> sqlx::Result<EventId> {
    account_changed_at(conn, account, now, crate::clock::wall_us()).await
}

/// [`account_changed`] for a change written earlier elsewhere (a dunning step in billing):
/// propagation is measured from `changed_at_us` (wall clock, unix µs).
pub async fn account_changed_at(
    conn: &mut PgConnection,
    account: AccountId,
    now: DateTime<Utc>,
    changed_at_us: i64,
) -> sqlx::Result<EventId> {
    enqueue(
        conn,
        Topic::EntitlementsRecompute,
        &AccountEvent {
            account_id: account,
            changed_at_us: Some(changed_at_us),
        },
        now,
    )
    .await
}

/// Marks a row delivered outside the relay (a fast path did its work); `false` when the relay
/// (or another fast path) got there first.
pub async fn mark_processed(
    conn: &mut PgConnection,
    id: EventId,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE outbox SET processed_at = $2, attempts = attempts + 1
          WHERE id = $1 AND processed_at IS NULL",
    )
    .bind(id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Wakes the relays (delivered when the caller's transaction commits).
pub async fn notify(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(NOTIFY_CHANNEL)
        .execute(conn)
        .await
        .map(drop)
}

/// One row handed to its consumer.
pub struct Delivery {
    pub id: EventId,
    pub topic: Topic,
    pub payload: Value,
    /// The relay's clock when it claimed the row.
    pub now: DateTime<Utc>,
    after_commit: std::sync::Mutex<Vec<BoxFuture<'static, ()>>>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.id)
            .field("topic", &self.topic)
            .field("payload", &self.payload)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    pub fn new(id: EventId, topic: Topic, payload: Value, now: DateTime<Utc>) -> Self {
        Self {
            id,
            topic,
            payload,
            now,
            after_commit: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Work to run once the relay's transaction has committed this delivery's writes (and only
    /// then: dropped if the delivery fails or the commit does). For a fast path only: the
    /// same work must also be durable in the outbox, since the process may die before it runs
    /// or it may fail.
    pub fn after_commit(&self, work: BoxFuture<'static, ()>) {
        self.after_commit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(work);
    }

    fn take_after_commit(&self) -> Vec<BoxFuture<'static, ()>> {
        std::mem::take(
            &mut *self
                .after_commit
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The payload as the topic's type.
    pub fn payload<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_value(self.payload.clone())
            .map_err(|e| anyhow::anyhow!("{} payload: {e}", self.topic.as_str()))
    }
}

/// A consumer: applies one delivery, idempotently, in the relay's transaction (a savepoint of
/// it: its failure undoes only its own writes). `H` is what the process gives every consumer.
pub type Consumer<H> =
    for<'a> fn(&'a H, &'a mut PgConnection, &'a Delivery) -> BoxFuture<'a, anyhow::Result<()>>;

/// The consumer of each topic.
pub struct Consumers<H> {
    by_topic: HashMap<Topic, Consumer<H>>,
}

impl<H> Default for Consumers<H> {
    fn default() -> Self {
        Self {
            by_topic: HashMap::new(),
        }
    }
}

impl<H> Consumers<H> {
    /// Registers the consumer of `topic` (one per topic: a later one replaces it).
    pub fn on(mut self, topic: Topic, consumer: Consumer<H>) -> Self {
        self.by_topic.insert(topic, consumer);
        self
    }

    pub fn of(&self, topic: Topic) -> Option<Consumer<H>> {
        self.by_topic.get(&topic).copied()
    }
}

/// What the relay needs from the process it runs in.
pub trait Host: Sized + Send + Sync + 'static {
    /// The database whose `outbox` table this relay delivers (cf_prod or billing_prod).
    fn pool(&self) -> &PgPool;
    fn now(&self) -> DateTime<Utc>;
    fn consumers(&self) -> &Consumers<Self>;
    /// Wakes the relay after in-process writes (besides PostgreSQL `NOTIFY`).
    fn wake(&self) -> &Notify;
    /// Counts one applied (`ok`) or failed delivery.
    fn count(&self, topic: Topic, ok: bool);
}
