//! "Unlimited", "no limit" and "denied" are three different things, in test expectations, in
//! add-on and rule arithmetic, through the interpreter and the module alike (the compiler runs
//! every test block through both and reports any disagreement), and on the wire.

use tollgate_protocol::{AccountFacts, AccountId, FeatureOverride, SubscriptionFacts};
use tollgate_protocol::{Reason, SubscriptionStatus};
use tollgate_rules::compiler::{self, Compiled};
use tollgate_rules::host::RulesEngine;
use tollgate_rules::ir::{FactVector, Limit};
use tollgate_rules::lang::{Diagnostic, SourceFile};
use tollgate_rules::{facts, interp};

const CATALOG: &str = "
feature sso: bool
feature seats: limit
feature api_calls: metered per month
plan big \"Big\" { price 100 USD per month grant sso grant seats = unlimited grant api_calls = unlimited }
plan small \"Small\" { price 10 USD per month grant seats = 3 grant api_calls = 10 }
addon extra_seats \"Extra seats\" { price 5 USD per month seats + 5 }
rule \"suspended\" when dunning_level >= 9 => deny seats reason denied_by_rule
";

fn compile(text: &str) -> Result<Compiled, Vec<Diagnostic>> {
    compiler::compile(&SourceFile {
        name: "t.tg".into(),
        text: format!("{CATALOG}{text}"),
    })
}

fn messages(errors: &[Diagnostic]) -> Vec<(&str, &str)> {
    errors
        .iter()
        .map(|d| (d.code, d.message.as_str()))
        .collect()
}

#[test]
fn an_unlimited_expectation_fails_when_the_rules_deny_the_feature() {
    let errors = compile(
        "test \"suspended keeps unlimited seats?\" {
            given plan = big, dunning_level = 9
            expect seats limit unlimited
        }",
    )
    .expect_err("a denied feature is not unlimited");
    assert_eq!(
        messages(&errors),
        [(
            "test_failed",
            "test `suspended keeps unlimited seats?`: expected seats limit unlimited, got none \
             (denied_by_rule)"
        )]
    );
    // And `limit none` is what a denial has.
    compile(
        "test \"suspended\" {
            given plan = big, dunning_level = 9
            expect seats denied limit none
        }",
    )
    .expect("a denial carries no limit");
}

#[test]
fn limit_none_and_limit_unlimited_are_different_expectations() {
    let errors = compile(
        "test \"big\" {
            given plan = big
            expect seats limit none, sso limit unlimited
        }",
    )
    .expect_err("unlimited is not none, and a bool feature is never unlimited");
    assert_eq!(
        messages(&errors),
        [(
            "type_mismatch",
            "`sso` is a bool feature; it never has a limit"
        )]
    );
    let errors = compile(
        "test \"big\" {
            given plan = big
            expect seats limit none, sso limit none
        }",
    )
    .expect_err("unlimited is not none");
    assert_eq!(
        messages(&errors),
        [(
            "test_failed",
            "test `big`: expected seats limit none, got unlimited (granted_by_plan)"
        )]
    );
    compile(
        "test \"big\" {
            given plan = big
            expect seats allowed limit unlimited, sso allowed limit none
        }",
    )
    .expect("passes");
}

#[test]
fn an_unlimited_grant_plus_an_addon_pack_stays_unlimited() {
    let compiled = compile(
        "test \"big with a pack\" {
            given plan = big, addon(extra_seats) = 1
            expect seats allowed limit unlimited reason granted_by_plan
        }
        test \"small with a pack\" {
            given plan = small, addon(extra_seats) = 2
            expect seats allowed limit 13
        }
        test \"a pack alone\" {
            given addon(extra_seats) = 1
            expect seats allowed limit 5 reason granted_by_addon
        }",
    )
    .unwrap_or_else(|e| panic!("{e:#?}"));
    // On the wire an unlimited grant is allowed without a limit: no quota at the edge.
    let mut account = AccountFacts::new(AccountId(uuid::Uuid::nil()), 1);
    account.subscription = Some(SubscriptionFacts {
        plan: "big".into(),
        status: SubscriptionStatus::Active,
        current_period_end_ms: 0,
        billing_anchor_ms: None,
    });
    account.addons.insert("extra_seats".into(), 1);
    let vector = facts::fact_vector(&compiled.program, &account, 0);
    let rules = RulesEngine::new()
        .expect("engine")
        .load(&compiled.module, compiled.program.shape())
        .expect("loads");
    let raw = rules.evaluate(&vector).expect("evaluates");
    assert_eq!(raw, interp::evaluate(&compiled.program, &vector));
    assert_eq!(raw[1].limit, Limit::Unlimited);
    let seats = facts::decision(raw[1]);
    assert_eq!(
        (seats.allowed, seats.limit, seats.reason),
        (true, None, Reason::GrantedByPlan)
    );
}

