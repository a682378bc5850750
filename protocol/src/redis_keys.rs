//! Redis key names shared by the control plane (writer) and edges (readers), under one
//! prefix (`TOLLGATE_REDIS_KEY_PREFIX`, default `tollgate`), so several deployments (or tests)
//! can share one Redis without reading each other's streams.
//!
//! # Shards
//!
//! The change stream is split into `TOLLGATE_REDIS_STREAM_SHARDS` streams (default 1). An
//! account belongs to shard [`shard_of`]: FNV-1a (64 bit) of the account id's 16 bytes, modulo
//! the shard count — a pure function of the id and the count, so the control plane and every
//! edge agree as long as they are configured with the same count. Shard `s` of prefix `p` is
//! the stream `{p:s<s>}:changes`; an account's L2 copy is `{p:s<s>}:facts:<id>`. The part in
//! braces is a Redis Cluster hash tag: a shard's stream and the facts of its accounts live in
//! one hash slot, so the one script that replaces the facts and appends the change touches a
//! single slot (and node), and an `MGET` of one shard's facts is one command. Different shards
//! (and prefixes) hash to different slots, spread over the cluster's masters. A single Redis
//! ignores the tags: the same keys work there unchanged.
//!
//! The shard count is fixed for a prefix: changing it moves accounts between streams that
//! edges follow from saved positions. Change it together with the prefix (edges then start on
//! the new streams, fill from the control plane, and the old keys can be deleted).

/// The prefix when none is configured.
pub const DEFAULT_PREFIX: &str = "tollgate";
/// Field of a stream entry holding a JSON [`super::ChangeEvent`].
pub const CHANGE_FIELD: &str = "event";
/// Upper bound on each shard's stream length (approximate trim); edges that fall further
/// behind than this revalidate.
pub const CHANGE_STREAM_MAXLEN: usize = 100_000;
/// Stream shards when none are configured: one stream, one blocking read per edge.
pub const DEFAULT_STREAM_SHARDS: u16 = 1;
/// Stream shards at most: every edge holds one blocking read per shard.
pub const STREAM_SHARDS_MAX: u16 = 1_024;

/// Where Redis is: one server, or the seed nodes of a Redis Cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server (`redis://host:port`).
    Single(String),
    /// Some nodes of a cluster (the client learns the rest and the slot map from them).
    Cluster(Vec<String>),
}

/// The shard of `account` among `shards` streams (see the module doc): stable across
/// processes, builds and platforms. `shards` of 0 counts as 1.
pub fn shard_of(account: &super::AccountId, shards: u16) -> u16 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = FNV_OFFSET;
    for b in account.0.as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    // The remainder is below `shards`, a u16.
    u16::try_from(hash % u64::from(shards.max(1))).unwrap_or(0)
}

/// The key names of one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
    shards: u16,
}

impl Default for Keys {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

impl Keys {
    /// Keys under `prefix` with one stream shard.
    pub fn new(prefix: &str) -> Self {
        Self::sharded(prefix, DEFAULT_STREAM_SHARDS)
    }

    /// Keys under `prefix` with `shards` stream shards (at least 1).
    pub fn sharded(prefix: &str, shards: u16) -> Self {
        Self {
            prefix: prefix.to_owned(),
            shards: shards.max(1),
        }
    }

    /// Whether `prefix` is usable: 1-64 characters of `A-Z a-z 0-9 _ . -`.
    pub fn valid_prefix(prefix: &str) -> bool {
        (1..=64).contains(&prefix.len())
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    }

    /// How many stream shards there are.
    pub fn shards(&self) -> u16 {
        self.shards
    }

    /// The shard an account's changes and L2 copy belong to.
    pub fn shard_of(&self, account: &super::AccountId) -> u16 {
        shard_of(account, self.shards)
    }

    /// The hash tag of a shard (`{prefix:s<shard>}`): its stream and facts share its slot.
    fn tag(&self, shard: u16) -> String {
        format!("{{{}:s{shard}}}", self.prefix)
    }

    /// The change stream of one shard (every edge follows every shard).
    pub fn stream(&self, shard: u16) -> String {
        format!("{}:changes", self.tag(shard))
    }

    /// The change stream an account's changes go to.
    pub fn stream_of(&self, account: &super::AccountId) -> String {
        self.stream(self.shard_of(account))
    }

    /// L2 copy of one account's facts (JSON [`super::AccountFacts`]), in its shard's slot.
    pub fn facts(&self, account: &super::AccountId) -> String {
        format!("{}:facts:{account}", self.tag(self.shard_of(account)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AccountId;

    fn id(s: &str) -> AccountId {
        s.parse().expect("uuid")
    }

    #[test]
    fn the_shard_of_an_account_is_a_fixed_function_of_its_id_and_the_count() {
        // Golden values (computed independently, FNV-1a 64 in Python): the control plane and
        // the edges of any build compute these. A change here moves accounts between streams
        // under edges' saved positions: never change it.
        let a = id("0190a3c4-5b6d-7e8f-9a0b-1c2d3e4f5a6b");
        let b = id("00000000-0000-0000-0000-000000000000");
        let c = id("ffffffff-ffff-ffff-ffff-ffffffffffff");
        let got: Vec<u16> = [&a, &b, &c]
            .iter()
            .flat_map(|x| {
                [
                    shard_of(x, 1),
                    shard_of(x, 3),
                    shard_of(x, 16),
                    shard_of(x, 1024),
                ]
            })
            .collect();
        assert_eq!(got, [0, 2, 12, 284, 0, 0, 5, 101, 0, 0, 5, 85]);
        assert_eq!(shard_of(&a, 0), 0, "no shards counts as one");
    }

    #[test]
    fn shards_spread_accounts_evenly() {
        let mut counts = [0u32; 8];
        for _ in 0..8_000 {
            counts[usize::from(shard_of(&AccountId::new_v7(), 8))] += 1;
        }
        for c in counts {
            assert!((800..1_200).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn a_shards_stream_and_its_accounts_facts_share_a_hash_tag() {
        let keys = Keys::sharded("tg", 16);
        let a = id("0190a3c4-5b6d-7e8f-9a0b-1c2d3e4f5a6b");
        let s = keys.shard_of(&a);
        let tag = |k: &str| k[k.find('{').expect("{")..=k.find('}').expect("}")].to_owned();
        assert_eq!(tag(&keys.stream(s)), format!("{{tg:s{s}}}"));
        assert_eq!(tag(&keys.facts(&a)), tag(&keys.stream_of(&a)));
        assert_eq!(keys.facts(&a), format!("{{tg:s{s}}}:facts:{a}"));
        assert_ne!(keys.stream(0), keys.stream(1));
        assert_eq!(Keys::new("tg").shards(), 1);
        assert_eq!(Keys::sharded("tg", 0).shards(), 1);
    }
}
