//! Typed ids: a checkout id cannot be passed where a subscription id is meant. Each is a UUID
//! (v7 when we make it) that reads and writes as one in JSON, in paths and in SQL.
//! [`AccountId`] is the protocol's (edges use it too).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use tollgate_protocol::AccountId;

macro_rules! id_type {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[derive(
            utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
            sqlx::Type,
        )]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered id.
            pub fn new_v7() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }
    )*};
}

id_type! {
    /// A payment method of an account (ours, not the provider's `pm_…`).
    PaymentMethodId;
    /// A purchase attempt.
    CheckoutId;
    /// A subscription.
    SubscriptionId;
    /// An API token (the token itself is derived from it, never stored).
    TokenId;
    /// An invoice.
    InvoiceId;
    /// One try to collect an invoice through a provider (its idempotency key derives from it).
    ChargeAttemptId;
    /// A row of the outbox (the consumer's inbox keeps it to apply an event once).
    EventId;
    /// A correction of a finalised invoice.
    CreditNoteId;
    /// A dispute (chargeback) of a payment, as billing_prod records it.
    DisputeId;
    /// A support agent of the NinjaPanel.
    AgentId;
    /// A support agent's note on an account.
    NoteId;
    /// A support agent's override of one feature for one account.
    OverrideId;
}
