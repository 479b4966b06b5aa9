//! The ablations (MATH.md §6): the IM-RM without its reference, the EX-RM on the token mean.

use super::bars::{accuracy_bars, bars_panel};
use super::figure::{caption, FigureData};
use crate::config::Config;
use crate::experiment::observables::SplitMetrics;
use crate::experiment::simulation::{simulate, ModelRun};
use crate::figures::plot::{Figure, Panel};
use anyhow::Result;

/// The paper's ablations on the synthetic model: the IM-RM without a reference model (`U(0)`
/// tied to the embeddings, and independent), and, for multi-token responses, the EX-RM on the
/// mean hidden state over response tokens against the last one.
pub fn ablations(single: &Config, multi: &Config) -> Result<FigureData> {
    let mut csv =
        String::from("setting,model,split,strict_accuracy,exact_tie_accuracy,tie_aware_accuracy\n");
    let left = no_reference_panel(single, &mut csv)?;
    let right = token_mean_panel(multi, &mut csv)?;
    Ok(FigureData {
        figure: Figure {
            panels: vec![left, right],
            columns: 2,
            caption: format!(
                "{}; right: experiments/multitoken.toml (K = {}, t = {:e})",
                caption(single, "experiments/theorem2.toml", ", flow to t = 1e100"),
                multi.setup.response_length,
                multi.train.t_max
            ),
            panel_size: (820, 440),
        },
        csv,
    })
}

/// The final accuracy per split of a run.
fn final_splits(r: &ModelRun) -> Vec<SplitMetrics> {
    r.trajectory.last().expect("observed").splits.clone()
}

/// `K = 1`: both models, and the IM-RM trained without its reference, with `U(0)` tied to the
/// embeddings and independent of them.
fn no_reference_panel(single: &Config, csv: &mut String) -> Result<Panel> {
    let sim = simulate(single, &mut |_| {})?;
    let mut independent = single.clone();
    independent.setup.unembedding_init = crate::config::UnembeddingInit::Independent;
    let sim_ind = simulate(&independent, &mut |_| {})?;
    let (ex, im) = (final_splits(&sim.explicit), final_splits(&sim.implicit));
    let (categories, bars) = accuracy_bars(
        "single_token",
        &[
            ("EX-RM", &ex, 1, false),
            ("IM-RM", &im, 5, false),
            (
                "IM-RM no reference (trained), U(0) tied",
                &sim.ablations.imrm_no_reference,
                5,
                true,
            ),
            (
                "IM-RM no reference (trained), U(0) independent",
                &sim_ind.ablations.imrm_no_reference,
                3,
                true,
            ),
        ],
        csv,
    )?;
    Ok(bars_panel(
        "K = 1: the IM-RM without its reference",
        categories,
        bars,
        single.eval.tie_tolerance,
    ))
}

/// `K > 1`: the EX-RM on the last token's and on the mean hidden state, the IM-RM with and
/// without its reference.
fn token_mean_panel(multi: &Config, csv: &mut String) -> Result<Panel> {
    let sim_m = simulate(multi, &mut |_| {})?;
    let (ex_m, im_m) = (final_splits(&sim_m.explicit), final_splits(&sim_m.implicit));
    let mean = sim_m
        .ablations
        .exrm_token_mean
        .as_ref()
        .map(final_splits)
        .ok_or_else(|| anyhow::anyhow!("the multi-token config must have K > 1"))?;
    let (categories, bars) = accuracy_bars(
        "multi_token",
        &[
            ("EX-RM last token", &ex_m, 1, false),
            ("EX-RM mean over tokens", &mean, 1, true),
            ("IM-RM", &im_m, 5, false),
            (
                "IM-RM no reference (trained)",
                &sim_m.ablations.imrm_no_reference,
                5,
                true,
            ),
        ],
        csv,
    )?;
    Ok(bars_panel(
        &format!(
            "K = {}: EX-RM on the mean hidden state",
            multi.setup.response_length
        ),
        categories,
        bars,
        multi.eval.tie_tolerance,
    ))
}
