//! [`PaymentGateway`] on Stripe, through `async-stripe` (1.0.0-rc.10, API version
//! `2026-09-30.endive`).
//!
//! The same code talks to the real API (`https://api.stripe.com/`) and to `localstripe`
//! (`scripts/localstripe-serve.py`, plain `http://127.0.0.1:8420`).
//!
//! * Every call that creates something (customer, SetupIntent, PaymentIntent, refund) sends
//!   Stripe an `Idempotency-Key`: the caller's key, prefixed with the operation
//!   (`tollgate:payment:<key>`), so one record id can key several operations without Stripe
//!   answering `idempotency_error`. Each request is sent once; retrying is the caller's
//!   decision (every [`GatewayError::Unavailable`] is safe to retry with the same key).
//! * A card refusal is not an error: Stripe answers HTTP 402 with a `card_error`, which becomes
//!   `Ok(… status: Failed(Decline { … }))` carrying the intent id from the error body.
//! * Errors: no answer, a timeout, 429, 409 or 5xx → [`GatewayError::Unavailable`]; 404 or code
//!   `resource_missing` (Stripe answers 400 for an unknown id passed as a parameter) →
//!   [`GatewayError::NotFound`]; any other 4xx → [`GatewayError::Invalid`]. An answer that
//!   `async-stripe` cannot read is reported as `Unavailable`: the request may have been
//!   carried out, so the caller must not treat it as a definite failure; a retry with the same
//!   idempotency key replays the same answer and never charges twice.

use std::time::Duration;

use ::stripe::{
    ApiErrors, ApiErrorsCode, ApiErrorsType, Client, ClientBuilder, IdempotencyKey,
    RequestStrategy, StripeError, StripeRequest,
};
use async_trait::async_trait;
use stripe_core::customer::CreateCustomer;
use stripe_core::dispute::{CloseDispute, RetrieveDispute, UpdateDispute, UpdateDisputeEvidence};
use stripe_core::payment_intent::{
    CancelPaymentIntent, CreatePaymentIntent, CreatePaymentIntentOffSession, RetrievePaymentIntent,
};
use stripe_core::refund::{CreateRefund, ListRefund};
use stripe_core::setup_intent::{
    CancelSetupIntent, CreateSetupIntent, CreateSetupIntentUsage, RetrieveSetupIntent,
};
use stripe_core::{
    PaymentIntent, PaymentIntentAllowedPaymentMethodTypes, PaymentIntentStatus, SetupIntent,
    SetupIntentAllowedPaymentMethodTypes, SetupIntentStatus,
};
use stripe_payment::PaymentMethod;
use stripe_payment::payment_method::RetrievePaymentMethod;
use stripe_product::Price;
use stripe_product::price::{
    CreatePrice, CreatePriceRecurring, CreatePriceRecurringInterval, ListPrice,
};
use stripe_product::product::{CreateProduct, RetrieveProduct, UpdateProduct};
use stripe_types::Currency;

use super::{
    CardSummary, CustomerRef, Decline, DisputeState, DisputeStatus, GatewayError, MethodKind,
    PaymentGateway, PaymentOutcome, PaymentRequest, PaymentStatus, Presence, PriceRef, PriceSpec,
    RefundRef, SetupOutcome, SetupStatus,
};

/// Longest wait for one HTTP exchange with Stripe before giving up as `Unavailable`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `expand[]` for SetupIntents: the card details come back in the same answer.
const EXPAND_PAYMENT_METHOD: &str = "payment_method";

/// Stripe through `async-stripe`. Cheap to clone (the HTTP client is shared).
#[derive(Clone, Debug)]
pub struct StripeGateway {
    client: Client,
}

