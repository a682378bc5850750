//! A small client for product services talking to their local Tollgate edge sidecar.
//!
//! One [`EdgeClient`] per process: it holds a `reqwest::Client`, whose connection pool keeps
//! HTTP/1.1 connections to the sidecar alive between calls (a fresh TCP connection per check
//! would cost more than the check). It checks entitlements; usage is reported to the edge's
//! `POST /v1/usage` (see the README).
//!
//! ```no_run
//! # async fn demo() -> Result<(), tollgate_client::ClientError> {
//! let edge = tollgate_client::EdgeClient::new("http://127.0.0.1:7701")?;
//! let account: tollgate_protocol::AccountId = "0192f1c2-0000-7000-8000-000000000000".parse().expect("id");
//! if edge.check(account, "sso").await?.allowed {
//!     // serve the feature
//! }
//! # Ok(()) }
//! ```

use std::time::Duration;

use serde::Deserialize;
use tollgate_protocol::AccountId;
use tollgate_protocol::check::{
    BatchAnswer, BatchCheck, BatchRequest, BatchResults, CHECK_PATH, CheckResponse,
};

/// Timeout of one call to the sidecar (it answers from memory; anything slower is a fault).
pub const CALL_TIMEOUT_MS: u64 = 2_000;
/// Idle connections kept to the sidecar.
pub const IDLE_CONNECTIONS_MAX: usize = 32;

/// What a check answers (the protocol's type: the edge serves exactly this).
pub type Check = CheckResponse<'static>;

/// One item of a batch answer: a check, or why this item could not be decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchItem {
    Checked(Check),
    Failed { code: String, detail: String },
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The sidecar could not be reached or timed out. Retrying may help; callers decide
    /// whether to fail open or closed.
    #[error("edge unreachable: {0}")]
    Unreachable(String),
    /// The sidecar answered with a problem (unknown feature, bad id, not ready…). `code` is
    /// its stable machine code.
    #[error("edge refused the request: {code}: {detail}")]
    Refused {
        status: u16,
        code: String,
        detail: String,
    },
    /// The answer could not be read (version skew or a bug).
    #[error("unreadable answer from the edge: {0}")]
    Protocol(String),
}

#[derive(Deserialize)]
struct Problem {
    code: String,
    #[serde(default)]
    detail: String,
}

/// A pooled client for one sidecar.
#[derive(Clone, Debug)]
pub struct EdgeClient {
    http: reqwest::Client,
    base: String,
    /// The service token the sidecar requires, when it requires one
    /// (`TOLLGATE_EDGE_SERVICE_TOKENS`).
    token: Option<String>,
}

impl EdgeClient {
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(CALL_TIMEOUT_MS))
            .pool_max_idle_per_host(IDLE_CONNECTIONS_MAX)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(Self {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            token: None,
        })
    }

    /// The same client sending `Authorization: Bearer <token>` with every call (for a sidecar
    /// configured with service tokens).
    #[must_use]
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn read<T: serde::de::DeserializeOwned>(
        resp: reqwest::Response,
    ) -> Result<T, ClientError> {
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|e| ClientError::Protocol(e.to_string()));
        }
        let problem: Problem = serde_json::from_slice(&bytes).map_err(|_| {
            ClientError::Protocol(format!("status {status} without a problem body"))
        })?;
        Err(ClientError::Refused {
            status: status.as_u16(),
            code: problem.code,
            detail: problem.detail,
        })
    }

    /// `GET /v1/check`.
    pub async fn check(&self, account: AccountId, feature: &str) -> Result<Check, ClientError> {
        let resp = self
            .authorized(self.http.get(format!("{}/v1/check", self.base)))
            .query(&[
                ("account", account.to_string().as_str()),
                ("feature", feature),
            ])
            .send()
            .await
            .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        Self::read(resp).await
    }

    /// `POST /v1/check`: many (account, feature) pairs in one round trip, answers in order.
    pub async fn check_many(
        &self,
        pairs: &[(AccountId, &str)],
    ) -> Result<Vec<BatchItem>, ClientError> {
        let body = BatchRequest {
            checks: pairs
                .iter()
                .map(|(a, f)| BatchCheck {
                    account: a.to_string(),
                    feature: (*f).to_owned(),
                    quantity: None,
                })
                .collect(),
        };
        let resp = self
            .authorized(self.http.post(format!("{}{CHECK_PATH}", self.base)))
            .json(&body)
            .send()
            .await
            .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        let answers: BatchResults<'static> = Self::read(resp).await?;
        Ok(answers
            .results
            .into_iter()
            .map(|a| match a {
                BatchAnswer::Checked { result, .. } => BatchItem::Checked(result),
                BatchAnswer::Failed { error, .. } => BatchItem::Failed {
                    code: error.code,
                    detail: error.detail,
                },
            })
            .collect())
    }
}
