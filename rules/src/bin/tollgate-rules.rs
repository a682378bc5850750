//! `tollgate-rules`: check, test, compile, sign, inspect and compare rule bundles, and drive
//! their rollout on the control plane.
//!
//! Exit codes: 0 ok; 1 a compile, test or verification failure (or a 422 from the control
//! plane); 2 a usage error (bad arguments, unreadable or unwritable files); 3 a server or
//! network error.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use tollgate_rules::bundle::{self, InspectedBundle, PublicKey, SigningKey, TrustedKeys};
use tollgate_rules::compiler::{self, describe};
use tollgate_rules::interp;
use tollgate_rules::ir::{self, Fact, FactVector, Limit, Program};
use tollgate_rules::lang::{self, Diagnostic, Severity, SourceFile};

/// Key files are one short line.
const KEY_FILE_BYTES_MAX: u64 = 4 * 1024;
/// Whole request to the control plane, connection included.
const HTTP_TIMEOUT_SECS: u64 = 30;
const HTTP_CONNECT_TIMEOUT_SECS: u64 = 5;
/// Largest control-plane answer read.
const RESPONSE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Longest non-JSON error body echoed to the terminal.
const ERROR_BODY_CHARS_MAX: usize = 500;

/// What every command prints goes through here instead of `println!`, which panics when
/// stdout is closed (`tollgate-rules status | head` exited 101 with "failed printing to
/// stdout: Broken pipe"). Once stdout is closed (`EPIPE`), the rest of the output is dropped
/// and the command runs to its end, so files it writes are written whole and its exit code
/// is its own. Any other write error is reported once the command is done (exit 2 if it had
/// succeeded).
mod out {
    use std::io::Write;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Set at the first failed write: nothing more is written.
    static CLOSED: AtomicBool = AtomicBool::new(false);
    /// The first write error that is not a closed pipe.
    static FAILED: OnceLock<String> = OnceLock::new();

    /// One line to stdout.
    pub fn line(args: std::fmt::Arguments<'_>) {
        if CLOSED.load(Ordering::Relaxed) {
            return;
        }
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = stdout
            .write_fmt(args)
            .and_then(|()| stdout.write_all(b"\n"))
        {
            give_up(&e);
        }
    }

    fn give_up(e: &std::io::Error) {
        CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            let _ = FAILED.set(e.to_string());
        }
    }

    /// Flushes stdout; the write error to report, if one other than a closed pipe happened.
    pub fn finish() -> Option<String> {
        if !CLOSED.load(Ordering::Relaxed)
            && let Err(e) = std::io::stdout().lock().flush()
        {
            give_up(&e);
        }
        FAILED.get().cloned()
    }
}

/// `println!` through [`out::line`].
macro_rules! outln {
    () => {
        out::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        out::line(format_args!($($arg)*))
    };
}

/// `eprintln!` that ignores a closed stderr instead of panicking.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

#[derive(Parser)]
#[command(
    name = "tollgate-rules",
    version,
    about = "Check, test, compile, sign and ship Tollgate entitlement rules",
    after_help = "Exit codes: 0 ok, 1 compile/test/verification failure, 2 usage error, \
                  3 server or network error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and check a rule source; print its diagnostics and a summary.
    Check {
        /// The rule source (`.tg`).
        file: PathBuf,
    },
    /// Compile a rule source and run its `test` blocks (interpreter and WebAssembly).
    Test {
        /// The rule source (`.tg`).
        file: PathBuf,
    },
    /// Compile a rule source, run its tests and write an unsigned bundle.
    Compile {
        /// The rule source (`.tg`).
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

/// Bundle versions as the control plane stores them: `bundle::BUNDLE_VERSION_MIN..=MAX`.
fn version_parser() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(bundle::BUNDLE_VERSION_MIN..=bundle::BUNDLE_VERSION_MAX)
}

#[derive(Args)]
struct Remote {
    /// Control plane base URL.
    #[arg(
        long,
        env = "TOLLGATE_CONTROL_PLANE_URL",
        default_value = "http://127.0.0.1:7700"
    )]
    server: String,
    /// Admin API token.
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Who is acting, for the audit log [default: $USER].
    #[arg(long, env = "TOLLGATE_ACTOR")]
    actor: Option<String>,
}

/// How a command failed; decides the exit code.
enum Failure {
    /// Compile, test or verification failure (1). The message may be empty when the details
    /// were printed already.
    Failed(String),
    /// Bad arguments or unusable files (2).
    Usage(String),
    /// The control plane or the network (3).
    Server(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Self::Failed(_) => 1,
            Self::Usage(_) => 2,
            Self::Server(_) => 3,
        }
    }
}

