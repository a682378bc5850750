//! Expressions: a syntax tree expression becomes a typed [`Val`] (an IR integer or condition,
//! or a status, plan or override mode that only `==`/`!=` compare), with type errors for
//! everything else.

use super::Checker;
use crate::ir::{
    ArithOp, BoolExpr, CmpOp, Fact, FeatureKind, IntExpr, OVERRIDE_DENY, OVERRIDE_GRANT,
    OVERRIDE_NONE, Span,
};
use crate::lang::ast::{self, BinOp, ExprKind, Name, UnOp};
use crate::lang::diag::codes;

#[derive(Debug, Clone)]
pub(super) enum Val {
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

impl Checker<'_> {
    pub(super) fn elab(&mut self, e: &ast::Expr) -> Option<Val> {
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
                let idx = self.with_usage(arg)?;
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

    pub(super) fn want_int(&mut self, v: Option<Val>, span: Span) -> Option<IntExpr> {
        let int = |v| match v {
            Val::Int(x) => Ok(x),
            other => Err(other),
        };
        self.want(v, span, "an integer", int)
    }

    pub(super) fn want_bool(&mut self, v: Option<Val>, span: Span) -> Option<BoolExpr> {
        let condition = |v| match v {
            Val::Bool(x) => Ok(x),
            other => Err(other),
        };
        self.want(v, span, "a condition", condition)
    }

    /// The value `take` accepts; a bare word is an unknown name, any other value is
    /// reported as not the `expected` type.
    fn want<T>(
        &mut self,
        v: Option<Val>,
        span: Span,
        expected: &str,
        take: impl FnOnce(Val) -> Result<T, Val>,
    ) -> Option<T> {
        match take(v?) {
            Ok(x) => Some(x),
            Err(Val::Word(w)) => {
                self.unknown_word(&w);
                None
            }
            Err(other) => {
                self.type_mismatch(
                    span,
                    format!("expected {expected}, found {}", other.type_name()),
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
