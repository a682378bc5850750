//! `tollgate-control-plane`: config, tracing, run. Configuration is documented in
//! `tollgate_control_plane::config`. `tollgate-control-plane billing-pass [--as-of <time>]
//! [--run]` previews or runs a billing pass instead (`tollgate_control_plane::cli`).

use tollgate_control_plane::cli;
use tollgate_control_plane::config::Config;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let pass = args.first().map(String::as_str) == Some("billing-pass");
    // The command prints its own progress and summary; the server logs at info.
    let default_level = if pass { "warn" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = tollgate_settings::load_or_exit(Config::from_source);
    if pass {
        let cmd = cli::parse(&args[1..])?;
        std::process::exit(cli::billing_pass(&config, &cmd).await?);
    }
    tollgate_control_plane::run(config).await
}
