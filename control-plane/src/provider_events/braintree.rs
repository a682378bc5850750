//! Braintree webhooks: signature check, verification challenge, dispute parsing.
//!
//! Follows braintree_ruby `lib/braintree/webhook_notification_gateway.rb`,
//! `lib/braintree/digest.rb` and `lib/braintree/webhook_testing_gateway.rb`
//! (braintree_python `braintree/webhook_notification_gateway.py` is identical):
//!
//! * Braintree POSTs the form fields `bt_signature` and `bt_payload`. `bt_payload`
//!   is base64 with `\n` line breaks of a `<notification>` XML document holding
//!   `<timestamp type="datetime">`, `<kind>` and `<subject>`.
//! * A payload with any byte outside `[A-Za-z0-9+=/\n]` is refused before any HMAC.
//! * `bt_signature` is `public_key|hex` pairs joined by `&`; pairs without `|` are
//!   ignored and the first pair naming our public key is checked. It is valid when
//!   `hex == hex(HMAC-SHA1(key = SHA1(private_key) as 20 raw bytes, msg))` for `msg`
//!   the payload exactly as received or the payload plus `"\n"`, compared in
//!   constant time.
//! * Challenge: `GET ?bt_challenge=X` is answered `public_key|hex(HMAC-SHA1(SHA1(private_key), X))`,
//!   and only when `X` matches `^[a-f0-9]{20,32}$`; any other challenge is refused,
//!   since answering it would sign whatever text an attacker chose, forged payloads included.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use chrono::{DateTime, NaiveDate, Utc};
use hmac::{Hmac, Mac};
use roxmltree::{Document, Node, ParsingOptions};
use sha1::{Digest, Sha1};

type HmacSha1 = Hmac<Sha1>;

/// Upper bound on `bt_payload` (and on the decoded XML) accepted, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;
/// Upper bound on XML nodes parsed from one notification.
const MAX_XML_NODES: u32 = 20_000;

/// One Braintree API key pair. Several may be configured during key rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// The public key, as named in `bt_signature` pairs.
    pub public_key: String,
    /// The private key; its SHA-1 digest is the HMAC key.
    pub private_key: String,
}

/// Why a webhook was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    /// `bt_signature` held no `public_key|signature` pair.
    #[error("webhook signature missing")]
    MissingSignature,
    /// No pair names a configured public key, or the signature does not match.
    #[error("webhook signature does not match payload")]
    InvalidSignature,
    /// The payload is not valid base64, UTF-8 or notification XML.
    #[error("malformed webhook payload: {0}")]
    MalformedPayload(String),
    /// `bt_challenge` is not 20–32 lower-case hex digits (the SDK's `InvalidChallenge`).
    #[error("webhook challenge must be 20-32 lower-case hex digits")]
    InvalidChallenge,
}

fn malformed(msg: impl Into<String>) -> WebhookError {
    WebhookError::MalformedPayload(msg.into())
}

/// HMAC-SHA1 keyed with SHA1(private_key). HMAC zero-pads keys shorter than
/// the 64-byte block, so padding the 20-byte digest here gives the same MAC.
fn mac_for(private_key: &str) -> HmacSha1 {
    let mut key = [0u8; 64];
    key[..20].copy_from_slice(&Sha1::digest(private_key.as_bytes()));
    <HmacSha1 as hmac::digest::KeyInit>::new(&key.into())
}

fn hex_hmac(private_key: &str, msg: &[u8]) -> String {
    let mut mac = mac_for(private_key);
    mac.update(msg);
    hex::encode(mac.finalize().into_bytes())
}

