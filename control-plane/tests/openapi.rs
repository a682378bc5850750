//! The contract (`GET /openapi.json`) against the real router: every route the router answers is
//! an operation of the document and every operation is a route (paths read from the router,
//! methods probed), each operation that takes input documents its problem responses, and the
//! document is OpenAPI 3.1.

mod common;

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::Harness;
use serde_json::Value;
use tollgate_control_plane::api::openapi;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// The path templates the router holds, read from its `Debug` (axum has no other way to list
/// them); its fallbacks excluded.
fn router_paths(router: &axum::Router) -> BTreeSet<String> {
    let debug = format!("{router:?}");
    // `Router { path_router: …, fallback_router: …, … }`: the routes are before the fallbacks.
    let (routes, _) = debug
        .split_once("fallback_router")
        .expect("axum's Router debug names its fallback router");
    let mut paths = BTreeSet::new();
    let mut rest = routes;
    while let Some(i) = rest.find("RouteId(") {
        rest = &rest[i..];
        let Some(start) = rest.find(": \"") else {
            break;
        };
        let tail = &rest[start + 3..];
        let Some(end) = tail.find('"') else { break };
        let path = &tail[..end];
        if !path.contains("__private__") {
            paths.insert(path.to_owned());
        }
        rest = &tail[end..];
    }
    paths
}

/// `path` with every `{param}` replaced by a fresh id.
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => in_param = true,
            '}' => {
                in_param = false;
                out.push_str(&uuid::Uuid::now_v7().to_string());
            }
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

async fn document(h: &Harness) -> Value {
    let r = h.get(openapi::PATH, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.content_type, "application/json");
    r.json
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_served_without_a_token() {
    let h = Harness::new().await;
    let doc = document(&h).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "Tollgate control plane");
    for scheme in ["customer", "agent", "admin", "edge"] {
        assert_eq!(
            doc["components"]["securitySchemes"][scheme]["scheme"], "bearer",
            "{scheme}"
        );
    }
    let problem = &doc["components"]["schemas"]["Problem"];
    for field in ["type", "title", "status", "detail", "code"] {
        assert!(
            problem["required"]
                .as_array()
                .is_some_and(|r| r.contains(&Value::from(field))),
            "{field}: {problem}"
        );
    }
    h.finish().await;
}