impl StripeGateway {
    /// Builds a gateway for `secret_key` (`sk_live_…` / `sk_test_…`).
    ///
    /// `api_base` replaces `https://api.stripe.com/`, e.g. `http://127.0.0.1:8420` for
    /// localstripe; `http` and `https` both work, and a path prefix is kept
    /// (`http://host/stripe` → `http://host/stripe/v1/…`).
    ///
    /// # Errors
    /// [`GatewayError::Invalid`] for an empty key, a base URL that is not `http(s)://…`, or a
    /// key or URL that cannot be sent in an HTTP request.
    pub fn new(secret_key: &str, api_base: Option<&str>) -> Result<Self, GatewayError> {
        let secret_key = secret_key.trim();
        if secret_key.is_empty() {
            return Err(GatewayError::Invalid(
                "the Stripe secret key is empty".into(),
            ));
        }
        let mut builder = ClientBuilder::new(secret_key)
            .timeout(REQUEST_TIMEOUT)
            .app_info("tollgate", Some(env!("CARGO_PKG_VERSION").to_owned()), None);
        if let Some(base) = api_base {
            builder = builder.url(normalize_api_base(base)?);
        }
        let client = builder
            .build()
            .map_err(|err| GatewayError::Invalid(format!("Stripe client configuration: {err}")))?;
        Ok(Self { client })
    }

    /// Reads a PaymentMethod (used when an intent names its payment method by id only).
    async fn retrieve_payment_method(&self, id: &str) -> Result<PaymentMethod, GatewayError> {
        check_path_id(id, "payment method")?;
        RetrievePaymentMethod::new(id)
            .send(&self.client)
            .await
            .map_err(|err| map_error(err, "reading payment method"))
    }

    /// Makes sure product `id` exists with `name`. Its id is ours, so creating it twice is
    /// refused by Stripe (`resource_already_exists`): a concurrent creator won, which is fine.
    async fn ensure_product(&self, id: &str, name: &str) -> Result<(), GatewayError> {
        check_path_id(id, "product")?;
        match RetrieveProduct::new(id).send(&self.client).await {
            Ok(product) if product.name == name => return Ok(()),
            Ok(_) => {
                return UpdateProduct::new(id)
                    .name(name)
                    .send(&self.client)
                    .await
                    .map(drop)
                    .map_err(|err| map_error(err, "renaming product"));
            }
            Err(err) => match map_error(err, "reading product") {
                GatewayError::NotFound(_) => {}
                other => return Err(other),
            },
        }
        match CreateProduct::new(name).id(id).send(&self.client).await {
            Ok(_) => Ok(()),
            Err(StripeError::Stripe(api, _))
                if api.code == Some(ApiErrorsCode::ResourceAlreadyExists) =>
            {
                Ok(())
            }
            Err(err) => Err(map_error(err, "creating product")),
        }
    }

    /// Turns a SetupIntent into our outcome, fetching its PaymentMethod if it was not expanded.
    async fn setup_outcome(&self, intent: SetupIntent) -> Result<SetupOutcome, GatewayError> {
        let status = setup_status(&intent)?;
        let (payment_method_id, card) = match &intent.payment_method {
            Some(pm) => match pm.as_object() {
                Some(object) => (object.id.to_string(), card_summary(object)),
                None => {
                    let object = self.retrieve_payment_method(pm.id().as_str()).await?;
                    (object.id.to_string(), card_summary(&object))
                }
            },
            // A failed set-up detaches the method; the error still describes it.
            None => intent
                .last_setup_error
                .as_ref()
                .and_then(|err| err.payment_method.as_ref())
                .map(|pm| (pm.id.to_string(), card_summary(pm)))
                .unwrap_or_default(),
        };
        Ok(SetupOutcome {
            setup_intent_id: intent.id.to_string(),
            payment_method_id,
            card,
            kind: MethodKind::Card,
            payer_email: None,
            status,
        })
    }
}

