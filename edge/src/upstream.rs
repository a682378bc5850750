//! Where facts come from on a miss: Redis L2 first, then the control plane's internal API.
//!
//! L2 is one server or a Redis Cluster (`tollgate_protocol::redis_conn`); each account's copy
//! sits in its stream shard's hash slot, so a batch reads one `MGET` per shard, and a shard
//! whose node is down only sends its own accounts to the control plane.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tollgate_protocol::redis_conn::{RedisClient, RedisConn};
use tollgate_protocol::usage::{
    AccountUsage, LeaseGrant, LeaseRelease, LeaseRequest, UsageAck, UsageBatch,
};
use tollgate_protocol::{AccountFacts, AccountId, internal_api, redis_keys};

/// A fetch that could not be answered by either source.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The control plane could not be reached or failed; the caller falls back to its policy.
    /// Retrying later may help.
    #[error("control plane unavailable: {0}")]
    Unavailable(String),
    /// The control plane answered something we cannot read (version skew or a bug), or a
    /// client error that may pass (authentication, conflict, rate limit). Retrying later may
    /// help.
    #[error("control plane answered unexpectedly: {0}")]
    Protocol(String),
    /// The control plane refused the request's content (400, 413, 422): the same request will
    /// be refused again.
    #[error("control plane refused the request: {status} {detail}")]
    Refused { status: u16, detail: String },
    /// This edge's own bound on control-plane fills (concurrency or rate) was reached: the
    /// caller answers from its fallback policy instead of queueing behind the others.
    #[error("too many control-plane fills at once")]
    Throttled,
}

/// Bounds on the fills an edge sends to the control plane: misses for ids it has never seen
/// cost one request each, so a client asking for random ids must not turn into a flood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FillLimits {
    /// Fill requests in flight at most; more wait up to [`FILL_WAIT_MS_MAX`] for a slot.
    pub concurrent_max: usize,
    /// Fill requests per second at most (a token bucket holding one second's worth).
    pub per_second_max: u32,
}

impl Default for FillLimits {
    fn default() -> Self {
        Self {
            concurrent_max: 32,
            per_second_max: 500,
        }
    }
}

/// Longest a fill waits for a free slot before the check answers from its fallback policy, ms.
pub const FILL_WAIT_MS_MAX: u64 = 250;

/// The fill limiter: a semaphore for concurrency, a token bucket for the rate.
struct FillLimiter {
    slots: Arc<tokio::sync::Semaphore>,
    bucket: std::sync::Mutex<(f64, std::time::Instant)>,
    limits: FillLimits,
}

impl FillLimiter {
    fn new(limits: FillLimits) -> Self {
        Self {
            slots: Arc::new(tokio::sync::Semaphore::new(limits.concurrent_max.max(1))),
            bucket: std::sync::Mutex::new((
                f64::from(limits.per_second_max),
                std::time::Instant::now(),
            )),
            limits,
        }
    }

    /// A slot for one control-plane fill request, or `Throttled`.
    async fn acquire(&self) -> Result<tokio::sync::OwnedSemaphorePermit, UpstreamError> {
        {
            let mut b = self
                .bucket
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let rate = f64::from(self.limits.per_second_max);
            let now = std::time::Instant::now();
            b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * rate).min(rate);
            b.1 = now;
            if b.0 < 1.0 {
                return Err(UpstreamError::Throttled);
            }
            b.0 -= 1.0;
        }
        tokio::time::timeout(
            Duration::from_millis(FILL_WAIT_MS_MAX),
            self.slots.clone().acquire_owned(),
        )
        .await
        .map_err(|_| UpstreamError::Throttled)?
        .map_err(|_| UpstreamError::Throttled)
    }
}

/// Which source answered a fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillSource {
    Redis,
    ControlPlane,
}

/// The Redis L2 connection (one server or a cluster), present once Redis has been reached: at
/// start, or later by [`L2::connect`] retrying in the background when Redis was down at boot.
#[derive(Clone, Default)]
pub struct L2(Arc<OnceLock<RedisConn>>);

/// Longest pause between two attempts to reach Redis for the L2 connection.
pub const L2_RETRY_MS_MAX: u64 = 5_000;

impl L2 {
    /// An L2 that is already connected.
    pub fn connected(conn: RedisConn) -> Self {
        let l2 = Self::default();
        let _ = l2.0.set(conn);
        l2
    }

    pub fn get(&self) -> Option<RedisConn> {
        self.0.get().cloned()
    }

    /// Connects, retrying with capped exponential backoff until Redis answers or `shutdown`
    /// fires. The connection reconnects by itself afterwards.
    pub async fn connect(
        &self,
        client: RedisClient,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut pause = Duration::from_millis(50);
        loop {
            match client.shared().await {
                Ok(conn) => {
                    let _ = self.0.set(conn);
                    tracing::info!("redis L2 connected");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_ms = pause.as_millis() as u64, "redis L2 not reachable; misses go to the control plane")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => return,
            }
            pause = (pause * 2).min(Duration::from_millis(L2_RETRY_MS_MAX));
        }
    }
}

