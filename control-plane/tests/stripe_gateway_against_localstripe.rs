//! The Stripe adapter (async-stripe) against real localstripe, started by `scripts/test`
//! (`scripts/localstripe-serve.py`) at `TOLLGATE_TEST_STRIPE_API_BASE`: every trait method,
//! 3-D Secure on set-up and payment, declines, idempotent replays and error mapping.
use tollgate_control_plane::gateways::stripe::StripeGateway;
use tollgate_control_plane::gateways::*;

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{tag}-{nanos}")
}

async fn authenticate(base: &str, path: &str, secret: &str) {
    // minimal HTTP/1.1 POST over tokio, to avoid another HTTP client dependency
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hostport = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = tokio::net::TcpStream::connect(hostport)
        .await
        .expect("connect");
    let body = format!("client_secret={secret}");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: Bearer sk_test_123\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    assert!(
        out.starts_with("HTTP/1.1 200"),
        "authenticate failed: {out}"
    );
}

#[tokio::test]
async fn stripe_adapter_handles_every_flow_against_localstripe() {
    let base = std::env::var("TOLLGATE_TEST_STRIPE_API_BASE").expect(
        "TOLLGATE_TEST_STRIPE_API_BASE must point at localstripe: run the suite with scripts/test",
    );
    let gw = StripeGateway::new("sk_test_123", Some(&base)).expect("gateway");
    assert_eq!(gw.name(), "stripe");

    // customer + idempotent replay
    let key = unique("acct");
    let cus = gw
        .create_customer("a@example.com", "Alice", &key)
        .await
        .expect("customer");
    let again = gw
        .create_customer("a@example.com", "Alice", &key)
        .await
        .expect("customer 2");
    assert_eq!(cus, again, "idempotent replay returns the same customer");
    println!("customer {}", cus.id);

    // set-up: visa
    let visa = gw
        .setup_payment_method(&cus.id, "pm_card_visa", &unique("pm"))
        .await
        .expect("setup visa");
    println!("setup visa {visa:?}");
    assert_eq!(visa.status, SetupStatus::Succeeded);
    assert!(visa.payment_method_id.starts_with("pm_") && visa.payment_method_id != "pm_card_visa");
    assert_eq!(visa.card.last4.as_deref(), Some("4242"));
    assert_eq!(visa.card.brand.as_deref(), Some("visa"));
    assert_eq!(visa.card.exp_month, Some(12));

    let mc = gw
        .setup_payment_method(&cus.id, "pm_card_mastercard", &unique("pm"))
        .await
        .expect("setup mc");
    assert_eq!(mc.status, SetupStatus::Succeeded);
    assert_eq!(mc.card.brand.as_deref(), Some("mastercard"));

    // set-up: 3DS -> requires_action -> authenticate -> succeeded
    let tds = gw
        .setup_payment_method(&cus.id, "pm_card_threeDSecure2Required", &unique("pm"))
        .await
        .expect("setup 3ds");
    println!("setup 3ds {tds:?}");
    let SetupStatus::RequiresAction { client_secret } = &tds.status else {
        panic!("{tds:?}")
    };
    assert_eq!(tds.card.last4.as_deref(), Some("3220"));
    authenticate(
        &base,
        &format!(
            "/v1/setup_intents/{}/_authenticate?success=true",
            tds.setup_intent_id
        ),
        client_secret,
    )
    .await;
    let tds_done = gw
        .retrieve_setup(&tds.setup_intent_id)
        .await
        .expect("retrieve setup");
    println!("setup 3ds after auth {tds_done:?}");
    assert_eq!(tds_done.status, SetupStatus::Succeeded);
    assert_eq!(tds_done.payment_method_id, tds.payment_method_id);

    // set-up: declined
    let declined = gw
        .setup_payment_method(&cus.id, "pm_card_chargeDeclined", &unique("pm"))
        .await
        .expect("setup declined");
    println!("setup declined {declined:?}");
    let SetupStatus::Failed(d) = &declined.status else {
        panic!("{declined:?}")
    };
    assert_eq!(d.code, "card_declined");
    assert_eq!(d.decline_code.as_deref(), Some("generic_decline"));
    assert!(declined.setup_intent_id.starts_with("seti_"));
    assert_eq!(declined.card.last4.as_deref(), Some("0002"));
    let declined_again = gw
        .retrieve_setup(&declined.setup_intent_id)
        .await
        .expect("retrieve declined");
    assert!(
        matches!(declined_again.status, SetupStatus::Failed(_)),
        "{declined_again:?}"
    );

    let amount = GatewayAmount {
        amount_minor: 2000,
        currency: "USD",
    };
    let pay = |pm: &'static str, presence, key: String| {
        let gw = gw.clone();
        let cus = cus.id.clone();
        async move {
            gw.create_payment(PaymentRequest {
                customer: &cus,
                payment_method: pm,
                amount,
                presence,
                idempotency_key: &key,
                description: "Tollgate test",
            })
            .await
        }
    };
    let visa_pm: &'static str = Box::leak(visa.payment_method_id.clone().into_boxed_str());
    let tds_pm: &'static str = Box::leak(tds.payment_method_id.clone().into_boxed_str());

    // off-session visa -> succeeded, replay -> same id
    let key = unique("co");
    let p = pay(visa_pm, Presence::OffSession, key.clone())
        .await
        .expect("pay visa");
    println!("pay visa {p:?}");
    assert_eq!(p.status, PaymentStatus::Succeeded);
    let p2 = pay(visa_pm, Presence::OffSession, key)
        .await
        .expect("pay visa replay");
    assert_eq!(p, p2);
    assert_eq!(
        gw.retrieve_payment(&p.payment_intent_id)
            .await
            .expect("retrieve"),
        p
    );

    // refund (twice with the same key -> same refund)
    let rkey = unique("refund");
    let r = gw
        .refund(&p.payment_intent_id, 500, &rkey)
        .await
        .expect("refund");
    let r2 = gw
        .refund(&p.payment_intent_id, 500, &rkey)
        .await
        .expect("refund replay");
    println!("refund {r:?}");
    assert_eq!(r, r2);
    assert_eq!(r.amount_minor, 500);
    // The provider lists it among the payment's refunds (how refunds made in Stripe's own
    // dashboard are found and booked).
    let listed = gw
        .refunds_of(&p.payment_intent_id)
        .await
        .expect("list refunds");
    assert_eq!(listed, vec![r.clone()], "{listed:?}");
    // A dispute id that is not Stripe's is refused before any call; one Stripe does not know
    // is not found (neither is mistaken for a dispute of ours).
    assert!(matches!(
        gw.retrieve_dispute("not-a-dispute").await,
        Err(GatewayError::Invalid(_))
    ));
    assert!(gw.retrieve_dispute("dp_unknown").await.is_err());

    // on-session 3DS -> requires_action -> authenticate -> succeeded
    let p = pay(tds_pm, Presence::OnSession, unique("co"))
        .await
        .expect("pay 3ds");
    println!("pay 3ds {p:?}");
    let PaymentStatus::RequiresAction { client_secret } = &p.status else {
        panic!("{p:?}")
    };
    authenticate(
        &base,
        &format!(
            "/v1/payment_intents/{}/_authenticate?success=true",
            p.payment_intent_id
        ),
        client_secret,
    )
    .await;
    let done = gw
        .retrieve_payment(&p.payment_intent_id)
        .await
        .expect("retrieve 3ds");
    assert_eq!(done.status, PaymentStatus::Succeeded);
    // cancel after success -> current state, not an error
    assert_eq!(
        gw.cancel_payment(&p.payment_intent_id)
            .await
            .expect("cancel succeeded")
            .status,
        PaymentStatus::Succeeded
    );

    // off-session 3DS -> authentication_required decline
    let p = pay(tds_pm, Presence::OffSession, unique("co"))
        .await
        .expect("pay 3ds off");
    println!("pay 3ds off-session {p:?}");
    let PaymentStatus::Failed(d) = &p.status else {
        panic!("{p:?}")
    };
    assert_eq!(d.code, "authentication_required");
    assert!(p.payment_intent_id.starts_with("pi_"));

    // declined charge (402) -> Ok(Failed) with the PI id
    let p = pay("pm_card_chargeDeclined", Presence::OnSession, unique("co"))
        .await
        .expect("pay declined");
    println!("pay declined {p:?}");
    let PaymentStatus::Failed(d) = &p.status else {
        panic!("{p:?}")
    };
    assert_eq!(d.code, "card_declined");
    assert_eq!(d.decline_code.as_deref(), Some("generic_decline"));
    assert!(p.payment_intent_id.starts_with("pi_"));
    let again = gw
        .retrieve_payment(&p.payment_intent_id)
        .await
        .expect("retrieve declined");
    assert!(
        matches!(again.status, PaymentStatus::Failed(_)),
        "{again:?}"
    );

    // attaches fine, charge declines
    let cf = gw
        .setup_payment_method(&cus.id, "pm_card_chargeCustomerFail", &unique("pm"))
        .await
        .expect("setup cf");
    assert_eq!(cf.status, SetupStatus::Succeeded);
    let cf_pm: &'static str = Box::leak(cf.payment_method_id.clone().into_boxed_str());
    let p = pay(cf_pm, Presence::OffSession, unique("co"))
        .await
        .expect("pay cf");
    assert!(matches!(p.status, PaymentStatus::Failed(_)), "{p:?}");

    // cancel a requires_action intent
    let p = pay(tds_pm, Presence::OnSession, unique("co"))
        .await
        .expect("pay 3ds 2");
    let c = gw
        .cancel_payment(&p.payment_intent_id)
        .await
        .expect("cancel");
    assert_eq!(c.status, PaymentStatus::Canceled);

    // errors
    let e = gw
        .retrieve_payment("pi_doesnotexist")
        .await
        .expect_err("404");
    assert!(matches!(e, GatewayError::NotFound(_)), "{e:?}");
    let e = gw.retrieve_setup("seti/../x").await.expect_err("bad id");
    assert!(matches!(e, GatewayError::Invalid(_)), "{e:?}");
    let e = gw
        .setup_payment_method(&cus.id, "pm_nope", &unique("pm"))
        .await
        .expect_err("unknown pm");
    assert!(matches!(e, GatewayError::NotFound(_)), "{e:?}");
    let e = gw
        .create_customer("x@example.com", "X", &cus.id.replace("cus_", ""))
        .await;
    assert!(e.is_ok());

    // idempotency key reused with different parameters -> Invalid
    let key = unique("acct");
    gw.create_customer("b@example.com", "Bob", &key)
        .await
        .expect("bob");
    let e = gw
        .create_customer("c@example.com", "Carol", &key)
        .await
        .expect_err("reuse");
    assert!(matches!(e, GatewayError::Invalid(_)), "{e:?}");

    // unreachable -> Unavailable
    let dead = StripeGateway::new("sk_test_123", Some("http://127.0.0.1:9")).expect("gw");
    let e = dead
        .create_customer("a@example.com", "A", "k")
        .await
        .expect_err("down");
    assert!(matches!(e, GatewayError::Unavailable(_)), "{e:?}");
    println!("unavailable: {e}");

    assert!(matches!(
        StripeGateway::new("", None),
        Err(GatewayError::Invalid(_))
    ));
    assert!(matches!(
        StripeGateway::new("sk", Some("ftp://x")),
        Err(GatewayError::Invalid(_))
    ));
}

