//! Emails to customers: what dunning tells them at each step (payment failed, retry
//! scheduled, final warning, uncollectible, recovered).
//!
//! * Outboxed: [`queue`] renders the step's templates (`control-plane/templates/email/`, a
//!   plain-text and an HTML part; the text file's first line is the subject) and writes the
//!   email in the transaction that applied the step, so a step is mailed once and a mail is
//!   never lost. Sent to the account's email (billing contacts come with the account API).
//! * [`send_due`] (its own loop: a slow mail server never delays billing) claims due emails
//!   with a lease and sends them over SMTP (`TOLLGATE_SMTP_URL`, lettre), outside any
//!   transaction. A failed send is retried after 1 min, 5 min, 30 min, 2 h and 6 h, then
//!   `failed`; `last_error` says why. Without an SMTP URL nothing is sent and emails wait,
//!   visible, as `pending`.

pub mod store;

use chrono::{DateTime, TimeDelta, Utc};
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::dunning::{Step, StepKind};
use crate::error::Result;
use crate::ids::AccountId;
use crate::money;
use crate::state::AppState;

/// Waits after each failed send.
pub const RETRY_AFTER: [TimeDelta; 5] = [
    TimeDelta::minutes(1),
    TimeDelta::minutes(5),
    TimeDelta::minutes(30),
    TimeDelta::hours(2),
    TimeDelta::hours(6),
];
/// A claimed email is sent again after this if its outcome was never recorded.
pub const LEASE: TimeDelta = TimeDelta::minutes(2);

/// How an email stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum EmailStatus {
    Pending,
    Sent,
    Failed,
}

/// One email of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Email {
    pub id: Uuid,
    #[sqlx(try_from = "Uuid")]
    pub account_id: AccountId,
    pub kind: StepKind,
    pub to_address: String,
    pub subject: String,
    pub text_body: String,
    pub html_body: String,
    pub status: EmailStatus,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub sent_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

fn template(kind: StepKind) -> (&'static str, &'static str) {
    match kind {
        StepKind::PaymentFailed => (
            include_str!("../../templates/email/payment_failed.txt"),
            include_str!("../../templates/email/payment_failed.html"),
        ),
        StepKind::RetryScheduled => (
            include_str!("../../templates/email/retry_scheduled.txt"),
            include_str!("../../templates/email/retry_scheduled.html"),
        ),
        StepKind::FinalWarning => (
            include_str!("../../templates/email/final_warning.txt"),
            include_str!("../../templates/email/final_warning.html"),
        ),
        StepKind::Uncollectible => (
            include_str!("../../templates/email/uncollectible.txt"),
            include_str!("../../templates/email/uncollectible.html"),
        ),
        StepKind::Recovered => (
            include_str!("../../templates/email/recovered.txt"),
            include_str!("../../templates/email/recovered.html"),
        ),
    }
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The rendered email of a step: (subject, text, html).
pub fn render(step: &Step, name: &str, pay_url: &str) -> (String, String, String) {
    let amount = step
        .currency
        .map(|c| money::format(step.amount_minor, c))
        .unwrap_or_else(|| step.amount_minor.to_string());
    let next_retry = step
        .next_retry_at
        .map_or_else(|| "-".to_owned(), |t| t.format("%-d %B %Y").to_string());
    let retry_line = match step.next_retry_at {
        Some(_) => format!("We will try again on {next_retry}."),
        None => "We will not try this card again: please add a new payment method.".to_owned(),
    };
    let invoice = step
        .invoice_number
        .clone()
        .unwrap_or_else(|| step.invoice_id.to_string());
    let values = [
        ("name", name.to_owned()),
        ("amount", amount),
        ("invoice", invoice),
        ("next_retry", next_retry),
        ("retry_line", retry_line),
        ("pay_url", pay_url.to_owned()),
    ];
    let fill = |t: &str, html: bool| {
        values.iter().fold(t.to_owned(), |acc, (k, v)| {
            let v = if html { escape_html(v) } else { v.clone() };
            acc.replace(&format!("{{{{{k}}}}}"), &v)
        })
    };
    let (text, html) = template(step.kind);
    let text = fill(text, false);
    let (subject, body) = text.split_once('\n').unwrap_or((&text, ""));
    (
        subject.trim().to_owned(),
        body.trim_start().to_owned(),
        fill(html, true),
    )
}

/// Writes the email of a dunning step in the caller's cf transaction.
pub async fn queue(
    conn: &mut PgConnection,
    state: &AppState,
    account: AccountId,
    step: &Step,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    let Some(acct) = crate::accounts::store::get_account(conn, account, false).await? else {
        return Ok(());
    };
    let pay_url = format!(
        "{}/v1/invoices/{}/pay",
        state.public_url.trim_end_matches('/'),
        step.invoice_id
    );
    let (subject, text, html) = render(step, &acct.name, &pay_url);
    // One email per billing contact (the account's own address when it has none).
    for to in crate::accounts::profile::recipients(conn, &acct).await? {
        store::insert(conn, account, step.kind, &to, &subject, &text, &html, now).await?;
    }
    Ok(())
}

/// An account's emails, oldest first (tests, the support panel).
pub async fn of_account(state: &AppState, account: AccountId) -> Result<Vec<Email>> {
    let mut conn = state.cf.acquire().await?;
    Ok(store::of_account(&mut conn, account).await?)
}

/// Sends what is due over SMTP (see the module doc). Returns how many sends were tried.
pub async fn send_due(state: &AppState, batch: i64) -> anyhow::Result<usize> {
    let Some(url) = state.smtp_url.as_deref() else {
        return Ok(0);
    };
    let now = state.clock.now();
    let due = {
        let mut tx = state.cf.begin().await?;
        let due = store::claim_due(&mut tx, now, now + LEASE, batch).await?;
        tx.commit().await?;
        due
    };
    if due.is_empty() {
        return Ok(0);
    }
    let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)?
        .timeout(Some(std::time::Duration::from_secs(15)))
        .build();
    let n = due.len();
    for e in due {
        let sent = send(&transport, &state.mail_from, &e).await;
        let now = state.clock.now();
        let mut conn = state.cf.acquire().await?;
        match sent {
            Ok(()) => store::sent(&mut conn, e.id, now).await?,
            Err(error) => {
                let next = usize::try_from(e.attempts - 1)
                    .ok()
                    .and_then(|i| RETRY_AFTER.get(i))
                    .map(|w| now + *w);
                tracing::warn!(email = %e.id, attempts = e.attempts, %error, "email not sent");
                store::failed(&mut conn, e.id, &error, next).await?;
            }
        }
    }
    Ok(n)
}

