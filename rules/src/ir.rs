//! The lowered form of a rule program: what the compiler emits WebAssembly from and what the
//! reference interpreter ([`crate::interp`]) runs. Every name is resolved to an index, every
//! expression is typed, nothing refers back to source text except spans for messages.
//!
//! # Semantics (shared by the interpreter and the WebAssembly module)
//!
//! For one account's [`FactVector`], for every feature in declaration order:
//! 1. **Base**: if the account's subscription grants (trialing, active, past due) and names a
//!    plan, the plan's grant decides: allowed with the grant's limit (`granted_by_plan`), else
//!    denied (`denied_not_in_plan`). Without such a subscription: denied
//!    (`denied_no_subscription`).
//! 2. **Add-ons**: each add-on with quantity `q > 0` applies its effects: `Grant` allows the
//!    feature (`granted_by_addon`, keeping any limit); `AddLimit(n)` allows it and adds `n × q`
//!    to its limit, keeping the reason of a feature that was already allowed and giving
//!    `granted_by_addon` to one that was not. A finite limit grows by `n × q` (saturating), no
//!    limit becomes `n × q`, and an unlimited one stays unlimited.
//! 3. **Rules**, in source order: every rule whose condition holds applies its action to the
//!    decisions so far (later rules see earlier rules' effects through `limit(f)`/`allowed(f)`).
//!    `cap … at usage` sets an allowed metered feature's limit to `min(limit, usage)`; an
//!    unlimited limit, or none, becomes `usage`.
//! 4. **Overrides** from the facts (support's per-account overrides) replace the decision:
//!    `deny`, `grant` (with the override's [`Limit`]). Reason `override`.
//!
//! # Limits
//!
//! A decision's limit is a [`Limit`]: [`Limit::None`] (no numeric limit: bool features, and
//! every denied decision — a denial carries no limit), [`Limit::Finite`] or
//! [`Limit::Unlimited`]. The three are distinct values everywhere: in the IR, in the
//! module's memory ([`Limit::to_slots`]: a kind slot and a value slot, so no `i64` is stolen
//! as a sentinel), in test expectations and in the fact vector's override limits.
//!
//! # Integer expressions
//!
//! Integer expressions evaluate to an [`ExtInt`]: an `i64` or +∞. Facts and literals are
//! finite; `unlimited` is +∞; `limit(f)` reads a finite limit as its value, an unlimited one as
//! +∞, and **no limit (a denied feature, or one allowed without a number) as 0** — the same
//! "absent counts as 0" rule add-ons use. Finite arithmetic saturates at the `i64` bounds, as
//! Rust's `saturating_*`. With +∞ (there is no −∞; anything below every integer saturates to
//! `i64::MIN`, as finite arithmetic does):
//!
//! | operation | result |
//! |---|---|
//! | `∞ + x`, `x + ∞` | `∞` (so `limit(f) + 1000` of an unlimited `f` stays unlimited) |
//! | `∞ − x` (any `x`, `∞` included) | `∞` |
//! | `n − ∞` | `i64::MIN` |
//! | `∞ × ∞` | `∞` |
//! | `∞ × n`, `n × ∞` | `∞` if `n > 0`, `0` if `n = 0`, `i64::MIN` if `n < 0` |
//! | comparisons | `∞ = ∞`, and `∞` is greater than every integer |
//!
//! A value that becomes a limit (`grant f = v`, `limit f = v`) is [`Limit::Unlimited`] when
//! +∞ and [`Limit::Finite`] otherwise (so `limit(g)` of a `g` without a limit gives 0).

use serde::{Deserialize, Serialize};
use tollgate_protocol::Reason;

/// A feature's limit in a decision, a plan's grant, an override or an expectation.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// No numeric limit: bool features, every denied decision, and a feature allowed without
    /// a number (`grant f` on a feature that had none).
    None,
    /// At most this many. Rule arithmetic can make it negative: nothing is allowed then.
    Finite(i64),
    /// No upper bound (`= unlimited`).
    Unlimited,
}

/// [`Limit::to_slots`] kind: no limit.
pub const LIMIT_KIND_NONE: i64 = 0;
/// [`Limit::to_slots`] kind: the value slot holds the limit.
pub const LIMIT_KIND_FINITE: i64 = 1;
/// [`Limit::to_slots`] kind: unlimited.
pub const LIMIT_KIND_UNLIMITED: i64 = 2;

