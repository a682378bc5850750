//! A payment provider that behaves like Stripe's test mode for Stripe's test payment-method
//! ids. Development and tests only: outside dev mode the control plane refuses to start
//! without a Stripe key.
//!
//! | payment method | set-up | on-session charge | off-session charge |
//! |---|---|---|---|
//! | `pm_card_visa`, `pm_card_mastercard` | succeeds | succeeds | succeeds |
//! | `pm_card_threeDSecure2Required`, `pm_card_authenticationRequired` | 3-D Secure | 3-D Secure | `authentication_required` |
//! | `pm_card_chargeDeclined` | `card_declined` / `generic_decline` | same | same |
//! | `pm_card_chargeDeclinedInsufficientFunds` | `card_declined` / `insufficient_funds` | same | same |
//! | `pm_card_chargeCustomerFail` | succeeds | `card_declined` / `generic_decline` | same |
//!
//! It also stands in for Braintree with Braintree's documented test nonces (PayPal is offered
//! through it in development):
//!
//! | nonce | vault | charge |
//! |---|---|---|
//! | `fake-paypal-billing-agreement-nonce` | a PayPal account (`payer@example.com`) | succeeds, except Braintree's test amounts: 2000.00–2999.99 declined with that processor code (2001.00: `insufficient_funds`), 3000.00–3000.99 failed (`processing_error`), 5001.01 declined (2038) |
//! | `fake-paypal-one-time-nonce` | refused: a one-time approval cannot be vaulted | |
//! | `fake-consumed-nonce` | refused: the nonce was used | |
//! | `fake-processor-declined-visa-nonce` (`-mastercard-`, `-amex-`, `-discover-`) | declined (2000 `do_not_honor`) | |
//! | `fake-gateway-rejected-fraud-nonce` | rejected (`fraudulent`) | |
//! | `fake-valid-nonce` | a card, not PayPal | |
//!
//! Its state lives in PostgreSQL (the `sim_*` tables of cf), not in process memory: like a real
//! provider it outlives any control-plane process (a restart keeps every saved card working),
//! and every process of a stack sees the same objects. Each call is its own short transaction
//! on its own connection — never the caller's — as a call to a remote provider would be.
//!
//! A 3-D Secure challenge is completed with [`SimulatedGateway::authenticate`], exposed by the
//! development-only route `POST /dev/v1/simulator/intents/{id}/authenticate` — that route does
//! not exist when a real Stripe key is configured. Idempotency keys behave as Stripe's: the same
//! key with the same parameters returns the first result; with different parameters it is an
//! error. Ids are letters only (`pm_sim…`), so none can look like a card number.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::{
    CardSummary, CustomerRef, Decline, DisputeState, DisputeStatus, GatewayError, MethodKind,
    PaymentGateway, PaymentOutcome, PaymentRequest, PaymentStatus, Presence, PriceRef, PriceSpec,
    RefundRef, SetupOutcome, SetupStatus,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Succeeds,
    ThreeDSecure,
    Declines(&'static str),
    ChargeFails,
    /// A PayPal billing agreement: charges answer as Braintree's sandbox does by amount.
    Paypal,
}

/// The PayPal account a vaulted test nonce stands for.
pub const SIM_PAYER_EMAIL: &str = "payer@example.com";

/// Braintree's test nonces that the vault refuses (as Braintree does).
fn refused_nonce(nonce: &str) -> Option<GatewayError> {
    match nonce {
        "fake-paypal-one-time-nonce" => Some(GatewayError::Invalid(
            "a one-time PayPal approval cannot be vaulted".into(),
        )),
        "fake-consumed-nonce" => Some(GatewayError::NotFound(
            "Unknown or expired single-use payment method.".into(),
        )),
        _ => None,
    }
}

/// What Braintree's sandbox answers a PayPal charge of `amount_minor` with (its test amounts).
fn paypal_charge(amount_minor: i64) -> Status {
    match amount_minor {
        200_000..=299_999 => Status::failed(super::braintree::processor_decline(
            &(amount_minor / 100).to_string(),
            "Processor Declined",
        )),
        300_000..=300_099 => Status::failed(decline(
            "processing_error",
            Some("braintree_3000"),
            "Processor Network Unavailable - Try Again",
        )),
        500_101 => Status::failed(super::braintree::processor_decline(
            "2038",
            "Processor Declined",
        )),
        _ => Status::Succeeded,
    }
}

impl Behaviour {
    fn as_str(self) -> &'static str {
        match self {
            Self::Succeeds => "succeeds",
            Self::ThreeDSecure => "three_d_secure",
            Self::Declines("insufficient_funds") => "declines_insufficient_funds",
            Self::Declines(_) => "declines",
            Self::ChargeFails => "charge_fails",
            Self::Paypal => "paypal",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "succeeds" => Self::Succeeds,
            "three_d_secure" => Self::ThreeDSecure,
            "declines_insufficient_funds" => Self::Declines("insufficient_funds"),
            "declines" => Self::Declines("generic_decline"),
            "charge_fails" => Self::ChargeFails,
            "paypal" => Self::Paypal,
            _ => return None,
        })
    }
}