#[async_trait]
impl PaymentGateway for StripeGateway {
    fn name(&self) -> &'static str {
        "stripe"
    }

    async fn create_customer(
        &self,
        email: &str,
        name: &str,
        idempotency_key: &str,
    ) -> Result<CustomerRef, GatewayError> {
        let customer = CreateCustomer::new()
            .email(email)
            .name(name)
            .customize()
            .request_strategy(idempotent("customer", idempotency_key)?)
            .send(&self.client)
            .await
            .map_err(|err| map_error(err, "creating customer"))?;
        Ok(CustomerRef {
            id: customer.id.to_string(),
        })
    }

    async fn setup_payment_method(
        &self,
        customer: &str,
        payment_method: &str,
        idempotency_key: &str,
    ) -> Result<SetupOutcome, GatewayError> {
        let result = CreateSetupIntent::new()
            .customer(customer)
            .payment_method(payment_method)
            .confirm(true)
            .usage(CreateSetupIntentUsage::OffSession)
            .allowed_payment_method_types(vec![SetupIntentAllowedPaymentMethodTypes::Card])
            .expand(vec![EXPAND_PAYMENT_METHOD.to_owned()])
            .customize()
            .request_strategy(idempotent("setup", idempotency_key)?)
            .send(&self.client)
            .await;
        match result {
            Ok(intent) => self.setup_outcome(intent).await,
            Err(StripeError::Stripe(err, status)) if is_card_error(&err, status) => {
                // Stripe's 402 carries the SetupIntent and the refused payment method.
                let (payment_method_id, card) = match &err.payment_method {
                    Some(pm) => (pm.id.to_string(), card_summary(pm)),
                    None => (payment_method.to_owned(), CardSummary::default()),
                };
                Ok(SetupOutcome {
                    setup_intent_id: err
                        .setup_intent
                        .as_ref()
                        .map(|intent| intent.id.to_string())
                        .unwrap_or_default(),
                    payment_method_id,
                    card,
                    kind: MethodKind::Card,
                    payer_email: None,
                    status: SetupStatus::Failed(decline(&err)),
                })
            }
            Err(err) => Err(map_error(err, "setting up payment method")),
        }
    }

    async fn retrieve_setup(&self, setup_intent_id: &str) -> Result<SetupOutcome, GatewayError> {
        check_path_id(setup_intent_id, "SetupIntent")?;
        let intent = RetrieveSetupIntent::new(setup_intent_id)
            .expand(vec![EXPAND_PAYMENT_METHOD.to_owned()])
            .send(&self.client)
            .await
            .map_err(|err| map_error(err, "reading SetupIntent"))?;
        self.setup_outcome(intent).await
    }

    async fn cancel_setup(&self, setup_intent_id: &str) -> Result<SetupOutcome, GatewayError> {
        check_path_id(setup_intent_id, "SetupIntent")?;
        match CancelSetupIntent::new(setup_intent_id)
            .send(&self.client)
            .await
        {
            Ok(intent) => self.setup_outcome(intent).await,
            Err(StripeError::Stripe(err, _))
                if err.code == Some(ApiErrorsCode::SetupIntentUnexpectedState) =>
            {
                self.retrieve_setup(setup_intent_id).await
            }
            Err(err) => Err(map_error(err, "canceling SetupIntent")),
        }
    }

    async fn create_payment(
        &self,
        req: PaymentRequest<'_>,
    ) -> Result<PaymentOutcome, GatewayError> {
        if req.amount.amount_minor <= 0 {
            return Err(GatewayError::Invalid(format!(
                "payment amount must be positive, got {}",
                req.amount.amount_minor
            )));
        }
        let currency = currency(req.amount.currency)?;
        let off_session = matches!(req.presence, Presence::OffSession);
        let mut create = CreatePaymentIntent::new(req.amount.amount_minor, currency)
            .customer(req.customer)
            .payment_method(req.payment_method)
            .confirm(true)
            .off_session(CreatePaymentIntentOffSession::Bool(off_session))
            .allowed_payment_method_types(vec![PaymentIntentAllowedPaymentMethodTypes::Card]);
        if !req.description.is_empty() {
            create = create.description(req.description);
        }
        let result = create
            .customize()
            .request_strategy(idempotent("payment", req.idempotency_key)?)
            .send(&self.client)
            .await;
        match result {
            Ok(intent) => payment_outcome(intent),
            Err(StripeError::Stripe(err, status)) if is_card_error(&err, status) => {
                Ok(PaymentOutcome {
                    payment_intent_id: err
                        .payment_intent
                        .as_ref()
                        .map(|intent| intent.id.to_string())
                        .unwrap_or_default(),
                    status: PaymentStatus::Failed(decline(&err)),
                })
            }
            Err(err) => Err(map_error(err, "creating payment")),
        }
    }

    async fn retrieve_payment(
        &self,
        payment_intent_id: &str,
    ) -> Result<PaymentOutcome, GatewayError> {
        check_path_id(payment_intent_id, "PaymentIntent")?;
        let intent = RetrievePaymentIntent::new(payment_intent_id)
            .send(&self.client)
            .await
            .map_err(|err| map_error(err, "reading payment"))?;
        payment_outcome(intent)
    }

    /// Cancels the PaymentIntent; if it can no longer be canceled (it succeeded, or was
    /// canceled already) this returns its current state instead of an error.
    async fn cancel_payment(
        &self,
        payment_intent_id: &str,
    ) -> Result<PaymentOutcome, GatewayError> {
        check_path_id(payment_intent_id, "PaymentIntent")?;
        match CancelPaymentIntent::new(payment_intent_id)
            .send(&self.client)
            .await
        {
            Ok(intent) => payment_outcome(intent),
            Err(StripeError::Stripe(err, _))
                if err.code == Some(ApiErrorsCode::PaymentIntentUnexpectedState) =>
            {
                self.retrieve_payment(payment_intent_id).await
            }
            Err(err) => Err(map_error(err, "canceling payment")),
        }
    }

    async fn ensure_price(&self, spec: &PriceSpec<'_>) -> Result<PriceRef, GatewayError> {
        if spec.amount.amount_minor < 0 {
            return Err(GatewayError::Invalid(format!(
                "price of plan {} is negative",
                spec.plan
            )));
        }
        let currency = currency(spec.amount.currency)?;
        let interval = match spec.interval {
            "month" => CreatePriceRecurringInterval::Month,
            "year" => CreatePriceRecurringInterval::Year,
            other => {
                return Err(GatewayError::Invalid(format!(
                    "price interval {other:?} is neither month nor year"
                )));
            }
        };
        let product_id = format!("tg_plan_{}", spec.plan);
        self.ensure_product(&product_id, spec.name).await?;
        let found = ListPrice::new()
            .lookup_keys(vec![spec.lookup_key.to_owned()])
            .send(&self.client)
            .await
            .map_err(|err| map_error(err, "looking up price"))?;
        let price = match found.data.into_iter().next() {
            Some(price) => price,
            None => CreatePrice::new(currency)
                .product(product_id.as_str())
                .unit_amount(spec.amount.amount_minor)
                .recurring(CreatePriceRecurring::new(interval))
                .lookup_key(spec.lookup_key)
                .nickname(spec.lookup_key)
                .customize()
                .request_strategy(idempotent("price", spec.lookup_key)?)
                .send(&self.client)
                .await
                .map_err(|err| map_error(err, "creating price"))?,
        };
        check_price(&price, spec, &product_id)?;
        Ok(PriceRef {
            product_id,
            price_id: price.id.to_string(),
        })
    }

    async fn refund(
        &self,
        payment_intent_id: &str,
        amount_minor: i64,
        idempotency_key: &str,
    ) -> Result<RefundRef, GatewayError> {
        if amount_minor <= 0 {
            return Err(GatewayError::Invalid(format!(
                "refund amount must be positive, got {amount_minor}"
            )));
        }
        let refund = CreateRefund::new()
            .payment_intent(payment_intent_id)
            .amount(amount_minor)
            .customize()
            .request_strategy(idempotent("refund", idempotency_key)?)
            .send(&self.client)
            .await
            .map_err(|err| map_error(err, "refunding payment"))?;
        Ok(RefundRef {
            id: refund.id.to_string(),
            amount_minor: refund.amount,
        })
    }

    async fn refunds_of(&self, payment_intent_id: &str) -> Result<Vec<RefundRef>, GatewayError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut req = ListRefund::new()
                .payment_intent(payment_intent_id)
                .limit(100);
            if let Some(a) = &after {
                req = req.starting_after(a.clone());
            }
            let page = req
                .send(&self.client)
                .await
                .map_err(|err| map_error(err, "listing refunds"))?;
            after = page.data.last().map(|r| r.id.to_string());
            // Failed and canceled refunds moved nothing back.
            out.extend(
                page.data
                    .iter()
                    .filter(|r| matches!(r.status.as_deref(), Some("succeeded" | "pending") | None))
                    .map(|r| RefundRef {
                        id: r.id.to_string(),
                        amount_minor: r.amount,
                    }),
            );
            if !page.has_more || after.is_none() {
                return Ok(out);
            }
        }
    }

    async fn resolve_dispute(
        &self,
        dispute_id: &str,
        accept: bool,
        evidence: &str,
    ) -> Result<DisputeState, GatewayError> {
        let current = self.retrieve_dispute(dispute_id).await?;
        if current.status.is_closed() {
            return Ok(current);
        }
        if accept {
            CloseDispute::new(dispute_id)
                .send(&self.client)
                .await
                .map_err(|err| map_error(err, "accepting a dispute"))?;
        } else {
            let mut ev = UpdateDisputeEvidence::new();
            ev.uncategorized_text = Some(evidence.to_owned());
            UpdateDispute::new(dispute_id)
                .evidence(ev)
                .submit(true)
                .send(&self.client)
                .await
                .map_err(|err| map_error(err, "contesting a dispute"))?;
        }
        self.retrieve_dispute(dispute_id).await
    }

    async fn retrieve_dispute(&self, dispute_id: &str) -> Result<DisputeState, GatewayError> {
        if !dispute_id.starts_with("dp_") && !dispute_id.starts_with("du_") {
            return Err(GatewayError::Invalid(format!(
                "{dispute_id:?} is not a Stripe dispute id"
            )));
        }
        let d = RetrieveDispute::new(dispute_id)
            .send(&self.client)
            .await
            .map_err(|err| map_error(err, "reading a dispute"))?;
        use stripe_core::DisputeStatus as S;
        let status = match &d.status {
            S::WarningNeedsResponse | S::WarningUnderReview => DisputeStatus::Inquiry,
            S::NeedsResponse => DisputeStatus::NeedsResponse,
            S::UnderReview => DisputeStatus::UnderReview,
            S::Won => DisputeStatus::Won,
            S::Lost => DisputeStatus::Lost,
            S::WarningClosed | S::Prevented => DisputeStatus::Closed,
            other => {
                return Err(GatewayError::Invalid(format!(
                    "dispute status {:?} is not one we know",
                    other.as_str()
                )));
            }
        };
        // A dispute of a charge made outside PaymentIntents has none: it is not one of ours.
        let payment_id = d
            .payment_intent
            .as_ref()
            .map(|p| p.id().to_string())
            .ok_or_else(|| {
                GatewayError::NotFound(format!("dispute {dispute_id} has no payment"))
            })?;
        Ok(DisputeState {
            id: d.id.to_string(),
            payment_id,
            amount_minor: d.amount,
            currency: d.currency.to_string().to_ascii_uppercase(),
            status,
            reason: Some(d.reason.clone()).filter(|r| !r.is_empty()),
        })
    }
}

