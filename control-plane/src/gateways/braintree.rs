//! Braintree's GraphQL API for PayPal: a billing agreement vaulted from the client-side nonce
//! (`vaultPaymentMethod`), then charged by the merchant (`chargePaymentMethod`, initiator
//! `RECURRING`). Every request and response shape, with its source, is in
//! `docs/providers/braintree.md`.
//!
//! Braintree answers every GraphQL request with HTTP 200: what failed is in `errors`, classed
//! by `extensions.errorClass` (`INTERNAL`, `SERVICE_AVAILABILITY`, `RESOURCE_LIMIT` may
//! succeed later: [`GatewayError::Unavailable`]; `NOT_FOUND` and a refused nonce:
//! [`GatewayError::NotFound`]; the rest: [`GatewayError::Invalid`]).
//!
//! At most once: Braintree has no idempotency key for these mutations, so a charge carries our
//! key as its `orderId` (PayPal's invoice number, unique per business account: PayPal refuses
//! a second transaction under it), and the transaction under that `orderId` is searched for
//! first — a charge driven again after a crash or a timeout finds the one the provider made
//! instead of making another. A charge that times out is searched for at once, so a provider
//! that charged and then stopped answering reports the charge. Refunds do the same with their
//! own `orderId`.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::{
    CardSummary, CustomerRef, Decline, DisputeState, GatewayError, MethodKind, PaymentGateway,
    PaymentOutcome, PaymentRequest, PaymentStatus, Presence, PriceRef, PriceSpec, RefundRef,
    SetupOutcome, SetupStatus,
};
use crate::money::{self, Currency};

/// Braintree's sandbox GraphQL endpoint (production: `https://payments.braintree-api.com/graphql`).
pub const SANDBOX_URL: &str = "https://payments.sandbox.braintree-api.com/graphql";
/// The `Braintree-Version` this client was written against (the schema snapshot's date).
pub const VERSION: &str = "2025-04-29";
/// Braintree recommends a 60 s client timeout.
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
/// Longest `orderId` PayPal takes (its invoice number).
pub const ORDER_ID_MAX: usize = 127;

const CUSTOMER: &str = "mutation CreateCustomer($input: CreateCustomerInput) { createCustomer(input: $input) { customer { id legacyId } } }";

const VAULT: &str = "mutation VaultPayPal($input: VaultPaymentMethodInput!) { vaultPaymentMethod(input: $input) { paymentMethod { id legacyId usage customer { id } details { __typename ... on PayPalAccountDetails { email payerId billingAgreementId } } } verification { id status processorResponse { legacyCode message } gatewayRejectionReason } } }";

const PAYMENT_METHOD: &str = "query PaymentMethod($id: ID!) { node(id: $id) { ... on PaymentMethod { id legacyId usage details { __typename ... on PayPalAccountDetails { email payerId billingAgreementId } } } } }";

/// What every transaction read asks for.
const TX_FIELDS: &str = "id legacyId status orderId amount { value currencyCode } statusHistory { __typename status ... on ProcessorDeclinedEvent { processorResponse { legacyCode message } } ... on GatewayRejectedEvent { gatewayRejectionReason duplicateOf { id } } ... on FailedEvent { processorResponse { legacyCode message } } ... on SettlementDeclinedEvent { processorResponse { legacyCode message } } }";

fn charge_query() -> String {
    format!(
        "mutation ChargePayPal($input: ChargePaymentMethodInput!) {{ chargePaymentMethod(input: $input) {{ transaction {{ {TX_FIELDS} }} }} }}"
    )
}

fn transaction_query() -> String {
    format!(
        "query Transaction($id: ID!) {{ node(id: $id) {{ ... on Transaction {{ {TX_FIELDS} }} }} }}"
    )
}

fn search_query() -> String {
    format!(
        "query FindTransaction($input: TransactionSearchInput!) {{ search {{ transactions(input: $input, first: 1) {{ edges {{ node {{ {TX_FIELDS} }} }} }} }} }}"
    )
}

const REFUND_FIELDS: &str = "id legacyId status orderId amount { value currencyCode }";

