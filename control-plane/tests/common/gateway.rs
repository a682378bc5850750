//! A payment gateway in front of the real (simulated) one, for tests that need the provider to
//! stall, fail reads, or lose the answer of a payment it made.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use async_trait::async_trait;
use tollgate_control_plane::gateways::{
    CustomerRef, Decline, DisputeState, GatewayError, PaymentGateway, PaymentOutcome,
    PaymentRequest, PaymentStatus, PriceRef, PriceSpec, RefundRef, SetupOutcome,
};

/// A gateway in front of the real (simulated) one that can stall every call until released,
/// fail reads, or lose the answer of a payment it made ("timed out after charging") or of a
/// price it created.
pub struct Wrapped {
    inner: Arc<dyn PaymentGateway>,
    stall: Arc<tokio::sync::Semaphore>,
    stalling: Arc<AtomicBool>,
    fail_reads: Arc<AtomicBool>,
    lose_payment_answers: Arc<AtomicU32>,
    lose_price_answers: Arc<AtomicU32>,
    customers_created: Arc<AtomicU32>,
    decline_payments: Arc<std::sync::Mutex<Option<String>>>,
}

#[derive(Clone)]
pub struct Knobs {
    pub stall: Arc<tokio::sync::Semaphore>,
    pub stalling: Arc<AtomicBool>,
    pub fail_reads: Arc<AtomicBool>,
    pub lose_payment_answers: Arc<AtomicU32>,
    /// `ensure_price` calls whose answer is lost after the provider created the price.
    pub lose_price_answers: Arc<AtomicU32>,
    pub customers_created: Arc<AtomicU32>,
    /// While set, payments are declined (`card_declined`) with this decline code without
    /// reaching the provider: a card reported stolen after it was attached.
    pub decline_payments: Arc<std::sync::Mutex<Option<String>>>,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            stall: Arc::new(tokio::sync::Semaphore::new(0)),
            stalling: Arc::default(),
            fail_reads: Arc::default(),
            lose_payment_answers: Arc::default(),
            lose_price_answers: Arc::default(),
            customers_created: Arc::default(),
            decline_payments: Arc::default(),
        }
    }
}

impl Knobs {
    pub fn wrapper(&self) -> tollgate_control_plane::GatewayWrapper {
        let k = self.clone();
        Box::new(move |inner| {
            Arc::new(Wrapped {
                inner,
                stall: k.stall,
                stalling: k.stalling,
                fail_reads: k.fail_reads,
                lose_payment_answers: k.lose_payment_answers,
                lose_price_answers: k.lose_price_answers,
                customers_created: k.customers_created,
                decline_payments: k.decline_payments,
            })
        })
    }
}

/// Loses the answer of a call the provider carried out while `left` is above zero (counting it
/// down): the caller sees a timeout.
fn lose_answer(left: &AtomicU32, after: &str) -> Result<(), GatewayError> {
    match left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) {
        Ok(_) => Err(GatewayError::Unavailable(format!("timed out ({after})"))),
        Err(_) => Ok(()),
    }
}

impl Wrapped {
    async fn gate(&self) {
        if self.stalling.load(Ordering::SeqCst) {
            let _ = self.stall.acquire().await.map(|p| p.forget());
        }
    }

    fn read(&self) -> Result<(), GatewayError> {
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(GatewayError::Unavailable("provider read timed out".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl PaymentGateway for Wrapped {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    async fn create_customer(
        &self,
        e: &str,
        n: &str,
        k: &str,
    ) -> Result<CustomerRef, GatewayError> {
        // Counted on the way in: a stalled call is one that got here.
        self.customers_created.fetch_add(1, Ordering::SeqCst);
        self.gate().await;
        self.inner.create_customer(e, n, k).await
    }
    async fn setup_payment_method(
        &self,
        c: &str,
        p: &str,
        k: &str,
    ) -> Result<SetupOutcome, GatewayError> {
        self.gate().await;
        self.inner.setup_payment_method(c, p, k).await
    }
    async fn retrieve_setup(&self, id: &str) -> Result<SetupOutcome, GatewayError> {
        self.read()?;
        self.inner.retrieve_setup(id).await
    }
    async fn ensure_price(&self, spec: &PriceSpec<'_>) -> Result<PriceRef, GatewayError> {
        self.gate().await;
        let out = self.inner.ensure_price(spec).await?;
        lose_answer(
            &self.lose_price_answers,
            "after the provider created the price",
        )?;
        Ok(out)
    }
    async fn cancel_setup(&self, id: &str) -> Result<SetupOutcome, GatewayError> {
        self.read()?;
        self.inner.cancel_setup(id).await
    }
    async fn create_payment(
        &self,
        req: PaymentRequest<'_>,
    ) -> Result<PaymentOutcome, GatewayError> {
        self.gate().await;
        let declined = self.decline_payments.lock().ok().and_then(|d| d.clone());
        if let Some(code) = declined {
            return Ok(PaymentOutcome {
                payment_intent_id: format!("pi_declined_{}", req.idempotency_key),
                status: PaymentStatus::Failed(Decline {
                    code: "card_declined".into(),
                    decline_code: Some(code),
                    message: "Your card was declined.".into(),
                }),
            });
        }
        let out = self.inner.create_payment(req).await?;
        lose_answer(&self.lose_payment_answers, "after the provider charged")?;
        Ok(out)
    }
    async fn retrieve_payment(&self, id: &str) -> Result<PaymentOutcome, GatewayError> {
        self.read()?;
        self.inner.retrieve_payment(id).await
    }
    async fn cancel_payment(&self, id: &str) -> Result<PaymentOutcome, GatewayError> {
        self.read()?;
        self.inner.cancel_payment(id).await
    }
    async fn refund(&self, pi: &str, amount: i64, k: &str) -> Result<RefundRef, GatewayError> {
        self.inner.refund(pi, amount, k).await
    }
    async fn refunds_of(&self, pi: &str) -> Result<Vec<RefundRef>, GatewayError> {
        self.read()?;
        self.inner.refunds_of(pi).await
    }
    async fn resolve_dispute(
        &self,
        id: &str,
        accept: bool,
        evidence: &str,
    ) -> Result<DisputeState, GatewayError> {
        self.inner.resolve_dispute(id, accept, evidence).await
    }
    async fn retrieve_dispute(&self, id: &str) -> Result<DisputeState, GatewayError> {
        self.read()?;
        self.inner.retrieve_dispute(id).await
    }
}
