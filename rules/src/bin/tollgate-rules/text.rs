//! A program's parts as the text `inspect` and `diff` show: feature kinds, prices, grants,
//! meter pricing and add-on effects.

use tollgate_rules::ir::{self, Limit, Program};

pub(crate) fn kind(f: &ir::Feature) -> String {
    let mut s = match f.kind {
        k @ (ir::FeatureKind::Bool | ir::FeatureKind::Limit) => k.as_str().to_string(),
        ir::FeatureKind::Metered => {
            format!("metered per {}", f.period.as_deref().unwrap_or("?"))
        }
    };
    if f.fail_open {
        s.push_str(", fail open");
    }
    s
}

pub(crate) fn price(minor: i64, currency: &str, i: ir::Interval) -> String {
    format!("{minor} {currency} per {}", i.as_str())
}

pub(crate) fn feature_key(program: &Program, idx: u32) -> &str {
    program
        .features
        .get(idx as usize)
        .map_or("?", |f| f.key.as_str())
}

pub(crate) fn grant_text(program: &Program, g: &ir::Grant) -> String {
    let key = feature_key(program, g.feature);
    let bool_feature = program
        .features
        .get(g.feature as usize)
        .is_some_and(|f| f.kind == ir::FeatureKind::Bool);
    match g.limit {
        _ if bool_feature => key.to_string(),
        Limit::None => key.to_string(),
        Limit::Unlimited => format!("{key} = unlimited"),
        Limit::Finite(n) => format!("{key} = {n}"),
    }
}

pub(crate) fn pricing_text(p: &ir::Pricing) -> String {
    match p {
        ir::Pricing::PerUnit { unit_minor } => format!("per unit {unit_minor}"),
        ir::Pricing::Graduated { tiers } => format!("graduated, {}", tiers_text(tiers)),
        ir::Pricing::Volume { tiers } => format!("volume, {}", tiers_text(tiers)),
        ir::Pricing::Package {
            size,
            package_minor,
        } => format!("package of {size} for {package_minor}"),
    }
}

fn tiers_text(tiers: &[ir::Tier]) -> String {
    tiers
        .iter()
        .map(|t| {
            let bound = t.up_to.map_or("then".to_string(), |u| format!("up to {u}"));
            let flat = if t.flat_minor == 0 {
                String::new()
            } else {
                format!(" flat {}", t.flat_minor)
            };
            format!("{bound} at {}{flat}", t.unit_minor)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

pub(crate) fn effect_text(program: &Program, (f, e): &(u32, ir::AddonEffect)) -> String {
    let key = feature_key(program, *f);
    match e {
        ir::AddonEffect::Grant => format!("grant {key}"),
        ir::AddonEffect::AddLimit(n) => format!("{key} + {n}"),
    }
}

pub(crate) fn or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}
