//! Add-ons a customer asks for (`{"addons": {"extra_seats": 2}}` at checkout or in a change),
//! checked against the catalog and turned into what the subscription holds
//! ([`AddonTerms`]: key, quantity and the unit price it is sold at).
//!
//! An add-on the subscription already holds keeps the unit price it was sold at whatever its
//! quantity becomes (as a plan keeps its price); it can be kept or reduced after the catalog
//! dropped it, but not increased. One it does not hold must be sold now, in the plan's
//! currency and interval. Quantity 0 removes it.

use std::collections::BTreeMap;

use tollgate_rules::{Catalog, Interval};

use crate::billing::AddonTerms;
use crate::error::{Error, Result};

/// The most units of one add-on a subscription holds.
pub const QUANTITY_MAX: i64 = 10_000;

/// What the subscription holds after asking for `wanted` (key → quantity) on top of `held`,
/// sorted by key. Only the keys in `wanted` change.
pub fn select(
    catalog: &Catalog,
    currency: &str,
    interval: Interval,
    held: &[AddonTerms],
    wanted: &BTreeMap<String, i64>,
) -> Result<Vec<AddonTerms>> {
    let mut out: BTreeMap<String, AddonTerms> =
        held.iter().map(|a| (a.addon.clone(), a.clone())).collect();
    for (key, &quantity) in wanted {
        if !(0..=QUANTITY_MAX).contains(&quantity) {
            return Err(Error::unprocessable(
                "invalid_addon_quantity",
                format!("an add-on's quantity is 0 to {QUANTITY_MAX}, not {quantity}"),
            )
            .with("addon", key.clone()));
        }
        let sold = catalog.addon(key);
        let kept = out.get(key).map(|a| a.quantity);
        match (kept, sold) {
            (_, _) if quantity == 0 => {
                out.remove(key);
            }
            (Some(q), _) if quantity <= q => {
                if let Some(a) = out.get_mut(key) {
                    a.quantity = quantity;
                }
            }
            (_, None) => {
                return Err(Error::unprocessable(
                    "unknown_addon",
                    format!("there is no add-on `{key}` for sale"),
                )
                .with("addon", key.clone()));
            }
            (Some(_), Some(_)) => {
                if let Some(a) = out.get_mut(key) {
                    a.quantity = quantity;
                }
            }
            (None, Some(a)) => {
                if a.currency != currency || a.interval != interval {
                    return Err(Error::unprocessable(
                        "addon_unsupported",
                        format!(
                            "`{key}` is billed in {} per {}; the plan in {currency} per {}",
                            a.currency,
                            a.interval.as_str(),
                            interval.as_str()
                        ),
                    )
                    .with("addon", key.clone()));
                }
                out.insert(
                    key.clone(),
                    AddonTerms {
                        addon: a.key.clone(),
                        name: a.name.clone(),
                        quantity,
                        unit_amount_minor: a.price_minor,
                    },
                );
            }
        }
    }
    Ok(out.into_values().collect())
}

/// Key → quantity, as the entitlement facts carry them.
pub fn quantities(held: &[AddonTerms]) -> BTreeMap<String, i64> {
    held.iter().map(|a| (a.addon.clone(), a.quantity)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
        pairs.iter().map(|(k, q)| ((*k).to_owned(), *q)).collect()
    }

    fn code(r: Result<Vec<AddonTerms>>) -> String {
        r.expect_err("refused").code.to_string()
    }

    #[test]
    fn held_add_ons_keep_their_price_and_new_ones_must_be_on_sale() {
        let mut catalog = Catalog::demo();
        let usd = ("USD", Interval::Month);
        let two = select(&catalog, usd.0, usd.1, &[], &ask(&[("extra_seats", 2)])).expect("sold");
        assert_eq!(two[0].quantity, 2);
        assert_eq!(two[0].unit_amount_minor, 500);
        assert_eq!(two[0].amount_minor(), Ok(1000));

        // The catalog raises the price, then drops the add-on: what is held keeps 500 and can
        // shrink, but not grow.
        catalog.addons[0].price_minor = 700;
        let three = select(&catalog, usd.0, usd.1, &two, &ask(&[("extra_seats", 3)])).expect("up");
        assert_eq!((three[0].quantity, three[0].unit_amount_minor), (3, 500));
        catalog.addons.clear();
        let one =
            select(&catalog, usd.0, usd.1, &three, &ask(&[("extra_seats", 1)])).expect("down");
        assert_eq!(one[0].quantity, 1);
        assert_eq!(
            code(select(
                &catalog,
                usd.0,
                usd.1,
                &one,
                &ask(&[("extra_seats", 2)])
            )),
            "unknown_addon"
        );
        assert!(
            select(&catalog, usd.0, usd.1, &one, &ask(&[("extra_seats", 0)]))
                .expect("removed")
                .is_empty()
        );
        assert_eq!(
            select(&catalog, usd.0, usd.1, &one, &ask(&[])).expect("kept"),
            one
        );
    }

    #[test]
    fn bad_quantities_unknown_keys_and_another_currency_are_refused() {
        let catalog = Catalog::demo();
        for q in [-1, QUANTITY_MAX + 1, i64::MAX, i64::MIN] {
            assert_eq!(
                code(select(
                    &catalog,
                    "USD",
                    Interval::Month,
                    &[],
                    &ask(&[("extra_seats", q)])
                )),
                "invalid_addon_quantity"
            );
        }
        for key in ["", "nope", "extra_seats\u{0}", "éxtra_seats"] {
            assert_eq!(
                code(select(
                    &catalog,
                    "USD",
                    Interval::Month,
                    &[],
                    &ask(&[(key, 1)])
                )),
                "unknown_addon"
            );
        }
        assert_eq!(
            code(select(
                &catalog,
                "EUR",
                Interval::Month,
                &[],
                &ask(&[("extra_seats", 1)])
            )),
            "addon_unsupported"
        );
        assert_eq!(
            code(select(
                &catalog,
                "USD",
                Interval::Year,
                &[],
                &ask(&[("extra_seats", 1)])
            )),
            "addon_unsupported"
        );
        // The most of the most expensive add-on stays far from overflow.
        let max = AddonTerms {
            addon: "x".into(),
            name: "x".into(),
            quantity: QUANTITY_MAX,
            unit_amount_minor: tollgate_rules::bounds::PRICE_MINOR_MAX,
        };
        assert!(max.amount_minor().is_ok());
    }
}