/// Stripe's test payment-method ids this simulator understands.
fn test_card(pm: &str) -> Option<(Behaviour, &'static str, &'static str)> {
    Some(match pm {
        "pm_card_visa" => (Behaviour::Succeeds, "visa", "4242"),
        "pm_card_mastercard" => (Behaviour::Succeeds, "mastercard", "4444"),
        "pm_card_threeDSecure2Required" => (Behaviour::ThreeDSecure, "visa", "3220"),
        "pm_card_authenticationRequired" => (Behaviour::ThreeDSecure, "visa", "3184"),
        "pm_card_chargeDeclined" => (Behaviour::Declines("generic_decline"), "visa", "0002"),
        "pm_card_chargeDeclinedInsufficientFunds" => {
            (Behaviour::Declines("insufficient_funds"), "visa", "9995")
        }
        "pm_card_chargeCustomerFail" => (Behaviour::ChargeFails, "visa", "0341"),
        // Braintree's test nonces.
        "fake-paypal-billing-agreement-nonce" => (Behaviour::Paypal, "paypal", ""),
        "fake-processor-declined-visa-nonce"
        | "fake-processor-declined-mastercard-nonce"
        | "fake-processor-declined-amex-nonce"
        | "fake-processor-declined-discover-nonce" => {
            (Behaviour::Declines("do_not_honor"), "visa", "0002")
        }
        "fake-gateway-rejected-fraud-nonce" => (Behaviour::Declines("fraudulent"), "visa", "0002"),
        "fake-valid-nonce" => (Behaviour::Succeeds, "visa", "1881"),
        _ => return None,
    })
}

fn decline(code: &str, decline_code: Option<&str>, message: &str) -> Decline {
    Decline {
        code: code.to_owned(),
        decline_code: decline_code.map(str::to_owned),
        message: message.to_owned(),
    }
}

fn card_declined(decline_code: &str) -> Decline {
    decline(
        "card_declined",
        Some(decline_code),
        "Your card was declined.",
    )
}

/// An intent's status as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum Status {
    Succeeded,
    RequiresAction {
        client_secret: String,
    },
    Processing,
    Canceled,
    Failed {
        code: String,
        decline_code: Option<String>,
        message: String,
    },
}

impl Status {
    fn failed(d: Decline) -> Self {
        Self::Failed {
            code: d.code,
            decline_code: d.decline_code,
            message: d.message,
        }
    }

    fn payment(&self) -> PaymentStatus {
        match self.clone() {
            Self::Succeeded => PaymentStatus::Succeeded,
            Self::RequiresAction { client_secret } => {
                PaymentStatus::RequiresAction { client_secret }
            }
            Self::Processing => PaymentStatus::Processing,
            Self::Canceled => PaymentStatus::Canceled,
            Self::Failed {
                code,
                decline_code,
                message,
            } => PaymentStatus::Failed(Decline {
                code,
                decline_code,
                message,
            }),
        }
    }

    fn setup(&self) -> SetupStatus {
        match self.clone() {
            Self::Succeeded => SetupStatus::Succeeded,
            Self::RequiresAction { client_secret } => SetupStatus::RequiresAction { client_secret },
            Self::Processing => SetupStatus::Pending,
            Self::Canceled => SetupStatus::Failed(decline(
                "setup_intent_canceled",
                None,
                "the SetupIntent was canceled",
            )),
            Self::Failed {
                code,
                decline_code,
                message,
            } => SetupStatus::Failed(Decline {
                code,
                decline_code,
                message,
            }),
        }
    }
}

/// A stored SetupIntent or PaymentIntent.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Intent {
    status: Status,
    payment_method: String,
    #[serde(default)]
    customer: String,
    #[serde(default)]
    amount_minor: i64,
    #[serde(default)]
    refunded_minor: i64,
    #[serde(default)]
    brand: String,
    #[serde(default)]
    last4: String,
    /// ISO-4217 of a payment.
    #[serde(default)]
    currency: String,
    /// A payment's refunds: id and amount.
    #[serde(default)]
    refunds: Vec<(String, i64)>,
}

