//! Pricing a meter's usage for one period, the four models of the catalog
//! ([`tollgate_rules::ir::Pricing`]), and the proration rule of plan changes. Pure functions over
//! integer minor units; every product and sum is checked.
//!
//! | model | what is billed |
//! |---|---|
//! | per unit | `unit_minor` × the units beyond the plan's grant (`included`) |
//! | package | `package_minor` × the started packages of `size` units beyond the grant |
//! | graduated | every tier prices the units that fall in it, plus its flat fee when any do |
//! | volume | the tier the whole quantity falls in prices every unit, plus its flat fee |
//!
//! Tiered models price the whole quantity: a free first tier (`up to 5_000_000 at 0`) is how
//! they include units, so the grant is not subtracted a second time. A quantity of zero costs
//! nothing in every model (no flat fee for a meter nobody used).

use serde::{Deserialize, Serialize};
use tollgate_rules::ir::{Pricing, Tier};

use crate::money::{self, Overflow};

/// One tier's share of a priced quantity, as an invoice line shows it.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierCharge {
    /// First unit of the tier (1-based, inclusive) and last (`None`: no upper bound).
    pub from: i64,
    pub up_to: Option<i64>,
    /// Units billed in this tier.
    pub quantity: i64,
    pub unit_minor: i64,
    pub flat_minor: i64,
    pub amount_minor: i64,
}

/// A priced quantity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Priced {
    /// Units billed (beyond the grant for per-unit and package pricing).
    pub billable: i64,
    pub amount_minor: i64,
    /// The tiers that priced it (tiered models only; empty otherwise).
    pub tiers: Vec<TierCharge>,
}

/// Prices `quantity` units (≥ 0) under `pricing`; `included` is the plan's grant of the metered
/// feature (`None`: unlimited, so per-unit and package pricing bill nothing).
pub fn price(pricing: &Pricing, included: Option<i64>, quantity: i64) -> Result<Priced, Overflow> {
    let quantity = quantity.max(0);
    let beyond = match included {
        Some(n) => quantity.saturating_sub(n.max(0)).max(0),
        None => 0,
    };
    match pricing {
        Pricing::PerUnit { unit_minor } => Ok(Priced {
            billable: beyond,
            amount_minor: money::mul(beyond, *unit_minor)?,
            tiers: Vec::new(),
        }),
        Pricing::Package {
            size,
            package_minor,
        } => {
            let size = (*size).max(1);
            let packages = beyond / size + i64::from(beyond % size != 0);
            Ok(Priced {
                billable: beyond,
                amount_minor: money::mul(packages, *package_minor)?,
                tiers: Vec::new(),
            })
        }
        Pricing::Graduated { tiers } => graduated(tiers, quantity),
        Pricing::Volume { tiers } => volume(tiers, quantity),
    }
}

fn graduated(tiers: &[Tier], quantity: i64) -> Result<Priced, Overflow> {
    let mut out = Vec::new();
    let mut below = 0i64; // units priced by earlier tiers
    let mut amount = 0i64;
    for t in tiers {
        if below >= quantity {
            break;
        }
        let top = t.up_to.map_or(quantity, |u| u.min(quantity));
        let units = top - below;
        if units <= 0 {
            continue;
        }
        let line = money::add(money::mul(units, t.unit_minor)?, t.flat_minor)?;
        amount = money::add(amount, line)?;
        out.push(TierCharge {
            from: below + 1,
            up_to: t.up_to,
            quantity: units,
            unit_minor: t.unit_minor,
            flat_minor: t.flat_minor,
            amount_minor: line,
        });
        below = top;
    }
    Ok(Priced {
        billable: quantity,
        amount_minor: amount,
        tiers: out,
    })
}

