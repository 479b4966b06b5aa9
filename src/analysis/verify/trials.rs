//! `verify`: the configured setup, then random setups drawn around it, in parallel.

use super::claim::{Claim, Status};
use super::options::VerifyOptions;
use super::report::{Report, WorstCase};
use super::setup::verify_setup;
use crate::config::Config;
use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// The hidden dimensions `D` a random trial draws from.
pub const TRIAL_DIMS: [usize; 3] = [24, 32, 48];

/// The training-set sizes `N` a random trial draws from.
pub const TRIAL_TRAIN_PAIRS: [usize; 4] = [100, 150, 200, 300];

/// The largest setup `verify` runs on `config` with `trials` random trials: the config with
/// `D` and `N` raised to the largest a trial draws (for the memory estimate).
pub fn largest_config(config: &Config, trials: usize) -> Config {
    let mut c = config.clone();
    if trials > 0 {
        let largest = |v: &[usize]| v.iter().copied().max().unwrap_or(0);
        c.setup.dim = c.setup.dim.max(largest(&TRIAL_DIMS));
        c.setup.train_pairs = c.setup.train_pairs.max(largest(&TRIAL_TRAIN_PAIRS));
    }
    c
}

/// A configuration drawn around `base` for trial `k`: seed, α, κ, sizes varied (deterministic in k).
pub fn trial_config(base: &Config, k: u64) -> Config {
    let mut rng = ChaCha8Rng::seed_from_u64(0x7269_616c ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut c = base.clone();
    c.seed = base.seed.wrapping_add(1 + k);
    c.setup.alpha = base.setup.alpha * rng.random_range(0.75..1.5);
    c.setup.kappa = base.setup.kappa * rng.random_range(0.5..1.5);
    c.setup.dim = TRIAL_DIMS[rng.random_range(0..3)];
    c.setup.train_pairs = TRIAL_TRAIN_PAIRS[rng.random_range(0..4)];
    c.setup.good_seen = rng.random_range(4..=12);
    c.setup.bad_seen = rng.random_range(4..=12);
    c
}

/// Verifies `config`, then `trials` random setups around it in parallel.
/// `on_job` is called as each job of the configured setup finishes ([`SETUP_JOBS`](super::SETUP_JOBS) of them), and
/// once per finished trial (`"trial"`).
pub fn verify(
    config: &Config,
    trials: usize,
    opts: &VerifyOptions,
    on_job: &(dyn Fn(&str) + Sync),
) -> Result<Report> {
    let claims = verify_setup(config, opts, on_job)?;
    let trial_opts = opts.for_trials();
    let trial_claims: Vec<Vec<Claim>> = (0..trials as u64)
        .into_par_iter()
        .map(|k| {
            let mut c = trial_config(config, k);
            c.train.observations_per_decade = 1.0;
            let r = verify_setup(&c, &trial_opts, &|_| {});
            on_job("trial");
            r
        })
        .collect::<Result<_>>()?;
    let mut worst_cases: Vec<WorstCase> = Vec::new();
    for (k, tc) in trial_claims.iter().enumerate() {
        for c in tc {
            let w = match worst_cases.iter_mut().find(|w| w.id == c.id) {
                Some(w) => w,
                None => {
                    worst_cases.push(WorstCase {
                        id: c.id.clone(),
                        description: c.description.clone(),
                        worst: f64::NAN,
                        bound: c.bound,
                        status: Status::Skip,
                        failed_trials: vec![],
                        skipped_trials: 0,
                    });
                    worst_cases.last_mut().expect("pushed")
                }
            };
            match c.status {
                Status::Skip => w.skipped_trials += 1,
                s => {
                    w.bound = c.bound;
                    w.worst = if w.worst.is_nan() {
                        c.measured
                    } else {
                        c.bound.worse(w.worst, c.measured)
                    };
                    if s == Status::Fail {
                        w.failed_trials.push(k as u64);
                        w.status = Status::Fail;
                    } else if w.status != Status::Fail {
                        w.status = s;
                    }
                }
            }
        }
    }
    Ok(Report {
        rmflow_version: crate::io::layout::RMFLOW_VERSION,
        config: config.clone(),
        claims,
        trials,
        worst_cases,
        trial_claims,
    })
}