impl Intent {
    fn setup_outcome(&self, id: &str) -> SetupOutcome {
        let paypal = self.brand == "paypal";
        SetupOutcome {
            setup_intent_id: id.to_owned(),
            payment_method_id: self.payment_method.clone(),
            card: if paypal {
                CardSummary::default()
            } else {
                CardSummary {
                    brand: Some(self.brand.clone()),
                    last4: Some(self.last4.clone()),
                    exp_month: Some(12),
                    exp_year: Some(2034),
                }
            },
            kind: if paypal {
                MethodKind::Paypal
            } else {
                MethodKind::Card
            },
            payer_email: paypal.then(|| SIM_PAYER_EMAIL.to_owned()),
            status: self.status.setup(),
        }
    }

    fn payment_outcome(&self, id: &str) -> PaymentOutcome {
        PaymentOutcome {
            payment_intent_id: id.to_owned(),
            status: self.status.payment(),
        }
    }
}

/// What an idempotency key returned the first time.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Remembered {
    Customer { id: String },
    Setup { intent: String },
    Payment { intent: String },
    Refund { id: String, amount_minor: i64 },
}

/// What a call's parameters were, for "same key, other parameters": a hash of them.
fn fingerprint(parts: &[&str]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p.len().to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

fn db(e: sqlx::Error) -> GatewayError {
    GatewayError::Unavailable(format!("simulator database: {e}"))
}

/// A fresh id, letters only after the prefix (`pm_simqhxk…`): a simulated id never looks like
/// a card number.
fn sim_id(prefix: &str) -> String {
    let letters: String = uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .map(|b| char::from(b'a' + b % 26))
        .collect();
    format!("{prefix}_sim{letters}")
}

/// A stored dispute (`sim_disputes`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SimDispute {
    payment: String,
    amount_minor: i64,
    currency: String,
    status: DisputeStatus,
    reason: String,
}

impl SimDispute {
    fn state(self, id: &str) -> DisputeState {
        DisputeState {
            id: id.to_owned(),
            payment_id: self.payment,
            amount_minor: self.amount_minor,
            currency: self.currency,
            status: self.status,
            reason: Some(self.reason),
        }
    }
}

/// The simulated provider. Cheap to clone; state in PostgreSQL.
#[derive(Debug, Clone)]
pub struct SimulatedGateway {
    pool: PgPool,
}

