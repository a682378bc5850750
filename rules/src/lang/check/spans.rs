//! Where each catalog value was written: [`crate::bounds::validate`] names a [`Site`] of the
//! checked program, [`CatalogSpans`] gives its span for the message.

use crate::bounds::Site;
use crate::ir::Span;
use crate::lang::ast;

/// Where a feature's key and its `unique_count` property were written.
#[derive(Debug)]
pub(super) struct FeatureSpans {
    pub(super) key: Span,
    /// The `unique_count` property, or the key.
    pub(super) property: Span,
}

/// Where each value of the checked catalog was written, entry for entry.
#[derive(Debug, Default)]
pub(crate) struct CatalogSpans {
    pub(super) features: Vec<FeatureSpans>,
    pub(super) plans: Vec<PlanSpans>,
    pub(super) addons: Vec<ItemSpans>,
    pub(super) rule_names: Vec<Span>,
    pub(super) test_names: Vec<Span>,
}

/// Where a plan's or an add-on's key, name, price and currency were written.
#[derive(Debug)]
pub(super) struct ItemSpans {
    pub(super) key: Span,
    pub(super) name: Span,
    pub(super) price: Span,
    pub(super) currency: Span,
}

#[derive(Debug)]
pub(super) struct PlanSpans {
    pub(super) item: ItemSpans,
    pub(super) trial: Span,
    /// Per meter, its values in [`crate::bounds::pricing_values`] order.
    pub(super) meters: Vec<Vec<Span>>,
}

impl CatalogSpans {
    /// The span of a site; the start of the file for one it does not know (never for
    /// issues of the checked program, whose entries it records one for one).
    pub fn span(&self, site: Site) -> Span {
        let plan = |i: usize| self.plans.get(i);
        let addon = |i: usize| self.addons.get(i);
        match site {
            Site::FeatureKey(i) => self.features.get(i).map(|f| f.key),
            Site::FeatureProperty(i) => self.features.get(i).map(|f| f.property),
            Site::PlanKey(i) => plan(i).map(|p| p.item.key),
            Site::PlanName(i) => plan(i).map(|p| p.item.name),
            Site::PlanPrice(i) => plan(i).map(|p| p.item.price),
            Site::PlanCurrency(i) => plan(i).map(|p| p.item.currency),
            Site::PlanTrial(i) => plan(i).map(|p| p.trial),
            Site::PlanMeter {
                plan: i,
                meter,
                value,
            } => plan(i)
                .and_then(|p| p.meters.get(meter))
                .and_then(|m| m.get(value))
                .copied(),
            Site::AddonKey(i) => addon(i).map(|a| a.key),
            Site::AddonName(i) => addon(i).map(|a| a.name),
            Site::AddonPrice(i) => addon(i).map(|a| a.price),
            Site::AddonCurrency(i) => addon(i).map(|a| a.currency),
            Site::RuleName(i) => self.rule_names.get(i).copied(),
            Site::TestName(i) => self.test_names.get(i).copied(),
        }
        .unwrap_or_default()
    }
}

/// The spans of a pricing's values, in [`crate::bounds::pricing_values`] order (a flat fee
/// not written is 0, at its tier).
pub(super) fn pricing_spans(p: &ast::PricingDecl) -> Vec<Span> {
    match p {
        ast::PricingDecl::PerUnit(lit) => vec![lit.span],
        ast::PricingDecl::Package { size, price } => vec![size.span, price.span],
        ast::PricingDecl::Graduated(tiers) | ast::PricingDecl::Volume(tiers) => tiers
            .iter()
            .flat_map(|t| {
                t.up_to
                    .map(|u| u.span)
                    .into_iter()
                    .chain([t.unit.span, t.flat.map_or(t.span, |f| f.span)])
            })
            .collect(),
    }
}
