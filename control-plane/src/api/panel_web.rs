//! The NinjaPanel's web page (`/panel/`): server-rendered HTML for support agents — account
//! search, the 360° view (profile, standing, a usage chart of the current period, the edges'
//! decisions, subscriptions, invoices, overrides, payment methods, the timeline) and every
//! panel write as a plain form with its reason field. No JavaScript; templates are minijinja
//! (`control-plane/templates/panel/`, HTML auto-escaped).
//!
//! The page is a client of the panel API, in process: it reads and writes through the
//! `/panel/v1` routes ([`super::panel`]) with the agent's own token, so roles, reasons, audit
//! and idempotency are exactly the API's and nothing here decides anything. Each rendered form
//! carries a fresh `Idempotency-Key`, so a double submit is one write.
//!
//! Login puts the agent token in an `HttpOnly`, `SameSite=Strict` cookie scoped to `/panel`
//! (checked against the agents table on every request: a revoked agent is logged out); a form
//! posted from another origin is refused.

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::Router;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use minijinja::{Environment, context};
use serde::Deserialize;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::agents::Agent;
use crate::http::{Path, Query};
use crate::ids::{AccountId, InvoiceId, OverrideId, SubscriptionId};
use crate::money::Currency;
use crate::state::AppState;

/// The cookie that holds the agent token.
const COOKIE: &str = "tg_agent";
/// Largest panel API answer the page reads.
const ANSWER_BYTES_MAX: usize = 4 << 20;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/panel", get(to_home))
        .route("/panel/", get(home))
        .route("/panel/login", post(login))
        .route("/panel/logout", post(logout))
        .route("/panel/accounts", get(search))
        .route("/panel/accounts/{id}", get(account))
        .route("/panel/accounts/{id}/actions", post(act))
}

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    for (name, source) in [
        ("base.html", include_str!("../../templates/panel/base.html")),
        (
            "login.html",
            include_str!("../../templates/panel/login.html"),
        ),
        (
            "search.html",
            include_str!("../../templates/panel/search.html"),
        ),
        (
            "account.html",
            include_str!("../../templates/panel/account.html"),
        ),
    ] {
        env.add_template(name, source)
            .expect("the panel's templates parse (tested)");
    }
    env.add_function("key", || uuid::Uuid::new_v4().simple().to_string());
    env.add_function("money", |minor: Option<i64>, currency: Option<String>| {
        let minor = minor.unwrap_or(0);
        match currency.and_then(|c| c.parse::<Currency>().ok()) {
            Some(c) => crate::money::format(minor, c),
            None => minor.to_string(),
        }
    });
    env
});

fn page(name: &str, ctx: minijinja::Value) -> Response {
    match TEMPLATES.get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => {
            let mut r = Html(html).into_response();
            // The page is the agent's alone and changes with every write.
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => {
            tracing::error!(error = %e, template = name, "panel page failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page failed to render",
            )
                .into_response()
        }
    }
}

/// The value of the request's cookie `name`, if any and not blank.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(name)?.strip_prefix('='))
        .filter(|t| !t.is_empty())
}

/// The agent token of the request's cookie, if any.
fn token(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, COOKIE)
}

/// The logged-in agent, or the login page.
async fn session(state: &AppState, headers: &HeaderMap) -> Result<(Agent, String), Response> {
    let login = || Redirect::to("/panel/").into_response();
    let token = token(headers).ok_or_else(login)?;
    match crate::agents::authenticate(state, token).await {
        Ok(agent) => Ok((agent, token.to_owned())),
        Err(_) => Err(clear_cookie(login())),
    }
}

