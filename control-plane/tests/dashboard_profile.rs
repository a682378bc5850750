//! The Dashboard's account profile, billing contacts, API tokens and payment-method management
//! over the real router and PostgreSQL: what a customer changes, what is refused (with its
//! problem code, nothing written), and that another account's ids answer 404.

mod common;

use axum::http::{Method, StatusCode};
use common::{Harness, t};

#[tokio::test]
async fn the_profile_is_patched_field_by_field_and_bad_values_change_nothing() {
    let h = Harness::new().await;
    let (_, token) = h.sign_up("profile@example.com").await;
    let patch = |body: &'static str| {
        let token = token.clone();
        let h = &h;
        async move {
            h.call(Method::PATCH, "/v1/account", Some(&token), None, Some(body))
                .await
        }
    };
    let r = patch(
        r#"{"name":"Ada Lovelace Ltd","billing_address":{"line1":"1 Analytical Way","city":"London","postal_code":"N1 9GU","country":"GB"},"tax_id":"GB123456789"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(r.json["name"], "Ada Lovelace Ltd");
    assert_eq!(r.json["billing_address"]["country"], "GB");
    assert_eq!(r.json["tax_id"], "GB123456789");
    assert_eq!(r.json["email"], "profile@example.com", "untouched");
    // Refused: an empty name, a bad country, an unknown field, a bad email, a control char.
    for body in [
        r#"{"name":""}"#,
        r#"{"billing_address":{"line1":"x","city":"y","country":"gb"}}"#,
        r#"{"email":"not-an-address"}"#,
        r#"{"name":"a\u0000b"}"#,
        r#"{"tax_id":"<script>"}"#,
    ] {
        let r = patch(body).await;
        r.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_account");
    }
    let r = patch(r#"{"nickname":"x"}"#).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.json);
    // `null` clears; absent keeps.
    let r = patch(r#"{"tax_id":null,"email":"billing@ada.example"}"#).await;
    assert!(r.json["tax_id"].is_null(), "{:?}", r.json);
    assert_eq!(r.json["billing_address"]["city"], "London");
    let me = h.get("/v1/account", Some(&token)).await;
    assert_eq!(me.json["email"], "billing@ada.example");
    assert_eq!(me.json["name"], "Ada Lovelace Ltd");
    h.finish().await;
}

#[tokio::test]
async fn billing_contacts_get_the_dunning_emails_instead_of_the_account_address() {
    let h = Harness::new().await;
    let (account, token) = h.failing_renewal_customer("owner@example.com").await;
    let r = h
        .post(
            "/v1/account/contacts",
            Some(&token),
            None,
            r#"{"email":"ap@example.com","name":"Accounts payable"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    let contact = r.str("/id");
    let r = h
        .post(
            "/v1/account/contacts",
            Some(&token),
            None,
            r#"{"email":"AP@example.com"}"#,
        )
        .await;
    r.assert_problem(StatusCode::CONFLICT, "contact_exists");
    let r = h
        .post(
            "/v1/account/contacts",
            Some(&token),
            None,
            r#"{"email":"nope"}"#,
        )
        .await;
    r.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_contact");
    let r = h
        .post(
            "/v1/account/contacts",
            Some(&token),
            None,
            r#"{"email":"x@example.com","name":"a\u0000b"}"#,
        )
        .await;
    r.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_contact");
    h.post(
        "/v1/account/contacts",
        Some(&token),
        None,
        r#"{"email":"cfo@example.com"}"#,
    )
    .await;
    let list = h.get("/v1/account/contacts", Some(&token)).await;
    assert_eq!(list.json["data"].as_array().map(Vec::len), Some(2));

    // The renewal fails: its email goes to both contacts, not the account's own address.
    h.advance_to(t(2026, 2, 15, 13, 5)).await;
    let emails = tollgate_control_plane::mail::of_account(&h.state, account)
        .await
        .expect("emails");
    let to: std::collections::BTreeSet<&str> =
        emails.iter().map(|e| e.to_address.as_str()).collect();
    assert_eq!(
        to,
        ["ap@example.com", "cfo@example.com"].into_iter().collect(),
        "{emails:?}"
    );

    // Another account cannot remove it; the owner can, once.
    let (_, other) = h.sign_up("other@example.com").await;
    let path = format!("/v1/account/contacts/{contact}");
    let r = h
        .call(Method::DELETE, &path, Some(&other), None, None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = h
        .call(Method::DELETE, &path, Some(&token), None, None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = h
        .call(Method::DELETE, &path, Some(&token), None, None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    h.finish().await;
}

#[tokio::test]
async fn a_customer_lists_makes_and_revokes_its_own_api_tokens() {
    let h = Harness::new().await;
    let (_, token) = h.sign_up("tokens@example.com").await;
    let r = h
        .post("/v1/tokens", Some(&token), None, r#"{"label":"ci"}"#)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    let second = r.str("/api_token");
    let second_id = r.str("/token/id");
    assert_eq!(r.json["token"]["label"], "ci");
    // The new token works; the list shows both without secrets.
    let me = h.get("/v1/account", Some(&second)).await;
    assert_eq!(me.status, StatusCode::OK);
    let list = h.get("/v1/tokens", Some(&token)).await;
    let tokens = list.json["data"].as_array().expect("list");
    assert_eq!(tokens.len(), 2);
    assert!(
        !list.json.to_string().contains(&second),
        "secrets are never listed"
    );
    // Another account cannot revoke it.
    let (_, other) = h.sign_up("other@example.com").await;
    let path = format!("/v1/tokens/{second_id}");
    let r = h
        .call(Method::DELETE, &path, Some(&other), None, None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = h
        .call(Method::DELETE, &path, Some(&token), None, None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert!(r.json["revoked_at"].is_string());
    let me = h.get("/v1/account", Some(&second)).await;
    me.assert_problem(StatusCode::UNAUTHORIZED, "invalid_token");
    let r = h
        .post("/v1/tokens", Some(&token), None, r#"{"label":""}"#)
        .await;
    r.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_token_label");
    h.finish().await;
}

#[tokio::test]
async fn the_default_moves_and_the_last_method_of_a_paid_plan_is_kept() {
    let h = Harness::new().await;
    let (_, token) = h.sign_up("methods@example.com").await;
    let first = h.add_card(&token, "pm_card_visa").await;
    let r = h
        .post(
            "/v1/checkout",
            Some(&token),
            Some("buy"),
            r#"{"plan":"pro"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    // The only method of a paid plan cannot go.
    let r = h
        .call(
            Method::DELETE,
            &format!("/v1/payment-methods/{first}"),
            Some(&token),
            None,
            None,
        )
        .await;
    r.assert_problem(StatusCode::CONFLICT, "payment_method_in_use");
    let second = h.add_card(&token, "pm_card_mastercard").await;
    let r = h
        .post(
            &format!("/v1/payment-methods/{second}/default"),
            Some(&token),
            None,
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(r.json["default_payment_method_id"], second.as_str());
    // Removing the default moves it to the other ready method.
    let r = h
        .call(
            Method::DELETE,
            &format!("/v1/payment-methods/{second}"),
            Some(&token),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(r.json["default_payment_method_id"], first.as_str());
    assert_eq!(r.json["data"].as_array().map(Vec::len), Some(1));
    // Gone: not the default again, not removed twice; another account's id is 404.
    let r = h
        .post(
            &format!("/v1/payment-methods/{second}/default"),
            Some(&token),
            None,
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let (_, other) = h.sign_up("other@example.com").await;
    let r = h
        .post(
            &format!("/v1/payment-methods/{first}/default"),
            Some(&other),
            None,
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = h
        .call(
            Method::DELETE,
            &format!("/v1/payment-methods/{first}"),
            Some(&other),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // The renewal is charged to the remaining card.
    h.settle().await;
    h.advance_to(t(2026, 2, 15, 13, 5)).await;
    let inv = h.get("/v1/invoices", Some(&token)).await;
    assert_eq!(inv.json["data"][0]["status"], "paid", "{:?}", inv.json);
    h.finish().await;
}