/// Checks a user-supplied base URL and gives it the trailing `/` async-stripe appends `v1/…` to.
fn normalize_api_base(base: &str) -> Result<String, GatewayError> {
    let base = base.trim();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(GatewayError::Invalid(format!(
            "Stripe API base {base:?} must start with http:// or https://"
        )));
    }
    Ok(if base.ends_with('/') {
        base.to_owned()
    } else {
        format!("{base}/")
    })
}

/// An ISO-4217 code as async-stripe wants it (lower case).
fn currency(code: &str) -> Result<Currency, GatewayError> {
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(GatewayError::Invalid(format!(
            "currency {code:?} is not an ISO-4217 code"
        )));
    }
    // Infallible: a code async-stripe does not know becomes `Currency::Unknown`.
    let Ok(currency) = code.to_ascii_lowercase().parse::<Currency>();
    Ok(currency)
}

/// A price found under a lookup key is the one `spec` describes (Stripe prices are immutable:
/// a lookup key that names another amount is a mistake to report, never to paper over).
fn check_price(price: &Price, spec: &PriceSpec<'_>, product_id: &str) -> Result<(), GatewayError> {
    let interval = price.recurring.as_ref().map(|r| r.interval.as_str());
    let matches = price.unit_amount == Some(spec.amount.amount_minor)
        && price
            .currency
            .to_string()
            .eq_ignore_ascii_case(spec.amount.currency)
        && price.product.id().as_str() == product_id
        && interval == Some(spec.interval);
    if matches {
        Ok(())
    } else {
        Err(GatewayError::Invalid(format!(
            "Stripe price {} under lookup key {} is {:?} {} per {:?} of {}, not {} {} per {} of {product_id}",
            price.id,
            spec.lookup_key,
            price.unit_amount,
            price.currency,
            interval,
            price.product.id().as_str(),
            spec.amount.amount_minor,
            spec.amount.currency,
            spec.interval,
        )))
    }
}

