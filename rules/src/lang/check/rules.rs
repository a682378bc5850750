//! Rules: a rule's condition (folded, and refused when no facts can satisfy it) and its
//! action (targets that fit the verb, a reason that agrees with it).

use super::Checker;
use crate::ir::{
    self, Action, BoolExpr, Fact, FeatureKind, IntExpr, OVERRIDE_GRANT, OVERRIDE_NONE, ReasonCode,
    SubStatus, Target,
};
use crate::lang::ast;
use crate::lang::diag::codes;
use crate::lang::fold;

impl Checker<'_> {
    pub(super) fn rule(&mut self, r: &ast::RuleDecl) -> Option<ir::Rule> {
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
            Fact::Status => (SubStatus::None as i64, SubStatus::Unpaid as i64),
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
}