fn refund_query() -> String {
    format!(
        "mutation Refund($input: RefundTransactionInput!) {{ refundTransaction(input: $input) {{ refund {{ {REFUND_FIELDS} }} }} }}"
    )
}

fn find_refund_query() -> String {
    format!(
        "query FindRefund($input: RefundSearchInput!) {{ search {{ refunds(input: $input, first: 1) {{ edges {{ node {{ {REFUND_FIELDS} }} }} }} }} }}"
    )
}

/// A not yet settled transaction refunds in full by voiding it.
const REVERSE: &str = "mutation Reverse($input: ReverseTransactionInput!) { reverseTransaction(input: $input) { reversal { __typename ... on Transaction { id status } ... on Refund { id status amount { value currencyCode } } } } }";

/// How to reach a Braintree merchant (`Debug` leaves the private key out, as `SecretString`
/// does).
#[derive(Debug, Clone)]
pub struct Config {
    /// The GraphQL endpoint ([`SANDBOX_URL`], production's, or a local replay in tests).
    pub url: String,
    pub public_key: String,
    pub private_key: SecretString,
    /// The merchant account of each currency (`USD` → `acme_usd`); a currency without one is
    /// refused before anything is charged. Empty: the merchant's default account, any currency.
    pub merchant_accounts: HashMap<String, String>,
    pub timeout: Duration,
}

/// PayPal through Braintree.
pub struct BraintreeGateway {
    http: reqwest::Client,
    url: String,
    authorization: String,
    merchant_accounts: HashMap<String, String>,
}

/// One entry of a response's `errors`.
#[derive(Debug, Clone)]
struct GraphqlError {
    message: String,
    class: String,
    legacy_code: Option<String>,
    input_path: Vec<String>,
}

/// A GraphQL answer: what succeeded and what did not (both may be there).
#[derive(Debug)]
struct Answer {
    data: Value,
    errors: Vec<GraphqlError>,
}

