//! Name resolution, types and semantic checks, elaborating the syntax tree into the typed,
//! index-resolved [`ir::Program`] as it goes (see [`super::lower`] for the last step).
//!
//! Every check reports and carries on, so one run finds every problem: a part that fails
//! resolves to `None` and whatever uses it is skipped silently (no second error for the same
//! cause). Declarations that did not parse are still known by name ([`ast::Item::Broken`]),
//! so their uses are not reported as unknown.
//!
//! One [`Checker`] walks the file; its methods are grouped by what they check:
//!
//! | module | what it holds |
//! |---|---|
//! | [`passes`] | pass 1 declares every name, pass 2 defines every body; "never granted" |
//! | [`names`] | name lookup with "did you mean", reasons, statuses, shared messages |
//! | [`numbers`] | literals with a lower bound, prices, meters, tiered pricing |
//! | [`plans`] | plan and add-on bodies: grants, meters, effects, prices |
//! | [`expr`] | typing expressions ([`expr::Val`]) into IR conditions and integers |
//! | [`rules`] | rule conditions (and whether they can ever hold) and actions |
//! | [`test_cases`] | `test` blocks: their given facts and their expectations |
//! | [`spans`] | where each catalog value was written, for the bounds' messages |

mod expr;
mod names;
mod numbers;
mod passes;
mod plans;
mod rules;
mod spans;
mod test_cases;

use std::collections::HashMap;

use crate::ir::{self, AddonIdx, FeatureIdx, FeatureKind, PlanIdx, Span};
use crate::lang::ast;
use crate::lang::diag::Diags;

use spans::CatalogSpans;

/// A resolved declaration; `None` index: it was broken (already reported).
#[derive(Debug, Clone, Copy)]
struct Sym<I> {
    index: Option<I>,
    span: Span,
}

/// The elaborated pieces, indices resolved. Assembled into a program by [`super::lower`].
#[derive(Debug, Default)]
pub(crate) struct Checked {
    pub features: Vec<ir::Feature>,
    pub plans: Vec<ir::Plan>,
    pub addons: Vec<ir::Addon>,
    pub rules: Vec<ir::Rule>,
    pub tests: Vec<ir::TestCase>,
    /// Where each catalog value was written, entry for entry with `features`, `plans` and
    /// `addons` (and the names of `rules` and `tests`): [`crate::bounds::validate`] names a
    /// [`crate::bounds::Site`], this gives its span.
    pub spans: CatalogSpans,
}

/// The checker's state: the diagnostics so far, the declared names (pass 1) and what has been
/// elaborated (pass 2).
pub(crate) struct Checker<'a> {
    diags: &'a mut Diags,
    features: HashMap<String, Sym<(FeatureIdx, FeatureKind)>>,
    plans: HashMap<String, Sym<PlanIdx>>,
    addons: HashMap<String, Sym<AddonIdx>>,
    out: Checked,
}

/// Checks and elaborates `file`, reporting every problem to `diags`.
pub(crate) fn check(file: &ast::File, diags: &mut Diags) -> Checked {
    let mut c = Checker {
        diags,
        features: HashMap::new(),
        plans: HashMap::new(),
        addons: HashMap::new(),
        out: Checked::default(),
    };
    c.declare(file);
    c.define(file);
    c.out
}
