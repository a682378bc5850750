//! The syntax tree: what was written, with spans, before any name is resolved.

use crate::ir::{Interval, Span};

/// An identifier as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    pub text: String,
    pub span: Span,
}

/// A string literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text {
    pub value: String,
    pub span: Span,
}

/// An integer literal; `value` is `None` when it overflowed (already reported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lit {
    pub value: Option<i64>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Feature(FeatureDecl),
    Plan(PlanDecl),
    Addon(AddonDecl),
    Rule(RuleDecl),
    Test(TestDecl),
    /// A declaration whose key parsed but whose body did not: its name is known, so uses of it
    /// are not reported as unknown on top of the syntax error.
    Broken {
        kind: BrokenKind,
        key: Name,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokenKind {
    Feature,
    Plan,
    Addon,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KindDecl {
    Bool,
    Limit,
    /// `metered per <period> [aggregation] [soft] [lease N]`.
    Metered(MeteredDecl),
}

/// A metered feature's meter: period (`day`, `month`, `year`), how events aggregate (`sum`
/// when not given), whether overage is allowed (`soft`), and the lease size for edges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeteredDecl {
    pub period: Name,
    pub aggregation: Option<AggregationDecl>,
    pub soft: bool,
    pub lease: Option<Lit>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AggregationDecl {
    Sum,
    Count,
    Max,
    Latest,
    /// `unique_count(property)`.
    UniqueCount(Name),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureDecl {
    pub key: Name,
    pub kind: KindDecl,
    pub fail_open: bool,
    pub span: Span,
}

/// `price <amount> <CUR> per <interval>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Money {
    pub amount: Lit,
    pub currency: Name,
    pub interval: Interval,
    pub span: Span,
}

/// `= <int>` or `= unlimited`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Int(Lit),
    Unlimited(Span),
}

/// What `expect f limit ...` names: a number, `unlimited`, or `none` (no limit) — three
/// different expectations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedLimit {
    Int(Lit),
    Unlimited(Span),
    None(Span),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    /// `None` for the open `then` tier.
    pub up_to: Option<Lit>,
    pub unit: Lit,
    pub flat: Option<Lit>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PricingDecl {
    PerUnit(Lit),
    Graduated(Vec<Tier>),
    Volume(Vec<Tier>),
    Package { size: Lit, price: Lit },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanClause {
    Price(Money),
    Trial {
        days: Lit,
        span: Span,
    },
    Grant {
        feature: Name,
        amount: Option<Amount>,
        span: Span,
    },
    Meter {
        feature: Name,
        pricing: PricingDecl,
        span: Span,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanDecl {
    pub key: Name,
    pub name: Text,
    pub clauses: Vec<PlanClause>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddonClause {
    Price(Money),
    Grant {
        feature: Name,
        span: Span,
    },
    /// `<feature> + <n>`: per unit of quantity.
    AddLimit {
        feature: Name,
        amount: Lit,
        span: Span,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddonDecl {
    pub key: Name,
    pub name: Text,
    pub clauses: Vec<AddonClause>,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnOp {
    Not,
    Neg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExprKind {
    Int(Option<i64>),
    Bool(bool),
    /// A fact (`banned`) or a value named by the other side of a comparison (`past_due`, a plan).
    Name(String),
    /// `usage(f)`, `addon(a)`, `limit(f)`, `allowed(f)`, `override(f)`.
    Call {
        func: Name,
        arg: Name,
    },
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
    /// Height of this tree (a leaf is 1); bounded by the parser.
    pub depth: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetDecl {
    All(Span),
    Metered(Span),
    Feature(Name),
}

/// The value of `grant f = ...` / `limit f = ...` in a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueDecl {
    Unlimited(Span),
    Expr(Expr),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionDecl {
    Deny(TargetDecl),
    Grant(Name, Option<ValueDecl>),
    Limit(TargetDecl, ValueDecl),
    Cap(TargetDecl),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleDecl {
    pub name: Text,
    pub when: Expr,
    pub action: ActionDecl,
    pub action_span: Span,
    pub reason: Option<Name>,
    pub span: Span,
}

/// What a `given` sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GivenTarget {
    /// `banned`, `status`, `plan`, `dunning_level`, `days_past_due`, `in_trial`, `today`.
    Fact(Name),
    Usage(Name),
    Addon(Name),
    Override(Name),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GivenValue {
    /// No `=`: a flag such as `banned`.
    Flag,
    Int(Lit),
    Bool(bool, Span),
    /// A status, a plan key, `deny`, `none`.
    Word(Name),
    /// `grant` or `grant limit <n>` (overrides).
    Grant(Option<Amount>, Span),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Given {
    pub target: GivenTarget,
    pub value: GivenValue,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectDecl {
    pub feature: Name,
    pub allowed: Option<(bool, Span)>,
    /// `limit <n>`, `limit unlimited`, `limit none`.
    pub limit: Option<ExpectedLimit>,
    pub reason: Option<Name>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestDecl {
    pub name: Text,
    pub givens: Vec<Given>,
    pub expects: Vec<ExpectDecl>,
    pub span: Span,
}
