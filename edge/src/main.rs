//! `tollgate-edge`: config, tracing, run. Configuration is documented in
//! `tollgate_edge::config`.

use tollgate_edge::config::Config;
use tollgate_settings::Layered;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let source = Layered::from_process().map_err(anyhow::Error::msg)?;
    let config = match Config::from_source(&source) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            std::process::exit(2);
        }
    };
    tollgate_edge::run(config).await
}
