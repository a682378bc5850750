//! Control-plane configuration. Every key, its unit and default:
//!
//! | env var | meaning | default |
//! |---|---|---|
//! | `TOLLGATE_CP_LISTEN_ADDR` | HTTP listen address | `127.0.0.1:7700` |
//! | `TOLLGATE_CF_DATABASE_URL` | cf_prod PostgreSQL URL | `postgres://postgres@127.0.0.1:5432/tollgate_cf` |
//! | `TOLLGATE_BILLING_DATABASE_URL` | billing_prod PostgreSQL URL | `postgres://postgres@127.0.0.1:5432/tollgate_billing` |
//! | `TOLLGATE_DB_POOL_SIZE` | connections per database pool | `16` |
//! | `TOLLGATE_REDIS_URL` | Redis (change streams, L2 facts) | `redis://127.0.0.1:6379` |
//! | `TOLLGATE_REDIS_CLUSTER_URLS` | a Redis Cluster instead: some of its nodes, comma-separated `redis://` URLs | none |
//! | `TOLLGATE_REDIS_KEY_PREFIX` | prefix of the change streams and L2 keys (every edge's must match) | `tollgate` |
//! | `TOLLGATE_REDIS_STREAM_SHARDS` | change-stream shards, 1 ..= 1024 (every edge's must match; fixed for a prefix) — see `tollgate_settings::redis` | `1` |
//! | `TOLLGATE_EDGE_TOKEN` | shared secret edges present on `/internal/v1`; at least 24 characters (8 in dev mode) | required |
//! | `TOLLGATE_TOKEN_SECRET` | HMAC key that derives Dashboard API tokens; at least 32 characters (8 in dev mode) | required |
//! | `TOLLGATE_ADMIN_TOKEN` | token platform engineers present on `/admin/v1`; at least 24 characters (8 in dev mode) | required |
//! | `TOLLGATE_TRUSTED_KEYS` | rule-bundle signing keys trusted, `key_id:hex,key_id:hex` | none (uploads refused) |
//! | `TOLLGATE_STRIPE_SECRET_KEY` | Stripe secret key; unset ⇒ simulated payments, which only dev mode allows | required outside dev mode |
//! | `TOLLGATE_STRIPE_API_BASE` | Stripe API base URL (localstripe in tests) | Stripe's |
//! | `TOLLGATE_BRAINTREE_PUBLIC_KEY`, `TOLLGATE_BRAINTREE_PRIVATE_KEY` | Braintree API keys: PayPal is offered through Braintree (both or neither) | none: PayPal through the simulator in dev mode, else not offered |
//! | `TOLLGATE_BRAINTREE_URL` | Braintree's GraphQL endpoint | the sandbox's |
//! | `TOLLGATE_BRAINTREE_MERCHANT_ACCOUNTS` | the merchant account charged in each currency, `USD:acme_usd,EUR:acme_eur` | none: the merchant's default account |
//! | `TOLLGATE_BRAINTREE_TIMEOUT_MS` | a Braintree request's timeout, ms; 100 ..= 120000 | `60000` |
//! | `TOLLGATE_DEV_MODE` | enables `/dev/v1` (advanceable clock, 3-D Secure simulator) | `false` |
//! | `TOLLGATE_SEED_DEMO` | seeds the demo catalog at start | `false` |
//! | `TOLLGATE_RELAY_POLL_MS` | outbox relay fallback poll interval, ms (NOTIFY wakes it sooner) | `500` |
//! | `TOLLGATE_CHECKOUT_EXPIRY_SECS` | unauthenticated checkouts expire after, s; 60 ..= 604800 (7 days) | `82800` (23 h) |
//! | `TOLLGATE_OUTBOX_RETENTION_HOURS` | processed outbox rows (and billing's inbox ids) are deleted this long after they were processed, h; 1 ..= 8760 | `168` (7 days) |
//! | `TOLLGATE_STRIPE_WEBHOOK_SECRETS` | the `whsec_…` secrets Stripe signs `POST /webhooks/stripe` with, comma-separated (old and new during a rotation) | none: the endpoint answers 503 |
//! | `TOLLGATE_SMTP_URL` | where customer emails go (`smtp://host:port`, `smtps://user:pass@host`); unset: they wait unsent as `pending` | none |
//! | `TOLLGATE_MAIL_FROM` | their sender | `Tollgate Billing <billing@tollgate.localhost>` |
//! | `TOLLGATE_PUBLIC_URL` | the control plane's public base URL (the pay links in emails) | `http://127.0.0.1:7700` |
//! | `TOLLGATE_DUNNING_RETRY_DAYS` | days after a failed renewal charge each retry runs, increasing, 1–20 of them, each 1–90 | `1,2,3,5,7,9,11,14` |
//! | `TOLLGATE_DUNNING_LEVELS_AFTER` | failed retries after which dunning levels 2, 3 and 4 begin | `2,4,6` |
//! | `TOLLGATE_DUNNING_BAN_OVER_MINOR` | an account whose unpaid written-off debt is above this is banned, minor units | `0` |
//! | `TOLLGATE_DUNNING_ON_EXHAUSTION` | what an exhausted case does to the subscription: `cancel`, or `unpaid` (kept, unrenewed, granting nothing, active again when paid) | `cancel` |
//! | `TOLLGATE_USAGE_GRACE_MS` | usage events arriving up to this long after their period ended still count toward it; later ones count toward the current period (late), ms, at most 7 days | `3600000` (1 h) |
//!
//! Values come from defaults < the TOML file named by `TOLLGATE_CONFIG` < the environment.