impl Limit {
    /// The two `i64` slots a limit takes in the module's memory and the fact vector:
    /// `[kind, value]`, the value 0 unless the kind is [`LIMIT_KIND_FINITE`].
    pub fn to_slots(self) -> [i64; 2] {
        match self {
            Self::None => [LIMIT_KIND_NONE, 0],
            Self::Finite(n) => [LIMIT_KIND_FINITE, n],
            Self::Unlimited => [LIMIT_KIND_UNLIMITED, 0],
        }
    }

    /// The limit a module wrote: `None` unless the slots are exactly what
    /// [`to_slots`](Self::to_slots) makes (an unknown kind, or a value next to a kind without
    /// one, is a broken module).
    pub fn from_slots(kind: i64, value: i64) -> Option<Self> {
        match (kind, value) {
            (LIMIT_KIND_NONE, 0) => Some(Self::None),
            (LIMIT_KIND_FINITE, n) => Some(Self::Finite(n)),
            (LIMIT_KIND_UNLIMITED, 0) => Some(Self::Unlimited),
            _ => None,
        }
    }

    /// The limit an override in the fact vector sets. Total, as the module reads it: a kind
    /// other than finite or unlimited is no limit, and the value counts only for finite.
    pub fn from_fact_slots(kind: i64, value: i64) -> Self {
        match kind {
            LIMIT_KIND_FINITE => Self::Finite(value),
            LIMIT_KIND_UNLIMITED => Self::Unlimited,
            _ => Self::None,
        }
    }

    /// The finite value, if any.
    pub fn finite(self) -> Option<i64> {
        match self {
            Self::Finite(n) => Some(n),
            Self::None | Self::Unlimited => None,
        }
    }
}

/// The value of an integer expression: an `i64`, or +∞. Ordered as the integers with +∞
/// above all of them; the arithmetic is the table in the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExtInt {
    Finite(i64),
    Infinite,
}

impl ExtInt {
    /// What `limit(f)` reads: none counts as 0, unlimited as +∞.
    pub fn of_limit(limit: Limit) -> Self {
        match limit {
            Limit::None => Self::Finite(0),
            Limit::Finite(n) => Self::Finite(n),
            Limit::Unlimited => Self::Infinite,
        }
    }

    /// The limit a value sets (`grant f = v`, `limit f = v`).
    pub fn to_limit(self) -> Limit {
        match self {
            Self::Finite(n) => Limit::Finite(n),
            Self::Infinite => Limit::Unlimited,
        }
    }

    pub fn saturating_add(self, other: Self) -> Self {
        match (self, other) {
            (Self::Finite(a), Self::Finite(b)) => Self::Finite(a.saturating_add(b)),
            _ => Self::Infinite,
        }
    }

    pub fn saturating_sub(self, other: Self) -> Self {
        match (self, other) {
            (Self::Infinite, _) => Self::Infinite,
            (Self::Finite(_), Self::Infinite) => Self::Finite(i64::MIN),
            (Self::Finite(a), Self::Finite(b)) => Self::Finite(a.saturating_sub(b)),
        }
    }

    pub fn saturating_mul(self, other: Self) -> Self {
        match (self, other) {
            (Self::Finite(a), Self::Finite(b)) => Self::Finite(a.saturating_mul(b)),
            (Self::Infinite, Self::Infinite) => Self::Infinite,
            (Self::Infinite, Self::Finite(n)) | (Self::Finite(n), Self::Infinite) => match n {
                1.. => Self::Infinite,
                0 => Self::Finite(0),
                _ => Self::Finite(i64::MIN),
            },
        }
    }

    pub fn arith(self, op: ArithOp, other: Self) -> Self {
        match op {
            ArithOp::Add => self.saturating_add(other),
            ArithOp::Sub => self.saturating_sub(other),
            ArithOp::Mul => self.saturating_mul(other),
        }
    }
}

/// Index into [`Program::features`].
pub type FeatureIdx = u32;
/// Index into [`Program::plans`].
pub type PlanIdx = u32;
/// Index into [`Program::addons`].
pub type AddonIdx = u32;

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    Bool,
    Limit,
    Metered,
}