/// The request strategy that sends `key` (namespaced by `operation`) as `Idempotency-Key`.
fn idempotent(operation: &str, key: &str) -> Result<RequestStrategy, GatewayError> {
    if key.is_empty() {
        return Err(GatewayError::Invalid(format!(
            "empty idempotency key for {operation}"
        )));
    }
    IdempotencyKey::new(format!("tollgate:{operation}:{key}"))
        .map(RequestStrategy::Idempotent)
        .map_err(|err| GatewayError::Invalid(format!("idempotency key for {operation}: {err}")))
}

/// Ids go into URL paths unescaped: only accept the characters Stripe ids are made of.
fn check_path_id(id: &str, what: &str) -> Result<(), GatewayError> {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(())
    } else {
        Err(GatewayError::Invalid(format!(
            "{what} id {id:?} is not a Stripe id"
        )))
    }
}

/// A customer's card was refused (as opposed to our request being wrong).
fn is_card_error(err: &ApiErrors, status: u16) -> bool {
    status == 402 || err.type_ == ApiErrorsType::CardError
}

/// Stripe's description of a refusal.
fn decline(err: &ApiErrors) -> Decline {
    Decline {
        code: err.code.as_ref().map_or_else(
            || err.type_.as_str().to_owned(),
            |code| code.as_str().to_owned(),
        ),
        decline_code: err.decline_code.clone(),
        message: err.message.clone().unwrap_or_default(),
    }
}

