//! Readiness: whether each store the control plane needs answers.

use serde::Serialize;

use crate::state::AppState;

#[derive(utoipa::ToSchema, Debug, Clone, Copy, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub cf: bool,
    pub billing: bool,
    pub redis: bool,
}

/// Pings cf, billing and Redis (on a cluster, PING goes to every master: one down makes the
/// control plane unready, as a single Redis down does; publishes to its shards wait in the
/// outbox meanwhile).
pub async fn readiness(state: &AppState) -> Readiness {
    let cf = sqlx::query("SELECT 1").execute(&state.cf).await.is_ok();
    let billing = sqlx::query("SELECT 1")
        .execute(&state.billing)
        .await
        .is_ok();
    let mut redis = state.redis.clone();
    let redis = redis::cmd("PING")
        .query_async::<String>(&mut redis)
        .await
        .is_ok();
    Readiness {
        ready: cf && billing && redis,
        cf,
        billing,
        redis,
    }
}
