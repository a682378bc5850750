//! The operator's side of the dead-letter file ([`crate::dead_letter`]): list, replay (store
//! the events that pass the bounds again, then remove them) and discard.

use std::collections::HashSet;

use tollgate_protocol::usage::{UsageEvent, validate_event};

use crate::dead_letter::DeadEntry;

use super::{StoreError, Usage, lock};

/// Events one dead-letter replay stores per request to the writer.
pub const REPLAY_CHUNK_EVENTS: usize = 1_000;

/// What a replay did.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ReplayReport {
    /// Entries stored in the log again (and removed from the dead-letter file).
    pub replayed: usize,
    /// Entries left: undecodable, still breaking the bounds, or not stored (buffer full).
    pub kept: usize,
}

impl Usage {
    /// The dead-lettered entries, oldest first, at most `limit`.
    pub fn dead_letters(&self, limit: usize) -> std::io::Result<(usize, Vec<DeadEntry>)> {
        let dead = lock(&self.dead);
        let mut entries = dead.entries()?;
        entries.truncate(limit);
        Ok((dead.len(), entries))
    }

    /// Stores every dead-lettered event that passes the bounds again (new records, same ids)
    /// and removes it from the dead-letter file. See [`crate::dead_letter`].
    pub async fn replay_dead_letters(&self) -> Result<ReplayReport, StoreError> {
        let dead = self.dead.clone();
        let entries = tokio::task::spawn_blocking(move || lock(&dead).entries())
            .await
            .map_err(|e| StoreError::Failed(e.to_string()))?
            .map_err(|e| StoreError::Failed(e.to_string()))?;
        let total = entries.len();
        let replayable: Vec<(u64, UsageEvent)> = entries
            .into_iter()
            .filter_map(|d| Some((d.seq, d.event?)))
            .filter(|(_, e)| validate_event(e).is_ok())
            .collect();
        let mut replayed = HashSet::new();
        for chunk in replayable.chunks(REPLAY_CHUNK_EVENTS) {
            let events: Vec<UsageEvent> = chunk.iter().map(|(_, e)| e.clone()).collect();
            match self.store(&events).await {
                Ok(_) => replayed.extend(chunk.iter().map(|(seq, _)| *seq)),
                Err(e) if replayed.is_empty() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "dead-letter replay stopped early");
                    break;
                }
            }
        }
        let n = replayed.len();
        let dead = self.dead.clone();
        tokio::task::spawn_blocking(move || lock(&dead).remove(&replayed))
            .await
            .map_err(|e| StoreError::Failed(e.to_string()))?
            .map_err(|e| StoreError::Failed(e.to_string()))?;
        self.refresh_gauges();
        tracing::info!(replayed = n, kept = total - n, "dead letters replayed");
        Ok(ReplayReport {
            replayed: n,
            kept: total - n,
        })
    }

    /// Removes every dead-lettered entry; returns how many.
    pub async fn discard_dead_letters(&self) -> std::io::Result<usize> {
        let dead = self.dead.clone();
        let n = tokio::task::spawn_blocking(move || {
            let mut dead = lock(&dead);
            let all: HashSet<u64> = dead.entries()?.iter().map(|e| e.seq).collect();
            dead.remove(&all)
        })
        .await
        .map_err(std::io::Error::other)??;
        self.refresh_gauges();
        tracing::warn!(discarded = n, "dead letters discarded by an operator");
        Ok(n)
    }
}
