//! `rmflow` command line: a thin caller of the library (the commands are in `cli/`).
//!
//! Exit codes (also in `--help` and the README): 0 success, 1 a `verify` claim failed, 2 usage or
//! input error, 3 refused (would not fit in memory, or cannot end well), 4 failed while running.

#[macro_use]
mod cli;

use clap::Parser;
use cli::args::{Cli, Command};
use std::process::ExitCode;

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Simulate(a) => cli::simulate::run(a),
        Command::Verify(a) => cli::verify::run(a),
        Command::Dynamics(a) => cli::dynamics::run(a),
        Command::Sweep(a) => cli::sweep::run(a),
        #[cfg(feature = "lm")]
        Command::Lm(a) => cli::lm::run_lm(a),
        #[cfg(feature = "lm")]
        Command::LmRecipe(a) => cli::lm_recipe::run_recipe(a),
        #[cfg(feature = "lm")]
        Command::LmDynamics(a) => cli::lm_dynamics::run(a),
        #[cfg(feature = "lm")]
        Command::HamCycle(a) => cli::ham_cycle::run(a),
        #[cfg(feature = "lm")]
        Command::LmProgress(a) => cli::lm_progress::run(a),
        #[cfg(feature = "lm")]
        Command::LmData(a) => cli::lm_data::run(a),
        #[cfg(feature = "lm")]
        Command::LmConvert(a) => cli::lm_files::run_convert(a),
        #[cfg(feature = "lm")]
        Command::LmImportGguf(a) => cli::lm_files::run_import_gguf(a),
        #[cfg(feature = "lm")]
        Command::LmTiny(a) => cli::lm_files::run_tiny(a),
        #[cfg(feature = "lm")]
        Command::LmForward(a) => cli::lm_files::run_forward(a),
        Command::Check(a) => cli::check::run(a),
        Command::DefaultConfig => {
            out!("{}", rmflow::config::DEFAULT_CONFIG_TOML);
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    // Library errors (candle's) carry no backtrace text, even under RUST_BACKTRACE=1: an
    // error is one line naming the file. Panics keep their backtraces.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    cli::allocator::tune();
    cli::threads::cap_rayon_threads();
    let result = run(Cli::parse());
    let written = cli::stdout::finish();
    match (result, written) {
        (Err(e), _) => {
            eprintln!("error: {}", rmflow::error::one_line(&e));
            ExitCode::from(rmflow::error::exit_code(&e))
        }
        (Ok(()), Some(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        (Ok(()), Some(e)) => {
            // The files a run writes are committed before its summary is printed; a stdout that
            // fails then costs only the summary, so they are kept (and said to be kept).
            eprintln!("error: cannot write to stdout: {e} (any output files this run wrote are complete and kept; only what it printed is lost)");
            ExitCode::from(rmflow::error::EXIT_RUNTIME)
        }
        (Ok(()), None) => ExitCode::SUCCESS,
    }
}
