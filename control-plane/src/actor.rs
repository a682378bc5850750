//! Who asks for a change: recorded with what it changes, and checked against what it touches.

use crate::ids::AccountId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A customer's API token: sees and changes only its own account.
    Customer(AccountId),
    /// A platform engineer (admin token), under the name they gave (`Tollgate-Actor`).
    Platform(String),
    /// The control plane itself (maintenance, reconcilers).
    System,
}

impl Actor {
    /// The name recorded in audit trails.
    pub fn name(&self) -> String {
        match self {
            Self::Customer(id) => format!("customer:{id}"),
            Self::Platform(name) => name.clone(),
            Self::System => "system".to_owned(),
        }
    }
}