async fn send(
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    from: &str,
    e: &Email,
) -> std::result::Result<(), String> {
    let from: Mailbox = from.parse().map_err(|e| format!("from address: {e}"))?;
    let to: Mailbox = e
        .to_address
        .parse()
        .map_err(|err| format!("to address: {err}"))?;
    let message = Message::builder()
        .from(from)
        .to(to)
        .subject(&e.subject)
        .message_id(Some(format!("<{}@tollgate>", e.id)))
        .multipart(MultiPart::alternative_plain_html(
            e.text_body.clone(),
            e.html_body.clone(),
        ))
        .map_err(|err| err.to_string())?;
    transport
        .send(message)
        .await
        .map(drop)
        .map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::InvoiceId;
    use crate::money::Currency;

    #[test]
    fn every_step_renders_a_subject_and_both_parts_with_the_pay_link() {
        for kind in [
            StepKind::PaymentFailed,
            StepKind::RetryScheduled,
            StepKind::FinalWarning,
            StepKind::Uncollectible,
            StepKind::Recovered,
        ] {
            let step = Step {
                kind,
                invoice_id: InvoiceId::new_v7(),
                invoice_number: Some("TG-2026-000002".into()),
                amount_minor: 2900,
                currency: Some(Currency::USD),
                next_retry_at: Some(Utc::now()),
            };
            let (subject, text, html) = render(&step, "Ada <script>", "http://x/pay");
            assert!(!subject.is_empty() && !subject.contains("{{"), "{subject}");
            assert!(
                text.contains("TG-2026-000002") && !text.contains("{{"),
                "{text}"
            );
            assert!(
                html.contains("Ada &lt;script&gt;"),
                "names are escaped in HTML"
            );
            assert!(!html.contains("{{"));
            if kind != StepKind::Recovered {
                assert!(
                    text.contains("http://x/pay"),
                    "{kind:?} links to the payment"
                );
            }
        }
    }
}