use std::net::SocketAddr;

use secrecy::SecretString;
use tollgate_settings::{ConfigErrors, Reader, Source};

#[derive(Debug, Clone)]
pub struct Config {
    pub listen_addr: SocketAddr,
    pub cf_database_url: String,
    pub billing_database_url: String,
    pub db_pool_size: u32,
    /// One Redis or a cluster, and the key names (prefix, stream shards) under it.
    pub redis: tollgate_settings::redis::RedisSettings,
    pub edge_token: SecretString,
    pub token_secret: SecretString,
    pub admin_token: SecretString,
    pub trusted_keys: tollgate_rules::bundle::TrustedKeys,
    pub stripe_secret_key: Option<SecretString>,
    pub stripe_api_base: Option<String>,
    /// PayPal through Braintree, when its keys are configured.
    pub braintree: Option<crate::gateways::braintree::Config>,
    pub dev_mode: bool,
    pub seed_demo: bool,
    pub relay_poll_ms: u64,
    pub checkout_expiry_secs: i64,
    pub usage_grace_ms: i64,
    pub outbox_retention_hours: i64,
    pub dunning: crate::dunning::Policy,
    pub smtp_url: Option<String>,
    pub stripe_webhook_secrets: Vec<String>,
    pub mail_from: String,
    pub public_url: String,
}

pub const DB_POOL_SIZE_MAX: u32 = 256;

