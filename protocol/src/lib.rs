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

use std::collections::BTreeMap;
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

/// A support agent's per-account override of one feature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum FeatureOverride {
    Deny,
    Grant { limit: Option<i64> },
}

/// Everything that decides an account's entitlements. Computed and versioned by the control
/// plane; edges evaluate it against the active rule bundle to materialise decisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountFacts {
    pub account_id: AccountId,
    /// Grows by one with every change that alters the facts. Edges keep the highest they saw.
    pub version: i64,
    pub standing: AccountStanding,
    /// The subscription that currently grants features, if any.
    pub subscription: Option<SubscriptionFacts>,
    /// Dunning escalation level (0: none).
    #[serde(default)]
    pub dunning_level: i64,
    /// Days the oldest unpaid invoice is past due (0: none).
    #[serde(default)]
    pub days_past_due: i64,
    /// Add-on key → quantity.
    #[serde(default)]
    pub addons: BTreeMap<String, i64>,
    /// Feature key → support override.
    #[serde(default)]
    pub overrides: BTreeMap<String, FeatureOverride>,
}

impl AccountFacts {
    /// An active account without subscription, dunning, add-ons or overrides.
    pub fn new(account_id: AccountId, version: i64) -> Self {
        Self {
            account_id,
            version,
            standing: AccountStanding::Active,
            subscription: None,
            dunning_level: 0,
            days_past_due: 0,
            addons: BTreeMap::new(),
            overrides: BTreeMap::new(),
        }
    }
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
    GrantedByAddon,
    GrantedByRule,
    DeniedByRule,
    DeniedPastDue,
    CappedByRule,
    Override,
    UnknownAccount,
    /// The edge could not reach the control plane for an account it never saw; the feature's
    /// fail-open / fail-closed policy decided.
    Fallback,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GrantedByPlan => "granted_by_plan",
            Self::DeniedNotInPlan => "denied_not_in_plan",
            Self::DeniedNoSubscription => "denied_no_subscription",
            Self::DeniedBanned => "denied_banned",
            Self::GrantedByAddon => "granted_by_addon",
            Self::GrantedByRule => "granted_by_rule",
            Self::DeniedByRule => "denied_by_rule",
            Self::DeniedPastDue => "denied_past_due",
            Self::CappedByRule => "capped_by_rule",
            Self::Override => "override",
            Self::UnknownAccount => "unknown_account",
            Self::Fallback => "fallback",
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

/// Which edges run a canary bundle: deterministic by edge id, so the same edges stay canaries
/// while the share grows, and the control plane, tests and tools agree.
pub mod canary {
    /// 64-bit FNV-1a: stable across processes and releases (unlike `DefaultHasher`).
    pub fn fnv1a(s: &str) -> u64 {
        s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// Whether `edge_id` is in a canary of `percent` (0-100) of the fleet.
    pub fn in_canary(edge_id: &str, percent: i32) -> bool {
        percent > 0 && (fnv1a(edge_id) % 100) < u64::try_from(percent).unwrap_or(0)
    }
}

/// Paths of the control plane's internal API used by edges.
pub mod internal_api {
    /// `GET` → [`super::AccountFacts`] (404 when the account does not exist).
    pub fn facts_path(account: &super::AccountId) -> String {
        format!("/internal/v1/accounts/{account}/facts")
    }
    /// `GET ?edge_id=…` → the signed rule bundle meant for this edge (`ETag` / `If-None-Match`).
    pub const BUNDLE_PATH: &str = "/internal/v1/bundle";
    /// `POST` `{bundle_version, last_error}` → 204: the edge reports what it runs.
    pub fn edge_status_path(edge_id: &str) -> String {
        format!("/internal/v1/edges/{edge_id}/status")
    }
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
                dunning_level: 0,
                days_past_due: 0,
                addons: BTreeMap::new(),
                overrides: BTreeMap::from([(
                    "sso".to_owned(),
                    FeatureOverride::Grant { limit: None },
                )]),
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
