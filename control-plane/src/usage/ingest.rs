//! Storing a batch of usage events: refusing bad events one by one, placing the rest in
//! their periods, and the one statement that stores and counts them (see the module doc of
//! [`crate::usage`]).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;
use tollgate_protocol::usage::{
    Aggregation, MeterAggregate, MeterSpec, RejectedEvent, UsageAck, UsageBatch, UsageEvent,
};
use uuid::Uuid;

use super::periods::{Placement, from_ms, place};
use super::store::{self, Columns};
use super::{BATCH_EVENTS_MAX, IngestError, valid_edge_id};
use crate::ids::AccountId;

/// Batch-level checks: the only reasons a whole batch is refused (an edge bug, never an
/// event's content).
pub(crate) fn validate(batch: &UsageBatch) -> Result<(), IngestError> {
    if batch.events.len() > BATCH_EVENTS_MAX {
        return Err(IngestError::TooLarge {
            events: batch.events.len(),
        });
    }
    if !valid_edge_id(&batch.edge_id) {
        return Err(IngestError::InvalidEdgeId);
    }
    Ok(())
}

/// What an event says, for "same id, other content": meter, quantity and properties. Not the
/// timestamp: an edge fills it in when the caller leaves it out, so an honest retry of one
/// event can carry another.
pub fn content_sha256(e: &UsageEvent) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut field = |b: &[u8]| {
        h.update(u64::try_from(b.len()).unwrap_or(u64::MAX).to_le_bytes());
        h.update(b);
    };
    field(e.meter.as_bytes());
    field(&e.quantity.to_le_bytes());
    for (k, v) in &e.properties {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    h.finalize().into()
}

impl Columns {
    fn push(&mut self, index: usize, e: &UsageEvent, c: Counted, hash: [u8; 32]) {
        self.index.push(index);
        self.ids.push(e.id.clone());
        self.accounts.push(e.account.0);
        self.meters.push(e.meter.clone());
        self.quantities.push(e.quantity);
        self.occurred_at.push(c.occurred_at);
        self.properties.push(serde_json::Value::Object(
            e.properties
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        ));
        self.period_starts.push(c.at.start);
        self.period_ends.push(c.at.end);
        self.late.push(c.at.late);
        self.aggregations.push(c.aggregation);
        self.unique_values.push(c.unique_value);
        self.hashes.push(hash.to_vec());
    }
}

/// How an event is counted.
pub(crate) struct Counted {
    occurred_at: DateTime<Utc>,
    at: Placement,
    aggregation: &'static str,
    unique_value: Option<String>,
}

/// Why one event of a batch is not stored (the batch goes on without it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub code: &'static str,
    pub detail: String,
}

pub(crate) fn refusal(code: &'static str, detail: impl Into<String>) -> Refusal {
    Refusal {
        code,
        detail: detail.into(),
    }
}

/// The accounts of a batch: `None` for one that does not exist, else its billing anchor
/// (`Some(None)`: no subscription, calendar periods).
pub type Accounts<'a> = dyn Fn(AccountId) -> Option<Option<DateTime<Utc>>> + Sync + 'a;

/// Where an event counts, or why it cannot be stored.
pub(crate) fn counted(
    meters: &HashMap<String, MeterSpec>,
    accounts: &Accounts<'_>,
    e: &UsageEvent,
    now: DateTime<Utc>,
    grace: TimeDelta,
) -> Result<Counted, Refusal> {
    tollgate_protocol::usage::validate_event(e)
        .map_err(|err| refusal(err.code(), err.to_string()))?;
    let Some(anchor) = accounts(e.account) else {
        return Err(refusal(
            "unknown_account",
            format!("no account {}", e.account),
        ));
    };
    let Some(spec) = meters.get(&e.meter) else {
        return Err(refusal(
            "unknown_meter",
            format!("no bundle in force (stable or canary) meters `{}`", e.meter),
        ));
    };
    let occurred_at = from_ms(e.timestamp_ms);
    let unique_value = match &spec.aggregation {
        Aggregation::UniqueCount { property } => Some(
            e.properties
                .get(property)
                .ok_or_else(|| {
                    refusal(
                        "missing_property",
                        format!("meter `{}` counts distinct `{property}`", e.meter),
                    )
                })?
                .clone(),
        ),
        _ => None,
    };
    Ok(Counted {
        occurred_at,
        at: place(spec.period, anchor, occurred_at, now, grace),
        aggregation: spec.aggregation.as_str(),
        unique_value,
    })
}

