//! The passes over the file's items: pass 1 declares every feature, plan and add-on name (so
//! items may be used before they are declared), pass 2 defines every body (plans, add-ons,
//! rules, tests), and a last look warns about features nothing can ever grant.

use std::collections::HashMap;

use super::spans::FeatureSpans;
use super::{Checker, Sym};
use crate::ir::{self, Action, AddonIdx, FeatureIdx, FeatureKind, PlanIdx, Span, Target};
use crate::lang::ast;
use crate::lang::diag::codes;

/// Feature names that would be read as action targets.
const RESERVED_FEATURES: [&str; 2] = ["all", "metered"];

impl Checker<'_> {
    /// Pass 1: every feature, plan and add-on name, so later items may be used before they
    /// are declared in the file.
    pub(super) fn declare(&mut self, file: &ast::File) {
        let mut plan_count: PlanIdx = 0;
        let mut addon_count: AddonIdx = 0;
        for item in &file.items {
            match item {
                ast::Item::Feature(f) => {
                    let first = self.features.get(&f.key.text).map(|s| s.span);
                    if !self.once(first, "feature", &f.key.text, f.key.span) {
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
                        Sym {
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
                    self.declare_key(|c| &mut c.plans, "plan", &p.key, &mut plan_count);
                }
                ast::Item::Addon(a) => {
                    self.declare_key(|c| &mut c.addons, "add-on", &a.key, &mut addon_count);
                }
                ast::Item::Broken { kind, key } => match kind {
                    ast::BrokenKind::Feature => known_broken(&mut self.features, key),
                    ast::BrokenKind::Plan => known_broken(&mut self.plans, key),
                    ast::BrokenKind::Addon => known_broken(&mut self.addons, key),
                },
                ast::Item::Rule(_) | ast::Item::Test(_) => {}
            }
        }
    }

    /// Declares the plan or add-on `key` with the next index (`count`); a second declaration
    /// of the name is reported and skipped.
    fn declare_key(
        &mut self,
        table: fn(&mut Self) -> &mut HashMap<String, Sym<u32>>,
        what: &str,
        key: &ast::Name,
        count: &mut u32,
    ) {
        let first = table(self).get(&key.text).map(|s| s.span);
        if self.once(first, what, &key.text, key.span) {
            let sym = Sym {
                index: Some(*count),
                span: key.span,
            };
            table(self).insert(key.text.clone(), sym);
            *count += 1;
        }
    }

    /// Pass 2: bodies of plans and add-ons, rules and tests.
    pub(super) fn define(&mut self, file: &ast::File) {
        self.unique_names(file);
        for item in &file.items {
            match item {
                ast::Item::Plan(p) => {
                    // Only the first of duplicates is defined (the index was given to it).
                    if declared_here(&self.plans, &p.key).is_some()
                        && let Some((plan, spans)) = self.plan(p)
                    {
                        self.out.plans.push(plan);
                        self.out.spans.plans.push(spans);
                    }
                }
                ast::Item::Addon(a) => {
                    if declared_here(&self.addons, &a.key).is_some()
                        && let Some((addon, spans)) = self.addon(a)
                    {
                        self.out.addons.push(addon);
                        self.out.spans.addons.push(spans);
                    }
                }
                ast::Item::Rule(r) => {
                    let (rule, out) = (self.rule(r), &mut self.out);
                    keep(rule, r.name.span, &mut out.rules, &mut out.spans.rule_names);
                }
                ast::Item::Test(t) => {
                    let (test, out) = (self.test(t), &mut self.out);
                    keep(test, t.name.span, &mut out.tests, &mut out.spans.test_names);
                }
                ast::Item::Feature(_) | ast::Item::Broken { .. } => {}
            }
        }
        self.never_granted(file);
    }

    /// Each rule and each test needs a name of its own: a second of a name is reported (and
    /// still checked). Reported before any body is checked, as a test's other error at its
    /// name (it expects nothing) comes after this one.
    fn unique_names(&mut self, file: &ast::File) {
        let mut seen: HashMap<(&str, &str), Span> = HashMap::new();
        for item in &file.items {
            let (what, name) = match item {
                ast::Item::Rule(r) => ("rule", &r.name),
                ast::Item::Test(t) => ("test", &t.name),
                _ => continue,
            };
            let key = (what, name.value.as_str());
            self.first_time(&mut seen, key, what, &name.value, name.span);
        }
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
                let granted_here = declared_here(&self.features, &f.key)
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

/// The symbol `key` declared; `None` for a later duplicate (the name is the first one's).
fn declared_here<'t, I>(table: &'t HashMap<String, Sym<I>>, key: &ast::Name) -> Option<&'t Sym<I>> {
    table.get(&key.text).filter(|s| s.span == key.span)
}

/// A declaration that did not parse: its name is known (its uses are not unknown) but has no
/// index. A name declared before keeps its declaration.
fn known_broken<I>(table: &mut HashMap<String, Sym<I>>, key: &ast::Name) {
    table.entry(key.text.clone()).or_insert(Sym {
        index: None,
        span: key.span,
    });
}

/// Keeps a checked rule or test, and where its name was written, entry for entry.
fn keep<T>(item: Option<T>, name: Span, items: &mut Vec<T>, name_spans: &mut Vec<Span>) {
    if let Some(item) = item {
        items.push(item);
        name_spans.push(name);
    }
}