#[tokio::test]
async fn every_route_is_in_the_document_and_every_operation_is_a_route() {
    let h = Harness::new().await;
    let doc = document(&h).await;
    let documented: BTreeSet<String> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .cloned()
        .collect();
    let routed = router_paths(&tollgate_control_plane::app(h.state.clone()));
    assert!(
        routed.contains("/healthz") && routed.contains("/v1/account") && routed.len() > 60,
        "the router's paths could not be read: {routed:?}"
    );
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routes missing from the document: {undocumented:?}; documented but not routed: {unrouted:?}"
    );
    // Methods: each documented one is answered by its handler, every other one is 405. The
    // probes carry no credentials and no body, so no handler gets past its extractors.
    let mut wrong = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let uri = concrete(path);
        for method in METHODS {
            let req = Request::builder()
                .method(Method::from_bytes(method.to_uppercase().as_bytes()).expect("method"))
                .uri(&uri)
                .body(Body::empty())
                .expect("request");
            let r = h.send(req).await;
            let code = r.json["code"].as_str().unwrap_or_default();
            let documented = item.get(method).is_some();
            let answered = code != "method_not_allowed" && code != "route_not_found";
            if documented != answered {
                wrong.push(format!(
                    "{method} {path}: documented {documented}, answered {} ({code})",
                    r.status
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    h.finish().await;
}

#[tokio::test]
async fn every_operation_that_takes_input_documents_its_problems() {
    let h = Harness::new().await;
    let doc = document(&h).await;
    let mut missing = Vec::new();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            operations += 1;
            let takes_input = op.get("security").is_some()
                || op.get("parameters").is_some()
                || op.get("requestBody").is_some();
            let problems = op["responses"]
                .as_object()
                .expect("responses")
                .iter()
                .filter(|(status, r)| {
                    status.starts_with('4')
                        && r["content"]["application/problem+json"]["schema"]["$ref"]
                            == "#/components/schemas/Problem"
                })
                .count();
            if takes_input && problems == 0 {
                missing.push(format!("{method} {path}"));
            }
            // Every problem response a path id, a token or a body can cause is there.
            let has = |s: &str| op["responses"].get(s).is_some();
            if path.contains('{') && !has("404") {
                missing.push(format!("{method} {path}: 404"));
            }
            if op.get("security").is_some() && !has("401") {
                missing.push(format!("{method} {path}: 401"));
            }
            let json_body = op["requestBody"]["content"]
                .get("application/json")
                .is_some();
            if json_body && !path.starts_with("/webhooks/") && !(has("400") && has("422")) {
                missing.push(format!("{method} {path}: 400, 422"));
            }
        }
    }
    assert!(operations > 80, "{operations}");
    assert!(missing.is_empty(), "{missing:#?}");
    h.finish().await;
}

/// `r` is an answer the document lists for `method path`: its status, its media type, and for a
/// problem the members of `Problem`.
fn assert_documented(doc: &Value, method: &str, path: &str, r: &common::Resp) {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not documented");
    let response = &op["responses"][r.status.as_str()];
    assert!(
        response.is_object(),
        "{method} {path} answered {} ({}), which the document does not list",
        r.status,
        r.json
    );
    let media = r.content_type.split(';').next().unwrap_or_default().trim();
    assert!(
        response["content"].get(media).is_some(),
        "{method} {path} {}: {media} is not documented: {}",
        r.status,
        response["content"]
    );
    if media == "application/problem+json" {
        for field in ["type", "title", "status", "detail", "code"] {
            assert!(r.json.get(field).is_some(), "{field}: {}", r.json);
        }
    }
    if let Some(schema) = response["content"][media].get("schema") {
        assert_valid(
            doc,
            schema,
            &r.json,
            &format!("{method} {path} {}", r.status),
        );
    }
}

fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let mut root = schema.clone();
    root["components"] = doc["components"].clone();
    jsonschema::draft202012::new(&root).expect("the document's schema compiles")
}

fn schema_admits(doc: &Value, schema: &Value, value: &Value) -> bool {
    validator(doc, schema).is_valid(value)
}

/// `value` is an instance of `schema` (whose `$ref`s point into the document's components).
fn assert_valid(doc: &Value, schema: &Value, value: &Value, what: &str) {
    let errors: Vec<String> = validator(doc, schema)
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:#?}\n{value}");
}

/// Found by schemathesis: `GET /v1/invoices?starting_after=` an invoice the account does not
/// have answers 404, which the document did not list.
#[tokio::test]
async fn an_unknown_invoice_cursor_is_a_documented_404() {
    let h = Harness::new().await;
    let doc = document(&h).await;
    let (_, token) = h.sign_up("cursor@example.com").await;
    let uri = format!("/v1/invoices?starting_after={}", uuid::Uuid::now_v7());
    let r = h.get(&uri, Some(&token)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.json);
    assert_documented(&doc, "get", "/v1/invoices", &r);
    h.finish().await;
}