fn clear_cookie(mut r: Response) -> Response {
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("tg_agent=; Path=/panel; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

/// A panel API call with the agent's token, in process: (status, body).
async fn api(
    state: &AppState,
    token: &str,
    method: Method,
    path: &str,
    write: Option<(&str, Value)>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    let body = match write {
        Some((key, body)) => {
            req = req
                .header("idempotency-key", key)
                .header(header::CONTENT_TYPE, "application/json");
            Body::from(body.to_string())
        }
        None => Body::empty(),
    };
    let Ok(req) = req.body(body) else {
        return (StatusCode::BAD_REQUEST, json!({ "detail": "bad request" }));
    };
    let answer = match super::panel::routes()
        .with_state(state.clone())
        .oneshot(req)
        .await
    {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = answer.status();
    let body = axum::body::to_bytes(answer.into_body(), ANSWER_BYTES_MAX)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    (status, body)
}

fn problem_text(body: &Value) -> String {
    let detail = body["detail"].as_str().unwrap_or("the request failed");
    match body["code"].as_str() {
        Some(code) => format!("{detail} ({code})"),
        None => detail.to_owned(),
    }
}

/// The cookie that carries what the last write did to the page after it (set with the
/// redirect, read and cleared by the next page): not the URL, where anyone could write a
/// message into an agent's page with a link.
const FLASH: &str = "tg_flash";

/// What the page says about the last write: `(done, error)`.
fn flash(headers: &HeaderMap) -> (Option<String>, Option<String>) {
    let Some(raw) = cookie(headers, FLASH) else {
        return (None, None);
    };
    let mut done = None;
    let mut error = None;
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        match k.as_ref() {
            "done" => done = Some(v.into_owned()),
            "error" => error = Some(v.into_owned()),
            _ => {}
        }
    }
    (done, error)
}

/// The flash was shown: the response clears its cookie.
fn flash_shown(r: &mut Response) {
    r.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static("tg_flash=; Path=/panel; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
}

/// A redirect to `to` that leaves `(kind, message)` for the next page.
fn redirect_with(to: &str, kind: &str, message: &str) -> Response {
    let mut r = Redirect::to(to).into_response();
    let value = form_urlencoded::Serializer::new(String::new())
        .append_pair(kind, message)
        .finish();
    let cookie = format!("{FLASH}={value}; Path=/panel; HttpOnly; SameSite=Strict; Max-Age=60");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// A form body (`application/x-www-form-urlencoded`), leniently: what does not parse is not
/// there.
fn form(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn cross_origin() -> Response {
    crate::error::Error::forbidden(
        "cross_origin_form",
        "this form was posted from another origin",
    )
    .into_response()
}

/// `GET /panel` — to `/panel/`.
#[utoipa::path(get, path = "/panel", tag = "panel-web",
    responses((status = 303, description = "To `/panel/`.")))]
async fn to_home() -> Redirect {
    Redirect::to("/panel/")
}

/// `GET /panel/` — the login form, or the search page when logged in.
#[utoipa::path(get, path = "/panel/", tag = "panel-web", responses(
    (status = 200, description = "The login page.", content_type = "text/html", body = String),
    (status = 303, description = "Logged in (the `tg_agent` cookie): to `/panel/accounts`."),
))]
async fn home(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match session(&state, &headers).await {
        Ok(_) => Redirect::to("/panel/accounts").into_response(),
        Err(_) => clear_cookie(page("login.html", context! {})),
    }
}

/// The login form.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // the contract's description of the form; the body is parsed by [`form`]
struct LoginForm {
    /// An agent token (`tga_…`).
    token: String,
}

/// `POST /panel/login {token}` — a valid agent token becomes the session cookie.
#[utoipa::path(post, path = "/panel/login", tag = "panel-web",
    request_body(content = LoginForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Logged in: the `tg_agent` cookie (HttpOnly, SameSite=Strict), to `/panel/accounts`."),
        (status = 401, description = "Not a valid agent token: the login page again.", content_type = "text/html", body = String),
        (status = 403, description = "`cross_origin_form`: posted from another origin."),
    ))]
async fn login(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if !same_origin(&headers) {
        return cross_origin();
    }
    let f = form(&body);
    let token = f.get("token").map(|t| t.trim()).unwrap_or_default();
    match crate::agents::authenticate(&state, token).await {
        Ok(_) if token.bytes().all(|b| b.is_ascii_graphic() && b != b';') => {
            let mut r = Redirect::to("/panel/accounts").into_response();
            let cookie = format!("{COOKIE}={token}; Path=/panel; HttpOnly; SameSite=Strict");
            match HeaderValue::from_str(&cookie) {
                Ok(v) => {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                    r
                }
                Err(_) => login_failed(),
            }
        }
        _ => login_failed(),
    }
}

fn login_failed() -> Response {
    let mut r = page(
        "login.html",
        context! { error => "That is not a valid agent token." },
    );
    *r.status_mut() = StatusCode::UNAUTHORIZED;
    r
}

