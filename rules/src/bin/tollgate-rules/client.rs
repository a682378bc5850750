//! The HTTP client of the control plane's admin API: bounded requests (time, answer size),
//! the admin token and the actor on every request, problem answers turned into failures.

use std::time::Duration;

use tollgate_rules::compiler;

use crate::cli::Remote;
use crate::failure::Failure;

/// Whole request to the control plane, connection included.
const HTTP_TIMEOUT_SECS: u64 = 30;
const HTTP_CONNECT_TIMEOUT_SECS: u64 = 5;
/// Largest control-plane answer read.
const RESPONSE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Longest non-JSON error body echoed to the terminal.
const ERROR_BODY_CHARS_MAX: usize = 500;

pub(crate) enum Body {
    Empty,
    Json(serde_json::Value),
    Bundle(Vec<u8>),
}

pub(crate) struct Client {
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: String,
    token: String,
    actor: String,
}

impl Client {
    pub(crate) fn new(remote: &Remote) -> Result<Self, Failure> {
        let base = remote.server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure::Usage(format!(
                "--server `{}` is not an http:// or https:// URL",
                remote.server
            )));
        }
        let token = remote
            .token
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Failure::Usage("no admin token: pass --token or set TOLLGATE_ADMIN_TOKEN".into())
            })?;
        let actor = remote
            .actor
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .or_else(|| std::env::var("LOGNAME").ok())
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                Failure::Usage("no actor: pass --actor or set TOLLGATE_ACTOR or USER".into())
            })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::Server(format!("cannot start the async runtime: {e}")))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(HTTP_TIMEOUT_SECS))
            .connect_timeout(Duration::from_secs(HTTP_CONNECT_TIMEOUT_SECS))
            .user_agent(compiler::COMPILER_VERSION)
            .build()
            .map_err(|e| Failure::Server(format!("cannot make an HTTP client: {e}")))?;
        Ok(Self {
            runtime,
            http,
            base,
            token,
            actor,
        })
    }

    /// Sends one request; a 2xx answer's JSON (or `null` when empty) is returned, anything
    /// else becomes the problem's `code: detail`.
    pub(crate) fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Body,
    ) -> Result<serde_json::Value, Failure> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token)
            .header("Tollgate-Actor", &self.actor)
            .header(reqwest::header::ACCEPT, "application/json");
        request = match body {
            Body::Empty => request,
            Body::Json(v) => request.json(&v),
            Body::Bundle(bytes) => request
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(bytes),
        };
        let (status, bytes) = self
            .runtime
            .block_on(async {
                let mut response = request.send().await?;
                let status = response.status();
                let mut bytes = Vec::new();
                while let Some(chunk) = response.chunk().await? {
                    if bytes.len() + chunk.len() > RESPONSE_BYTES_MAX {
                        break;
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok::<_, reqwest::Error>((status, bytes))
            })
            .map_err(|e| Failure::Server(format!("{method} {url}: {}", error_chain(&e))))?;
        if status.is_success() {
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(serde_json::Value::Null);
            }
            return serde_json::from_slice(&bytes)
                .map_err(|e| Failure::Server(format!("{method} {url}: answer is not JSON: {e}")));
        }
        let message = match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(problem) if problem.get("code").is_some() => format!(
                "{}: {}",
                problem["code"].as_str().unwrap_or("unknown"),
                problem
                    .get("detail")
                    .or_else(|| problem.get("title"))
                    .and_then(|d| d.as_str())
                    .unwrap_or("")
            ),
            _ => {
                let text: String = String::from_utf8_lossy(&bytes)
                    .chars()
                    .take(ERROR_BODY_CHARS_MAX)
                    .collect();
                format!("http {}: {}", status.as_u16(), text.trim())
            }
        };
        if status == reqwest::StatusCode::UNPROCESSABLE_ENTITY {
            Err(Failure::Failed(message))
        } else {
            Err(Failure::Server(message))
        }
    }
}

/// An error and its sources, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
