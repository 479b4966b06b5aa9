//! Error kinds that decide the process exit code (README, "Errors and exit codes").
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | `verify` ran and at least one claim FAILED |
//! | 2 | usage or input error: bad arguments, invalid config (the field is named), missing input file, output path taken or unusable |
//! | 3 | refused: the config is valid but the run cannot be done as asked (estimated memory above what is available, a long flow on data certified not separable) |
//! | 4 | failed while running: numerical breakdown (NaN, step-size underflow), I/O error while writing, a `--replay` that departs from its checkpoint's record |
//! | 5 | interrupted by SIGTERM (e.g. Slurm preemption): after a step or an evaluation with a checkpoint, or while scoring; resume with `--resume` |

use crate::config::ConfigError;

/// A problem with what the user passed (arguments, files, output paths): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// A valid request that rmflow refuses to run (it cannot fit, or the theory says it cannot end
/// well): exit code 3.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// `verify` found a failing claim: exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClaimsFailed(pub String);

/// A run stopped by SIGTERM with what it resumes from kept (a checkpoint, or what it computed
/// once): exit code 5.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Interrupted(pub String);

/// Exit code for `verify` failures.
pub const EXIT_CLAIM_FAILED: u8 = 1;
/// Exit code for usage and input errors (also clap's code for bad arguments).
pub const EXIT_INPUT: u8 = 2;
/// Exit code for refused runs.
pub const EXIT_REFUSED: u8 = 3;
/// Exit code for failures while running.
pub const EXIT_RUNTIME: u8 = 4;
/// Exit code for a run interrupted by SIGTERM (`--resume` continues it).
pub const EXIT_INTERRUPTED: u8 = 5;

/// The exit code of an error, from the first classified error in its chain.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<ClaimsFailed>() {
            return EXIT_CLAIM_FAILED;
        }
        if cause.is::<InputError>() || cause.is::<ConfigError>() {
            return EXIT_INPUT;
        }
        #[cfg(feature = "lm")]
        if cause.is::<crate::lm::data::preference::DataError>() {
            return EXIT_INPUT;
        }
        if cause.is::<Refusal>() {
            return EXIT_REFUSED;
        }
        if cause.is::<Interrupted>() {
            return EXIT_INTERRUPTED;
        }
    }
    EXIT_RUNTIME
}

/// The error and its causes on one line (`a: b: c`), each cause's own line breaks (candle
/// joins a context and its error with one) turned into `; `.
pub fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}