impl SimulatedGateway {
    /// A simulator keeping its state in `pool` (cf: the `sim_*` tables).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    async fn remembered(
        conn: &mut sqlx::PgConnection,
        key: &str,
        fingerprint: &str,
    ) -> Result<Option<Remembered>, GatewayError> {
        // Concurrent first uses of one key queue here, as at a real provider.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('sim:' || $1))")
            .bind(key)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
        let row: Option<(String, sqlx::types::Json<Remembered>)> =
            sqlx::query_as("SELECT fingerprint, result FROM sim_idempotency WHERE key = $1")
                .bind(key)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db)?;
        match row {
            None => Ok(None),
            Some((f, r)) if f == fingerprint => Ok(Some(r.0)),
            Some(_) => Err(GatewayError::Invalid(
                "idempotency key was used with different parameters".into(),
            )),
        }
    }

    async fn remember(
        conn: &mut sqlx::PgConnection,
        key: &str,
        fingerprint: &str,
        result: &Remembered,
    ) -> Result<(), GatewayError> {
        sqlx::query("INSERT INTO sim_idempotency (key, fingerprint, result) VALUES ($1, $2, $3)")
            .bind(key)
            .bind(fingerprint)
            .bind(sqlx::types::Json(result))
            .execute(conn)
            .await
            .map_err(db)
            .map(drop)
    }

    async fn intent(
        conn: &mut sqlx::PgConnection,
        id: &str,
        kind: &str,
        lock: bool,
    ) -> Result<Intent, GatewayError> {
        let sql = if lock {
            "SELECT state FROM sim_intents WHERE id = $1 AND kind = $2 FOR UPDATE"
        } else {
            "SELECT state FROM sim_intents WHERE id = $1 AND kind = $2"
        };
        let row: Option<(sqlx::types::Json<Intent>,)> = sqlx::query_as(sql)
            .bind(id)
            .bind(kind)
            .fetch_optional(conn)
            .await
            .map_err(db)?;
        row.map(|(i,)| i.0)
            .ok_or_else(|| GatewayError::NotFound(format!("{kind} intent")))
    }

    async fn save(
        conn: &mut sqlx::PgConnection,
        id: &str,
        kind: &str,
        intent: &Intent,
    ) -> Result<(), GatewayError> {
        sqlx::query(
            "INSERT INTO sim_intents (id, kind, state, updated_at) VALUES ($1, $2, $3, now())
             ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, updated_at = EXCLUDED.updated_at",
        )
        .bind(id)
        .bind(kind)
        .bind(sqlx::types::Json(intent))
        .execute(conn)
        .await
        .map_err(db)
        .map(drop)
    }

    /// Completes (or fails) the 3-D Secure challenge of a SetupIntent (`seti_…`) or a
    /// PaymentIntent (`pi_…`) waiting for the customer.
    pub async fn authenticate(&self, intent_id: &str, succeed: bool) -> Result<(), GatewayError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let row: Option<(String, sqlx::types::Json<Intent>)> =
            sqlx::query_as("SELECT kind, state FROM sim_intents WHERE id = $1 FOR UPDATE")
                .bind(intent_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
        let Some((kind, mut intent)) = row.map(|(k, i)| (k, i.0)) else {
            return Err(GatewayError::NotFound("intent".into()));
        };
        if !matches!(intent.status, Status::RequiresAction { .. }) {
            return Err(GatewayError::Invalid(format!(
                "{intent_id} is not awaiting authentication"
            )));
        }
        intent.status = if succeed {
            Status::Succeeded
        } else {
            Status::failed(decline(
                "payment_intent_authentication_failure",
                None,
                "The customer failed 3-D Secure authentication.",
            ))
        };
        Self::save(&mut tx, intent_id, &kind, &intent).await?;
        tx.commit().await.map_err(db)
    }

    /// The cardholder disputes a succeeded payment (`pi_…`) for what was not refunded, as a
    /// card network would: the dispute opens as `needs_response` (or as an inquiry).
    pub async fn open_dispute(
        &self,
        payment_intent_id: &str,
        reason: &str,
        inquiry: bool,
    ) -> Result<DisputeState, GatewayError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let intent = Self::intent(&mut tx, payment_intent_id, "payment", true).await?;
        if intent.status != Status::Succeeded {
            return Err(GatewayError::Invalid(
                "only a succeeded payment can be disputed".into(),
            ));
        }
        let amount_minor = intent
            .amount_minor
            .checked_sub(intent.refunded_minor)
            .filter(|a| *a > 0)
            .ok_or_else(|| {
                GatewayError::Invalid("nothing left of the payment to dispute".into())
            })?;
        let reason = reason.trim();
        if reason.is_empty()
            || reason.len() > 100
            || !reason.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        {
            return Err(GatewayError::Invalid(
                "a dispute reason is a short snake_case word (e.g. `fraudulent`)".into(),
            ));
        }
        let id = sim_id("dp");
        let d = SimDispute {
            payment: payment_intent_id.to_owned(),
            amount_minor,
            currency: if intent.currency.is_empty() {
                "USD".to_owned()
            } else {
                intent.currency.clone()
            },
            status: if inquiry {
                DisputeStatus::Inquiry
            } else {
                DisputeStatus::NeedsResponse
            },
            reason: reason.to_owned(),
        };
        sqlx::query("INSERT INTO sim_disputes (id, state, updated_at) VALUES ($1, $2, now())")
            .bind(&id)
            .bind(sqlx::types::Json(&d))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(d.state(&id))
    }

    /// Moves a dispute on (evidence submitted, decided). A decided dispute stays decided.
    pub async fn update_dispute(
        &self,
        dispute_id: &str,
        status: DisputeStatus,
    ) -> Result<DisputeState, GatewayError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let row: Option<(sqlx::types::Json<SimDispute>,)> =
            sqlx::query_as("SELECT state FROM sim_disputes WHERE id = $1 FOR UPDATE")
                .bind(dispute_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
        let mut d = row
            .map(|(d,)| d.0)
            .ok_or_else(|| GatewayError::NotFound(format!("dispute {dispute_id}")))?;
        if d.status.is_closed() && d.status != status {
            return Err(GatewayError::Invalid(format!(
                "dispute {dispute_id} is {} already",
                d.status.as_str()
            )));
        }
        d.status = status;
        sqlx::query("UPDATE sim_disputes SET state = $2, updated_at = now() WHERE id = $1")
            .bind(dispute_id)
            .bind(sqlx::types::Json(&d))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(d.state(dispute_id))
    }
}

