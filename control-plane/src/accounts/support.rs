//! What a support agent does to an account (the NinjaPanel's writes on cf): ban and unban,
//! require a new payment method, notes. Each is audited in its own transaction
//! ([`crate::audit::audited`]) and what changes access reaches the edges through the facts
//! (the outbox row is in the same transaction).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgConnection;
use tollgate_protocol::AccountStanding;

use super::{Account, store};
use crate::audit::{self, Effect, Write};
use crate::error::{Error, Result};
use crate::events::{self, EventType};
use crate::ids::{AccountId, AgentId, NoteId};
use crate::outbox;
use crate::state::AppState;

async fn locked(conn: &mut PgConnection, id: AccountId) -> Result<Account> {
    store::get_account(conn, id, true)
        .await?
        .ok_or_else(|| Error::not_found("account"))
}

fn snapshot(a: &Account) -> serde_json::Value {
    json!({ "standing": a.standing, "payment_method_required": a.payment_method_required })
}

/// Bans (`banned = true`) or unbans the account: the rules then deny everything, with the
/// reason `denied_banned`, at every edge within the freshness bound. Banning a banned account
/// (or unbanning an active one) changes nothing and is answered as it is. Unbanning lifts a
/// ban for bad debt too; dunning bans again only when its debt grows.
pub async fn set_banned(
    state: &AppState,
    w: &Write<'_>,
    id: AccountId,
    banned: bool,
) -> Result<Account> {
    let out = audit::audited(&state.cf, w, async |tx| {
        let before = locked(tx, id).await?;
        let to = if banned {
            AccountStanding::Banned
        } else {
            AccountStanding::Active
        };
        if before.standing == to {
            return Ok(Effect::new(snapshot(&before), snapshot(&before), before));
        }
        store::set_standing(tx, id, to, banned.then_some("support")).await?;
        let after = locked(tx, id).await?;
        let kind = if banned {
            EventType::AccountBanned
        } else {
            EventType::AccountUnbanned
        };
        let why = json!({ "account_id": id, "reason": "support", "note": w.reason.as_str() });
        events::record(tx, kind, Some(id), &why, w.now).await?;
        outbox::account_changed(tx, id, w.now).await?;
        Ok(Effect::new(snapshot(&before), snapshot(&after), after))
    })
    .await?;
    state.outbox_wake.notify_waiters();
    Ok(out)
}

/// Requires a new payment method before the account buys or changes plans again (cleared when
/// one is added, as after a hard decline).
pub async fn require_payment_method(
    state: &AppState,
    w: &Write<'_>,
    id: AccountId,
) -> Result<Account> {
    audit::audited(&state.cf, w, async |tx| {
        let before = locked(tx, id).await?;
        store::set_payment_method_required(tx, id).await?;
        let after = locked(tx, id).await?;
        Ok(Effect::new(snapshot(&before), snapshot(&after), after))
    })
    .await
}

/// A support agent's note on an account.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Note {
    pub id: NoteId,
    pub agent_id: AgentId,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

/// Longest note, characters.
pub const NOTE_CHARS_MAX: usize = 5000;

/// Adds a note to the account.
pub async fn add_note(state: &AppState, w: &Write<'_>, id: AccountId, body: &str) -> Result<Note> {
    let body = body.trim();
    let n = body.chars().count();
    if n == 0 || n > NOTE_CHARS_MAX || !audit::printable(body) {
        return Err(Error::unprocessable(
            "invalid_note",
            format!("a note is 1-{NOTE_CHARS_MAX} characters"),
        ));
    }
    audit::audited(&state.cf, w, async |tx| {
        locked(tx, id).await?;
        let note = store::insert_note(tx, NoteId::new_v7(), id, w.agent.id, body, w.now).await?;
        Ok(Effect::new(
            json!(null),
            json!({ "note_id": note.id, "body": note.body }),
            note,
        ))
    })
    .await
}

/// The account's notes, newest first.
pub async fn notes(state: &AppState, id: AccountId) -> Result<Vec<Note>> {
    let mut conn = state.cf.acquire().await?;
    Ok(store::notes(&mut conn, id).await?)
}

/// Most accounts a search answers.
pub const SEARCH_MAX: i64 = 50;

/// Accounts by email or name (substring, any case), id or provider customer id.
pub async fn search(state: &AppState, q: &str) -> Result<Vec<Account>> {
    let q = q.trim();
    if q.is_empty() || q.chars().count() > 254 || q.chars().any(char::is_control) {
        return Err(Error::unprocessable(
            "invalid_query",
            "search for 1-254 characters of an email, name, account id or customer id",
        ));
    }
    let mut conn = state.cf.acquire().await?;
    Ok(store::search(&mut conn, q, SEARCH_MAX).await?)
}

/// One entry of an account's timeline.
#[derive(utoipa::ToSchema, Debug, Clone, Serialize)]
pub struct TimelineEntry {
    pub at: DateTime<Utc>,
    /// `event` (a lifecycle event), `agent_action`, or `note`.
    pub kind: &'static str,
    /// The event type, or the agent's action.
    pub what: String,
    /// The agent, for agent actions and notes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub detail: serde_json::Value,
}

/// Most entries a timeline shows, per source.
pub const TIMELINE_MAX: i64 = 200;

/// Every lifecycle event and agent action on the account (in both databases), newest first.
pub async fn timeline(state: &AppState, id: AccountId) -> Result<Vec<TimelineEntry>> {
    super::get(state, id).await?;
    let mut out = Vec::new();
    for e in events::of_account(state, id, TIMELINE_MAX).await? {
        out.push(TimelineEntry {
            at: e.occurred_at,
            kind: "event",
            what: e.kind,
            agent: None,
            reason: None,
            detail: e.payload,
        });
    }
    for pool in [&state.cf, &state.billing] {
        for a in audit::of_account(pool, id, TIMELINE_MAX).await? {
            out.push(TimelineEntry {
                at: a.at,
                kind: "agent_action",
                what: a.action,
                agent: Some(a.agent_email),
                reason: Some(a.reason),
                detail: json!({ "target": a.target, "before": a.before, "after": a.after }),
            });
        }
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.at));
    Ok(out)
}
