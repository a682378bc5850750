//! The edge's contract (`GET /openapi.json`) against its real router: every route the router
//! answers is an operation of the document and every operation is a route (paths read from
//! the router, methods probed), every operation that takes input documents its 4xx answers, and
//! real answers are what the document says.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tollgate_edge::auth::Tokens;
use tollgate_edge::state::{EdgeOptions, EdgeState};
use tollgate_edge::upstream::{L2, Upstream};
use tower::ServiceExt;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];
const SERVICE: &str = "service-token-openapi-1";
const OPERATOR: &str = "operator-token-openapi-1";

/// An edge with both token lists and the demo bundle, whose control plane is unreachable (no
/// probe here needs it).
fn edge() -> EdgeState {
    let upstream = Upstream::new(
        "http://127.0.0.1:1",
        secrecy::SecretString::from("t".to_owned()),
        Duration::from_millis(200),
        L2::default(),
    )
    .expect("upstream");
    let mut opts = EdgeOptions::new("openapi");
    opts.tokens = Tokens {
        service: vec![SERVICE.into()],
        operator: vec![OPERATOR.into()],
    };
    let state = EdgeState::new(opts, upstream);
    let program = tollgate_rules::demo_program();
    let loaded = tollgate_rules::host::RulesEngine::new()
        .expect("engine")
        .load_program(&program)
        .expect("load");
    state.install_rules(1, program, loaded);
    state
}

struct Answer {
    status: StatusCode,
    content_type: String,
    json: Value,
}

async fn send(state: &EdgeState, req: Request<Body>) -> Answer {
    let resp = tollgate_edge::app(state.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    Answer {
        status,
        content_type,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

fn get(uri: &str) -> Request<Body> {
    Request::builder()
        .uri(uri)
        .body(Body::empty())
        .expect("request")
}

async fn document(state: &EdgeState) -> Value {
    let r = send(state, get(tollgate_edge::openapi::PATH)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.content_type, "application/json");
    r.json
}

/// The path templates the router holds, read from its `Debug` (axum has no other way to list
/// them), before its fallbacks.
fn router_paths(router: &axum::Router) -> BTreeSet<String> {
    let debug = format!("{router:?}");
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
        paths.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    paths
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_served_without_a_token() {
    let state = edge();
    let doc = document(&state).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "Tollgate edge");
    for scheme in ["service", "operator"] {
        assert_eq!(
            doc["components"]["securitySchemes"][scheme]["scheme"],
            "bearer"
        );
    }
}

#[tokio::test]
async fn every_route_is_in_the_document_and_every_operation_is_a_route() {
    let state = edge();
    let doc = document(&state).await;
    let documented: BTreeSet<String> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .cloned()
        .collect();
    let routed = router_paths(&tollgate_edge::app(state.clone()));
    assert!(
        routed.contains("/healthz") && routed.contains("/v1/check") && routed.len() > 10,
        "the router's paths could not be read: {routed:?}"
    );
    assert_eq!(routed, documented, "router paths vs documented paths");
    let mut wrong = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let uri = path.replace('{', "x").replace('}', "");
        for method in METHODS {
            let req = Request::builder()
                .method(Method::from_bytes(method.to_uppercase().as_bytes()).expect("method"))
                .uri(&uri)
                .body(Body::empty())
                .expect("request");
            let r = send(&state, req).await;
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
}

#[tokio::test]
async fn every_operation_that_takes_input_documents_a_4xx() {
    let state = edge();
    let doc = document(&state).await;
    let mut missing = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let takes_input = op.get("parameters").is_some() || op.get("requestBody").is_some();
            let has_4xx = op["responses"]
                .as_object()
                .expect("responses")
                .keys()
                .any(|s| s.starts_with('4'));
            if takes_input && !has_4xx {
                missing.push(format!("{method} {path}"));
            }
            let gated = op["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.get("service").is_some()));
            if gated && path != "/v1/status" && op["responses"].get("401").is_none() {
                missing.push(format!("{method} {path}: 401"));
            }
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
}

/// `r` is an answer the document lists for `method path`, valid under its schema.
fn assert_documented(doc: &Value, method: &str, path: &str, r: &Answer) {
    let response = &doc["paths"][path][method]["responses"][r.status.as_str()];
    assert!(
        response.is_object(),
        "{method} {path} answered {} ({}), which the document does not list",
        r.status,
        r.json
    );
    let media = r.content_type.split(';').next().unwrap_or_default().trim();
    let Some(content) = response["content"].get(media) else {
        panic!("{method} {path} {}: {media} is not documented", r.status);
    };
    if let Some(schema) = content.get("schema") {
        let mut root = schema.clone();
        root["components"] = doc["components"].clone();
        let validator = jsonschema::draft202012::new(&root).expect("the schema compiles");
        let errors: Vec<String> = validator
            .iter_errors(&r.json)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {path}: {errors:#?}\n{}",
            r.json
        );
    }
}

fn with_token(uri: &str, token: &str) -> Request<Body> {
    Request::builder()
        .uri(uri)
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .expect("request")
}

/// Real answers of every open route and of the checks, each valid under its schema.
#[tokio::test]
async fn real_answers_match_their_schemas() {
    let state = edge();
    let doc = document(&state).await;
    let account = uuid::Uuid::now_v7();
    for (path, req) in [
        ("/healthz", get("/healthz")),
        ("/readyz", get("/readyz")),
        ("/v1/status", get("/v1/status")),
        ("/v1/status", with_token("/v1/status", SERVICE)),
        (
            "/v1/check",
            with_token(&format!("/v1/check?account={account}&feature=sso"), SERVICE),
        ),
        (
            "/v1/check",
            with_token("/v1/check?account=x&feature=sso", SERVICE),
        ),
        (
            "/v1/accounts/{id}/entitlements",
            with_token(&format!("/v1/accounts/{account}/entitlements"), SERVICE),
        ),
        ("/v1/dead-letter", with_token("/v1/dead-letter", OPERATOR)),
    ] {
        let r = send(&state, req).await;
        assert_documented(&doc, "get", path, &r);
    }
}

/// What the document's gates and problems say holds for real answers: a service route
/// without a token is a 401 problem, an operator route a 401 problem, a bad check a 400
/// problem, all with the five members of `Problem`.
#[tokio::test]
async fn gates_and_refusals_answer_the_documented_problems() {
    let state = edge();
    let doc = document(&state).await;
    let required: Vec<String> = doc["components"]["schemas"]["Problem"]["required"]
        .as_array()
        .expect("required")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    assert_eq!(required.len(), 5, "{required:?}");
    let check = format!("/v1/check?account={}&feature=sso", uuid::Uuid::now_v7());
    let bad = Request::builder()
        .uri("/v1/check?account=nope&feature=sso")
        .header("authorization", format!("Bearer {SERVICE}"))
        .body(Body::empty())
        .expect("request");
    for (req, status, op) in [
        (get(&check), 401, ("/v1/check", "get")),
        (get("/v1/dead-letter"), 401, ("/v1/dead-letter", "get")),
        (bad, 400, ("/v1/check", "get")),
    ] {
        let r = send(&state, req).await;
        assert_eq!(r.status.as_u16(), status, "{:?}", r.json);
        assert_eq!(r.content_type, "application/problem+json");
        for field in &required {
            assert!(r.json.get(field).is_some(), "{field}: {}", r.json);
        }
        let documented = &doc["paths"][op.0][op.1]["responses"][status.to_string()];
        assert_eq!(
            documented["content"]["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/Problem",
            "{op:?} {status}"
        );
    }
}
