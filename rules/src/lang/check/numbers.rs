//! Numbers and money: literals with a lower bound, prices, the meter of a metered feature and
//! the pricing of a plan's meter (tiers in ascending order, the open tier last). The bounds of
//! amounts and sizes are [`crate::bounds`]'s; the structure is checked here.

use super::Checker;
use crate::ir::{self, DEFAULT_LEASE, Span};
use crate::lang::ast;
use crate::lang::diag::codes;
use tollgate_protocol::usage::{Aggregation, MeterPeriod, MeterSpec};

pub(super) type Price = (i64, String, ir::Interval);

impl Checker<'_> {
    /// The meter of a metered feature; `None` after reporting an error.
    pub(super) fn meter_spec(&mut self, m: &ast::MeteredDecl) -> Option<MeterSpec> {
        let period = MeterPeriod::parse(&m.period.text)?;
        let aggregation = match &m.aggregation {
            None | Some(ast::AggregationDecl::Sum) => Aggregation::Sum,
            Some(ast::AggregationDecl::Count) => Aggregation::Count,
            Some(ast::AggregationDecl::Max) => Aggregation::Max,
            Some(ast::AggregationDecl::Latest) => Aggregation::Latest,
            Some(ast::AggregationDecl::UniqueCount(p)) => Aggregation::UniqueCount {
                property: p.text.clone(),
            },
        };
        let lease = match m.lease {
            Some(lit) => self.at_least(lit, 1, codes::INVALID_VALUE, "a lease size")?,
            None => DEFAULT_LEASE,
        };
        Some(MeterSpec {
            aggregation,
            period,
            soft: m.soft,
            lease,
        })
    }

    /// A literal that must be at least `min`; `None` when overflowed or out of range.
    pub(super) fn at_least(
        &mut self,
        lit: ast::Lit,
        min: i64,
        code: &'static str,
        what: &str,
    ) -> Option<i64> {
        let v = lit.value?;
        if v < min {
            let bound = if min == 0 {
                "negative".to_string()
            } else {
                format!("less than {min}")
            };
            self.diags.error(
                code,
                lit.span,
                format!("{what} must not be {bound}, found {v}"),
            );
            return None;
        }
        Some(v)
    }

    /// A price as written; its bounds (amount, currency) are [`crate::bounds`]'s to check.
    pub(super) fn money(&mut self, m: &ast::Money) -> Option<Price> {
        Some((m.amount.value?, m.currency.text.clone(), m.interval))
    }

    /// The tiers and whether their structure is sound (an error was reported if not);
    /// `None` when one of their numbers did not even parse.
    fn tiers(&mut self, tiers: &[ast::Tier], at: Span) -> Option<(Vec<ir::Tier>, bool)> {
        if tiers.is_empty() {
            self.diags.error(
                codes::INVALID_TIERS,
                at,
                "a tiered price needs at least one tier",
            );
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        let mut complete = true;
        let mut prev: Option<i64> = None;
        for (i, t) in tiers.iter().enumerate() {
            let last = i + 1 == tiers.len();
            let up_to = match t.up_to {
                Some(lit) => {
                    let v = lit.value;
                    match (v, prev) {
                        (Some(v), Some(p)) if v <= p => {
                            self.diags.error(
                                codes::TIERS_NOT_ASCENDING,
                                lit.span,
                                format!("tier bound {v} is not above the previous bound {p}"),
                            );
                            ok = false;
                        }
                        _ => {}
                    }
                    if let Some(v) = v {
                        prev = Some(v);
                    }
                    if last {
                        self.diags.error_with_note(
                            codes::INVALID_TIERS,
                            t.span,
                            "the last tier has a bound, so units above it have no price",
                            "end with `then at <price>`",
                        );
                        ok = false;
                    }
                    Some(v)
                }
                None => {
                    if !last {
                        self.diags.error(
                            codes::INVALID_TIERS,
                            t.span,
                            "the open `then` tier must be the last one",
                        );
                        ok = false;
                    }
                    None
                }
            };
            // Amounts are bounded by `bounds`.
            let unit = t.unit.value;
            let flat = match t.flat {
                Some(f) => f.value,
                None => Some(0),
            };
            match (up_to, unit, flat) {
                (Some(Some(u)), Some(unit), Some(flat)) => out.push(ir::Tier {
                    up_to: Some(u),
                    unit_minor: unit,
                    flat_minor: flat,
                }),
                (None, Some(unit), Some(flat)) => out.push(ir::Tier {
                    up_to: None,
                    unit_minor: unit,
                    flat_minor: flat,
                }),
                _ => complete = false,
            }
        }
        complete.then_some((out, ok))
    }

    /// The pricing and whether it is sound (an error was reported if not); `None` when one
    /// of its numbers did not parse. Amounts and sizes are bounded by [`crate::bounds`], the
    /// structure of tiers is checked here.
    pub(super) fn pricing(
        &mut self,
        p: &ast::PricingDecl,
        at: Span,
    ) -> Option<(ir::Pricing, bool)> {
        Some(match p {
            ast::PricingDecl::PerUnit(lit) => (
                ir::Pricing::PerUnit {
                    unit_minor: lit.value?,
                },
                true,
            ),
            ast::PricingDecl::Graduated(t) => {
                let (tiers, ok) = self.tiers(t, at)?;
                (ir::Pricing::Graduated { tiers }, ok)
            }
            ast::PricingDecl::Volume(t) => {
                let (tiers, ok) = self.tiers(t, at)?;
                (ir::Pricing::Volume { tiers }, ok)
            }
            ast::PricingDecl::Package { size, price } => (
                ir::Pricing::Package {
                    size: size.value?,
                    package_minor: price.value?,
                },
                true,
            ),
        })
    }
}
