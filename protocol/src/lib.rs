//! The contract between the control plane and edge sidecars.
//!
//! Everything that crosses the wire between them is defined here and nowhere else:
//! * [`AccountFacts`] — what the control plane knows about one account that decides its
//!   entitlements, versioned per account (the version only ever grows).
//! * [`ChangeEvent`] — one entry of the Redis change stream: new facts for one account plus the
//!   commit time, so an edge can measure propagation.
//! * [`Decision`] / [`Reason`] — what a check answers for one feature.
//! * The Redis key names both sides agree on ([`redis_keys`]).
//!
//! Encoding is JSON on every channel (HTTP bodies and Redis stream fields); it is small, and
//! both sides are Rust, but JSON keeps the stream readable with `redis-cli` during incidents.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An account's id: the one key every store and cache uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccountId(pub Uuid);

impl AccountId {
    pub fn new_v7() -> Self {
        Self(Uuid::now_v7())
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for AccountId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Account standing as set by support or dunning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountStanding {
    Active,
    Banned,
}

/// Subscription status, as Stripe names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    Trialing,
    Active,
    PastDue,
    Canceled,
}

impl SubscriptionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trialing => "trialing",
            Self::Active => "active",
            Self::PastDue => "past_due",
            Self::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "trialing" => Self::Trialing,
            "active" => Self::Active,
            "past_due" => Self::PastDue,
            "canceled" => Self::Canceled,
            _ => return None,
        })
    }

    /// Whether a subscription in this status grants its plan's features.
    pub fn grants(self) -> bool {
        matches!(self, Self::Trialing | Self::Active | Self::PastDue)
    }
}

/// The subscription part of an account's facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionFacts {
    pub plan: String,
    pub status: SubscriptionStatus,
    /// Unix milliseconds.
    pub current_period_end_ms: i64,
}

/// Everything that decides an account's entitlements. Computed and versioned by the control
/// plane; edges evaluate it against the rules to materialise decisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountFacts {
    pub account_id: AccountId,
    /// Grows by one with every change that alters the facts. Edges keep the highest they saw.
    pub version: i64,
    pub standing: AccountStanding,
    /// The subscription that currently grants features, if any.
    pub subscription: Option<SubscriptionFacts>,
}

/// One entry of the change stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEvent {
    pub facts: AccountFacts,
    /// When the control plane published the change, after its commit (unix ms, wall clock),
    /// for propagation metrics.
    pub committed_at_ms: i64,
}

/// Why a feature was allowed or denied. Stable strings: product services and support rely on
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    GrantedByPlan,
    DeniedNotInPlan,
    DeniedNoSubscription,
    DeniedBanned,
    UnknownAccount,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GrantedByPlan => "granted_by_plan",
            Self::DeniedNotInPlan => "denied_not_in_plan",
            Self::DeniedNoSubscription => "denied_no_subscription",
            Self::DeniedBanned => "denied_banned",
            Self::UnknownAccount => "unknown_account",
        }
    }
}

/// The decision for one feature of one account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub allowed: bool,
    /// Numeric limit or metered quota, when the feature has one.
    pub limit: Option<i64>,
    pub reason: Reason,
}

/// Redis key names shared by the control plane (writer) and edges (readers).
pub mod redis_keys {
    /// The change stream every edge follows.
    pub const CHANGE_STREAM: &str = "tollgate:changes";
    /// Field of a stream entry holding a JSON [`super::ChangeEvent`].
    pub const CHANGE_FIELD: &str = "event";
    /// Upper bound on stream length (approximate trim); edges that fall further behind than
    /// this revalidate.
    pub const CHANGE_STREAM_MAXLEN: usize = 100_000;

    /// L2 copy of one account's facts (JSON [`super::AccountFacts`]).
    pub fn facts(account: &super::AccountId) -> String {
        format!("tollgate:facts:{account}")
    }
}

/// Paths of the control plane's internal API used by edges.
pub mod internal_api {
    /// `GET` → [`super::AccountFacts`] (404 when the account does not exist).
    pub fn facts_path(account: &super::AccountId) -> String {
        format!("/internal/v1/accounts/{account}/facts")
    }
    /// `GET` → the active catalog (`tollgate_rules::Catalog`).
    pub const CATALOG_PATH: &str = "/internal/v1/catalog";
    /// Header carrying the edge token.
    pub const EDGE_TOKEN_HEADER: &str = "authorization";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_event_round_trips_through_json() {
        let ev = ChangeEvent {
            facts: AccountFacts {
                account_id: AccountId(Uuid::nil()),
                version: 7,
                standing: AccountStanding::Active,
                subscription: Some(SubscriptionFacts {
                    plan: "pro".into(),
                    status: SubscriptionStatus::PastDue,
                    current_period_end_ms: 1_700_000_000_000,
                }),
            },
            committed_at_ms: 1,
        };
        let json = serde_json::to_string(&ev).expect("serialize");
        assert!(json.contains("\"past_due\""), "{json}");
        let back: ChangeEvent = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, ev);
    }

    #[test]
    fn reason_strings_are_stable() {
        for (r, s) in [
            (Reason::GrantedByPlan, "granted_by_plan"),
            (Reason::DeniedNotInPlan, "denied_not_in_plan"),
            (Reason::DeniedNoSubscription, "denied_no_subscription"),
            (Reason::DeniedBanned, "denied_banned"),
            (Reason::UnknownAccount, "unknown_account"),
        ] {
            assert_eq!(r.as_str(), s);
            assert_eq!(serde_json::to_string(&r).expect("ser"), format!("\"{s}\""));
        }
    }
}
