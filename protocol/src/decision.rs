//! What a check answers for one feature: a [`Decision`] and its [`Reason`].

use serde::{Deserialize, Serialize};

/// Why a feature was allowed or denied. Stable strings: product services and support rely on
/// them.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// A metered feature's usage plus the requested quantity would pass its quota.
    DeniedQuotaExceeded,
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
            Self::DeniedQuotaExceeded => "denied_quota_exceeded",
        }
    }
}

/// The decision for one feature of one account.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub allowed: bool,
    /// Numeric limit or metered quota, when the feature has one.
    pub limit: Option<i64>,
    pub reason: Reason,
}

#[cfg(test)]
mod tests {
    use super::*;

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
