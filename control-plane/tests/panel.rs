//! The NinjaPanel over the real router and real PostgreSQL: agents made by the platform, every
//! route under the role it needs (the whole matrix), every write audited with its reason in
//! the transaction of its effect and idempotent under its key, and what changes access reaching
//! the facts the edges evaluate (a ban denies with `denied_banned`, an override decides with
//! `override`).

mod common;

use axum::http::{Method, StatusCode};
use common::Harness;
use tollgate_rules::bundle;
use tollgate_rules::compiler;
use tollgate_rules::lang::SourceFile;

/// Uploads and activates the demo rules (stable version 1), as a platform engineer would.
async fn stable_demo(h: &Harness) {
    let file = SourceFile {
        name: "demo.tg".into(),
        text: tollgate_rules::DEMO_SOURCE.to_owned(),
    };
    let compiled = compiler::compile(&file).expect("compile");
    let bytes = bundle::build(&compiled, tollgate_rules::DEMO_SOURCE, 1, 0)
        .expect("build")
        .sign(&h.key);
    let r = h.admin_upload(bytes).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    let r = h
        .admin(
            Method::POST,
            "/admin/v1/bundles/1/activate",
            Some(r#"{"canary_percent":0}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
}

/// An agent of `role`: its token.
async fn agent(h: &Harness, email: &str, role: &str) -> String {
    let r = h
        .admin(
            Method::POST,
            "/admin/v1/agents",
            Some(&format!(r#"{{"email":"{email}","role":"{role}"}}"#)),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    assert_eq!(r.json["agent"]["role"], role);
    r.str("/token")
}

/// A customer with an active `pro` subscription: (account id, customer token).
async fn customer(h: &Harness, email: &str) -> (String, String) {
    let (id, token) = h.sign_up(email).await;
    h.add_card(&token, "pm_card_visa").await;
    let r = h
        .post(
            "/v1/checkout",
            Some(&token),
            Some("buy"),
            r#"{"plan":"pro"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    h.settle().await;
    (id, token)
}

async fn decision(h: &Harness, account: &str, feature: &str) -> serde_json::Value {
    let agent = agent(
        h,
        &format!(
            "reader-{feature}-{}@example.com",
            uuid::Uuid::now_v7().simple()
        ),
        "viewer",
    )
    .await;
    let r = h
        .get(&format!("/panel/v1/accounts/{account}"), Some(&agent))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    r.json["decisions"]["features"]
        .as_array()
        .expect("decisions")
        .iter()
        .find(|f| f["feature"] == feature)
        .map(|f| f["decision"].clone())
        .expect("feature")
}

#[tokio::test]
async fn agents_are_made_listed_and_revoked_by_the_platform_only() {
    let h = Harness::new().await;
    let token = agent(&h, "ada@support.example", "support").await;
    assert!(token.starts_with("tga_"));
    // The same live email again is a conflict; a bad role or email is refused.
    let r = h
        .admin(
            Method::POST,
            "/admin/v1/agents",
            Some(r#"{"email":"ADA@support.example","role":"viewer"}"#),
        )
        .await;
    r.assert_problem(StatusCode::CONFLICT, "agent_exists");
    let r = h
        .admin(
            Method::POST,
            "/admin/v1/agents",
            Some(r#"{"email":"bob@support.example","role":"root"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.json);
    let r = h
        .admin(
            Method::POST,
            "/admin/v1/agents",
            Some(r#"{"email":"not an email","role":"viewer"}"#),
        )
        .await;
    r.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_email");
    // A NUL would reach PostgreSQL (a 500): refused like any bad address.
    let r = h
        .admin(
            Method::POST,
            "/admin/v1/agents",
            Some(r#"{"email":"a\u0000@support.example","role":"viewer"}"#),
        )
        .await;
    r.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_email");
    // A customer token or no token cannot make agents.
    let (_, customer) = h.sign_up("cust@example.com").await;
    let r = h
        .post(
            "/admin/v1/agents",
            Some(&customer),
            None,
            r#"{"email":"x@y.z","role":"billing_admin"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.json);
    let list = h.admin(Method::GET, "/admin/v1/agents", None).await;
    let agents = list.json["data"].as_array().expect("list");
    assert_eq!(agents.len(), 1);
    assert!(agents[0].get("token").is_none(), "tokens are shown once");
    let id = agents[0]["id"].as_str().expect("id").to_owned();
    // Works, then revoked: 401 at once.
    let r = h.get("/panel/v1/accounts?q=cust", Some(&token)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    let r = h
        .admin(Method::POST, &format!("/admin/v1/agents/{id}/revoke"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert!(r.json["revoked_at"].is_string());
    let r = h.get("/panel/v1/accounts?q=cust", Some(&token)).await;
    r.assert_problem(StatusCode::UNAUTHORIZED, "invalid_token");
    // A customer's token is not an agent's.
    let r = h.get("/panel/v1/accounts?q=cust", Some(&customer)).await;
    r.assert_problem(StatusCode::UNAUTHORIZED, "invalid_token");
    h.finish().await;
}

/// Every panel route, what it needs, and a request that passes the role check.
fn matrix(account: &str) -> Vec<(Method, String, &'static str, Option<String>)> {
    let reason = r#""reason":"customer asked""#;
    vec![
        (
            Method::GET,
            "/panel/v1/accounts?q=matrix".into(),
            "viewer",
            None,
        ),
        (
            Method::GET,
            format!("/panel/v1/accounts/{account}"),
            "viewer",
            None,
        ),
        (
            Method::GET,
            format!("/panel/v1/accounts/{account}/timeline"),
            "viewer",
            None,
        ),
        (
            Method::POST,
            format!("/panel/v1/accounts/{account}/notes"),
            "support",
            Some(format!(r#"{{{reason},"body":"called in"}}"#)),
        ),
        (
            Method::POST,
            format!("/panel/v1/accounts/{account}/entitlement-overrides"),
            "support",
            Some(format!(r#"{{{reason},"feature":"sso","mode":"grant"}}"#)),
        ),
        (
            Method::POST,
            format!("/panel/v1/accounts/{account}/require-payment-method"),
            "support",
            Some(format!("{{{reason}}}")),
        ),
        (
            Method::POST,
            format!("/panel/v1/accounts/{account}/ban"),
            "billing_admin",
            Some(format!("{{{reason}}}")),
        ),
        (
            Method::POST,
            format!("/panel/v1/accounts/{account}/unban"),
            "billing_admin",
            Some(format!("{{{reason}}}")),
        ),
        (
            Method::POST,
            format!("/panel/v1/accounts/{account}/credits"),
            "billing_admin",
            Some(format!(
                r#"{{{reason},"amount_minor":100,"currency":"USD"}}"#
            )),
        ),
        (
            Method::POST,
            format!("/panel/v1/invoices/{}/retry", uuid::Uuid::nil()),
            "support",
            Some(format!("{{{reason}}}")),
        ),
        (Method::GET, "/panel/v1/disputes".into(), "viewer", None),
        (
            Method::POST,
            format!("/panel/v1/disputes/{}/resolve", uuid::Uuid::nil()),
            "billing_admin",
            Some(format!(r#"{{{reason},"resolution":"accept"}}"#)),
        ),
        (
            Method::POST,
            format!("/panel/v1/invoices/{}/refund", uuid::Uuid::nil()),
            "billing_admin",
            Some(format!("{{{reason}}}")),
        ),
        (
            Method::POST,
            format!("/panel/v1/subscriptions/{}/cancel", uuid::Uuid::nil()),
            "support",
            Some(format!(r#"{{{reason},"at_period_end":true}}"#)),
        ),
        (
            Method::POST,
            format!("/panel/v1/subscriptions/{}/extend-trial", uuid::Uuid::nil()),
            "support",
            Some(format!(r#"{{{reason},"days":3}}"#)),
        ),
        (
            Method::POST,
            format!("/panel/v1/subscriptions/{}/cancel", uuid::Uuid::nil()),
            "billing_admin",
            Some(format!(
                r#"{{{reason},"at_period_end":false,"refund":"prorated"}}"#
            )),
        ),
        (
            Method::POST,
            format!("/panel/v1/subscriptions/{}/change", uuid::Uuid::nil()),
            "support",
            Some(format!(r#"{{{reason},"plan":"enterprise"}}"#)),
        ),
        (
            Method::POST,
            format!("/panel/v1/invoices/{}/void", uuid::Uuid::nil()),
            "billing_admin",
            Some(format!("{{{reason}}}")),
        ),
    ]
}

fn rank(role: &str) -> u8 {
    match role {
        "viewer" => 0,
        "support" => 1,
        _ => 2,
    }
}

#[tokio::test]
async fn every_route_answers_each_role_as_the_matrix_says() {
    let h = Harness::new().await;
    let (account, _) = customer(&h, "matrix@example.com").await;
    let tokens = [
        ("viewer", agent(&h, "v@support.example", "viewer").await),
        ("support", agent(&h, "s@support.example", "support").await),
        (
            "billing_admin",
            agent(&h, "b@support.example", "billing_admin").await,
        ),
    ];
    for (method, path, needs, body) in matrix(&account) {
        for (role, token) in &tokens {
            let key = format!("{role}-{path}");
            let r = h
                .call(
                    method.clone(),
                    &path,
                    Some(token),
                    body.as_ref().map(|_| key.as_str()),
                    body.as_deref(),
                )
                .await;
            if rank(role) >= rank(needs) {
                // Past the role check: answered (an id that names nothing is 404).
                assert!(
                    r.status.is_success() || r.status == StatusCode::NOT_FOUND,
                    "{role} {method} {path}: {} {:?}",
                    r.status,
                    r.json
                );
            } else {
                r.assert_problem(StatusCode::FORBIDDEN, "forbidden_for_role");
            }
        }
        // Without a token: 401.
        let r = h
            .call(method.clone(), &path, None, Some("k"), body.as_deref())
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {path}");
    }
    h.finish().await;
}

#[tokio::test]
async fn a_ban_is_audited_idempotent_and_denies_everything_with_its_reason() {
    let h = Harness::new().await;
    stable_demo(&h).await;
    let (account, token) = customer(&h, "banned@example.com").await;
    let admin = agent(&h, "b@support.example", "billing_admin").await;
    assert_eq!(decision(&h, &account, "seats").await["allowed"], true);

    // No reason, a blank one, one with a NUL: refused, nothing written.
    for body in ["{}", r#"{"reason":"  "}"#, r#"{"reason":"abc\u0000def"}"#] {
        let r = h
            .post(
                &format!("/panel/v1/accounts/{account}/ban"),
                Some(&admin),
                Some("ban-0"),
                body,
            )
            .await;
        r.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "reason_required");
    }
    let r = h
        .post(
            &format!("/panel/v1/accounts/{account}/ban"),
            Some(&admin),
            None,
            r#"{"reason":"chargeback fraud"}"#,
        )
        .await;
    r.assert_problem(StatusCode::BAD_REQUEST, "idempotency_key_required");
    assert_eq!(h.count("SELECT count(*) FROM agent_actions").await, 0);

    let ban = |key: &'static str, reason: &'static str| {
        let path = format!("/panel/v1/accounts/{account}/ban");
        let admin = admin.clone();
        let h = &h;
        async move {
            h.post(
                &path,
                Some(&admin),
                Some(key),
                &format!(r#"{{"reason":"{reason}"}}"#),
            )
            .await
        }
    };
    let (a, b) = tokio::join!(
        ban("ban-1", "chargeback fraud"),
        ban("ban-1", "chargeback fraud")
    );
    assert_eq!(
        (a.status, b.status),
        (StatusCode::OK, StatusCode::OK),
        "{:?} {:?}",
        a.json,
        b.json
    );
    assert_eq!(a.json["standing"], "banned");
    assert_eq!(a.json, b.json, "the same answer twice");
    assert_eq!(
        h.count("SELECT count(*) FROM agent_actions").await,
        1,
        "one audit row for one key, even at once"
    );
    // The same key for another request is refused.
    let r = ban("ban-1", "something else").await;
    r.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused");
    let (agent_email, action, reason, before, after): (
        String,
        String,
        String,
        serde_json::Value,
        serde_json::Value,
    ) = sqlx::query_as("SELECT agent_email, action, reason, before, after FROM agent_actions")
        .fetch_one(&h.state.cf)
        .await
        .expect("audit");
    assert_eq!(
        (agent_email.as_str(), action.as_str(), reason.as_str()),
        ("b@support.example", "account.ban", "chargeback fraud")
    );
    assert_eq!(
        (before["standing"].as_str(), after["standing"].as_str()),
        (Some("active"), Some("banned"))
    );
    // The audit log cannot be edited.
    let edited = sqlx::query("UPDATE agent_actions SET reason = 'nothing to see'")
        .execute(&h.state.cf)
        .await;
    assert!(edited.is_err(), "append-only");

    // What the edges evaluate: everything denied, because of the ban.
    h.settle().await;
    let d = decision(&h, &account, "seats").await;
    assert_eq!(
        (d["allowed"].as_bool(), d["reason"].as_str()),
        (Some(false), Some("denied_banned")),
        "{d}"
    );
    // The customer sees it; buying is refused.
    let me = h.get("/v1/account", Some(&token)).await;
    assert_eq!(me.json["standing"], "banned");
    // The timeline shows the action with its agent and reason, and the lifecycle event.
    let viewer = agent(&h, "v@support.example", "viewer").await;
    let t = h
        .get(
            &format!("/panel/v1/accounts/{account}/timeline"),
            Some(&viewer),
        )
        .await;
    let entries = t.json["data"].as_array().expect("timeline");
    let action = entries
        .iter()
        .find(|e| e["kind"] == "agent_action")
        .expect("action");
    assert_eq!(action["what"], "account.ban");
    assert_eq!(action["agent"], "b@support.example");
    assert!(
        entries.iter().any(|e| e["what"] == "account.banned"),
        "{entries:?}"
    );

    // A support grant does not reopen a feature to a banned account.
    let support = agent(&h, "s@support.example", "support").await;
    let r = h
        .post(
            &format!("/panel/v1/accounts/{account}/entitlement-overrides"),
            Some(&support),
            Some("grant-while-banned"),
            r#"{"reason":"vip","feature":"seats","mode":"grant","limit":9}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    h.settle().await;
    let d = decision(&h, &account, "seats").await;
    assert_eq!(d["reason"], "denied_banned", "{d}");
    // An unknown account has no timeline.
    let t = h
        .get(
            &format!("/panel/v1/accounts/{}/timeline", uuid::Uuid::now_v7()),
            Some(&viewer),
        )
        .await;
    assert_eq!(t.status, StatusCode::NOT_FOUND);

    // Unbanned: granted again (the grant now counts).
    let r = h
        .post(
            &format!("/panel/v1/accounts/{account}/unban"),
            Some(&admin),
            Some("unban-1"),
            r#"{"reason":"cleared by the bank"}"#,
        )
        .await;
    assert_eq!(r.json["standing"], "active", "{:?}", r.json);
    h.settle().await;
    let d = decision(&h, &account, "seats").await;
    assert_eq!(
        (d["allowed"].as_bool(), d["limit"].as_i64()),
        (Some(true), Some(9)),
        "{d}"
    );
    h.finish().await;
}

#[tokio::test]
async fn overrides_decide_at_the_edges_until_removed_or_expired() {
    let h = Harness::new().await;
    stable_demo(&h).await;
    let (account, _) = customer(&h, "override@example.com").await;
    let support = agent(&h, "s@support.example", "support").await;
    let path = format!("/panel/v1/accounts/{account}/entitlement-overrides");
    // Refused: an unknown feature, a deny with a limit, a past expiry, a negative limit.
    for (body, code) in [
        (
            r#"{"reason":"trial","feature":"teleport","mode":"grant"}"#,
            "unknown_feature",
        ),
        (
            r#"{"reason":"trial","feature":"sso","mode":"deny","limit":3}"#,
            "invalid_override",
        ),
        (
            r#"{"reason":"trial","feature":"sso","mode":"grant","expires_at":"2020-01-01T00:00:00Z"}"#,
            "invalid_override",
        ),
        (
            r#"{"reason":"trial","feature":"seats","mode":"grant","limit":-1}"#,
            "invalid_override",
        ),
    ] {
        let r = h.post(&path, Some(&support), Some(code), body).await;
        r.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, code);
    }
    // Seats granted at 500 for a week.
    let r = h
        .post(
            &path,
            Some(&support),
            Some("seats-500"),
            r#"{"reason":"migration week","feature":"seats","mode":"grant","limit":500,"expires_at":"2026-01-22T12:00:00Z"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    h.settle().await;
    let d = decision(&h, &account, "seats").await;
    assert_eq!(
        (d["limit"].as_i64(), d["reason"].as_str()),
        (Some(500), Some("override")),
        "{d}"
    );
    // A deny of exports, then removed.
    let r = h
        .post(
            &path,
            Some(&support),
            Some("deny-exports"),
            r#"{"reason":"abuse report","feature":"exports","mode":"deny"}"#,
        )
        .await;
    let deny_id = r.str("/id");
    h.settle().await;
    assert_eq!(decision(&h, &account, "exports").await["allowed"], false);
    let r = h
        .call(
            Method::DELETE,
            &format!("{path}/{deny_id}"),
            Some(&support),
            Some("undeny"),
            Some(r#"{"reason":"resolved"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    h.settle().await;
    assert_eq!(decision(&h, &account, "exports").await["allowed"], true);
    // Another account's id with a real override id: 404.
    let (other, _) = customer(&h, "other@example.com").await;
    let r = h
        .call(
            Method::DELETE,
            &format!("/panel/v1/accounts/{other}/entitlement-overrides/{deny_id}"),
            Some(&support),
            Some("cross"),
            Some(r#"{"reason":"oops"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.json);
    // The week passes: the grant expires by itself and the plan's limit is back.
    h.advance_to(common::t(2026, 1, 22, 12, 1)).await;
    let d = decision(&h, &account, "seats").await;
    assert_ne!(d["reason"].as_str(), Some("override"), "{d}");
    h.finish().await;
}

#[tokio::test]
async fn search_and_the_360_view_show_the_whole_account() {
    let h = Harness::new().await;
    stable_demo(&h).await;
    let (account, _) = customer(&h, "whole.view@example.com").await;
    let viewer = agent(&h, "v@support.example", "viewer").await;
    for q in ["whole.view", "WHOLE", account.as_str()] {
        let r = h
            .get(&format!("/panel/v1/accounts?q={q}"), Some(&viewer))
            .await;
        assert_eq!(
            r.json["data"][0]["id"],
            account.as_str(),
            "{q}: {:?}",
            r.json
        );
    }
    // Wildcards are text: `%` finds nothing here.
    let r = h.get("/panel/v1/accounts?q=%25", Some(&viewer)).await;
    assert_eq!(
        r.json["data"].as_array().map(Vec::len),
        Some(0),
        "{:?}",
        r.json
    );
    for q in ["", "%00"] {
        let r = h
            .get(&format!("/panel/v1/accounts?q={q}"), Some(&viewer))
            .await;
        r.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_query");
    }
    let r = h
        .get(&format!("/panel/v1/accounts/{account}"), Some(&viewer))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(r.json["account"]["email"], "whole.view@example.com");
    assert_eq!(r.json["subscriptions"][0]["plan"], "pro");
    assert_eq!(r.json["payment_methods"].as_array().map(Vec::len), Some(1));
    assert_eq!(r.json["invoices"][0]["status"], "paid");
    assert_eq!(r.json["decisions"]["bundle_version"], 1);
    assert!(r.json["usage"].is_object(), "{:?}", r.json["usage"]);
    // An unknown account: 404.
    let r = h
        .get(
            &format!("/panel/v1/accounts/{}", uuid::Uuid::now_v7()),
            Some(&viewer),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    h.finish().await;
}

#[tokio::test]
async fn a_credit_is_applied_to_the_next_invoice_and_a_retry_charges_at_once() {
    let h = Harness::new().await;
    let (account, token) = customer(&h, "credited@example.com").await;
    h.failing_renewal_customer("failing@example.com").await;
    let admin = agent(&h, "b@support.example", "billing_admin").await;
    let support = agent(&h, "s@support.example", "support").await;
    let path = format!("/panel/v1/accounts/{account}/credits");
    for (body, code) in [
        (
            r#"{"reason":"outage","amount_minor":0,"currency":"USD"}"#,
            "invalid_amount",
        ),
        (
            r#"{"reason":"outage","amount_minor":-5,"currency":"USD"}"#,
            "invalid_amount",
        ),
        (
            r#"{"reason":"outage","amount_minor":9223372036854775807,"currency":"USD"}"#,
            "invalid_amount",
        ),
    ] {
        let r = h.post(&path, Some(&admin), Some(body), body).await;
        r.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, code);
    }
    let r = h
        .post(
            &path,
            Some(&support),
            Some("c0"),
            r#"{"reason":"outage","amount_minor":1000,"currency":"USD"}"#,
        )
        .await;
    r.assert_problem(StatusCode::FORBIDDEN, "forbidden_for_role");
    // Credit in a currency the account is not billed in would never be applied: refused.
    let r = h
        .post(
            &path,
            Some(&admin),
            Some("c-eur"),
            r#"{"reason":"outage","amount_minor":1000,"currency":"EUR"}"#,
        )
        .await;
    r.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "currency_mismatch");
    let grant = r#"{"reason":"outage on the 3rd","amount_minor":1000,"currency":"USD"}"#;
    let r = h.post(&path, Some(&admin), Some("c1"), grant).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    assert_eq!(r.json["credit_held_minor"], 1000);
    // Sent again under its key: the same grant, not a second one.
    let again = h.post(&path, Some(&admin), Some("c1"), grant).await;
    assert_eq!(again.json, r.json);
    let (n,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM agent_actions WHERE action = 'account.credit'")
            .fetch_one(&h.state.billing)
            .await
            .expect("audit");
    assert_eq!(n, 1, "audited once, in billing_prod");
    // Another account's id that does not exist: 404, nothing booked.
    let r = h
        .post(
            &format!("/panel/v1/accounts/{}/credits", uuid::Uuid::now_v7()),
            Some(&admin),
            Some("c2"),
            grant,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // The renewal applies it.
    h.advance_to(common::t(2026, 2, 15, 13, 5)).await;
    let inv = h.get("/v1/invoices", Some(&token)).await;
    let renewal = &inv.json["data"][0];
    assert_eq!(renewal["credit_applied_minor"], 1000, "{renewal:?}");
    assert_eq!(renewal["amount_due_minor"], 1900, "{renewal:?}");

    // The other renewal failed: its retry is due tomorrow; a support agent retries now.
    let (invoice, attempts_before): (uuid::Uuid, i64) = sqlx::query_as(
        "SELECT c.invoice_id, (SELECT count(*) FROM charge_attempts a WHERE a.invoice_id = c.invoice_id)
         FROM dunning_cases c",
    )
    .fetch_one(&h.state.billing)
    .await
    .expect("case");
    let r = h
        .post(
            &format!("/panel/v1/invoices/{invoice}/retry"),
            Some(&support),
            Some("retry-1"),
            r#"{"reason":"customer says the card works now"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    h.advance_to(common::t(2026, 2, 15, 13, 7)).await;
    let (attempts_after,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM charge_attempts WHERE invoice_id = $1")
            .bind(invoice)
            .fetch_one(&h.state.billing)
            .await
            .expect("attempts");
    assert_eq!(
        attempts_after,
        attempts_before + 1,
        "charged at once, not tomorrow"
    );
    // An invoice without a case: 404.
    let r = h
        .post(
            &format!("/panel/v1/invoices/{}/retry", uuid::Uuid::now_v7()),
            Some(&support),
            Some("retry-2"),
            r#"{"reason":"typo"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    h.finish().await;
}

#[tokio::test]
async fn a_trial_extended_by_an_agent_is_charged_later() {
    let h = Harness::new().await;
    let (_, token) = h.sign_up("trial@example.com").await;
    h.add_card(&token, "pm_card_visa").await;
    let r = h
        .post(
            "/v1/checkout",
            Some(&token),
            Some("trial"),
            r#"{"plan":"pro","trial":true}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    let sub = r.str("/subscription/id");
    assert_eq!(
        r.json["subscription"]["current_period_end"],
        "2026-01-29T12:00:00Z"
    );
    h.settle().await;
    let support = agent(&h, "s@support.example", "support").await;
    let viewer = agent(&h, "v@support.example", "viewer").await;
    let path = format!("/panel/v1/subscriptions/{sub}/extend-trial");
    let body = r#"{"reason":"onboarding took longer","days":7}"#;
    h.post(&path, Some(&viewer), Some("x"), body)
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden_for_role");
    for bad in [
        r#"{"reason":"r!!","days":0}"#,
        r#"{"reason":"r!!","days":91}"#,
    ] {
        h.post(&path, Some(&support), Some(bad), bad)
            .await
            .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_days");
    }
    let r = h.post(&path, Some(&support), Some("extend"), body).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(r.json["current_period_end"], "2026-02-05T12:00:00Z");
    // Replayed under its key: extended once.
    let again = h.post(&path, Some(&support), Some("extend"), body).await;
    assert_eq!(again.json["current_period_end"], "2026-02-05T12:00:00Z");
    // Nothing is charged at the old end; the new end charges the first period.
    h.advance_to(common::t(2026, 1, 30, 13, 10)).await;
    let inv = h.get("/v1/invoices", Some(&token)).await;
    let paid = |j: &serde_json::Value| {
        j["data"]
            .as_array()
            .map(|l| {
                l.iter()
                    .filter(|i| i["status"] == "paid" && i["amount_due_minor"].as_i64() > Some(0))
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(paid(&inv.json), 0, "{:?}", inv.json);
    h.advance_to(common::t(2026, 2, 5, 13, 10)).await;
    let inv = h.get("/v1/invoices", Some(&token)).await;
    assert_eq!(paid(&inv.json), 1, "{:?}", inv.json);
    // Not trialing any more: refused.
    h.post(&path, Some(&support), Some("extend-2"), body)
        .await
        .assert_problem(StatusCode::CONFLICT, "not_trialing");
    h.finish().await;
}

#[tokio::test]
async fn an_invoice_refunded_by_an_agent_is_booked_once_even_when_the_provider_tells_it_again() {
    let h = Harness::new().await;
    let (account, token) = customer(&h, "refund@example.com").await;
    h.advance_to(common::t(2026, 2, 15, 13, 5)).await;
    let inv = h.get("/v1/invoices", Some(&token)).await;
    let renewal = inv.json["data"][0]["id"].as_str().expect("id").to_owned();
    let first = inv.json["data"][1]["id"].as_str().expect("id").to_owned();
    let admin = agent(&h, "b@support.example", "billing_admin").await;
    let support = agent(&h, "s@support.example", "support").await;
    let path = format!("/panel/v1/invoices/{renewal}/refund");
    h.post(
        &path,
        Some(&support),
        Some("r0"),
        r#"{"reason":"duplicate charge"}"#,
    )
    .await
    .assert_problem(StatusCode::FORBIDDEN, "forbidden_for_role");
    for (key, bad) in [
        ("bad-1", r#"{"reason":"too much","amount_minor":2901}"#),
        ("bad-2", r#"{"reason":"negative","amount_minor":-1}"#),
    ] {
        h.post(&path, Some(&admin), Some(key), bad)
            .await
            .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_amount");
    }
    // The first invoice was paid on-session at checkout: refunded to that payment.
    let r = h
        .post(
            &format!("/panel/v1/invoices/{first}/refund"),
            Some(&admin),
            Some("r-first"),
            r#"{"reason":"goodwill","amount_minor":400}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(
        (
            r.json["amount_minor"].as_i64(),
            r.json["processor"].as_str()
        ),
        (Some(400), Some("simulated"))
    );

    let partial = r#"{"reason":"charged for a seat never used","amount_minor":900}"#;
    let r = h.post(&path, Some(&admin), Some("r1"), partial).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(r.json["amount_minor"], 900);
    let again = h.post(&path, Some(&admin), Some("r1"), partial).await;
    assert_eq!(again.json, r.json, "a repeat is the same refund");
    let account_id: tollgate_control_plane::ids::AccountId = account.parse().expect("id");
    let refunds = || async {
        let mut conn = h.state.billing.acquire().await.expect("conn");
        tollgate_control_plane::ledger::balance(
            &mut conn,
            account_id,
            &tollgate_control_plane::ledger::LedgerAccount::Refunds,
            tollgate_control_plane::money::Currency::USD,
        )
        .await
        .expect("balance")
    };
    assert_eq!(refunds().await, 400 + 900);
    // The provider's webhook about the same refund books nothing more.
    let (pi,): (String,) = sqlx::query_as(
        "SELECT provider_payment_id FROM charge_attempts WHERE status = 'succeeded'",
    )
    .fetch_one(&h.state.billing)
    .await
    .expect("payment");
    tollgate_control_plane::billing::provider_payments::record_refunds(&h.state, &pi)
        .await
        .expect("record");
    assert_eq!(refunds().await, 400 + 900);
    // The rest; then nothing is left to refund at the provider.
    let r = h
        .post(
            &path,
            Some(&admin),
            Some("r2"),
            r#"{"reason":"the rest","amount_minor":2000}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(refunds().await, 400 + 2900);
    let r = h
        .post(
            &path,
            Some(&admin),
            Some("r3"),
            r#"{"reason":"once more","amount_minor":1}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.json);
    assert_eq!(refunds().await, 400 + 2900);
    h.finish().await;
}

#[tokio::test]
async fn a_billing_admin_contests_or_accepts_a_dispute_at_the_provider() {
    let h = Harness::new().await;
    let (account, _) = customer(&h, "disputed@example.com").await;
    let (pi,): (String,) =
        sqlx::query_as("SELECT payment_intent_id FROM checkouts WHERE status = 'succeeded'")
            .fetch_one(&h.state.cf)
            .await
            .expect("payment");
    let sim = h.state.simulator.as_deref().expect("simulator");
    let a = sim
        .open_dispute(&pi, "fraudulent", false)
        .await
        .expect("dispute");
    tollgate_control_plane::disputes::refresh(&h.state, "simulated", &a.id, "test")
        .await
        .expect("applied");
    let admin = agent(&h, "b@support.example", "billing_admin").await;
    let viewer = agent(&h, "v@support.example", "viewer").await;
    let list = h
        .get("/panel/v1/disputes?status=needs_response", Some(&viewer))
        .await;
    let d = &list.json["data"][0];
    assert_eq!(d["account_id"], account.as_str(), "{:?}", list.json);
    let id = d["id"].as_str().expect("id").to_owned();
    let path = format!("/panel/v1/disputes/{id}/resolve");
    h.post(
        &path,
        Some(&admin),
        Some("c0"),
        r#"{"reason":"we delivered","resolution":"contest"}"#,
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "evidence_required");
    let contest = r#"{"reason":"we delivered","resolution":"contest","evidence":"Login logs from the cardholder's device after the purchase."}"#;
    let r = h.post(&path, Some(&admin), Some("c1"), contest).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(r.json["status"], "under_review");
    let again = h.post(&path, Some(&admin), Some("c1"), contest).await;
    assert_eq!(again.json, r.json);
    let (_, history) = tollgate_control_plane::disputes::find(&h.state, "simulated", &a.id)
        .await
        .expect("read")
        .expect("dispute");
    assert_eq!(history.last().expect("event").1, "agent:b@support.example");
    // The issuer sides with the cardholder: lost; answering it again is refused.
    sim.update_dispute(&a.id, tollgate_control_plane::disputes::DisputeStatus::Lost)
        .await
        .expect("lost");
    tollgate_control_plane::disputes::refresh(&h.state, "simulated", &a.id, "test")
        .await
        .expect("applied");
    h.post(
        &path,
        Some(&admin),
        Some("c2"),
        r#"{"reason":"too late","resolution":"accept"}"#,
    )
    .await
    .assert_problem(StatusCode::CONFLICT, "dispute_closed");
    h.post(
        &format!("/panel/v1/disputes/{}/resolve", uuid::Uuid::now_v7()),
        Some(&admin),
        Some("c3"),
        r#"{"reason":"typo","resolution":"accept"}"#,
    )
    .await
    .assert_problem(StatusCode::NOT_FOUND, "not_found");
    h.finish().await;
}

#[tokio::test]
async fn an_agent_cancels_a_subscription_now_and_the_edge_loses_the_plan() {
    let h = Harness::new().await;
    stable_demo(&h).await;
    let (account, token) = customer(&h, "cancel@example.com").await;
    let subs = h.get("/v1/subscriptions", Some(&token)).await;
    let sub = subs.json["data"][0]["id"].as_str().expect("id").to_owned();
    let support = agent(&h, "s@support.example", "support").await;
    let path = format!("/panel/v1/subscriptions/{sub}/cancel");
    let body = r#"{"reason":"customer asked by phone","at_period_end":false}"#;
    let r = h.post(&path, Some(&support), Some("cancel-1"), body).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(r.json["subscription"]["status"], "canceled");
    assert_eq!(r.json["refund"], serde_json::Value::Null);
    let again = h.post(&path, Some(&support), Some("cancel-1"), body).await;
    assert_eq!(again.json, r.json, "replayed, not a 409");
    h.post(&path, Some(&support), Some("cancel-2"), body)
        .await
        .assert_problem(StatusCode::CONFLICT, "subscription_canceled");
    h.settle().await;
    let d = decision(&h, &account, "sso").await;
    assert_eq!(d["allowed"], false, "{d}");
    let (action, reason): (String, String) = sqlx::query_as(
        "SELECT action, reason FROM agent_actions WHERE action = 'subscription.cancel'",
    )
    .fetch_one(&h.state.cf)
    .await
    .expect("audit");
    assert_eq!(
        (action.as_str(), reason.as_str()),
        ("subscription.cancel", "customer asked by phone")
    );
    h.finish().await;
}

#[tokio::test]
async fn the_same_refund_twice_at_once_refunds_once_and_racing_refunds_never_pass_the_payment() {
    let h = Harness::new().await;
    let (account, token) = customer(&h, "race@example.com").await;
    h.advance_to(common::t(2026, 2, 15, 13, 5)).await;
    let inv = h.get("/v1/invoices", Some(&token)).await;
    let renewal = inv.json["data"][0]["id"].as_str().expect("id").to_owned();
    let admin = agent(&h, "b@support.example", "billing_admin").await;
    let path = format!("/panel/v1/invoices/{renewal}/refund");
    let send = |key: &'static str, body: &'static str| {
        let (h, path, admin) = (&h, path.clone(), admin.clone());
        async move { h.post(&path, Some(&admin), Some(key), body).await }
    };
    let body = r#"{"reason":"double charge","amount_minor":1000}"#;
    let (a, b) = tokio::join!(send("same", body), send("same", body));
    assert_eq!(
        (a.status, b.status),
        (StatusCode::OK, StatusCode::OK),
        "{:?} {:?}",
        a.json,
        b.json
    );
    assert_eq!(
        a.json["refund_id"], b.json["refund_id"],
        "one provider refund"
    );
    let account_id: tollgate_control_plane::ids::AccountId = account.parse().expect("id");
    let refunded = || async {
        let mut conn = h.state.billing.acquire().await.expect("conn");
        tollgate_control_plane::ledger::balance(
            &mut conn,
            account_id,
            &tollgate_control_plane::ledger::LedgerAccount::Refunds,
            tollgate_control_plane::money::Currency::USD,
        )
        .await
        .expect("balance")
    };
    assert_eq!(refunded().await, 1000, "booked once");
    // Two different refunds of 1,500 race for the 1,900 left: one passes, one is refused.
    let big = r#"{"reason":"the rest","amount_minor":1500}"#;
    let (c, d) = tokio::join!(send("rest-1", big), send("rest-2", big));
    let ok = [c.status, d.status]
        .iter()
        .filter(|s| **s == StatusCode::OK)
        .count();
    assert_eq!(ok, 1, "{:?} {:?}", c.json, d.json);
    assert_eq!(refunded().await, 2500);
    h.finish().await;
}

fn ledger(
    h: &Harness,
    account: &str,
    of: tollgate_control_plane::ledger::LedgerAccount,
) -> impl std::future::Future<Output = i64> {
    let account: tollgate_control_plane::ids::AccountId = account.parse().expect("id");
    let pool = h.state.billing.clone();
    async move {
        let mut conn = pool.acquire().await.expect("conn");
        tollgate_control_plane::ledger::balance(
            &mut conn,
            account,
            &of,
            tollgate_control_plane::money::Currency::USD,
        )
        .await
        .expect("balance")
    }
}

#[tokio::test]
async fn a_voided_invoice_is_owed_no_more_and_its_subscription_is_active_again() {
    use tollgate_control_plane::ledger::LedgerAccount;
    let h = Harness::new().await;
    let (account, token) = h.failing_renewal_customer("void@example.com").await;
    let account = account.to_string();
    h.advance_to(common::t(2026, 2, 15, 13, 5)).await;
    let subs = h.get("/v1/subscriptions", Some(&token)).await;
    assert_eq!(subs.json["data"][0]["status"], "past_due");
    let inv = h.get("/v1/invoices", Some(&token)).await;
    let renewal = inv.str("/data/0/id");
    let first = inv.str("/data/1/id");
    assert_eq!(ledger(&h, &account, LedgerAccount::Receivable).await, 2900);
    let admin = agent(&h, "b@support.example", "billing_admin").await;
    let support = agent(&h, "s@support.example", "support").await;
    let path = format!("/panel/v1/invoices/{renewal}/void");
    let body = r#"{"reason":"billed after the customer had asked to cancel"}"#;
    h.post(&path, Some(&support), Some("v0"), body)
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden_for_role");
    h.post(&path, Some(&admin), Some("v-none"), "{}")
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "reason_required");
    let (r, twin) = tokio::join!(
        h.post(&path, Some(&admin), Some("v1"), body),
        h.post(&path, Some(&admin), Some("v1"), body)
    );
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(twin.json, r.json, "the same void twice at once is one void");
    assert_eq!(r.json["status"], "void");
    let again = h.post(&path, Some(&admin), Some("v1"), body).await;
    assert_eq!(again.json, r.json, "a repeat is the same void");
    h.post(&path, Some(&admin), Some("v2"), body)
        .await
        .assert_problem(StatusCode::CONFLICT, "invoice_void");
    // A paid invoice is refunded, not voided.
    h.post(
        &format!("/panel/v1/invoices/{first}/void"),
        Some(&admin),
        Some("v3"),
        body,
    )
    .await
    .assert_problem(StatusCode::CONFLICT, "invoice_paid");
    h.settle().await;
    // Nothing is owed, dunning is over, the subscription runs again, nothing charges it.
    assert_eq!(ledger(&h, &account, LedgerAccount::Receivable).await, 0);
    assert_eq!(ledger(&h, &account, LedgerAccount::Refunds).await, 2900);
    let acct = h.get("/v1/account", Some(&token)).await;
    assert_eq!(
        acct.json["dunning"],
        serde_json::Value::Null,
        "{:?}",
        acct.json
    );
    assert_eq!(acct.json["status"], "active", "{:?}", acct.json);
    let subs = h.get("/v1/subscriptions", Some(&token)).await;
    assert_eq!(subs.json["data"][0]["status"], "active");
    let tries = || async {
        let (n,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM charge_attempts WHERE invoice_id = $1::uuid")
                .bind(&renewal)
                .fetch_one(&h.state.billing)
                .await
                .expect("count");
        n
    };
    let before = tries().await;
    h.advance_to(common::t(2026, 2, 16, 13, 5)).await;
    h.advance_to(common::t(2026, 2, 17, 13, 5)).await;
    assert_eq!(tries().await, before, "a void invoice is never retried");
    let shown = h
        .get(&format!("/v1/invoices/{renewal}"), Some(&token))
        .await;
    assert_eq!(shown.json["status"], "void");
    // Audited in billing_prod with the effect, and told to the account's webhooks.
    let (action, after): (String, serde_json::Value) =
        sqlx::query_as("SELECT action, after FROM agent_actions WHERE action = 'invoice.void'")
            .fetch_one(&h.state.billing)
            .await
            .expect("audit");
    assert_eq!(
        (action.as_str(), &after["status"]),
        ("invoice.void", &serde_json::json!("void"))
    );
    assert_eq!(
        h.count("SELECT count(*) FROM lifecycle_events WHERE type = 'invoice.voided'")
            .await,
        1
    );
    h.finish().await;
}

#[tokio::test]
async fn a_cancel_with_a_prorated_refund_returns_the_unused_share_once() {
    use tollgate_control_plane::ledger::LedgerAccount;
    let h = Harness::new().await;
    let (account, token) = customer(&h, "prorated@example.com").await;
    let sub = h
        .get("/v1/subscriptions", Some(&token))
        .await
        .str("/data/0/id");
    // Period 15 Jan 12:00 – 15 Feb 12:00 (31 days); canceled 10 days in: 21 of 31 days left,
    // 2900 × 21/31 = 1964.5 → 1964.
    h.advance_to(common::t(2026, 1, 25, 12, 0)).await;
    let admin = agent(&h, "b@support.example", "billing_admin").await;
    let support = agent(&h, "s@support.example", "support").await;
    let path = format!("/panel/v1/subscriptions/{sub}/cancel");
    let body = r#"{"reason":"service outage all week","at_period_end":false,"refund":"prorated"}"#;
    h.post(&path, Some(&support), Some("c0"), body)
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden_for_role");
    h.post(
        &path,
        Some(&admin),
        Some("c-later"),
        r#"{"reason":"at the end","at_period_end":true,"refund":"prorated"}"#,
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "refund_needs_cancel_now");
    let (a, b) = tokio::join!(
        h.post(&path, Some(&admin), Some("c1"), body),
        h.post(&path, Some(&admin), Some("c1"), body)
    );
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.json);
    assert_eq!(
        b.json, a.json,
        "the same request twice at once is one cancel and one refund"
    );
    assert_eq!(a.json["subscription"]["status"], "canceled");
    assert_eq!(a.json["refund"]["amount_minor"], 1964);
    h.advance_to(common::t(2026, 1, 26, 12, 0)).await;
    let later = h.post(&path, Some(&admin), Some("c1"), body).await;
    assert_eq!(
        later.json, a.json,
        "a replay a day later answers the same, refunds nothing more"
    );
    assert_eq!(ledger(&h, &account, LedgerAccount::Refunds).await, 1964);
    let cash = LedgerAccount::cash("simulated").expect("cash");
    assert_eq!(ledger(&h, &account, cash).await, 2900 - 1964);
    // Both writes audited: the cancel in cf, the refund in billing_prod.
    assert_eq!(
        h.count("SELECT count(*) FROM agent_actions WHERE action = 'subscription.cancel'")
            .await,
        1
    );
    let (n,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM agent_actions WHERE action = 'invoice.refund'")
            .fetch_one(&h.state.billing)
            .await
            .expect("count");
    assert_eq!(n, 1);
    h.finish().await;
}

#[tokio::test]
async fn an_agent_changes_a_plan_and_the_proration_is_collected_off_session() {
    let h = Harness::new().await;
    let (_, token) = customer(&h, "agentchange@example.com").await;
    let sub = h
        .get("/v1/subscriptions", Some(&token))
        .await
        .str("/data/0/id");
    h.advance_to(common::t(2026, 1, 30, 12, 0)).await;
    let viewer = agent(&h, "v@support.example", "viewer").await;
    let support = agent(&h, "s@support.example", "support").await;
    let path = format!("/panel/v1/subscriptions/{sub}/change");
    let body = r#"{"reason":"sales agreed an upgrade by phone","plan":"enterprise"}"#;
    h.post(&path, Some(&viewer), Some("ch0"), body)
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden_for_role");
    h.post(
        &path,
        Some(&support),
        Some("ch-bad"),
        r#"{"reason":"typo","plan":"platinum"}"#,
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "unknown_plan");
    let (r, twin) = tokio::join!(
        h.post(&path, Some(&support), Some("ch1"), body),
        h.post(&path, Some(&support), Some("ch1"), body)
    );
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(
        twin.json, r.json,
        "the same change twice at once is one change"
    );
    assert_eq!(r.json["subscription"]["plan"], "enterprise");
    // The same proration as the customer's own change (see billing.rs), owed, not yet charged.
    assert_eq!(r.json["invoice"]["total_minor"], 8774);
    assert_eq!(r.json["invoice"]["status"], "open");
    let again = h.post(&path, Some(&support), Some("ch1"), body).await;
    assert_eq!(again.json, r.json, "a repeat is the same change");
    h.post(&path, Some(&support), Some("ch2"), body)
        .await
        .assert_problem(StatusCode::CONFLICT, "same_plan");
    // Charged off-session once the on-session window passed.
    h.advance_to(common::t(2026, 1, 30, 12, 31)).await;
    let inv = h
        .get(
            &format!("/v1/invoices/{}", r.str("/invoice/id")),
            Some(&token),
        )
        .await;
    assert_eq!(inv.json["status"], "paid", "{:?}", inv.json);
    let (before, after): (serde_json::Value, serde_json::Value) = sqlx::query_as(
        "SELECT before, after FROM agent_actions WHERE action = 'subscription.change'",
    )
    .fetch_one(&h.state.cf)
    .await
    .expect("audit");
    assert_eq!(
        (&before["plan"], &after["plan"]),
        (&serde_json::json!("pro"), &serde_json::json!("enterprise"))
    );
    h.finish().await;
}