impl Answer {
    /// `errors` as the gateway's error: retryable classes first.
    fn failure(&self, what: &str) -> GatewayError {
        let described = self
            .errors
            .iter()
            .map(|e| match &e.legacy_code {
                Some(c) => format!("{} ({}, {c})", e.message, e.class),
                None => format!("{} ({})", e.message, e.class),
            })
            .collect::<Vec<_>>()
            .join("; ");
        let detail = format!("braintree {what}: {described}");
        let classes: Vec<&str> = self.errors.iter().map(|e| e.class.as_str()).collect();
        if classes
            .iter()
            .any(|c| matches!(*c, "INTERNAL" | "SERVICE_AVAILABILITY" | "RESOURCE_LIMIT"))
        {
            GatewayError::Unavailable(detail)
        } else if classes.contains(&"NOT_FOUND")
            || self.errors.iter().any(|e| {
                e.class == "VALIDATION"
                    && e.input_path.last().is_some_and(|p| p == "paymentMethodId")
            })
        {
            GatewayError::NotFound(detail)
        } else if self.errors.is_empty() {
            GatewayError::Unavailable(format!("braintree {what}: an answer with nothing in it"))
        } else {
            GatewayError::Invalid(detail)
        }
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .filter(|v| !v.is_null())
}

/// A transaction's `status` as our payment status (declines described from its newest
/// status event).
pub fn payment_status(tx: &Value) -> Result<PaymentStatus, GatewayError> {
    let status = str_at(tx, &["status"]).ok_or_else(|| {
        GatewayError::Unavailable("braintree: a transaction without status".into())
    })?;
    Ok(match status {
        "SUBMITTED_FOR_SETTLEMENT" | "SETTLING" | "SETTLED" | "SETTLEMENT_CONFIRMED" => {
            PaymentStatus::Succeeded
        }
        "AUTHORIZING" | "AUTHORIZED" | "SETTLEMENT_PENDING" => PaymentStatus::Processing,
        "VOIDED" => PaymentStatus::Canceled,
        "PROCESSOR_DECLINED"
        | "GATEWAY_REJECTED"
        | "FAILED"
        | "SETTLEMENT_DECLINED"
        | "AUTHORIZATION_EXPIRED" => PaymentStatus::Failed(decline_of(tx)),
        other => {
            return Err(GatewayError::Unavailable(format!(
                "braintree: unknown transaction status {other}"
            )));
        }
    })
}

/// What a failed transaction's newest status event says, in the decline codes dunning and the
/// Dashboard already know (Stripe's): a lost card or a closed PayPal account is as hard a
/// decline here as there.
pub fn decline_of(tx: &Value) -> Decline {
    let event = tx
        .get("statusHistory")
        .and_then(Value::as_array)
        .and_then(|h| h.first())
        .cloned()
        .unwrap_or(Value::Null);
    decline_from(
        str_at(tx, &["status"]).unwrap_or_default(),
        str_at(&event, &["processorResponse", "legacyCode"]),
        str_at(&event, &["processorResponse", "message"]),
        str_at(&event, &["gatewayRejectionReason"]),
    )
}

/// What a refused vault's verification says (its fields are on the verification itself).
pub fn verification_decline(v: &Value) -> Decline {
    decline_from(
        str_at(v, &["status"]).unwrap_or_default(),
        str_at(v, &["processorResponse", "legacyCode"]),
        str_at(v, &["processorResponse", "message"]),
        str_at(v, &["gatewayRejectionReason"]),
    )
}

fn decline_from(
    status: &str,
    legacy: Option<&str>,
    message: Option<&str>,
    rejection: Option<&str>,
) -> Decline {
    let message = message
        .map(str::to_owned)
        .unwrap_or_else(|| format!("PayPal payment {}", status.to_lowercase().replace('_', " ")));
    match status {
        "GATEWAY_REJECTED" => {
            let reason = rejection.unwrap_or_default();
            let decline_code = match reason {
                "FRAUD" | "RISK_THRESHOLD" => "fraudulent",
                "PAYMENT_METHOD_BLOCKED" => "restricted_card",
                _ => "generic_decline",
            };
            Decline {
                code: "card_declined".into(),
                decline_code: Some(decline_code.into()),
                message: format!("PayPal payment rejected ({})", reason.to_lowercase()),
            }
        }
        "FAILED" => Decline {
            code: "processing_error".into(),
            decline_code: legacy.map(|c| format!("braintree_{c}")),
            message,
        },
        _ => processor_decline(legacy.unwrap_or_default(), &message),
    }
}

/// A processor's decline with Braintree `legacy` code, in Stripe's codes.
pub fn processor_decline(legacy: &str, message: &str) -> Decline {
    Decline {
        code: "card_declined".into(),
        decline_code: Some(processor_decline_code(legacy).into()),
        message: message.to_owned(),
    }
}

/// Braintree's processor response codes (`legacyCode`) as Stripe's decline codes.
pub fn processor_decline_code(legacy: &str) -> &'static str {
    match legacy {
        "2000" => "do_not_honor",
        "2001" => "insufficient_funds",
        "2002" | "2003" => "card_velocity_exceeded",
        "2004" => "expired_card",
        "2005" => "incorrect_number",
        "2010" => "incorrect_cvc",
        "2012" => "lost_card",
        "2013" => "stolen_card",
        "2014" | "2077" => "fraudulent",
        "2015" => "transaction_not_allowed",
        "2044" => "call_issuer",
        "2057" => "restricted_card",
        // The payer's PayPal account is locked or closed.
        "2075" => "invalid_account",
        _ => "generic_decline",
    }
}

fn outcome_of(tx: &Value) -> Result<PaymentOutcome, GatewayError> {
    let id = str_at(tx, &["id"])
        .ok_or_else(|| GatewayError::Unavailable("braintree: a transaction without id".into()))?;
    Ok(PaymentOutcome {
        payment_intent_id: id.to_owned(),
        status: payment_status(tx)?,
    })
}

fn currency(code: &str) -> Result<Currency, GatewayError> {
    Currency::parse(code).ok_or_else(|| GatewayError::Invalid(format!("currency {code}")))
}