/// A refusal for an intent that needs a new payment method but carries no error.
fn missing_payment_method(what: &str) -> Decline {
    Decline {
        code: "requires_payment_method".into(),
        decline_code: None,
        message: format!("the {what} has no usable payment method"),
    }
}

/// Maps a failed `async-stripe` call; `what` says what we were doing, for the message.
fn map_error(err: StripeError, what: &str) -> GatewayError {
    match err {
        StripeError::Stripe(api, status) => {
            let message = format!(
                "{what}: Stripe answered {status} {}{}: {}",
                api.type_.as_str(),
                api.code
                    .as_ref()
                    .map(|code| format!("/{}", code.as_str()))
                    .unwrap_or_default(),
                api.message.as_deref().unwrap_or("(no message)"),
            );
            if status == 404 || api.code == Some(ApiErrorsCode::ResourceMissing) {
                GatewayError::NotFound(message)
            } else if status == 409 || status == 429 || status >= 500 {
                GatewayError::Unavailable(message)
            } else {
                GatewayError::Invalid(message)
            }
        }
        StripeError::ClientError(msg) => GatewayError::Unavailable(format!("{what}: {msg}")),
        StripeError::Timeout => {
            GatewayError::Unavailable(format!("{what}: no answer within {REQUEST_TIMEOUT:?}"))
        }
        StripeError::JSONDeserialize(msg) => {
            GatewayError::Unavailable(format!("{what}: unreadable answer from Stripe: {msg}"))
        }
        StripeError::ConfigError(msg) => GatewayError::Invalid(format!("{what}: {msg}")),
    }
}

