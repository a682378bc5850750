//! Constant folding and the "can this condition ever hold?" analysis behind
//! `rule_never_fires`.
//!
//! The analysis is sound in one direction only: it says "never" only when it can prove it,
//! from constants, from the range each fact can take (a status is 0..=4, a usage is never
//! negative, ...), and from comparisons of one fact with constants that contradict each other
//! (`days_past_due > 5 and days_past_due < 3`). Anything it cannot see through (arithmetic on
//! facts, `allowed(f)`, `limit(f)`) counts as "may hold". The condition is brought into
//! disjunctive normal form, capped at [`MAX_DISJUNCTS`] terms, past which it gives up and says
//! "may hold".

use crate::ir::{BoolExpr, CmpOp, ExtInt, Fact, IntExpr};

/// Largest disjunctive normal form the analysis builds before giving up ("may hold").
pub const MAX_DISJUNCTS: usize = 256;

/// The value of a constant expression, in the extended integers the module computes in.
fn constant(e: &IntExpr) -> Option<ExtInt> {
    match e {
        IntExpr::Const(v) => Some(ExtInt::Finite(*v)),
        IntExpr::Unlimited => Some(ExtInt::Infinite),
        _ => None,
    }
}

fn from_constant(v: ExtInt) -> IntExpr {
    match v {
        ExtInt::Finite(v) => IntExpr::Const(v),
        ExtInt::Infinite => IntExpr::Unlimited,
    }
}

/// Folds constant operations with the evaluation's own arithmetic ([`ExtInt`]), so a
/// folded program decides exactly as the unfolded one.
pub fn fold_int(e: IntExpr) -> IntExpr {
    match e {
        IntExpr::Arith(op, a, b) => {
            let (a, b) = (fold_int(*a), fold_int(*b));
            match (constant(&a), constant(&b)) {
                (Some(x), Some(y)) => from_constant(x.arith(op, y)),
                _ => IntExpr::Arith(op, Box::new(a), Box::new(b)),
            }
        }
        other => other,
    }
}

pub fn cmp<T: Ord>(op: CmpOp, x: T, y: T) -> bool {
    match op {
        CmpOp::Eq => x == y,
        CmpOp::Ne => x != y,
        CmpOp::Lt => x < y,
        CmpOp::Le => x <= y,
        CmpOp::Gt => x > y,
        CmpOp::Ge => x >= y,
    }
}

pub fn fold_bool(e: BoolExpr) -> BoolExpr {
    match e {
        BoolExpr::Cmp(op, a, b) => {
            let (a, b) = (fold_int(a), fold_int(b));
            match (constant(&a), constant(&b)) {
                (Some(x), Some(y)) => BoolExpr::Const(cmp(op, x, y)),
                _ => BoolExpr::Cmp(op, a, b),
            }
        }
        BoolExpr::And(a, b) => match (fold_bool(*a), fold_bool(*b)) {
            (BoolExpr::Const(false), _) | (_, BoolExpr::Const(false)) => BoolExpr::Const(false),
            (BoolExpr::Const(true), x) | (x, BoolExpr::Const(true)) => x,
            (a, b) => BoolExpr::And(Box::new(a), Box::new(b)),
        },
        BoolExpr::Or(a, b) => match (fold_bool(*a), fold_bool(*b)) {
            (BoolExpr::Const(true), _) | (_, BoolExpr::Const(true)) => BoolExpr::Const(true),
            (BoolExpr::Const(false), x) | (x, BoolExpr::Const(false)) => x,
            (a, b) => BoolExpr::Or(Box::new(a), Box::new(b)),
        },
        BoolExpr::Not(a) => match fold_bool(*a) {
            BoolExpr::Const(b) => BoolExpr::Const(!b),
            x => BoolExpr::Not(Box::new(x)),
        },
        other => other,
    }
}

/// One conjunction: each constrained fact with its inclusive range.
type Conj = Vec<(Fact, i64, i64)>;

fn negate(op: CmpOp) -> CmpOp {
    match op {
        CmpOp::Eq => CmpOp::Ne,
        CmpOp::Ne => CmpOp::Eq,
        CmpOp::Lt => CmpOp::Ge,
        CmpOp::Le => CmpOp::Gt,
        CmpOp::Gt => CmpOp::Le,
        CmpOp::Ge => CmpOp::Lt,
    }
}

