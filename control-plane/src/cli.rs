//! `tollgate-control-plane billing-pass [--as-of <RFC 3339 time>] [--run]`: previews (the
//! default) or runs a billing pass as of a time, with a progress bar and a summary of the
//! invoices, amounts and failures ([`crate::billing::pass`]). A run cannot be in the future of
//! the control plane's clock (the wall clock, or the development clock in dev mode): billing
//! early is not a thing to do by accident. The configuration is the control plane's own.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};

use crate::billing::pass::{self, Due, Summary};
use crate::clock::ManualClock;
use crate::config::Config;
use crate::money::{self, Currency};
use crate::run::{Deps, STARTUP_WAIT_SECS, build_state, connect_databases, connect_redis_to};

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingPass {
    pub as_of: Option<DateTime<Utc>>,
    pub run: bool,
}

/// Parses the arguments after `billing-pass`.
pub fn parse(args: &[String]) -> anyhow::Result<BillingPass> {
    let mut out = BillingPass {
        as_of: None,
        run: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--run" => out.run = true,
            "--preview" => out.run = false,
            "--as-of" => {
                let v = it.next().context("--as-of needs a time (RFC 3339)")?;
                let t = DateTime::parse_from_rfc3339(v)
                    .with_context(|| format!("--as-of `{v}` is not an RFC 3339 time"))?;
                out.as_of = Some(t.with_timezone(&Utc));
            }
            other => bail!(
                "unknown argument `{other}`; usage: billing-pass [--as-of <RFC 3339>] [--run]"
            ),
        }
    }
    Ok(out)
}

fn amounts(m: &std::collections::BTreeMap<Currency, i64>) -> String {
    if m.is_empty() {
        return "0".to_owned();
    }
    m.iter()
        .map(|(c, a)| money::format(*a, *c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The preview as printed.
pub fn describe_due(as_of: DateTime<Utc>, d: &Due) -> String {
    format!(
        "due as of {as_of}: {} renewals, {} drafts to finalise, {} charges ({})",
        d.renewals,
        d.drafts,
        d.charges,
        amounts(&d.charge_amounts)
    )
}

/// The summary as printed.
pub fn describe_summary(s: &Summary) -> String {
    format!(
        "renewed {} · finalised {} invoices ({}) · charged {} ({}) · declined {} · failed {} · {} rounds",
        s.renewed,
        s.finalized,
        amounts(&s.invoiced),
        s.charged,
        amounts(&s.charged_amounts),
        s.declined,
        s.failed,
        s.passes
    )
}

/// Runs the command; returns its exit code.
pub async fn billing_pass(config: &Config, cmd: &BillingPass) -> anyhow::Result<i32> {
    let (cf, billing) = connect_databases(config).await?;
    let offset = if config.dev_mode {
        crate::clock::load_offset(&cf).await?
    } else {
        0
    };
    let now = Utc::now() + chrono::TimeDelta::milliseconds(offset);
    let as_of = cmd.as_of.unwrap_or(now);
    if cmd.run && as_of > now {
        bail!(
            "--as-of {as_of} is after the control plane's clock ({now}): a pass cannot bill the future"
        );
    }
    let redis =
        connect_redis_to(&config.redis.target, Duration::from_secs(STARTUP_WAIT_SECS)).await?;
    let state = build_state(
        config,
        Deps {
            cf,
            billing,
            redis,
            clock: Arc::new(ManualClock::at(as_of)),
            wrap_gateway: None,
        },
    )?;
    let due = pass::preview(&state, as_of).await?;
    println!("{}", describe_due(as_of, &due));
    if !cmd.run {
        println!("preview only: nothing was written (add --run to bill)");
        return Ok(0);
    }
    let bar = indicatif::ProgressBar::new(due.items().max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let summary = pass::run(&state, |s| {
        let done = s.items();
        if done > bar.length().unwrap_or(0) {
            bar.set_length(done);
        }
        bar.set_position(done);
        bar.set_message(format!(
            "renewed {} · finalised {} · charged {} · failed {}",
            s.renewed,
            s.finalized,
            s.charged,
            s.declined + s.failed
        ));
    })
    .await?;
    bar.finish_and_clear();
    println!("{}", describe_summary(&summary));
    Ok(if summary.declined + summary.failed > 0 {
        2
    } else {
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_command_line_is_parsed_strictly() {
        assert_eq!(
            parse(&args(&[])).unwrap(),
            BillingPass {
                as_of: None,
                run: false
            }
        );
        let p = parse(&args(&["--as-of", "2027-02-01T00:00:00Z", "--run"])).unwrap();
        assert!(p.run);
        assert_eq!(p.as_of.unwrap().to_rfc3339(), "2027-02-01T00:00:00+00:00");
        assert!(parse(&args(&["--as-of"])).is_err());
        assert!(parse(&args(&["--as-of", "yesterday"])).is_err());
        assert!(parse(&args(&["--force"])).is_err());
    }
}
