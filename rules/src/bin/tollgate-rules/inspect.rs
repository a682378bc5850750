//! `inspect`: what a bundle holds and, with trusted keys, whether its signature verifies.

use std::path::{Path, PathBuf};

use tollgate_rules::bundle::{self, PublicKey, TrustedKeys};

use crate::failure::{Failure, Outcome};
use crate::files::{read_bundle, read_key_text};
use crate::out::outln;
use crate::text::{effect_text, feature_key, grant_text, kind, or_none, price, pricing_text};

pub(crate) fn inspect(path: &Path, trusted_key_files: &[PathBuf]) -> Outcome {
    let bytes = read_bundle(path)?;
    let b =
        bundle::inspect(&bytes).map_err(|e| Failure::Failed(format!("{}: {e}", path.display())))?;
    let m = &b.manifest;
    let p = &b.program;
    outln!("bundle     {} ({} bytes)", path.display(), bytes.len());
    outln!("sha256     {}", b.sha256);
    outln!("version    {}", m.bundle_version);
    outln!("format     {}", m.format);
    outln!("created    {}", utc(m.created_at_ms));
    outln!("compiler   {}", m.compiler_version);
    outln!("source     sha256 {}", m.source_hash);
    outln!("features   {}", m.features.len());
    for f in &m.features {
        outln!("  {:<24} {}", f.key, kind(f));
    }
    outln!("plans      {}", m.plans.len());
    for plan in &m.plans {
        let trial = if plan.trial_days > 0 {
            format!(", trial {} days", plan.trial_days)
        } else {
            String::new()
        };
        outln!(
            "  {:<24} {:?}: {}{trial}",
            plan.key,
            plan.name,
            price(plan.price_minor, &plan.currency, plan.interval)
        );
        let grants: Vec<String> = plan.grants.iter().map(|g| grant_text(p, g)).collect();
        outln!("    grants: {}", or_none(&grants));
        for meter in &plan.meters {
            outln!(
                "    meter {}: {}",
                feature_key(p, meter.feature),
                pricing_text(&meter.pricing)
            );
        }
    }
    outln!("add-ons    {}", m.addons.len());
    for a in &m.addons {
        let effects: Vec<String> = a.effects.iter().map(|e| effect_text(p, e)).collect();
        outln!(
            "  {:<24} {:?}: {}; {}",
            a.key,
            a.name,
            price(a.price_minor, &a.currency, a.interval),
            or_none(&effects)
        );
    }
    outln!("rules      {}", m.rule_names.len());
    for r in &m.rule_names {
        outln!("  {r:?}");
    }
    outln!("tests      {}", m.tests.len());
    for t in &m.tests {
        outln!("  {:?}", t.name);
    }
    outln!("parts      {}", m.parts.len());
    for part in &m.parts {
        outln!(
            "  {:<24} {:>10} bytes  sha256 {}",
            part.name,
            part.len,
            part.sha256
        );
    }
    let Some(key_id) = &b.key_id else {
        outln!("signature  none (unsigned bundle)");
        return if trusted_key_files.is_empty() {
            Ok(())
        } else {
            Err(Failure::Failed("the bundle is not signed".into()))
        };
    };
    if trusted_key_files.is_empty() {
        outln!("signature  key `{key_id}`, not checked (pass --trusted-key FILE.pub)");
        return Ok(());
    }
    let mut keys = Vec::new();
    for f in trusted_key_files {
        keys.push(
            PublicKey::from_file_string(&read_key_text(f)?)
                .map_err(|e| Failure::Usage(format!("{}: {e}", f.display())))?,
        );
    }
    match bundle::verify(&bytes, &TrustedKeys::new(keys)) {
        Ok(v) => {
            outln!("signature  verified (key `{}`)", v.key_id);
            Ok(())
        }
        Err(e) => {
            outln!("signature  NOT VERIFIED (key `{key_id}`): {e}");
            Err(Failure::Failed(format!("{}: {e}", path.display())))
        }
    }
}

/// `2023-11-14 22:13:20 UTC` from Unix milliseconds (proleptic Gregorian calendar).
fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = tollgate_protocol::usage::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
