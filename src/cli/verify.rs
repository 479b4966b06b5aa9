//! `rmflow verify`: Theorem 2 checked claim by claim (MATH.md §4); exit 1 if a claim fails.

use super::args::load_config;
use super::progress::progress_bar;
use anyhow::Result;
use rmflow::analysis::verify::{self, Fault, VerifyOptions};
use rmflow::error::ClaimsFailed;
use rmflow::io::atomic::{check_not_overwriting_input, AtomicFile, Replace};
use rmflow::io::resources::check_memory;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// TOML config (default: the embedded experiments/theorem2.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Random setups drawn around the config (seed, α, κ, sizes), checked in parallel.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Also write the full report (every claim of every trial) as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Replace the --json file if it exists.
    #[arg(long)]
    force: bool,
    /// Run even if the estimated peak memory exceeds the memory available.
    #[arg(long)]
    ignore_memory_estimate: bool,
    /// Run only the checks whose cost does not grow with V (seen-row IM-RM flow, EX-RM flow,
    /// QP certificates, residual flow); the full-vocabulary ones (faithful full-softmax flow,
    /// GD, Adam, AdamW, full-vs-sparse agreement, §3 dynamics) are SKIP rows. For sizes whose
    /// V × D copies do not fit; needs train.imrm_gradient = "sparse".
    #[arg(long)]
    without_full_vocabulary: bool,
    /// Do not integrate the EX-RM residual ρ = u − u* ln t to t = 1e10000 (its two rows are
    /// SKIP). At large N·D it costs thousands of passes over the features, and on data whose
    /// non-support margins sit within δ of the margin, ρ settles only once δ·ln t ≫ 1.
    #[arg(long)]
    skip_residual: bool,
    /// Self-test of the checker: verify a deliberately broken variant (must FAIL).
    #[arg(long, value_enum, hide = true)]
    inject_fault: Option<Fault>,
}

pub fn run(a: VerifyArgs) -> Result<()> {
    let cfg = load_config(a.config.as_deref())?;
    let defaults = VerifyOptions::default();
    let opts = VerifyOptions {
        fault: a.inject_fault,
        full_vocabulary: !a.without_full_vocabulary,
        residual_horizon_log10: defaults.residual_horizon_log10.filter(|_| !a.skip_residual),
        ..defaults
    };
    opts.check(&cfg)?;
    check_memory(
        &verify::largest_config(&cfg, a.trials),
        opts.workload(),
        a.ignore_memory_estimate,
    )?;
    let json_file = match &a.json {
        Some(p) => {
            if let Some(c) = &a.config {
                check_not_overwriting_input(c, p)?;
            }
            Some(AtomicFile::create(p, Replace::from_flags(a.force, false))?)
        }
        None => None,
    };
    let bar = progress_bar(
        "verify",
        verify::SETUP_JOBS + a.trials as u64,
        "jobs (9 on the configured setup, then one per random setup)",
    );
    let t0 = Instant::now();
    let report = verify::verify(&cfg, a.trials, &opts, &|job| {
        bar.inc(&format!("{job} done"))
    })?;
    bar.finish();
    out!("{}", verify::render(&report));
    eprintln!("verified in {:.2} s", t0.elapsed().as_secs_f64());
    if let Some(f) = json_file {
        f.commit(&(serde_json::to_string_pretty(&report)? + "\n"))?;
    }
    if !report.passed() {
        return Err(
            ClaimsFailed("Theorem 2 verification failed (see the FAIL rows above)".into()).into(),
        );
    }
    Ok(())
}