#[tokio::test]
async fn plan_prices_are_mirrored_to_stripe_products_and_prices_once() {
    let base = std::env::var("TOLLGATE_TEST_STRIPE_API_BASE").expect(
        "TOLLGATE_TEST_STRIPE_API_BASE must point at localstripe: run the suite with scripts/test",
    );
    let gw = StripeGateway::new("sk_test_123", Some(&base)).expect("gateway");
    // A plan key of its own per run: localstripe keeps its state between runs.
    let plan = unique("pro").replace('-', "_");
    let lookup = format!("{plan}:v1");
    let spec = PriceSpec {
        plan: &plan,
        name: "Pro",
        lookup_key: &lookup,
        amount: GatewayAmount {
            amount_minor: 2900,
            currency: "USD",
        },
        interval: "month",
    };
    let first = gw.ensure_price(&spec).await.expect("mirror");
    assert_eq!(first.product_id, format!("tg_plan_{plan}"));
    assert!(first.price_id.starts_with("price_"), "{first:?}");
    let again = gw.ensure_price(&spec).await.expect("mirror again");
    assert_eq!(
        again, first,
        "found again by its lookup key, not created twice"
    );

    // A later bundle renames the plan: same product (renamed), a price of its own.
    let lookup2 = format!("{plan}:v2");
    let renamed = PriceSpec {
        name: "Pro (2027)",
        lookup_key: &lookup2,
        amount: GatewayAmount {
            amount_minor: 3900,
            currency: "USD",
        },
        ..spec
    };
    let second = gw.ensure_price(&renamed).await.expect("mirror v2");
    assert_eq!(second.product_id, first.product_id);
    assert_ne!(second.price_id, first.price_id);

    // A lookup key that already names another amount is reported, never papered over.
    let clash = PriceSpec {
        amount: GatewayAmount {
            amount_minor: 1,
            currency: "USD",
        },
        ..spec
    };
    match gw.ensure_price(&clash).await {
        Err(GatewayError::Invalid(msg)) => assert!(msg.contains(&lookup), "{msg}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    // Bad input never reaches Stripe as a request it would half-apply.
    let bad_interval = PriceSpec {
        interval: "fortnight",
        ..spec
    };
    let bad_plan = PriceSpec {
        plan: "../etc",
        ..spec
    };
    for bad in [bad_interval, bad_plan] {
        assert!(
            matches!(gw.ensure_price(&bad).await, Err(GatewayError::Invalid(_))),
            "{bad:?}"
        );
    }
}
