//! Plan-to-feature rules: the language ([`lang`]), its lowered form ([`ir`]), the reference
//! interpreter ([`interp`]), the WebAssembly code generator ([`wasm`]) and host ([`host`]), the
//! compiler driver ([`compiler`]), the catalog bounds the compiler and bundle verification share
//! ([`bounds`]), signed bundles ([`bundle`]), the mapping from wire facts to the module's fact
//! vector ([`facts`]) and the `tollgate-rules` CLI.
//!
//! # Cargo features
//!
//! * `host` (default): the wasmtime host ([`host`]) that loads and runs compiled modules.
//! * `cli` (default): the `tollgate-rules` binary.
//! * `testkit` (off): the `testkit` module, hostile modules and bundles for the tests of every
//!   host that loads rules. Only `[dev-dependencies]` enable it (this crate's, the edge's, the
//!   control plane's), so it is never compiled into a build without tests.
//!
//! [`Catalog`] is the flat plan catalog the control plane's tables hold: it is seeded from the
//! stable bundle's manifest on promotion (and from [`Catalog::demo`] in tests), so what is sold
//! and what is granted come from one source.

pub mod bounds;
pub mod bundle;
pub mod compiler;
pub mod facts;
#[cfg(feature = "host")]
pub mod host;
pub mod interp;
pub mod ir;
pub mod lang;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod wasm;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub use ir::{FeatureKind, Interval};

/// The demo rules (`rules/examples/demo.tg`): the catalog the start command deploys and tests
/// use, in the rule language — the one source of the demo's features, plans and rules.
pub const DEMO_SOURCE: &str = include_str!("../examples/demo.tg");

/// [`DEMO_SOURCE`] compiled. It is a constant of this crate, compiled by its own tests, so a
/// failure here is a build defect, not an input error.
pub fn demo_program() -> ir::Program {
    let file = lang::SourceFile {
        name: "demo.tg".into(),
        text: DEMO_SOURCE.to_owned(),
    };
    match lang::compile_source(&file) {
        Ok((program, _)) => program,
        Err(diags) => panic!(
            "rules/examples/demo.tg does not compile: {}",
            diags[0].render(&file)
        ),
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feature {
    pub key: String,
    pub kind: FeatureKind,
    /// For metered features: the quota period (`month`).
    pub period: Option<String>,
    /// For metered features: aggregation, period, overage and lease size.
    pub meter: Option<tollgate_protocol::usage::MeterSpec>,
}

/// A plan's grant of one feature: bool features carry no value, limits and quotas do.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = PlanGrant))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub feature: String,
    /// The number granted; `None` for a bool feature and for an unlimited grant of a limit or
    /// metered feature (the feature's kind tells them apart: the language requires a limit
    /// feature's grant to say `= n` or `= unlimited`).
    pub limit: Option<i64>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// Days of trial before the first charge (0: none).
    #[serde(default)]
    pub trial_days: u32,
    /// How the plan prices its metered features' usage at period close.
    #[serde(default)]
    pub meters: Vec<PlanMeter>,
}

/// A plan's price for the usage of one metered feature (its meter has the feature's key).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanMeter {
    pub feature: String,
    pub pricing: ir::Pricing,
}

/// An add-on: bought on top of a plan in any quantity, each unit priced per interval and
/// changing what the plan grants ([`ir::AddonEffect`]: a grant, or `n` more of a limit per unit).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addon {
    pub key: String,
    pub name: String,
    /// Price of one unit per interval in minor units of `currency`.
    pub price_minor: i64,
    /// ISO-4217, upper-case.
    pub currency: String,
    pub interval: Interval,
    pub effects: Vec<AddonEffect>,
}

/// What one unit of an add-on does to one feature.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddonEffect {
    pub feature: String,
    pub effect: ir::AddonEffect,
}

/// Features, plans and add-ons: what can be sold and what it grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub features: Vec<Feature>,
    pub plans: Vec<Plan>,
    #[serde(default)]
    pub addons: Vec<Addon>,
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
    #[error("add-on `{0}` is declared twice")]
    DuplicateAddon(String),
    #[error("add-on `{addon}` changes unknown feature `{feature}`")]
    AddonUnknownFeature { addon: String, feature: String },
    #[error("add-on `{addon}` adds a limit to bool feature `{feature}`")]
    AddonLimitOnBool { addon: String, feature: String },
    #[error("add-on `{addon}` has a negative price or limit")]
    AddonNegative { addon: String },
    #[error("add-on `{addon}` has currency `{currency}`, not a three-letter upper-case code")]
    AddonBadCurrency { addon: String, currency: String },
}