/// Checks `bt_signature` over `bt_payload` (both form-decoded, otherwise as
/// received) under any of `keys`, comparing MAC bytes in constant time, and
/// returns the decoded XML text.
pub fn verify(signature: &str, payload: &str, keys: &[KeyPair]) -> Result<String, WebhookError> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(malformed("payload too large"));
    }
    let legal = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'=' | b'/' | b'\n');
    if !payload.bytes().all(legal) {
        return Err(malformed("payload contains illegal characters"));
    }
    let pairs: Vec<(&str, &str)> = signature
        .split('&')
        .filter_map(|p| p.split_once('|'))
        .collect();
    if pairs.is_empty() {
        return Err(WebhookError::MissingSignature);
    }
    // A key pair with an empty private key would let anyone sign; never use one.
    let mut usable = keys.iter().filter(|k| !k.private_key.is_empty());
    let verified = usable.any(|key| {
        let Some((_, sig_hex)) = pairs.iter().find(|(pk, _)| *pk == key.public_key) else {
            return false;
        };
        let Ok(sig) = hex::decode(sig_hex) else {
            return false;
        };
        let mut as_received = mac_for(&key.private_key);
        let mut with_newline = as_received.clone();
        as_received.update(payload.as_bytes());
        with_newline.update(payload.as_bytes());
        with_newline.update(b"\n");
        as_received.verify_slice(&sig).is_ok() | with_newline.verify_slice(&sig).is_ok()
    });
    if !verified {
        return Err(WebhookError::InvalidSignature);
    }
    let compact: Vec<u8> = payload.bytes().filter(|&b| b != b'\n').collect();
    let xml = STANDARD
        .decode(compact)
        .map_err(|e| malformed(format!("base64: {e}")))?;
    String::from_utf8(xml).map_err(|_| malformed("payload is not UTF-8"))
}

/// Answer to a verification challenge (`bt_challenge`) with `key`:
/// `public_key|hex(HMAC-SHA1(SHA1(private_key), challenge))`.
pub fn challenge_response(challenge: &str, key: &KeyPair) -> Result<String, WebhookError> {
    let hex_lower = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if !(20..=32).contains(&challenge.len()) || !challenge.bytes().all(hex_lower) {
        return Err(WebhookError::InvalidChallenge);
    }
    let digest = hex_hmac(&key.private_key, challenge.as_bytes());
    Ok(format!("{}|{digest}", key.public_key))
}

/// A verified, parsed webhook notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// `<kind>`, e.g. `dispute_opened`, `check`.
    pub kind: String,
    /// `<timestamp>` of the notification.
    pub timestamp: DateTime<Utc>,
    /// The `<subject><dispute>` of `dispute_*` kinds; `None` for other kinds.
    pub dispute: Option<DisputeNotice>,
}

/// The dispute fields of a `dispute_*` notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisputeNotice {
    /// Braintree dispute id.
    pub id: String,
    /// Dispute status as sent, lower-case: open, won, lost, accepted, disputed,
    /// expired, auto_accepted, under_review, ...
    pub status: String,
    /// Dispute reason (fraud, duplicate, ...), if sent.
    pub reason: Option<String>,
    /// `<amount-disputed>` (else `<amount>`) in the currency's minor units.
    pub amount_minor: i64,
    /// `<currency-iso-code>`, upper-case.
    pub currency: String,
    /// `<transaction><id>`.
    pub transaction_id: Option<String>,
    /// `<transaction><order-id>`, if present and not nil.
    pub transaction_order_id: Option<String>,
    /// `<received-date>`.
    pub received_date: Option<NaiveDate>,
}

/// Minor-unit exponent of an ISO 4217 currency code (2 unless listed otherwise).
pub fn currency_exponent(currency: &str) -> u32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

/// Converts a non-negative decimal string (`"10.00"`, `"12"`) to minor units
/// with `exponent` fraction digits. Refuses signs, more fraction digits than
/// `exponent`, and values that overflow `i64`.
pub fn parse_minor_units(amount: &str, exponent: u32) -> Result<i64, WebhookError> {
    let bad = || malformed("invalid amount");
    let (int, frac) = amount.split_once('.').unwrap_or((amount, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let dotted_empty = amount.contains('.') && frac.is_empty();
    let exp = usize::try_from(exponent).map_err(|_| bad())?;
    if int.is_empty() || dotted_empty || !digits(int) || !digits(frac) || frac.len() > exp {
        return Err(bad());
    }
    let padding = std::iter::repeat_n(b'0', exp - frac.len());
    int.bytes()
        .chain(frac.bytes())
        .chain(padding)
        .try_fold(0i64, |acc, b| {
            acc.checked_mul(10)?.checked_add(i64::from(b - b'0'))
        })
        .ok_or_else(bad)
}

fn format_minor_units(minor: i64, exponent: u32) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let (abs, width) = (minor.unsigned_abs(), exponent as usize);
    match 10u64.checked_pow(exponent) {
        Some(scale) if scale > 1 => format!("{sign}{}.{:0width$}", abs / scale, abs % scale),
        _ => format!("{sign}{abs}"),
    }
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|c| c.has_tag_name(name))
}

