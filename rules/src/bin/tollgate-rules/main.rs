//! `tollgate-rules`: check, test, compile, sign, inspect and compare rule bundles, and drive
//! their rollout on the control plane.
//!
//! Exit codes: 0 ok; 1 a compile, test or verification failure (or a 422 from the control
//! plane); 2 a usage error (bad arguments, unreadable or unwritable files); 3 a server or
//! network error.
//!
//! One module per concern: [`cli`] (arguments), [`out`] (what is printed), [`failure`] (exit
//! codes), [`files`] (bounded reads and writes), then the commands — [`source`] (`check`,
//! `test`, `compile`), [`keys`] (`keygen`, `sign`), [`inspect`], [`diff`] (with [`text`], how
//! both show a program) and [`remote`] (`deploy`, `activate`, `promote`, `rollback`, `status`,
//! over [`client`]).

mod cli;
mod client;
mod diff;
mod failure;
mod files;
mod inspect;
mod keys;
mod out;
mod remote;
mod source;
mod text;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};
use failure::Failure;
use out::errln;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let result = match cli.command {
        Command::Check { file } => source::check(&file),
        Command::Test { file } => source::test(&file),
        Command::Compile {
            file,
            output,
            version,
        } => source::compile(&file, &output, version),
        Command::Keygen { key_id, output } => keys::keygen(&key_id, &output),
        Command::Sign {
            unsigned,
            key,
            output,
        } => keys::sign(&unsigned, &key, &output),
        Command::Inspect {
            bundle,
            trusted_keys,
        } => inspect::inspect(&bundle, &trusted_keys),
        Command::Diff { old, new } => diff::diff(&old, &new),
        Command::Deploy { bundle, remote } => remote::deploy(&bundle, &remote),
        Command::Activate {
            version,
            canary,
            remote,
        } => remote::activate(version, canary, &remote),
        Command::Promote { version, remote } => remote::promote(version, &remote),
        Command::Rollback { to, remote } => remote::rollback(to, &remote),
        Command::Status { remote } => remote::status(&remote),
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
