//! The compiled WebAssembly module and the reference interpreter agree on every decision, for
//! random programs (features, plans with finite, unlimited and no limits, add-ons, ordered
//! rules with nested expressions over `limit(f)` and `unlimited`, every action) and random
//! facts (including values that make arithmetic saturate, and override limits of every kind,
//! malformed slots included).

use proptest::prelude::*;
use tollgate_rules::host::RulesEngine;
use tollgate_rules::interp;
use tollgate_rules::ir::*;
use tollgate_rules::wasm;

/// splitmix64: a tiny deterministic generator driven by proptest's seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    /// Mostly small numbers, sometimes extremes.
    fn int(&mut self) -> i64 {
        match self.below(10) {
            0 => i64::MAX,
            1 => i64::MIN,
            2 => i64::MAX / 2 + self.below(1000) as i64,
            3 => -(self.below(100) as i64),
            _ => self.below(200) as i64,
        }
    }
}

fn gen_fact(r: &mut Rng, features: u32, addons: u32) -> Fact {
    match r.below(11) {
        0 => Fact::Banned,
        1 => Fact::Status,
        2 => Fact::Plan,
        3 => Fact::DunningLevel,
        4 => Fact::DaysPastDue,
        5 => Fact::InTrial,
        6 => Fact::Today,
        7 if addons > 0 => Fact::AddonQty(r.below(addons as u64) as u32),
        8 | 9 => Fact::OverrideMode(r.below(features as u64) as u32),
        _ => Fact::Usage(r.below(features as u64) as u32),
    }
}

fn gen_int(r: &mut Rng, depth: u32, features: u32, addons: u32) -> IntExpr {
    match if depth == 0 { r.below(4) } else { r.below(6) } {
        0 => IntExpr::Const(r.int()),
        1 => IntExpr::Fact(gen_fact(r, features, addons)),
        2 => IntExpr::LimitOf(r.below(features as u64) as u32),
        3 => IntExpr::Unlimited,
        _ => {
            let op = [ArithOp::Add, ArithOp::Sub, ArithOp::Mul][r.below(3) as usize];
            IntExpr::Arith(
                op,
                Box::new(gen_int(r, depth - 1, features, addons)),
                Box::new(gen_int(r, depth - 1, features, addons)),
            )
        }
    }
}

fn gen_bool(r: &mut Rng, depth: u32, features: u32, addons: u32) -> BoolExpr {
    match if depth == 0 { r.below(3) } else { r.below(6) } {
        0 => BoolExpr::Const(r.chance(50)),
        1 => BoolExpr::AllowedOf(r.below(features as u64) as u32),
        2 => {
            let op = [
                CmpOp::Eq,
                CmpOp::Ne,
                CmpOp::Lt,
                CmpOp::Le,
                CmpOp::Gt,
                CmpOp::Ge,
            ][r.below(6) as usize];
            BoolExpr::Cmp(
                op,
                gen_int(r, depth.min(2), features, addons),
                gen_int(r, depth.min(2), features, addons),
            )
        }
        3 => BoolExpr::And(
            Box::new(gen_bool(r, depth - 1, features, addons)),
            Box::new(gen_bool(r, depth - 1, features, addons)),
        ),
        4 => BoolExpr::Or(
            Box::new(gen_bool(r, depth - 1, features, addons)),
            Box::new(gen_bool(r, depth - 1, features, addons)),
        ),
        _ => BoolExpr::Not(Box::new(gen_bool(r, depth - 1, features, addons))),
    }
}

fn gen_target(r: &mut Rng, features: u32) -> Target {
    match r.below(4) {
        0 => Target::All,
        1 => Target::AllMetered,
        _ => Target::Feature(r.below(features as u64) as u32),
    }
}

/// No limit, unlimited or a number, as plans grant them.
fn gen_limit(r: &mut Rng) -> Limit {
    match r.below(10) {
        0..=2 => Limit::None,
        3..=5 => Limit::Unlimited,
        _ => Limit::Finite(r.int()),
    }
}

fn gen_reason(r: &mut Rng) -> ReasonCode {
    ReasonCode::ALL[r.below(ReasonCode::ALL.len() as u64) as usize]
}

