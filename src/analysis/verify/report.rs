//! The verification report: per-claim worst cases over trials, and its text rendering.

use super::claim::{Bound, Claim, Status};
use crate::config::Config;
use serde::Serialize;
use std::fmt::Write;

/// Worst case of one claim over trials.
#[derive(Debug, Clone, Serialize)]
pub struct WorstCase {
    pub id: String,
    pub description: String,
    pub worst: f64,
    pub bound: Bound,
    pub status: Status,
    pub failed_trials: Vec<u64>,
    pub skipped_trials: usize,
}

/// The whole verification: the configured setup, and the worst case over random trials.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub rmflow_version: &'static str,
    pub config: Config,
    pub claims: Vec<Claim>,
    pub trials: usize,
    pub worst_cases: Vec<WorstCase>,
    pub trial_claims: Vec<Vec<Claim>>,
}

impl Report {
    /// True when no claim failed, on the setup or in any trial.
    pub fn passed(&self) -> bool {
        self.claims.iter().all(|c| c.status != Status::Fail)
            && self.worst_cases.iter().all(|w| w.status != Status::Fail)
    }
}

pub(super) fn status_text(s: Status) -> &'static str {
    match s {
        Status::Pass => "PASS",
        Status::Fail => "FAIL",
        Status::Info => "INFO",
        Status::Skip => "SKIP",
    }
}

/// The table printed by `rmflow verify`.
pub fn render(report: &Report) -> String {
    let mut s = String::new();
    let c = &report.config;
    writeln!(
        s,
        "Theorem 2 (MATH.md §4), rmflow {}: seed {}, V = {}, D = {}, N = {}, α = {}, κ = {}, β = {}, flow to t = {:.0e}, τ = {:.0e}",
        report.rmflow_version,
        c.seed,
        c.vocab_size(),
        c.setup.dim,
        c.setup.train_pairs,
        c.setup.alpha,
        c.setup.kappa,
        c.setup.beta,
        c.train.t_max,
        c.eval.tie_tolerance
    )
    .unwrap();
    claims_table(&mut s, &report.claims);
    if report.trials > 0 {
        worst_case_table(&mut s, report);
    }
    summary(&mut s, report);
    s
}

/// The configured setup's rows.
fn claims_table(s: &mut String, claims: &[Claim]) {
    writeln!(
        s,
        "{:<28} {:>12} {:>14}  {:<6} claim",
        "id", "measured", "bound", "status"
    )
    .unwrap();
    for cl in claims {
        writeln!(
            s,
            "{:<28} {:>12.3e} {:>14}  {:<6} {}",
            cl.id,
            cl.measured,
            cl.bound.text(),
            status_text(cl.status),
            cl.description
        )
        .unwrap();
    }
}

/// The worst case of every claim over the random trials.
fn worst_case_table(s: &mut String, report: &Report) {
    writeln!(
        s,
        "\nWorst case over {} random setups around it (seed, α, κ, D, N, seen tokens varied):",
        report.trials
    )
    .unwrap();
    writeln!(
        s,
        "{:<28} {:>12} {:>14}  {:<6} failed / skipped trials",
        "id", "worst", "bound", "status"
    )
    .unwrap();
    for w in &report.worst_cases {
        writeln!(
            s,
            "{:<28} {:>12.3e} {:>14}  {:<6} {:?} / {}",
            w.id,
            w.worst,
            w.bound.text(),
            status_text(w.status),
            w.failed_trials,
            w.skipped_trials
        )
        .unwrap();
    }
}

/// The verdict and the status counts of the configured setup.
fn summary(s: &mut String, report: &Report) {
    let failed = report
        .claims
        .iter()
        .filter(|c| c.status == Status::Fail)
        .count()
        + report
            .worst_cases
            .iter()
            .filter(|w| w.status == Status::Fail)
            .count();
    let count = |st: Status| report.claims.iter().filter(|c| c.status == st).count();
    writeln!(
        s,
        "\n{}\n(configured setup: {} PASS, {} FAIL, {} INFO, {} SKIP; SKIP = not run: outside the claim's hypotheses, or left out by a flag, as its row says)",
        if failed == 0 {
            "ALL CLAIMS HOLD".to_string()
        } else {
            format!("{failed} CLAIM(S) FAILED")
        },
        count(Status::Pass),
        count(Status::Fail),
        count(Status::Info),
        count(Status::Skip)
    )
    .unwrap();
}
