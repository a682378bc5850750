//! The Redis settings the control plane and the edges share (they must agree on every one):
//!
//! | env var | meaning | default |
//! |---|---|---|
//! | `TOLLGATE_REDIS_URL` | one Redis server (`redis://host:port`) | `redis://127.0.0.1:6379` |
//! | `TOLLGATE_REDIS_CLUSTER_URLS` | a Redis Cluster instead: comma-separated `redis://` URLs of some of its nodes (the client learns the rest); set together with `TOLLGATE_REDIS_URL` is an error | none: one server |
//! | `TOLLGATE_REDIS_KEY_PREFIX` | prefix of the change streams and L2 keys | `tollgate` |
//! | `TOLLGATE_REDIS_STREAM_SHARDS` | change-stream shards, 1 ..= 1024: accounts are spread over them by a hash of their id (`redis_keys::shard_of`); on a cluster, more shards than masters spread the stream over every master. Fixed for a prefix | `1` |

use tollgate_protocol::redis_keys::{self, Keys, RedisTarget};

use crate::Reader;

/// Where Redis is and the key names under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub target: RedisTarget,
    pub keys: Keys,
}

impl RedisSettings {
    /// Reads the keys of the table above, recording every problem in `r`.
    pub fn read(r: &mut Reader<'_>) -> RedisSettings {
        let url = r.optional("redis_url");
        let cluster = r.optional("redis_cluster_urls");
        let prefix = r.string("redis_key_prefix", redis_keys::DEFAULT_PREFIX);
        let shards: u16 = r.parse("redis_stream_shards", redis_keys::DEFAULT_STREAM_SHARDS);
        if !Keys::valid_prefix(&prefix) {
            r.error("TOLLGATE_REDIS_KEY_PREFIX must be 1-64 characters of A-Z a-z 0-9 _ . -");
        }
        if !(1..=redis_keys::STREAM_SHARDS_MAX).contains(&shards) {
            r.error(format!(
                "TOLLGATE_REDIS_STREAM_SHARDS must be 1 ..= {}",
                redis_keys::STREAM_SHARDS_MAX
            ));
        }
        let target = match (url, cluster) {
            (Some(_), Some(_)) => {
                r.error("set TOLLGATE_REDIS_URL (one server) or TOLLGATE_REDIS_CLUSTER_URLS (a cluster), not both");
                RedisTarget::Single(String::new())
            }
            (None, Some(list)) => {
                let urls: Vec<String> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(str::to_owned)
                    .collect();
                if urls.is_empty() || urls.iter().any(|u| !u.starts_with("redis://")) {
                    r.error("TOLLGATE_REDIS_CLUSTER_URLS must be comma-separated redis:// URLs");
                }
                RedisTarget::Cluster(urls)
            }
            (url, None) => {
                let url = url.unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());
                if !url.starts_with("redis://") {
                    r.error("TOLLGATE_REDIS_URL must be a redis:// URL");
                }
                RedisTarget::Single(url)
            }
        };
        RedisSettings {
            target,
            keys: Keys::sharded(&prefix, shards),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MapSource;

    fn read(pairs: &[(&str, &str)]) -> Result<RedisSettings, Vec<String>> {
        let src = MapSource::from_pairs(pairs.iter().copied());
        let mut r = Reader::new(&src);
        let s = RedisSettings::read(&mut r);
        r.finish().map(|()| s).map_err(|e| e.0)
    }

    #[test]
    fn one_server_by_default_a_cluster_when_its_nodes_are_given() {
        let s = read(&[]).expect("defaults");
        assert_eq!(
            s.target,
            RedisTarget::Single("redis://127.0.0.1:6379".into())
        );
        assert_eq!(s.keys, Keys::new("tollgate"));
        let s = read(&[
            (
                "redis_cluster_urls",
                "redis://127.0.0.1:7001, redis://127.0.0.1:7002",
            ),
            ("redis_stream_shards", "12"),
            ("redis_key_prefix", "tg"),
        ])
        .expect("cluster");
        assert_eq!(
            s.target,
            RedisTarget::Cluster(vec![
                "redis://127.0.0.1:7001".into(),
                "redis://127.0.0.1:7002".into()
            ])
        );
        assert_eq!(s.keys, Keys::sharded("tg", 12));
    }

    #[test]
    fn every_bad_redis_value_is_reported() {
        let errors = read(&[
            ("redis_url", "redis://x"),
            ("redis_cluster_urls", "http://y"),
            ("redis_stream_shards", "0"),
            ("redis_key_prefix", "a b"),
        ])
        .expect_err("three problems");
        assert_eq!(errors.len(), 3, "{errors:?}");
        for needle in ["PREFIX", "SHARDS", "not both"] {
            assert!(errors.iter().any(|e| e.contains(needle)), "{errors:?}");
        }
        let errors = read(&[("redis_cluster_urls", "http://y")]).expect_err("scheme");
        assert!(errors[0].contains("redis:// URLs"), "{errors:?}");
    }
}