/// `c op f` as `f op' c`.
fn mirror(op: CmpOp) -> CmpOp {
    match op {
        CmpOp::Lt => CmpOp::Gt,
        CmpOp::Le => CmpOp::Ge,
        CmpOp::Gt => CmpOp::Lt,
        CmpOp::Ge => CmpOp::Le,
        other => other,
    }
}

/// Whether `e` may hold for some facts, each fact ranging over `domain(fact)`.
pub fn may_hold(e: &BoolExpr, domain: &dyn Fn(Fact) -> (i64, i64)) -> bool {
    dnf(e, false, domain).is_none_or(|terms| !terms.is_empty())
}

/// Disjunctive normal form of `e` (negated when `neg`): `None` when too large to tell.
fn dnf(e: &BoolExpr, neg: bool, domain: &dyn Fn(Fact) -> (i64, i64)) -> Option<Vec<Conj>> {
    let unknown = || Some(vec![Vec::new()]);
    match e {
        BoolExpr::Const(b) => Some(if *b != neg { vec![Vec::new()] } else { vec![] }),
        BoolExpr::Cmp(op, a, b) => {
            let op = if neg { negate(*op) } else { *op };
            match (a, b) {
                (IntExpr::Fact(f), IntExpr::Const(c)) => Some(ranges(*f, op, *c, domain)),
                (IntExpr::Const(c), IntExpr::Fact(f)) => Some(ranges(*f, mirror(op), *c, domain)),
                _ => unknown(),
            }
        }
        BoolExpr::AllowedOf(_) => unknown(),
        BoolExpr::Not(a) => dnf(a, !neg, domain),
        BoolExpr::And(a, b) | BoolExpr::Or(a, b) => {
            let conjunction = matches!(e, BoolExpr::And(..)) != neg;
            let (a, b) = (dnf(a, neg, domain)?, dnf(b, neg, domain)?);
            if conjunction {
                if a.len().saturating_mul(b.len()) > MAX_DISJUNCTS {
                    return None;
                }
                let mut out = Vec::new();
                for x in &a {
                    for y in &b {
                        if let Some(c) = meet(x, y) {
                            out.push(c);
                        }
                    }
                }
                Some(out)
            } else {
                if a.len() + b.len() > MAX_DISJUNCTS {
                    return None;
                }
                let mut out = a;
                out.extend(b);
                Some(out)
            }
        }
    }
}

/// The ranges of `f` where `f op c` holds, within its domain (one or two, or none).
fn ranges(f: Fact, op: CmpOp, c: i64, domain: &dyn Fn(Fact) -> (i64, i64)) -> Vec<Conj> {
    let below = c.checked_sub(1).map(|c1| (i64::MIN, c1));
    let above = c.checked_add(1).map(|c1| (c1, i64::MAX));
    let raw: Vec<(i64, i64)> = match op {
        CmpOp::Eq => vec![(c, c)],
        CmpOp::Ne => below.into_iter().chain(above).collect(),
        CmpOp::Lt => below.into_iter().collect(),
        CmpOp::Le => vec![(i64::MIN, c)],
        CmpOp::Gt => above.into_iter().collect(),
        CmpOp::Ge => vec![(c, i64::MAX)],
    };
    let (dlo, dhi) = domain(f);
    raw.into_iter()
        .map(|(lo, hi)| (lo.max(dlo), hi.min(dhi)))
        .filter(|(lo, hi)| lo <= hi)
        .map(|(lo, hi)| vec![(f, lo, hi)])
        .collect()
}

