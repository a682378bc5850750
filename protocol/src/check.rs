//! The edge's check API as product services call it: `GET /v1/check` answers one
//! [`CheckResponse`]; `POST /v1/check` takes a [`BatchRequest`] and answers [`BatchResults`]
//! in request order. The edge serves these types and `tollgate-client` reads them.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::Reason;

/// `GET` (query `account`, `feature`, `quantity?`) and `POST` (a batch).
pub const CHECK_PATH: &str = "/v1/check";
/// Checks in one batch at most.
pub const BATCH_CHECKS_MAX: usize = 256;

/// What a check answers.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckResponse<'a> {
    pub allowed: bool,
    pub feature: Cow<'a, str>,
    /// The finite limit or quota of an allowed feature that has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// Metered features: current-period usage (the control plane's aggregate plus the edge's
    /// unacknowledged events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<i64>,
    /// Metered features: `limit - usage` (negative past a `soft` quota).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<i64>,
    pub reason: Reason,
    /// Facts version the answer came from (0 for an unknown account).
    pub version: i64,
    /// Rule bundle the decision came from.
    pub bundle_version: u64,
    /// The edge could not confirm the facts are current.
    pub stale: bool,
}

/// One check of a batch.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BatchCheck {
    /// An account id (a bad one refuses this item only).
    pub account: String,
    pub feature: String,
    /// Units the caller is about to use of a metered or limit feature (default 1). Checked per
    /// item: a bad one refuses that item, not the batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<serde_json::Value>,
}

/// `POST /v1/check`'s body.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub checks: Vec<BatchCheck>,
}

/// Why one item of a batch has no answer (the codes of the single check's problems).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ItemError {
    pub code: String,
    pub detail: String,
}

/// One answer of a batch, in request order.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum BatchAnswer<'a> {
    Checked {
        account: String,
        result: CheckResponse<'a>,
    },
    Failed {
        account: String,
        feature: String,
        error: ItemError,
    },
}

/// `POST /v1/check`'s answer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchResults<'a> {
    pub results: Vec<BatchAnswer<'a>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_answers_read_back_as_what_was_written() {
        let results = BatchResults {
            results: vec![
                BatchAnswer::Checked {
                    account: "a".into(),
                    result: CheckResponse {
                        allowed: true,
                        feature: Cow::Borrowed("sso"),
                        limit: None,
                        usage: None,
                        remaining: None,
                        reason: Reason::GrantedByPlan,
                        version: 2,
                        bundle_version: 7,
                        stale: false,
                    },
                },
                BatchAnswer::Failed {
                    account: "b".into(),
                    feature: "sso".into(),
                    error: ItemError {
                        code: "invalid_account_id".into(),
                        detail: "account must be a UUID".into(),
                    },
                },
            ],
        };
        let json = serde_json::to_string(&results).expect("json");
        assert!(json.contains(r#""result":{"allowed":true"#), "{json}");
        assert!(
            json.contains(r#""error":{"code":"invalid_account_id""#),
            "{json}"
        );
        let back: BatchResults<'static> = serde_json::from_str(&json).expect("read");
        assert_eq!(back, results);
    }
}
