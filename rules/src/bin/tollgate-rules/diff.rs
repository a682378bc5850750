//! `diff`: what changes from one bundle to another — features, plans, add-ons, rules, and the
//! decisions of both bundles' embedded tests under both programs.

use std::path::Path;

use tollgate_rules::bundle::{self, InspectedBundle};
use tollgate_rules::compiler::describe;
use tollgate_rules::interp;
use tollgate_rules::ir::{self, Fact, FactVector, Program};

use crate::failure::{Failure, Outcome};
use crate::files::read_bundle;
use crate::out::outln;
use crate::text::{effect_text, feature_key, grant_text, kind, or_none, price, pricing_text};

pub(crate) fn diff(old_path: &Path, new_path: &Path) -> Outcome {
    let old = load_inspected(old_path)?;
    let new = load_inspected(new_path)?;
    let (a, b) = (&old.program, &new.program);
    outln!(
        "version {} -> {}",
        old.manifest.bundle_version,
        new.manifest.bundle_version
    );
    let mut changes = 0usize;
    let mut section = |title: &str, lines: Vec<String>| {
        if !lines.is_empty() {
            outln!("{title}:");
            for l in &lines {
                outln!("  {l}");
            }
            changes += lines.len();
        }
    };
    section("features", diff_features(a, b));
    section("plans", diff_plans(a, b));
    section("add-ons", diff_addons(a, b));
    section("rules", diff_rules(a, b));
    section(
        "decisions (embedded tests of both bundles under both programs)",
        diff_decisions(a, b),
    );
    if changes == 0 {
        outln!("no differences");
    }
    Ok(())
}

fn diff_features(a: &Program, b: &Program) -> Vec<String> {
    let mut out = Vec::new();
    for f in &a.features {
        match b.features.iter().find(|g| g.key == f.key) {
            None => out.push(format!("- {} ({}) removed", f.key, kind(f))),
            Some(g) if g != f => out.push(format!("~ {}: {} -> {}", f.key, kind(f), kind(g))),
            Some(_) => {}
        }
    }
    let new = added(&a.features, &b.features, |f| &f.key);
    out.extend(new.map(|g| format!("+ {} ({}) added", g.key, kind(g))));
    out
}

/// A plan's grants by feature key, as text.
fn grant_map(p: &Program, plan: &ir::Plan) -> Vec<(String, String)> {
    plan.grants
        .iter()
        .map(|g| (feature_key(p, g.feature).to_string(), grant_text(p, g)))
        .collect()
}

fn diff_plans(a: &Program, b: &Program) -> Vec<String> {
    let mut out = Vec::new();
    for pa in &a.plans {
        let Some(pb) = b.plans.iter().find(|p| p.key == pa.key) else {
            out.push(format!("- plan {} removed", pa.key));
            continue;
        };
        let key = &pa.key;
        let (price_a, price_b) = (
            price(pa.price_minor, &pa.currency, pa.interval),
            price(pb.price_minor, &pb.currency, pb.interval),
        );
        if price_a != price_b {
            out.push(format!("{key}: price {price_a} -> {price_b}"));
        }
        if pa.name != pb.name {
            out.push(format!("{key}: name {:?} -> {:?}", pa.name, pb.name));
        }
        if pa.trial_days != pb.trial_days {
            out.push(format!(
                "{key}: trial {} -> {} days",
                pa.trial_days, pb.trial_days
            ));
        }
        let (ga, gb) = (grant_map(a, pa), grant_map(b, pb));
        for (f, text) in &ga {
            match gb.iter().find(|(g, _)| g == f) {
                None => out.push(format!("{key}: {f} removed")),
                Some((_, t)) if t != text => out.push(format!("{key}: {text} -> {t}")),
                Some(_) => {}
            }
        }
        for (_, text) in added(&ga, &gb, |(f, _)| f) {
            out.push(format!("{key}: {text} added"));
        }
        let meters = |p: &Program, plan: &ir::Plan| -> Vec<String> {
            plan.meters
                .iter()
                .map(|m| {
                    format!(
                        "meter {} {}",
                        feature_key(p, m.feature),
                        pricing_text(&m.pricing)
                    )
                })
                .collect()
        };
        let (ma, mb) = (meters(a, pa), meters(b, pb));
        if ma != mb {
            out.push(format!("{key}: [{}] -> [{}]", or_none(&ma), or_none(&mb)));
        }
    }
    for pb in added(&a.plans, &b.plans, |p| &p.key) {
        let priced = price(pb.price_minor, &pb.currency, pb.interval);
        out.push(format!("+ plan {} added ({priced})", pb.key));
    }
    out
}

fn diff_addons(a: &Program, b: &Program) -> Vec<String> {
    let mut out = Vec::new();
    let text = |p: &Program, x: &ir::Addon| {
        let effects: Vec<String> = x.effects.iter().map(|e| effect_text(p, e)).collect();
        format!(
            "{}; {}",
            price(x.price_minor, &x.currency, x.interval),
            or_none(&effects)
        )
    };
    for xa in &a.addons {
        match b.addons.iter().find(|x| x.key == xa.key) {
            None => out.push(format!("- add-on {} removed", xa.key)),
            Some(xb) => {
                let (ta, tb) = (text(a, xa), text(b, xb));
                if ta != tb {
                    out.push(format!("{}: {ta} -> {tb}", xa.key));
                }
            }
        }
    }
    let new = added(&a.addons, &b.addons, |x| &x.key);
    out.extend(new.map(|xb| format!("+ add-on {} added ({})", xb.key, text(b, xb))));
    out
}