fn volume(tiers: &[Tier], quantity: i64) -> Result<Priced, Overflow> {
    if quantity == 0 {
        return Ok(Priced {
            billable: 0,
            amount_minor: 0,
            tiers: Vec::new(),
        });
    }
    let mut from = 1;
    for t in tiers {
        if t.up_to.is_none_or(|u| quantity <= u) {
            let amount = money::add(money::mul(quantity, t.unit_minor)?, t.flat_minor)?;
            return Ok(Priced {
                billable: quantity,
                amount_minor: amount,
                tiers: vec![TierCharge {
                    from,
                    up_to: t.up_to,
                    quantity,
                    unit_minor: t.unit_minor,
                    flat_minor: t.flat_minor,
                    amount_minor: amount,
                }],
            });
        }
        from = t.up_to.map_or(from, |u| u + 1);
    }
    // The compiler requires the last tier to be unbounded; a catalog without one prices the
    // overflow at the last tier rather than for free.
    let last = tiers.last().ok_or(Overflow)?;
    let amount = money::add(money::mul(quantity, last.unit_minor)?, last.flat_minor)?;
    Ok(Priced {
        billable: quantity,
        amount_minor: amount,
        tiers: Vec::new(),
    })
}

/// **The proration rule** (`seconds_half_even`): a price for a whole period, prorated to the
/// `remaining` seconds of a `period` of seconds, is `price × remaining ÷ period` computed exactly
/// in 128-bit integers and rounded once, half to even, to whole minor units. A plan change books
/// one line per price (a credit for the unused part of the old, a charge for the rest of the
/// new), each prorated by this rule, and its total is defined as the sum of those lines, so the
/// lines sum to the total exactly.
pub const PRORATION_RULE: &str = "seconds_half_even";

