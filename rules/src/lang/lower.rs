//! The last step: the checked pieces become one [`Program`], after its invariants are
//! verified. The checker already resolved every name to an index and typed every expression;
//! what is left is to put the pieces together and make sure they agree with each other (every
//! index in range, every test's fact vector laid out for this program's shape). A failure here
//! is a bug in the compiler, reported as `internal_error` rather than a panic.

use super::check::Checked;
use crate::ir::{Action, BoolExpr, Fact, FactVector, IntExpr, Program, Target};

pub(crate) fn lower(checked: Checked) -> Result<Program, String> {
    let program = Program {
        features: checked.features,
        plans: checked.plans,
        addons: checked.addons,
        rules: checked.rules,
        tests: checked.tests,
    };
    verify(&program)?;
    Ok(program)
}

fn verify(p: &Program) -> Result<(), String> {
    let features = p.features.len();
    let feature_ok = |f: u32| (f as usize) < features;
    let fact_ok = |fact: Fact| match fact {
        Fact::AddonQty(a) => (a as usize) < p.addons.len(),
        Fact::Usage(f) | Fact::OverrideMode(f) => feature_ok(f),
        _ => true,
    };
    fn int_ok(
        e: &IntExpr,
        fact_ok: &dyn Fn(Fact) -> bool,
        feature_ok: &dyn Fn(u32) -> bool,
    ) -> bool {
        match e {
            IntExpr::Const(_) | IntExpr::Unlimited => true,
            IntExpr::Fact(f) => fact_ok(*f),
            IntExpr::LimitOf(f) => feature_ok(*f),
            IntExpr::Arith(_, a, b) => {
                int_ok(a, fact_ok, feature_ok) && int_ok(b, fact_ok, feature_ok)
            }
        }
    }
    fn bool_ok(
        e: &BoolExpr,
        fact_ok: &dyn Fn(Fact) -> bool,
        feature_ok: &dyn Fn(u32) -> bool,
    ) -> bool {
        match e {
            BoolExpr::Const(_) => true,
            BoolExpr::Cmp(_, a, b) => {
                int_ok(a, fact_ok, feature_ok) && int_ok(b, fact_ok, feature_ok)
            }
            BoolExpr::AllowedOf(f) => feature_ok(*f),
            BoolExpr::And(a, b) | BoolExpr::Or(a, b) => {
                bool_ok(a, fact_ok, feature_ok) && bool_ok(b, fact_ok, feature_ok)
            }
            BoolExpr::Not(a) => bool_ok(a, fact_ok, feature_ok),
        }
    }
    let target_ok = |t: &Target| match t {
        Target::Feature(f) => feature_ok(*f),
        Target::All | Target::AllMetered => true,
    };
    for plan in &p.plans {
        let grants = plan.grants.iter().map(|g| g.feature);
        let meters = plan.meters.iter().map(|m| m.feature);
        if !grants.chain(meters).all(feature_ok) {
            return Err(format!(
                "plan `{}` refers to a feature out of range",
                plan.key
            ));
        }
    }
    for addon in &p.addons {
        if !addon.effects.iter().all(|(f, _)| feature_ok(*f)) {
            return Err(format!(
                "add-on `{}` refers to a feature out of range",
                addon.key
            ));
        }
    }
    for rule in &p.rules {
        let action_ok = match &rule.action {
            Action::Deny { target, .. } | Action::CapAtUsage { target, .. } => target_ok(target),
            Action::Grant { target, limit, .. } => {
                target_ok(target)
                    && limit
                        .as_ref()
                        .is_none_or(|l| int_ok(l, &fact_ok, &feature_ok))
            }
            Action::SetLimit { target, value, .. } => {
                target_ok(target) && int_ok(value, &fact_ok, &feature_ok)
            }
        };
        if !action_ok || !bool_ok(&rule.when, &fact_ok, &feature_ok) {
            return Err(format!(
                "rule \"{}\" refers to an index out of range",
                rule.name
            ));
        }
    }
    let len = FactVector::len_for(p.shape());
    for test in &p.tests {
        if test.given.0.len() != len || !test.expect.iter().all(|e| feature_ok(e.feature)) {
            return Err(format!(
                "test \"{}\" does not fit the program's shape",
                test.name
            ));
        }
    }
    Ok(())
}
