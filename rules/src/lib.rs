//! Plan-to-feature rules.
//!
//! Today this crate holds the plan catalog and [`evaluate`], the single function that turns an
//! account's [`AccountFacts`] into a [`Decision`] for every feature. The control plane bills
//! from the same [`Catalog`] the edges grant from, so what is sold and what is granted cannot
//! drift. The rules issue replaces the body of [`evaluate`] with a WebAssembly module compiled
//! from the rule language; its callers do not change.

pub mod bundle;
pub mod compiler;
pub mod facts;
#[cfg(feature = "host")]
pub mod host;
pub mod interp;
pub mod ir;
pub mod lang;
pub mod testkit;
pub mod wasm;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tollgate_protocol::{AccountFacts, AccountStanding, Decision, Reason};

/// The kind of a feature, which decides what a decision carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// On or off.
    Bool,
    /// A numeric limit (e.g. seats).
    Limit,
    /// A metered quota per period (e.g. API calls per month).
    Metered,
}

impl FeatureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bool => "bool",
            Self::Limit => "limit",
            Self::Metered => "metered",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "bool" => Self::Bool,
            "limit" => Self::Limit,
            "metered" => Self::Metered,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feature {
    pub key: String,
    pub kind: FeatureKind,
    /// For metered features: the quota period (`month`).
    pub period: Option<String>,
}

/// Billing interval of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interval {
    Month,
    Year,
}

impl Interval {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Month => "month",
            Self::Year => "year",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "month" => Self::Month,
            "year" => Self::Year,
            _ => return None,
        })
    }
}

/// A plan's grant of one feature: bool features carry no value, limits and quotas do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub feature: String,
    pub limit: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub key: String,
    pub name: String,
    /// Price per interval in minor units of `currency`.
    pub price_minor: i64,
    /// ISO-4217, upper-case.
    pub currency: String,
    pub interval: Interval,
    pub grants: Vec<Grant>,
}

/// Features and plans: what can be sold and what it grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub features: Vec<Feature>,
    pub plans: Vec<Plan>,
}

/// A catalog that contradicts itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("feature `{0}` is declared twice")]
    DuplicateFeature(String),
    #[error("plan `{0}` is declared twice")]
    DuplicatePlan(String),
    #[error("plan `{plan}` grants unknown feature `{feature}`")]
    UnknownFeature { plan: String, feature: String },
    #[error("plan `{plan}` gives bool feature `{feature}` a limit")]
    LimitOnBool { plan: String, feature: String },
    #[error("plan `{plan}` has a negative price or limit")]
    Negative { plan: String },
    #[error("plan `{plan}` has currency `{currency}`, not a three-letter upper-case code")]
    BadCurrency { plan: String, currency: String },
}

impl Catalog {
    /// The demo catalog the start command and tests seed: `sso`, `exports`, `seats`,
    /// `api_calls`; plans `free`, `pro`, `enterprise` in USD per month.
    pub fn demo() -> Self {
        let feature = |key: &str, kind, period: Option<&str>| Feature {
            key: key.into(),
            kind,
            period: period.map(Into::into),
        };
        let grant = |feature: &str, limit: Option<i64>| Grant {
            feature: feature.into(),
            limit,
        };
        let plan = |key: &str, name: &str, price_minor, grants| Plan {
            key: key.into(),
            name: name.into(),
            price_minor,
            currency: "USD".into(),
            interval: Interval::Month,
            grants,
        };
        Self {
            features: vec![
                feature("sso", FeatureKind::Bool, None),
                feature("exports", FeatureKind::Bool, None),
                feature("seats", FeatureKind::Limit, None),
                feature("api_calls", FeatureKind::Metered, Some("month")),
            ],
            plans: vec![
                plan(
                    "free",
                    "Free",
                    0,
                    vec![grant("seats", Some(1)), grant("api_calls", Some(1_000))],
                ),
                plan(
                    "pro",
                    "Pro",
                    2_900,
                    vec![
                        grant("sso", None),
                        grant("exports", None),
                        grant("seats", Some(10)),
                        grant("api_calls", Some(100_000)),
                    ],
                ),
                plan(
                    "enterprise",
                    "Enterprise",
                    19_900,
                    vec![
                        grant("sso", None),
                        grant("exports", None),
                        grant("seats", Some(100)),
                        grant("api_calls", Some(5_000_000)),
                    ],
                ),
            ],
        }
    }

