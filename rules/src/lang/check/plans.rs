//! Plans and add-ons: each body's price, trial, grants, meters and effects, with where each
//! value was written ([`super::spans`]).

use std::collections::HashMap;

use super::Checker;
use super::numbers::Price;
use super::spans::{ItemSpans, PlanSpans, pricing_spans};
use crate::bounds;
use crate::ir::{self, AddonEffect, FeatureIdx, FeatureKind, Limit, Span};
use crate::lang::ast::{self, Amount, Name};
use crate::lang::diag::codes;

/// A plan's or add-on's `price` clause, as far as it has been read.
struct PriceClause {
    /// Where it was written, and the price (`None` when its amount did not parse).
    written: Option<(Span, Option<Price>)>,
    /// Where its amount and currency were written (the key's span until then).
    spans: (Span, Span),
}

impl PriceClause {
    fn new(key: &Name) -> Self {
        Self {
            written: None,
            spans: (key.span, key.span),
        }
    }

    /// Where the item's key, name, price and currency were written.
    fn item_spans(&self, key: &Name, name: &ast::Text) -> ItemSpans {
        ItemSpans {
            key: key.span,
            name: name.span,
            price: self.spans.0,
            currency: self.spans.1,
        }
    }
}

impl Checker<'_> {
    /// Reads a `price` clause of the `what` (plan, add-on) `key`; `false` for a second one
    /// (reported; the first is kept).
    fn price_clause(
        &mut self,
        clause: &mut PriceClause,
        what: &str,
        key: &Name,
        m: &ast::Money,
    ) -> bool {
        let first = clause.written.as_ref().map(|(span, _)| *span);
        if !self.once(first, &format!("price of {what}"), &key.text, m.span) {
            return false;
        }
        clause.spans = (m.amount.span, m.currency.span);
        clause.written = Some((m.span, self.money(m)));
        true
    }

    /// The price read; a plan or add-on without a `price` clause is reported.
    fn price(&mut self, clause: &mut PriceClause, what: &str, key: &Name) -> Option<Price> {
        match clause.written.take() {
            Some((_, price)) => price,
            None => {
                self.diags.error_with_note(
                    codes::MISSING_PRICE,
                    key.span,
                    format!("{what} `{}` has no price", key.text),
                    "add `price <minor units> <CUR> per month`",
                );
                None
            }
        }
    }

    /// The feature a plan's grant or an add-on's effect is about, if it is known and this is
    /// the first such clause for it (`seen`: where each was first written; `what` names the
    /// clause in the message about a second one).
    fn clause_feature(
        &mut self,
        feature: &Name,
        seen: &mut HashMap<FeatureIdx, Span>,
        what: &str,
        span: Span,
    ) -> Option<(FeatureIdx, FeatureKind)> {
        let (idx, kind) = self.feature(feature)?;
        self.first_time(seen, idx, what, &feature.text, span)
            .then_some((idx, kind))
    }

    /// The plan, with where its values were written. `Some` also for a plan with errors
    /// (each already reported) when its price and trial are known, so that [`bounds`]
    /// checks its values in the same run: after an error the program is never lowered.
    pub(super) fn plan(&mut self, p: &ast::PlanDecl) -> Option<(ir::Plan, PlanSpans)> {
        let mut ok = true;
        let mut money = PriceClause::new(&p.key);
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
                ast::PlanClause::Price(m) => ok &= self.price_clause(&mut money, "plan", &p.key, m),
                ast::PlanClause::Trial { days, span } => {
                    let first = trial.map(|(first, _)| first);
                    if !self.once(first, "trial of plan", &p.key.text, *span) {
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
                    let Some((idx, kind)) =
                        self.clause_feature(feature, &mut granted_at, "grant of", *span)
                    else {
                        ok = false;
                        continue;
                    };
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
                    if !self.first_time(&mut metered_at, idx, "meter of", &feature.text, *span) {
                        ok = false;
                        continue;
                    }
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
        let price = self.price(&mut money, "plan", &p.key);
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
            item: money.item_spans(&p.key, &p.name),
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
    pub(super) fn addon(&mut self, a: &ast::AddonDecl) -> Option<(ir::Addon, ItemSpans)> {
        let mut ok = true;
        let mut money = PriceClause::new(&a.key);
        let mut effects: Vec<(FeatureIdx, AddonEffect)> = Vec::new();
        let mut effect_at: HashMap<FeatureIdx, Span> = HashMap::new();
        for clause in &a.clauses {
            let (feature, span) = match clause {
                ast::AddonClause::Price(m) => {
                    ok &= self.price_clause(&mut money, "add-on", &a.key, m);
                    continue;
                }
                ast::AddonClause::Grant { feature, span }
                | ast::AddonClause::AddLimit { feature, span, .. } => (feature, *span),
            };
            let Some((idx, kind)) = self.clause_feature(feature, &mut effect_at, "effect on", span)
            else {
                ok = false;
                continue;
            };
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
        let (price_minor, currency, interval) = self.price(&mut money, "add-on", &a.key)?;
        let spans = money.item_spans(&a.key, &a.name);
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
}