#[allow(clippy::filter_map_bool_then)] // the generator must draw in this order
fn gen_program(seed: u64) -> Program {
    let mut r = Rng(seed);
    let features = 1 + r.below(6) as u32;
    let addons = r.below(3) as u32;
    let kinds = [FeatureKind::Bool, FeatureKind::Limit, FeatureKind::Metered];
    let features_v: Vec<Feature> = (0..features)
        .map(|i| Feature {
            key: format!("f{i}"),
            kind: kinds[r.below(3) as usize],
            period: None,
            fail_open: false,
            meter: None,
        })
        .collect();
    let plans = (0..r.below(4))
        .map(|p| Plan {
            key: format!("p{p}"),
            name: format!("P{p}"),
            price_minor: 100,
            currency: "USD".into(),
            interval: Interval::Month,
            trial_days: 0,
            grants: (0..features)
                .filter_map(|f| {
                    r.chance(60).then(|| Grant {
                        feature: f,
                        limit: gen_limit(&mut r),
                    })
                })
                .collect(),
            meters: vec![],
        })
        .collect();
    let addons_v = (0..addons)
        .map(|a| Addon {
            key: format!("a{a}"),
            name: format!("A{a}"),
            price_minor: 10,
            currency: "USD".into(),
            interval: Interval::Month,
            effects: (0..features)
                .filter_map(|f| {
                    r.chance(50).then(|| {
                        (
                            f,
                            if r.chance(50) {
                                AddonEffect::Grant
                            } else {
                                AddonEffect::AddLimit(r.int())
                            },
                        )
                    })
                })
                .collect(),
        })
        .collect();
    let rules = (0..r.below(7))
        .map(|i| {
            let action = match r.below(4) {
                0 => Action::Deny {
                    target: gen_target(&mut r, features),
                    reason: gen_reason(&mut r),
                },
                1 => Action::Grant {
                    target: gen_target(&mut r, features),
                    limit: r.chance(50).then(|| gen_int(&mut r, 2, features, addons)),
                    reason: gen_reason(&mut r),
                },
                2 => Action::SetLimit {
                    target: gen_target(&mut r, features),
                    value: gen_int(&mut r, 2, features, addons),
                    reason: gen_reason(&mut r),
                },
                _ => Action::CapAtUsage {
                    target: gen_target(&mut r, features),
                    reason: gen_reason(&mut r),
                },
            };
            Rule {
                name: format!("r{i}"),
                when: gen_bool(&mut r, 3, features, addons),
                action,
                span: Span::default(),
            }
        })
        .collect();
    Program {
        features: features_v,
        plans,
        addons: addons_v,
        rules,
        tests: vec![],
    }
}