pub struct Upstream {
    http: reqwest::Client,
    base: String,
    token: SecretString,
    l2: L2,
    fills: FillLimiter,
    keys: redis_keys::Keys,
}

impl Upstream {
    pub fn new(
        base: &str,
        token: SecretString,
        timeout: Duration,
        l2: L2,
    ) -> Result<Self, UpstreamError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(16)
            .build()
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
            l2,
            fills: FillLimiter::new(FillLimits::default()),
            keys: redis_keys::Keys::default(),
        })
    }

    /// The same upstream reading Redis keys under another prefix.
    #[must_use]
    pub fn with_redis_keys(mut self, keys: redis_keys::Keys) -> Self {
        self.keys = keys;
        self
    }

    /// The Redis key names this edge reads (L2 and the change stream).
    pub fn keys(&self) -> &redis_keys::Keys {
        &self.keys
    }

    /// The same upstream with other fill bounds.
    #[must_use]
    pub fn with_fill_limits(mut self, limits: FillLimits) -> Self {
        self.fills = FillLimiter::new(limits);
        self
    }

    /// An authenticated request to the control plane's internal API.
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token.expose_secret())
    }

    /// Sends; a transport failure is `Unavailable`.
    async fn send(req: reqwest::RequestBuilder) -> Result<reqwest::Response, UpstreamError> {
        req.send()
            .await
            .map_err(|e| UpstreamError::Unavailable(e.to_string()))
    }

    /// A success answer as it is; any other is the error its status means: a server error
    /// is `Unavailable` (retrying may help), a refusal of the content (400, 413, 422)
    /// `Refused`, anything else `Protocol`.
    async fn success(
        resp: reqwest::Response,
        what: &str,
    ) -> Result<reqwest::Response, UpstreamError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        Err(match status.as_u16() {
            500.. => UpstreamError::Unavailable(format!("{what}: {status} {body}")),
            400 | 413 | 422 => UpstreamError::Refused {
                status: status.as_u16(),
                detail: format!("{what}: {body}"),
            },
            _ => UpstreamError::Protocol(format!("{what}: {status} {body}")),
        })
    }

    /// A success answer's JSON body.
    async fn json<T: serde::de::DeserializeOwned>(
        resp: reqwest::Response,
        what: &str,
    ) -> Result<T, UpstreamError> {
        Self::success(resp, what)
            .await?
            .json()
            .await
            .map_err(|e| UpstreamError::Protocol(format!("{what}: {e}")))
    }

    /// Facts of one account: `Ok(None)` when the account does not exist. Reads L2 first unless
    /// `use_l2` is false (L2 may be older than the control plane after Redis lost writes).
    pub async fn facts(
        &self,
        account: AccountId,
        use_l2: bool,
    ) -> Result<(Option<AccountFacts>, FillSource), UpstreamError> {
        if use_l2 && let Some(facts) = self.l2(account).await {
            return Ok((Some(facts), FillSource::Redis));
        }
        let _slot = self.fills.acquire().await?;
        let req = self.request(reqwest::Method::GET, &internal_api::facts_path(&account));
        let resp = Self::send(req).await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok((None, FillSource::ControlPlane));
        }
        let facts = Self::json(resp, "facts").await?;
        Ok((Some(facts), FillSource::ControlPlane))
    }

    /// Facts of several accounts: one L2 `MGET` per stream shard (unless `use_l2` is false), then one
    /// control-plane request per [`tollgate_protocol::FACTS_BATCH_MAX`] accounts L2 did not
    /// hold. `None`: the account does not exist.
    pub async fn facts_many(
        &self,
        accounts: &[AccountId],
        use_l2: bool,
    ) -> Result<Vec<(AccountId, Option<AccountFacts>, FillSource)>, UpstreamError> {
        let mut out = Vec::with_capacity(accounts.len());
        let mut missing = Vec::new();
        let cached = if use_l2 {
            self.l2_many(accounts).await
        } else {
            vec![None; accounts.len()]
        };
        for (account, facts) in accounts.iter().zip(cached) {
            match facts {
                Some(f) => out.push((*account, Some(f), FillSource::Redis)),
                None => missing.push(*account),
            }
        }
        for chunk in missing.chunks(tollgate_protocol::FACTS_BATCH_MAX) {
            let _slot = self.fills.acquire().await?;
            let req = self
                .request(reqwest::Method::POST, internal_api::FACTS_BATCH_PATH)
                .json(&tollgate_protocol::FactsRequest {
                    accounts: chunk.to_vec(),
                });
            let batch: tollgate_protocol::FactsBatch =
                Self::json(Self::send(req).await?, "facts").await?;
            let mut found: std::collections::HashMap<AccountId, AccountFacts> =
                batch.facts.into_iter().map(|f| (f.account_id, f)).collect();
            for account in chunk {
                out.push((*account, found.remove(account), FillSource::ControlPlane));
            }
        }
        Ok(out)
    }

    /// The L2 copy; any Redis problem is a miss.
    async fn l2(&self, account: AccountId) -> Option<AccountFacts> {
        let mut redis = self.l2.get()?;
        let raw: Option<String> = redis::cmd("GET")
            .arg(self.keys.facts(&account))
            .query_async(&mut redis)
            .await
            .ok()?;
        serde_json::from_str(&raw?).ok()
    }

    /// L2 copies of several accounts: one `MGET` per stream shard (a shard's facts share one
    /// hash slot; on a cluster a multi-key command must stay in one), sent together; any Redis
    /// problem is a miss for that shard's accounts.
    async fn l2_many(&self, accounts: &[AccountId]) -> Vec<Option<AccountFacts>> {
        let mut out = vec![None; accounts.len()];
        let Some(redis) = self.l2.get() else {
            return out;
        };
        let mut by_shard: std::collections::BTreeMap<u16, Vec<usize>> = Default::default();
        for (i, a) in accounts.iter().enumerate() {
            by_shard.entry(self.keys.shard_of(a)).or_default().push(i);
        }
        let reads = by_shard.into_values().map(|idx| {
            let mut redis = redis.clone();
            let mut cmd = redis::cmd("MGET");
            for &i in &idx {
                cmd.arg(self.keys.facts(&accounts[i]));
            }
            async move {
                let raw = cmd.query_async::<Vec<Option<String>>>(&mut redis).await;
                (idx, raw)
            }
        });
        for (idx, raw) in futures::future::join_all(reads).await {
            match raw {
                Ok(raw) if raw.len() == idx.len() => {
                    for (i, r) in idx.into_iter().zip(raw) {
                        out[i] = r.and_then(|r| serde_json::from_str(&r).ok());
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "L2 read failed: those accounts miss"),
            }
        }
        out
    }

    /// Sends a batch of usage events; `Ok` only when the control plane acknowledged all of
    /// them (stored now or before).
    pub async fn flush_usage(&self, batch: &UsageBatch) -> Result<UsageAck, UpstreamError> {
        let req = self
            .request(reqwest::Method::POST, internal_api::USAGE_PATH)
            .header("idempotency-key", batch.batch_id.to_string())
            .json(batch);
        Self::json(Self::send(req).await?, "usage").await
    }

    /// Asks for a slice of an account's quota.
    pub async fn lease(&self, req: &LeaseRequest) -> Result<LeaseGrant, UpstreamError> {
        let req = self
            .request(reqwest::Method::POST, internal_api::LEASE_PATH)
            .json(req);
        Self::json(Self::send(req).await?, "lease").await
    }

    /// Gives back units of a lease this edge did not use.
    pub async fn release(&self, rel: &LeaseRelease) -> Result<(), UpstreamError> {
        let req = self
            .request(reqwest::Method::POST, internal_api::LEASE_RELEASE_PATH)
            .json(rel);
        Self::success(Self::send(req).await?, "release").await?;
        Ok(())
    }

    /// An account's current-period aggregates: `Ok(None)` when the account does not exist.
    pub async fn account_usage(
        &self,
        account: AccountId,
    ) -> Result<Option<AccountUsage>, UpstreamError> {
        let req = self.request(reqwest::Method::GET, &internal_api::usage_path(&account));
        let resp = Self::send(req).await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Self::json(resp, "usage").await.map(Some)
    }

    /// The bundle meant for this edge: `Ok(None)` when `etag` is still current (304) or no
    /// bundle is active yet.
    pub async fn bundle(
        &self,
        edge_id: &str,
        etag: Option<&str>,
    ) -> Result<Option<(Vec<u8>, Option<String>)>, UpstreamError> {
        let mut req = self
            .request(reqwest::Method::GET, internal_api::BUNDLE_PATH)
            .query(&internal_api::BundleQuery {
                edge_id: edge_id.to_owned(),
            });
        if let Some(tag) = etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, tag);
        }
        let resp = Self::send(req).await?;
        if matches!(
            resp.status(),
            reqwest::StatusCode::NOT_MODIFIED | reqwest::StatusCode::NOT_FOUND
        ) {
            return Ok(None);
        }
        let resp = Self::success(resp, "bundle").await?;
        let tag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| UpstreamError::Unavailable(e.to_string()))?;
        Ok(Some((bytes.to_vec(), tag)))
    }

    /// The control plane's clock (development: its offset is followed).
    pub async fn clock(&self) -> Result<internal_api::ClockReading, UpstreamError> {
        let req = self.request(reqwest::Method::GET, internal_api::CLOCK_PATH);
        Self::json(Self::send(req).await?, "clock").await
    }

    /// Tells the control plane which bundle this edge runs and whether the last activation
    /// failed.
    pub async fn report_status(
        &self,
        edge_id: &str,
        bundle_version: Option<u64>,
        last_error: Option<&str>,
    ) -> Result<(), UpstreamError> {
        let body = internal_api::EdgeStatus {
            bundle_version,
            last_error: last_error.map(str::to_owned),
        };
        let req = self
            .request(
                reqwest::Method::POST,
                &internal_api::edge_status_path(edge_id),
            )
            .json(&body);
        Self::success(Self::send(req).await?, "status report").await?;
        Ok(())
    }
}
