//! `rmflow dynamics`: ρ coefficients and reward-velocity decompositions along training (MATH.md §3).

use super::args::OutputFlags;
use super::progress::observation_progress;
use anyhow::Result;
use rmflow::config::{Config, Overrides};
use rmflow::io::atomic::{check_not_overwriting_input, AtomicDir};
use rmflow::io::resources::{check_memory, Workload};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct DynamicsArgs {
    /// TOML config (default: the embedded experiments/theorem2.toml, to t = 1e8).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output folder, written atomically (simulate's layout plus dynamics.csv and dynamics/).
    #[arg(long)]
    out: PathBuf,
    /// Override train.t_max.
    #[arg(long)]
    t_max: Option<f64>,
    /// Override the seed.
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    output: OutputFlags,
    /// Run even if the estimated peak memory exceeds the memory available.
    #[arg(long)]
    ignore_memory_estimate: bool,
}

pub fn run(a: DynamicsArgs) -> Result<()> {
    let mut cfg = match a.config.as_deref() {
        Some(p) => Config::from_file(p)?,
        None => Config::dynamics_default(),
    };
    let overrides = Overrides {
        t_max: a.t_max,
        seed: a.seed,
        ..Overrides::default()
    };
    cfg.apply(&overrides, a.config.as_deref())?;
    if let Some(c) = &a.config {
        check_not_overwriting_input(c, &a.out)?;
    }
    check_memory(&cfg, Workload::Dynamics, a.ignore_memory_estimate)?;
    let dir = AtomicDir::create(&a.out, a.output.replace())?;
    let bar = observation_progress("dynamics", &cfg);
    let run = rmflow::analysis::dynamics::run(&cfg, &mut |o| {
        bar.inc(&format!("{} t = {:.2e}", o.model, o.t));
    })?;
    bar.finish();
    rmflow::io::layout::write_dynamics_into(&dir, &run)?;
    let written = dir.commit()?;
    let (t, last) = run.tracked.last().expect("observed");
    outln!("learning dynamics at t = {t:e}: share of the IM-RM velocity from token identity (margins, rewards) and mean |dm/dt|:");
    for s in last {
        outln!(
            "  {:<10} identity share {:.3} (margins) {:.3} (rewards)   IM-RM {:.3e}   EX-RM {:.3e}",
            s.split,
            s.imrm_identity_share,
            s.imrm_reward_identity_share,
            s.imrm_margin_velocity_mean_abs,
            s.exrm_margin_velocity_mean_abs
        );
    }
    outln!("wrote {}", written.display());
    Ok(())
}
