//! Verification versus generation (MATH.md §7) in the single-token setting: a transient where the
//! IM-RM ranks held-out pairs before greedy generation is right. Generation is easy there (one
//! token of 1 024), so this is not Theorem 1's setting; the Hamiltonian-cycle figure is
//! ([`super::hamiltonian`]).

use super::figure::{after_zero, caption, FigureData};
use crate::config::{Config, GradientPath};
use crate::experiment::simulation::{max_margin_for, run_model_with, ModelKind};
use crate::figures::plot::{Figure, Legend, Panel, Series};
use crate::problem::reward::ImplicitRm;
use crate::problem::synthetic::SplitId;
use crate::problem::synthetic::{PairSet, Setup, TokenLabel};
use anyhow::Result;
use std::fmt::Write as _;

/// Verification without generation (MATH.md §4, last point), on held-out prompts over the whole
/// horizon: the IM-RM's accuracy on the `seen` split (new prompts, training tokens) against its
/// greedy generation on the same prompts (`argmax_y π_U(y|x)` over the whole vocabulary is a
/// "good" token) and the mean `π_U(y⁺|x)`; the notes state the horizon on which the IM-RM ranks
/// every held-out pair correctly while greedy generation is still wrong.
pub fn verification_without_generation(config: &Config) -> Result<FigureData> {
    let mut config = config.clone();
    config.train.t_max_log10 = None;
    config.train.first_observation = 1e-3;
    config.train.observations_per_decade = 4.0;
    let config = &config;
    let setup = Setup::try_generate(config)?;
    let held_out = setup
        .evals
        .iter()
        .find(|p| SplitId::Seen.is(&p.name))
        .ok_or_else(|| anyhow::anyhow!("no `seen` split"))?;
    let rows = held_out_trajectory(config, &setup, held_out)?;
    let mut csv = String::from(
        "t,heldout_strict_accuracy,heldout_greedy_good_fraction,heldout_mean_pi_chosen,heldout_mean_pi_rejected,pairs_rejected_reward_nonpositive,max_log_ratio_minus_margin_over_beta\n",
    );
    for r in &rows {
        writeln!(
            csv,
            "{:e},{},{},{:e},{:e},{},{:e}",
            r.t,
            r.accuracy,
            r.greedy_good,
            r.pi_chosen,
            r.pi_rejected,
            r.bound_pairs,
            r.bound_worst
        )?;
    }
    let t_verify = from_on(&rows, |r| r.accuracy == 1.0);
    let t_generate = from_on(&rows, |r| r.greedy_good == 1.0);
    let a = ranking_panel(&rows, t_verify, t_generate);
    let b = probability_panel(&rows, t_verify, held_out.len());
    Ok(FigureData {
        figure: Figure {
            panels: vec![a, b],
            columns: 2,
            caption: caption(
                config,
                "experiments/theorem2.toml",
                &format!(
                    ", full-softmax IM-RM, held-out prompts (`seen` split, {} pairs), flow to t = {:e}; not Theorem 1's setting",
                    held_out.len(),
                    config.train.t_max
                ),
            ),
            panel_size: (560, 400),
        },
        csv,
    })
}

/// The held-out prompts at one observation of the IM-RM flow.
struct HeldOut {
    t: f64,
    /// Strict accuracy on the held-out pairs.
    accuracy: f64,
    /// Fraction of prompts whose greedy token `argmax_y π_U(y|x)` is a good one.
    greedy_good: f64,
    /// Mean `π_U(y⁺|x)` and `π_U(y⁻|x)`.
    pi_chosen: f64,
    pi_rejected: f64,
    /// Pairs with `r⁻ ≤ 0`, and the largest `ln π_U(y⁺) − ln π_ref(y⁺) − δ/β` among them
    /// (`δ = r⁺ − r⁻`). Since `π_U = π_ref e^(r/β)` by the definition of `r`, the bound
    /// `π_U(y⁺) ≤ e^(δ/β) π_ref(y⁺)` holds exactly when `r⁻ ≤ 0`.
    bound_pairs: usize,
    bound_worst: f64,
}

