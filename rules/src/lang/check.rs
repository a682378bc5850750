//! Name resolution, types and semantic checks, elaborating the syntax tree into the typed,
//! index-resolved [`ir::Program`] as it goes (see [`super::lower`] for the last step).
//!
//! Every check reports and carries on, so one run finds every problem: a part that fails
//! resolves to `None` and whatever uses it is skipped silently (no second error for the same
//! cause). Declarations that did not parse are still known by name ([`ast::Item::Broken`]),
//! so their uses are not reported as unknown.

use std::collections::HashMap;

use super::ast::{
    self, Amount, BinOp, ExpectedLimit, ExprKind, GivenTarget, GivenValue, Name, UnOp,
};
use super::diag::{Diags, codes};
use super::fold;
use crate::bounds::{self, Site};
use crate::ir::{
    self, Action, AddonEffect, AddonIdx, ArithOp, BoolExpr, CmpOp, DEFAULT_LEASE, Expectation,
    Fact, FactVector, FeatureIdx, FeatureKind, IntExpr, Limit, OVERRIDE_DENY, OVERRIDE_GRANT,
    OVERRIDE_NONE, PlanIdx, ReasonCode, Shape, Span, SubStatus, Target,
};
use tollgate_protocol::usage::{Aggregation, MeterPeriod, MeterSpec};

/// Reason codes are written in the language exactly as edges answer them
/// ([`ReasonCode::as_str`]).
fn reason_names() -> impl ExactSizeIterator<Item = &'static str> {
    ReasonCode::ALL.iter().map(|r| r.as_str())
}

const STATUSES: [(&str, SubStatus); 5] = [
    ("none", SubStatus::None),
    ("trialing", SubStatus::Trialing),
    ("active", SubStatus::Active),
    ("past_due", SubStatus::PastDue),
    ("canceled", SubStatus::Canceled),
];

/// Feature names that would be read as action targets.
const RESERVED_FEATURES: [&str; 2] = ["all", "metered"];

/// A resolved declaration; `None` index: it was broken (already reported).
#[derive(Debug, Clone, Copy)]
struct Sym<I> {
    index: Option<I>,
    span: Span,
}

#[derive(Debug, Clone, Copy)]
struct FeatureSym {
    index: Option<(FeatureIdx, FeatureKind)>,
    span: Span,
}

/// The elaborated pieces, indices resolved. Assembled into a program by [`super::lower`].
#[derive(Debug, Default)]
pub(crate) struct Checked {
    pub features: Vec<ir::Feature>,
    pub plans: Vec<ir::Plan>,
    pub addons: Vec<ir::Addon>,
    pub rules: Vec<ir::Rule>,
    pub tests: Vec<ir::TestCase>,
    /// Where each catalog value was written, entry for entry with `features`, `plans` and
    /// `addons` (and the names of `rules` and `tests`): [`crate::bounds::validate`] names a
    /// [`Site`], this gives its span.
    pub spans: CatalogSpans,
}

#[derive(Debug, Default)]
pub(crate) struct CatalogSpans {
    features: Vec<FeatureSpans>,
    plans: Vec<PlanSpans>,
    addons: Vec<AddonSpans>,
    rule_names: Vec<Span>,
    test_names: Vec<Span>,
}

#[derive(Debug)]
struct FeatureSpans {
    key: Span,
    /// The `unique_count` property, or the key.
    property: Span,
}

#[derive(Debug)]
struct PlanSpans {
    key: Span,
    name: Span,
    price: Span,
    currency: Span,
    trial: Span,
    /// Per meter, its values in [`crate::bounds::pricing_values`] order.
    meters: Vec<Vec<Span>>,
}

#[derive(Debug)]
struct AddonSpans {
    key: Span,
    name: Span,
    price: Span,
    currency: Span,
}

impl CatalogSpans {
    /// The span of a site; the start of the file for one it does not know (never for
    /// issues of the checked program, whose entries it records one for one).
    pub fn span(&self, site: Site) -> Span {
        let plan = |i: usize| self.plans.get(i);
        let addon = |i: usize| self.addons.get(i);
        match site {
            Site::FeatureKey(i) => self.features.get(i).map(|f| f.key),
            Site::FeatureProperty(i) => self.features.get(i).map(|f| f.property),
            Site::PlanKey(i) => plan(i).map(|p| p.key),
            Site::PlanName(i) => plan(i).map(|p| p.name),
            Site::PlanPrice(i) => plan(i).map(|p| p.price),
            Site::PlanCurrency(i) => plan(i).map(|p| p.currency),
            Site::PlanTrial(i) => plan(i).map(|p| p.trial),
            Site::PlanMeter {
                plan: i,
                meter,
                value,
            } => plan(i)
                .and_then(|p| p.meters.get(meter))
                .and_then(|m| m.get(value))
                .copied(),
            Site::AddonKey(i) => addon(i).map(|a| a.key),
            Site::AddonName(i) => addon(i).map(|a| a.name),
            Site::AddonPrice(i) => addon(i).map(|a| a.price),
            Site::AddonCurrency(i) => addon(i).map(|a| a.currency),
            Site::RuleName(i) => self.rule_names.get(i).copied(),
            Site::TestName(i) => self.test_names.get(i).copied(),
        }
        .unwrap_or_default()
    }
}

/// The spans of a pricing's values, in [`crate::bounds::pricing_values`] order (a flat fee
/// not written is 0, at its tier).
fn pricing_spans(p: &ast::PricingDecl) -> Vec<Span> {
    match p {
        ast::PricingDecl::PerUnit(lit) => vec![lit.span],
        ast::PricingDecl::Package { size, price } => vec![size.span, price.span],
        ast::PricingDecl::Graduated(tiers) | ast::PricingDecl::Volume(tiers) => tiers
            .iter()
            .flat_map(|t| {
                t.up_to
                    .map(|u| u.span)
                    .into_iter()
                    .chain([t.unit.span, t.flat.map_or(t.span, |f| f.span)])
            })
            .collect(),
    }
}

/// A checked price: amount in minor units, currency, interval.
type Price = (i64, String, ir::Interval);

/// A typed expression during elaboration.
#[derive(Debug, Clone)]
enum Val {
    Int(IntExpr),
    Bool(BoolExpr),
    Status(IntExpr),
    Plan(IntExpr),
    OverrideMode(IntExpr),
    /// A bare name that is no fact: it means something only next to `==`/`!=` (a status, a
    /// plan key, an override mode).
    Word(Name),
}

impl Val {
    fn type_name(&self) -> &'static str {
        match self {
            Val::Int(_) => "an integer",
            Val::Bool(_) => "a boolean",
            Val::Status(_) => "a status",
            Val::Plan(_) => "a plan",
            Val::OverrideMode(_) => "an override mode",
            Val::Word(_) => "a name",
        }
    }
}

/// Levenshtein distance, or `None` for names too long to bother.
fn distance(a: &str, b: &str) -> Option<usize> {
    const MAX_LEN: usize = 64;
    if a.len() > MAX_LEN || b.len() > MAX_LEN {
        return None;
    }
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev.last().copied()
}