/// Stores a batch: each (account, event id) once, every fresh event, and the aggregates it
/// changes — in one statement (one round trip, atomic). See the module doc.
///
/// Events are refused one by one, never the batch: one that breaks the shared bounds
/// ([`tollgate_protocol::usage::validate_event`]), names an account that does not exist
/// (`accounts`) or a meter no bundle in force declares, lacks its `unique_count`
/// property, repeats an id of the batch with other content (every such occurrence), or reuses
/// an id stored before with other content, is listed in [`UsageAck::rejected`] and neither
/// stored nor counted.
///
/// `aggregates` of the ack are every aggregate an event of the batch that was not refused
/// names, after the statement. For a duplicate the key is computed as if it arrived now (the
/// same key unless a retry crossed the end of its grace window).
#[tracing::instrument(skip_all, fields(batch_id = %batch.batch_id, edge_id = %batch.edge_id, events = batch.events.len()))]
pub async fn ingest(
    pool: &PgPool,
    meters: &HashMap<String, MeterSpec>,
    accounts: &Accounts<'_>,
    batch: &UsageBatch,
    now: DateTime<Utc>,
    grace: TimeDelta,
) -> Result<UsageAck, IngestError> {
    validate(batch)?;
    let mut rejected: Vec<RejectedEvent> = Vec::new();
    let reject = |rejected: &mut Vec<RejectedEvent>, index: usize, e: &UsageEvent, r: Refusal| {
        rejected.push(RejectedEvent {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            id: e.id.clone(),
            code: r.code.to_owned(),
            detail: r.detail,
        });
    };
    // First occurrence of each (account, id) and its content; ids seen with two contents.
    let mut first: HashMap<(AccountId, &str), (usize, [u8; 32])> = HashMap::new();
    let mut conflicting: HashSet<(AccountId, &str)> = HashSet::new();
    for (index, e) in batch.events.iter().enumerate() {
        let hash = content_sha256(e);
        match first.get(&(e.account, e.id.as_str())) {
            Some((_, h)) if *h != hash => {
                conflicting.insert((e.account, e.id.as_str()));
            }
            Some(_) => {}
            None => {
                first.insert((e.account, e.id.as_str()), (index, hash));
            }
        }
    }
    let mut cols = Columns::default();
    for (index, e) in batch.events.iter().enumerate() {
        let key = (e.account, e.id.as_str());
        if conflicting.contains(&key) {
            let r = refusal(
                "conflicting_duplicate",
                "the batch holds this id twice with different contents",
            );
            reject(&mut rejected, index, e, r);
            continue;
        }
        let Some((first_index, hash)) = first.get(&key).copied() else {
            continue;
        };
        if first_index != index {
            continue; // a repeat of an earlier event of the batch: counted once
        }
        match counted(meters, accounts, e, now, grace) {
            Ok(c) => cols.push(index, e, c, hash),
            Err(r) => reject(&mut rejected, index, e, r),
        }
    }
    let mut ack = UsageAck {
        batch_id: batch.batch_id,
        accepted: 0,
        duplicates: 0,
        late: Vec::new(),
        rejected: Vec::new(),
        aggregates: Vec::new(),
    };
    if !cols.ids.is_empty() {
        let row = store::ingest_statement(pool, &cols, now, &batch.edge_id, batch.batch_id).await?;
        let pairs = |accounts: Vec<Uuid>, ids: Vec<String>| -> HashSet<(Uuid, String)> {
            accounts.into_iter().zip(ids).collect()
        };
        let fresh = pairs(row.fresh_accounts, row.fresh_ids);
        let reused = pairs(row.reused_accounts, row.reused_ids);
        for (i, id) in cols.ids.iter().enumerate() {
            let key = (cols.accounts[i], id.clone());
            if fresh.contains(&key) {
                ack.accepted += 1;
                if cols.late[i] {
                    ack.late.push(id.clone());
                }
            } else if reused.contains(&key) {
                let e = &batch.events[cols.index[i]];
                let r = refusal(
                    "id_reused",
                    "this id was stored before with another meter, quantity or properties",
                );
                reject(&mut rejected, cols.index[i], e, r);
            }
        }
        assert!(
            fresh
                .iter()
                .all(|(a, id)| first.contains_key(&(AccountId(*a), id.as_str()))),
            "the ingest statement stored ids the batch does not hold"
        );
        ack.aggregates = row
            .accounts
            .into_iter()
            .zip(row.meters)
            .zip(row.starts.into_iter().zip(row.ends))
            .zip(row.values.into_iter().zip(row.events))
            .map(
                |(((account, meter), (start, end)), (value, events))| MeterAggregate {
                    account: AccountId(account),
                    meter,
                    period_start_ms: start.timestamp_millis(),
                    period_end_ms: end.timestamp_millis(),
                    value,
                    events,
                },
            )
            .collect();
    }
    rejected.sort_by_key(|r| r.index);
    ack.duplicates =
        to_u64(batch.events.len().saturating_sub(rejected.len())).saturating_sub(ack.accepted);
    ack.rejected = rejected;
    Ok(ack)
}

pub(crate) fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}