impl FeatureKind {
    /// The name the language, the catalog tables and the APIs use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bool => "bool",
            Self::Limit => "limit",
            Self::Metered => "metered",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Bool, Self::Limit, Self::Metered]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feature {
    pub key: String,
    pub kind: FeatureKind,
    /// Quota period of a metered feature (`day`, `month`, `year`).
    pub period: Option<String>,
    /// What an account the edge has never seen gets while the control plane is unreachable.
    pub fail_open: bool,
    /// How a metered feature's usage events aggregate, its period, overage and lease size.
    pub meter: Option<tollgate_protocol::usage::MeterSpec>,
}

/// Units an edge leases at a time when the feature does not say (`lease N`).
pub const DEFAULT_LEASE: i64 = 100;

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interval {
    Month,
    Year,
}

impl Interval {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Month => "month",
            Self::Year => "year",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Month, Self::Year]
            .into_iter()
            .find(|i| i.as_str() == s)
    }
}

/// One price tier: up to `up_to` units (None = the rest) at `unit_minor` per unit plus
/// `flat_minor` once.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    pub up_to: Option<i64>,
    pub unit_minor: i64,
    pub flat_minor: i64,
}

/// How a meter's usage is priced at period close.
///
/// Externally tagged (not `tag = "model"`): bundles store programs with `postcard`, which
/// cannot decode internally tagged enums.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pricing {
    /// `unit_minor` per unit beyond `included` (the plan's quota).
    PerUnit { unit_minor: i64 },
    /// Each tier prices the units that fall in it.
    Graduated { tiers: Vec<Tier> },
    /// The tier the total falls in prices every unit.
    Volume { tiers: Vec<Tier> },
    /// `package_minor` per started block of `size` units.
    Package { size: i64, package_minor: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meter {
    pub feature: FeatureIdx,
    pub pricing: Pricing,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub feature: FeatureIdx,
    /// [`Limit::None`] for bool features; limit and metered features always have a number or
    /// [`Limit::Unlimited`].
    pub limit: Limit,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub key: String,
    pub name: String,
    pub price_minor: i64,
    /// ISO-4217, upper-case.
    pub currency: String,
    pub interval: Interval,
    pub trial_days: u32,
    pub grants: Vec<Grant>,
    pub meters: Vec<Meter>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", schema(as = AddonEffectKind))]
pub enum AddonEffect {
    Grant,
    AddLimit(i64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addon {
    pub key: String,
    pub name: String,
    pub price_minor: i64,
    pub currency: String,
    pub interval: Interval,
    pub effects: Vec<(FeatureIdx, AddonEffect)>,
}

/// A value read from the account's facts. Each is one `i64` slot of the [`FactVector`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fact {
    /// 1 when banned.
    Banned,
    /// [`SubStatus`] code.
    Status,
    /// Plan index, or -1 without a granting subscription.
    Plan,
    /// Dunning escalation level, 0 when none.
    DunningLevel,
    /// Days the oldest unpaid invoice is past due, 0 when none.
    DaysPastDue,
    /// 1 while in a trial.
    InTrial,
    /// Days since the Unix epoch (the time, at day resolution).
    Today,
    /// Quantity of an add-on.
    AddonQty(AddonIdx),
    /// Current-period usage of a metered feature.
    Usage(FeatureIdx),
    /// Support override of a feature: [`OVERRIDE_NONE`], [`OVERRIDE_DENY`] or [`OVERRIDE_GRANT`].
    /// The limit a granting override sets is no integer fact: it is a [`Limit`] in two slots,
    /// read with [`FactVector::override_limit`].
    OverrideMode(FeatureIdx),
}

pub const OVERRIDE_NONE: i64 = 0;
pub const OVERRIDE_DENY: i64 = 1;
pub const OVERRIDE_GRANT: i64 = 2;

/// Subscription status codes in [`Fact::Status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubStatus {
    None = 0,
    Trialing = 1,
    Active = 2,
    PastDue = 3,
    Canceled = 4,
    /// Kept after failed dunning, granting nothing until paid.
    Unpaid = 5,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
}

/// A typed integer expression.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntExpr {
    Const(i64),
    /// +∞: the value `unlimited`.
    Unlimited,
    Fact(Fact),
    /// The feature's limit in the decisions so far, as [`ExtInt::of_limit`] reads it.
    LimitOf(FeatureIdx),
    Arith(ArithOp, Box<IntExpr>, Box<IntExpr>),
}

/// A typed boolean expression.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoolExpr {
    Const(bool),
    Cmp(CmpOp, IntExpr, IntExpr),
    /// Whether the feature is allowed in the decisions so far.
    AllowedOf(FeatureIdx),
    And(Box<BoolExpr>, Box<BoolExpr>),
    Or(Box<BoolExpr>, Box<BoolExpr>),
    Not(Box<BoolExpr>),
}