fn card_summary(pm: &PaymentMethod) -> CardSummary {
    match &pm.card {
        Some(card) => CardSummary {
            brand: Some(card.brand.clone()),
            last4: Some(card.last4.clone()),
            exp_month: i32::try_from(card.exp_month).ok(),
            exp_year: i32::try_from(card.exp_year).ok(),
        },
        None => CardSummary::default(),
    }
}

/// The customer must act (3-D Secure); the browser needs the intent's client secret.
fn client_secret(secret: Option<String>, what: &str) -> Result<String, GatewayError> {
    secret.filter(|s| !s.is_empty()).ok_or_else(|| {
        GatewayError::Invalid(format!(
            "{what} requires customer action but has no client_secret"
        ))
    })
}

fn setup_status(intent: &SetupIntent) -> Result<SetupStatus, GatewayError> {
    Ok(match &intent.status {
        SetupIntentStatus::Succeeded => SetupStatus::Succeeded,
        SetupIntentStatus::RequiresAction => SetupStatus::RequiresAction {
            client_secret: client_secret(intent.client_secret.clone(), "SetupIntent")?,
        },
        SetupIntentStatus::Processing | SetupIntentStatus::RequiresConfirmation => {
            SetupStatus::Pending
        }
        SetupIntentStatus::RequiresPaymentMethod => SetupStatus::Failed(
            intent
                .last_setup_error
                .as_deref()
                .map_or_else(|| missing_payment_method("SetupIntent"), decline),
        ),
        SetupIntentStatus::Canceled => SetupStatus::Failed(Decline {
            code: "setup_intent_canceled".into(),
            decline_code: None,
            message: "the SetupIntent was canceled".into(),
        }),
        // `Unknown(_)` and statuses added after this version (the enum is non-exhaustive).
        other => {
            tracing::warn!(status = other.as_str(), id = %intent.id, "unknown SetupIntent status");
            SetupStatus::Pending
        }
    })
}

fn payment_outcome(intent: PaymentIntent) -> Result<PaymentOutcome, GatewayError> {
    let status = match intent.status {
        PaymentIntentStatus::Succeeded => PaymentStatus::Succeeded,
        PaymentIntentStatus::RequiresAction => PaymentStatus::RequiresAction {
            client_secret: client_secret(intent.client_secret, "PaymentIntent")?,
        },
        PaymentIntentStatus::Canceled => PaymentStatus::Canceled,
        PaymentIntentStatus::RequiresPaymentMethod => PaymentStatus::Failed(
            intent
                .last_payment_error
                .as_deref()
                .map_or_else(|| missing_payment_method("PaymentIntent"), decline),
        ),
        // We always confirm on creation and never capture manually, so these are transient.
        PaymentIntentStatus::Processing
        | PaymentIntentStatus::RequiresCapture
        | PaymentIntentStatus::RequiresConfirmation => PaymentStatus::Processing,
        // `Unknown(_)` and statuses added after this version (the enum is non-exhaustive).
        other => {
            tracing::warn!(status = other.as_str(), id = %intent.id, "unknown PaymentIntent status");
            PaymentStatus::Processing
        }
    };
    Ok(PaymentOutcome {
        payment_intent_id: intent.id.to_string(),
        status,
    })
}
