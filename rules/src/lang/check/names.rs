//! Names: looking up features, plans and add-ons (an unknown one is reported with the closest
//! declared name as a hint), reason codes and subscription statuses; and the two messages
//! every part of the checker gives: something defined twice ([`Checker::once`],
//! [`Checker::first_time`]), a type mismatch.

use std::collections::HashMap;
use std::hash::Hash;

use super::{Checker, Sym};
use crate::ir::{AddonIdx, FeatureIdx, FeatureKind, PlanIdx, ReasonCode, Span, SubStatus};
use crate::lang::ast::Name;
use crate::lang::diag::codes;

/// Reason codes are written in the language exactly as edges answer them
/// ([`ReasonCode::as_str`]).
fn reason_names() -> impl ExactSizeIterator<Item = &'static str> {
    ReasonCode::ALL.iter().map(|r| r.as_str())
}

const STATUSES: [(&str, SubStatus); 6] = [
    ("none", SubStatus::None),
    ("trialing", SubStatus::Trialing),
    ("active", SubStatus::Active),
    ("past_due", SubStatus::PastDue),
    ("canceled", SubStatus::Canceled),
    ("unpaid", SubStatus::Unpaid),
];

/// Levenshtein distance, or `None` for names too long to bother.
fn distance(a: &str, b: &str) -> Option<usize> {
    const MAX_LEN: usize = 64;
    if a.len() > MAX_LEN || b.len() > MAX_LEN {
        return None;
    }
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev.last().copied()
}

/// Most names a suggestion is searched among; past it there is none (keeps a huge source from
/// costing names × names distance computations).
const MAX_SUGGESTION_CANDIDATES: usize = 1_000;

/// "did you mean `x`?" for the closest candidate within a third of the name's length.
fn suggestion<'a>(
    name: &str,
    candidates: impl ExactSizeIterator<Item = &'a str>,
) -> Option<String> {
    if candidates.len() > MAX_SUGGESTION_CANDIDATES {
        return None;
    }
    let limit = (name.len() / 3).max(1);
    candidates
        .filter_map(|c| distance(name, c).map(|d| (d, c)))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

impl Checker<'_> {
    /// `true` for the first of its kind (`first` is `None`); otherwise reports that `what`
    /// `name` at `span` is defined twice, first at `first`, and is `false`.
    pub(super) fn once(&mut self, first: Option<Span>, what: &str, name: &str, span: Span) -> bool {
        match first {
            Some(first) => {
                self.diags
                    .duplicate(span, format!("{what} `{name}` is defined twice"), first);
                false
            }
            None => true,
        }
    }

    /// [`Self::once`] for `key` among those `seen` so far: a first one is recorded as written
    /// at `span`; a second is reported and `seen` keeps the first.
    pub(super) fn first_time<K: Eq + Hash>(
        &mut self,
        seen: &mut HashMap<K, Span>,
        key: K,
        what: &str,
        name: &str,
        span: Span,
    ) -> bool {
        let first = seen.get(&key).copied();
        if first.is_none() {
            seen.insert(key, span);
        }
        self.once(first, what, name, span)
    }

    pub(super) fn feature(&mut self, name: &Name) -> Option<(FeatureIdx, FeatureKind)> {
        self.lookup(|c| &c.features, codes::UNKNOWN_FEATURE, "feature", name)
    }

    pub(super) fn plan_index(&mut self, name: &Name) -> Option<PlanIdx> {
        self.lookup(|c| &c.plans, codes::UNKNOWN_PLAN, "plan", name)
    }

    pub(super) fn addon_index(&mut self, name: &Name) -> Option<AddonIdx> {
        self.lookup(|c| &c.addons, codes::UNKNOWN_ADDON, "add-on", name)
    }

    /// A metered feature, whose usage can be read or given; another kind is reported.
    pub(super) fn with_usage(&mut self, name: &Name) -> Option<FeatureIdx> {
        let (idx, kind) = self.feature(name)?;
        if kind != FeatureKind::Metered {
            self.type_mismatch(
                name.span,
                format!(
                    "`{}` is a {} feature; only metered features have usage",
                    name.text,
                    kind.as_str()
                ),
            );
            return None;
        }
        Some(idx)
    }

    /// The index of a declared name (`None` when its declaration was broken); an unknown name
    /// is reported as `unknown {what}`, with the closest declared one as a hint.
    fn lookup<I: Copy>(
        &mut self,
        table: fn(&Self) -> &HashMap<String, Sym<I>>,
        code: &'static str,
        what: &str,
        name: &Name,
    ) -> Option<I> {
        if let Some(sym) = table(self).get(&name.text) {
            return sym.index;
        }
        let hint = suggestion(&name.text, table(self).keys().map(String::as_str));
        let message = format!("unknown {what} `{}`", name.text);
        match hint {
            Some(h) => self.diags.error_with_note(code, name.span, message, h),
            None => self.diags.error(code, name.span, message),
        }
        None
    }

    pub(super) fn reason(&mut self, name: &Name) -> Option<ReasonCode> {
        match ReasonCode::ALL.iter().find(|r| r.as_str() == name.text) {
            Some(r) => Some(*r),
            None => {
                let hint = suggestion(&name.text, reason_names()).unwrap_or_else(|| {
                    format!(
                        "reasons are {}",
                        reason_names().collect::<Vec<_>>().join(", ")
                    )
                });
                self.diags.error_with_note(
                    codes::UNKNOWN_REASON,
                    name.span,
                    format!("unknown reason `{}`", name.text),
                    hint,
                );
                None
            }
        }
    }

    pub(super) fn status(&mut self, name: &Name) -> Option<SubStatus> {
        match STATUSES.iter().find(|(n, _)| *n == name.text) {
            Some((_, s)) => Some(*s),
            None => {
                self.diags.error_with_note(
                    codes::UNKNOWN_NAME,
                    name.span,
                    format!("unknown status `{}`", name.text),
                    "statuses are trialing, active, past_due, canceled, none",
                );
                None
            }
        }
    }

    pub(super) fn type_mismatch(&mut self, span: Span, message: impl Into<String>) {
        self.diags.error(codes::TYPE_MISMATCH, span, message);
    }
}