/// `TOLLGATE_BRAINTREE_*`: both keys or neither.
fn braintree(r: &mut Reader) -> Option<crate::gateways::braintree::Config> {
    use crate::gateways::braintree;
    let public_key = r.optional("braintree_public_key");
    let private_key = r.optional_secret("braintree_private_key");
    let url = r.string("braintree_url", braintree::SANDBOX_URL);
    let accounts = r.optional("braintree_merchant_accounts");
    let timeout_ms: u64 = r.parse(
        "braintree_timeout_ms",
        braintree::TIMEOUT_DEFAULT.as_millis() as u64,
    );
    if !(100..=120_000).contains(&timeout_ms) {
        r.error("TOLLGATE_BRAINTREE_TIMEOUT_MS must be 100..=120000");
    }
    let mut merchant_accounts = std::collections::HashMap::new();
    for pair in accounts.iter().flat_map(|a| a.split(',')) {
        match pair.trim().split_once(':') {
            Some((c, m)) if crate::money::Currency::parse(c).is_some() && !m.is_empty() => {
                merchant_accounts.insert(c.to_owned(), m.to_owned());
            }
            _ => r.error(format!(
                "TOLLGATE_BRAINTREE_MERCHANT_ACCOUNTS: `{pair}` is not CURRENCY:merchant_account"
            )),
        }
    }
    match (public_key, private_key) {
        (Some(public_key), Some(private_key)) => Some(braintree::Config {
            url,
            public_key,
            private_key,
            merchant_accounts,
            timeout: std::time::Duration::from_millis(timeout_ms),
        }),
        (None, None) => None,
        _ => {
            r.error("TOLLGATE_BRAINTREE_PUBLIC_KEY and TOLLGATE_BRAINTREE_PRIVATE_KEY go together");
            None
        }
    }
}
/// Bounds of `TOLLGATE_CHECKOUT_EXPIRY_SECS`: a minute to a week (a provider's authentication
/// window is hours, and the expiry is added to timestamps).
pub const CHECKOUT_EXPIRY_SECS_MIN: i64 = 60;
pub const CHECKOUT_EXPIRY_SECS_MAX: i64 = 7 * 24 * 3600;
/// Shortest shared secrets outside dev mode (guessable below), characters.
pub const TOKEN_CHARS_MIN: usize = 24;
pub const TOKEN_SECRET_CHARS_MIN: usize = 32;
/// Shortest secrets in dev mode (local, throwaway stacks).
pub const DEV_TOKEN_CHARS_MIN: usize = 8;
/// Bounds of `TOLLGATE_OUTBOX_RETENTION_HOURS`: an hour (redeliveries of a row whose
/// processing was not recorded happen within minutes) to a year.
pub const OUTBOX_RETENTION_HOURS_MIN: i64 = 1;
pub const OUTBOX_RETENTION_HOURS_MAX: i64 = 8760;
/// Default of `TOLLGATE_OUTBOX_RETENTION_HOURS`: a week, for looking into what was delivered.
pub const OUTBOX_RETENTION_HOURS_DEFAULT: i64 = 168;
/// Upper bound of `TOLLGATE_USAGE_GRACE_MS`: a week (invoicing waits for the grace window).
pub const USAGE_GRACE_MS_MAX: i64 = 7 * 24 * 3600 * 1000;

