//! Connecting to Redis, one server or a Redis Cluster, the same way on the control plane and
//! the edges (feature `redis`). Where Redis is comes from [`RedisTarget`]
//! (`TOLLGATE_REDIS_URL` or `TOLLGATE_REDIS_CLUSTER_URLS`, read by `tollgate-settings`).
//!
//! * [`RedisClient::shared`]: a multiplexed connection that reconnects by itself — a
//!   `ConnectionManager` on one server, a cluster connection (one multiplexed connection per
//!   node, routed by key slot, the slot map refreshed on `MOVED` and on errors) on a cluster.
//!   Commands on it must not block.
//! * [`RedisClient::dedicated`]: a connection of its own, with a response timeout the caller
//!   chooses, for a blocking `XREAD` (which would stall every other command multiplexed on its
//!   connection). On a cluster it is a cluster connection of its own: the edge opens one per
//!   stream shard, so each shard's blocking read goes to the node that owns the shard.
//!
//! On a cluster, a command for a slot whose node is down fails after
//! [`CLUSTER_RETRIES`] attempts and at most [`CLUSTER_REQUEST_MS_MAX`]: callers treat it like
//! a Redis that is down (the control plane's outbox retries the publish, an edge's fill goes to
//! the control plane), while slots on the other nodes keep answering.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::redis_keys::RedisTarget;

/// How long connecting to one node may take.
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// How long one reply on a shared connection may take.
pub const RESPONSE_TIMEOUT_MS: u64 = 2_000;
/// Attempts of one cluster command (redirects and reconnects included) before it fails.
pub const CLUSTER_RETRIES: u32 = 2;
/// How long one cluster command may take with its retries, beyond its response timeout.
pub const CLUSTER_REQUEST_MS_MAX: u64 = RESPONSE_TIMEOUT_MS + 1_000;

/// A connection to one server or a cluster; `redis::cmd(..).query_async(&mut conn)` works on
/// either.
#[derive(Clone)]
pub enum RedisConn {
    /// One server, reconnecting by itself.
    Single(redis::aio::ConnectionManager),
    /// One server, a connection of its own (blocking reads).
    Dedicated(redis::aio::MultiplexedConnection),
    /// A cluster.
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Dedicated(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Dedicated(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Dedicated(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Where connections come from.
#[derive(Clone)]
pub enum RedisClient {
    Single(redis::Client),
    /// The cluster's seed node URLs (a client is built per connection kind: their timeouts
    /// differ).
    Cluster(Vec<String>),
}

impl RedisClient {
    /// Checks the URLs; connects to nothing yet.
    pub fn open(target: &RedisTarget) -> RedisResult<Self> {
        Ok(match target {
            RedisTarget::Single(url) => Self::Single(redis::Client::open(url.as_str())?),
            RedisTarget::Cluster(urls) => {
                Self::cluster_client(urls, Duration::from_millis(RESPONSE_TIMEOUT_MS))?;
                Self::Cluster(urls.clone())
            }
        })
    }

    /// Whether this is a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    fn cluster_client(
        urls: &[String],
        response_timeout: Duration,
    ) -> RedisResult<redis::cluster::ClusterClient> {
        redis::cluster::ClusterClientBuilder::new(urls.iter().map(String::as_str))
            .retries(CLUSTER_RETRIES)
            .min_retry_wait(50)
            .max_retry_wait(500)
            .connection_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .response_timeout(response_timeout)
            .overall_response_timeout(Some(
                response_timeout
                    + Duration::from_millis(CLUSTER_REQUEST_MS_MAX - RESPONSE_TIMEOUT_MS),
            ))
            .build()
    }

    /// A shared connection (see the module doc).
    pub async fn shared(&self) -> RedisResult<RedisConn> {
        match self {
            Self::Single(client) => Ok(RedisConn::Single(
                redis::aio::ConnectionManager::new(client.clone()).await?,
            )),
            Self::Cluster(urls) => Ok(RedisConn::Cluster(
                Self::cluster_client(urls, Duration::from_millis(RESPONSE_TIMEOUT_MS))?
                    .get_async_connection()
                    .await?,
            )),
        }
    }

    /// A connection of its own whose replies may take up to `response_timeout` (see the
    /// module doc).
    pub async fn dedicated(&self, response_timeout: Duration) -> RedisResult<RedisConn> {
        match self {
            Self::Single(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_millis(CONNECT_TIMEOUT_MS)))
                    .set_response_timeout(Some(response_timeout));
                Ok(RedisConn::Dedicated(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                ))
            }
            Self::Cluster(urls) => Ok(RedisConn::Cluster(
                Self::cluster_client(urls, response_timeout)?
                    .get_async_connection()
                    .await?,
            )),
        }
    }
}