/// A sample of real answers, each one the document lists: a sign-up, the account, a refused
/// body, a missing token, an unknown id, a panel write without a reason.
#[tokio::test]
async fn real_answers_are_the_documented_ones() {
    let h = Harness::new().await;
    let doc = document(&h).await;
    let r = h
        .post(
            "/v1/accounts",
            None,
            Some("contract-1"),
            r#"{"email":"sample@example.com","name":"Sample"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    assert_documented(&doc, "post", "/v1/accounts", &r);
    // The check can fail: an account that is not an object is not a sign-up's answer.
    let schema = &doc["paths"]["/v1/accounts"]["post"]["responses"]["201"]["content"]["application/json"]
        ["schema"];
    let mut wrong = r.json.clone();
    wrong["account"]["id"] = Value::from(5);
    assert!(
        !schema_admits(&doc, schema, &wrong),
        "a numeric account id passed {schema}"
    );
    let token = r.json["api_token"].as_str().expect("token").to_owned();
    for (method, template, uri, body, token) in [
        (
            "get",
            "/v1/account",
            "/v1/account".to_owned(),
            None,
            Some(token.as_str()),
        ),
        ("get", "/v1/account", "/v1/account".to_owned(), None, None),
        (
            "post",
            "/v1/account/contacts",
            "/v1/account/contacts".to_owned(),
            Some("[]"),
            Some(token.as_str()),
        ),
        (
            "post",
            "/v1/account/contacts",
            "/v1/account/contacts".to_owned(),
            Some("{"),
            Some(token.as_str()),
        ),
        (
            "get",
            "/v1/invoices/{id}",
            format!("/v1/invoices/{}", uuid::Uuid::now_v7()),
            None,
            Some(token.as_str()),
        ),
        (
            "get",
            "/v1/invoices/{id}",
            "/v1/invoices/not-an-id".to_owned(),
            None,
            Some(token.as_str()),
        ),
        ("get", "/v1/plans", "/v1/plans".to_owned(), None, None),
        (
            "get",
            "/v1/usage",
            "/v1/usage".to_owned(),
            None,
            Some(token.as_str()),
        ),
    ] {
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let r = h.call(m, &uri, token, None, body).await;
        assert_documented(&doc, method, template, &r);
    }
    h.finish().await;
}

/// The answers built with `json!` around views, from a paying customer: the purchase, the
/// wallet, the subscription list, a change preview and the change, the panel's 360° view and
/// timeline, a ban, the admin's agents and the edge's facts — each valid under its schema.
#[tokio::test]
async fn a_paying_customers_answers_match_their_schemas() {
    let h = Harness::new().await;
    let doc = document(&h).await;
    let (account, token) = h.sign_up("payer@example.com").await;
    let t = Some(token.as_str());
    h.add_card(&token, "pm_card_visa").await;
    let r = h
        .post("/v1/checkout", t, Some("buy-1"), r#"{"plan":"pro"}"#)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    assert_documented(&doc, "post", "/v1/checkout", &r);
    let subscription = r.str("/subscription/id");
    let checkout = r.str("/checkout/id");
    h.drain_outbox().await;
    let agent = h
        .admin(
            Method::POST,
            "/admin/v1/agents",
            Some(r#"{"email":"contract@support.example","role":"billing_admin"}"#),
        )
        .await;
    assert_documented(&doc, "post", "/admin/v1/agents", &agent);
    let agent = agent.str("/token");
    let a = Some(agent.as_str());
    let sub = format!("/v1/subscriptions/{subscription}");
    let acct = format!("/panel/v1/accounts/{account}");
    for (method, template, uri, token, key, body) in [
        (
            "get",
            "/v1/account",
            "/v1/account".to_owned(),
            t,
            None,
            None,
        ),
        (
            "get",
            "/v1/payment-methods",
            "/v1/payment-methods".to_owned(),
            t,
            None,
            None,
        ),
        (
            "get",
            "/v1/subscriptions",
            "/v1/subscriptions".to_owned(),
            t,
            None,
            None,
        ),
        (
            "get",
            "/v1/checkout/{id}",
            format!("/v1/checkout/{checkout}"),
            t,
            None,
            None,
        ),
        (
            "post",
            "/v1/checkout/{id}/cancel",
            format!("/v1/checkout/{checkout}/cancel"),
            t,
            None,
            None,
        ),
        (
            "get",
            "/v1/invoices",
            "/v1/invoices".to_owned(),
            t,
            None,
            None,
        ),
        ("get", "/v1/usage", "/v1/usage".to_owned(), t, None, None),
        ("get", "/v1/tokens", "/v1/tokens".to_owned(), t, None, None),
        (
            "post",
            "/v1/subscriptions/{id}/preview-change",
            format!("{sub}/preview-change"),
            t,
            None,
            Some(r#"{"plan":"enterprise"}"#),
        ),
        (
            "post",
            "/v1/subscriptions/{id}/change",
            format!("{sub}/change"),
            t,
            Some("change-1"),
            Some(r#"{"plan":"enterprise"}"#),
        ),
        (
            "get",
            "/panel/v1/accounts/{id}",
            acct.clone(),
            a,
            None,
            None,
        ),
        (
            "get",
            "/panel/v1/accounts/{id}/timeline",
            format!("{acct}/timeline"),
            a,
            None,
            None,
        ),
        (
            "get",
            "/panel/v1/accounts",
            format!("/panel/v1/accounts?q={account}"),
            a,
            None,
            None,
        ),
        (
            "post",
            "/panel/v1/accounts/{id}/notes",
            format!("{acct}/notes"),
            a,
            Some("note-1"),
            Some(r#"{"reason":"a call","body":"asked about SSO"}"#),
        ),
        (
            "post",
            "/panel/v1/accounts/{id}/ban",
            format!("{acct}/ban"),
            a,
            Some("ban-1"),
            Some(r#"{"reason":"chargeback fraud"}"#),
        ),
        (
            "get",
            "/panel/v1/disputes",
            "/panel/v1/disputes".to_owned(),
            a,
            None,
            None,
        ),
    ] {
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let r = h.call(m, &uri, token, key, body).await;
        // Each succeeds but the cancel of a paid checkout: a 409 problem with extensions.
        let cancel = uri.ends_with("/cancel");
        assert!(
            (cancel && r.status == StatusCode::CONFLICT) || (!cancel && r.status.is_success()),
            "{method} {uri}: {} {}",
            r.status,
            r.json
        );
        assert_documented(&doc, method, template, &r);
    }
    for (template, uri) in [
        ("/admin/v1/agents", "/admin/v1/agents".to_owned()),
        ("/admin/v1/bundles", "/admin/v1/bundles".to_owned()),
        (
            "/admin/v1/catalog/prices",
            "/admin/v1/catalog/prices".to_owned(),
        ),
    ] {
        let r = h.admin(Method::GET, &uri, None).await;
        assert_documented(&doc, "get", template, &r);
    }
    let req = Request::builder()
        .uri(format!("/internal/v1/accounts/{account}/facts"))
        .header("authorization", "Bearer test-edge-token")
        .body(Body::empty())
        .expect("request");
    let r = h.send(req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_documented(&doc, "get", "/internal/v1/accounts/{id}/facts", &r);
    h.finish().await;
}

/// The internal API's paths are the protocol's constants, which the edges call: a route's path
/// is its annotation's, so the two are held equal here.
#[test]
fn the_internal_api_is_at_the_protocols_paths() {
    use tollgate_protocol::internal_api as api;
    let doc = serde_json::to_value(openapi::document(false, false)).expect("json");
    for (path, method) in [
        (api::FACTS_BATCH_PATH, "post"),
        (api::BUNDLE_PATH, "get"),
        (api::USAGE_PATH, "post"),
        (api::LEASE_PATH, "post"),
        (api::LEASE_RELEASE_PATH, "post"),
        (api::CLOCK_PATH, "get"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{method} {path}");
    }
}

#[test]
fn development_routes_are_documented_only_where_mounted() {
    let paths = |dev, sim| {
        let doc = serde_json::to_value(openapi::document(dev, sim)).expect("json");
        doc["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(!paths(false, false).iter().any(|p| p.starts_with("/dev/")));
    let dev = paths(true, false);
    assert!(dev.iter().any(|p| p == "/dev/v1/clock"));
    assert!(!dev.iter().any(|p| p.starts_with("/dev/v1/simulator/")));
    assert!(
        paths(true, true)
            .iter()
            .any(|p| p.starts_with("/dev/v1/simulator/"))
    );
}