/// `POST /panel/logout`
#[utoipa::path(post, path = "/panel/logout", tag = "panel-web",
    responses((status = 303, description = "The cookie cleared; to `/panel/`.")))]
async fn logout() -> Response {
    clear_cookie(Redirect::to("/panel/").into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct SearchQuery {
    /// Email or name (part of it), account id or provider customer id.
    #[serde(default)]
    q: String,
}

/// `GET /panel/accounts?q=`
#[utoipa::path(get, path = "/panel/accounts", tag = "panel-web", params(SearchQuery), responses(
    (status = 200, description = "The search page, with the accounts found (or why not).", content_type = "text/html", body = String),
    (status = 303, description = "Not logged in: to `/panel/`."),
))]
async fn search(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<SearchQuery>,
) -> Response {
    let (agent, token) = match session(&state, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let q = query.q.trim().to_owned();
    let (accounts, error) = if q.is_empty() {
        (Value::Array(vec![]), None)
    } else {
        let path = format!(
            "/panel/v1/accounts?{}",
            form_urlencoded::Serializer::new(String::new())
                .append_pair("q", &q)
                .finish()
        );
        match api(&state, &token, Method::GET, &path, None).await {
            (StatusCode::OK, body) => (body["data"].clone(), None),
            (_, body) => (Value::Array(vec![]), Some(problem_text(&body))),
        }
    };
    let (_, flashed) = flash(&headers);
    let mut r = page(
        "search.html",
        context! { agent => agent_view(&agent), q => q, accounts => accounts,
        error => error.or(flashed.clone()) },
    );
    if flashed.is_some() {
        flash_shown(&mut r);
    }
    r
}

fn agent_view(a: &Agent) -> Value {
    json!({ "email": a.email, "role": a.role.as_str() })
}

/// One bar of the usage chart: a meter's value this period against the plan's limit.
fn chart(view: &Value) -> Vec<Value> {
    let limits: HashMap<&str, i64> = view["decisions"]["features"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| Some((f["feature"].as_str()?, f["decision"]["limit"].as_i64()?)))
        .collect();
    view["usage"]["meters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let value = m["value"].as_i64().unwrap_or(0);
            let limit = m["meter"].as_str().and_then(|k| limits.get(k).copied());
            let scale = limit.filter(|l| *l > 0).unwrap_or(value.max(1));
            let width = (i128::from(value.max(0)) * 300 / i128::from(scale)).clamp(0, 300);
            json!({
                "meter": m["meter"], "aggregation": m["aggregation"], "value": value,
                "limit": limit, "width": width as i64,
                "over": limit.is_some_and(|l| value >= l),
                "start": m["period"]["start"], "end": m["period"]["end"],
            })
        })
        .collect()
}

/// `GET /panel/accounts/{id}` — the 360° view.
#[utoipa::path(get, path = "/panel/accounts/{id}", tag = "panel-web",
    params(("id" = uuid::Uuid, Path, description = "The account's id.")),
    responses(
        (status = 200, description = "The 360° view.", content_type = "text/html", body = String),
        (status = 303, description = "Not logged in: to `/panel/`; no such account (or the API refused): to `/panel/accounts`, saying why."),
    ))]
async fn account(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<AccountId>,
) -> Response {
    let (agent, token) = match session(&state, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (status, view) = api(
        &state,
        &token,
        Method::GET,
        &format!("/panel/v1/accounts/{id}"),
        None,
    )
    .await;
    if status != StatusCode::OK {
        return redirect_with("/panel/accounts", "error", &problem_text(&view));
    }
    let (_, timeline) = api(
        &state,
        &token,
        Method::GET,
        &format!("/panel/v1/accounts/{id}/timeline"),
        None,
    )
    .await;
    let plans: Vec<String> = match crate::catalog::on_sale(&state).await {
        Ok(c) => c.plans.into_iter().map(|p| p.key).collect(),
        Err(_) => vec![],
    };
    let (done, error) = flash(&headers);
    let mut r = page(
        "account.html",
        context! {
            agent => agent_view(&agent), a => &view, chart => chart(&view),
            timeline => &timeline["data"], plans => plans, done => done, error => error,
        },
    );
    if done.is_some() || error.is_some() {
        flash_shown(&mut r);
    }
    r
}

/// Whether a form comes from this page: browsers send `Origin` with every form post; one
/// naming another host is refused (the cookie is `SameSite=Strict` too).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, h)| h);
    origin_host.is_some() && origin_host == host
}

