//! Credit a support agent grants a customer outside any invoice (goodwill, an outage): booked
//! in the ledger (`refunds` → `credit`) and applied to the customer's next invoices when they
//! are finalised. Audited in billing_prod, in the ledger posting's own transaction.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::{self, Effect, Write};
use crate::error::{Error, Result};
use crate::ids::AccountId;
use crate::ledger::{self, Header, TxKind};
use crate::money::Currency;
use crate::state::AppState;

/// Most one grant may credit, minor units (a typo guard: 1,000,000.00 in a 2-decimal currency).
pub const GRANT_MINOR_MAX: i64 = 100_000_000;

/// `POST /panel/v1/accounts/{id}/credits`.
#[derive(utoipa::ToSchema, Debug, Clone, Serialize, Deserialize)]
pub struct Grant {
    /// 1 to 100,000,000.
    #[schema(minimum = 1, maximum = 100_000_000)]
    pub amount_minor: i64,
    pub currency: Currency,
}

/// What a grant answers.
#[derive(utoipa::ToSchema, Debug, Clone, Serialize, Deserialize)]
pub struct Granted {
    pub account_id: AccountId,
    pub amount_minor: i64,
    pub currency: Currency,
    /// The credit the customer holds now.
    pub credit_held_minor: i64,
    pub ledger_transaction: uuid::Uuid,
}

/// Grants `g` to `account` (404 for an unknown account).
pub async fn grant(
    state: &AppState,
    w: &Write<'_>,
    account: AccountId,
    g: &Grant,
) -> Result<Granted> {
    if g.amount_minor <= 0 || g.amount_minor > GRANT_MINOR_MAX {
        return Err(Error::unprocessable(
            "invalid_amount",
            format!("a credit is 1 to {GRANT_MINOR_MAX} minor units"),
        ));
    }
    crate::accounts::get(state, account).await?;
    {
        // Credit applies to invoices of its own currency: one in another is never used.
        let mut conn = state.billing.acquire().await?;
        if let (Some(billed), _) = super::store::billing_summary(&mut conn, account).await?
            && billed != g.currency
        {
            return Err(Error::unprocessable(
                "currency_mismatch",
                format!("this account is billed in {billed}"),
            ));
        }
    }
    audit::audited(&state.billing, w, async |tx| {
        let before = ledger::credit_held(tx, account, g.currency).await?;
        let header = Header {
            kind: TxKind::Credit,
            reference: format!("panel:{}", uuid::Uuid::now_v7()),
            account,
            currency: g.currency,
            description: format!("credit from support: {}", w.reason.as_str()),
        };
        let t = ledger::credit(header, g.amount_minor)
            .map_err(Error::internal)?
            .ok_or_else(|| Error::internal("an empty credit"))?;
        let posted = ledger::post(tx, &t, w.now).await.map_err(Error::internal)?;
        let after = ledger::credit_held(tx, account, g.currency).await?;
        Ok(Effect::new(
            json!({ "credit_held_minor": before }),
            json!({ "credit_held_minor": after }),
            Granted {
                account_id: account,
                amount_minor: g.amount_minor,
                currency: g.currency,
                credit_held_minor: after,
                ledger_transaction: posted.id,
            },
        ))
    })
    .await
}