#[async_trait]
impl PaymentGateway for SimulatedGateway {
    fn name(&self) -> &'static str {
        "simulated"
    }

    async fn create_customer(
        &self,
        email: &str,
        name: &str,
        idempotency_key: &str,
    ) -> Result<CustomerRef, GatewayError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let fingerprint = fingerprint(&["customer", email, name]);
        if let Some(Remembered::Customer { id }) =
            Self::remembered(&mut tx, idempotency_key, &fingerprint).await?
        {
            return Ok(CustomerRef { id });
        }
        let id = sim_id("cus");
        sqlx::query(
            "INSERT INTO sim_customers (id, email, name, created_at) VALUES ($1, $2, $3, now())",
        )
        .bind(&id)
        .bind(email)
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        Self::remember(
            &mut tx,
            idempotency_key,
            &fingerprint,
            &Remembered::Customer { id: id.clone() },
        )
        .await?;
        tx.commit().await.map_err(db)?;
        Ok(CustomerRef { id })
    }

    async fn setup_payment_method(
        &self,
        customer: &str,
        payment_method: &str,
        idempotency_key: &str,
    ) -> Result<SetupOutcome, GatewayError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let fingerprint = fingerprint(&["setup", customer, payment_method]);
        if let Some(Remembered::Setup { intent }) =
            Self::remembered(&mut tx, idempotency_key, &fingerprint).await?
        {
            return Ok(Self::intent(&mut tx, &intent, "setup", false)
                .await?
                .setup_outcome(&intent));
        }
        let known: Option<(String,)> = sqlx::query_as("SELECT id FROM sim_customers WHERE id = $1")
            .bind(customer)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        if known.is_none() {
            return Err(GatewayError::NotFound("customer".into()));
        }
        if let Some(refused) = refused_nonce(payment_method) {
            return Err(refused);
        }
        let Some((behaviour, brand, last4)) = test_card(payment_method) else {
            return Err(GatewayError::NotFound("payment method".into()));
        };
        let pm_id = sim_id("pm");
        let setup_id = sim_id("seti");
        sqlx::query(
            "INSERT INTO sim_payment_methods (id, customer, behaviour, brand, last4) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&pm_id)
        .bind(customer)
        .bind(behaviour.as_str())
        .bind(brand)
        .bind(last4)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let status = match behaviour {
            Behaviour::Succeeds | Behaviour::ChargeFails | Behaviour::Paypal => Status::Succeeded,
            Behaviour::ThreeDSecure => Status::RequiresAction {
                client_secret: format!("{setup_id}_secret_sim"),
            },
            Behaviour::Declines(code) => Status::failed(card_declined(code)),
        };
        let intent = Intent {
            status,
            payment_method: pm_id,
            customer: customer.to_owned(),
            amount_minor: 0,
            refunded_minor: 0,
            brand: brand.to_owned(),
            last4: last4.to_owned(),
            currency: String::new(),
            refunds: Vec::new(),
        };
        Self::save(&mut tx, &setup_id, "setup", &intent).await?;
        Self::remember(
            &mut tx,
            idempotency_key,
            &fingerprint,
            &Remembered::Setup {
                intent: setup_id.clone(),
            },
        )
        .await?;
        tx.commit().await.map_err(db)?;
        Ok(intent.setup_outcome(&setup_id))
    }

    async fn retrieve_setup(&self, setup_intent_id: &str) -> Result<SetupOutcome, GatewayError> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        Ok(Self::intent(&mut conn, setup_intent_id, "setup", false)
            .await?
            .setup_outcome(setup_intent_id))
    }

    async fn cancel_setup(&self, setup_intent_id: &str) -> Result<SetupOutcome, GatewayError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let mut intent = Self::intent(&mut tx, setup_intent_id, "setup", true).await?;
        if matches!(
            intent.status,
            Status::RequiresAction { .. } | Status::Processing
        ) {
            intent.status = Status::Canceled;
            Self::save(&mut tx, setup_intent_id, "setup", &intent).await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(intent.setup_outcome(setup_intent_id))
    }

    async fn create_payment(
        &self,
        req: PaymentRequest<'_>,
    ) -> Result<PaymentOutcome, GatewayError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let fingerprint = fingerprint(&[
            "payment",
            req.customer,
            req.payment_method,
            &req.amount.amount_minor.to_string(),
            req.amount.currency,
            &format!("{:?}", req.presence),
        ]);
        if let Some(Remembered::Payment { intent }) =
            Self::remembered(&mut tx, req.idempotency_key, &fingerprint).await?
        {
            return Ok(Self::intent(&mut tx, &intent, "payment", false)
                .await?
                .payment_outcome(&intent));
        }
        if req.amount.amount_minor <= 0 {
            return Err(GatewayError::Invalid("amount must be positive".into()));
        }
        let pm: Option<(String, String, String, String)> = sqlx::query_as(
            "SELECT customer, behaviour, brand, last4 FROM sim_payment_methods WHERE id = $1",
        )
        .bind(req.payment_method)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some((owner, behaviour, brand, last4)) = pm else {
            return Err(GatewayError::NotFound("payment method".into()));
        };
        if owner != req.customer {
            return Err(GatewayError::Invalid(
                "payment method belongs to another customer".into(),
            ));
        }
        let behaviour = Behaviour::parse(&behaviour).ok_or_else(|| {
            GatewayError::Unavailable(format!("simulator: behaviour {behaviour}"))
        })?;
        let id = sim_id("pi");
        let status = match (behaviour, req.presence) {
            (Behaviour::Succeeds, _) => Status::Succeeded,
            (Behaviour::ThreeDSecure, Presence::OnSession) => Status::RequiresAction {
                client_secret: format!("{id}_secret_sim"),
            },
            (Behaviour::ThreeDSecure, Presence::OffSession) => Status::failed(decline(
                "authentication_required",
                Some("authentication_required"),
                "This payment requires the customer to authenticate.",
            )),
            (Behaviour::Declines(code), _) => Status::failed(card_declined(code)),
            (Behaviour::ChargeFails, _) => Status::failed(card_declined("generic_decline")),
            (Behaviour::Paypal, _) => paypal_charge(req.amount.amount_minor),
        };
        let intent = Intent {
            status,
            payment_method: req.payment_method.to_owned(),
            customer: req.customer.to_owned(),
            amount_minor: req.amount.amount_minor,
            refunded_minor: 0,
            brand,
            last4,
            currency: req.amount.currency.to_ascii_uppercase(),
            refunds: Vec::new(),
        };
        Self::save(&mut tx, &id, "payment", &intent).await?;
        Self::remember(
            &mut tx,
            req.idempotency_key,
            &fingerprint,
            &Remembered::Payment { intent: id.clone() },
        )
        .await?;
        tx.commit().await.map_err(db)?;
        Ok(intent.payment_outcome(&id))
    }

    async fn retrieve_payment(
        &self,
        payment_intent_id: &str,
    ) -> Result<PaymentOutcome, GatewayError> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        Ok(Self::intent(&mut conn, payment_intent_id, "payment", false)
            .await?
            .payment_outcome(payment_intent_id))
    }

    async fn cancel_payment(
        &self,
        payment_intent_id: &str,
    ) -> Result<PaymentOutcome, GatewayError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let mut intent = Self::intent(&mut tx, payment_intent_id, "payment", true).await?;
        // As Stripe: a succeeded (or already canceled) intent cannot be canceled; its state
        // comes back instead.
        if matches!(
            intent.status,
            Status::RequiresAction { .. } | Status::Processing
        ) {
            intent.status = Status::Canceled;
            Self::save(&mut tx, payment_intent_id, "payment", &intent).await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(intent.payment_outcome(payment_intent_id))
    }

    async fn refund(
        &self,
        payment_intent_id: &str,
        amount_minor: i64,
        idempotency_key: &str,
    ) -> Result<RefundRef, GatewayError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let fingerprint = fingerprint(&["refund", payment_intent_id, &amount_minor.to_string()]);
        if let Some(Remembered::Refund { id, amount_minor }) =
            Self::remembered(&mut tx, idempotency_key, &fingerprint).await?
        {
            return Ok(RefundRef { id, amount_minor });
        }
        let mut intent = Self::intent(&mut tx, payment_intent_id, "payment", true).await?;
        if intent.status != Status::Succeeded {
            return Err(GatewayError::Invalid(
                "only a succeeded payment can be refunded".into(),
            ));
        }
        let remaining = intent
            .amount_minor
            .checked_sub(intent.refunded_minor)
            .filter(|r| *r >= 0)
            .ok_or_else(|| GatewayError::Invalid("refunded more than was paid".into()))?;
        if amount_minor <= 0 || amount_minor > remaining {
            return Err(GatewayError::Invalid(format!(
                "refund of {amount_minor} exceeds the refundable {remaining}"
            )));
        }
        intent.refunded_minor = intent
            .refunded_minor
            .checked_add(amount_minor)
            .ok_or_else(|| GatewayError::Invalid("refund total overflows".into()))?;
        let r = RefundRef {
            id: sim_id("re"),
            amount_minor,
        };
        intent.refunds.push((r.id.clone(), amount_minor));
        Self::save(&mut tx, payment_intent_id, "payment", &intent).await?;
        Self::remember(
            &mut tx,
            idempotency_key,
            &fingerprint,
            &Remembered::Refund {
                id: r.id.clone(),
                amount_minor,
            },
        )
        .await?;
        tx.commit().await.map_err(db)?;
        Ok(r)
    }

    async fn refunds_of(&self, payment_intent_id: &str) -> Result<Vec<RefundRef>, GatewayError> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let intent = Self::intent(&mut conn, payment_intent_id, "payment", false).await?;
        Ok(intent
            .refunds
            .into_iter()
            .map(|(id, amount_minor)| RefundRef { id, amount_minor })
            .collect())
    }

    async fn resolve_dispute(
        &self,
        dispute_id: &str,
        accept: bool,
        _evidence: &str,
    ) -> Result<DisputeState, GatewayError> {
        let current = self.retrieve_dispute(dispute_id).await?;
        if current.status.is_closed() {
            return Ok(current);
        }
        let to = if accept {
            DisputeStatus::Lost
        } else {
            DisputeStatus::UnderReview
        };
        self.update_dispute(dispute_id, to).await
    }

    async fn retrieve_dispute(&self, dispute_id: &str) -> Result<DisputeState, GatewayError> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let row: Option<(sqlx::types::Json<SimDispute>,)> =
            sqlx::query_as("SELECT state FROM sim_disputes WHERE id = $1")
                .bind(dispute_id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db)?;
        row.map(|(d,)| d.0.state(dispute_id))
            .ok_or_else(|| GatewayError::NotFound(format!("dispute {dispute_id}")))
    }

    async fn ensure_price(&self, spec: &PriceSpec<'_>) -> Result<PriceRef, GatewayError> {
        let product_id = format!("tg_plan_{}", spec.plan);
        let mut tx = self.pool.begin().await.map_err(db)?;
        // Like Stripe: a product keeps its id and takes the latest name; a lookup key names
        // one price for ever (a second create under it is refused, so find it first).
        sqlx::query(
            "INSERT INTO sim_products (id, name) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name",
        )
        .bind(&product_id)
        .bind(spec.name)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        sqlx::query(
            "INSERT INTO sim_prices (id, lookup_key, product, amount_minor, currency, interval)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (lookup_key) DO NOTHING",
        )
        .bind(sim_id("price"))
        .bind(spec.lookup_key)
        .bind(&product_id)
        .bind(spec.amount.amount_minor)
        .bind(spec.amount.currency)
        .bind(spec.interval)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let (price_id, product, amount, currency, interval): (String, String, i64, String, String) =
            sqlx::query_as(
                "SELECT id, product, amount_minor, currency, interval FROM sim_prices
                 WHERE lookup_key = $1",
            )
            .bind(spec.lookup_key)
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
        if (
            product.as_str(),
            amount,
            currency.as_str(),
            interval.as_str(),
        ) != (
            product_id.as_str(),
            spec.amount.amount_minor,
            spec.amount.currency,
            spec.interval,
        ) {
            return Err(GatewayError::Invalid(format!(
                "lookup key {} already names another price ({amount} {currency} per {interval} of {product})",
                spec.lookup_key
            )));
        }
        tx.commit().await.map_err(db)?;
        Ok(PriceRef {
            product_id,
            price_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::GatewayAmount;
    use super::*;
    use sqlx::PgPool;

    fn pay<'a>(
        customer: &'a str,
        pm: &'a str,
        presence: Presence,
        key: &'a str,
    ) -> PaymentRequest<'a> {
        PaymentRequest {
            customer,
            payment_method: pm,
            amount: GatewayAmount {
                amount_minor: 2900,
                currency: "USD",
            },
            presence,
            idempotency_key: key,
            description: "test",
        }
    }

    #[sqlx::test(migrations = "../migrations/cf")]
    async fn test_cards_behave_like_stripe_test_mode(pool: PgPool) {
        let g = SimulatedGateway::new(pool);
        let cus = g
            .create_customer("a@example.com", "A", "c1")
            .await
            .expect("customer")
            .id;
        let cases = [
            ("pm_card_visa", "succeeded", "succeeded", "succeeded"),
            (
                "pm_card_threeDSecure2Required",
                "requires_action",
                "requires_action",
                "authentication_required",
            ),
            (
                "pm_card_chargeCustomerFail",
                "succeeded",
                "generic_decline",
                "generic_decline",
            ),
            ("pm_card_chargeDeclined", "generic_decline", "-", "-"),
        ];
        for (i, (card, setup, on, off)) in cases.into_iter().enumerate() {
            let s = g
                .setup_payment_method(&cus, card, &format!("s{i}"))
                .await
                .expect("setup");
            let label = |st: &PaymentStatus| match st {
                PaymentStatus::Succeeded => "succeeded".to_owned(),
                PaymentStatus::RequiresAction { .. } => "requires_action".to_owned(),
                PaymentStatus::Failed(d) => d.decline_code.clone().unwrap_or_default(),
                other => format!("{other:?}"),
            };
            let setup_label = match &s.status {
                SetupStatus::Succeeded => "succeeded".to_owned(),
                SetupStatus::RequiresAction { .. } => "requires_action".to_owned(),
                SetupStatus::Failed(d) => d.decline_code.clone().unwrap_or_default(),
                SetupStatus::Pending => "pending".to_owned(),
            };
            assert_eq!(setup_label, setup, "{card} set-up");
            if on == "-" {
                continue;
            }
            let p = g
                .create_payment(pay(
                    &cus,
                    &s.payment_method_id,
                    Presence::OnSession,
                    &format!("on{i}"),
                ))
                .await
                .expect("on");
            assert_eq!(label(&p.status), on, "{card} on-session");
            let p = g
                .create_payment(pay(
                    &cus,
                    &s.payment_method_id,
                    Presence::OffSession,
                    &format!("off{i}"),
                ))
                .await
                .expect("off");
            assert_eq!(label(&p.status), off, "{card} off-session");
        }
    }

    #[sqlx::test(migrations = "../migrations/cf")]
    async fn idempotency_keys_replay_and_refuse_different_parameters(pool: PgPool) {
        let g = SimulatedGateway::new(pool);
        let cus = g
            .create_customer("a@example.com", "A", "c1")
            .await
            .expect("customer")
            .id;
        let again = g
            .create_customer("a@example.com", "A", "c1")
            .await
            .expect("replay")
            .id;
        assert_eq!(cus, again);
        assert!(matches!(
            g.create_customer("b@example.com", "B", "c1").await,
            Err(GatewayError::Invalid(_))
        ));
        let pm = g
            .setup_payment_method(&cus, "pm_card_visa", "s")
            .await
            .expect("setup")
            .payment_method_id;
        let a = g
            .create_payment(pay(&cus, &pm, Presence::OnSession, "k"))
            .await
            .expect("pay");
        let b = g
            .create_payment(pay(&cus, &pm, Presence::OnSession, "k"))
            .await
            .expect("replay");
        assert_eq!(
            a.payment_intent_id, b.payment_intent_id,
            "one charge for one key"
        );
    }

    #[sqlx::test(migrations = "../migrations/cf")]
    async fn three_d_secure_completes_through_authenticate(pool: PgPool) {
        let g = SimulatedGateway::new(pool);
        let cus = g
            .create_customer("a@example.com", "A", "c")
            .await
            .expect("customer")
            .id;
        let s = g
            .setup_payment_method(&cus, "pm_card_threeDSecure2Required", "s")
            .await
            .expect("setup");
        g.authenticate(&s.setup_intent_id, true)
            .await
            .expect("auth setup");
        assert_eq!(
            g.retrieve_setup(&s.setup_intent_id)
                .await
                .expect("get")
                .status,
            SetupStatus::Succeeded
        );
        let p = g
            .create_payment(pay(&cus, &s.payment_method_id, Presence::OnSession, "p"))
            .await
            .expect("pay");
        g.authenticate(&p.payment_intent_id, false)
            .await
            .expect("fail auth");
        let after = g.retrieve_payment(&p.payment_intent_id).await.expect("get");
        assert!(
            matches!(after.status, PaymentStatus::Failed(ref d) if d.code == "payment_intent_authentication_failure")
        );
        assert!(
            g.authenticate(&p.payment_intent_id, true).await.is_err(),
            "only a waiting intent can be authenticated"
        );
    }

    #[sqlx::test(migrations = "../migrations/cf")]
    async fn a_new_simulator_on_the_same_database_knows_every_object(pool: PgPool) {
        let first = SimulatedGateway::new(pool.clone());
        let cus = first
            .create_customer("a@example.com", "A", "c")
            .await
            .expect("customer")
            .id;
        let pm = first
            .setup_payment_method(&cus, "pm_card_visa", "s")
            .await
            .expect("setup")
            .payment_method_id;
        assert!(
            pm.starts_with("pm_sim") && pm[6..].bytes().all(|b| b.is_ascii_lowercase()),
            "{pm}"
        );
        // The control plane restarts (or another process serves the next request).
        let second = SimulatedGateway::new(pool);
        let p = second
            .create_payment(pay(&cus, &pm, Presence::OffSession, "after-restart"))
            .await
            .expect("the saved card still works");
        assert_eq!(p.status, PaymentStatus::Succeeded);
        let again = second
            .create_customer("a@example.com", "A", "c")
            .await
            .expect("replay");
        assert_eq!(again.id, cus, "idempotency outlives the process too");
    }

    #[sqlx::test(migrations = "../migrations/cf")]
    async fn canceling_a_succeeded_payment_returns_it_as_it_is(pool: PgPool) {
        let g = SimulatedGateway::new(pool);
        let cus = g
            .create_customer("a@example.com", "A", "c")
            .await
            .expect("c")
            .id;
        let s = g
            .setup_payment_method(&cus, "pm_card_threeDSecure2Required", "s")
            .await
            .expect("setup");
        g.authenticate(&s.setup_intent_id, true)
            .await
            .expect("auth");
        let p = g
            .create_payment(pay(&cus, &s.payment_method_id, Presence::OnSession, "p"))
            .await
            .expect("pay");
        g.authenticate(&p.payment_intent_id, true)
            .await
            .expect("auth");
        let after = g
            .cancel_payment(&p.payment_intent_id)
            .await
            .expect("cancel");
        assert_eq!(
            after.status,
            PaymentStatus::Succeeded,
            "never abandoned once it went through"
        );
        let waiting = g
            .create_payment(pay(&cus, &s.payment_method_id, Presence::OnSession, "q"))
            .await
            .expect("pay");
        let after = g
            .cancel_payment(&waiting.payment_intent_id)
            .await
            .expect("cancel");
        assert_eq!(after.status, PaymentStatus::Canceled);
    }
}