/// `price × remaining ÷ period` by [`PRORATION_RULE`]; `remaining` is clamped to `0..=period`.
pub fn prorate(price_minor: i64, remaining_secs: i64, period_secs: i64) -> i64 {
    if period_secs <= 0 {
        return 0;
    }
    let remaining = remaining_secs.clamp(0, period_secs);
    let num = i128::from(price_minor) * i128::from(remaining);
    let den = i128::from(period_secs);
    let (q, r) = (num.div_euclid(den), num.rem_euclid(den));
    // Half to even: round up above one half, and at exactly one half when q is odd.
    let twice = 2 * r;
    let q = if twice > den || (twice == den && q % 2 != 0) {
        q + 1
    } else {
        q
    };
    // |q| ≤ |price| because remaining ≤ period, so it fits.
    i64::try_from(q).unwrap_or(price_minor)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn tier(up_to: Option<i64>, unit_minor: i64, flat_minor: i64) -> Tier {
        Tier {
            up_to,
            unit_minor,
            flat_minor,
        }
    }

    #[test]
    fn per_unit_bills_what_exceeds_the_grant() {
        let p = Pricing::PerUnit { unit_minor: 2 };
        assert_eq!(price(&p, Some(100_000), 99_999).unwrap().amount_minor, 0);
        assert_eq!(price(&p, Some(100_000), 100_000).unwrap().amount_minor, 0);
        let over = price(&p, Some(100_000), 100_250).unwrap();
        assert_eq!((over.billable, over.amount_minor), (250, 500));
        assert_eq!(price(&p, None, 1_000_000).unwrap().amount_minor, 0);
        assert_eq!(price(&p, Some(0), -5).unwrap().amount_minor, 0);
        let huge = Pricing::PerUnit {
            unit_minor: i64::MAX,
        };
        assert_eq!(price(&huge, Some(0), 2), Err(Overflow));
    }

    #[test]
    fn packages_are_billed_per_started_block() {
        let p = Pricing::Package {
            size: 1000,
            package_minor: 500,
        };
        assert_eq!(price(&p, Some(0), 0).unwrap().amount_minor, 0);
        assert_eq!(price(&p, Some(0), 1).unwrap().amount_minor, 500);
        assert_eq!(price(&p, Some(0), 1000).unwrap().amount_minor, 500);
        assert_eq!(price(&p, Some(0), 1001).unwrap().amount_minor, 1000);
        assert_eq!(price(&p, Some(500), 1500).unwrap().amount_minor, 500);
    }

    #[test]
    fn graduated_prices_each_tier_by_hand() {
        // 1-1000 at 0, 1001-5000 at 2 + 100 flat, the rest at 1.
        let p = Pricing::Graduated {
            tiers: vec![
                tier(Some(1000), 0, 0),
                tier(Some(5000), 2, 100),
                tier(None, 1, 0),
            ],
        };
        let r = price(&p, Some(999_999), 7000).unwrap();
        assert_eq!(r.amount_minor, 4000 * 2 + 100 + 2000);
        let q: Vec<i64> = r.tiers.iter().map(|t| t.quantity).collect();
        assert_eq!(q, [1000, 4000, 2000]);
        assert_eq!(r.tiers[1].from, 1001);
        assert_eq!(price(&p, None, 1000).unwrap().amount_minor, 0);
        assert_eq!(price(&p, None, 1001).unwrap().amount_minor, 102);
        assert_eq!(price(&p, None, 0).unwrap().tiers, []);
    }

    #[test]
    fn volume_prices_every_unit_at_the_tier_the_total_reaches() {
        let p = Pricing::Volume {
            tiers: vec![
                tier(Some(100), 10, 0),
                tier(Some(1000), 8, 50),
                tier(None, 5, 0),
            ],
        };
        assert_eq!(price(&p, None, 100).unwrap().amount_minor, 1000);
        assert_eq!(price(&p, None, 101).unwrap().amount_minor, 101 * 8 + 50);
        assert_eq!(price(&p, None, 1001).unwrap().amount_minor, 5005);
        assert_eq!(price(&p, None, 1001).unwrap().tiers[0].from, 1001);
        assert_eq!(price(&p, None, 0).unwrap().amount_minor, 0);
    }

    #[test]
    fn proration_rounds_half_to_even_once() {
        assert_eq!(prorate(2900, 0, 100), 0);
        assert_eq!(prorate(2900, 100, 100), 2900);
        assert_eq!(prorate(2900, 50, 100), 1450);
        // 1 × 1/2 = 0.5 → 0 (even); 3 × 1/2 = 1.5 → 2 (even).
        assert_eq!(prorate(1, 1, 2), 0);
        assert_eq!(prorate(3, 1, 2), 2);
        // 10 × 1/3 = 3.33 → 3; 10 × 2/3 = 6.67 → 7.
        assert_eq!(prorate(10, 1, 3), 3);
        assert_eq!(prorate(10, 2, 3), 7);
        assert_eq!(prorate(i64::MAX, 1, 1), i64::MAX);
        assert_eq!(prorate(2900, 200, 100), 2900, "clamped to the period");
        assert_eq!(prorate(2900, 10, 0), 0);
    }

    proptest! {
        #[test]
        fn prorated_amounts_are_bounded_monotonic_and_exact_to_a_half_unit(
            price in 0i64..10_000_000_000,
            period in 1i64..40_000_000,
            a in 0i64..40_000_000,
            b in 0i64..40_000_000,
        ) {
            let (r1, r2) = (a.min(period), b.min(period));
            let (lo, hi) = (r1.min(r2), r1.max(r2));
            let (p_lo, p_hi) = (prorate(price, lo, period), prorate(price, hi, period));
            prop_assert!(0 <= p_lo && p_lo <= p_hi && p_hi <= price);
            // Within half a minor unit of the exact value.
            let exact2 = 2 * i128::from(price) * i128::from(hi);
            let got2 = 2 * i128::from(p_hi) * i128::from(period);
            prop_assert!((exact2 - got2).abs() <= i128::from(period));
            // Unused part plus used part of one price is the price, within one unit.
            let used = prorate(price, period - hi, period);
            prop_assert!((p_hi + used - price).abs() <= 1);
        }

        #[test]
        fn graduated_tiers_add_up_and_never_exceed_the_quantity(
            q in 0i64..10_000_000,
            b1 in 1i64..1_000_000,
            b2 in 1i64..5_000_000,
            u in proptest::collection::vec(0i64..100, 3),
        ) {
            let p = Pricing::Graduated {
                tiers: vec![tier(Some(b1), u[0], 0), tier(Some(b1 + b2), u[1], 7), tier(None, u[2], 0)],
            };
            let r = price(&p, None, q).unwrap();
            let units: i64 = r.tiers.iter().map(|t| t.quantity).sum();
            let amount: i64 = r.tiers.iter().map(|t| t.amount_minor).sum();
            prop_assert_eq!(units, q);
            prop_assert_eq!(amount, r.amount_minor);
            // More usage never costs less.
            prop_assert!(price(&p, None, q + 1).unwrap().amount_minor >= r.amount_minor);
        }
    }
}
