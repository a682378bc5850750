//! The bounds every catalog entry (and every name) of a shipped program keeps, checked by one
//! function, [`validate`], in two places: the compiler (which turns each [`CatalogIssue`]
//! into a diagnostic at the declaration it names) and bundle verification (which refuses a
//! manifest that breaks them with [`crate::bundle::BundleError::Catalog`], so a bundle made by
//! an older compiler or by hand is refused with a typed error rather than failing later in
//! PostgreSQL or at every usage event).
//!
//! | what | bound | why |
//! |---|---|---|
//! | feature, plan and add-on keys | [`validate_key`]: 1..=[`KEY_BYTES_MAX`] bytes of `A-Z a-z 0-9 _ . -` | the shared key bound: usage of a longer meter key is refused forever |
//! | `unique_count` property | an event property name ([`property_name_ok`]) | events with another one are refused, so the meter would never count |
//! | plan and add-on display names, rule and test names | 1..=[`DISPLAY_NAME_BYTES_MAX`] bytes, no control character | the manifest is stored as PostgreSQL `jsonb`, which refuses NUL; names are shown to people |
//! | prices (plans, add-ons) | 0..=[`PRICE_MINOR_MAX`] minor units | sums of a few stay far from `i64` overflow |
//! | currencies | three upper-case ASCII letters (ISO 4217) | the catalog's `char(3)` |
//! | trials | 0..=[`TRIAL_DAYS_MAX`] days | a trial is not a free plan |
//! | meter prices: per unit, tier unit and flat, package | 0..=[`PRICE_MINOR_MAX`] minor units | as prices |
//! | tier bounds, package sizes | 1..=[`METER_UNITS_MAX`] units | past any quota, and exact as JSON numbers |
//!
//! The structure of tiers (bounds ascend, the open `then` tier last) is the language's to
//! check ([`crate::lang`]); this module bounds values.
//!
//! [`KEY_BYTES_MAX`]: tollgate_protocol::usage::limits::KEY_BYTES_MAX
//! [`property_name_ok`]: tollgate_protocol::usage::property_name_ok

use tollgate_protocol::usage::{Aggregation, KeyError, property_name_ok, validate_key};

use crate::ir;

/// Longest plan or add-on display name, rule name or test name, bytes: room for any product
/// name in any script (200 bytes is 50 four-byte characters at worst), short enough for a
/// checkout line or a test report.
pub const DISPLAY_NAME_BYTES_MAX: usize = 200;
/// Largest price, in minor units: 10^11 (one billion in a two-decimal currency). Below 2^53,
/// so exact wherever the manifest's JSON is read as floating point, and 90 million of them
/// still sum below `i64::MAX`.
pub const PRICE_MINOR_MAX: i64 = 100_000_000_000;
/// Longest trial: two years.
pub const TRIAL_DAYS_MAX: u32 = 730;
/// Largest tier bound or package size, in units: 10^15, past any quota a plan grants and
/// below 2^53 (exact as a JSON number).
pub const METER_UNITS_MAX: i64 = 1_000_000_000_000_000;

/// Where in the catalog an issue is; indices are positions in the program's (and manifest's)
/// `features`, `plans` and `addons`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    FeatureKey(usize),
    /// The property a `unique_count` meter counts.
    FeatureProperty(usize),
    PlanKey(usize),
    PlanName(usize),
    PlanPrice(usize),
    PlanCurrency(usize),
    PlanTrial(usize),
    /// One value of a plan's meter pricing: `value` counts the values in the order
    /// [`pricing_values`] lists them.
    PlanMeter {
        plan: usize,
        meter: usize,
        value: usize,
    },
    AddonKey(usize),
    AddonName(usize),
    AddonPrice(usize),
    AddonCurrency(usize),
    /// A rule's name, by position among the rules.
    RuleName(usize),
    /// A test's name, by position among the tests.
    TestName(usize),
}

