//! The reference interpreter: the semantics of [`crate::ir`] written plainly, used to check
//! the WebAssembly module (a property test runs both on random programs and facts) and to run
//! `test` blocks where no WebAssembly engine is at hand.

use crate::ir::{
    Action, AddonEffect, BoolExpr, CmpOp, ExtInt, Fact, FactVector, FeatureKind, IntExpr, Limit,
    OVERRIDE_DENY, OVERRIDE_GRANT, Program, RawDecision, ReasonCode, Shape, SubStatus, Target,
};

/// Whether a status code grants its plan's features.
pub fn status_grants(status: i64) -> bool {
    status == SubStatus::Trialing as i64
        || status == SubStatus::Active as i64
        || status == SubStatus::PastDue as i64
}

/// `limit + n` of an add-on: an absent limit counts as 0, an unlimited one stays unlimited.
fn add_limit(limit: Limit, n: i64) -> Limit {
    match limit {
        Limit::None => Limit::Finite(n),
        Limit::Finite(l) => Limit::Finite(l.saturating_add(n)),
        Limit::Unlimited => Limit::Unlimited,
    }
}

/// Decides every feature for one account, in feature order.
pub fn evaluate(program: &Program, facts: &FactVector) -> Vec<RawDecision> {
    let shape = program.shape();
    let fact = |f: Fact| facts.get(f, shape);
    let plan = usize::try_from(fact(Fact::Plan))
        .ok()
        .and_then(|p| program.plans.get(p));
    let grants = status_grants(fact(Fact::Status));
    let base = if plan.is_some() && grants {
        ReasonCode::DeniedNotInPlan
    } else {
        ReasonCode::DeniedNoSubscription
    };
    let mut out = vec![denied(base); program.features.len()];
    if let (Some(p), true) = (plan, grants) {
        for g in &p.grants {
            if let Some(d) = out.get_mut(g.feature as usize) {
                *d = RawDecision {
                    allowed: true,
                    limit: g.limit,
                    reason: ReasonCode::GrantedByPlan,
                };
            }
        }
    }
    for (a, addon) in program.addons.iter().enumerate() {
        let qty = fact(Fact::AddonQty(a as u32));
        if qty <= 0 {
            continue;
        }
        for (f, effect) in &addon.effects {
            let Some(d) = out.get_mut(*f as usize) else {
                continue;
            };
            match effect {
                AddonEffect::Grant => {
                    if !d.allowed {
                        *d = RawDecision {
                            allowed: true,
                            limit: d.limit,
                            reason: ReasonCode::GrantedByAddon,
                        };
                    }
                }
                AddonEffect::AddLimit(n) => {
                    let limit = add_limit(
                        if d.allowed { d.limit } else { Limit::None },
                        n.saturating_mul(qty),
                    );
                    let reason = if d.allowed {
                        d.reason
                    } else {
                        ReasonCode::GrantedByAddon
                    };
                    *d = RawDecision {
                        allowed: true,
                        limit,
                        reason,
                    };
                }
            }
        }
    }
    for rule in &program.rules {
        if !eval_bool(&rule.when, shape, facts, &out) {
            continue;
        }
        apply(&rule.action, program, shape, facts, &mut out);
    }
    for (f, d) in out.iter_mut().enumerate() {
        let f = f as u32;
        match fact(Fact::OverrideMode(f)) {
            OVERRIDE_DENY => {
                *d = denied(ReasonCode::Override);
            }
            OVERRIDE_GRANT => {
                *d = RawDecision {
                    allowed: true,
                    limit: facts.override_limit(f, shape),
                    reason: ReasonCode::Override,
                }
            }
            _ => {}
        }
    }
    out
}

/// A denial: it carries no limit.
fn denied(reason: ReasonCode) -> RawDecision {
    RawDecision {
        allowed: false,
        limit: Limit::None,
        reason,
    }
}

