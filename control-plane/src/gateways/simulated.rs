//! An in-process payment provider that behaves like Stripe's test mode for Stripe's test
//! payment-method ids. The default when no Stripe key is configured, so the whole system runs
//! with no outside service.
//!
//! | payment method | set-up | on-session charge | off-session charge |
//! |---|---|---|---|
//! | `pm_card_visa`, `pm_card_mastercard` | succeeds | succeeds | succeeds |
//! | `pm_card_threeDSecure2Required`, `pm_card_authenticationRequired` | 3-D Secure | 3-D Secure | `authentication_required` |
//! | `pm_card_chargeDeclined` | `card_declined` / `generic_decline` | same | same |
//! | `pm_card_chargeDeclinedInsufficientFunds` | `card_declined` / `insufficient_funds` | same | same |
//! | `pm_card_chargeCustomerFail` | succeeds | `card_declined` / `generic_decline` | same |
//!
//! A 3-D Secure challenge is completed with [`SimulatedGateway::authenticate`], exposed by the
//! development-only route `POST /dev/v1/simulator/intents/{id}/authenticate` — that route does
//! not exist when a real Stripe key is configured. Idempotency keys behave as Stripe's: the same
//! key with the same parameters returns the first result; with different parameters it is an
//! error.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    CardSummary, CustomerRef, Decline, GatewayError, PaymentGateway, PaymentOutcome,
    PaymentRequest, PaymentStatus, Presence, RefundRef, SetupOutcome, SetupStatus,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Succeeds,
    ThreeDSecure,
    Declines(&'static str),
    ChargeFails,
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

#[derive(Debug, Clone)]
struct SimPaymentMethod {
    behaviour: Behaviour,
    customer: String,
}

#[derive(Debug, Clone)]
struct SimIntent {
    status: PaymentStatus,
    amount_minor: i64,
    refunded_minor: i64,
}

#[derive(Debug, Clone)]
enum Remembered {
    Customer(CustomerRef),
    Setup(SetupOutcome),
    Payment(PaymentOutcome),
    Refund(RefundRef),
}

#[derive(Debug, Default)]
struct State {
    /// Random per process, so ids never repeat across restarts of a development stack.
    run: String,
    next_id: u64,
    customers: HashMap<String, (String, String)>,
    payment_methods: HashMap<String, SimPaymentMethod>,
    setups: HashMap<String, SetupOutcome>,
    payments: HashMap<String, SimIntent>,
    /// idempotency key → (parameter fingerprint, first result)
    idempotency: HashMap<String, (String, Remembered)>,
}

impl State {
    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}_sim{}{:06}", self.run, self.next_id)
    }

    fn remembered(&self, key: &str, fingerprint: &str) -> Result<Option<Remembered>, GatewayError> {
        match self.idempotency.get(key) {
            None => Ok(None),
            Some((f, r)) if f == fingerprint => Ok(Some(r.clone())),
            Some(_) => Err(GatewayError::Invalid(format!(
                "idempotency key {key} was used with different parameters"
            ))),
        }
    }
}

/// The in-process provider. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct SimulatedGateway {
    state: Mutex<State>,
}

impl Default for SimulatedGateway {
    fn default() -> Self {
        Self::new()
    }
}

