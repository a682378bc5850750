//! Edge configuration. Every key, its unit and default:
//!
//! | env var | meaning | default |
//! |---|---|---|
//! | `TOLLGATE_EDGE_LISTEN_ADDR` | HTTP listen address | `127.0.0.1:7701` |
//! | `TOLLGATE_EDGE_ID` | this edge's id (fleet status, canary selection) | `edge-1` |
//! | `TOLLGATE_CONTROL_PLANE_URL` | control plane base URL | `http://127.0.0.1:7700` |
//! | `TOLLGATE_EDGE_TOKEN` | token presented to the control plane's internal API | required |
//! | `TOLLGATE_REDIS_URL` | Redis (change streams, L2 facts) | `redis://127.0.0.1:6379` |
//! | `TOLLGATE_REDIS_CLUSTER_URLS` | a Redis Cluster instead: some of its nodes, comma-separated `redis://` URLs | none |
//! | `TOLLGATE_REDIS_KEY_PREFIX` | prefix of the change streams and L2 keys (the control plane's must match) | `tollgate` |
//! | `TOLLGATE_REDIS_STREAM_SHARDS` | change-stream shards, 1 ..= 1024; the edge follows every one (the control plane's must match) — see `tollgate_settings::redis` | `1` |
//! | `TOLLGATE_EDGE_SERVICE_TOKENS` | comma-separated tokens product services must send (`Authorization: Bearer`) for checks, OFREP and usage; none: open (bind loopback). At least 16 characters each | none |
//! | `TOLLGATE_EDGE_OPERATOR_TOKENS` | comma-separated tokens for the dead-letter API; none: that API is refused. At least 16 characters each | none |
//! | `TOLLGATE_EDGE_FILLS_CONCURRENT_MAX` | control-plane fill requests in flight at most | `32` |
//! | `TOLLGATE_EDGE_FILLS_PER_SECOND_MAX` | control-plane fill requests per second at most (misses past it answer the fallback) | `500` |
//! | `TOLLGATE_EDGE_DATA_DIR` | local state directory | `.tollgate/edge` |
//! | `TOLLGATE_EDGE_CACHE_ENTRIES_MAX` | cached accounts at most | `1000000` |
//! | `TOLLGATE_EDGE_CACHE_BYTES_MAX` | estimated bytes the cache may hold at most | `1073741824` (1 GiB) |
//! | `TOLLGATE_EDGE_FRESHNESS_BUDGET_MS` | answers are `stale` when the change stream has been silent-by-failure longer, ms; at least the stream's block time plus its response margin (3000) | `5000` |
//! | `TOLLGATE_EDGE_UPSTREAM_TIMEOUT_MS` | timeout of one control-plane request, ms | `2000` |
//! | `TOLLGATE_EDGE_NEGATIVE_TTL_MS` | how long "unknown account" is trusted, ms | `5000` |
//! | `TOLLGATE_TRUSTED_KEYS` | rule-bundle signing keys trusted, `key_id:hex,key_id:hex` | required |
//! | `TOLLGATE_EDGE_BUNDLE_POLL_MS` | how often the edge asks for its bundle (ETag), ms | `2000` |
//! | `TOLLGATE_EDGE_USAGE_BUFFER_BYTES_MAX` | usage bytes stored but not yet acknowledged by the control plane, at most; past it `POST /v1/usage` answers 503 | `268435456` (256 MiB) |
//! | `TOLLGATE_EDGE_USAGE_DEAD_LETTER_BYTES_MAX` | bytes the usage dead-letter file may hold; entries past it are dropped, counted and logged | `67108864` (64 MiB) |
//! | `TOLLGATE_EDGE_USAGE_FLUSH_MS` | longest pause between usage flushes when little usage arrives, ms | `250` |

use std::net::SocketAddr;
use std::path::PathBuf;

use secrecy::SecretString;
use tollgate_settings::{ConfigErrors, Reader, Source};

#[derive(Debug, Clone)]
pub struct Config {
    pub listen_addr: SocketAddr,
    pub edge_id: String,
    pub control_plane_url: String,
    pub edge_token: SecretString,
    /// One Redis or a cluster, and the key names (prefix, stream shards) under it.
    pub redis: tollgate_settings::redis::RedisSettings,
    pub tokens: crate::auth::Tokens,
    pub fill_limits: crate::upstream::FillLimits,
    pub data_dir: PathBuf,
    pub cache_entries_max: u64,
    pub cache_bytes_max: u64,
    pub freshness_budget_ms: u64,
    pub upstream_timeout_ms: u64,
    pub negative_ttl_ms: u64,
    pub trusted_keys: tollgate_rules::bundle::TrustedKeys,
    pub bundle_poll_ms: u64,
    pub usage_buffer_bytes_max: u64,
    pub usage_dead_letter_bytes_max: u64,
    pub usage_flush_ms: u64,
    /// Development: follow the control plane's development clock.
    pub follow_clock: bool,
}