/// Most names a suggestion is searched among; past it there is none (keeps a huge source from
/// costing names × names distance computations).
const MAX_SUGGESTION_CANDIDATES: usize = 1_000;

/// "did you mean `x`?" for the closest candidate within a third of the name's length.
fn suggestion<'a>(
    name: &str,
    candidates: impl ExactSizeIterator<Item = &'a str>,
) -> Option<String> {
    if candidates.len() > MAX_SUGGESTION_CANDIDATES {
        return None;
    }
    let limit = (name.len() / 3).max(1);
    candidates
        .filter_map(|c| distance(name, c).map(|d| (d, c)))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

pub(crate) struct Checker<'a> {
    diags: &'a mut Diags,
    features: HashMap<String, FeatureSym>,
    plans: HashMap<String, Sym<PlanIdx>>,
    addons: HashMap<String, Sym<AddonIdx>>,
    out: Checked,
}

pub(crate) fn check(file: &ast::File, diags: &mut Diags) -> Checked {
    let mut c = Checker {
        diags,
        features: HashMap::new(),
        plans: HashMap::new(),
        addons: HashMap::new(),
        out: Checked::default(),
    };
    c.declare(file);
    c.define(file);
    c.out
}

impl Checker<'_> {
    fn duplicate(&mut self, what: &str, name: &str, span: Span, first: Span) {
        self.diags
            .duplicate(span, format!("{what} `{name}` is defined twice"), first);
    }

    /// Pass 1: every feature, plan and add-on name, so later items may be used before they
    /// are declared in the file.
    fn declare(&mut self, file: &ast::File) {
        let mut plan_count: PlanIdx = 0;
        let mut addon_count: AddonIdx = 0;
        for item in &file.items {
            match item {
                ast::Item::Feature(f) => {
                    if let Some(first) = self.features.get(&f.key.text) {
                        let first = first.span;
                        self.duplicate("feature", &f.key.text, f.key.span, first);
                        continue;
                    }
                    if RESERVED_FEATURES.contains(&f.key.text.as_str()) {
                        self.diags.error(
                            codes::RESERVED_NAME,
                            f.key.span,
                            format!(
                                "a feature cannot be called `{}`: rules use that word for a \
                                 group of features",
                                f.key.text
                            ),
                        );
                    }
                    let (kind, period, meter) = match &f.kind {
                        ast::KindDecl::Bool => (FeatureKind::Bool, None, None),
                        ast::KindDecl::Limit => (FeatureKind::Limit, None, None),
                        ast::KindDecl::Metered(m) => {
                            let meter = self.meter_spec(m);
                            (FeatureKind::Metered, Some(m.period.text.clone()), meter)
                        }
                    };
                    let index = FeatureIdx::try_from(self.out.features.len()).ok();
                    self.features.insert(
                        f.key.text.clone(),
                        FeatureSym {
                            index: index.map(|i| (i, kind)),
                            span: f.key.span,
                        },
                    );
                    let property = match &f.kind {
                        ast::KindDecl::Metered(ast::MeteredDecl {
                            aggregation: Some(ast::AggregationDecl::UniqueCount(p)),
                            ..
                        }) => p.span,
                        _ => f.key.span,
                    };
                    self.out.spans.features.push(FeatureSpans {
                        key: f.key.span,
                        property,
                    });
                    self.out.features.push(ir::Feature {
                        key: f.key.text.clone(),
                        kind,
                        period,
                        fail_open: f.fail_open,
                        meter,
                    });
                }
                ast::Item::Plan(p) => {
                    if let Some(first) = self.plans.get(&p.key.text) {
                        let first = first.span;
                        self.duplicate("plan", &p.key.text, p.key.span, first);
                        continue;
                    }
                    self.plans.insert(
                        p.key.text.clone(),
                        Sym {
                            index: Some(plan_count),
                            span: p.key.span,
                        },
                    );
                    plan_count += 1;
                }
                ast::Item::Addon(a) => {
                    if let Some(first) = self.addons.get(&a.key.text) {
                        let first = first.span;
                        self.duplicate("add-on", &a.key.text, a.key.span, first);
                        continue;
                    }
                    self.addons.insert(
                        a.key.text.clone(),
                        Sym {
                            index: Some(addon_count),
                            span: a.key.span,
                        },
                    );
                    addon_count += 1;
                }
                ast::Item::Broken { kind, key } => {
                    let span = key.span;
                    match kind {
                        ast::BrokenKind::Feature => {
                            self.features
                                .entry(key.text.clone())
                                .or_insert(FeatureSym { index: None, span });
                        }
                        ast::BrokenKind::Plan => {
                            self.plans
                                .entry(key.text.clone())
                                .or_insert(Sym { index: None, span });
                        }
                        ast::BrokenKind::Addon => {
                            self.addons
                                .entry(key.text.clone())
                                .or_insert(Sym { index: None, span });
                        }
                    }
                }
                ast::Item::Rule(_) | ast::Item::Test(_) => {}
            }
        }
    }

    /// Pass 2: bodies of plans and add-ons, rules and tests.
    fn define(&mut self, file: &ast::File) {
        let mut rule_names: HashMap<&str, Span> = HashMap::new();
        let mut test_names: HashMap<&str, Span> = HashMap::new();
        for item in &file.items {
            match item {
                ast::Item::Plan(p) => {
                    // Only the first of duplicates is defined (the index was given to it).
                    if self
                        .plans
                        .get(&p.key.text)
                        .is_some_and(|s| s.span == p.key.span)
                        && let Some((plan, spans)) = self.plan(p)
                    {
                        self.out.plans.push(plan);
                        self.out.spans.plans.push(spans);
                    }
                }
                ast::Item::Addon(a) => {
                    if self
                        .addons
                        .get(&a.key.text)
                        .is_some_and(|s| s.span == a.key.span)
                        && let Some((addon, spans)) = self.addon(a)
                    {
                        self.out.addons.push(addon);
                        self.out.spans.addons.push(spans);
                    }
                }
                ast::Item::Rule(r) => {
                    if let Some(first) = rule_names.get(r.name.value.as_str()) {
                        let first = *first;
                        self.duplicate("rule", &r.name.value, r.name.span, first);
                    } else {
                        rule_names.insert(&r.name.value, r.name.span);
                    }
                    if let Some(rule) = self.rule(r) {
                        self.out.rules.push(rule);
                        self.out.spans.rule_names.push(r.name.span);
                    }
                }
                ast::Item::Test(t) => {
                    if let Some(first) = test_names.get(t.name.value.as_str()) {
                        let first = *first;
                        self.duplicate("test", &t.name.value, t.name.span, first);
                    } else {
                        test_names.insert(&t.name.value, t.name.span);
                    }
                    if let Some(test) = self.test(t) {
                        self.out.tests.push(test);
                        self.out.spans.test_names.push(t.name.span);
                    }
                }
                ast::Item::Feature(_) | ast::Item::Broken { .. } => {}
            }
        }
        self.never_granted(file);
    }

    // ---- names --------------------------------------------------------------------------

    fn feature(&mut self, name: &Name) -> Option<(FeatureIdx, FeatureKind)> {
        match self.features.get(&name.text) {
            Some(sym) => sym.index,
            None => {
                let hint = suggestion(&name.text, self.features.keys().map(String::as_str));
                self.unknown(codes::UNKNOWN_FEATURE, "feature", name, hint);
                None
            }
        }
    }

    fn plan_index(&mut self, name: &Name) -> Option<PlanIdx> {
        match self.plans.get(&name.text) {
            Some(sym) => sym.index,
            None => {
                let hint = suggestion(&name.text, self.plans.keys().map(String::as_str));
                self.unknown(codes::UNKNOWN_PLAN, "plan", name, hint);
                None
            }
        }
    }

    fn addon_index(&mut self, name: &Name) -> Option<AddonIdx> {
        match self.addons.get(&name.text) {
            Some(sym) => sym.index,
            None => {
                let hint = suggestion(&name.text, self.addons.keys().map(String::as_str));
                self.unknown(codes::UNKNOWN_ADDON, "add-on", name, hint);
                None
            }
        }
    }

    fn unknown(&mut self, code: &'static str, what: &str, name: &Name, hint: Option<String>) {
        let message = format!("unknown {what} `{}`", name.text);
        match hint {
            Some(h) => self.diags.error_with_note(code, name.span, message, h),
            None => self.diags.error(code, name.span, message),
        }
    }

    fn reason(&mut self, name: &Name) -> Option<ReasonCode> {
        match ReasonCode::ALL.iter().find(|r| r.as_str() == name.text) {
            Some(r) => Some(*r),
            None => {
                let hint = suggestion(&name.text, reason_names()).unwrap_or_else(|| {
                    format!(
                        "reasons are {}",
                        reason_names().collect::<Vec<_>>().join(", ")
                    )
                });
                self.diags.error_with_note(
                    codes::UNKNOWN_REASON,
                    name.span,
                    format!("unknown reason `{}`", name.text),
                    hint,
                );
                None
            }
        }
    }

    fn status(&mut self, name: &Name) -> Option<SubStatus> {
        match STATUSES.iter().find(|(n, _)| *n == name.text) {
            Some((_, s)) => Some(*s),
            None => {
                self.diags.error_with_note(
                    codes::UNKNOWN_NAME,
                    name.span,
                    format!("unknown status `{}`", name.text),
                    "statuses are trialing, active, past_due, canceled, none",
                );
                None
            }
        }
    }

    fn type_mismatch(&mut self, span: Span, message: impl Into<String>) {
        self.diags.error(codes::TYPE_MISMATCH, span, message);
    }

    // ---- numbers and money --------------------------------------------------------------

    /// A literal that must be at least `min`; `None` when overflowed or out of range.
    /// The meter of a metered feature; `None` after reporting an error.
    fn meter_spec(&mut self, m: &ast::MeteredDecl) -> Option<MeterSpec> {
        let period = MeterPeriod::parse(&m.period.text)?;
        let aggregation = match &m.aggregation {
            None | Some(ast::AggregationDecl::Sum) => Aggregation::Sum,
            Some(ast::AggregationDecl::Count) => Aggregation::Count,
            Some(ast::AggregationDecl::Max) => Aggregation::Max,
            Some(ast::AggregationDecl::Latest) => Aggregation::Latest,
            Some(ast::AggregationDecl::UniqueCount(p)) => Aggregation::UniqueCount {
                property: p.text.clone(),
            },
        };
        let lease = match m.lease {
            Some(lit) => self.at_least(lit, 1, codes::INVALID_VALUE, "a lease size")?,
            None => DEFAULT_LEASE,
        };
        Some(MeterSpec {
            aggregation,
            period,
            soft: m.soft,
            lease,
        })
    }

    fn at_least(&mut self, lit: ast::Lit, min: i64, code: &'static str, what: &str) -> Option<i64> {
        let v = lit.value?;
        if v < min {
            let bound = if min == 0 {
                "negative".to_string()
            } else {
                format!("less than {min}")
            };
            self.diags.error(
                code,
                lit.span,
                format!("{what} must not be {bound}, found {v}"),
            );
            return None;
        }
        Some(v)
    }

    /// A price as written; its bounds (amount, currency) are [`bounds`]'s to check.
    fn money(&mut self, m: &ast::Money) -> Option<Price> {
        Some((m.amount.value?, m.currency.text.clone(), m.interval))
    }

    /// The tiers and whether their structure is sound (an error was reported if not);
    /// `None` when one of their numbers did not even parse.
    fn tiers(&mut self, tiers: &[ast::Tier], at: Span) -> Option<(Vec<ir::Tier>, bool)> {
        if tiers.is_empty() {
            self.diags.error(
                codes::INVALID_TIERS,
                at,
                "a tiered price needs at least one tier",
            );
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        let mut complete = true;
        let mut prev: Option<i64> = None;
        for (i, t) in tiers.iter().enumerate() {
            let last = i + 1 == tiers.len();
            let up_to = match t.up_to {
                Some(lit) => {
                    let v = lit.value;
                    match (v, prev) {
                        (Some(v), Some(p)) if v <= p => {
                            self.diags.error(
                                codes::TIERS_NOT_ASCENDING,
                                lit.span,
                                format!("tier bound {v} is not above the previous bound {p}"),
                            );
                            ok = false;
                        }
                        _ => {}
                    }
                    if let Some(v) = v {
                        prev = Some(v);
                    }
                    if last {
                        self.diags.error_with_note(
                            codes::INVALID_TIERS,
                            t.span,
                            "the last tier has a bound, so units above it have no price",
                            "end with `then at <price>`",
                        );
                        ok = false;
                    }
                    Some(v)
                }
                None => {
                    if !last {
                        self.diags.error(
                            codes::INVALID_TIERS,
                            t.span,
                            "the open `then` tier must be the last one",
                        );
                        ok = false;
                    }
                    None
                }
            };
            // Amounts are bounded by `bounds`.
            let unit = t.unit.value;
            let flat = match t.flat {
                Some(f) => f.value,
                None => Some(0),
            };
            match (up_to, unit, flat) {
                (Some(Some(u)), Some(unit), Some(flat)) => out.push(ir::Tier {
                    up_to: Some(u),
                    unit_minor: unit,
                    flat_minor: flat,
                }),
                (None, Some(unit), Some(flat)) => out.push(ir::Tier {
                    up_to: None,
                    unit_minor: unit,
                    flat_minor: flat,
                }),
                _ => complete = false,
            }
        }
        complete.then_some((out, ok))
    }

    /// The pricing and whether it is sound (an error was reported if not); `None` when one
    /// of its numbers did not parse. Amounts and sizes are bounded by [`bounds`], the
    /// structure of tiers is checked here.
    fn pricing(&mut self, p: &ast::PricingDecl, at: Span) -> Option<(ir::Pricing, bool)> {
        Some(match p {
            ast::PricingDecl::PerUnit(lit) => (
                ir::Pricing::PerUnit {
                    unit_minor: lit.value?,
                },
                true,
            ),
            ast::PricingDecl::Graduated(t) => {
                let (tiers, ok) = self.tiers(t, at)?;
                (ir::Pricing::Graduated { tiers }, ok)
            }
            ast::PricingDecl::Volume(t) => {
                let (tiers, ok) = self.tiers(t, at)?;
                (ir::Pricing::Volume { tiers }, ok)
            }
            ast::PricingDecl::Package { size, price } => (
                ir::Pricing::Package {
                    size: size.value?,
                    package_minor: price.value?,
                },
                true,
            ),
        })
    }

    // ---- plans and add-ons --------------------------------------------------------------

    /// The plan, with where its values were written. `Some` also for a plan with errors
    /// (each already reported) when its price and trial are known, so that [`bounds`]
    /// checks its values in the same run: after an error the program is never lowered.
    fn plan(&mut self, p: &ast::PlanDecl) -> Option<(ir::Plan, PlanSpans)> {
        let mut ok = true;
        let mut price: Option<(Span, Option<Price>)> = None;
        let mut money_spans = (p.key.span, p.key.span);
        let mut trial: Option<(Span, Option<u32>)> = None;
        let mut trial_span = p.key.span;
        let mut grants: Vec<ir::Grant> = Vec::new();
        let mut meters: Vec<(ir::Meter, Span)> = Vec::new();
        let mut meter_spans: Vec<Vec<Span>> = Vec::new();
        // Where each feature was first granted / metered: duplicates in O(1), however long.
        let mut granted_at: HashMap<FeatureIdx, Span> = HashMap::new();
        let mut metered_at: HashMap<FeatureIdx, Span> = HashMap::new();
        for clause in &p.clauses {
            match clause {
                ast::PlanClause::Price(m) => {
                    if let Some((first, _)) = &price {
                        let first = *first;
                        self.duplicate("price of plan", &p.key.text, m.span, first);
                        ok = false;
                        continue;
                    }
                    money_spans = (m.amount.span, m.currency.span);
                    price = Some((m.span, self.money(m)));
                }
                ast::PlanClause::Trial { days, span } => {
                    if let Some((first, _)) = &trial {
                        let first = *first;
                        self.duplicate("trial of plan", &p.key.text, *span, first);
                        ok = false;
                        continue;
                    }
                    trial_span = days.span;
                    let d = days.value.and_then(|d| u32::try_from(d).ok());
                    // Too long even for the program: the bound is `bounds`'s.
                    if let (None, Some(problem)) = (d, days.value.and_then(bounds::trial_problem)) {
                        self.diags.error(
                            codes::INVALID_VALUE,
                            days.span,
                            format!("plan `{}`: {problem}", p.key.text),
                        );
                    }
                    trial = Some((*span, d));
                }
                ast::PlanClause::Grant {
                    feature,
                    amount,
                    span,
                } => {
                    let Some((idx, kind)) = self.feature(feature) else {
                        ok = false;
                        continue;
                    };
                    if let Some(first) = granted_at.get(&idx) {
                        let first = *first;
                        self.duplicate("grant of", &feature.text, *span, first);
                        ok = false;
                        continue;
                    }
                    granted_at.insert(idx, *span);
                    match self.grant_limit(feature, kind, amount.as_ref()) {
                        Some(limit) => grants.push(ir::Grant {
                            feature: idx,
                            limit,
                        }),
                        None => ok = false,
                    }
                }
                ast::PlanClause::Meter {
                    feature,
                    pricing,
                    span,
                } => {
                    let Some((idx, kind)) = self.feature(feature) else {
                        ok = false;
                        continue;
                    };
                    if kind != FeatureKind::Metered {
                        self.type_mismatch(
                            feature.span,
                            format!(
                                "`{}` is a {} feature; only metered features have meters",
                                feature.text,
                                kind.as_str()
                            ),
                        );
                        ok = false;
                        continue;
                    }
                    if let Some(first) = metered_at.get(&idx) {
                        let first = *first;
                        self.duplicate("meter of", &feature.text, *span, first);
                        ok = false;
                        continue;
                    }
                    metered_at.insert(idx, *span);
                    match self.pricing(pricing, *span) {
                        Some((priced, sound)) => {
                            ok &= sound;
                            meters.push((
                                ir::Meter {
                                    feature: idx,
                                    pricing: priced,
                                },
                                *span,
                            ));
                            meter_spans.push(pricing_spans(pricing));
                        }
                        None => ok = false,
                    }
                }
            }
        }
        for (m, span) in &meters {
            if !granted_at.contains_key(&m.feature) {
                let key = self
                    .out
                    .features
                    .get(m.feature as usize)
                    .map_or("?", |f| f.key.as_str());
                self.diags.warning(
                    codes::METER_NOT_GRANTED,
                    *span,
                    format!(
                        "plan `{}` meters `{key}` but does not grant it, so the meter never counts",
                        p.key.text
                    ),
                );
            }
        }
        let price = match price {
            Some((_, price)) => price,
            None => {
                self.diags.error_with_note(
                    codes::MISSING_PRICE,
                    p.key.span,
                    format!("plan `{}` has no price", p.key.text),
                    "add `price <minor units> <CUR> per month`",
                );
                None
            }
        };
        let trial_days = match trial {
            // Not a number of days at all (reported): the rest of the plan is still checked.
            Some((_, None)) => {
                ok = false;
                0
            }
            Some((_, Some(d))) => d,
            None => 0,
        };
        let (price_minor, currency, interval) = price?;
        debug_assert!(
            ok || self.diags.has_errors(),
            "a broken plan without an error"
        );
        let spans = PlanSpans {
            key: p.key.span,
            name: p.name.span,
            price: money_spans.0,
            currency: money_spans.1,
            trial: trial_span,
            meters: meter_spans,
        };
        Some((
            ir::Plan {
                key: p.key.text.clone(),
                name: p.name.value.clone(),
                price_minor,
                currency,
                interval,
                trial_days,
                grants,
                meters: meters.into_iter().map(|(m, _)| m).collect(),
            },
            spans,
        ))
    }

    /// The limit a plan grants: none for bool features, required for the others.
    fn grant_limit(
        &mut self,
        feature: &Name,
        kind: FeatureKind,
        amount: Option<&Amount>,
    ) -> Option<Limit> {
        match (kind, amount) {
            (FeatureKind::Bool, None) => Some(Limit::None),
            (FeatureKind::Bool, Some(a)) => {
                let span = match a {
                    Amount::Int(l) => l.span,
                    Amount::Unlimited(s) => *s,
                };
                self.type_mismatch(
                    span,
                    format!("`{}` is a bool feature; it takes no limit", feature.text),
                );
                None
            }
            (_, None) => {
                self.diags.error_with_note(
                    codes::MISSING_LIMIT,
                    feature.span,
                    format!(
                        "`{}` is a {} feature; its grant needs a limit",
                        feature.text,
                        kind.as_str()
                    ),
                    format!("write `grant {} = <n>` or `= unlimited`", feature.text),
                );
                None
            }
            (_, Some(Amount::Unlimited(_))) => Some(Limit::Unlimited),
            (_, Some(Amount::Int(lit))) => self
                .at_least(*lit, 0, codes::INVALID_VALUE, "a limit")
                .map(Limit::Finite),
        }
    }

    /// The add-on, with where its values were written; `Some` also with errors (already
    /// reported), as for [`Self::plan`].
    fn addon(&mut self, a: &ast::AddonDecl) -> Option<(ir::Addon, AddonSpans)> {
        let mut ok = true;
        let mut price: Option<(Span, Option<Price>)> = None;
        let mut money_spans = (a.key.span, a.key.span);
        let mut effects: Vec<(FeatureIdx, AddonEffect)> = Vec::new();
        let mut effect_at: HashMap<FeatureIdx, Span> = HashMap::new();
        for clause in &a.clauses {
            let (feature, span) = match clause {
                ast::AddonClause::Price(m) => {
                    if let Some((first, _)) = &price {
                        let first = *first;
                        self.duplicate("price of add-on", &a.key.text, m.span, first);
                        ok = false;
                        continue;
                    }
                    money_spans = (m.amount.span, m.currency.span);
                    price = Some((m.span, self.money(m)));
                    continue;
                }
                ast::AddonClause::Grant { feature, span }
                | ast::AddonClause::AddLimit { feature, span, .. } => (feature, *span),
            };
            let Some((idx, kind)) = self.feature(feature) else {
                ok = false;
                continue;
            };
            if let Some(first) = effect_at.get(&idx) {
                let first = *first;
                self.duplicate("effect on", &feature.text, span, first);
                ok = false;
                continue;
            }
            effect_at.insert(idx, span);
            let effect = match clause {
                ast::AddonClause::AddLimit { amount, .. } => {
                    if kind == FeatureKind::Bool {
                        self.type_mismatch(
                            span,
                            format!(
                                "`{}` is a bool feature; it has no limit to add to",
                                feature.text
                            ),
                        );
                        None
                    } else {
                        self.at_least(*amount, 1, codes::INVALID_VALUE, "an add-on's amount")
                            .map(AddonEffect::AddLimit)
                    }
                }
                _ => Some(AddonEffect::Grant),
            };
            match effect {
                Some(e) => effects.push((idx, e)),
                None => ok = false,
            }
        }
        let price = match price {
            Some((_, price)) => price,
            None => {
                self.diags.error_with_note(
                    codes::MISSING_PRICE,
                    a.key.span,
                    format!("add-on `{}` has no price", a.key.text),
                    "add `price <minor units> <CUR> per month`",
                );
                None
            }
        };
        let (price_minor, currency, interval) = price?;
        let spans = AddonSpans {
            key: a.key.span,
            name: a.name.span,
            price: money_spans.0,
            currency: money_spans.1,
        };
        debug_assert!(
            ok || self.diags.has_errors(),
            "a broken add-on without an error"
        );
        let addon = ir::Addon {
            key: a.key.text.clone(),
            name: a.name.value.clone(),
            price_minor,
            currency,
            interval,
            effects,
        };
        Some((addon, spans))
    }

    // ---- expressions --------------------------------------------------------------------

    fn elab(&mut self, e: &ast::Expr) -> Option<Val> {
        match &e.kind {
            ExprKind::Int(v) => v.map(|v| Val::Int(IntExpr::Const(v))),
            ExprKind::Bool(b) => Some(Val::Bool(BoolExpr::Const(*b))),
            ExprKind::Name(n) => Some(match n.as_str() {
                "banned" => Val::Bool(flag(Fact::Banned)),
                "in_trial" => Val::Bool(flag(Fact::InTrial)),
                "status" => Val::Status(IntExpr::Fact(Fact::Status)),
                "plan" => Val::Plan(IntExpr::Fact(Fact::Plan)),
                "dunning_level" => Val::Int(IntExpr::Fact(Fact::DunningLevel)),
                "days_past_due" => Val::Int(IntExpr::Fact(Fact::DaysPastDue)),
                "today" => Val::Int(IntExpr::Fact(Fact::Today)),
                _ => Val::Word(Name {
                    text: n.clone(),
                    span: e.span,
                }),
            }),
            ExprKind::Call { func, arg } => self.call(func, arg),
            ExprKind::Unary(UnOp::Not, x) => {
                let x = self.elab(x);
                let x = self.want_bool(x, e.span)?;
                Some(Val::Bool(BoolExpr::Not(Box::new(x))))
            }
            ExprKind::Unary(UnOp::Neg, x) => {
                let x = self.elab(x);
                let x = self.want_int(x, e.span)?;
                Some(Val::Int(IntExpr::Arith(
                    ArithOp::Sub,
                    Box::new(IntExpr::Const(0)),
                    Box::new(x),
                )))
            }
            ExprKind::Binary(op, l, r) => {
                let (lv, rv) = (self.elab(l), self.elab(r));
                self.binary(*op, lv, rv, l.span, r.span, e.span)
            }
        }
    }

    fn call(&mut self, func: &Name, arg: &Name) -> Option<Val> {
        match func.text.as_str() {
            "usage" => {
                let (idx, kind) = self.feature(arg)?;
                if kind != FeatureKind::Metered {
                    self.type_mismatch(
                        arg.span,
                        format!(
                            "`{}` is a {} feature; only metered features have usage",
                            arg.text,
                            kind.as_str()
                        ),
                    );
                    return None;
                }
                Some(Val::Int(IntExpr::Fact(Fact::Usage(idx))))
            }
            "addon" => {
                let idx = self.addon_index(arg)?;
                Some(Val::Int(IntExpr::Fact(Fact::AddonQty(idx))))
            }
            "limit" => {
                let (idx, kind) = self.feature(arg)?;
                if kind == FeatureKind::Bool {
                    self.type_mismatch(
                        arg.span,
                        format!("`{}` is a bool feature; it has no limit", arg.text),
                    );
                    return None;
                }
                Some(Val::Int(IntExpr::LimitOf(idx)))
            }
            "allowed" => {
                let (idx, _) = self.feature(arg)?;
                Some(Val::Bool(BoolExpr::AllowedOf(idx)))
            }
            "override" => {
                let (idx, _) = self.feature(arg)?;
                Some(Val::OverrideMode(IntExpr::Fact(Fact::OverrideMode(idx))))
            }
            other => {
                self.diags.error_with_note(
                    codes::UNKNOWN_NAME,
                    func.span,
                    format!("unknown function `{other}`"),
                    "functions are usage(feature), addon(addon), limit(feature), \
                     allowed(feature), override(feature)",
                );
                None
            }
        }
    }

    fn unknown_word(&mut self, w: &Name) {
        self.diags.error_with_note(
            codes::UNKNOWN_NAME,
            w.span,
            format!("unknown name `{}`", w.text),
            "facts are banned, status, plan, dunning_level, days_past_due, in_trial, today",
        );
    }

    fn want_int(&mut self, v: Option<Val>, span: Span) -> Option<IntExpr> {
        match v? {
            Val::Int(x) => Some(x),
            Val::Word(w) => {
                self.unknown_word(&w);
                None
            }
            other => {
                self.type_mismatch(
                    span,
                    format!("expected an integer, found {}", other.type_name()),
                );
                None
            }
        }
    }

    fn want_bool(&mut self, v: Option<Val>, span: Span) -> Option<BoolExpr> {
        match v? {
            Val::Bool(x) => Some(x),
            Val::Word(w) => {
                self.unknown_word(&w);
                None
            }
            other => {
                self.type_mismatch(
                    span,
                    format!("expected a condition, found {}", other.type_name()),
                );
                None
            }
        }
    }

    /// A bare word next to a value of `other`'s type: a status, a plan key or a mode.
    fn resolve_word(&mut self, w: &Name, other: &Val) -> Option<Val> {
        match other {
            Val::Status(_) => {
                let s = self.status(w)?;
                Some(Val::Status(IntExpr::Const(s as i64)))
            }
            Val::Plan(_) => {
                let p = self.plan_index(w)?;
                Some(Val::Plan(IntExpr::Const(i64::from(p))))
            }
            Val::OverrideMode(_) => {
                let mode = match w.text.as_str() {
                    "none" => OVERRIDE_NONE,
                    "deny" => OVERRIDE_DENY,
                    "grant" => OVERRIDE_GRANT,
                    _ => {
                        self.diags.error_with_note(
                            codes::UNKNOWN_NAME,
                            w.span,
                            format!("unknown override mode `{}`", w.text),
                            "override modes are none, deny, grant",
                        );
                        return None;
                    }
                };
                Some(Val::OverrideMode(IntExpr::Const(mode)))
            }
            _ => {
                self.unknown_word(w);
                None
            }
        }
    }

    fn binary(
        &mut self,
        op: BinOp,
        l: Option<Val>,
        r: Option<Val>,
        lspan: Span,
        rspan: Span,
        span: Span,
    ) -> Option<Val> {
        match op {
            BinOp::And | BinOp::Or => {
                let (l, r) = (self.want_bool(l, lspan), self.want_bool(r, rspan));
                let (l, r) = (Box::new(l?), Box::new(r?));
                Some(Val::Bool(if op == BinOp::And {
                    BoolExpr::And(l, r)
                } else {
                    BoolExpr::Or(l, r)
                }))
            }
            BinOp::Add | BinOp::Sub | BinOp::Mul => {
                let (l, r) = (self.want_int(l, lspan), self.want_int(r, rspan));
                let arith = match op {
                    BinOp::Add => ArithOp::Add,
                    BinOp::Sub => ArithOp::Sub,
                    _ => ArithOp::Mul,
                };
                Some(Val::Int(IntExpr::Arith(arith, Box::new(l?), Box::new(r?))))
            }
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                for (v, s) in [(&l, lspan), (&r, rspan)] {
                    if let Some(v @ (Val::Status(_) | Val::Plan(_) | Val::OverrideMode(_))) = v {
                        self.type_mismatch(
                            s,
                            format!("{} can only be compared with `==` or `!=`", v.type_name()),
                        );
                        return None;
                    }
                }
                let (l, r) = (self.want_int(l, lspan), self.want_int(r, rspan));
                Some(Val::Bool(BoolExpr::Cmp(cmp_op(op), l?, r?)))
            }
            BinOp::Eq | BinOp::Ne => {
                let (l, r) = match (l?, r?) {
                    (Val::Word(a), Val::Word(_)) => {
                        self.unknown_word(&a);
                        return None;
                    }
                    (Val::Word(w), other) => (self.resolve_word(&w, &other)?, other),
                    (other, Val::Word(w)) => {
                        let resolved = self.resolve_word(&w, &other)?;
                        (other, resolved)
                    }
                    pair => pair,
                };
                let op = cmp_op(op);
                let cmp = |a, b| Some(Val::Bool(BoolExpr::Cmp(op, a, b)));
                match (l, r) {
                    (Val::Int(a), Val::Int(b))
                    | (Val::Status(a), Val::Status(b))
                    | (Val::Plan(a), Val::Plan(b))
                    | (Val::OverrideMode(a), Val::OverrideMode(b)) => cmp(a, b),
                    (Val::Bool(_), Val::Bool(_)) => {
                        self.type_mismatch(
                            span,
                            "conditions are not compared with `==`/`!=`; use `and`, `or`, `not`",
                        );
                        None
                    }
                    (l, r) => {
                        self.type_mismatch(
                            span,
                            format!("cannot compare {} with {}", l.type_name(), r.type_name()),
                        );
                        None
                    }
                }
            }
        }
    }

    // ---- rules --------------------------------------------------------------------------

    fn rule(&mut self, r: &ast::RuleDecl) -> Option<ir::Rule> {
        let when = self.elab(&r.when);
        let when = self.want_bool(when, r.when.span).map(fold::fold_bool);
        let action = self.action(r);
        let when = when?;
        let domain = self.domain();
        if when == BoolExpr::Const(false) {
            self.diags.error(
                codes::RULE_NEVER_FIRES,
                r.when.span,
                format!(
                    "rule \"{}\" can never fire: its condition is always false",
                    r.name.value
                ),
            );
            return None;
        }
        if !fold::may_hold(&when, &domain) {
            self.diags.error_with_note(
                codes::RULE_NEVER_FIRES,
                r.when.span,
                format!(
                    "rule \"{}\" can never fire: no facts satisfy its condition",
                    r.name.value
                ),
                "its comparisons contradict each other or the range of a fact",
            );
            return None;
        }
        Some(ir::Rule {
            name: r.name.value.clone(),
            when,
            action: action?,
            span: r.span,
        })
    }

    /// The values each fact can take, for [`fold::may_hold`].
    fn domain(&self) -> impl Fn(Fact) -> (i64, i64) + use<> {
        let max_plan = i64::try_from(self.plans.len()).unwrap_or(i64::MAX) - 1;
        move |f| match f {
            Fact::Banned | Fact::InTrial => (0, 1),
            Fact::Status => (SubStatus::None as i64, SubStatus::Canceled as i64),
            Fact::Plan => (-1, max_plan),
            Fact::DunningLevel | Fact::DaysPastDue | Fact::AddonQty(_) | Fact::Usage(_) => {
                (0, i64::MAX)
            }
            Fact::OverrideMode(_) => (OVERRIDE_NONE, OVERRIDE_GRANT),
            Fact::Today => (i64::MIN, i64::MAX),
        }
    }

    fn value(&mut self, v: &ast::ValueDecl) -> Option<IntExpr> {
        match v {
            ast::ValueDecl::Unlimited(_) => Some(IntExpr::Unlimited),
            ast::ValueDecl::Expr(e) => {
                let x = self.elab(e);
                self.want_int(x, e.span).map(fold::fold_int)
            }
        }
    }

    /// A target that can carry a limit: `metered` or a limit/metered feature.
    fn limit_target(&mut self, t: &ast::TargetDecl, verb: &str) -> Option<Target> {
        match t {
            ast::TargetDecl::All(span) => {
                self.type_mismatch(
                    *span,
                    format!(
                        "`{verb} all` would give bool features a limit; use `metered` or a feature"
                    ),
                );
                None
            }
            ast::TargetDecl::Metered(_) => Some(Target::AllMetered),
            ast::TargetDecl::Feature(f) => {
                let (idx, kind) = self.feature(f)?;
                let fits = match verb {
                    "cap" => kind == FeatureKind::Metered,
                    _ => kind != FeatureKind::Bool,
                };
                if !fits {
                    let needs = if verb == "cap" {
                        "a metered feature"
                    } else {
                        "a limit or metered feature"
                    };
                    self.type_mismatch(
                        f.span,
                        format!(
                            "`{verb}` needs {needs}; `{}` is a {} feature",
                            f.text,
                            kind.as_str()
                        ),
                    );
                    return None;
                }
                Some(Target::Feature(idx))
            }
        }
    }

    fn action(&mut self, r: &ast::RuleDecl) -> Option<Action> {
        // Resolved now, checked against the action below, so both are reported.
        let reason = r.reason.as_ref().map(|name| (self.reason(name), name.span));
        let (action, default, is_deny) = match &r.action {
            ast::ActionDecl::Deny(t) => {
                let target = match t {
                    ast::TargetDecl::All(_) => Some(Target::All),
                    ast::TargetDecl::Metered(_) => Some(Target::AllMetered),
                    ast::TargetDecl::Feature(f) => self.feature(f).map(|(i, _)| Target::Feature(i)),
                };
                (
                    target.map(|target| (target, None)),
                    ReasonCode::DeniedByRule,
                    true,
                )
            }
            ast::ActionDecl::Grant(f, value) => {
                let feature = self.feature(f);
                let limit = match (value, feature) {
                    (None, _) => Some(None),
                    (Some(_), Some((_, FeatureKind::Bool))) => {
                        self.type_mismatch(
                            f.span,
                            format!("`{}` is a bool feature; it takes no limit", f.text),
                        );
                        None
                    }
                    (Some(v), _) => self.value(v).map(Some),
                };
                let action = feature
                    .zip(limit)
                    .map(|((i, _), l)| (Target::Feature(i), l));
                (action, ReasonCode::GrantedByRule, false)
            }
            ast::ActionDecl::Limit(t, v) => {
                let target = self.limit_target(t, "limit");
                let value = self.value(v);
                (
                    target.zip(value).map(|(t, v)| (t, Some(v))),
                    ReasonCode::CappedByRule,
                    false,
                )
            }
            ast::ActionDecl::Cap(t) => (
                self.limit_target(t, "cap").map(|t| (t, None)),
                ReasonCode::CappedByRule,
                false,
            ),
        };
        let reason = match reason {
            Some((None, _)) => return None,
            Some((Some(code), span)) => {
                let denies = code.as_str().starts_with("denied_");
                if denies != is_deny {
                    let message = if is_deny {
                        format!(
                            "a `deny` needs a `denied_*` reason, not `{}`",
                            code.as_str()
                        )
                    } else {
                        format!(
                            "this action leaves features allowed; `{}` says they are denied",
                            code.as_str()
                        )
                    };
                    self.diags.error(codes::REASON_MISMATCH, span, message);
                    return None;
                }
                code
            }
            None => default,
        };
        let (target, value) = action?;
        Some(match &r.action {
            ast::ActionDecl::Deny(_) => Action::Deny { target, reason },
            ast::ActionDecl::Grant(..) => Action::Grant {
                target,
                limit: value,
                reason,
            },
            ast::ActionDecl::Limit(..) => Action::SetLimit {
                target,
                value: value?,
                reason,
            },
            ast::ActionDecl::Cap(_) => Action::CapAtUsage { target, reason },
        })
    }

    // ---- tests --------------------------------------------------------------------------

    fn shape(&self) -> Shape {
        Shape {
            addons: self.addons.values().filter(|s| s.index.is_some()).count(),
            features: self.out.features.len(),
        }
    }

    fn test(&mut self, t: &ast::TestDecl) -> Option<ir::TestCase> {
        let shape = self.shape();
        let mut given = FactVector::empty(shape);
        let mut ok = true;
        let mut seen: HashMap<String, Span> = HashMap::new();
        let mut status_given = false;
        let mut plan_given = false;
        for g in &t.givens {
            let key = match &g.target {
                GivenTarget::Fact(n) => n.text.clone(),
                GivenTarget::Usage(n) => format!("usage({})", n.text),
                GivenTarget::Addon(n) => format!("addon({})", n.text),
                GivenTarget::Override(n) => format!("override({})", n.text),
            };
            if let Some(first) = seen.get(&key) {
                let first = *first;
                self.duplicate("given fact", &key, g.span, first);
                ok = false;
                continue;
            }
            seen.insert(key, g.span);
            match &g.target {
                GivenTarget::Fact(n) if n.text == "status" => status_given = true,
                GivenTarget::Fact(n) if n.text == "plan" => plan_given = true,
                _ => {}
            }
            match self.given(g) {
                Some(settings) => {
                    for setting in settings {
                        match setting {
                            GivenSlot::Fact(fact, v) => given.set(fact, shape, v),
                            GivenSlot::OverrideLimit(f, limit) => {
                                given.set_override_limit(f, shape, limit);
                            }
                        }
                    }
                }
                None => ok = false,
            }
        }
        if plan_given && !status_given {
            given.set(Fact::Status, shape, SubStatus::Active as i64);
        }
        let mut expect: Vec<Expectation> = Vec::new();
        let mut expected_at: HashMap<FeatureIdx, Span> = HashMap::new();
        for e in &t.expects {
            match self.expectation(e) {
                Some(x) => {
                    if let Some(first) = expected_at.get(&x.feature) {
                        let first = *first;
                        self.duplicate("expectation for", &e.feature.text, e.span, first);
                        ok = false;
                        continue;
                    }
                    expected_at.insert(x.feature, e.span);
                    expect.push(x);
                }
                None => ok = false,
            }
        }
        if t.expects.is_empty() {
            self.diags.error_with_note(
                codes::EMPTY_TEST,
                t.name.span,
                format!(
                    "test \"{}\" expects nothing, so it cannot fail",
                    t.name.value
                ),
                "add `expect <feature> allowed|denied [limit <n>] [reason <code>]`",
            );
            return None;
        }
        ok.then(|| ir::TestCase {
            name: t.name.value.clone(),
            given,
            expect,
            span: t.span,
        })
    }

    fn int_given(&mut self, g: &ast::Given, what: &str, min: i64) -> Option<i64> {
        match &g.value {
            GivenValue::Int(lit) => self.at_least(*lit, min, codes::INVALID_VALUE, what),
            _ => {
                self.type_mismatch(g.span, format!("{what} is a number"));
                None
            }
        }
    }

    /// What one `given` sets.
    fn given(&mut self, g: &ast::Given) -> Option<Vec<GivenSlot>> {
        match &g.target {
            GivenTarget::Fact(n) => {
                let fact_and_value = match n.text.as_str() {
                    "banned" | "in_trial" => {
                        let fact = if n.text == "banned" {
                            Fact::Banned
                        } else {
                            Fact::InTrial
                        };
                        match g.value {
                            GivenValue::Flag => (fact, 1),
                            GivenValue::Bool(b, _) => (fact, i64::from(b)),
                            _ => {
                                self.type_mismatch(
                                    g.span,
                                    format!("`{}` is `true` or `false`", n.text),
                                );
                                return None;
                            }
                        }
                    }
                    "status" => match &g.value {
                        GivenValue::Word(w) => (Fact::Status, self.status(w)? as i64),
                        _ => {
                            self.type_mismatch(
                                g.span,
                                "`status` is one of trialing, active, past_due, canceled, none",
                            );
                            return None;
                        }
                    },
                    "plan" => match &g.value {
                        GivenValue::Word(w) => (Fact::Plan, i64::from(self.plan_index(w)?)),
                        _ => {
                            self.type_mismatch(g.span, "`plan` is a plan key");
                            return None;
                        }
                    },
                    "dunning_level" => {
                        (Fact::DunningLevel, self.int_given(g, "`dunning_level`", 0)?)
                    }
                    "days_past_due" => {
                        (Fact::DaysPastDue, self.int_given(g, "`days_past_due`", 0)?)
                    }
                    "today" => (Fact::Today, self.int_given(g, "`today`", i64::MIN)?),
                    _ => {
                        self.diags.error_with_note(
                            codes::UNKNOWN_NAME,
                            n.span,
                            format!("unknown fact `{}`", n.text),
                            "facts are banned, status, plan, dunning_level, days_past_due, \
                             in_trial, today, usage(feature), addon(addon), override(feature)",
                        );
                        return None;
                    }
                };
                Some(vec![GivenSlot::Fact(fact_and_value.0, fact_and_value.1)])
            }
            GivenTarget::Usage(f) => {
                let (idx, kind) = self.feature(f)?;
                if kind != FeatureKind::Metered {
                    self.type_mismatch(
                        f.span,
                        format!(
                            "`{}` is a {} feature; only metered features have usage",
                            f.text,
                            kind.as_str()
                        ),
                    );
                    return None;
                }
                let v = self.int_given(g, "a usage", 0)?;
                Some(vec![GivenSlot::Fact(Fact::Usage(idx), v)])
            }
            GivenTarget::Addon(a) => {
                let idx = self.addon_index(a)?;
                let v = self.int_given(g, "an add-on quantity", 0)?;
                Some(vec![GivenSlot::Fact(Fact::AddonQty(idx), v)])
            }
            GivenTarget::Override(f) => {
                let (idx, kind) = self.feature(f)?;
                let (mode, limit) = match &g.value {
                    GivenValue::Word(w) if w.text == "deny" => (OVERRIDE_DENY, Limit::None),
                    GivenValue::Word(w) if w.text == "none" => (OVERRIDE_NONE, Limit::None),
                    GivenValue::Grant(None, _) => (OVERRIDE_GRANT, Limit::None),
                    GivenValue::Grant(Some(amount), span) => {
                        if kind == FeatureKind::Bool {
                            self.type_mismatch(
                                *span,
                                format!("`{}` is a bool feature; it takes no limit", f.text),
                            );
                            return None;
                        }
                        let limit = match amount {
                            Amount::Unlimited(_) => Limit::Unlimited,
                            Amount::Int(lit) => Limit::Finite(self.at_least(
                                *lit,
                                0,
                                codes::INVALID_VALUE,
                                "a limit",
                            )?),
                        };
                        (OVERRIDE_GRANT, limit)
                    }
                    _ => {
                        self.type_mismatch(
                            g.span,
                            "an override is `deny`, `grant`, `grant limit <n>` or `none`",
                        );
                        return None;
                    }
                };
                Some(vec![
                    GivenSlot::Fact(Fact::OverrideMode(idx), mode),
                    GivenSlot::OverrideLimit(idx, limit),
                ])
            }
        }
    }

    fn expectation(&mut self, e: &ast::ExpectDecl) -> Option<Expectation> {
        let feature = self.feature(&e.feature);
        let reason = match &e.reason {
            Some(r) => Some(self.reason(r)?),
            None => None,
        };
        let (idx, kind) = feature?;
        let limit = match e.limit {
            None => None,
            Some(ExpectedLimit::None(_)) => Some(Limit::None),
            Some(ExpectedLimit::Unlimited(span) | ExpectedLimit::Int(ast::Lit { span, .. }))
                if kind == FeatureKind::Bool =>
            {
                self.type_mismatch(
                    span,
                    format!(
                        "`{}` is a bool feature; it never has a limit",
                        e.feature.text
                    ),
                );
                return None;
            }
            Some(ExpectedLimit::Unlimited(_)) => Some(Limit::Unlimited),
            Some(ExpectedLimit::Int(lit)) => Some(Limit::Finite(lit.value?)),
        };
        Some(Expectation {
            feature: idx,
            allowed: e.allowed.map(|(a, _)| a),
            limit,
            reason,
        })
    }

    /// Warns about features nothing can ever allow (only a support override could).
    fn never_granted(&mut self, file: &ast::File) {
        // After an error, parts are missing and the warning would be noise.
        if self.diags.has_errors() {
            return;
        }
        let mut granted = vec![false; self.out.features.len()];
        let mut mark = |i: FeatureIdx| {
            if let Some(g) = granted.get_mut(i as usize) {
                *g = true;
            }
        };
        for p in &self.out.plans {
            p.grants.iter().for_each(|g| mark(g.feature));
        }
        for a in &self.out.addons {
            a.effects.iter().for_each(|(f, _)| mark(*f));
        }
        for r in &self.out.rules {
            if let Action::Grant {
                target: Target::Feature(f),
                ..
            } = r.action
            {
                mark(f);
            }
        }
        for item in &file.items {
            if let ast::Item::Feature(f) = item {
                let granted_here = self
                    .features
                    .get(&f.key.text)
                    .filter(|s| s.span == f.key.span)
                    .and_then(|s| s.index)
                    .and_then(|(i, _)| granted.get(i as usize).copied());
                if granted_here == Some(false) {
                    self.diags.warning(
                        codes::FEATURE_NEVER_GRANTED,
                        f.key.span,
                        format!(
                            "no plan, add-on or rule grants `{}`; every account is denied it",
                            f.key.text
                        ),
                    );
                }
            }
        }
    }
}

/// What a test's `given` sets in its fact vector.
enum GivenSlot {
    Fact(Fact, i64),
    OverrideLimit(FeatureIdx, Limit),
}

/// A 0/1 fact as a condition.
fn flag(fact: Fact) -> BoolExpr {
    BoolExpr::Cmp(CmpOp::Ne, IntExpr::Fact(fact), IntExpr::Const(0))
}

fn cmp_op(op: BinOp) -> CmpOp {
    match op {
        BinOp::Eq => CmpOp::Eq,
        BinOp::Ne => CmpOp::Ne,
        BinOp::Lt => CmpOp::Lt,
        BinOp::Le => CmpOp::Le,
        BinOp::Gt => CmpOp::Gt,
        _ => CmpOp::Ge,
    }
}
