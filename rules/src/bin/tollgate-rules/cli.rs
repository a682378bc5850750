//! The command line: every command and flag, as clap parses them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tollgate_rules::bundle;

#[derive(Parser)]
#[command(
    name = "tollgate-rules",
    version,
    about = "Check, test, compile, sign and ship Tollgate entitlement rules",
    after_help = "Exit codes: 0 ok, 1 compile/test/verification failure, 2 usage error, \
                  3 server or network error."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Parse and check a rule source; print its diagnostics and a summary.
    Check {
        #[arg(value_name = "SOURCE", help = SOURCE_HELP)]
        file: PathBuf,
    },
    /// Compile a rule source and run its `test` blocks (interpreter and WebAssembly).
    Test {
        #[arg(value_name = "SOURCE", help = SOURCE_HELP)]
        file: PathBuf,
    },
    /// Compile a rule source, run its tests and write an unsigned bundle.
    Compile {
        #[arg(value_name = "SOURCE", help = SOURCE_HELP)]
        file: PathBuf,
        /// Where to write the unsigned bundle.
        #[arg(short, long)]
        output: PathBuf,
        /// Bundle version, 1 to 2^63-1 [default: the current Unix time in seconds].
        #[arg(long, value_parser = version_parser())]
        version: Option<u64>,
    },
    /// Generate an ed25519 signing key: DIR/ID.key (mode 0600) and DIR/ID.pub.
    Keygen {
        /// Name of the key (A-Z a-z 0-9 . _ -), recorded in every bundle it signs.
        #[arg(long)]
        key_id: String,
        /// Directory to write the key files to (created if missing).
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Sign an unsigned bundle.
    Sign {
        /// The unsigned bundle (`compile` output).
        unsigned: PathBuf,
        /// The secret key file (`keygen` output, ID.key).
        #[arg(long)]
        key: PathBuf,
        /// Where to write the signed bundle.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Show what a bundle holds; with trusted keys, verify its signature too.
    Inspect {
        /// A signed or unsigned bundle.
        bundle: PathBuf,
        /// A public key file (ID.pub) to verify the signature with; repeatable.
        #[arg(long = "trusted-key", value_name = "FILE.pub")]
        trusted_keys: Vec<PathBuf>,
    },
    /// Show what changes from one bundle to another, including the decisions of their tests.
    Diff {
        /// The bundle in use.
        old: PathBuf,
        /// The bundle that would replace it.
        new: PathBuf,
    },
    /// Upload a signed bundle to the control plane (it verifies and tests it).
    Deploy {
        /// The signed bundle.
        bundle: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// Activate a deployed bundle for a share of the edge fleet (a canary, chosen by edge id).
    Activate {
        /// The bundle version.
        #[arg(value_parser = version_parser())]
        version: u64,
        /// Percentage of edges that run the new rules (0-100), chosen deterministically by edge id.
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
        canary: u8,
        #[command(flatten)]
        remote: Remote,
    },
    /// Activate a bundle for every account.
    Promote {
        /// The bundle version.
        #[arg(value_parser = version_parser())]
        version: u64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Go back to the previous bundle, or to a given version.
    Rollback {
        /// The version to return to [default: the one before the active bundle].
        #[arg(long, value_parser = version_parser())]
        to: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show the bundles the control plane holds and what each edge runs.
    Status {
        #[command(flatten)]
        remote: Remote,
    },
}

/// What `check`, `test` and `compile` read (`files::read_sources`).
const SOURCE_HELP: &str = "The rule source: a .tg file, or a folder whose .tg files (in \
                           subfolders too, sorted by path, names starting with `.` skipped) \
                           are one program";

/// Bundle versions as the control plane stores them: `bundle::BUNDLE_VERSION_MIN..=MAX`.
fn version_parser() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(bundle::BUNDLE_VERSION_MIN..=bundle::BUNDLE_VERSION_MAX)
}

#[derive(Args)]
pub(crate) struct Remote {
    /// Control plane base URL.
    #[arg(
        long,
        env = "TOLLGATE_CONTROL_PLANE_URL",
        default_value = "http://127.0.0.1:7700"
    )]
    pub(crate) server: String,
    /// Admin API token.
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Who is acting, for the audit log [default: $USER].
    #[arg(long, env = "TOLLGATE_ACTOR")]
    pub(crate) actor: Option<String>,
}