fn targets(target: Target, program: &Program) -> impl Iterator<Item = usize> + '_ {
    program
        .features
        .iter()
        .enumerate()
        .filter_map(move |(i, f)| {
            let hit = match target {
                Target::All => true,
                Target::AllMetered => f.kind == FeatureKind::Metered,
                Target::Feature(t) => t as usize == i,
            };
            hit.then_some(i)
        })
}

fn apply(
    action: &Action,
    program: &Program,
    shape: Shape,
    facts: &FactVector,
    out: &mut [RawDecision],
) {
    match action {
        Action::Deny { target, reason } => {
            for i in targets(*target, program).collect::<Vec<_>>() {
                out[i] = denied(*reason);
            }
        }
        Action::Grant {
            target,
            limit,
            reason,
        } => {
            // The limit is evaluated once, against the decisions before this action.
            let value = limit
                .as_ref()
                .map(|e| eval_int(e, shape, facts, out).to_limit());
            for i in targets(*target, program).collect::<Vec<_>>() {
                let limit = value.unwrap_or(out[i].limit);
                out[i] = RawDecision {
                    allowed: true,
                    limit,
                    reason: *reason,
                };
            }
        }
        Action::SetLimit {
            target,
            value,
            reason,
        } => {
            let v = eval_int(value, shape, facts, out).to_limit();
            for i in targets(*target, program).collect::<Vec<_>>() {
                if out[i].allowed {
                    out[i] = RawDecision {
                        allowed: true,
                        limit: v,
                        reason: *reason,
                    };
                }
            }
        }
        Action::CapAtUsage { target, reason } => {
            for i in targets(*target, program).collect::<Vec<_>>() {
                if !out[i].allowed || program.features[i].kind != FeatureKind::Metered {
                    continue;
                }
                let usage = facts.get(Fact::Usage(i as u32), shape);
                // min(limit, usage), where unlimited (and no limit) is above every usage.
                let capped = match out[i].limit {
                    Limit::Finite(l) => l.min(usage),
                    Limit::None | Limit::Unlimited => usage,
                };
                out[i] = RawDecision {
                    allowed: true,
                    limit: Limit::Finite(capped),
                    reason: *reason,
                };
            }
        }
    }
}

/// An integer expression in the extended integers of [`crate::ir`]'s module doc.
pub fn eval_int(e: &IntExpr, shape: Shape, facts: &FactVector, out: &[RawDecision]) -> ExtInt {
    match e {
        IntExpr::Const(v) => ExtInt::Finite(*v),
        IntExpr::Unlimited => ExtInt::Infinite,
        IntExpr::Fact(f) => ExtInt::Finite(facts.get(*f, shape)),
        IntExpr::LimitOf(f) => {
            ExtInt::of_limit(out.get(*f as usize).map_or(Limit::None, |d| d.limit))
        }
        IntExpr::Arith(op, a, b) => {
            let (a, b) = (
                eval_int(a, shape, facts, out),
                eval_int(b, shape, facts, out),
            );
            a.arith(*op, b)
        }
    }
}

pub fn eval_bool(e: &BoolExpr, shape: Shape, facts: &FactVector, out: &[RawDecision]) -> bool {
    match e {
        BoolExpr::Const(b) => *b,
        BoolExpr::Cmp(op, a, b) => {
            let (a, b) = (
                eval_int(a, shape, facts, out),
                eval_int(b, shape, facts, out),
            );
            match op {
                CmpOp::Eq => a == b,
                CmpOp::Ne => a != b,
                CmpOp::Lt => a < b,
                CmpOp::Le => a <= b,
                CmpOp::Gt => a > b,
                CmpOp::Ge => a >= b,
            }
        }
        BoolExpr::AllowedOf(f) => out.get(*f as usize).is_some_and(|d| d.allowed),
        BoolExpr::And(a, b) => eval_bool(a, shape, facts, out) && eval_bool(b, shape, facts, out),
        BoolExpr::Or(a, b) => eval_bool(a, shape, facts, out) || eval_bool(b, shape, facts, out),
        BoolExpr::Not(a) => !eval_bool(a, shape, facts, out),
    }
}