/// The full-softmax IM-RM flow observed on the held-out prompts.
fn held_out_trajectory(config: &Config, setup: &Setup, held_out: &PairSet) -> Result<Vec<HeldOut>> {
    let im = ImplicitRm::new(
        held_out,
        setup.unembedding_init.full().view(),
        config.setup.beta,
        GradientPath::Full,
    );
    let good: Vec<bool> = setup
        .vocab
        .labels
        .iter()
        .map(|l| *l == TokenLabel::Good)
        .collect();
    let (v, d) = (setup.vocab_size(), setup.dim());
    let beta = config.setup.beta;
    let u0: Vec<f64> = setup.unembedding_init.full().iter().copied().collect();
    let lp_ref = im.position_logprobs(&u0);
    let mm = max_margin_for(ModelKind::Implicit, setup, config.eval.tie_tolerance);
    let mut rows = Vec::new();
    run_model_with(ModelKind::Implicit, config, setup, mm, &mut |o, theta| {
        let lp = im.position_logprobs(theta);
        let n = lp.len() as f64;
        let (mut bound_pairs, mut bound_worst) = (0usize, f64::NEG_INFINITY);
        for (i, &(r_plus, r_minus)) in im.rewards(theta).iter().enumerate() {
            let log_ratio = lp[i].0 - lp_ref[i].0;
            if r_minus <= 0.0 {
                bound_pairs += 1;
                bound_worst = bound_worst.max(log_ratio - (r_plus - r_minus) / beta);
            }
        }
        let u = ndarray::ArrayView2::from_shape((v, d), theta)?;
        let logits = crate::numerics::mat_mul_bt(held_out.prompt_hidden.view(), u);
        let greedy_good = logits
            .rows()
            .into_iter()
            .filter(|row| good[argmax(row.iter().copied())])
            .count() as f64
            / held_out.len() as f64;
        rows.push(HeldOut {
            t: o.t,
            accuracy: o
                .splits
                .iter()
                .find(|s| SplitId::Seen.is(&s.split))
                .map_or(f64::NAN, |s| s.strict_accuracy),
            greedy_good,
            pi_chosen: lp.iter().map(|(a, _)| a.exp()).sum::<f64>() / n,
            pi_rejected: lp.iter().map(|(_, b)| b.exp()).sum::<f64>() / n,
            bound_pairs,
            bound_worst,
        });
        Ok(())
    })?;
    Ok(rows)
}

/// The index of the first largest value.
fn argmax(values: impl Iterator<Item = f64>) -> usize {
    values
        .enumerate()
        .fold(
            (0, f64::NEG_INFINITY),
            |b, (i, x)| if x > b.1 { (i, x) } else { b },
        )
        .0
}

/// The first observation from which `ok` holds at every later one (`None` if not at the last).
fn from_on(rows: &[HeldOut], ok: impl Fn(&HeldOut) -> bool) -> Option<f64> {
    match rows.iter().rposition(|r| !ok(r)) {
        None => rows.first().map(|r| r.t),
        Some(i) if i + 1 < rows.len() => Some(rows[i + 1].t),
        Some(_) => None,
    }
}

/// Left panel: held-out accuracy against greedy generation, with the times each reaches 1.
fn ranking_panel(rows: &[HeldOut], t_verify: Option<f64>, t_generate: Option<f64>) -> Panel {
    let mut a = Panel::lines(
        "Single-token responses (generation is easy): ranking vs greedy",
        "time t",
        "fraction",
        true,
        false,
        vec![
            Series {
                name: "IM-RM accuracy (strict)".into(),
                points: after_zero(rows, |r| r.t, |r| r.accuracy),
                color: 5,
                ..Default::default()
            },
            Series {
                name: "greedy token is a good one".into(),
                points: after_zero(rows, |r| r.t, |r| r.greedy_good),
                color: 3,
                dashed: true,
                ..Default::default()
            },
        ],
    );
    a.y_range = Some((0.0, 1.05));
    a.legend = Legend::MiddleRight;
    let fmt = |t: Option<f64>| t.map_or("never (to t_max)".to_string(), |t| format!("{t:.2e}"));
    a.notes = vec![
        format!("accuracy 1 from t = {} on", fmt(t_verify)),
        format!("greedy generation all good from t = {} on", fmt(t_generate)),
    ];
    a
}

/// Right panel: the responses' probabilities under `π_U`, and Theorem 1's bound where it holds.
fn probability_panel(rows: &[HeldOut], t_verify: Option<f64>, pairs: usize) -> Panel {
    let mut b = Panel::lines(
        "Held-out prompts: probability of the responses under π_U",
        "time t",
        "mean π(y|x) (log scale)",
        true,
        true,
        vec![
            Series {
                name: "mean π(y⁺|x)".into(),
                points: after_zero(rows, |r| r.t, |r| r.pi_chosen),
                color: 3,
                ..Default::default()
            },
            Series {
                name: "mean π(y⁻|x)".into(),
                points: after_zero(rows, |r| r.t, |r| r.pi_rejected),
                color: 4,
                ..Default::default()
            },
        ],
    );
    if let Some(tv) = t_verify {
        if let Some(r) = rows.iter().find(|r| r.t == tv) {
            b.notes = vec![format!(
                "at t = {tv:.2e}: mean π(y⁺|x) = {:.2e}, greedy good on {:.0} % of prompts",
                r.pi_chosen,
                100.0 * r.greedy_good
            )];
        }
    }
    let bound_pairs: usize = rows.iter().map(|r| r.bound_pairs).sum();
    let bound_worst = rows
        .iter()
        .map(|r| r.bound_worst)
        .fold(f64::NEG_INFINITY, f64::max);
    let pair_times = rows.len() * pairs;
    b.notes.push(format!(
        "r⁻ ≤ 0 on {bound_pairs} of {pair_times} pair-times; there π_U(y⁺|x) ≤ e^(δ/β) π_ref(y⁺|x),"
    ));
    b.notes.push(format!(
        "δ = r⁺ − r⁻ (from π_U = π_ref e^(r/β)); max log excess {bound_worst:.1e}"
    ));
    b
}
