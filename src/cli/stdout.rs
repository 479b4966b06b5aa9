//! Results printed on stdout without panicking when stdout is closed or full: the first failed
//! write is remembered, later ones are skipped, and `main` ends the run by it: a closed pipe
//! (`rmflow verify | head -1`) quietly with exit 0, as a reader that stopped reading asked,
//! any other write error (`> /dev/full`) with exit 4.

use std::io::Write;
use std::sync::Mutex;

static FAILED: Mutex<Option<std::io::Error>> = Mutex::new(None);

/// Writes `args` to stdout, unless an earlier write failed.
pub fn write(args: std::fmt::Arguments) {
    let mut failed = FAILED.lock().unwrap_or_else(|e| e.into_inner());
    if failed.is_none() {
        if let Err(e) = std::io::stdout().lock().write_fmt(args) {
            *failed = Some(e);
        }
    }
}

/// Flushes stdout and returns the first write error, if any.
pub fn finish() -> Option<std::io::Error> {
    write(format_args!(""));
    let mut failed = FAILED.lock().unwrap_or_else(|e| e.into_inner());
    if failed.is_none() {
        if let Err(e) = std::io::stdout().lock().flush() {
            *failed = Some(e);
        }
    }
    failed.take()
}

/// `print!` onto [`write`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::stdout::write(format_args!($($arg)*))
    };
}

/// `println!` onto [`write`].
macro_rules! outln {
    () => {
        $crate::cli::stdout::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::stdout::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}