impl Config {
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigErrors> {
        let mut r = Reader::new(source);
        let cfg = Self {
            listen_addr: r.parse("edge_listen_addr", SocketAddr::from(([127, 0, 0, 1], 7701))),
            edge_id: r.string("edge_id", "edge-1"),
            control_plane_url: r.string("control_plane_url", "http://127.0.0.1:7700"),
            edge_token: r.required_secret("edge_token"),
            redis: tollgate_settings::redis::RedisSettings::read(&mut r),
            tokens: crate::auth::Tokens {
                service: token_list(
                    &mut r,
                    "edge_service_tokens",
                    "TOLLGATE_EDGE_SERVICE_TOKENS",
                ),
                operator: token_list(
                    &mut r,
                    "edge_operator_tokens",
                    "TOLLGATE_EDGE_OPERATOR_TOKENS",
                ),
            },
            fill_limits: crate::upstream::FillLimits {
                concurrent_max: r.parse("edge_fills_concurrent_max", 32),
                per_second_max: r.parse("edge_fills_per_second_max", 500),
            },
            data_dir: PathBuf::from(r.string("edge_data_dir", ".tollgate/edge")),
            cache_entries_max: r.parse("edge_cache_entries_max", 1_000_000),
            cache_bytes_max: r.parse("edge_cache_bytes_max", 1 << 30),
            freshness_budget_ms: r.parse("edge_freshness_budget_ms", 5_000),
            upstream_timeout_ms: r.parse("edge_upstream_timeout_ms", 2_000),
            negative_ttl_ms: r.parse("edge_negative_ttl_ms", 5_000),
            trusted_keys: match r.optional("trusted_keys") {
                None => {
                    r.error(
                        "TOLLGATE_TRUSTED_KEYS is required (the keys rule bundles are signed with)",
                    );
                    tollgate_rules::bundle::TrustedKeys::new(Vec::new())
                }
                Some(list) => tollgate_rules::bundle::TrustedKeys::parse_list(&list)
                    .unwrap_or_else(|e| {
                        r.error(format!("TOLLGATE_TRUSTED_KEYS: {e}"));
                        tollgate_rules::bundle::TrustedKeys::new(Vec::new())
                    }),
            },
            bundle_poll_ms: r.parse("edge_bundle_poll_ms", 2_000),
            usage_buffer_bytes_max: r.parse("edge_usage_buffer_bytes_max", 256 << 20),
            usage_dead_letter_bytes_max: r.parse("edge_usage_dead_letter_bytes_max", 64 << 20),
            usage_flush_ms: r.parse("edge_usage_flush_ms", 250),
            follow_clock: r.parse("edge_follow_clock", false),
        };
        if cfg.usage_buffer_bytes_max < 4096 {
            r.error("TOLLGATE_EDGE_USAGE_BUFFER_BYTES_MAX must be at least 4096");
        }
        if cfg.fill_limits.concurrent_max == 0 || cfg.fill_limits.per_second_max == 0 {
            r.error("TOLLGATE_EDGE_FILLS_CONCURRENT_MAX and TOLLGATE_EDGE_FILLS_PER_SECOND_MAX must be positive");
        }
        let block_ms = crate::stream::BLOCK_MS as u64 + crate::stream::RESPONSE_MARGIN_MS;
        if cfg.freshness_budget_ms < block_ms {
            r.error(format!(
                "TOLLGATE_EDGE_FRESHNESS_BUDGET_MS must be at least {block_ms} (the stream's block time plus its response margin): a smaller budget calls answers stale between two idle reads"
            ));
        }
        if cfg.usage_dead_letter_bytes_max < 4096 {
            r.error("TOLLGATE_EDGE_USAGE_DEAD_LETTER_BYTES_MAX must be at least 4096");
        }
        if cfg.usage_flush_ms == 0 {
            r.error("TOLLGATE_EDGE_USAGE_FLUSH_MS must be positive");
        }
        if !tollgate_protocol::internal_api::valid_edge_id(&cfg.edge_id) {
            r.error("TOLLGATE_EDGE_ID must be 1-128 characters of A-Z a-z 0-9 - _ .");
        }
        if cfg.bundle_poll_ms == 0 {
            r.error("TOLLGATE_EDGE_BUNDLE_POLL_MS must be positive");
        }
        if !cfg.control_plane_url.starts_with("http://")
            && !cfg.control_plane_url.starts_with("https://")
        {
            r.error("TOLLGATE_CONTROL_PLANE_URL must be an http(s) URL");
        }
        if cfg.cache_entries_max == 0 {
            r.error("TOLLGATE_EDGE_CACHE_ENTRIES_MAX must be positive");
        }
        if cfg.cache_bytes_max < 1 << 20 {
            r.error("TOLLGATE_EDGE_CACHE_BYTES_MAX must be at least 1 MiB (1048576)");
        }
        if cfg.upstream_timeout_ms == 0 {
            r.error("TOLLGATE_EDGE_UPSTREAM_TIMEOUT_MS must be positive");
        }
        r.finish()?;
        Ok(cfg)
    }
}

/// A comma-separated list of secret tokens, each at least
/// [`crate::auth::TOKEN_CHARS_MIN`] characters.
fn token_list(r: &mut Reader<'_>, key: &str, env: &str) -> Vec<SecretString> {
    let Some(list) = r.optional(key) else {
        return Vec::new();
    };
    let tokens: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if tokens.iter().any(|t| {
        t.chars().count() < crate::auth::TOKEN_CHARS_MIN || t.chars().any(char::is_whitespace)
    }) {
        r.error(format!(
            "{env}: every token must be at least {} characters, without spaces",
            crate::auth::TOKEN_CHARS_MIN
        ));
    }
    tokens
        .into_iter()
        .map(|t| SecretString::from(t.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_settings::MapSource;

    #[test]
    fn all_problems_are_reported_together() {
        let src = MapSource::from_pairs([
            ("control_plane_url", "ftp://x"),
            ("edge_cache_entries_max", "0"),
        ]);
        let text = Config::from_source(&src).expect_err("invalid").0.join("\n");
        for needle in [
            "TOLLGATE_EDGE_TOKEN is required",
            "TOLLGATE_TRUSTED_KEYS is required",
            "TOLLGATE_CONTROL_PLANE_URL",
            "TOLLGATE_EDGE_CACHE_ENTRIES_MAX",
        ] {
            assert!(text.contains(needle), "missing {needle}: {text}");
        }
    }
}
