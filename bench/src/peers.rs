//! The peers a user would pick instead, run side by side with Tollgate in the same harness:
//! regorus (Microsoft's Rego engine) evaluating `peers/regorus/demo.rego`, the demo rules in
//! Rego, over the same fact vectors.

use anyhow::{Context, bail};
use tollgate_rules::ir::{Fact, FactVector, Limit, Program, RawDecision, ReasonCode};

/// The regorus release the table names (the version `Cargo.lock` pins).
pub const REGORUS_VERSION: &str = "0.14.1";
/// The demo rules in Rego (the policy file committed beside the results).
pub const DEMO_REGO: &str = include_str!("../peers/regorus/demo.rego");
/// The rule the harness evaluates.
const DECISIONS_RULE: &str = "data.tollgate.decisions";

/// A regorus engine with the demo policy loaded.
pub struct Rego {
    engine: regorus::Engine,
    features: Vec<String>,
}

impl Rego {
    pub fn demo() -> anyhow::Result<Self> {
        let mut engine = regorus::Engine::new();
        engine
            .add_policy("demo.rego".into(), DEMO_REGO.into())
            .context("load demo.rego")?;
        let program = tollgate_rules::demo_program();
        Ok(Self {
            engine,
            features: program.features.iter().map(|f| f.key.clone()).collect(),
        })
    }

    /// One account's fact vector with its slots named, as the policy reads it.
    pub fn input(program: &Program, v: &FactVector) -> anyhow::Result<regorus::Value> {
        let shape = program.shape();
        let get = |f: Fact| v.get(f, shape);
        let mut addons = serde_json::Map::new();
        for (a, addon) in program.addons.iter().enumerate() {
            addons.insert(addon.key.clone(), get(Fact::AddonQty(a as u32)).into());
        }
        let mut usage = serde_json::Map::new();
        let mut overrides = serde_json::Map::new();
        for (f, feature) in program.features.iter().enumerate() {
            let f = f as u32;
            usage.insert(feature.key.clone(), get(Fact::Usage(f)).into());
            let [kind, value] = tollgate_rules::ir::override_limit_slots(f, shape);
            overrides.insert(
                feature.key.clone(),
                serde_json::json!({
                    "mode": get(Fact::OverrideMode(f)),
                    "kind": v.0[kind],
                    "value": v.0[value],
                }),
            );
        }
        let input = serde_json::json!({
            "banned": get(Fact::Banned),
            "status": get(Fact::Status),
            "plan": get(Fact::Plan),
            "dunning_level": get(Fact::DunningLevel),
            "days_past_due": get(Fact::DaysPastDue),
            "addons": addons,
            "usage": usage,
            "overrides": overrides,
        });
        regorus::Value::from_json_str(&input.to_string()).context("regorus input")
    }

    /// Evaluates the policy for one account: what a regorus user does per request.
    pub fn evaluate(&mut self, input: &regorus::Value) -> anyhow::Result<regorus::Value> {
        self.engine.set_input(input.clone());
        self.engine
            .eval_rule(DECISIONS_RULE.into())
            .context("evaluate demo.rego")
    }

    /// The policy's output as decisions in feature order (checked like a module's output).
    pub fn decisions(&self, out: &regorus::Value) -> anyhow::Result<Vec<RawDecision>> {
        self.features
            .iter()
            .map(|key| {
                let d = &out[key.as_str()];
                let int = |field: &str| d[field].as_i64().with_context(|| format!("{key}.{field}"));
                let allowed = *d["allowed"].as_bool().context("allowed")?;
                let Some(limit) = Limit::from_slots(int("kind")?, int("value")?) else {
                    bail!("{key}: bad limit");
                };
                let reason = ReasonCode::from_code(int("reason")?).context("reason")?;
                Ok(RawDecision {
                    allowed,
                    limit,
                    reason,
                })
            })
            .collect()
    }
}
