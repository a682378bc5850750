//! `test` blocks: the facts a test gives (laid out in a [`FactVector`] of the program's
//! shape) and the decisions it expects.

use std::collections::HashMap;

use super::Checker;
use crate::ir::{
    self, Expectation, Fact, FactVector, FeatureIdx, FeatureKind, Limit, OVERRIDE_DENY,
    OVERRIDE_GRANT, OVERRIDE_NONE, Shape, Span, SubStatus,
};
use crate::lang::ast::{self, Amount, ExpectedLimit, GivenTarget, GivenValue};
use crate::lang::diag::codes;

impl Checker<'_> {
    fn shape(&self) -> Shape {
        Shape {
            addons: self.addons.values().filter(|s| s.index.is_some()).count(),
            features: self.out.features.len(),
        }
    }

    pub(super) fn test(&mut self, t: &ast::TestDecl) -> Option<ir::TestCase> {
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
            if !self.first_time(&mut seen, key.clone(), "given fact", &key, g.span) {
                ok = false;
                continue;
            }
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
                    let feature = &e.feature.text;
                    if !self.first_time(
                        &mut expected_at,
                        x.feature,
                        "expectation for",
                        feature,
                        e.span,
                    ) {
                        ok = false;
                        continue;
                    }
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
                let idx = self.with_usage(f)?;
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
}

/// What a test's `given` sets in its fact vector.
enum GivenSlot {
    Fact(Fact, i64),
    OverrideLimit(FeatureIdx, Limit),
}