    /// Checks the catalog is self-consistent; reports every problem at once.
    pub fn validate(&self) -> Result<(), Vec<CatalogError>> {
        let mut errors = Vec::new();
        let mut kinds: HashMap<&str, FeatureKind> = HashMap::new();
        for f in &self.features {
            if kinds.insert(&f.key, f.kind).is_some() {
                errors.push(CatalogError::DuplicateFeature(f.key.clone()));
            }
        }
        let mut plans = std::collections::HashSet::new();
        for p in &self.plans {
            if !plans.insert(&p.key) {
                errors.push(CatalogError::DuplicatePlan(p.key.clone()));
            }
            if p.price_minor < 0 || p.grants.iter().any(|g| g.limit.is_some_and(|l| l < 0)) {
                errors.push(CatalogError::Negative {
                    plan: p.key.clone(),
                });
            }
            if p.currency.len() != 3 || !p.currency.bytes().all(|b| b.is_ascii_uppercase()) {
                errors.push(CatalogError::BadCurrency {
                    plan: p.key.clone(),
                    currency: p.currency.clone(),
                });
            }
            for g in &p.grants {
                match kinds.get(g.feature.as_str()) {
                    None => errors.push(CatalogError::UnknownFeature {
                        plan: p.key.clone(),
                        feature: g.feature.clone(),
                    }),
                    Some(FeatureKind::Bool) if g.limit.is_some() => {
                        errors.push(CatalogError::LimitOnBool {
                            plan: p.key.clone(),
                            feature: g.feature.clone(),
                        })
                    }
                    Some(_) => {}
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    pub fn plan(&self, key: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| p.key == key)
    }

    /// Position of a feature in [`Catalog::features`], the index of its decision.
    pub fn feature_index(&self, key: &str) -> Option<usize> {
        self.features.iter().position(|f| f.key == key)
    }
}

/// Decides every feature of the catalog for one account, in [`Catalog::features`] order.
///
/// Order of rules: a banned account is denied everything; without a subscription that grants
/// (trialing, active, past due) nothing is granted; otherwise the plan's grants decide.
/// A subscription naming a plan the catalog does not know grants nothing.
pub fn evaluate(catalog: &Catalog, facts: &AccountFacts) -> Vec<Decision> {
    let plan = facts
        .subscription
        .as_ref()
        .filter(|s| s.status.grants())
        .and_then(|s| catalog.plan(&s.plan));
    catalog
        .features
        .iter()
        .map(|feature| {
            if facts.standing == AccountStanding::Banned {
                return Decision {
                    allowed: false,
                    limit: None,
                    reason: Reason::DeniedBanned,
                };
            }
            let Some(plan) = plan else {
                return Decision {
                    allowed: false,
                    limit: None,
                    reason: Reason::DeniedNoSubscription,
                };
            };
            match plan.grants.iter().find(|g| g.feature == feature.key) {
                Some(grant) => Decision {
                    allowed: true,
                    limit: grant.limit,
                    reason: Reason::GrantedByPlan,
                },
                None => Decision {
                    allowed: false,
                    limit: None,
                    reason: Reason::DeniedNotInPlan,
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_protocol::{AccountId, SubscriptionFacts, SubscriptionStatus};
    use uuid::Uuid;

    fn facts(standing: AccountStanding, sub: Option<(&str, SubscriptionStatus)>) -> AccountFacts {
        AccountFacts {
            account_id: AccountId(Uuid::nil()),
            version: 1,
            standing,
            subscription: sub.map(|(plan, status)| SubscriptionFacts {
                plan: plan.into(),
                status,
                current_period_end_ms: 0,
            }),
            ..AccountFacts::new(AccountId(Uuid::nil()), 0)
        }
    }

    fn decide(f: &AccountFacts, feature: &str) -> Decision {
        let catalog = Catalog::demo();
        let i = catalog.feature_index(feature).expect("feature exists");
        evaluate(&catalog, f).swap_remove(i)
    }

    #[test]
    fn demo_catalog_is_valid() {
        assert_eq!(Catalog::demo().validate(), Ok(()));
    }

    #[test]
    fn decisions_follow_standing_subscription_and_plan() {
        use AccountStanding::{Active, Banned};
        use SubscriptionStatus::{Active as SubActive, Canceled, PastDue, Trialing};
        let cases: &[(AccountFacts, &str, bool, Option<i64>, Reason)] = &[
            (
                facts(Active, Some(("pro", SubActive))),
                "sso",
                true,
                None,
                Reason::GrantedByPlan,
            ),
            (
                facts(Active, Some(("pro", SubActive))),
                "seats",
                true,
                Some(10),
                Reason::GrantedByPlan,
            ),
            (
                facts(Active, Some(("pro", Trialing))),
                "exports",
                true,
                None,
                Reason::GrantedByPlan,
            ),
            (
                facts(Active, Some(("pro", PastDue))),
                "sso",
                true,
                None,
                Reason::GrantedByPlan,
            ),
            (
                facts(Active, Some(("free", SubActive))),
                "sso",
                false,
                None,
                Reason::DeniedNotInPlan,
            ),
            (
                facts(Active, Some(("free", SubActive))),
                "api_calls",
                true,
                Some(1_000),
                Reason::GrantedByPlan,
            ),
            (
                facts(Active, Some(("enterprise", SubActive))),
                "api_calls",
                true,
                Some(5_000_000),
                Reason::GrantedByPlan,
            ),
            (
                facts(Active, Some(("pro", Canceled))),
                "sso",
                false,
                None,
                Reason::DeniedNoSubscription,
            ),
            (
                facts(Active, None),
                "seats",
                false,
                None,
                Reason::DeniedNoSubscription,
            ),
            (
                facts(Active, Some(("gone", SubActive))),
                "sso",
                false,
                None,
                Reason::DeniedNoSubscription,
            ),
            (
                facts(Banned, Some(("enterprise", SubActive))),
                "sso",
                false,
                None,
                Reason::DeniedBanned,
            ),
        ];
        for (f, feature, allowed, limit, reason) in cases {
            let d = decide(f, feature);
            assert_eq!(
                (d.allowed, d.limit, d.reason),
                (*allowed, *limit, *reason),
                "{feature} for {f:?}"
            );
        }
    }

    #[test]
    fn validation_reports_every_problem_at_once() {
        let mut c = Catalog::demo();
        c.features.push(c.features[0].clone());
        c.plans[0].grants.push(Grant {
            feature: "nope".into(),
            limit: None,
        });
        c.plans[1].grants[0].limit = Some(3);
        c.plans[2].currency = "usd".into();
        let errors = c.validate().expect_err("invalid");
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors.contains(&CatalogError::DuplicateFeature("sso".into())));
        assert!(errors.contains(&CatalogError::LimitOnBool {
            plan: "pro".into(),
            feature: "sso".into()
        }));
    }
}