/// What is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The key (the entry's own) breaks [`validate_key`].
    #[error("{0}")]
    Key(KeyError),
    #[error(
        "property `{0}` cannot name an event property (1-{max} bytes, no control characters)",
        max = tollgate_protocol::usage::limits::KEY_BYTES_MAX
    )]
    Property(String),
    #[error("the name is empty")]
    NameEmpty,
    #[error("the name is {0} bytes; the most is {DISPLAY_NAME_BYTES_MAX}")]
    NameTooLong(usize),
    #[error("the name contains a control character ({0:?})")]
    NameControl(char),
    #[error("a price of {0} minor units is outside 0..={PRICE_MINOR_MAX}")]
    Price(i64),
    #[error("currency `{0}` is not an ISO-4217 code of three upper-case letters")]
    Currency(String),
    #[error("a trial of {0} days is longer than the {TRIAL_DAYS_MAX} allowed")]
    Trial(i64),
    #[error("{what} of {value} minor units is outside 0..={PRICE_MINOR_MAX}")]
    MeterPrice { what: &'static str, value: i64 },
    #[error("{what} of {value} units is outside 1..={METER_UNITS_MAX}")]
    MeterUnits { what: &'static str, value: i64 },
}

/// One bound a catalog entry breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} `{key}`: {problem}")]
pub struct CatalogIssue {
    pub site: Site,
    /// `feature`, `plan`, `add-on`, `rule` or `test`.
    pub what: &'static str,
    /// The entry's key as written (it may itself be the problem); a rule's or test's
    /// position for those, whose name may be unprintable.
    pub key: String,
    pub problem: Problem,
}

/// What a value of a meter's pricing is, for [`pricing_values`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PricingValue {
    /// Minor units of money.
    Price(&'static str),
    /// A number of units.
    Units(&'static str),
}

/// The values of a pricing, in a fixed order: per unit: the unit price; package: size, price;
/// tiers: for each tier its bound (if any), unit price and flat fee. [`Site::PlanMeter`]
/// counts in this order.
pub fn pricing_values(p: &ir::Pricing) -> Vec<(PricingValue, i64)> {
    match p {
        ir::Pricing::PerUnit { unit_minor } => {
            vec![(PricingValue::Price("a unit price"), *unit_minor)]
        }
        ir::Pricing::Package {
            size,
            package_minor,
        } => vec![
            (PricingValue::Units("a package size"), *size),
            (PricingValue::Price("a package price"), *package_minor),
        ],
        ir::Pricing::Graduated { tiers } | ir::Pricing::Volume { tiers } => tiers
            .iter()
            .flat_map(|t| {
                t.up_to
                    .map(|u| (PricingValue::Units("a tier bound"), u))
                    .into_iter()
                    .chain([
                        (PricingValue::Price("a unit price"), t.unit_minor),
                        (PricingValue::Price("a flat fee"), t.flat_minor),
                    ])
            })
            .collect(),
    }
}

fn key(what: &'static str, key: &str, site: Site, out: &mut Vec<CatalogIssue>) {
    if let Err(error) = validate_key(key) {
        out.push(CatalogIssue {
            site,
            what,
            key: key.into(),
            problem: Problem::Key(error),
        });
    }
}

fn name_problem(name: &str) -> Option<Problem> {
    if name.is_empty() {
        return Some(Problem::NameEmpty);
    }
    if name.len() > DISPLAY_NAME_BYTES_MAX {
        return Some(Problem::NameTooLong(name.len()));
    }
    name.chars()
        .find(|c| c.is_control())
        .map(Problem::NameControl)
}

fn price_problem(price_minor: i64) -> Option<Problem> {
    (!(0..=PRICE_MINOR_MAX).contains(&price_minor)).then_some(Problem::Price(price_minor))
}

fn currency_problem(currency: &str) -> Option<Problem> {
    let ok = currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase());
    (!ok).then(|| Problem::Currency(currency.into()))
}

/// The trial bound, for the compiler too (a trial literal that does not even fit `u32`).
pub fn trial_problem(days: i64) -> Option<Problem> {
    (!(0..=i64::from(TRIAL_DAYS_MAX)).contains(&days)).then_some(Problem::Trial(days))
}

fn pricing_problem(kind: PricingValue, value: i64) -> Option<Problem> {
    match kind {
        PricingValue::Price(what) => {
            (!(0..=PRICE_MINOR_MAX).contains(&value)).then_some(Problem::MeterPrice { what, value })
        }
        PricingValue::Units(what) => {
            (!(1..=METER_UNITS_MAX).contains(&value)).then_some(Problem::MeterUnits { what, value })
        }
    }
}

/// Every bound of the module doc, over a program's (or a manifest's) catalog and the names of
/// its rules and tests; every issue at once, in that order.
pub fn validate<'a>(
    features: &[ir::Feature],
    plans: &[ir::Plan],
    addons: &[ir::Addon],
    rule_names: impl IntoIterator<Item = &'a str>,
    test_names: impl IntoIterator<Item = &'a str>,
) -> Result<(), Vec<CatalogIssue>> {
    let mut out = Vec::new();
    for (i, f) in features.iter().enumerate() {
        key("feature", &f.key, Site::FeatureKey(i), &mut out);
        if let Some(Aggregation::UniqueCount { property }) =
            f.meter.as_ref().map(|m| &m.aggregation)
            && !property_name_ok(property)
        {
            out.push(CatalogIssue {
                site: Site::FeatureProperty(i),
                what: "feature",
                key: f.key.clone(),
                problem: Problem::Property(property.clone()),
            });
        }
    }
    for (i, p) in plans.iter().enumerate() {
        let issue = |site, problem| CatalogIssue {
            site,
            what: "plan",
            key: p.key.clone(),
            problem,
        };
        key("plan", &p.key, Site::PlanKey(i), &mut out);
        let problems = [
            (Site::PlanName(i), name_problem(&p.name)),
            (Site::PlanPrice(i), price_problem(p.price_minor)),
            (Site::PlanCurrency(i), currency_problem(&p.currency)),
            (Site::PlanTrial(i), trial_problem(i64::from(p.trial_days))),
        ];
        out.extend(
            problems
                .into_iter()
                .filter_map(|(site, problem)| Some(issue(site, problem?))),
        );
        for (m, meter) in p.meters.iter().enumerate() {
            for (v, (kind, value)) in pricing_values(&meter.pricing).into_iter().enumerate() {
                if let Some(problem) = pricing_problem(kind, value) {
                    let site = Site::PlanMeter {
                        plan: i,
                        meter: m,
                        value: v,
                    };
                    out.push(issue(site, problem));
                }
            }
        }
    }
    for (i, a) in addons.iter().enumerate() {
        key("add-on", &a.key, Site::AddonKey(i), &mut out);
        let problems = [
            (Site::AddonName(i), name_problem(&a.name)),
            (Site::AddonPrice(i), price_problem(a.price_minor)),
            (Site::AddonCurrency(i), currency_problem(&a.currency)),
        ];
        out.extend(problems.into_iter().filter_map(|(site, problem)| {
            Some(CatalogIssue {
                site,
                what: "add-on",
                key: a.key.clone(),
                problem: problem?,
            })
        }));
    }
    for (what, names, site) in [
        (
            "rule",
            rule_names.into_iter().collect::<Vec<_>>(),
            Site::RuleName as fn(usize) -> Site,
        ),
        ("test", test_names.into_iter().collect(), Site::TestName),
    ] {
        for (i, name) in names.into_iter().enumerate() {
            if let Some(problem) = name_problem(name) {
                out.push(CatalogIssue {
                    site: site(i),
                    what,
                    key: format!("#{}", i + 1),
                    problem,
                });
            }
        }
    }
    if out.is_empty() { Ok(()) } else { Err(out) }
}