/// Both conjunctions at once, or `None` when some fact's ranges do not overlap.
fn meet(x: &Conj, y: &Conj) -> Option<Conj> {
    let mut out = x.clone();
    for &(f, lo, hi) in y {
        match out.iter_mut().find(|(g, _, _)| *g == f) {
            Some(slot) => {
                slot.1 = slot.1.max(lo);
                slot.2 = slot.2.min(hi);
                if slot.1 > slot.2 {
                    return None;
                }
            }
            None => out.push((f, lo, hi)),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::ArithOp;

    fn domain(f: Fact) -> (i64, i64) {
        match f {
            Fact::Status => (0, 5),
            Fact::DaysPastDue => (0, i64::MAX),
            _ => (i64::MIN, i64::MAX),
        }
    }

    fn c(op: CmpOp, f: Fact, v: i64) -> BoolExpr {
        BoolExpr::Cmp(op, IntExpr::Fact(f), IntExpr::Const(v))
    }

    fn and(a: BoolExpr, b: BoolExpr) -> BoolExpr {
        BoolExpr::And(Box::new(a), Box::new(b))
    }

    fn or(a: BoolExpr, b: BoolExpr) -> BoolExpr {
        BoolExpr::Or(Box::new(a), Box::new(b))
    }

    #[test]
    fn folding_saturates_and_simplifies() {
        let big = IntExpr::Arith(
            ArithOp::Mul,
            Box::new(IntExpr::Const(i64::MAX)),
            Box::new(IntExpr::Const(2)),
        );
        assert_eq!(fold_int(big), IntExpr::Const(i64::MAX));
        // Unlimited folds as evaluation computes it: it absorbs additions.
        let more = IntExpr::Arith(
            ArithOp::Add,
            Box::new(IntExpr::Unlimited),
            Box::new(IntExpr::Const(-5)),
        );
        assert_eq!(fold_int(more), IntExpr::Unlimited);
        let e = and(
            BoolExpr::Const(true),
            BoolExpr::Cmp(CmpOp::Lt, IntExpr::Const(3), IntExpr::Const(2)),
        );
        assert_eq!(fold_bool(e), BoolExpr::Const(false));
        let keep = c(CmpOp::Gt, Fact::Today, 1);
        assert_eq!(fold_bool(or(BoolExpr::Const(false), keep.clone())), keep);
    }

    #[test]
    fn contradictions_are_found_and_satisfiable_conditions_are_not_flagged() {
        let dpd = Fact::DaysPastDue;
        let cases = [
            (and(c(CmpOp::Gt, dpd, 5), c(CmpOp::Lt, dpd, 3)), false),
            (and(c(CmpOp::Gt, dpd, 5), c(CmpOp::Lt, dpd, 7)), true),
            (c(CmpOp::Lt, dpd, 0), false),
            (c(CmpOp::Eq, Fact::Status, 9), false),
            (
                and(c(CmpOp::Eq, Fact::Status, 1), c(CmpOp::Eq, Fact::Status, 2)),
                false,
            ),
            (
                and(
                    or(c(CmpOp::Eq, Fact::Status, 1), c(CmpOp::Eq, Fact::Status, 2)),
                    c(CmpOp::Ne, Fact::Status, 1),
                ),
                true,
            ),
            (
                BoolExpr::Not(Box::new(or(c(CmpOp::Ge, dpd, 0), BoolExpr::AllowedOf(0)))),
                false,
            ),
            (c(CmpOp::Lt, Fact::Today, i64::MIN), false),
            (and(BoolExpr::AllowedOf(1), c(CmpOp::Gt, dpd, 1)), true),
        ];
        for (i, (e, expected)) in cases.iter().enumerate() {
            assert_eq!(may_hold(e, &domain), *expected, "case {i}: {e:?}");
        }
    }

    #[test]
    fn huge_conditions_give_up_and_say_may_hold() {
        // (q0 == 0 or q0 == 1) and ... (9 times) has 512 terms, past the cap: the analysis
        // gives up before it reaches the contradiction at the end.
        let mut e = or(
            c(CmpOp::Eq, Fact::AddonQty(0), 0),
            c(CmpOp::Eq, Fact::AddonQty(0), 1),
        );
        for i in 1..9 {
            let q = Fact::AddonQty(i);
            e = and(e, or(c(CmpOp::Eq, q, 0), c(CmpOp::Eq, q, 1)));
        }
        let never = c(CmpOp::Lt, Fact::Today, i64::MIN);
        assert!(!may_hold(&never, &domain));
        assert!(may_hold(&and(e, never), &domain));
    }
}
