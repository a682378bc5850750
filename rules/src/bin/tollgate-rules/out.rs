//! What every command prints goes through here instead of `println!`, which panics when
//! stdout is closed (`tollgate-rules status | head` exited 101 with "failed printing to
//! stdout: Broken pipe"). Once stdout is closed (`EPIPE`), the rest of the output is dropped
//! and the command runs to its end, so files it writes are written whole and its exit code
//! is its own. Any other write error is reported once the command is done (exit 2 if it had
//! succeeded). Messages to stderr go through [`errln!`], which ignores a closed stderr.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set at the first failed write: nothing more is written.
static CLOSED: AtomicBool = AtomicBool::new(false);
/// The first write error that is not a closed pipe.
static FAILED: OnceLock<String> = OnceLock::new();

/// One line to stdout.
pub(crate) fn line(args: std::fmt::Arguments<'_>) {
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
pub(crate) fn finish() -> Option<String> {
    if !CLOSED.load(Ordering::Relaxed)
        && let Err(e) = std::io::stdout().lock().flush()
    {
        give_up(&e);
    }
    FAILED.get().cloned()
}

/// `println!` through [`line`].
macro_rules! outln {
    () => {
        $crate::out::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// `eprintln!` that ignores a closed stderr instead of panicking.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
pub(crate) use errln;
