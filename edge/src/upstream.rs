//! Where facts come from on a miss: Redis L2 first, then the control plane's internal API.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tollgate_protocol::{AccountFacts, AccountId, internal_api, redis_keys};

/// A fetch that could not be answered by either source.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The control plane could not be reached or failed; the caller falls back to its policy.
    /// Retrying later may help.
    #[error("control plane unavailable: {0}")]
    Unavailable(String),
    /// The control plane answered something we cannot read (version skew or a bug).
    #[error("control plane answered unexpectedly: {0}")]
    Protocol(String),
}

/// Which source answered a fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillSource {
    Redis,
    ControlPlane,
}

pub struct Upstream {
    http: reqwest::Client,
    base: String,
    token: SecretString,
    redis: Option<redis::aio::ConnectionManager>,
}

impl Upstream {
    pub fn new(
        base: &str,
        token: SecretString,
        timeout: Duration,
        redis: Option<redis::aio::ConnectionManager>,
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
            redis,
        })
    }

    /// Facts of one account: `Ok(None)` when the account does not exist.
    pub async fn facts(
        &self,
        account: AccountId,
    ) -> Result<(Option<AccountFacts>, FillSource), UpstreamError> {
        if let Some(facts) = self.l2(account).await {
            return Ok((Some(facts), FillSource::Redis));
        }
        let url = format!("{}{}", self.base, internal_api::facts_path(&account));
        let resp = self
            .http
            .get(url)
            .bearer_auth(self.token.expose_secret())
            .send()
            .await
            .map_err(|e| UpstreamError::Unavailable(e.to_string()))?;
        match resp.status() {
            s if s.is_success() => {
                let facts = resp
                    .json()
                    .await
                    .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                Ok((Some(facts), FillSource::ControlPlane))
            }
            reqwest::StatusCode::NOT_FOUND => Ok((None, FillSource::ControlPlane)),
            s if s.is_server_error() => Err(UpstreamError::Unavailable(format!("status {s}"))),
            s => Err(UpstreamError::Protocol(format!("status {s}"))),
        }
    }

    /// The L2 copy; any Redis problem is a miss.
    async fn l2(&self, account: AccountId) -> Option<AccountFacts> {
        let mut redis = self.redis.clone()?;
        let raw: Option<String> = redis::cmd("GET")
            .arg(redis_keys::facts(&account))
            .query_async(&mut redis)
            .await
            .ok()?;
        serde_json::from_str(&raw?).ok()
    }

    /// The bundle meant for this edge: `Ok(None)` when `etag` is still current (304) or no
    /// bundle is active yet.
    pub async fn bundle(
        &self,
        edge_id: &str,
        etag: Option<&str>,
    ) -> Result<Option<(Vec<u8>, Option<String>)>, UpstreamError> {
        let url = format!("{}{}", self.base, internal_api::BUNDLE_PATH);
        let mut req = self
            .http
            .get(url)
            .query(&[("edge_id", edge_id)])
            .bearer_auth(self.token.expose_secret());
        if let Some(tag) = etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, tag);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| UpstreamError::Unavailable(e.to_string()))?;
        match resp.status() {
            reqwest::StatusCode::NOT_MODIFIED | reqwest::StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
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
            s => Err(UpstreamError::Unavailable(format!("bundle: status {s}"))),
        }
    }

    /// Tells the control plane which bundle this edge runs and whether the last activation
    /// failed.
    pub async fn report_status(
        &self,
        edge_id: &str,
        bundle_version: Option<u64>,
        last_error: Option<&str>,
    ) -> Result<(), UpstreamError> {
        let url = format!("{}{}", self.base, internal_api::edge_status_path(edge_id));
        let body =
            serde_json::json!({ "bundle_version": bundle_version, "last_error": last_error });
        let resp = self
            .http
            .post(url)
            .bearer_auth(self.token.expose_secret())
            .json(&body)
            .send()
            .await
            .map_err(|e| UpstreamError::Unavailable(e.to_string()))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(UpstreamError::Protocol(format!(
                "status report: {}",
                resp.status()
            )))
        }
    }
}
