//! `rmflow` command line: a thin caller of the library (the commands are in `cli/`).
//!
//! Exit codes (also in `--help` and the README): 0 success, 1 a `verify` claim failed, 2 usage or
//! input error, 3 refused (would not fit in memory, or cannot end well), 4 failed while running.

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
        Command::LmRecipe(a) => cli::lm::run_recipe(a),
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
            print!("{}", rmflow::config::DEFAULT_CONFIG_TOML);
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(rmflow::error::exit_code(&e))
        }
    }
}
