//! The reference interpreter: the semantics of [`crate::ir`] written plainly, used to check
//! the WebAssembly module (a property test runs both on random programs and facts) and to run
//! `test` blocks where no WebAssembly engine is at hand.

use crate::ir::{
    Action, AddonEffect, ArithOp, BoolExpr, CmpOp, Fact, FactVector, FeatureKind, IntExpr,
    NO_LIMIT, OVERRIDE_DENY, OVERRIDE_GRANT, Program, RawDecision, ReasonCode, Shape, SubStatus,
    Target,
};

/// Whether a status code grants its plan's features.
pub fn status_grants(status: i64) -> bool {
    status == SubStatus::Trialing as i64
        || status == SubStatus::Active as i64
        || status == SubStatus::PastDue as i64
}

/// `limit + n` where an absent limit counts as 0.
fn add_limit(limit: i64, n: i64) -> i64 {
    if limit == NO_LIMIT {
        n
    } else {
        limit.saturating_add(n)
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
                        if d.allowed { d.limit } else { NO_LIMIT },
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
                *d = RawDecision {
                    allowed: false,
                    limit: NO_LIMIT,
                    reason: ReasonCode::Override,
                }
            }
            OVERRIDE_GRANT => {
                *d = RawDecision {
                    allowed: true,
                    limit: fact(Fact::OverrideLimit(f)),
                    reason: ReasonCode::Override,
                }
            }
            _ => {}
        }
    }
    out
}

fn denied(reason: ReasonCode) -> RawDecision {
    RawDecision {
        allowed: false,
        limit: NO_LIMIT,
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
            let value = limit.as_ref().map(|e| eval_int(e, shape, facts, out));
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
            let v = eval_int(value, shape, facts, out);
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
                let capped = if out[i].limit == NO_LIMIT {
                    usage
                } else {
                    out[i].limit.min(usage)
                };
                out[i] = RawDecision {
                    allowed: true,
                    limit: capped,
                    reason: *reason,
                };
            }
        }
    }
}

pub fn eval_int(e: &IntExpr, shape: Shape, facts: &FactVector, out: &[RawDecision]) -> i64 {
    match e {
        IntExpr::Const(v) => *v,
        IntExpr::Fact(f) => facts.get(*f, shape),
        IntExpr::LimitOf(f) => out.get(*f as usize).map_or(NO_LIMIT, |d| d.limit),
        IntExpr::Arith(op, a, b) => {
            let (a, b) = (
                eval_int(a, shape, facts, out),
                eval_int(b, shape, facts, out),
            );
            match op {
                ArithOp::Add => a.saturating_add(b),
                ArithOp::Sub => a.saturating_sub(b),
                ArithOp::Mul => a.saturating_mul(b),
            }
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