/// Which features an action touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    All,
    AllMetered,
    Feature(FeatureIdx),
}

/// Decision reason codes; the numbers are the WebAssembly module's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    GrantedByPlan = 0,
    DeniedNotInPlan = 1,
    DeniedNoSubscription = 2,
    DeniedBanned = 3,
    GrantedByAddon = 4,
    GrantedByRule = 5,
    DeniedByRule = 6,
    DeniedPastDue = 7,
    CappedByRule = 8,
    Override = 9,
}

impl ReasonCode {
    pub const ALL: [ReasonCode; 10] = [
        Self::GrantedByPlan,
        Self::DeniedNotInPlan,
        Self::DeniedNoSubscription,
        Self::DeniedBanned,
        Self::GrantedByAddon,
        Self::GrantedByRule,
        Self::DeniedByRule,
        Self::DeniedPastDue,
        Self::CappedByRule,
        Self::Override,
    ];

    /// The reason with this number. `ALL` is in number order (a test holds it), so this is an
    /// index, not a search: hosts decode every decision of every account with it.
    pub fn from_code(code: i64) -> Option<Self> {
        usize::try_from(code)
            .ok()
            .and_then(|i| Self::ALL.get(i))
            .copied()
    }

    /// The name the rule language and messages use (`granted_by_plan`).
    /// The wire name, as edges answer it (one list of strings: `tollgate_protocol::Reason`).
    pub fn as_str(self) -> &'static str {
        self.wire().as_str()
    }

    /// The wire's reason for this code, as edges answer it.
    pub fn wire(self) -> Reason {
        match self {
            Self::GrantedByPlan => Reason::GrantedByPlan,
            Self::DeniedNotInPlan => Reason::DeniedNotInPlan,
            Self::DeniedNoSubscription => Reason::DeniedNoSubscription,
            Self::DeniedBanned => Reason::DeniedBanned,
            Self::GrantedByAddon => Reason::GrantedByAddon,
            Self::GrantedByRule => Reason::GrantedByRule,
            Self::DeniedByRule => Reason::DeniedByRule,
            Self::DeniedPastDue => Reason::DeniedPastDue,
            Self::CappedByRule => Reason::CappedByRule,
            Self::Override => Reason::Override,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Deny the targets.
    Deny { target: Target, reason: ReasonCode },
    /// Allow the targets, optionally setting their limit.
    Grant {
        target: Target,
        limit: Option<IntExpr>,
        reason: ReasonCode,
    },
    /// Set the limit of the targets that are allowed (denied ones stay denied).
    SetLimit {
        target: Target,
        value: IntExpr,
        reason: ReasonCode,
    },
    /// Metered targets: limit := min(limit, current usage) — "read-only".
    CapAtUsage { target: Target, reason: ReasonCode },
}

/// Byte range in the source, for messages. In a program of several files, a range of the
/// files laid end to end ([`crate::lang::Sources::locate`] finds the file and the range in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub name: String,
    pub when: BoolExpr,
    pub action: Action,
    pub span: Span,
}

/// What a test expects of one feature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expectation {
    pub feature: FeatureIdx,
    pub allowed: Option<bool>,
    /// `limit n`, `limit unlimited` (holds only for an allowed, unlimited decision) or
    /// `limit none` (holds only for a decision without a limit).
    pub limit: Option<Limit>,
    pub reason: Option<ReasonCode>,
}

/// A `test` block: facts given, decisions expected. Runs at compile time and on every edge
/// before a bundle is swapped in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestCase {
    pub name: String,
    /// Facts, overrides included.
    pub given: FactVector,
    pub expect: Vec<Expectation>,
    pub span: Span,
}

/// A checked, resolved program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Program {
    pub features: Vec<Feature>,
    pub plans: Vec<Plan>,
    pub addons: Vec<Addon>,
    pub rules: Vec<Rule>,
    pub tests: Vec<TestCase>,
}