#[test]
fn limit_arithmetic_on_an_unlimited_grant_stays_unlimited() {
    let source = "
rule \"bonus\" when plan == big => limit api_calls = limit(api_calls) + 1000
rule \"headroom\" when limit(api_calls) - usage(api_calls) > 1_000_000 => grant sso
rule \"doubled\" when plan == small => limit api_calls = limit(api_calls) * 2
test \"big\" {
    given plan = big, usage(api_calls) = 5
    expect api_calls allowed limit unlimited reason capped_by_rule, sso allowed reason granted_by_rule
}
test \"small\" {
    given plan = small
    expect api_calls allowed limit 20, sso denied
}
";
    compile(source).unwrap_or_else(|e| panic!("{e:#?}"));
    // No limit reads as 0: a rule granting a denied feature `limit(f) + n` gives it n.
    compile(
        "rule \"seed\" when dunning_level == 1 => grant seats = limit(seats) + 2
        test \"seeded\" {
            given dunning_level = 1
            expect seats allowed limit 2 reason granted_by_rule
        }",
    )
    .unwrap_or_else(|e| panic!("{e:#?}"));
}

#[test]
fn cap_at_usage_of_an_unlimited_grant_is_the_usage() {
    compile(
        "rule \"read-only\" when dunning_level >= 3 => cap metered at usage
        test \"capped\" {
            given plan = big, dunning_level = 3, usage(api_calls) = 42
            expect api_calls allowed limit 42 reason capped_by_rule
        }
        test \"a finite quota caps below the usage\" {
            given plan = small, dunning_level = 3, usage(api_calls) = 42
            expect api_calls allowed limit 10
        }",
    )
    .unwrap_or_else(|e| panic!("{e:#?}"));
}

#[test]
fn overrides_keep_unlimited_apart_from_no_limit() {
    let compiled = compile(
        "test \"unlimited override\" {
            given plan = small, override(seats) = grant limit unlimited
            expect seats allowed limit unlimited reason override
        }
        test \"override without a limit\" {
            given plan = small, override(seats) = grant
            expect seats allowed limit none reason override
        }
        test \"override deny\" {
            given plan = big, override(seats) = deny
            expect seats denied limit none reason override
        }",
    )
    .unwrap_or_else(|e| panic!("{e:#?}"));
    let errors = compile(
        "test \"override without a limit is not unlimited\" {
            given plan = small, override(seats) = grant
            expect seats limit unlimited
        }",
    )
    .expect_err("no limit is not unlimited");
    assert_eq!(
        messages(&errors),
        [(
            "test_failed",
            "test `override without a limit is not unlimited`: expected seats limit unlimited, \
             got none (override)"
        )]
    );
    let program = &compiled.program;
    let shape = program.shape();
    let [unlimited, without, _] = program.tests.as_slice() else {
        panic!("{:?}", program.tests)
    };
    assert_eq!(unlimited.given.override_limit(1, shape), Limit::Unlimited);
    assert_eq!(without.given.override_limit(1, shape), Limit::None);
    // From the wire: a grant with a number is finite, one without has no limit.
    let mut account = AccountFacts::new(AccountId(uuid::Uuid::nil()), 1);
    account
        .overrides
        .insert("seats".into(), FeatureOverride::Grant { limit: Some(7) });
    account
        .overrides
        .insert("api_calls".into(), FeatureOverride::Grant { limit: None });
    let vector: FactVector = facts::fact_vector(program, &account, 0);
    assert_eq!(vector.override_limit(1, shape), Limit::Finite(7));
    assert_eq!(vector.override_limit(2, shape), Limit::None);
    let decisions: Vec<_> = interp::evaluate(program, &vector)
        .into_iter()
        .map(facts::decision)
        .collect();
    assert_eq!((decisions[1].allowed, decisions[1].limit), (true, Some(7)));
    assert_eq!((decisions[2].allowed, decisions[2].limit), (true, None));
}