impl Catalog {
    /// The catalog part of a compiled program (a bundle's manifest carries the same
    /// features, plans and add-ons): what the control plane's tables sell.
    pub fn from_parts(features: &[ir::Feature], plans: &[ir::Plan], addons: &[ir::Addon]) -> Self {
        Self {
            features: features
                .iter()
                .map(|f| Feature {
                    key: f.key.clone(),
                    kind: f.kind,
                    period: f.period.clone(),
                    meter: f.meter.clone(),
                })
                .collect(),
            plans: plans
                .iter()
                .map(|p| Plan {
                    key: p.key.clone(),
                    name: p.name.clone(),
                    price_minor: p.price_minor,
                    currency: p.currency.clone(),
                    interval: p.interval,
                    grants: p
                        .grants
                        .iter()
                        .filter_map(|g| {
                            let f = features.get(g.feature as usize)?;
                            Some(Grant {
                                feature: f.key.clone(),
                                limit: g.limit.finite(),
                            })
                        })
                        .collect(),
                    trial_days: p.trial_days,
                    meters: p
                        .meters
                        .iter()
                        .filter_map(|m| {
                            let f = features.get(m.feature as usize)?;
                            Some(PlanMeter {
                                feature: f.key.clone(),
                                pricing: m.pricing.clone(),
                            })
                        })
                        .collect(),
                })
                .collect(),
            addons: addons
                .iter()
                .map(|a| Addon {
                    key: a.key.clone(),
                    name: a.name.clone(),
                    price_minor: a.price_minor,
                    currency: a.currency.clone(),
                    interval: a.interval,
                    effects: a
                        .effects
                        .iter()
                        .filter_map(|(f, effect)| {
                            Some(AddonEffect {
                                feature: features.get(*f as usize)?.key.clone(),
                                effect: effect.clone(),
                            })
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// The demo catalog ([`DEMO_SOURCE`]): `sso`, `exports`, `seats`, `api_calls`; plans
    /// `free`, `pro`, `enterprise` in USD per month.
    pub fn demo() -> Self {
        let program = demo_program();
        Self::from_parts(&program.features, &program.plans, &program.addons)
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
        let mut addons = std::collections::HashSet::new();
        for a in &self.addons {
            if !addons.insert(&a.key) {
                errors.push(CatalogError::DuplicateAddon(a.key.clone()));
            }
            let negative_limit = a
                .effects
                .iter()
                .any(|e| matches!(e.effect, ir::AddonEffect::AddLimit(n) if n < 0));
            if a.price_minor < 0 || negative_limit {
                errors.push(CatalogError::AddonNegative {
                    addon: a.key.clone(),
                });
            }
            if a.currency.len() != 3 || !a.currency.bytes().all(|b| b.is_ascii_uppercase()) {
                errors.push(CatalogError::AddonBadCurrency {
                    addon: a.key.clone(),
                    currency: a.currency.clone(),
                });
            }
            for e in &a.effects {
                match kinds.get(e.feature.as_str()) {
                    None => errors.push(CatalogError::AddonUnknownFeature {
                        addon: a.key.clone(),
                        feature: e.feature.clone(),
                    }),
                    Some(FeatureKind::Bool) if matches!(e.effect, ir::AddonEffect::AddLimit(_)) => {
                        errors.push(CatalogError::AddonLimitOnBool {
                            addon: a.key.clone(),
                            feature: e.feature.clone(),
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

    pub fn addon(&self, key: &str) -> Option<&Addon> {
        self.addons.iter().find(|a| a.key == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_catalog_is_valid() {
        assert_eq!(Catalog::demo().validate(), Ok(()));
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

    #[test]
    fn the_demo_catalog_sells_extra_seats_and_bad_add_ons_are_reported() {
        let c = Catalog::demo();
        let seats = c.addon("extra_seats").expect("demo add-on");
        assert_eq!((seats.price_minor, seats.currency.as_str()), (500, "USD"));
        assert_eq!(
            seats.effects,
            [AddonEffect {
                feature: "seats".into(),
                effect: ir::AddonEffect::AddLimit(5)
            }]
        );
        let mut bad = c.clone();
        bad.addons.push(bad.addons[0].clone());
        bad.addons[0].effects.push(AddonEffect {
            feature: "sso".into(),
            effect: ir::AddonEffect::AddLimit(1),
        });
        bad.addons[0].effects.push(AddonEffect {
            feature: "nope".into(),
            effect: ir::AddonEffect::Grant,
        });
        bad.addons[1].price_minor = -1;
        bad.addons[1].currency = "usd".into();
        let errors = bad.validate().expect_err("invalid");
        assert_eq!(
            errors,
            [
                CatalogError::AddonLimitOnBool {
                    addon: "extra_seats".into(),
                    feature: "sso".into()
                },
                CatalogError::AddonUnknownFeature {
                    addon: "extra_seats".into(),
                    feature: "nope".into()
                },
                CatalogError::DuplicateAddon("extra_seats".into()),
                CatalogError::AddonNegative {
                    addon: "extra_seats".into()
                },
                CatalogError::AddonBadCurrency {
                    addon: "extra_seats".into(),
                    currency: "usd".into()
                },
            ]
        );
    }
}