/// A form field, trimmed; `None` when absent or blank.
fn field<'a>(f: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    f.get(name).map(|s| s.trim()).filter(|s| !s.is_empty())
}

/// A form's action as the panel API call it is: (method, path, body without key and reason),
/// and what the page says when it worked.
fn request(
    account: AccountId,
    f: &HashMap<String, String>,
) -> Result<(Method, String, Value, &'static str), String> {
    let int = |name: &str| -> Result<Option<i64>, String> {
        field(f, name)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| format!("{name} must be a whole number"))
            })
            .transpose()
    };
    let id = |name: &str| -> Result<String, String> {
        let raw = field(f, name).ok_or_else(|| format!("{name} is missing"))?;
        uuid::Uuid::parse_str(raw)
            .map(|u| u.to_string())
            .map_err(|_| format!("{name} is not an id"))
    };
    let acct = format!("/panel/v1/accounts/{account}");
    let action = field(f, "action").unwrap_or("");
    Ok(match action {
        "note" => (
            Method::POST,
            format!("{acct}/notes"),
            json!({ "body": field(f, "body").unwrap_or("") }),
            "Note added.",
        ),
        "ban" => (
            Method::POST,
            format!("{acct}/ban"),
            json!({}),
            "Account banned.",
        ),
        "unban" => (
            Method::POST,
            format!("{acct}/unban"),
            json!({}),
            "Account unbanned.",
        ),
        "require_payment_method" => (
            Method::POST,
            format!("{acct}/require-payment-method"),
            json!({}),
            "A new payment method is required.",
        ),
        "credit" => (
            Method::POST,
            format!("{acct}/credits"),
            json!({ "amount_minor": int("amount_minor")?.ok_or("amount_minor is missing")?,
                    "currency": field(f, "currency").unwrap_or("") }),
            "Credit issued.",
        ),
        "override" => (
            Method::POST,
            format!("{acct}/entitlement-overrides"),
            json!({ "feature": field(f, "feature").unwrap_or(""),
                    "mode": field(f, "mode").unwrap_or(""),
                    "limit": int("limit")?, "expires_at": field(f, "expires_at") }),
            "Override set.",
        ),
        "remove_override" => {
            let o: OverrideId = id("override_id")?
                .parse()
                .map_err(|_| "override_id is not an id")?;
            (
                Method::DELETE,
                format!("{acct}/entitlement-overrides/{o}"),
                json!({}),
                "Override removed.",
            )
        }
        "retry" | "void" | "refund" => {
            let i: InvoiceId = id("invoice_id")?
                .parse()
                .map_err(|_| "invoice_id is not an id")?;
            let (body, done) = match action {
                "retry" => (json!({}), "Retry started."),
                "void" => (json!({}), "Invoice voided."),
                _ => (
                    json!({ "amount_minor": int("amount_minor")? }),
                    "Refund issued.",
                ),
            };
            (
                Method::POST,
                format!("/panel/v1/invoices/{i}/{action}"),
                body,
                done,
            )
        }
        "cancel" | "extend_trial" | "change_plan" => {
            let s: SubscriptionId = id("subscription_id")?
                .parse()
                .map_err(|_| "subscription_id is not an id")?;
            let base = format!("/panel/v1/subscriptions/{s}");
            match action {
                "cancel" => (
                    Method::POST,
                    format!("{base}/cancel"),
                    json!({ "at_period_end": field(f, "at_period_end") == Some("true"),
                            "refund": if field(f, "prorated_refund") == Some("true") { "prorated" } else { "none" } }),
                    "Subscription canceled.",
                ),
                "extend_trial" => (
                    Method::POST,
                    format!("{base}/extend-trial"),
                    json!({ "days": int("days")?.ok_or("days is missing")? }),
                    "Trial extended.",
                ),
                _ => (
                    Method::POST,
                    format!("{base}/change"),
                    json!({ "plan": field(f, "plan") }),
                    "Plan changed.",
                ),
            }
        }
        _ => return Err("unknown action".to_owned()),
    })
}