impl BraintreeGateway {
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let credentials = format!(
            "{}:{}",
            config.public_key,
            config.private_key.expose_secret()
        );
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(config.timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            url: config.url,
            authorization: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(credentials)
            ),
            merchant_accounts: config.merchant_accounts,
        })
    }

    /// One GraphQL request. Transport failures, 429 and 5xx are [`GatewayError::Unavailable`]
    /// (the outcome of a mutation is then unknown).
    async fn call(&self, query: &str, variables: Value) -> Result<Answer, GatewayError> {
        let resp = self
            .http
            .post(&self.url)
            .header("Authorization", &self.authorization)
            .header("Braintree-Version", VERSION)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .map_err(|e| GatewayError::Unavailable(format!("braintree: {e}")))?;
        let status = resp.status();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(GatewayError::Unavailable(format!(
                "braintree: HTTP {status}"
            )));
        }
        if !status.is_success() {
            return Err(GatewayError::Invalid(format!("braintree: HTTP {status}")));
        }
        let body: Value = resp
            .json()
            .await
            .map_err(|e| GatewayError::Unavailable(format!("braintree: unreadable answer: {e}")))?;
        let errors = body
            .get("errors")
            .and_then(Value::as_array)
            .map(|errs| {
                errs.iter()
                    .map(|e| GraphqlError {
                        message: str_at(e, &["message"]).unwrap_or_default().to_owned(),
                        class: str_at(e, &["extensions", "errorClass"])
                            .unwrap_or("UNKNOWN")
                            .to_owned(),
                        legacy_code: str_at(e, &["extensions", "legacyCode"]).map(str::to_owned),
                        input_path: e
                            .pointer("/extensions/inputPath")
                            .and_then(Value::as_array)
                            .map(|p| {
                                p.iter()
                                    .filter_map(|s| s.as_str().map(str::to_owned))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Some(id) = str_at(&body, &["extensions", "requestId"]) {
            tracing::debug!(braintree_request_id = id, "braintree answered");
        }
        Ok(Answer {
            data: body.get("data").cloned().unwrap_or(Value::Null),
            errors,
        })
    }

    /// The transaction made under `order_id`, if any.
    async fn find_transaction(&self, order_id: &str) -> Result<Option<Value>, GatewayError> {
        let a = self
            .call(
                &search_query(),
                json!({ "input": { "orderId": { "is": order_id } } }),
            )
            .await?;
        let Some(edges) = a
            .data
            .pointer("/search/transactions/edges")
            .and_then(Value::as_array)
        else {
            return Err(a.failure("transaction search"));
        };
        Ok(edges.first().and_then(|e| at(e, &["node"])).cloned())
    }

    async fn transaction(&self, id: &str) -> Result<Value, GatewayError> {
        let a = self.call(&transaction_query(), json!({ "id": id })).await?;
        match at(&a.data, &["node"]) {
            Some(tx) if tx.get("status").is_some() => Ok(tx.clone()),
            Some(_) => Err(GatewayError::NotFound(format!("{id} is not a transaction"))),
            None if a.errors.is_empty() => Err(GatewayError::NotFound(format!("transaction {id}"))),
            None => Err(a.failure("transaction")),
        }
    }

    /// A found transaction of `order_id` must be the payment asked for again.
    fn same_payment(tx: &Value, amount: &str) -> Result<(), GatewayError> {
        match str_at(tx, &["amount", "value"]) {
            Some(v) if v == amount => Ok(()),
            other => Err(GatewayError::Invalid(format!(
                "idempotency key was used for another amount ({} ≠ {amount})",
                other.unwrap_or("none")
            ))),
        }
    }

    fn vaulted(pm: &Value, fallback_id: &str) -> Result<SetupOutcome, GatewayError> {
        let kind = str_at(pm, &["details", "__typename"]).unwrap_or_default();
        if kind != "PayPalAccountDetails" {
            return Err(GatewayError::Invalid(format!(
                "the nonce vaulted a {kind}, not a PayPal billing agreement"
            )));
        }
        if str_at(pm, &["usage"]) == Some("SINGLE_USE") {
            return Err(GatewayError::Invalid(
                "a one-time PayPal approval cannot be charged again; ask for a billing agreement"
                    .into(),
            ));
        }
        let id = str_at(pm, &["id"]).unwrap_or(fallback_id).to_owned();
        Ok(SetupOutcome {
            setup_intent_id: id.clone(),
            payment_method_id: id,
            card: CardSummary::default(),
            kind: MethodKind::Paypal,
            payer_email: str_at(pm, &["details", "email"]).map(str::to_owned),
            status: SetupStatus::Succeeded,
        })
    }
}

#[async_trait]
impl PaymentGateway for BraintreeGateway {
    fn name(&self) -> &'static str {
        "braintree"
    }

    async fn create_customer(
        &self,
        email: &str,
        name: &str,
        idempotency_key: &str,
    ) -> Result<CustomerRef, GatewayError> {
        let a = self
            .call(
                CUSTOMER,
                json!({ "input": { "clientMutationId": idempotency_key,
                                   "customer": { "email": email, "company": name } } }),
            )
            .await?;
        match str_at(&a.data, &["createCustomer", "customer", "id"]) {
            Some(id) => Ok(CustomerRef { id: id.to_owned() }),
            None => Err(a.failure("createCustomer")),
        }
    }

    /// Vaults the PayPal nonce (`payment_method`) to `customer`. Braintree has no key to make
    /// this idempotent, and a nonce is single-use: repeated, the second vault is refused as a
    /// used nonce ([`GatewayError::NotFound`]).
    async fn setup_payment_method(
        &self,
        customer: &str,
        payment_method: &str,
        idempotency_key: &str,
    ) -> Result<SetupOutcome, GatewayError> {
        let a = self
            .call(
                VAULT,
                json!({ "input": { "paymentMethodId": payment_method, "customerId": customer,
                                   "clientMutationId": idempotency_key } }),
            )
            .await?;
        if let Some(pm) = at(&a.data, &["vaultPaymentMethod", "paymentMethod"]) {
            return Self::vaulted(pm, payment_method);
        }
        // Refused by the verification: a decline, described as one.
        if let Some(v) = at(&a.data, &["vaultPaymentMethod", "verification"]) {
            let status = str_at(v, &["status"]).unwrap_or_default();
            if matches!(status, "PROCESSOR_DECLINED" | "GATEWAY_REJECTED" | "FAILED") {
                let id = str_at(v, &["id"]).unwrap_or_default().to_owned();
                return Ok(SetupOutcome {
                    setup_intent_id: id,
                    payment_method_id: String::new(),
                    card: CardSummary::default(),
                    kind: MethodKind::Paypal,
                    payer_email: None,
                    status: SetupStatus::Failed(verification_decline(v)),
                });
            }
        }
        Err(a.failure("vaultPaymentMethod"))
    }

    /// A vault completes in its request: the set-up's id is the payment method's, read again.
    async fn retrieve_setup(&self, setup_intent_id: &str) -> Result<SetupOutcome, GatewayError> {
        let a = self
            .call(PAYMENT_METHOD, json!({ "id": setup_intent_id }))
            .await?;
        match at(&a.data, &["node"]) {
            Some(pm) => Self::vaulted(pm, setup_intent_id),
            None if a.errors.is_empty() => Err(GatewayError::NotFound(format!(
                "payment method {setup_intent_id}"
            ))),
            None => Err(a.failure("payment method")),
        }
    }

    /// Nothing waits for the customer after a vault: its current state.
    async fn cancel_setup(&self, setup_intent_id: &str) -> Result<SetupOutcome, GatewayError> {
        self.retrieve_setup(setup_intent_id).await
    }

    async fn create_payment(
        &self,
        req: PaymentRequest<'_>,
    ) -> Result<PaymentOutcome, GatewayError> {
        let order_id = req.idempotency_key;
        if order_id.is_empty() || order_id.len() > ORDER_ID_MAX {
            return Err(GatewayError::Invalid(format!(
                "an orderId must have 1 to {ORDER_ID_MAX} characters"
            )));
        }
        if req.amount.amount_minor <= 0 {
            return Err(GatewayError::Invalid("amount must be positive".into()));
        }
        let amount = money::decimal(req.amount.amount_minor, currency(req.amount.currency)?);
        let merchant_account = match self.merchant_accounts.get(req.amount.currency) {
            Some(m) => Some(m.as_str()),
            None if self.merchant_accounts.is_empty() => None,
            None => {
                return Err(GatewayError::Invalid(format!(
                    "no Braintree merchant account for {}",
                    req.amount.currency
                )));
            }
        };
        if let Some(tx) = self.find_transaction(order_id).await? {
            Self::same_payment(&tx, &amount)?;
            return outcome_of(&tx);
        }
        let initiator = match req.presence {
            Presence::OnSession => "RECURRING_FIRST",
            Presence::OffSession => "RECURRING",
        };
        let mut transaction = json!({ "amount": amount, "orderId": order_id,
                                      "paymentInitiator": initiator });
        if let Some(m) = merchant_account {
            transaction["merchantAccountId"] = json!(m);
        }
        let charged = self
            .call(
                &charge_query(),
                json!({ "input": { "paymentMethodId": req.payment_method,
                                   "clientMutationId": order_id, "transaction": transaction } }),
            )
            .await;
        let a = match charged {
            Ok(a) => a,
            Err(GatewayError::Unavailable(e)) => {
                // Charged or not? Braintree's advice: search for it.
                return match self.find_transaction(order_id).await {
                    Ok(Some(tx)) => outcome_of(&tx),
                    _ => Err(GatewayError::Unavailable(e)),
                };
            }
            Err(e) => return Err(e),
        };
        let Some(tx) = at(&a.data, &["chargePaymentMethod", "transaction"]) else {
            return Err(a.failure("chargePaymentMethod"));
        };
        // Braintree's duplicate check found the first charge: that one is the answer.
        if str_at(tx, &["status"]) == Some("GATEWAY_REJECTED")
            && let Some(first) = tx
                .pointer("/statusHistory/0/duplicateOf/id")
                .and_then(Value::as_str)
        {
            return outcome_of(&self.transaction(first).await?);
        }
        outcome_of(tx)
    }

    async fn retrieve_payment(
        &self,
        payment_intent_id: &str,
    ) -> Result<PaymentOutcome, GatewayError> {
        outcome_of(&self.transaction(payment_intent_id).await?)
    }

    /// A PayPal charge never waits for the customer, so there is nothing to cancel: its
    /// current state.
    async fn cancel_payment(
        &self,
        payment_intent_id: &str,
    ) -> Result<PaymentOutcome, GatewayError> {
        self.retrieve_payment(payment_intent_id).await
    }

    /// Braintree holds no catalog for us: plans are priced by our own charges.
    async fn ensure_price(&self, _spec: &PriceSpec<'_>) -> Result<PriceRef, GatewayError> {
        Err(GatewayError::Invalid(
            "Braintree keeps no price catalog for Tollgate".into(),
        ))
    }

    /// Refunds under `idempotency_key` as the refund's `orderId` (found again first). A
    /// transaction not settled yet cannot be refunded: refunded in full, it is voided instead.
    async fn refund(
        &self,
        payment_intent_id: &str,
        amount_minor: i64,
        idempotency_key: &str,
    ) -> Result<RefundRef, GatewayError> {
        if amount_minor <= 0 {
            return Err(GatewayError::Invalid("refund must be positive".into()));
        }
        let tx = self.transaction(payment_intent_id).await?;
        let code = str_at(&tx, &["amount", "currencyCode"]).unwrap_or("USD");
        let c = currency(code)?;
        let amount = money::decimal(amount_minor, c);
        let paid = str_at(&tx, &["amount", "value"])
            .unwrap_or_default()
            .to_owned();
        let found = self
            .call(
                &find_refund_query(),
                json!({ "input": { "orderId": { "is": idempotency_key } } }),
            )
            .await?;
        if let Some(r) = found.data.pointer("/search/refunds/edges/0/node")
            && let Some(id) = str_at(r, &["id"])
        {
            return Ok(RefundRef {
                id: id.to_owned(),
                amount_minor,
            });
        }
        let unsettled = matches!(
            str_at(&tx, &["status"]),
            Some("SUBMITTED_FOR_SETTLEMENT" | "AUTHORIZED" | "SETTLEMENT_PENDING")
        );
        if unsettled {
            if amount != paid {
                return Err(GatewayError::Invalid(
                    "a payment not settled yet can only be refunded in full".into(),
                ));
            }
            let a = self
                .call(
                    REVERSE,
                    json!({ "input": { "transactionId": payment_intent_id,
                                       "clientMutationId": idempotency_key } }),
                )
                .await?;
            return match str_at(&a.data, &["reverseTransaction", "reversal", "id"]) {
                Some(id) => Ok(RefundRef {
                    id: id.to_owned(),
                    amount_minor,
                }),
                None => Err(a.failure("reverseTransaction")),
            };
        }
        let a = self
            .call(
                &refund_query(),
                json!({ "input": { "transactionId": payment_intent_id,
                                   "clientMutationId": idempotency_key,
                                   "refund": { "amount": amount, "orderId": idempotency_key } } }),
            )
            .await?;
        match str_at(&a.data, &["refundTransaction", "refund", "id"]) {
            Some(id) => Ok(RefundRef {
                id: id.to_owned(),
                amount_minor,
            }),
            None => Err(a.failure("refundTransaction")),
        }
    }

    /// Not read back from Braintree: refunds of PayPal payments are made by Tollgate (booked
    /// when made), and disputes arrive as signed webhooks carrying their state.
    async fn refunds_of(&self, _payment_intent_id: &str) -> Result<Vec<RefundRef>, GatewayError> {
        Err(GatewayError::Invalid(
            "Braintree refunds are not listed; Tollgate books the ones it makes".into(),
        ))
    }

    async fn resolve_dispute(
        &self,
        _dispute_id: &str,
        _accept: bool,
        _evidence: &str,
    ) -> Result<DisputeState, GatewayError> {
        Err(GatewayError::Invalid(
            "Braintree disputes are answered in Braintree's control panel".into(),
        ))
    }

    async fn retrieve_dispute(&self, _dispute_id: &str) -> Result<DisputeState, GatewayError> {
        Err(GatewayError::Invalid(
            "Braintree disputes arrive by signed webhook with their state".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processor_codes_keep_their_hardness() {
        let tx = |status: &str, event: Value| json!({ "id": "t", "status": status, "statusHistory": [event] });
        let d = decline_of(&tx(
            "PROCESSOR_DECLINED",
            json!({ "status": "PROCESSOR_DECLINED",
                    "processorResponse": { "legacyCode": "2001", "message": "Insufficient Funds" } }),
        ));
        assert_eq!(d.decline_code.as_deref(), Some("insufficient_funds"));
        assert!(!crate::dunning::policy::is_hard(
            &d.code,
            d.decline_code.as_deref()
        ));
        for (code, hard) in [
            ("2013", "stolen_card"),
            ("2075", "invalid_account"),
            ("2004", "expired_card"),
        ] {
            let d = decline_of(&tx(
                "PROCESSOR_DECLINED",
                json!({ "processorResponse": { "legacyCode": code, "message": "x" } }),
            ));
            assert_eq!(d.decline_code.as_deref(), Some(hard));
            assert!(
                crate::dunning::policy::is_hard(&d.code, d.decline_code.as_deref()),
                "{code}"
            );
        }
        let d = decline_of(&tx(
            "GATEWAY_REJECTED",
            json!({ "gatewayRejectionReason": "FRAUD" }),
        ));
        assert_eq!(d.decline_code.as_deref(), Some("fraudulent"));
        let d = decline_of(&tx(
            "FAILED",
            json!({ "processorResponse": { "legacyCode": "3000", "message": "Processor Network Unavailable - Try Again" } }),
        ));
        assert_eq!(d.code, "processing_error");
        assert!(!crate::dunning::policy::is_hard(
            &d.code,
            d.decline_code.as_deref()
        ));
    }

    #[test]
    fn settlement_states_are_payments_and_unknown_ones_are_not_guessed() {
        for s in [
            "SUBMITTED_FOR_SETTLEMENT",
            "SETTLING",
            "SETTLED",
            "SETTLEMENT_CONFIRMED",
        ] {
            assert_eq!(
                payment_status(&json!({ "status": s })).unwrap(),
                PaymentStatus::Succeeded
            );
        }
        assert_eq!(
            payment_status(&json!({ "status": "SETTLEMENT_PENDING" })).unwrap(),
            PaymentStatus::Processing
        );
        assert!(matches!(
            payment_status(&json!({ "status": "SOMETHING_NEW" })),
            Err(GatewayError::Unavailable(_))
        ));
    }
}
