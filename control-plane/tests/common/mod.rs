//! Test harness: fresh cf and billing databases on the real PostgreSQL (`DATABASE_URL`), the
//! real Redis (`TOLLGATE_TEST_REDIS_URL`), a manual clock, and the real router driven with
//! `oneshot`.
#![allow(dead_code)]

pub mod gateway;

/// A UTC time to the minute.
pub fn t(y: i32, m: u32, d: u32, h: u32, min: u32) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, min, 0)
        .single()
        .expect("time")
}

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use chrono::{TimeZone, Utc};
use http_body_util::BodyExt;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tollgate_control_plane::clock::ManualClock;
use tollgate_control_plane::config::Config;
use tollgate_control_plane::state::AppState;
use tollgate_control_plane::{BILLING_MIGRATOR, CF_MIGRATOR, Deps, app, build_state, catalog};
use tollgate_settings::MapSource;
use tower::ServiceExt;

pub fn server_url() -> String {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    // Strip the database name: we create our own.
    match url.rfind('/') {
        Some(i) if url[..i].contains("://") && url[..i].matches('/').count() >= 2 => {
            url[..i].to_owned()
        }
        _ => url,
    }
}

pub fn redis_url() -> String {
    std::env::var("TOLLGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A fresh pair of databases, dropped by [`TestDbs::drop_all`].
pub struct TestDbs {
    pub cf: PgPool,
    pub billing: PgPool,
    pub names: Vec<String>,
}

impl TestDbs {
    pub async fn create() -> TestDbs {
        let server = server_url();
        let mut admin = PgConnection::connect(&format!("{server}/postgres"))
            .await
            .expect("connect to postgres");
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let names = vec![
            format!("tg_test_cf_{tag}"),
            format!("tg_test_billing_{tag}"),
        ];
        for n in &names {
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {n}")))
                .execute(&mut admin)
                .await
                .expect("create db");
        }
        let options = PgPoolOptions::new().max_connections(8);
        let cf = options
            .clone()
            .connect(&format!("{server}/{}", names[0]))
            .await
            .expect("cf pool");
        let billing = options
            .connect(&format!("{server}/{}", names[1]))
            .await
            .expect("billing pool");
        CF_MIGRATOR.run(&cf).await.expect("migrate cf");
        BILLING_MIGRATOR
            .run(&billing)
            .await
            .expect("migrate billing");
        TestDbs { cf, billing, names }
    }

    pub async fn drop_all(self) {
        self.cf.close().await;
        self.billing.close().await;
        let server = server_url();
        if let Ok(mut admin) = PgConnection::connect(&format!("{server}/postgres")).await {
            for n in &self.names {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {n} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await;
            }
        }
    }
}

pub struct Harness {
    pub state: AppState,
    pub clock: Arc<ManualClock>,
    /// The key the harness's control plane trusts for rule bundles.
    pub key: tollgate_rules::bundle::SigningKey,
    dbs: Option<TestDbs>,
    config: Config,
}

impl Harness {
    /// Simulated payments, dev mode, demo catalog.
    pub async fn new() -> Harness {
        Self::with_config(&[]).await
    }

    pub async fn with_config(extra: &[(&str, &str)]) -> Harness {
        Self::build(extra, None).await
    }

    /// A harness whose payment gateway is wrapped (stalls, failures after charging).
    pub async fn with_gateway(wrap: tollgate_control_plane::GatewayWrapper) -> Harness {
        Self::build(&[], Some(wrap)).await
    }

    async fn build(
        extra: &[(&str, &str)],
        wrap_gateway: Option<tollgate_control_plane::GatewayWrapper>,
    ) -> Harness {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("warn")
            .try_init();
        let dbs = TestDbs::create().await;
        let key = tollgate_rules::bundle::SigningKey::generate("test");
        let public = key.public().to_file_string();
        let words: Vec<&str> = public.split_whitespace().collect();
        let trusted = format!("{}:{}", words[1], words[2]);
        // Streams and L2 keys of its own: tests share one Redis. Four stream shards, so every
        // test publishes through the sharded keys.
        let prefix = format!("tg-test-{}", uuid::Uuid::now_v7().simple());
        let mut pairs = vec![
            ("redis_key_prefix", prefix.as_str()),
            ("redis_stream_shards", "4"),
            ("edge_token", "test-edge-token"),
            ("token_secret", "test-token-secret"),
            ("admin_token", "test-admin-token"),
            ("trusted_keys", trusted.as_str()),
            ("dev_mode", "true"),
            // Stripe webhooks are accepted (under this secret) unless a test says otherwise.
            ("stripe_webhook_secrets", "whsec_harness"),
        ];
        pairs.extend_from_slice(extra);
        let config = Config::from_source(&MapSource::from_pairs(pairs)).expect("config");
        catalog::seed(&dbs.cf, &tollgate_rules::Catalog::demo())
            .await
            .expect("seed");
        let redis =
            tollgate_control_plane::connect_redis(&redis_url(), std::time::Duration::from_secs(5))
                .await
                .expect("redis");
        let clock = Arc::new(ManualClock::at(
            Utc.with_ymd_and_hms(2026, 1, 15, 12, 0, 0)
                .single()
                .expect("time"),
        ));
        let state = build_state(
            &config,
            Deps {
                cf: dbs.cf.clone(),
                billing: dbs.billing.clone(),
                redis,
                clock: clock.clone(),
                wrap_gateway,
            },
        )
        .expect("state");
        Harness {
            state,
            clock,
            key,
            dbs: Some(dbs),
            config,
        }
    }

    /// Another control-plane state on the same databases and clock (a restart, or a second
    /// replica). It does not own the databases: finish the original.
    pub async fn restarted(&self) -> Harness {
        let redis =
            tollgate_control_plane::connect_redis(&redis_url(), std::time::Duration::from_secs(5))
                .await
                .expect("redis");
        let state = build_state(
            &self.config,
            Deps {
                cf: self.state.cf.clone(),
                billing: self.state.billing.clone(),
                redis,
                clock: self.clock.clone(),
                wrap_gateway: None,
            },
        )
        .expect("state");
        Harness {
            state,
            clock: self.clock.clone(),
            key: tollgate_rules::bundle::SigningKey::generate("restarted"),
            dbs: None,
            config: self.config.clone(),
        }
    }

    pub async fn finish(mut self) {
        if let Some(dbs) = self.dbs.take() {
            dbs.drop_all().await;
        }
    }

    /// Sends raw bytes (a bundle) with the admin token.
    pub async fn admin_upload(&self, bytes: Vec<u8>) -> Resp {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/admin/v1/bundles")
            .header("authorization", "Bearer test-admin-token")
            .header("tollgate-actor", "tester")
            .header("content-type", "application/octet-stream")
            .body(Body::from(bytes))
            .expect("request");
        self.send(req).await
    }

    /// A JSON admin call (`{}` when no body is given).
    pub async fn admin(&self, method: Method, path: &str, body: Option<&str>) -> Resp {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", "Bearer test-admin-token")
            .header("tollgate-actor", "tester")
            .header("content-type", "application/json")
            .body(Body::from(body.unwrap_or("{}").to_owned()))
            .expect("request");
        self.send(req).await
    }

    /// Sends a request through the real router.
    pub async fn send(&self, req: Request<Body>) -> Resp {
        let resp = app(self.state.clone())
            .oneshot(req)
            .await
            .expect("infallible");
        let (parts, body) = resp.into_parts();
        let status = parts.status;
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header("content-type").unwrap_or_default();
        let etag = header("etag");
        let replayed = parts.headers.contains_key("idempotent-replayed");
        let bytes = body.collect().await.expect("body").to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Resp {
            status,
            content_type,
            json,
            replayed,
            etag,
            bytes: bytes.to_vec(),
        }
    }

    /// Sends a request through the real router.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Option<&str>,
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_owned())),
            None => req.body(Body::empty()),
        }
        .expect("request");
        self.send(req).await
    }

    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: &str,
    ) -> Resp {
        self.call(Method::POST, path, token, key, Some(body)).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.call(Method::GET, path, token, None, None).await
    }

    /// Signs up and returns (account id, token).
    pub async fn sign_up(&self, email: &str) -> (String, String) {
        let r = self
            .post(
                "/v1/accounts",
                None,
                Some(&format!("signup-{email}")),
                &format!(r#"{{"email":"{email}","name":"Test"}}"#),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
        (r.str("/account/id"), r.str("/api_token"))
    }

    /// Adds a payment method that needs no authentication; returns its id.
    pub async fn add_card(&self, token: &str, pm: &str) -> String {
        let r = self
            .post(
                "/v1/payment-methods",
                Some(token),
                Some(&format!("pm-{pm}")),
                &format!(r#"{{"payment_method":"{pm}"}}"#),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
        r.str("/payment_method/id")
    }

    /// Adds a card that asks for 3-D Secure on set-up, completes the challenge and confirms it;
    /// returns its id (ready to pay with, and to be challenged again on-session).
    pub async fn add_3ds_card(&self, token: &str, pm: &str) -> String {
        let r = self
            .post(
                "/v1/payment-methods",
                Some(token),
                Some(&format!("3ds-{pm}")),
                &format!(r#"{{"payment_method":"{pm}"}}"#),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.json);
        let intent = r
            .str("/client_secret")
            .split("_secret_")
            .next()
            .unwrap_or_default()
            .to_owned();
        self.authenticate(&intent, true).await;
        let id = r.str("/payment_method/id");
        let ok = self
            .post(
                &format!("/v1/payment-methods/{id}/confirm"),
                Some(token),
                None,
                "",
            )
            .await;
        assert_eq!(ok.json["status"], "ready", "{:?}", ok.json);
        id
    }

    /// Completes a simulated 3-D Secure challenge.
    pub async fn authenticate(&self, intent: &str, succeed: bool) {
        let outcome = if succeed { "succeed" } else { "fail" };
        let r = self
            .post(
                &format!("/dev/v1/simulator/intents/{intent}/authenticate"),
                None,
                None,
                &format!(r#"{{"outcome":"{outcome}"}}"#),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    }

    /// Runs the outbox relay until nothing is due.
    pub async fn drain_outbox(&self) {
        for _ in 0..100 {
            if tollgate_control_plane::outbox::relay_once(&self.state)
                .await
                .expect("relay")
                == 0
            {
                return;
            }
        }
        panic!("outbox did not drain");
    }

    /// Runs maintenance, both outbox relays and the webhook and mail senders until nothing
    /// changes any more.
    pub async fn settle(&self) {
        use tollgate_control_plane::state::BillingOutbox;
        use tollgate_control_plane::{events, mail, maintenance, outbox};
        for _ in 0..60 {
            let changed = maintenance::run(&self.state).await.expect("maintenance")
                + events::deliver_due(&self.state, 100)
                    .await
                    .expect("webhooks")
                + mail::send_due(&self.state, 100).await.expect("mail");
            let cf = outbox::relay_once(&self.state).await.expect("cf relay");
            let billing = outbox::relay_once(&BillingOutbox(self.state.clone()))
                .await
                .expect("billing relay");
            if changed + cf + billing == 0 {
                return;
            }
        }
        panic!("the control plane did not settle");
    }

    /// Moves the clock to `to` (forward only) and settles.
    pub async fn advance_to(&self, to: chrono::DateTime<Utc>) {
        use tollgate_control_plane::clock::Clock;
        let now = self.clock.now();
        assert!(to >= now, "{to} is before {now}");
        self.clock.advance(to - now);
        self.settle().await;
    }

    /// A pro customer whose renewals are declined: the checkout is paid with a good card, then
    /// a card that attaches but fails every charge becomes the default. Settled.
    pub async fn failing_renewal_customer(
        &self,
        email: &str,
    ) -> (tollgate_control_plane::ids::AccountId, String) {
        let (id, token) = self.sign_up(email).await;
        self.add_card(&token, "pm_card_visa").await;
        let r = self
            .post(
                "/v1/checkout",
                Some(&token),
                Some("buy"),
                r#"{"plan":"pro"}"#,
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
        let r = self
            .post(
                "/v1/payment-methods",
                Some(&token),
                Some("failing-card"),
                r#"{"payment_method":"pm_card_chargeCustomerFail","make_default":true}"#,
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
        self.settle().await;
        (id.parse().expect("account id"), token)
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        let (n,): (i64,) = sqlx::query_as(sql)
            .fetch_one(&self.state.cf)
            .await
            .expect("count");
        n
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub content_type: String,
    pub json: Value,
    pub replayed: bool,
    pub etag: Option<String>,
    pub bytes: Vec<u8>,
}

impl Resp {
    pub fn str(&self, pointer: &str) -> String {
        self.json
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no string at {pointer} in {}", self.json))
            .to_owned()
    }

    /// Asserts an RFC 9457 problem with this status and code.
    pub fn assert_problem(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "{}", self.json);
        assert_eq!(
            self.content_type, "application/problem+json",
            "{}",
            self.json
        );
        assert_eq!(self.json["code"], code, "{}", self.json);
        assert_eq!(self.json["status"], status.as_u16(), "{}", self.json);
    }
}