/// What a program lacks to be worth shipping: a bundle without features grants nothing,
/// one without plans sells nothing, and one without tests passes the self-test gate of the
/// control plane and every edge without being tested at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Missing {
    #[error("no features")]
    Features,
    #[error("no plans")]
    Plans,
    #[error("no test blocks")]
    Tests,
}

/// Each [`Missing`] part of a program with these parts.
pub fn missing_parts(features: usize, plans: usize, tests: usize) -> Vec<Missing> {
    [
        (features, Missing::Features),
        (plans, Missing::Plans),
        (tests, Missing::Tests),
    ]
    .into_iter()
    .filter(|(n, _)| *n == 0)
    .map(|(_, m)| m)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Interval, Limit, Pricing, Tier};

    fn plan(key: &str) -> ir::Plan {
        ir::Plan {
            key: key.into(),
            name: "Pro".into(),
            price_minor: 100,
            currency: "USD".into(),
            interval: Interval::Month,
            trial_days: 0,
            grants: vec![ir::Grant {
                feature: 0,
                limit: Limit::None,
            }],
            meters: vec![],
        }
    }

    fn feature(key: &str) -> ir::Feature {
        ir::Feature {
            key: key.into(),
            kind: ir::FeatureKind::Bool,
            period: None,
            fail_open: false,
            meter: None,
        }
    }

    fn sites(features: &[ir::Feature], plans: &[ir::Plan], addons: &[ir::Addon]) -> Vec<Site> {
        validate(features, plans, addons, [], [])
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|i| i.site)
            .collect()
    }

    #[test]
    fn bounds_hold_exactly_at_their_limits() {
        let longest = "k".repeat(tollgate_protocol::usage::limits::KEY_BYTES_MAX);
        let mut p = plan(&longest);
        p.name = "é".repeat(DISPLAY_NAME_BYTES_MAX / 2);
        p.price_minor = PRICE_MINOR_MAX;
        p.trial_days = TRIAL_DAYS_MAX;
        p.meters = vec![ir::Meter {
            feature: 0,
            pricing: Pricing::Graduated {
                tiers: vec![
                    Tier {
                        up_to: Some(METER_UNITS_MAX),
                        unit_minor: PRICE_MINOR_MAX,
                        flat_minor: 0,
                    },
                    Tier {
                        up_to: None,
                        unit_minor: 0,
                        flat_minor: PRICE_MINOR_MAX,
                    },
                ],
            },
        }];
        assert_eq!(
            validate(&[feature(&longest)], &[p.clone()], &[], [], []),
            Ok(())
        );

        let over = format!("{longest}k");
        let mut bad = p;
        bad.key = over.clone();
        bad.name.push('x');
        bad.price_minor = PRICE_MINOR_MAX + 1;
        bad.trial_days = TRIAL_DAYS_MAX + 1;
        bad.currency = "usd".into();
        if let Pricing::Graduated { tiers } = &mut bad.meters[0].pricing {
            tiers[0].up_to = Some(METER_UNITS_MAX + 1);
            tiers[1].unit_minor = -1;
        }
        assert_eq!(
            sites(&[feature(&over)], &[bad], &[]),
            [
                Site::FeatureKey(0),
                Site::PlanKey(0),
                Site::PlanName(0),
                Site::PlanPrice(0),
                Site::PlanCurrency(0),
                Site::PlanTrial(0),
                Site::PlanMeter {
                    plan: 0,
                    meter: 0,
                    value: 0
                },
                Site::PlanMeter {
                    plan: 0,
                    meter: 0,
                    value: 3
                },
            ]
        );
    }

    #[test]
    fn names_refuse_control_characters_and_keys_refuse_other_bytes() {
        for name in ["Pro\0", "Pro\nPlan", "\u{7f}", "Pro\u{85}", ""] {
            let mut p = plan("pro");
            p.name = name.into();
            assert_eq!(sites(&[], &[p], &[]), [Site::PlanName(0)], "{name:?}");
        }
        let addon = ir::Addon {
            key: "extra seats".into(),
            name: "Extra\tseats".into(),
            price_minor: -1,
            currency: "EUR".into(),
            interval: Interval::Year,
            effects: vec![],
        };
        let issues = validate(&[], &[], &[addon], ["late\0exports"], [""]).expect_err("invalid");
        let text: Vec<String> = issues.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "add-on `extra seats`: a key is made of A-Z a-z 0-9 _ . - only",
                "add-on `extra seats`: the name contains a control character ('\\t')",
                "add-on `extra seats`: a price of -1 minor units is outside 0..=100000000000",
                "rule `#1`: the name contains a control character ('\\0')",
                "test `#1`: the name is empty",
            ]
        );
    }

    #[test]
    fn unique_count_properties_must_name_an_event_property() {
        let mut f = feature("users");
        f.kind = ir::FeatureKind::Metered;
        f.meter = Some(tollgate_protocol::usage::MeterSpec {
            aggregation: Aggregation::UniqueCount {
                property: "u".repeat(129),
            },
            period: tollgate_protocol::usage::MeterPeriod::Month,
            soft: false,
            lease: 1,
        });
        assert_eq!(sites(&[f], &[], &[]), [Site::FeatureProperty(0)]);
    }

    #[test]
    fn missing_parts_are_each_named() {
        assert_eq!(
            missing_parts(0, 0, 0),
            [Missing::Features, Missing::Plans, Missing::Tests]
        );
        assert_eq!(missing_parts(1, 0, 3), [Missing::Plans]);
        assert!(missing_parts(1, 1, 1).is_empty());
    }
}
