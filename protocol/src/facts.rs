//! What the control plane knows about an account that decides its entitlements, and how it
//! travels: [`AccountFacts`] (versioned per account), [`ChangeEvent`] (one entry of the change
//! stream) and the batch form edges ask for ([`FactsRequest`] → [`FactsBatch`]).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An account's id: the one key every store and cache uses.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

impl From<Uuid> for AccountId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

/// A stored state string no variant names (a newer writer, a corrupted row): an error, never
/// a default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownState {
    pub what: &'static str,
    pub value: String,
}

impl fmt::Display for UnknownState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown {} `{}`", self.what, self.value)
    }
}

impl std::error::Error for UnknownState {}

/// Account standing as set by support or dunning.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountStanding {
    Active,
    Banned,
}

impl AccountStanding {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Banned => "banned",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Active, Self::Banned]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

impl TryFrom<String> for AccountStanding {
    type Error = UnknownState;
    fn try_from(s: String) -> Result<Self, UnknownState> {
        Self::parse(&s).ok_or(UnknownState {
            what: "account standing",
            value: s,
        })
    }
}

/// Subscription status, as Stripe names them.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    Trialing,
    Active,
    PastDue,
    Canceled,
    /// Dunning gave up and the policy keeps the subscription, unrenewed and granting nothing,
    /// until its invoice is paid (then it is active again).
    Unpaid,
}

impl SubscriptionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trialing => "trialing",
            Self::Active => "active",
            Self::PastDue => "past_due",
            Self::Canceled => "canceled",
            Self::Unpaid => "unpaid",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "trialing" => Self::Trialing,
            "active" => Self::Active,
            "past_due" => Self::PastDue,
            "canceled" => Self::Canceled,
            "unpaid" => Self::Unpaid,
            _ => return None,
        })
    }

    /// Whether a subscription in this status grants its plan's features.
    pub fn grants(self) -> bool {
        matches!(self, Self::Trialing | Self::Active | Self::PastDue)
    }
}

impl TryFrom<String> for SubscriptionStatus {
    type Error = UnknownState;
    fn try_from(s: String) -> Result<Self, UnknownState> {
        Self::parse(&s).ok_or(UnknownState {
            what: "subscription status",
            value: s,
        })
    }
}

/// The subscription part of an account's facts.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionFacts {
    pub plan: String,
    pub status: SubscriptionStatus,
    /// Unix milliseconds.
    pub current_period_end_ms: i64,
    /// The subscription's billing anchor (unix ms): monthly and yearly meters count usage in
    /// its periods ([`crate::usage::MeterPeriod::bounds_for`]). Absent in facts from before
    /// anchored periods: calendar periods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_anchor_ms: Option<i64>,
}

/// A support agent's per-account override of one feature.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum FeatureOverride {
    Deny,
    Grant { limit: Option<i64> },
}

/// Everything that decides an account's entitlements. Computed and versioned by the control
/// plane; edges evaluate it against the active rule bundle to materialise decisions.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEvent {
    pub facts: AccountFacts,
    /// When the control plane published the change, after its commit (unix ms, wall clock),
    /// for propagation metrics.
    pub committed_at_ms: i64,
    /// When the change that produced these facts was written in the control plane (unix µs,
    /// wall clock): in the change's own transaction — a checkout, a cancel, a ban, a dunning
    /// step — just before it committed. Propagation is measured from here. Absent when there
    /// is no such change (facts republished by a repair, or an older control plane).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at_us: Option<i64>,
}

/// Buckets (ms) of the propagation histograms: the control plane's change → publish and the
/// edge's change → applied. Fine below 5 ms, where the bound is.
pub const PROPAGATION_BUCKETS_MS: [f64; 16] = [
    0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0, 5000.0,
];

/// Most accounts one [`FactsRequest`] may name.
pub const FACTS_BATCH_MAX: usize = 256;

/// An edge asks for the facts of several accounts at once (a batch check, a revalidation).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactsRequest {
    pub accounts: Vec<AccountId>,
}

/// The facts of the accounts of a [`FactsRequest`] that exist, in no particular order.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FactsBatch {
    pub facts: Vec<AccountFacts>,
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
                    billing_anchor_ms: None,
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
            changed_at_us: Some(999),
        };
        let json = serde_json::to_string(&ev).expect("serialize");
        assert!(json.contains("\"past_due\""), "{json}");
        let back: ChangeEvent = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, ev);
    }
}