impl Config {
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigErrors> {
        let mut r = Reader::new(source);
        let default_addr = SocketAddr::from(([127, 0, 0, 1], 7700));
        let mut cfg = Self {
            listen_addr: r.parse("cp_listen_addr", default_addr),
            cf_database_url: r.string(
                "cf_database_url",
                "postgres://postgres@127.0.0.1:5432/tollgate_cf",
            ),
            billing_database_url: r.string(
                "billing_database_url",
                "postgres://postgres@127.0.0.1:5432/tollgate_billing",
            ),
            db_pool_size: r.parse("db_pool_size", 16),
            redis: tollgate_settings::redis::RedisSettings::read(&mut r),
            edge_token: r.required_secret("edge_token"),
            token_secret: r.required_secret("token_secret"),
            admin_token: r.required_secret("admin_token"),
            trusted_keys: match r.optional("trusted_keys") {
                None => tollgate_rules::bundle::TrustedKeys::new(Vec::new()),
                Some(list) => tollgate_rules::bundle::TrustedKeys::parse_list(&list)
                    .unwrap_or_else(|e| {
                        r.error(format!("TOLLGATE_TRUSTED_KEYS: {e}"));
                        tollgate_rules::bundle::TrustedKeys::new(Vec::new())
                    }),
            },
            stripe_secret_key: r.optional_secret("stripe_secret_key"),
            stripe_api_base: r.optional("stripe_api_base"),
            braintree: None,
            dev_mode: r.parse("dev_mode", false),
            seed_demo: r.parse("seed_demo", false),
            relay_poll_ms: r.parse("relay_poll_ms", 500),
            checkout_expiry_secs: r.parse("checkout_expiry_secs", 23 * 3600),
            usage_grace_ms: r.parse("usage_grace_ms", crate::usage::GRACE_MS_DEFAULT),
            outbox_retention_hours: r
                .parse("outbox_retention_hours", OUTBOX_RETENTION_HOURS_DEFAULT),
            dunning: crate::dunning::Policy::default(),
            smtp_url: r.optional("smtp_url"),
            stripe_webhook_secrets: r
                .optional("stripe_webhook_secrets")
                .map(|s| {
                    s.split(',')
                        .map(|p| p.trim().to_owned())
                        .filter(|p| !p.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            mail_from: r.string("mail_from", "Tollgate Billing <billing@tollgate.localhost>"),
            public_url: r.string("public_url", "http://127.0.0.1:7700"),
        };
        if cfg
            .smtp_url
            .as_deref()
            .is_some_and(|u| !u.starts_with("smtp://") && !u.starts_with("smtps://"))
        {
            r.error("TOLLGATE_SMTP_URL must be an smtp:// or smtps:// URL");
        }
        if cfg.mail_from.parse::<lettre::message::Mailbox>().is_err() {
            r.error("TOLLGATE_MAIL_FROM must be an email address (`Name <addr>` or `addr`)");
        }
        cfg.braintree = braintree(&mut r);
        let days = r.string(
            "dunning_retry_days",
            crate::dunning::policy::RETRY_DAYS_DEFAULT,
        );
        let levels = r.string(
            "dunning_levels_after",
            crate::dunning::policy::LEVELS_AFTER_DEFAULT,
        );
        let ban: i64 = r.parse("dunning_ban_over_minor", 0);
        let exhaustion = r.string("dunning_on_exhaustion", "cancel");
        match crate::dunning::Policy::parse(&days, &levels, ban) {
            Ok(p) => cfg.dunning = p,
            Err(e) => r.error(format!("TOLLGATE_DUNNING_*: {e}")),
        }
        match crate::dunning::policy::Exhaustion::parse(&exhaustion) {
            Ok(x) => cfg.dunning.on_exhaustion = x,
            Err(e) => r.error(format!("TOLLGATE_DUNNING_ON_EXHAUSTION: {e}")),
        }
        if cfg.db_pool_size == 0 || cfg.db_pool_size > DB_POOL_SIZE_MAX {
            r.error(format!(
                "TOLLGATE_DB_POOL_SIZE must be 1..={DB_POOL_SIZE_MAX}"
            ));
        }
        if cfg.relay_poll_ms == 0 {
            r.error("TOLLGATE_RELAY_POLL_MS must be positive");
        }
        if !(CHECKOUT_EXPIRY_SECS_MIN..=CHECKOUT_EXPIRY_SECS_MAX)
            .contains(&cfg.checkout_expiry_secs)
        {
            r.error(format!(
                "TOLLGATE_CHECKOUT_EXPIRY_SECS must be {CHECKOUT_EXPIRY_SECS_MIN}..={CHECKOUT_EXPIRY_SECS_MAX}"
            ));
        }
        // Production without a Stripe key would sell everything through the simulator.
        if !cfg.dev_mode && cfg.stripe_secret_key.is_none() {
            r.error(
                "TOLLGATE_STRIPE_SECRET_KEY is required outside dev mode (simulated payments are for TOLLGATE_DEV_MODE=true only)",
            );
        }
        for (env, secret, min) in [
            ("TOLLGATE_EDGE_TOKEN", &cfg.edge_token, TOKEN_CHARS_MIN),
            ("TOLLGATE_ADMIN_TOKEN", &cfg.admin_token, TOKEN_CHARS_MIN),
            (
                "TOLLGATE_TOKEN_SECRET",
                &cfg.token_secret,
                TOKEN_SECRET_CHARS_MIN,
            ),
        ] {
            use secrecy::ExposeSecret;
            let min = if cfg.dev_mode {
                DEV_TOKEN_CHARS_MIN
            } else {
                min
            };
            // An absent required secret is already reported (and reads as empty here).
            let len = secret.expose_secret().chars().count();
            if len > 0 && len < min {
                r.error(format!("{env} must be at least {min} characters"));
            }
        }
        if !(0..=USAGE_GRACE_MS_MAX).contains(&cfg.usage_grace_ms) {
            r.error(format!(
                "TOLLGATE_USAGE_GRACE_MS must be 0..={USAGE_GRACE_MS_MAX}"
            ));
        }
        if !(OUTBOX_RETENTION_HOURS_MIN..=OUTBOX_RETENTION_HOURS_MAX)
            .contains(&cfg.outbox_retention_hours)
        {
            r.error(format!(
                "TOLLGATE_OUTBOX_RETENTION_HOURS must be {OUTBOX_RETENTION_HOURS_MIN}..={OUTBOX_RETENTION_HOURS_MAX}"
            ));
        }
        for (key, url) in [
            ("CF_DATABASE_URL", &cfg.cf_database_url),
            ("BILLING_DATABASE_URL", &cfg.billing_database_url),
        ] {
            if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
                r.error(format!("TOLLGATE_{key} must be a postgres:// URL"));
            }
        }
        r.finish()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_settings::MapSource;

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let src = MapSource::from_pairs([
            ("cp_listen_addr", "nope"),
            ("db_pool_size", "0"),
            ("redis_url", "http://x"),
            ("edge_token", "e"),
            ("usage_grace_ms", "-1"),
            ("outbox_retention_hours", "0"),
        ]);
        let errors = Config::from_source(&src).expect_err("invalid").0;
        let text = errors.join("\n");
        for needle in [
            "TOLLGATE_CP_LISTEN_ADDR",
            "TOLLGATE_TOKEN_SECRET is required",
            "TOLLGATE_DB_POOL_SIZE",
            "TOLLGATE_REDIS_URL",
            "TOLLGATE_USAGE_GRACE_MS",
            "TOLLGATE_OUTBOX_RETENTION_HOURS must be 1..=8760",
        ] {
            assert!(text.contains(needle), "missing {needle} in {text}");
        }
    }

    #[test]
    fn production_without_a_stripe_key_or_with_short_secrets_refuses_to_start() {
        let src = MapSource::from_pairs([
            ("edge_token", "short-edge-token"),
            ("token_secret", &*"t".repeat(31).leak()),
            ("admin_token", &*"a".repeat(24).leak()),
            ("checkout_expiry_secs", "9223372036854775807"),
        ]);
        let text = Config::from_source(&src).expect_err("refused").0.join("\n");
        for needle in [
            "TOLLGATE_STRIPE_SECRET_KEY is required outside dev mode",
            "TOLLGATE_EDGE_TOKEN must be at least 24",
            "TOLLGATE_TOKEN_SECRET must be at least 32",
            "TOLLGATE_CHECKOUT_EXPIRY_SECS must be 60..=604800",
        ] {
            assert!(text.contains(needle), "missing {needle} in {text}");
        }
        assert!(!text.contains("TOLLGATE_ADMIN_TOKEN"), "{text}");
    }

    #[test]
    fn defaults_fill_everything_but_secrets() {
        let src = MapSource::from_pairs([
            ("edge_token", &*"e".repeat(24).leak()),
            ("token_secret", &*"t".repeat(32).leak()),
            ("admin_token", &*"a".repeat(24).leak()),
            ("stripe_secret_key", "sk_test_x"),
        ]);
        let cfg = Config::from_source(&src).expect("valid");
        assert_eq!(cfg.listen_addr.port(), 7700);
        assert_eq!(cfg.checkout_expiry_secs, 82_800);
        assert_eq!(cfg.usage_grace_ms, 3_600_000);
        assert_eq!(cfg.outbox_retention_hours, 168);
        assert!(!cfg.dev_mode);
    }
}
