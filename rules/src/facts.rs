//! From the wire's [`AccountFacts`] to a program's [`FactVector`], and from the module's
//! [`RawDecision`]s back to the wire's [`Decision`]s.
//!
//! This module depends on [`crate::ir`], never the other way: the reason codes' wire names
//! are the IR's own ([`crate::ir::ReasonCode::wire`]).
//!
//! Names are resolved against the program: a plan, add-on or feature the program does not
//! know is ignored (an account on a plan a new bundle removed has no granting plan).

use tollgate_protocol::{
    AccountFacts, AccountStanding, Decision, FeatureOverride, SubscriptionStatus,
};

use crate::ir::{
    Fact, FactVector, Limit, OVERRIDE_DENY, OVERRIDE_GRANT, Program, RawDecision, SubStatus,
};

const MS_PER_DAY: i64 = 86_400_000;

/// The fact vector of `facts` for `program`, at `now_ms` (unix milliseconds).
pub fn fact_vector(program: &Program, facts: &AccountFacts, now_ms: i64) -> FactVector {
    let shape = program.shape();
    let mut v = FactVector::empty(shape);
    v.set(
        Fact::Banned,
        shape,
        i64::from(facts.standing == AccountStanding::Banned),
    );
    if let Some(sub) = &facts.subscription {
        let status = match sub.status {
            SubscriptionStatus::Trialing => SubStatus::Trialing,
            SubscriptionStatus::Active => SubStatus::Active,
            SubscriptionStatus::PastDue => SubStatus::PastDue,
            SubscriptionStatus::Canceled => SubStatus::Canceled,
            SubscriptionStatus::Unpaid => SubStatus::Unpaid,
        };
        v.set(Fact::Status, shape, status as i64);
        v.set(
            Fact::InTrial,
            shape,
            i64::from(sub.status == SubscriptionStatus::Trialing),
        );
        if let Some(p) = program.plans.iter().position(|p| p.key == sub.plan) {
            v.set(Fact::Plan, shape, p as i64);
        }
    }
    v.set(Fact::DunningLevel, shape, facts.dunning_level);
    v.set(Fact::DaysPastDue, shape, facts.days_past_due);
    v.set(Fact::Today, shape, now_ms.div_euclid(MS_PER_DAY));
    for (a, addon) in program.addons.iter().enumerate() {
        if let Some(q) = facts.addons.get(&addon.key) {
            v.set(Fact::AddonQty(a as u32), shape, *q);
        }
    }
    for (f, feature) in program.features.iter().enumerate() {
        let f = f as u32;
        match facts.overrides.get(&feature.key) {
            Some(FeatureOverride::Deny) => v.set(Fact::OverrideMode(f), shape, OVERRIDE_DENY),
            Some(FeatureOverride::Grant { limit }) => {
                v.set(Fact::OverrideMode(f), shape, OVERRIDE_GRANT);
                // The wire has no "unlimited": a grant without a number has no limit, which
                // the edge serves as no quota.
                v.set_override_limit(f, shape, limit.map_or(Limit::None, Limit::Finite));
            }
            None => {}
        }
    }
    v
}

/// The wire's decision. `limit` is the finite limit of an allowed decision; an unlimited
/// one, like one without a limit, has `None`, which the edge serves as "no quota" for a
/// metered feature. A denial never has a limit.
pub fn decision(raw: RawDecision) -> Decision {
    Decision {
        allowed: raw.allowed,
        limit: raw.limit.finite().filter(|_| raw.allowed),
        reason: raw.reason.wire(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp;
    use std::collections::BTreeMap;
    use tollgate_protocol::{AccountId, Reason, SubscriptionFacts};
    use uuid::Uuid;

    fn demo() -> Program {
        crate::demo_program()
    }

    fn decide(program: &Program, facts: &AccountFacts, feature: &str) -> Decision {
        let v = fact_vector(program, facts, 1_700_000_000_000);
        let i = program
            .features
            .iter()
            .position(|f| f.key == feature)
            .expect("feature");
        decision(interp::evaluate(program, &v)[i])
    }

    #[test]
    fn wire_facts_map_onto_the_program() {
        let program = demo();
        let mut facts = AccountFacts::new(AccountId(Uuid::nil()), 3);
        facts.subscription = Some(SubscriptionFacts {
            plan: "pro".into(),
            status: SubscriptionStatus::Active,
            current_period_end_ms: 0,
            billing_anchor_ms: None,
        });
        let d = decide(&program, &facts, "seats");
        assert_eq!(
            (d.allowed, d.limit, d.reason),
            (true, Some(10), Reason::GrantedByPlan)
        );
        assert_eq!(decide(&program, &facts, "sso").limit, None);
        facts.addons = BTreeMap::from([("extra_seats".to_owned(), 2)]);
        assert_eq!(
            decide(&program, &facts, "seats").limit,
            Some(20),
            "two add-on units of +5"
        );
        facts.overrides = BTreeMap::from([("sso".to_owned(), FeatureOverride::Deny)]);
        assert_eq!(decide(&program, &facts, "sso").reason, Reason::Override);
        facts.standing = AccountStanding::Banned;
        let d = decide(&program, &facts, "seats");
        assert_eq!((d.allowed, d.reason), (false, Reason::DeniedBanned));
        // A plan the program does not know grants nothing.
        let mut gone = AccountFacts::new(AccountId(Uuid::nil()), 1);
        gone.subscription = Some(SubscriptionFacts {
            plan: "legacy".into(),
            status: SubscriptionStatus::Active,
            current_period_end_ms: 0,
            billing_anchor_ms: None,
        });
        assert_eq!(
            decide(&program, &gone, "seats").reason,
            Reason::DeniedNoSubscription
        );
    }
}
