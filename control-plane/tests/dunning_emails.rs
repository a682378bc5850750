//! Dunning emails over a real SMTP server (aiosmtpd from `.venv`, delivering to a maildir):
//! each step mails the customer once, with a plain-text and an HTML part and a link to pay;
//! a send that fails while the server is down is retried and shows in the log meanwhile.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::http::StatusCode;
use chrono::{TimeDelta, TimeZone, Utc};
use common::Harness;
use tollgate_control_plane::mail::{self, EmailStatus};

struct Smtp {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

/// aiosmtpd on `port`, storing what it receives in a maildir.
async fn start_smtp(port: u16) -> Smtp {
    let python = std::env::var("TOLLGATE_TEST_PYTHON")
        .expect("TOLLGATE_TEST_PYTHON (scripts/test installs aiosmtpd into .venv and sets it)");
    let dir = std::env::temp_dir().join(format!("tollgate-mail-{}", uuid::Uuid::now_v7()));
    // Owned by the guard at once: killed and waited for on every path.
    let smtp = Smtp {
        child: Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("aiosmtpd"),
        dir,
    };
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return smtp;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("aiosmtpd did not start");
}

/// What the maildir holds: each message's raw text.
fn received(smtp: &Smtp) -> Vec<String> {
    let mut out: Vec<(std::time::SystemTime, String)> = std::fs::read_dir(smtp.dir.join("new"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| {
                    let modified = e.metadata().ok()?.modified().ok()?;
                    Some((modified, std::fs::read_to_string(e.path()).ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    // Bodies are quoted-printable: undo its soft line breaks and escaped `=`.
    out.into_iter()
        .map(|(_, m)| {
            m.replace("=\r\n", "")
                .replace("=\n", "")
                .replace("=3D", "=")
        })
        .collect()
}

fn subject(raw: &str) -> String {
    raw.lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn each_dunning_step_mails_the_customer_once_with_both_parts_and_a_pay_link() {
    let port = free_port();
    let smtp_url = format!("smtp://127.0.0.1:{port}");
    let h = Harness::with_config(&[
        ("smtp_url", smtp_url.as_str()),
        ("dunning_retry_days", "1,2,3"),
    ])
    .await;
    // Attaches fine, declines every charge: the checkout itself is paid with a good card.
    let (account, token) = h.failing_renewal_customer("dunned@example.com").await;

    // The renewal fails while the mail server is down: the email waits, with the reason.
    let opened = Utc
        .with_ymd_and_hms(2026, 2, 15, 13, 5, 0)
        .single()
        .expect("time");
    h.advance_to(opened).await;
    let log = mail::of_account(&h.state, account).await.expect("log");
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!((log[0].status, log[0].attempts), (EmailStatus::Pending, 1));
    assert!(log[0].last_error.as_deref().is_some_and(|e| !e.is_empty()));

    // Up again: the retry a minute later sends it.
    let smtp = start_smtp(port).await;
    h.advance_to(opened + TimeDelta::minutes(2)).await;
    assert_eq!(received(&smtp).len(), 1);
    // Then one email per step, on the retry days, and the recovery.
    for day in [1, 2, 3] {
        h.advance_to(opened + TimeDelta::days(day)).await;
    }
    let r = h
        .post(
            "/v1/payment-methods",
            Some(&token),
            Some("working"),
            r#"{"payment_method":"pm_card_visa","make_default":true}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    h.settle().await;

    let mails = received(&smtp);
    let subjects: Vec<String> = mails.iter().map(|m| subject(m)).collect();
    assert_eq!(subjects.len(), 5, "{subjects:?}");
    assert!(
        subjects[0].starts_with("Your payment of 29.00 USD did not go through"),
        "{subjects:?}"
    );
    assert!(
        subjects[1].starts_with("We will try 29.00 USD again on 17 February 2026"),
        "{subjects:?}"
    );
    assert!(subjects[2].starts_with("Final notice"), "{subjects:?}");
    assert!(
        subjects[3].starts_with("Your subscription was canceled"),
        "{subjects:?}"
    );
    assert!(subjects[4].starts_with("Thank you"), "{subjects:?}");
    let invoice = h.get("/v1/invoices", Some(&token)).await.json["data"][0]["id"]
        .as_str()
        .expect("invoice")
        .to_owned();
    for m in &mails[..4] {
        assert!(m.contains("To: dunned@example.com"), "{m}");
        assert!(
            m.contains("text/plain") && m.contains("text/html"),
            "two parts: {m}"
        );
        assert!(
            m.contains(&format!("/v1/invoices/{invoice}/pay")),
            "a link to pay: {m}"
        );
    }
    let log = mail::of_account(&h.state, account).await.expect("log");
    assert!(log.iter().all(|e| e.status == EmailStatus::Sent), "{log:?}");
    assert_eq!(log.len(), 5, "each step once");
    drop(smtp);
    h.finish().await;
}