type Outcome = Result<(), Failure>;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let result = match cli.command {
        Command::Check { file } => check(&file),
        Command::Test { file } => test(&file),
        Command::Compile {
            file,
            output,
            version,
        } => compile(&file, &output, version),
        Command::Keygen { key_id, output } => keygen(&key_id, &output),
        Command::Sign {
            unsigned,
            key,
            output,
        } => sign(&unsigned, &key, &output),
        Command::Inspect {
            bundle,
            trusted_keys,
        } => inspect(&bundle, &trusted_keys),
        Command::Diff { old, new } => diff(&old, &new),
        Command::Deploy { bundle, remote } => deploy(&bundle, &remote),
        Command::Activate {
            version,
            canary,
            remote,
        } => Client::new(&remote).and_then(|c| {
            c.post_json(
                &format!("/admin/v1/bundles/{version}/activate"),
                serde_json::json!({ "canary_percent": canary }),
            )
        }),
        Command::Promote { version, remote } => Client::new(&remote).and_then(|c| {
            c.post_json(
                &format!("/admin/v1/bundles/{version}/promote"),
                serde_json::json!({}),
            )
        }),
        Command::Rollback { to, remote } => Client::new(&remote).and_then(|c| {
            let body = match to {
                Some(v) => serde_json::json!({ "to_version": v }),
                None => serde_json::json!({}),
            };
            c.post_json("/admin/v1/rollback", body)
        }),
        Command::Status { remote } => Client::new(&remote).and_then(|c| c.status()),
    };
    let code = match result {
        Ok(()) => 0,
        Err(failure) => {
            let (Failure::Failed(m) | Failure::Usage(m) | Failure::Server(m)) = &failure;
            if !m.is_empty() {
                errln!("error: {m}");
            }
            failure.code()
        }
    };
    // A reader that went away is not the command's failure; an unwritable stdout is.
    match out::finish() {
        Some(e) if code == 0 => {
            errln!("error: cannot write to stdout: {e}");
            ExitCode::from(Failure::Usage(String::new()).code())
        }
        _ => ExitCode::from(code),
    }
}

// ---------------------------------------------------------------------------------------------
// Files

/// Reads at most `max` bytes; a larger file is refused rather than read.
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, Failure> {
    let file = std::fs::File::open(path)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    if bytes.len() as u64 > max {
        return Err(Failure::Failed(format!(
            "{} is larger than the {max} bytes allowed",
            path.display()
        )));
    }
    Ok(bytes)
}

fn read_source(path: &Path) -> Result<SourceFile, Failure> {
    let bytes = read_bounded(path, lang::MAX_SOURCE_BYTES as u64)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Failure::Failed(format!("{} is not UTF-8 text", path.display())))?;
    Ok(SourceFile {
        name: path.display().to_string(),
        text,
    })
}

fn read_bundle(path: &Path) -> Result<Vec<u8>, Failure> {
    read_bounded(path, bundle::BUNDLE_BYTES_MAX as u64)
}