/// Trimmed text of the first `name` child; `None` if absent, empty or `nil="true"`.
fn text(node: Node<'_, '_>, name: &str) -> Option<String> {
    let el = child(node, name)?;
    if el.attribute("nil") == Some("true") {
        return None;
    }
    let t = el.text()?.trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn required(node: Node<'_, '_>, name: &str) -> Result<String, WebhookError> {
    text(node, name).ok_or_else(|| malformed(format!("missing <{name}>")))
}

/// Parses the verified XML; `dispute_*` kinds must carry `<subject><dispute>`
/// and fill `dispute`, other kinds leave it `None`. Input is size- and
/// node-bounded, DTDs are refused, unknown elements are ignored.
pub fn parse(xml: &str) -> Result<Notification, WebhookError> {
    if xml.len() > MAX_PAYLOAD_BYTES {
        return Err(malformed("notification too large"));
    }
    let opts = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_XML_NODES,
        ..Default::default()
    };
    let doc =
        Document::parse_with_options(xml, opts).map_err(|e| malformed(format!("XML: {e}")))?;
    let root = doc.root_element();
    if !root.has_tag_name("notification") {
        return Err(malformed("root element is not <notification>"));
    }
    let kind = required(root, "kind")?;
    let timestamp = DateTime::parse_from_rfc3339(&required(root, "timestamp")?)
        .map_err(|e| malformed(format!("timestamp: {e}")))?
        .with_timezone(&Utc);
    let dispute = if kind.starts_with("dispute_") {
        let node = child(root, "subject")
            .and_then(|s| child(s, "dispute"))
            .ok_or_else(|| malformed("dispute notification without <subject><dispute>"))?;
        Some(parse_dispute(node)?)
    } else {
        None
    };
    Ok(Notification {
        kind,
        timestamp,
        dispute,
    })
}

fn parse_dispute(d: Node<'_, '_>) -> Result<DisputeNotice, WebhookError> {
    let currency = required(d, "currency-iso-code")?.to_ascii_uppercase();
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(malformed("invalid <currency-iso-code>"));
    }
    let amount = text(d, "amount-disputed").or_else(|| text(d, "amount"));
    let amount = amount.ok_or_else(|| malformed("missing <amount-disputed>"))?;
    let received_date = text(d, "received-date")
        .map(|s| NaiveDate::parse_from_str(&s, "%Y-%m-%d"))
        .transpose()
        .map_err(|e| malformed(format!("received-date: {e}")))?;
    let txn = child(d, "transaction");
    Ok(DisputeNotice {
        id: required(d, "id")?,
        status: required(d, "status")?.to_ascii_lowercase(),
        reason: text(d, "reason"),
        amount_minor: parse_minor_units(&amount, currency_exponent(&currency))?,
        transaction_id: txn.and_then(|t| text(t, "id")),
        transaction_order_id: txn.and_then(|t| text(t, "order-id")),
        currency,
        received_date,
    })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn opt_el(name: &str, value: Option<&str>, attrs: &str) -> String {
    match value {
        Some(v) => format!("<{name}{attrs}>{}</{name}>", esc(v)),
        None => format!("<{name} nil=\"true\"/>"),
    }
}