impl SimulatedGateway {
    pub fn new() -> Self {
        let run = format!("{:08x}", rand::random::<u32>());
        Self {
            state: Mutex::new(State {
                run,
                ..State::default()
            }),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, GatewayError> {
        self.state
            .lock()
            .map_err(|_| GatewayError::Unavailable("simulator state poisoned".into()))
    }

    /// Completes (or fails) the 3-D Secure challenge of a SetupIntent (`seti_…`) or a
    /// PaymentIntent (`pi_…`) waiting for the customer.
    pub fn authenticate(&self, intent_id: &str, succeed: bool) -> Result<(), GatewayError> {
        let mut st = self.lock()?;
        let failed = || {
            decline(
                "payment_intent_authentication_failure",
                None,
                "The customer failed 3-D Secure authentication.",
            )
        };
        if let Some(setup) = st.setups.get_mut(intent_id) {
            if !matches!(setup.status, SetupStatus::RequiresAction { .. }) {
                return Err(GatewayError::Invalid(format!(
                    "{intent_id} is not awaiting authentication"
                )));
            }
            setup.status = if succeed {
                SetupStatus::Succeeded
            } else {
                SetupStatus::Failed(failed())
            };
            return Ok(());
        }
        if let Some(pi) = st.payments.get_mut(intent_id) {
            if !matches!(pi.status, PaymentStatus::RequiresAction { .. }) {
                return Err(GatewayError::Invalid(format!(
                    "{intent_id} is not awaiting authentication"
                )));
            }
            pi.status = if succeed {
                PaymentStatus::Succeeded
            } else {
                PaymentStatus::Failed(failed())
            };
            return Ok(());
        }
        Err(GatewayError::NotFound(intent_id.to_owned()))
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
        let mut st = self.lock()?;
        let fingerprint = format!("customer\0{email}\0{name}");
        if let Some(Remembered::Customer(c)) = st.remembered(idempotency_key, &fingerprint)? {
            return Ok(c);
        }
        let id = st.id("cus");
        st.customers
            .insert(id.clone(), (email.to_owned(), name.to_owned()));
        let c = CustomerRef { id };
        st.idempotency.insert(
            idempotency_key.to_owned(),
            (fingerprint, Remembered::Customer(c.clone())),
        );
        Ok(c)
    }

    async fn setup_payment_method(
        &self,
        customer: &str,
        payment_method: &str,
        idempotency_key: &str,
    ) -> Result<SetupOutcome, GatewayError> {
        let mut st = self.lock()?;
        let fingerprint = format!("setup\0{customer}\0{payment_method}");
        if let Some(Remembered::Setup(s)) = st.remembered(idempotency_key, &fingerprint)? {
            return Ok(s);
        }
        if !st.customers.contains_key(customer) {
            return Err(GatewayError::NotFound(format!("customer {customer}")));
        }
        let Some((behaviour, brand, last4)) = test_card(payment_method) else {
            return Err(GatewayError::NotFound(format!(
                "payment method {payment_method}"
            )));
        };
        let card = CardSummary {
            brand: Some(brand.to_owned()),
            last4: Some(last4.to_owned()),
            exp_month: Some(12),
            exp_year: Some(2034),
        };
        let pm_id = st.id("pm");
        let setup_id = st.id("seti");
        st.payment_methods.insert(
            pm_id.clone(),
            SimPaymentMethod {
                behaviour,
                customer: customer.to_owned(),
            },
        );
        let status = match behaviour {
            Behaviour::Succeeds | Behaviour::ChargeFails => SetupStatus::Succeeded,
            Behaviour::ThreeDSecure => SetupStatus::RequiresAction {
                client_secret: format!("{setup_id}_secret_sim"),
            },
            Behaviour::Declines(code) => SetupStatus::Failed(card_declined(code)),
        };
        let outcome = SetupOutcome {
            setup_intent_id: setup_id.clone(),
            payment_method_id: pm_id,
            card,
            status,
        };
        st.setups.insert(setup_id, outcome.clone());
        st.idempotency.insert(
            idempotency_key.to_owned(),
            (fingerprint, Remembered::Setup(outcome.clone())),
        );
        Ok(outcome)
    }

    async fn retrieve_setup(&self, setup_intent_id: &str) -> Result<SetupOutcome, GatewayError> {
        let st = self.lock()?;
        st.setups
            .get(setup_intent_id)
            .cloned()
            .ok_or_else(|| GatewayError::NotFound(setup_intent_id.to_owned()))
    }

    async fn create_payment(
        &self,
        req: PaymentRequest<'_>,
    ) -> Result<PaymentOutcome, GatewayError> {
        let mut st = self.lock()?;
        let fingerprint = format!(
            "payment\0{}\0{}\0{}\0{}\0{:?}",
            req.customer,
            req.payment_method,
            req.amount.amount_minor,
            req.amount.currency,
            req.presence
        );
        if let Some(Remembered::Payment(p)) = st.remembered(req.idempotency_key, &fingerprint)? {
            return Ok(p);
        }
        if req.amount.amount_minor <= 0 {
            return Err(GatewayError::Invalid("amount must be positive".into()));
        }
        let Some(pm) = st.payment_methods.get(req.payment_method).cloned() else {
            return Err(GatewayError::NotFound(format!(
                "payment method {}",
                req.payment_method
            )));
        };
        if pm.customer != req.customer {
            return Err(GatewayError::Invalid(
                "payment method belongs to another customer".into(),
            ));
        }
        let id = st.id("pi");
        let status = match (pm.behaviour, req.presence) {
            (Behaviour::Succeeds, _) => PaymentStatus::Succeeded,
            (Behaviour::ThreeDSecure, Presence::OnSession) => PaymentStatus::RequiresAction {
                client_secret: format!("{id}_secret_sim"),
            },
            (Behaviour::ThreeDSecure, Presence::OffSession) => PaymentStatus::Failed(decline(
                "authentication_required",
                Some("authentication_required"),
                "This payment requires the customer to authenticate.",
            )),
            (Behaviour::Declines(code), _) => PaymentStatus::Failed(card_declined(code)),
            (Behaviour::ChargeFails, _) => PaymentStatus::Failed(card_declined("generic_decline")),
        };
        st.payments.insert(
            id.clone(),
            SimIntent {
                status: status.clone(),
                amount_minor: req.amount.amount_minor,
                refunded_minor: 0,
            },
        );
        let outcome = PaymentOutcome {
            payment_intent_id: id,
            status,
        };
        st.idempotency.insert(
            req.idempotency_key.to_owned(),
            (fingerprint, Remembered::Payment(outcome.clone())),
        );
        Ok(outcome)
    }

    async fn retrieve_payment(
        &self,
        payment_intent_id: &str,
    ) -> Result<PaymentOutcome, GatewayError> {
        let st = self.lock()?;
        let pi = st
            .payments
            .get(payment_intent_id)
            .ok_or_else(|| GatewayError::NotFound(payment_intent_id.to_owned()))?;
        Ok(PaymentOutcome {
            payment_intent_id: payment_intent_id.to_owned(),
            status: pi.status.clone(),
        })
    }

    async fn cancel_payment(
        &self,
        payment_intent_id: &str,
    ) -> Result<PaymentOutcome, GatewayError> {
        let mut st = self.lock()?;
        let pi = st
            .payments
            .get_mut(payment_intent_id)
            .ok_or_else(|| GatewayError::NotFound(payment_intent_id.to_owned()))?;
        if matches!(pi.status, PaymentStatus::Succeeded) {
            return Err(GatewayError::Invalid(
                "a succeeded payment cannot be canceled".into(),
            ));
        }
        pi.status = PaymentStatus::Canceled;
        Ok(PaymentOutcome {
            payment_intent_id: payment_intent_id.to_owned(),
            status: PaymentStatus::Canceled,
        })
    }

    async fn refund(
        &self,
        payment_intent_id: &str,
        amount_minor: i64,
        idempotency_key: &str,
    ) -> Result<RefundRef, GatewayError> {
        let mut st = self.lock()?;
        let fingerprint = format!("refund\0{payment_intent_id}\0{amount_minor}");
        if let Some(Remembered::Refund(r)) = st.remembered(idempotency_key, &fingerprint)? {
            return Ok(r);
        }
        let pi = st
            .payments
            .get_mut(payment_intent_id)
            .ok_or_else(|| GatewayError::NotFound(payment_intent_id.to_owned()))?;
        if !matches!(pi.status, PaymentStatus::Succeeded) {
            return Err(GatewayError::Invalid(
                "only a succeeded payment can be refunded".into(),
            ));
        }
        let remaining = pi.amount_minor - pi.refunded_minor;
        if amount_minor <= 0 || amount_minor > remaining {
            return Err(GatewayError::Invalid(format!(
                "refund of {amount_minor} exceeds the refundable {remaining}"
            )));
        }
        pi.refunded_minor += amount_minor;
        let r = RefundRef {
            id: st.id("re"),
            amount_minor,
        };
        st.idempotency.insert(
            idempotency_key.to_owned(),
            (fingerprint, Remembered::Refund(r.clone())),
        );
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::super::GatewayAmount;
    use super::*;

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

    #[tokio::test]
    async fn test_cards_behave_like_stripe_test_mode() {
        let g = SimulatedGateway::new();
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

    #[tokio::test]
    async fn idempotency_keys_replay_and_refuse_different_parameters() {
        let g = SimulatedGateway::new();
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

    #[tokio::test]
    async fn three_d_secure_completes_through_authenticate() {
        let g = SimulatedGateway::new();
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
            .expect("fail auth");
        let after = g.retrieve_payment(&p.payment_intent_id).await.expect("get");
        assert!(
            matches!(after.status, PaymentStatus::Failed(ref d) if d.code == "payment_intent_authentication_failure")
        );
        assert!(
            g.authenticate(&p.payment_intent_id, true).is_err(),
            "only a waiting intent can be authenticated"
        );
    }
}
