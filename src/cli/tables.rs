//! Tables printed on stdout: accuracy per split, reward statistics, sweep rows.

use rmflow::experiment::observables::{accuracy_table, Observation, SplitMetrics};
use rmflow::experiment::simulation::Simulation;

pub fn print_named_accuracy_table(table: &[(&str, &[SplitMetrics])], at: &str, tau: f64) {
    outln!(
        "accuracy at t = {at} (strict / exact ties count ½ [τ = 0, the paper's] / tie-aware with τ = {tau:e}):"
    );
    out!("{}", accuracy_table(table));
}

/// The accuracy table of a simulation with its ablations, then the reward statistics.
pub fn print_simulation_tables(sim: &Simulation) {
    let finals: Vec<&Observation> = sim
        .runs()
        .iter()
        .map(|r| r.trajectory.last().expect("observed"))
        .collect();
    let mut table: Vec<(&str, &[SplitMetrics])> = finals
        .iter()
        .map(|o| (o.model, o.splits.as_slice()))
        .collect();
    let a = &sim.ablations;
    table.push(("imrm-noref", a.imrm_no_reference.as_slice()));
    table.push(("imrm-scored", a.imrm_scored_without_reference.as_slice()));
    if let Some(run) = &a.exrm_token_mean {
        table.push((
            "exrm-mean",
            run.trajectory.last().expect("observed").splits.as_slice(),
        ));
    }
    print_named_accuracy_table(
        &table,
        &rmflow::solve::training::format_time(finals[0].log10_t),
        sim.config.eval.tie_tolerance,
    );
    outln!("  imrm-noref: the IM-RM without a reference (r = β ln π_U), trained on its own margins (the official no_ref_model); imrm-scored: the IM-RM's U(t) scored as β ln π_U (not an ablation the paper runs); exrm-mean: the EX-RM on the mean hidden state over response tokens (K > 1 only)");
    outln!("normalised |reward margin| mean|r⁺ − r⁻| / (std of all rewards + 1e-8) (the official evaluator's):");
    let mut line = format!("{:<12}", "model");
    for r in &sim.explicit.rewards {
        line.push_str(&format!("{:>12}", r.split));
    }
    outln!("{line}");
    for run in sim.runs() {
        let mut line = format!("{:<12}", run.kind.name());
        for r in &run.rewards {
            line.push_str(&format!("{:>12.3}", r.normalised_abs_margin));
        }
        outln!("{line}");
    }
}

/// Mean and 95 % interval of both accuracies per swept value and model.
pub fn print_sweep_table(rows: &[rmflow::analysis::sweep::SweepRow]) {
    outln!(
        "{:>8} {:<6} {:>22} {:>22}",
        "value",
        "model",
        "tie-aware (95% CI)",
        "strict (95% CI)"
    );
    for r in rows {
        outln!(
            "{:>8} {:<6} {:>22} {:>22}",
            r.value,
            r.model,
            format!("{:.3} ± {:.3}", r.tie_aware_mean, r.tie_aware_ci95),
            format!("{:.3} ± {:.3}", r.strict_mean, r.strict_ci95)
        );
    }
}