/// `POST /panel/accounts/{id}/actions` — one form's write, through the panel API; back to
/// the 360° view saying what happened.
#[utoipa::path(post, path = "/panel/accounts/{id}/actions", tag = "panel-web",
    params(("id" = uuid::Uuid, Path, description = "The account's id.")),
    request_body(content = HashMap<String, String>, content_type = "application/x-www-form-urlencoded",
        description = "`action` (note, ban, unban, require_payment_method, credit, override, remove_override, retry, void, refund, cancel, extend_trial, change_plan), `key` (the form's idempotency key), `reason`, and the action's fields."),
    responses(
        (status = 303, description = "Done or refused (the `/panel/v1` problem's detail and code): back to the 360° view, which says so; not logged in: to `/panel/`."),
        (status = 403, description = "`cross_origin_form`: posted from another origin."),
    ))]
async fn act(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<AccountId>,
    body: Bytes,
) -> Response {
    if !same_origin(&headers) {
        return cross_origin();
    }
    let f = form(&body);
    let (_, token) = match session(&state, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let back = |k: &str, v: &str| redirect_with(&format!("/panel/accounts/{id}"), k, v);
    let (method, path, mut body, done) = match request(id, &f) {
        Ok(r) => r,
        Err(e) => return back("error", &e),
    };
    let Some(key) = field(&f, "key") else {
        return back("error", "the form has no idempotency key: reload the page");
    };
    body["reason"] = json!(field(&f, "reason"));
    match api(&state, &token, method, &path, Some((key, body))).await {
        (s, _) if s.is_success() => back("done", done),
        (_, problem) => back("error", &problem_text(&problem)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        for name in ["base.html", "login.html", "search.html", "account.html"] {
            TEMPLATES.get_template(name).expect(name);
        }
    }

    #[test]
    fn what_a_customer_typed_is_escaped_in_the_page() {
        let view = json!({ "account": { "id": "x", "name": "<script>alert(1)</script>",
                                         "email": "a@b.example", "status": "active" } });
        let html = TEMPLATES
            .get_template("account.html")
            .and_then(|t| t.render(context! { a => view, chart => Vec::<Value>::new() }))
            .expect("render");
        assert!(!html.contains("<script>alert(1)"), "unescaped");
        assert!(html.contains("&lt;script&gt;alert(1)"), "escaped");
    }

    #[test]
    fn a_flash_comes_from_the_cookie_only() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("tg_agent=t; tg_flash=error=no+such+invoice+%28not_found%29"),
        );
        assert_eq!(
            flash(&h),
            (None, Some("no such invoice (not_found)".to_owned()))
        );
        assert_eq!(flash(&HeaderMap::new()), (None, None));
    }

    #[test]
    fn the_cookie_is_found_among_others_and_a_blank_one_is_none() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; tg_agent=tga_abc; b=2"),
        );
        assert_eq!(token(&h), Some("tga_abc"));
        h.insert(header::COOKIE, HeaderValue::from_static("tg_agent="));
        assert_eq!(token(&h), None);
    }

    #[test]
    fn a_form_from_another_origin_is_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(same_origin(&h), "no Origin: not a cross-site browser form");
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&h));
    }

    #[test]
    fn a_form_names_ids_it_cannot_smuggle_paths_through() {
        let account = AccountId(uuid::Uuid::nil());
        let f: HashMap<String, String> =
            [("action", "void"), ("invoice_id", "../../accounts/x/ban")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        assert_eq!(request(account, &f).unwrap_err(), "invoice_id is not an id");
    }

    #[test]
    fn the_usage_bar_is_the_share_of_the_limit_and_never_overflows() {
        let view = json!({
            "decisions": { "features": [ { "feature": "api_calls", "decision": { "limit": 1000 } } ] },
            "usage": { "meters": [
                { "meter": "api_calls", "value": 250, "period": {} },
                { "meter": "api_calls", "value": i64::MAX, "period": {} },
                { "meter": "storage", "value": -5, "period": {} }
            ] }
        });
        let bars = chart(&view);
        assert_eq!(bars[0]["width"], 75);
        assert_eq!(
            (bars[1]["width"].as_i64(), bars[1]["over"].as_bool()),
            (Some(300), Some(true))
        );
        assert_eq!(bars[2]["width"], 0);
    }
}