/// How many add-ons and features a program has: all the fact layout depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub addons: usize,
    pub features: usize,
}

impl Program {
    pub fn shape(&self) -> Shape {
        Shape {
            addons: self.addons.len(),
            features: self.features.len(),
        }
    }
}

pub const FIXED_SLOTS: usize = 7;
/// Slots per feature after the usage slots: override mode, override limit kind and value.
pub const OVERRIDE_SLOTS: usize = 3;

impl Fact {
    /// Slot of this fact in the [`FactVector`] of a program of this shape.
    pub fn slot(self, shape: Shape) -> usize {
        let usage = FIXED_SLOTS + shape.addons;
        let overrides = usage + shape.features;
        match self {
            Fact::Banned => 0,
            Fact::Status => 1,
            Fact::Plan => 2,
            Fact::DunningLevel => 3,
            Fact::DaysPastDue => 4,
            Fact::InTrial => 5,
            Fact::Today => 6,
            Fact::AddonQty(a) => FIXED_SLOTS + a as usize,
            Fact::Usage(f) => usage + f as usize,
            Fact::OverrideMode(f) => overrides + OVERRIDE_SLOTS * f as usize,
        }
    }
}

/// The slots of feature `f`'s override limit, `[kind, value]` as [`Limit::to_slots`] lays
/// them out, in the [`FactVector`] of a program of this shape.
pub fn override_limit_slots(f: FeatureIdx, shape: Shape) -> [usize; 2] {
    let mode = Fact::OverrideMode(f).slot(shape);
    [mode + 1, mode + 2]
}

/// The facts of one account as the module sees them: a fixed layout of `i64` slots.
///
/// Layout (index → meaning): `0` banned, `1` status, `2` plan, `3` dunning level,
/// `4` days past due, `5` in trial, `6` today, then one slot per add-on (quantity), then one
/// slot per feature (usage), then three per feature: override mode, and the override's
/// [`Limit`] as kind and value ([`Limit::to_slots`]; both zero is no limit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FactVector(pub Vec<i64>);

impl FactVector {
    pub fn len_for(shape: Shape) -> usize {
        FIXED_SLOTS + shape.addons + (1 + OVERRIDE_SLOTS) * shape.features
    }

    /// An active account without a subscription, no usage, no overrides.
    pub fn empty(shape: Shape) -> Self {
        let mut v = Self(vec![0; Self::len_for(shape)]);
        v.set(Fact::Plan, shape, -1);
        v
    }

    /// The limit a granting override of `f` sets ([`Limit::from_fact_slots`]).
    pub fn override_limit(&self, f: FeatureIdx, shape: Shape) -> Limit {
        let [kind, value] = override_limit_slots(f, shape).map(|s| self.0.get(s).copied());
        Limit::from_fact_slots(kind.unwrap_or(0), value.unwrap_or(0))
    }

    pub fn set_override_limit(&mut self, f: FeatureIdx, shape: Shape, limit: Limit) {
        for (slot, v) in override_limit_slots(f, shape)
            .into_iter()
            .zip(limit.to_slots())
        {
            if let Some(s) = self.0.get_mut(slot) {
                *s = v;
            }
        }
    }

    pub fn get(&self, fact: Fact, shape: Shape) -> i64 {
        self.0.get(fact.slot(shape)).copied().unwrap_or(0)
    }

    pub fn set(&mut self, fact: Fact, shape: Shape, value: i64) {
        let slot = fact.slot(shape);
        if slot < self.0.len() {
            self.0[slot] = value;
        }
    }
}

/// One feature's decision as the module and the interpreter produce it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawDecision {
    pub allowed: bool,
    /// Always [`Limit::None`] when denied.
    pub limit: Limit,
    pub reason: ReasonCode,
}

#[cfg(test)]
mod tests {
    use super::ReasonCode;

    #[test]
    fn every_reason_decodes_from_its_number_and_nothing_else_does() {
        for (i, r) in ReasonCode::ALL.into_iter().enumerate() {
            assert_eq!(r as i64, i as i64, "ALL is in number order");
            assert_eq!(ReasonCode::from_code(r as i64), Some(r));
        }
        for bad in [-1, ReasonCode::ALL.len() as i64, i64::MIN, i64::MAX] {
            assert_eq!(ReasonCode::from_code(bad), None);
        }
    }
}