fn gen_facts(program: &Program, seed: u64) -> FactVector {
    let mut r = Rng(seed ^ 0xA5A5_A5A5);
    let shape = program.shape();
    let mut v = FactVector::empty(shape);
    v.set(Fact::Banned, shape, r.below(2) as i64);
    v.set(
        Fact::Status,
        shape,
        r.below(6) as i64 - (r.chance(5) as i64),
    );
    v.set(
        Fact::Plan,
        shape,
        r.below(program.plans.len() as u64 + 2) as i64 - 1,
    );
    for f in [
        Fact::DunningLevel,
        Fact::DaysPastDue,
        Fact::InTrial,
        Fact::Today,
    ] {
        v.set(f, shape, r.int());
    }
    for a in 0..shape.addons {
        v.set(
            Fact::AddonQty(a as u32),
            shape,
            if r.chance(30) {
                r.int()
            } else {
                r.below(4) as i64
            },
        );
    }
    for f in 0..shape.features as u32 {
        v.set(Fact::Usage(f), shape, r.int());
        v.set(
            Fact::OverrideMode(f),
            shape,
            if r.chance(80) { 0 } else { r.below(4) as i64 },
        );
        if r.chance(90) {
            v.set_override_limit(f, shape, gen_limit(&mut r));
        } else {
            // Slots no fact vector of ours holds: both engines read them the same way.
            let [kind, value] = override_limit_slots(f, shape);
            v.0[kind] = r.int();
            v.0[value] = r.int();
        }
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn webassembly_and_interpreter_decide_alike(seed in any::<u64>()) {
        let engine = RulesEngine::new().expect("engine");
        let program = gen_program(seed);
        let bytes = wasm::emit(&program).expect("emit");
        let loaded = engine.load(&bytes, program.shape()).expect("load");
        // More accounts than one call takes, so the batch crosses calls and its last call is
        // partial (its memory's tail is zeroed, not left from the call before).
        let n = loaded.batch_max() * 2 + 3;
        let facts: Vec<FactVector> = (0..n as u64).map(|i| gen_facts(&program, seed.wrapping_add(i))).collect();
        let got = loaded.evaluate_batch(&facts).expect("evaluate");
        prop_assert_eq!(got.len(), facts.len());
        for (f, wasm_decisions) in facts.iter().zip(got) {
            let want = interp::evaluate(&program, f);
            prop_assert_eq!(&wasm_decisions, &want, "program {:#?}\nfacts {:?}", program, f);
        }
        // Single evaluations reuse kept instances: each account decides as the interpreter
        // does whatever account the instance decided before; a fresh store agrees too.
        for f in facts.iter().take(8) {
            prop_assert_eq!(loaded.evaluate(f).expect("single"), interp::evaluate(&program, f));
        }
        prop_assert_eq!(loaded.evaluate_fresh(&facts[0]).expect("fresh"), interp::evaluate(&program, &facts[0]));
    }
}

#[test]
fn saturating_arithmetic_matches_rust() {
    let cases = [
        (i64::MAX, 1),
        (i64::MIN, -1),
        (i64::MIN, i64::MIN),
        (-1, i64::MIN),
        (i64::MIN, 0),
        (3, -7),
        (i64::MAX / 2 + 1, 2),
        (-(i64::MAX / 2) - 2, 2),
        (0, 0),
    ];
    let engine = RulesEngine::new().expect("engine");
    for (a, b) in cases {
        for op in [ArithOp::Add, ArithOp::Sub, ArithOp::Mul] {
            let program = Program {
                features: vec![Feature {
                    key: "x".into(),
                    kind: FeatureKind::Limit,
                    period: None,
                    fail_open: false,
                    meter: None,
                }],
                plans: vec![],
                addons: vec![],
                rules: vec![Rule {
                    name: "r".into(),
                    when: BoolExpr::Const(true),
                    action: Action::Grant {
                        target: Target::All,
                        limit: Some(IntExpr::Arith(
                            op,
                            Box::new(IntExpr::Const(a)),
                            Box::new(IntExpr::Const(b)),
                        )),
                        reason: ReasonCode::GrantedByRule,
                    },
                    span: Span::default(),
                }],
                tests: vec![],
            };
            let loaded = engine
                .load(&wasm::emit(&program).expect("emit"), program.shape())
                .expect("load");
            let got = loaded
                .evaluate(&FactVector::empty(program.shape()))
                .expect("eval")[0]
                .limit;
            let want = match op {
                ArithOp::Add => a.saturating_add(b),
                ArithOp::Sub => a.saturating_sub(b),
                ArithOp::Mul => a.saturating_mul(b),
            };
            assert_eq!(got, Limit::Finite(want), "{a} {op:?} {b}");
        }
    }
}

/// `grant x = <a op b>` through the module, for one feature `x`.
fn module_limit(engine: &RulesEngine, value: IntExpr) -> Limit {
    let program = Program {
        features: vec![Feature {
            key: "x".into(),
            kind: FeatureKind::Limit,
            period: None,
            fail_open: false,
            meter: None,
        }],
        plans: vec![],
        addons: vec![],
        rules: vec![Rule {
            name: "r".into(),
            when: BoolExpr::Const(true),
            action: Action::Grant {
                target: Target::All,
                limit: Some(value),
                reason: ReasonCode::GrantedByRule,
            },
            span: Span::default(),
        }],
        tests: vec![],
    };
    let loaded = engine
        .load(&wasm::emit(&program).expect("emit"), program.shape())
        .expect("load");
    let from_module = loaded
        .evaluate(&FactVector::empty(program.shape()))
        .expect("eval")[0]
        .limit;
    let from_interp = interp::evaluate(&program, &FactVector::empty(program.shape()))[0].limit;
    assert_eq!(from_module, from_interp, "{program:?}");
    from_module
}

/// The table of the extended integers in `ir`'s module doc, written out (not derived from
/// the interpreter): unlimited absorbs additions, there is no negative infinity.
#[test]
fn unlimited_arithmetic_follows_the_documented_table() {
    use IntExpr::{Const, Unlimited};
    let engine = RulesEngine::new().expect("engine");
    let arith = |op, a: IntExpr, b: IntExpr| IntExpr::Arith(op, Box::new(a), Box::new(b));
    let cases = [
        (
            arith(ArithOp::Add, Unlimited, Const(1000)),
            Limit::Unlimited,
        ),
        (arith(ArithOp::Add, Const(-5), Unlimited), Limit::Unlimited),
        (
            arith(ArithOp::Add, Const(i64::MIN), Unlimited),
            Limit::Unlimited,
        ),
        (arith(ArithOp::Sub, Unlimited, Const(7)), Limit::Unlimited),
        (arith(ArithOp::Sub, Unlimited, Unlimited), Limit::Unlimited),
        (
            arith(ArithOp::Sub, Const(7), Unlimited),
            Limit::Finite(i64::MIN),
        ),
        (
            arith(ArithOp::Sub, Const(0), Unlimited),
            Limit::Finite(i64::MIN),
        ),
        (arith(ArithOp::Mul, Unlimited, Const(3)), Limit::Unlimited),
        (arith(ArithOp::Mul, Const(0), Unlimited), Limit::Finite(0)),
        (
            arith(ArithOp::Mul, Unlimited, Const(-2)),
            Limit::Finite(i64::MIN),
        ),
        (arith(ArithOp::Mul, Unlimited, Unlimited), Limit::Unlimited),
        (Unlimited, Limit::Unlimited),
        // A finite value that saturates is still a number, not unlimited.
        (
            arith(ArithOp::Add, Const(i64::MAX), Const(1)),
            Limit::Finite(i64::MAX),
        ),
    ];
    for (value, want) in cases {
        assert_eq!(module_limit(&engine, value.clone()), want, "{value:?}");
    }
    // Comparisons: unlimited equals itself and is above every integer.
    let cmp = |op, a: IntExpr, b: IntExpr| {
        let program = Program {
            features: vec![Feature {
                key: "x".into(),
                kind: FeatureKind::Bool,
                period: None,
                fail_open: false,
                meter: None,
            }],
            plans: vec![],
            addons: vec![],
            rules: vec![Rule {
                name: "r".into(),
                when: BoolExpr::Cmp(op, a, b),
                action: Action::Grant {
                    target: Target::All,
                    limit: None,
                    reason: ReasonCode::GrantedByRule,
                },
                span: Span::default(),
            }],
            tests: vec![],
        };
        let loaded = engine.load_program(&program).expect("load");
        let facts = FactVector::empty(program.shape());
        let allowed = loaded.evaluate(&facts).expect("eval")[0].allowed;
        assert_eq!(allowed, interp::evaluate(&program, &facts)[0].allowed);
        allowed
    };
    assert!(cmp(CmpOp::Gt, Unlimited, Const(i64::MAX)));
    assert!(cmp(CmpOp::Eq, Unlimited, Unlimited));
    assert!(cmp(CmpOp::Ge, Unlimited, Unlimited));
    assert!(!cmp(CmpOp::Lt, Unlimited, Unlimited));
    assert!(cmp(CmpOp::Lt, Const(i64::MAX), Unlimited));
    assert!(!cmp(CmpOp::Eq, Const(0), Unlimited));
}

#[test]
fn threads_sharing_kept_instances_each_get_their_own_accounts_decisions() {
    // Eight threads evaluate different accounts on one loaded module at once, taking and
    // returning kept instances: every answer is the interpreter's for that thread's account.
    let engine = RulesEngine::new().expect("engine");
    let program = gen_program(7);
    let loaded = engine.load_program(&program).expect("load");
    let facts: Vec<FactVector> = (0..64).map(|i| gen_facts(&program, 1_000 + i)).collect();
    std::thread::scope(|s| {
        for t in 0..8 {
            let (loaded, program, facts) = (&loaded, &program, &facts);
            s.spawn(move || {
                for round in 0..200 {
                    let f = &facts[(t * 7 + round) % facts.len()];
                    assert_eq!(
                        loaded.evaluate(f).expect("evaluate"),
                        interp::evaluate(program, f),
                        "thread {t}, round {round}"
                    );
                }
            });
        }
    });
}