fn diff_rules(a: &Program, b: &Program) -> Vec<String> {
    let mut out = Vec::new();
    // Rules refer to features, plans and add-ons by index: bodies compare only when those
    // are declared alike in both programs.
    let same_names = same_keys(&a.features, &b.features, |f| &f.key)
        && same_keys(&a.plans, &b.plans, |p| &p.key)
        && same_keys(&a.addons, &b.addons, |x| &x.key);
    for ra in &a.rules {
        match b.rules.iter().find(|r| r.name == ra.name) {
            None => out.push(format!("- rule {:?} removed", ra.name)),
            Some(rb) if same_names && (ra.when != rb.when || ra.action != rb.action) => {
                out.push(format!("~ rule {:?} changed", ra.name));
            }
            Some(_) => {}
        }
    }
    let new = added(&a.rules, &b.rules, |r| &r.name);
    out.extend(new.map(|rb| format!("+ rule {:?} added", rb.name)));
    let order = |p: &Program| -> Vec<String> {
        p.rules
            .iter()
            .filter(|r| {
                a.rules.iter().any(|x| x.name == r.name) && b.rules.iter().any(|x| x.name == r.name)
            })
            .map(|r| r.name.clone())
            .collect()
    };
    if order(a) != order(b) {
        out.push("~ rules reordered".into());
    }
    out
}

/// The entries of `new` whose key none of `old`'s has, in `new`'s order.
fn added<'n, T>(old: &[T], new: &'n [T], key: fn(&T) -> &String) -> impl Iterator<Item = &'n T> {
    new.iter()
        .filter(move |n| !old.iter().any(|o| key(o) == key(n)))
}

/// Whether `a` and `b` have the same keys, in the same order.
fn same_keys<T>(a: &[T], b: &[T], key: fn(&T) -> &String) -> bool {
    a.iter().map(key).eq(b.iter().map(key))
}

/// The facts of one program's test in another program's layout, matched by key: a plan,
/// add-on or feature the other program lacks is left out (no plan: no subscription).
fn translate(facts: &FactVector, from: &Program, to: &Program) -> FactVector {
    let (fs, ts) = (from.shape(), to.shape());
    let mut out = FactVector::empty(ts);
    for fact in [
        Fact::Banned,
        Fact::Status,
        Fact::DunningLevel,
        Fact::DaysPastDue,
        Fact::InTrial,
        Fact::Today,
    ] {
        out.set(fact, ts, facts.get(fact, fs));
    }
    let plan = usize::try_from(facts.get(Fact::Plan, fs))
        .ok()
        .and_then(|i| from.plans.get(i))
        .and_then(|p| to.plans.iter().position(|q| q.key == p.key));
    out.set(Fact::Plan, ts, plan.map_or(-1, |i| i as i64));
    for (i, x) in from.addons.iter().enumerate() {
        if let Some(j) = to.addons.iter().position(|y| y.key == x.key) {
            out.set(
                Fact::AddonQty(j as u32),
                ts,
                facts.get(Fact::AddonQty(i as u32), fs),
            );
        }
    }
    for (i, f) in from.features.iter().enumerate() {
        if let Some(j) = to.features.iter().position(|g| g.key == f.key) {
            let (i, j) = (i as u32, j as u32);
            for (src, dst) in [
                (Fact::Usage(i), Fact::Usage(j)),
                (Fact::OverrideMode(i), Fact::OverrideMode(j)),
            ] {
                out.set(dst, ts, facts.get(src, fs));
            }
            out.set_override_limit(j, ts, facts.override_limit(i, fs));
        }
    }
    out
}

fn diff_decisions(a: &Program, b: &Program) -> Vec<String> {
    let mut out = Vec::new();
    let cases = a
        .tests
        .iter()
        .map(|t| ("old", t, t.given.clone(), translate(&t.given, a, b)))
        .chain(
            b.tests
                .iter()
                // A test that is in both bundles with the same facts is shown once.
                .filter(|t| {
                    !a.tests
                        .iter()
                        .any(|s| s.name == t.name && translate(&s.given, a, b) == t.given)
                })
                .map(|t| ("new", t, translate(&t.given, b, a), t.given.clone())),
        );
    for (origin, test, facts_a, facts_b) in cases {
        let (da, db) = (interp::evaluate(a, &facts_a), interp::evaluate(b, &facts_b));
        for (i, f) in a.features.iter().enumerate() {
            let Some(j) = b.features.iter().position(|g| g.key == f.key) else {
                continue;
            };
            if let (Some(x), Some(y)) = (da.get(i), db.get(j))
                && x != y
            {
                out.push(format!(
                    "test {:?} ({origin}): {}: {} -> {}",
                    test.name,
                    f.key,
                    describe(x),
                    describe(y)
                ));
            }
        }
    }
    out
}

fn load_inspected(path: &Path) -> Result<InspectedBundle, Failure> {
    bundle::inspect(&read_bundle(path)?)
        .map_err(|e| Failure::Failed(format!("{}: {e}", path.display())))
}