/// For tests and the dev simulator: builds `(bt_signature, bt_payload)` the way
/// the SDK's `WebhookTesting.sample_notification` does (its new-style dispute
/// XML, Ruby `Base64.encode64` lines of 60 characters, `public_key|hex` signature).
pub fn sample_dispute(
    key: &KeyPair,
    kind: &str,
    timestamp: DateTime<Utc>,
    dispute: &DisputeNotice,
) -> (String, String) {
    let ts = timestamp.format("%Y-%m-%dT%H:%M:%SZ");
    let amount = format_minor_units(dispute.amount_minor, currency_exponent(&dispute.currency));
    let received = dispute
        .received_date
        .map(|d| d.format("%Y-%m-%d").to_string());
    let xml = format!(
        r#"<notification>
  <timestamp type="datetime">{ts}</timestamp>
  <kind>{kind}</kind>
  <subject>
    <dispute>
      <id>{id}</id><amount>{amount}</amount><amount-disputed>{amount}</amount-disputed>
      <currency-iso-code>{currency}</currency-iso-code><kind>chargeback</kind>
      {reason}{received}<status>{status}</status>
      <status-history type="array"><status-history><status>{status}</status>
        <timestamp type="datetime">{ts}</timestamp></status-history></status-history>
      <evidence type="array"/>
      <transaction>{txn_id}<amount>{amount}</amount>{order_id}</transaction>
    </dispute>
  </subject>
</notification>
"#,
        kind = esc(kind),
        id = esc(&dispute.id),
        status = esc(&dispute.status),
        currency = esc(&dispute.currency),
        reason = opt_el("reason", dispute.reason.as_deref(), ""),
        received = opt_el("received-date", received.as_deref(), " type=\"date\""),
        txn_id = opt_el("id", dispute.transaction_id.as_deref(), ""),
        order_id = opt_el("order-id", dispute.transaction_order_id.as_deref(), ""),
    );
    let encoded = STANDARD.encode(xml.as_bytes());
    let mut payload = String::with_capacity(encoded.len() + encoded.len() / 60 + 1);
    for line in encoded.as_bytes().chunks(60) {
        payload.extend(line.iter().map(|&b| char::from(b)));
        payload.push('\n');
    }
    let signature = hex_hmac(&key.private_key, payload.as_bytes());
    (format!("{}|{signature}", key.public_key), payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Independent vectors (payload = base64.encodebytes of the XML, as braintree_python does):
    // python3 -c 'import hmac,hashlib,base64; k=hashlib.sha1(b"integration_private_key").digest();
    //   x=b"<notification><timestamp type=\"datetime\">2024-05-01T12:00:00Z</timestamp><kind>check</kind><subject><check type=\"boolean\">true</check></subject></notification>";
    //   p=base64.encodebytes(x); print(repr(p)); print(hmac.new(k,p,hashlib.sha1).hexdigest());
    //   print(hmac.new(k,b"20f9f8ed05f77439fe955c977e4c8a53",hashlib.sha1).hexdigest())'
    const PAYLOAD: &str = "PG5vdGlmaWNhdGlvbj48dGltZXN0YW1wIHR5cGU9ImRhdGV0aW1lIj4yMDI0LTA1LTAxVDEyOjAw\nOjAwWjwvdGltZXN0YW1wPjxraW5kPmNoZWNrPC9raW5kPjxzdWJqZWN0PjxjaGVjayB0eXBlPSJi\nb29sZWFuIj50cnVlPC9jaGVjaz48L3N1YmplY3Q+PC9ub3RpZmljYXRpb24+\n";
    const SIG: &str = "integration_public_key|14f275ad90a47b7e40d2c1efa1be2f4e78e5b0ad";
    const CHALLENGE_ANSWER: &str =
        "integration_public_key|d9b899556c966b3f06945ec21311865d35df3ce4";

    fn key(public: &str, private: &str) -> KeyPair {
        KeyPair {
            public_key: public.into(),
            private_key: private.into(),
        }
    }
    fn keys() -> Vec<KeyPair> {
        let old = key("old_public_key", "old_private_key");
        vec![
            old,
            key("integration_public_key", "integration_private_key"),
        ]
    }
    fn utc(rfc3339: &str) -> DateTime<Utc> {
        rfc3339.parse().unwrap()
    }
    fn is_malformed<T: std::fmt::Debug>(r: Result<T, WebhookError>) -> bool {
        matches!(r, Err(WebhookError::MalformedPayload(_)))
    }

    #[test]
    fn verify_accepts_python_vector() {
        let n = parse(&verify(SIG, PAYLOAD, &keys()).unwrap()).unwrap();
        assert_eq!((n.kind.as_str(), n.dispute), ("check", None));
        assert_eq!(n.timestamp, utc("2024-05-01T12:00:00Z"));
        // The SDK also accepts the signature of payload + "\n", and several pairs.
        assert!(verify(SIG, PAYLOAD.trim_end_matches('\n'), &keys()).is_ok());
        assert!(verify(&format!("junk&other|00&{SIG}"), PAYLOAD, &keys()).is_ok());
    }

    #[test]
    fn verify_rejects_forgeries() {
        let bad = Err(WebhookError::InvalidSignature);
        let forged = SIG.replace("|14f2", "|14f3");
        assert_eq!(verify(&forged, PAYLOAD, &keys()), bad);
        let wrong_pk = SIG.replace("integration_", "someone_");
        assert_eq!(verify(&wrong_pk, PAYLOAD, &keys()), bad);
        assert_eq!(verify("integration_public_key|zz", PAYLOAD, &keys()), bad);
        let tampered = PAYLOAD.replacen("PG5v", "PG5w", 1);
        assert_eq!(verify(SIG, &tampered, &keys()), bad);
        let wrong_private = [key("integration_public_key", "other")];
        assert_eq!(verify(SIG, PAYLOAD, &wrong_private), bad);
        let empty_key_sig = format!("|{}", hex_hmac("", PAYLOAD.as_bytes()));
        assert_eq!(verify(&empty_key_sig, PAYLOAD, &[key("", "")]), bad);
        let missing = Err(WebhookError::MissingSignature);
        assert_eq!(verify("", PAYLOAD, &keys()), missing);
        assert_eq!(verify("integration_public_key", PAYLOAD, &keys()), missing);
        assert!(is_malformed(verify(SIG, "a b", &keys())));
    }

    #[test]
    fn challenge_vector() {
        let k = key("integration_public_key", "integration_private_key");
        let answer = challenge_response("20f9f8ed05f77439fe955c977e4c8a53", &k);
        assert_eq!(answer.as_deref(), Ok(CHALLENGE_ANSWER));
        let bad = "abc|20F9F8ED05F77439FE955C977E4C8A53|g0f9f8ed05f77439fe95|".split('|');
        for challenge in bad.chain([PAYLOAD]) {
            let refused = Err(WebhookError::InvalidChallenge);
            assert_eq!(challenge_response(challenge, &k), refused, "{challenge}");
        }
    }

    // braintree_ruby `_sample_xml` + `_new_dispute_opened_sample_xml("my_id")`, siblings joined.
    const SDK_DISPUTE_OPENED: &str = r#"
      <notification>
        <timestamp type="datetime">2017-06-16T20:44:41Z</timestamp>
        <kind>dispute_opened</kind>
        <subject>
          <dispute>
            <id>my_id</id><amount>100.00</amount><amount-disputed>100.00</amount-disputed>
            <amount-won>95.00</amount-won><case-number>CASE-12345</case-number>
            <created-at type="datetime">2017-06-16T20:44:41Z</created-at>
            <currency-iso-code>USD</currency-iso-code><forwarded-comments nil="true"/>
            <kind>chargeback</kind><merchant-account-id>ytnlulaloidoqwvzxjrdqputg</merchant-account-id>
            <reason>fraud</reason><reason-code nil="true"/><reason-description nil="true"/>
            <received-date type="date">2016-02-15</received-date><reference-number>REF-9876</reference-number>
            <reply-by-date type="date">2016-02-22</reply-by-date><status>open</status>
            <updated-at type="datetime">2017-06-16T20:44:41Z</updated-at>
            <original-dispute-id>9qde5qgp</original-dispute-id>
            <status-history type="array"><status-history><status>open</status>
              <timestamp type="datetime">2017-06-16T20:44:41Z</timestamp></status-history></status-history>
            <evidence type="array"/>
            <transaction>
              <id>my_id</id><amount>100.00</amount><created-at>2017-06-21T20:44:41Z</created-at>
              <order-id nil="true"/><purchase-order-number nil="true"/>
              <payment-instrument-subtype>Visa</payment-instrument-subtype>
            </transaction>
            <date-opened type="date">2014-03-21</date-opened>
          </dispute>
        </subject>
      </notification>"#;

    #[test]
    fn parses_sdk_dispute_opened() {
        let n = parse(SDK_DISPUTE_OPENED).unwrap();
        assert_eq!(n.kind, "dispute_opened");
        assert_eq!(n.timestamp, utc("2017-06-16T20:44:41Z"));
        let d = n.dispute.unwrap();
        assert_eq!((d.id.as_str(), d.status.as_str()), ("my_id", "open"));
        assert_eq!((d.amount_minor, d.currency.as_str()), (10000, "USD"));
        assert_eq!(
            (d.reason.as_deref(), d.transaction_order_id),
            (Some("fraud"), None)
        );
        assert_eq!(d.transaction_id.as_deref(), Some("my_id"));
        assert_eq!(d.received_date, NaiveDate::from_ymd_opt(2016, 2, 15));
    }

    #[test]
    fn amount_parsing() {
        let (jpy, kwd) = (currency_exponent("JPY"), currency_exponent("KWD"));
        assert_eq!(parse_minor_units("0.01", 2), Ok(1));
        assert_eq!(parse_minor_units("12", 2), Ok(1200));
        assert_eq!(parse_minor_units("10.5", 2), Ok(1050));
        assert_eq!(parse_minor_units("500", jpy), Ok(500));
        assert_eq!(parse_minor_units("1.234", kwd), Ok(1234));
        assert_eq!(parse_minor_units("92233720368547758.07", 2), Ok(i64::MAX));
        for bad in "1.234|-1.00|+1||.5|1.|1,00| 1|1e3|92233720368547758.08".split('|') {
            assert!(is_malformed(parse_minor_units(bad, 2)), "{bad}");
        }
        assert!(is_malformed(parse_minor_units("500.5", jpy)));
        assert_eq!(format_minor_units(1050, 2), "10.50");
        assert_eq!(format_minor_units(500, jpy), "500");
    }

    #[test]
    fn hostile_xml_is_malformed() {
        let bad = |xml: &str| assert!(is_malformed(parse(xml)), "{xml:.60}");
        let ts = "<timestamp>2024-01-01T00:00:00Z</timestamp>";
        let n = |body: &str| format!("<notification>{ts}{body}</notification>");
        bad("not xml");
        bad("");
        bad("<other/>");
        bad(r#"<?xml version="1.0"?><!DOCTYPE n [<!ENTITY a "aaaa">]><notification/>"#);
        bad("<notification><timestamp>yesterday</timestamp><kind>check</kind></notification>");
        bad(&n("")); // no <kind>
        bad(&n("<kind>dispute_won</kind>")); // no <subject><dispute>
        bad(&n(&"<x/>".repeat(30_000))); // over the node limit
        bad(&("<a>".repeat(5_000) + &"</a>".repeat(5_000)));
        bad(&SDK_DISPUTE_OPENED.replace(">USD<", ">US<"));
        bad(&SDK_DISPUTE_OPENED.replace(">100.00</amount-disputed", ">1.001</amount-disputed"));
        let unknown = n("<kind>something_new</kind><subject><dispute/></subject>");
        assert_eq!(parse(&unknown).unwrap().dispute, None);
    }

    #[test]
    fn sample_dispute_round_trips() {
        let k = key("integration_public_key", "integration_private_key");
        let ts = utc("2024-02-29T23:59:01Z");
        let d = DisputeNotice {
            id: "dp_<1>&".into(),
            status: "won".into(),
            reason: None,
            amount_minor: 123_456,
            currency: "JPY".into(),
            transaction_id: Some("txn_1".into()),
            transaction_order_id: Some("order \"42\"".into()),
            received_date: NaiveDate::from_ymd_opt(2024, 2, 1),
        };
        let (signature, payload) = sample_dispute(&k, "dispute_won", ts, &d);
        assert!(payload.lines().all(|l| l.len() <= 60) && payload.ends_with('\n'));
        let n = parse(&verify(&signature, &payload, &[k]).unwrap()).unwrap();
        assert_eq!((n.kind.as_str(), n.timestamp), ("dispute_won", ts));
        assert_eq!(n.dispute, Some(d));
    }
}
