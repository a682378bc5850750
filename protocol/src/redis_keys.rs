//! Redis key names shared by the control plane (writer) and edges (readers), under one
//! prefix (`TOLLGATE_REDIS_KEY_PREFIX`, default `tollgate`), so several deployments (or tests)
//! can share one Redis without reading each other's streams.

/// The prefix when none is configured.
pub const DEFAULT_PREFIX: &str = "tollgate";
/// Field of a stream entry holding a JSON [`super::ChangeEvent`].
pub const CHANGE_FIELD: &str = "event";
/// Upper bound on stream length (approximate trim); edges that fall further behind than
/// this revalidate.
pub const CHANGE_STREAM_MAXLEN: usize = 100_000;

/// The key names of one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// Whether `prefix` is usable: 1-64 characters of `A-Z a-z 0-9 _ . -`.
    pub fn valid_prefix(prefix: &str) -> bool {
        (1..=64).contains(&prefix.len())
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    }

    /// The change stream every edge follows.
    pub fn stream(&self) -> String {
        format!("{}:changes", self.prefix)
    }

    /// L2 copy of one account's facts (JSON [`super::AccountFacts`]).
    pub fn facts(&self, account: &super::AccountId) -> String {
        format!("{}:facts:{account}", self.prefix)
    }
}
