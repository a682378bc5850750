//! `tollgate-edge`: config, tracing, run. Configuration is documented in
//! `tollgate_edge::config`.

use tollgate_edge::config::Config;

#[global_allocator]
static GLOBAL: tollgate_edge::Allocator = tollgate_edge::Allocator;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let config = tollgate_settings::load_or_exit(Config::from_source);
    tollgate_edge::run(config).await
}