fn write(path: &Path, bytes: &[u8]) -> Outcome {
    std::fs::write(path, bytes)
        .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", path.display())))
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// check, test, compile

fn render_all(file: &SourceFile, diags: &[Diagnostic]) {
    for d in diags {
        errln!("{}", d.render(file));
    }
}

fn count(diags: &[Diagnostic], severity: Severity) -> usize {
    diags.iter().filter(|d| d.severity == severity).count()
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn check(path: &Path) -> Outcome {
    let file = read_source(path)?;
    // The same checks as `compile`, short of running the tests.
    match compiler::check(&file) {
        Ok((program, warnings)) => {
            render_all(&file, &warnings);
            outln!(
                "{}: ok: {}, {}, {}, {}, {}; {}",
                file.name,
                plural(program.features.len(), "feature"),
                plural(program.plans.len(), "plan"),
                plural(program.addons.len(), "add-on"),
                plural(program.rules.len(), "rule"),
                plural(program.tests.len(), "test"),
                plural(warnings.len(), "warning"),
            );
            Ok(())
        }
        Err(diags) => {
            render_all(&file, &diags);
            Err(Failure::Failed(format!(
                "{}: {}, {}",
                file.name,
                plural(count(&diags, Severity::Error), "error"),
                plural(count(&diags, Severity::Warning), "warning")
            )))
        }
    }
}

fn test(path: &Path) -> Outcome {
    let file = read_source(path)?;
    let program = match compiler::check(&file) {
        Ok((program, _)) => program,
        Err(diags) => {
            render_all(&file, &diags);
            return Err(Failure::Failed(format!(
                "{}: does not compile ({})",
                file.name,
                plural(count(&diags, Severity::Error), "error")
            )));
        }
    };
    let diags = match compiler::compile(&file) {
        Ok(compiled) => compiled.warnings,
        Err(diags) => diags,
    };
    let (errors, warnings): (Vec<&Diagnostic>, Vec<&Diagnostic>) =
        diags.iter().partition(|d| d.severity == Severity::Error);
    for w in warnings {
        errln!("{}", w.render(&file));
    }
    let mut failed = 0;
    for t in &program.tests {
        let mine: Vec<&&Diagnostic> = errors.iter().filter(|d| d.span == t.span).collect();
        if mine.is_empty() {
            outln!("test {:?} ... ok", t.name);
        } else {
            failed += 1;
            outln!("test {:?} ... FAILED", t.name);
            for d in mine {
                outln!("    {}", d.message);
            }
        }
    }
    // Problems not tied to one test (a module that does not run, a program too large).
    let other: Vec<Diagnostic> = errors
        .iter()
        .filter(|d| !program.tests.iter().any(|t| t.span == d.span))
        .map(|d| (*d).clone())
        .collect();
    render_all(&file, &other);
    let total = program.tests.len();
    if failed == 0 && other.is_empty() {
        outln!("{} of {total} tests passed", total);
        Ok(())
    } else {
        Err(Failure::Failed(format!(
            "{} of {total} tests passed, {failed} failed{}",
            total - failed,
            if other.is_empty() {
                String::new()
            } else {
                format!(", {}", plural(other.len(), "other error"))
            }
        )))
    }
}

fn compile(path: &Path, output: &Path, version: Option<u64>) -> Outcome {
    let file = read_source(path)?;
    let compiled = match compiler::compile(&file) {
        Ok(compiled) => compiled,
        Err(diags) => {
            render_all(&file, &diags);
            return Err(Failure::Failed(format!(
                "{}: {}",
                file.name,
                plural(count(&diags, Severity::Error), "error")
            )));
        }
    };
    render_all(&file, &compiled.warnings);
    let now = now();
    let version = version.unwrap_or(now.as_secs());
    let created_at_ms = i64::try_from(now.as_millis()).unwrap_or(i64::MAX);
    let unsigned = bundle::build(&compiled, &file.text, version, created_at_ms)
        .map_err(|e| Failure::Failed(e.to_string()))?;
    let bytes = unsigned.encode();
    write(output, &bytes)?;
    outln!(
        "wrote {} (version {version}, {} bytes, {} tests passed); sign it with `tollgate-rules sign`",
        output.display(),
        bytes.len(),
        compiled.program.tests.len()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// keygen, sign

fn keygen(key_id: &str, dir: &Path) -> Outcome {
    if !bundle::is_valid_key_id(key_id) {
        return Err(Failure::Usage(format!(
            "key id `{key_id}` is not 1-{} characters of A-Z a-z 0-9 . _ -",
            bundle::KEY_ID_CHARS_MAX
        )));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::Usage(format!("cannot create {}: {e}", dir.display())))?;
    let key = SigningKey::generate(key_id);
    let secret_path = dir.join(format!("{key_id}.key"));
    let public_path = dir.join(format!("{key_id}.pub"));
    write_new_secret(&secret_path, key.to_file_string().as_bytes())?;
    let public = key.public();
    write(&public_path, public.to_file_string().as_bytes())?;
    outln!("wrote {} (secret, mode 0600)", secret_path.display());
    outln!("wrote {}", public_path.display());
    outln!("trusted-key list entry: {}:{}", public.key_id, public.hex());
    Ok(())
}

/// Creates the file with mode 0600 (on Unix) and refuses to overwrite an existing key.
fn write_new_secret(path: &Path, bytes: &[u8]) -> Outcome {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(path)
        .map_err(|e| Failure::Usage(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", path.display())))
}

fn read_key_text(path: &Path) -> Result<String, Failure> {
    String::from_utf8(read_bounded(path, KEY_FILE_BYTES_MAX)?)
        .map_err(|_| Failure::Usage(format!("{} is not a key file", path.display())))
}

fn sign(unsigned_path: &Path, key_path: &Path, output: &Path) -> Outcome {
    let key = SigningKey::from_file_string(&read_key_text(key_path)?)
        .map_err(|e| Failure::Usage(format!("{}: {e}", key_path.display())))?;
    let bytes = read_bundle(unsigned_path)?;
    // Sign only what is whole: parts and program checked against the manifest first.
    bundle::inspect(&bytes)
        .map_err(|e| Failure::Failed(format!("{}: {e}", unsigned_path.display())))?;
    let unsigned = bundle::UnsignedBundle::decode(&bytes)
        .map_err(|e| Failure::Failed(format!("{}: {e}", unsigned_path.display())))?;
    let signed = unsigned.sign(&key);
    let verified = bundle::verify(&signed, &TrustedKeys::new(vec![key.public()]))
        .map_err(|e| Failure::Failed(format!("the signed bundle does not verify: {e}")))?;
    write(output, &signed)?;
    outln!(
        "wrote {} (version {}, signed by `{}`, sha256 {})",
        output.display(),
        verified.manifest.bundle_version,
        key.key_id,
        verified.sha256
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// inspect

fn load_inspected(path: &Path) -> Result<InspectedBundle, Failure> {
    bundle::inspect(&read_bundle(path)?)
        .map_err(|e| Failure::Failed(format!("{}: {e}", path.display())))
}

/// `2023-11-14 22:13:20 UTC` from Unix milliseconds (proleptic Gregorian calendar).
fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn kind(f: &ir::Feature) -> String {
    let mut s = match f.kind {
        k @ (ir::FeatureKind::Bool | ir::FeatureKind::Limit) => k.as_str().to_string(),
        ir::FeatureKind::Metered => {
            format!("metered per {}", f.period.as_deref().unwrap_or("?"))
        }
    };
    if f.fail_open {
        s.push_str(", fail open");
    }
    s
}

fn price(minor: i64, currency: &str, i: ir::Interval) -> String {
    format!("{minor} {currency} per {}", i.as_str())
}

fn feature_key(program: &Program, idx: u32) -> &str {
    program
        .features
        .get(idx as usize)
        .map_or("?", |f| f.key.as_str())
}

fn grant_text(program: &Program, g: &ir::Grant) -> String {
    let key = feature_key(program, g.feature);
    let bool_feature = program
        .features
        .get(g.feature as usize)
        .is_some_and(|f| f.kind == ir::FeatureKind::Bool);
    match g.limit {
        _ if bool_feature => key.to_string(),
        Limit::None => key.to_string(),
        Limit::Unlimited => format!("{key} = unlimited"),
        Limit::Finite(n) => format!("{key} = {n}"),
    }
}

fn pricing_text(p: &ir::Pricing) -> String {
    match p {
        ir::Pricing::PerUnit { unit_minor } => format!("per unit {unit_minor}"),
        ir::Pricing::Graduated { tiers } => format!("graduated, {}", tiers_text(tiers)),
        ir::Pricing::Volume { tiers } => format!("volume, {}", tiers_text(tiers)),
        ir::Pricing::Package {
            size,
            package_minor,
        } => format!("package of {size} for {package_minor}"),
    }
}

fn tiers_text(tiers: &[ir::Tier]) -> String {
    tiers
        .iter()
        .map(|t| {
            let bound = t.up_to.map_or("then".to_string(), |u| format!("up to {u}"));
            let flat = if t.flat_minor == 0 {
                String::new()
            } else {
                format!(" flat {}", t.flat_minor)
            };
            format!("{bound} at {}{flat}", t.unit_minor)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn effect_text(program: &Program, (f, e): &(u32, ir::AddonEffect)) -> String {
    let key = feature_key(program, *f);
    match e {
        ir::AddonEffect::Grant => format!("grant {key}"),
        ir::AddonEffect::AddLimit(n) => format!("{key} + {n}"),
    }
}

fn inspect(path: &Path, trusted_key_files: &[PathBuf]) -> Outcome {
    let bytes = read_bundle(path)?;
    let b =
        bundle::inspect(&bytes).map_err(|e| Failure::Failed(format!("{}: {e}", path.display())))?;
    let m = &b.manifest;
    let p = &b.program;
    outln!("bundle     {} ({} bytes)", path.display(), bytes.len());
    outln!("sha256     {}", b.sha256);
    outln!("version    {}", m.bundle_version);
    outln!("format     {}", m.format);
    outln!("created    {}", utc(m.created_at_ms));
    outln!("compiler   {}", m.compiler_version);
    outln!("source     sha256 {}", m.source_hash);
    outln!("features   {}", m.features.len());
    for f in &m.features {
        outln!("  {:<24} {}", f.key, kind(f));
    }
    outln!("plans      {}", m.plans.len());
    for plan in &m.plans {
        let trial = if plan.trial_days > 0 {
            format!(", trial {} days", plan.trial_days)
        } else {
            String::new()
        };
        outln!(
            "  {:<24} {:?}: {}{trial}",
            plan.key,
            plan.name,
            price(plan.price_minor, &plan.currency, plan.interval)
        );
        let grants: Vec<String> = plan.grants.iter().map(|g| grant_text(p, g)).collect();
        outln!("    grants: {}", or_none(&grants));
        for meter in &plan.meters {
            outln!(
                "    meter {}: {}",
                feature_key(p, meter.feature),
                pricing_text(&meter.pricing)
            );
        }
    }
    outln!("add-ons    {}", m.addons.len());
    for a in &m.addons {
        let effects: Vec<String> = a.effects.iter().map(|e| effect_text(p, e)).collect();
        outln!(
            "  {:<24} {:?}: {}; {}",
            a.key,
            a.name,
            price(a.price_minor, &a.currency, a.interval),
            or_none(&effects)
        );
    }
    outln!("rules      {}", m.rule_names.len());
    for r in &m.rule_names {
        outln!("  {r:?}");
    }
    outln!("tests      {}", m.tests.len());
    for t in &m.tests {
        outln!("  {:?}", t.name);
    }
    outln!("parts      {}", m.parts.len());
    for part in &m.parts {
        outln!(
            "  {:<24} {:>10} bytes  sha256 {}",
            part.name,
            part.len,
            part.sha256
        );
    }
    let Some(key_id) = &b.key_id else {
        outln!("signature  none (unsigned bundle)");
        return if trusted_key_files.is_empty() {
            Ok(())
        } else {
            Err(Failure::Failed("the bundle is not signed".into()))
        };
    };
    if trusted_key_files.is_empty() {
        outln!("signature  key `{key_id}`, not checked (pass --trusted-key FILE.pub)");
        return Ok(());
    }
    let mut keys = Vec::new();
    for f in trusted_key_files {
        keys.push(
            PublicKey::from_file_string(&read_key_text(f)?)
                .map_err(|e| Failure::Usage(format!("{}: {e}", f.display())))?,
        );
    }
    match bundle::verify(&bytes, &TrustedKeys::new(keys)) {
        Ok(v) => {
            outln!("signature  verified (key `{}`)", v.key_id);
            Ok(())
        }
        Err(e) => {
            outln!("signature  NOT VERIFIED (key `{key_id}`): {e}");
            Err(Failure::Failed(format!("{}: {e}", path.display())))
        }
    }
}

fn or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

// ---------------------------------------------------------------------------------------------
// diff

fn diff(old_path: &Path, new_path: &Path) -> Outcome {
    let old = load_inspected(old_path)?;
    let new = load_inspected(new_path)?;
    let (a, b) = (&old.program, &new.program);
    outln!(
        "version {} -> {}",
        old.manifest.bundle_version,
        new.manifest.bundle_version
    );
    let mut changes = 0usize;
    let mut section = |title: &str, lines: Vec<String>| {
        if !lines.is_empty() {
            outln!("{title}:");
            for l in &lines {
                outln!("  {l}");
            }
            changes += lines.len();
        }
    };
    section("features", diff_features(a, b));
    section("plans", diff_plans(a, b));
    section("add-ons", diff_addons(a, b));
    section("rules", diff_rules(a, b));
    section(
        "decisions (embedded tests of both bundles under both programs)",
        diff_decisions(a, b),
    );
    if changes == 0 {
        outln!("no differences");
    }
    Ok(())
}

fn diff_features(a: &Program, b: &Program) -> Vec<String> {
    let mut out = Vec::new();
    for f in &a.features {
        match b.features.iter().find(|g| g.key == f.key) {
            None => out.push(format!("- {} ({}) removed", f.key, kind(f))),
            Some(g) if g != f => out.push(format!("~ {}: {} -> {}", f.key, kind(f), kind(g))),
            Some(_) => {}
        }
    }
    for g in &b.features {
        if !a.features.iter().any(|f| f.key == g.key) {
            out.push(format!("+ {} ({}) added", g.key, kind(g)));
        }
    }
    out
}

/// A plan's grants by feature key, as text.
fn grant_map(p: &Program, plan: &ir::Plan) -> Vec<(String, String)> {
    plan.grants
        .iter()
        .map(|g| (feature_key(p, g.feature).to_string(), grant_text(p, g)))
        .collect()
}

fn diff_plans(a: &Program, b: &Program) -> Vec<String> {
    let mut out = Vec::new();
    for pa in &a.plans {
        let Some(pb) = b.plans.iter().find(|p| p.key == pa.key) else {
            out.push(format!("- plan {} removed", pa.key));
            continue;
        };
        let key = &pa.key;
        let (price_a, price_b) = (
            price(pa.price_minor, &pa.currency, pa.interval),
            price(pb.price_minor, &pb.currency, pb.interval),
        );
        if price_a != price_b {
            out.push(format!("{key}: price {price_a} -> {price_b}"));
        }
        if pa.name != pb.name {
            out.push(format!("{key}: name {:?} -> {:?}", pa.name, pb.name));
        }
        if pa.trial_days != pb.trial_days {
            out.push(format!(
                "{key}: trial {} -> {} days",
                pa.trial_days, pb.trial_days
            ));
        }
        let (ga, gb) = (grant_map(a, pa), grant_map(b, pb));
        for (f, text) in &ga {
            match gb.iter().find(|(g, _)| g == f) {
                None => out.push(format!("{key}: {f} removed")),
                Some((_, t)) if t != text => out.push(format!("{key}: {text} -> {t}")),
                Some(_) => {}
            }
        }
        for (f, text) in &gb {
            if !ga.iter().any(|(g, _)| g == f) {
                out.push(format!("{key}: {text} added"));
            }
        }
        let meters = |p: &Program, plan: &ir::Plan| -> Vec<String> {
            plan.meters
                .iter()
                .map(|m| {
                    format!(
                        "meter {} {}",
                        feature_key(p, m.feature),
                        pricing_text(&m.pricing)
                    )
                })
                .collect()
        };
        let (ma, mb) = (meters(a, pa), meters(b, pb));
        if ma != mb {
            out.push(format!("{key}: [{}] -> [{}]", or_none(&ma), or_none(&mb)));
        }
    }
    for pb in &b.plans {
        if !a.plans.iter().any(|p| p.key == pb.key) {
            out.push(format!(
                "+ plan {} added ({})",
                pb.key,
                price(pb.price_minor, &pb.currency, pb.interval)
            ));
        }
    }
    out
}

fn diff_addons(a: &Program, b: &Program) -> Vec<String> {
    let mut out = Vec::new();
    let text = |p: &Program, x: &ir::Addon| {
        let effects: Vec<String> = x.effects.iter().map(|e| effect_text(p, e)).collect();
        format!(
            "{}; {}",
            price(x.price_minor, &x.currency, x.interval),
            or_none(&effects)
        )
    };
    for xa in &a.addons {
        match b.addons.iter().find(|x| x.key == xa.key) {
            None => out.push(format!("- add-on {} removed", xa.key)),
            Some(xb) => {
                let (ta, tb) = (text(a, xa), text(b, xb));
                if ta != tb {
                    out.push(format!("{}: {ta} -> {tb}", xa.key));
                }
            }
        }
    }
    for xb in &b.addons {
        if !a.addons.iter().any(|x| x.key == xb.key) {
            out.push(format!("+ add-on {} added ({})", xb.key, text(b, xb)));
        }
    }
    out
}

fn diff_rules(a: &Program, b: &Program) -> Vec<String> {
    let mut out = Vec::new();
    // Rules refer to features, plans and add-ons by index: bodies compare only when those
    // are declared alike in both programs.
    let same_names = a
        .features
        .iter()
        .map(|f| &f.key)
        .eq(b.features.iter().map(|f| &f.key))
        && a.plans
            .iter()
            .map(|p| &p.key)
            .eq(b.plans.iter().map(|p| &p.key))
        && a.addons
            .iter()
            .map(|x| &x.key)
            .eq(b.addons.iter().map(|x| &x.key));
    for ra in &a.rules {
        match b.rules.iter().find(|r| r.name == ra.name) {
            None => out.push(format!("- rule {:?} removed", ra.name)),
            Some(rb) if same_names && (ra.when != rb.when || ra.action != rb.action) => {
                out.push(format!("~ rule {:?} changed", ra.name));
            }
            Some(_) => {}
        }
    }
    for rb in &b.rules {
        if !a.rules.iter().any(|r| r.name == rb.name) {
            out.push(format!("+ rule {:?} added", rb.name));
        }
    }
    let order = |p: &Program| -> Vec<String> {
        p.rules
            .iter()
            .filter(|r| {
                a.rules.iter().any(|x| x.name == r.name) && b.rules.iter().any(|x| x.name == r.name)
            })
            .map(|r| r.name.clone())
            .collect()
    };
    if order(a) != order(b) {
        out.push("~ rules reordered".into());
    }
    out
}

/// The facts of one program's test in another program's layout, matched by key: a plan,
/// add-on or feature the other program lacks is left out (no plan: no subscription).
fn translate(facts: &FactVector, from: &Program, to: &Program) -> FactVector {
    let (fs, ts) = (from.shape(), to.shape());
    let mut out = FactVector::empty(ts);
    for fact in [
        Fact::Banned,
        Fact::Status,
        Fact::DunningLevel,
        Fact::DaysPastDue,
        Fact::InTrial,
        Fact::Today,
    ] {
        out.set(fact, ts, facts.get(fact, fs));
    }
    let plan = usize::try_from(facts.get(Fact::Plan, fs))
        .ok()
        .and_then(|i| from.plans.get(i))
        .and_then(|p| to.plans.iter().position(|q| q.key == p.key));
    out.set(Fact::Plan, ts, plan.map_or(-1, |i| i as i64));
    for (i, x) in from.addons.iter().enumerate() {
        if let Some(j) = to.addons.iter().position(|y| y.key == x.key) {
            out.set(
                Fact::AddonQty(j as u32),
                ts,
                facts.get(Fact::AddonQty(i as u32), fs),
            );
        }
    }
    for (i, f) in from.features.iter().enumerate() {
        if let Some(j) = to.features.iter().position(|g| g.key == f.key) {
            let (i, j) = (i as u32, j as u32);
            for (src, dst) in [
                (Fact::Usage(i), Fact::Usage(j)),
                (Fact::OverrideMode(i), Fact::OverrideMode(j)),
            ] {
                out.set(dst, ts, facts.get(src, fs));
            }
            out.set_override_limit(j, ts, facts.override_limit(i, fs));
        }
    }
    out
}

fn diff_decisions(a: &Program, b: &Program) -> Vec<String> {
    let mut out = Vec::new();
    let cases = a
        .tests
        .iter()
        .map(|t| ("old", t, t.given.clone(), translate(&t.given, a, b)))
        .chain(
            b.tests
                .iter()
                // A test that is in both bundles with the same facts is shown once.
                .filter(|t| {
                    !a.tests
                        .iter()
                        .any(|s| s.name == t.name && translate(&s.given, a, b) == t.given)
                })
                .map(|t| ("new", t, translate(&t.given, b, a), t.given.clone())),
        );
    for (origin, test, facts_a, facts_b) in cases {
        let (da, db) = (interp::evaluate(a, &facts_a), interp::evaluate(b, &facts_b));
        for (i, f) in a.features.iter().enumerate() {
            let Some(j) = b.features.iter().position(|g| g.key == f.key) else {
                continue;
            };
            if let (Some(x), Some(y)) = (da.get(i), db.get(j))
                && x != y
            {
                out.push(format!(
                    "test {:?} ({origin}): {}: {} -> {}",
                    test.name,
                    f.key,
                    describe(x),
                    describe(y)
                ));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The control plane

enum Body {
    Empty,
    Json(serde_json::Value),
    Bundle(Vec<u8>),
}

struct Client {
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: String,
    token: String,
    actor: String,
}

impl Client {
    fn new(remote: &Remote) -> Result<Self, Failure> {
        let base = remote.server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure::Usage(format!(
                "--server `{}` is not an http:// or https:// URL",
                remote.server
            )));
        }
        let token = remote
            .token
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Failure::Usage("no admin token: pass --token or set TOLLGATE_ADMIN_TOKEN".into())
            })?;
        let actor = remote
            .actor
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .or_else(|| std::env::var("LOGNAME").ok())
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                Failure::Usage("no actor: pass --actor or set TOLLGATE_ACTOR or USER".into())
            })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::Server(format!("cannot start the async runtime: {e}")))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(HTTP_TIMEOUT_SECS))
            .connect_timeout(Duration::from_secs(HTTP_CONNECT_TIMEOUT_SECS))
            .user_agent(compiler::COMPILER_VERSION)
            .build()
            .map_err(|e| Failure::Server(format!("cannot make an HTTP client: {e}")))?;
        Ok(Self {
            runtime,
            http,
            base,
            token,
            actor,
        })
    }

    /// Sends one request; a 2xx answer's JSON (or `null` when empty) is returned, anything
    /// else becomes the problem's `code: detail`.
    fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Body,
    ) -> Result<serde_json::Value, Failure> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token)
            .header("Tollgate-Actor", &self.actor)
            .header(reqwest::header::ACCEPT, "application/json");
        request = match body {
            Body::Empty => request,
            Body::Json(v) => request.json(&v),
            Body::Bundle(bytes) => request
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(bytes),
        };
        let (status, bytes) = self
            .runtime
            .block_on(async {
                let mut response = request.send().await?;
                let status = response.status();
                let mut bytes = Vec::new();
                while let Some(chunk) = response.chunk().await? {
                    if bytes.len() + chunk.len() > RESPONSE_BYTES_MAX {
                        break;
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok::<_, reqwest::Error>((status, bytes))
            })
            .map_err(|e| Failure::Server(format!("{method} {url}: {}", error_chain(&e))))?;
        if status.is_success() {
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(serde_json::Value::Null);
            }
            return serde_json::from_slice(&bytes)
                .map_err(|e| Failure::Server(format!("{method} {url}: answer is not JSON: {e}")));
        }
        let message = match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(problem) if problem.get("code").is_some() => format!(
                "{}: {}",
                problem["code"].as_str().unwrap_or("unknown"),
                problem
                    .get("detail")
                    .or_else(|| problem.get("title"))
                    .and_then(|d| d.as_str())
                    .unwrap_or("")
            ),
            _ => {
                let text: String = String::from_utf8_lossy(&bytes)
                    .chars()
                    .take(ERROR_BODY_CHARS_MAX)
                    .collect();
                format!("http {}: {}", status.as_u16(), text.trim())
            }
        };
        if status == reqwest::StatusCode::UNPROCESSABLE_ENTITY {
            Err(Failure::Failed(message))
        } else {
            Err(Failure::Server(message))
        }
    }

    fn post_json(&self, path: &str, body: serde_json::Value) -> Outcome {
        let answer = self.send(reqwest::Method::POST, path, Body::Json(body))?;
        print_object(&answer);
        Ok(())
    }

    fn status(&self) -> Outcome {
        let bundles = self.send(reqwest::Method::GET, "/admin/v1/bundles", Body::Empty)?;
        let edges = self.send(reqwest::Method::GET, "/admin/v1/edges", Body::Empty)?;
        outln!("bundles");
        print_table(rows(&bundles, "bundles"));
        outln!();
        outln!("edges");
        print_table(rows(&edges, "edges"));
        Ok(())
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn deploy(path: &Path, remote: &Remote) -> Outcome {
    let bytes = read_bundle(path)?;
    // Catch a wrong file before the upload; the control plane verifies the signature.
    let local =
        bundle::inspect(&bytes).map_err(|e| Failure::Failed(format!("{}: {e}", path.display())))?;
    if local.key_id.is_none() {
        return Err(Failure::Failed(format!(
            "{} is not signed; run `tollgate-rules sign` first",
            path.display()
        )));
    }
    let client = Client::new(remote)?;
    let answer = client.send(
        reqwest::Method::POST,
        "/admin/v1/bundles",
        Body::Bundle(bytes),
    )?;
    print_object(&answer);
    Ok(())
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `key: value` per field of an object; anything else as JSON.
fn print_object(v: &serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            let width = map.keys().map(String::len).max().unwrap_or(0);
            for (k, v) in map {
                outln!("{k:<width$}  {}", scalar(v));
            }
        }
        serde_json::Value::Null => outln!("ok"),
        other => outln!("{other}"),
    }
}

/// The rows of a list answer: the array itself, or the array under `key` (or the only array
/// field) of an object.
fn rows<'a>(v: &'a serde_json::Value, key: &str) -> &'a [serde_json::Value] {
    match v {
        serde_json::Value::Array(rows) => rows,
        serde_json::Value::Object(map) => map
            .get(key)
            .or_else(|| map.get("items"))
            .or_else(|| map.values().find(|v| v.is_array()))
            .and_then(|v| v.as_array())
            .map_or(&[], Vec::as_slice),
        _ => &[],
    }
}

/// A table of the scalar fields of the rows: ids and versions first, then the rest in order.
fn print_table(rows: &[serde_json::Value]) {
    if rows.is_empty() {
        outln!("  (none)");
        return;
    }
    let mut columns: Vec<&str> = Vec::new();
    for row in rows {
        if let Some(map) = row.as_object() {
            for (k, v) in map {
                if !v.is_object() && !v.is_array() && !columns.contains(&k.as_str()) {
                    columns.push(k);
                }
            }
        }
    }
    // Identifying columns first (JSON objects arrive with sorted keys).
    columns.sort_by_key(|c| !(*c == "version" || *c == "id" || c.ends_with("_id")));
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|c| row.get(*c).map_or("-".into(), scalar))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<&str>| {
        let padded: Vec<String> = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        outln!("  {}", padded.join("  ").trim_end());
    };
    line(columns.clone());
    for r in &cells {
        line(r.iter().map(String::as_str).collect());
    }
}
