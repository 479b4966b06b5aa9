//! `lm-dynamics`' outputs: `pairs.csv` (one row per reward model and evaluation pair),
//! `tokens.csv` (the IM-RM's token-identity part by token and split), `summary.json` (per
//! split: shares, sign agreement, the first-order check) and `config.json` (what ran).

use super::run::{DynamicsOutcome, ModelSource, RewardDynamics, SplitPairs};
use crate::io::atomic::AtomicDir;
use crate::io::csv::field;
use crate::io::layout::RMFLOW_VERSION;
use anyhow::Result;
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::ops::Range;

/// The rows of `pairs` (concatenated over splits) that belong to each split.
fn ranges(splits: &[SplitPairs]) -> Vec<Range<usize>> {
    let mut at = 0;
    splits
        .iter()
        .map(|s| {
            at += s.pairs.len();
            at - s.pairs.len()..at
        })
        .collect()
}

/// Writes every output into `dir`.
pub fn write_outputs(dir: &AtomicDir, o: &DynamicsOutcome) -> Result<()> {
    dir.write_text("pairs.csv", &pairs_csv(o))?;
    dir.write_text("tokens.csv", &tokens_csv(o))?;
    dir.write_json("summary.json", &serde_json::to_value(summary(o))?)?;
    let (model, file, checkpoint) = match &o.source {
        ModelSource::Pretrained { model, file } => (model, file, None),
        ModelSource::Checkpoint(c) => (&c.model, &c.file, Some(c)),
    };
    dir.write_json(
        "config.json",
        &json!({
            "rmflow_version": RMFLOW_VERSION,
            "model": model,
            "checkpoint": checkpoint.map(|c| json!({
                "state": c.state, "reward": c.reward, "epoch": c.epoch, "step": c.step,
            })),
            "options": o.options,
            "recipe": file,
            "seed": file.seed,
        }),
    )
}

/// The token carrying the largest |identity part| of a pair, and its share of `Σ |parts|`.
fn top_token(by: &BTreeMap<usize, f64>) -> Option<(usize, f64)> {
    let total: f64 = by.values().map(|v| v.abs()).sum();
    by.iter()
        .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
        .filter(|_| total > 0.0)
        .map(|(&id, &v)| (id, v.abs() / total))
}

fn pairs_csv(o: &DynamicsOutcome) -> String {
    // The token text last: the only field that may be quoted.
    let mut csv = String::from("reward,split,pair,row,chosen_sequence,rejected_sequence,margin,velocity,velocity_identity,velocity_rest,eta,part_change,part_change_half,whole_velocity,whole_velocity_half,top_identity_share,top_identity_token\n");
    let ranges = ranges(&o.splits);
    for r in &o.rewards {
        let m = &r.measured;
        for (s, range) in o.splits.iter().zip(&ranges) {
            for (j, (pair, row, (c, x))) in range.clone().zip(&s.pairs) {
                let id = m.identity.as_ref().map(|v| v[j]);
                let top = m.identity_tokens.get(j).and_then(top_token);
                let opt = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:e}"));
                let whole = |k: usize| opt(m.whole.as_ref().map(|w| w.velocity[k][j]));
                csv.push_str(&format!(
                    "{},{},{pair},{},{c},{x},{:e},{:e},{},{},{:e},{:e},{:e},{},{},{},{}\n",
                    r.reward.name(),
                    field(&s.name),
                    row.map_or(String::new(), |v| v.to_string()),
                    m.margins[j],
                    m.velocity[j],
                    opt(id),
                    opt(id.map(|i| m.velocity[j] - i)),
                    m.eta,
                    m.part_change[0][j],
                    m.part_change[1][j],
                    whole(0),
                    whole(1),
                    opt(top.map(|(_, share)| share)),
                    top.map_or(String::new(), |(t, _)| field(&o.token_names[&t])),
                ));
            }
        }
    }
    csv
}

fn tokens_csv(o: &DynamicsOutcome) -> String {
    let mut csv =
        String::from("reward,split,token_id,velocity_identity,share,pairs,occurrences,token\n");
    let ranges = ranges(&o.splits);
    for r in o.rewards.iter().filter(|r| r.measured.identity.is_some()) {
        for (s, range) in o.splits.iter().zip(&ranges) {
            let mut by: BTreeMap<usize, (f64, usize, usize)> = BTreeMap::new();
            for j in range.clone() {
                for (&t, &v) in &r.measured.identity_tokens[j] {
                    let e = by.entry(t).or_default();
                    e.0 += v;
                    e.1 += 1;
                    e.2 += r.measured.token_counts[j][&t];
                }
            }
            let total: f64 = by.values().map(|e| e.0.abs()).sum();
            let mut rows: Vec<_> = by.into_iter().collect();
            rows.sort_by(|a, b| b.1 .0.abs().total_cmp(&a.1 .0.abs()));
            for (t, (v, pairs, occurrences)) in rows {
                csv.push_str(&format!(
                    "{},{},{t},{v:e},{:e},{pairs},{occurrences},{}\n",
                    r.reward.name(),
                    field(&s.name),
                    if total > 0.0 { v.abs() / total } else { 0.0 },
                    field(&o.token_names[&t]),
                ));
            }
        }
    }
    csv
}

/// One split's summary for one reward model.
#[derive(Debug, Clone, Serialize)]
pub struct SplitSummary {
    pub split: String,
    pub pairs: usize,
    /// Exact-tie accuracy of the margins measured (`1{m > 0} + ½·1{m = 0}`).
    pub accuracy: f64,
    pub mean_velocity: f64,
    /// Fraction of pairs whose predicted velocity is negative (pushed towards inversion).
    pub velocity_negative: f64,
    /// IM-RM: `Σ|identity| / (Σ|identity| + Σ|rest|)` over the pairs.
    pub identity_share: Option<f64>,
    /// IM-RM: fraction of pairs where the identity part has the sign of the whole velocity.
    pub identity_sign_agreement: Option<f64>,
    /// The whole model's velocity (central differences at `ε` and `ε/2`, Richardson:
    /// `(4 w(ε/2) − w(ε))/3`) against the part's prediction: least-squares slope of the
    /// prediction on it (1: the part is the whole), and the fraction of pairs of the same sign.
    pub part_over_whole: Option<f64>,
    pub part_whole_sign_agreement: Option<f64>,
}

/// The first-order check of MATH.md §3 for one reward model.
#[derive(Debug, Clone, Serialize)]
pub struct FirstOrder {
    pub eta: f64,
    /// `‖Δm(η)/η − v‖ / ‖v‖` of the step on the part alone, at `η` and `η/2` (`O(η)`: halves).
    pub part_error: [f64; 2],
    /// The check passes: the error halves with `η` (ratio ≤ 0.6), or is at rounding (≤ 1e-9).
    pub part_passes: bool,
    /// The whole-model step: `ε`, `‖εg‖/‖θ‖`, the share of the step applied after rounding to
    /// f32, and `‖w(ε) − w(ε/2)‖ / ‖w(ε/2)‖` of its central-difference velocities (`O(ε²)`: ≪ 1
    /// where first order holds).
    pub whole_eta: Option<f64>,
    pub whole_relative_step: Option<f64>,
    pub whole_applied: Option<f64>,
    pub whole_consistency: Option<f64>,
}

fn norm(v: impl Iterator<Item = f64>) -> f64 {
    crate::numerics::norm(&v.collect::<Vec<f64>>())
}

fn first_order(r: &RewardDynamics) -> FirstOrder {
    let m = &r.measured;
    let v = &m.velocity;
    let vn = norm(v.iter().copied()).max(1e-300);
    let err = |k: usize, e: f64| norm(m.part_change[k].iter().zip(v).map(|(d, v)| d / e - v)) / vn;
    let part_error = [err(0, m.eta), err(1, m.eta / 2.0)];
    let whole_consistency = m.whole.as_ref().map(|w| {
        let [a, b] = &w.velocity;
        norm(a.iter().zip(b).map(|(x, y)| x - y)) / norm(b.iter().copied()).max(1e-300)
    });
    FirstOrder {
        eta: m.eta,
        part_passes: part_error[1] <= 0.6 * part_error[0] || part_error[0] <= 1e-9,
        part_error,
        whole_eta: m.whole.as_ref().map(|w| w.eta),
        whole_relative_step: m.whole.as_ref().map(|w| w.relative_step),
        whole_applied: m.whole.as_ref().map(|w| w.applied),
        whole_consistency,
    }
}

fn split_summary(r: &RewardDynamics, s: &SplitPairs, range: Range<usize>) -> SplitSummary {
    let m = &r.measured;
    let n = range.len().max(1) as f64;
    let v = &m.velocity[range.clone()];
    let identity = m.identity.as_ref().map(|id| &id[range.clone()]);
    let whole = m.whole.as_ref().map(|w| -> Vec<f64> {
        range
            .clone()
            .map(|j| (4.0 * w.velocity[1][j] - w.velocity[0][j]) / 3.0)
            .collect()
    });
    SplitSummary {
        split: s.name.clone(),
        pairs: range.len(),
        accuracy: m.margins[range.clone()]
            .iter()
            .map(|&x| {
                if x > 0.0 {
                    1.0
                } else if x == 0.0 {
                    0.5
                } else {
                    0.0
                }
            })
            .sum::<f64>()
            / n,
        mean_velocity: v.iter().sum::<f64>() / n,
        velocity_negative: v.iter().filter(|&&x| x < 0.0).count() as f64 / n,
        identity_share: identity.map(|id| {
            let a: f64 = id.iter().map(|x| x.abs()).sum();
            let b: f64 = id.iter().zip(v).map(|(i, t)| (t - i).abs()).sum();
            a / (a + b).max(1e-300)
        }),
        identity_sign_agreement: identity.map(|id| {
            id.iter()
                .zip(v)
                .filter(|(i, t)| i.signum() == t.signum())
                .count() as f64
                / n
        }),
        part_over_whole: whole.as_ref().map(|w| {
            let num: f64 = v.iter().zip(w).map(|(a, b)| a * b).sum();
            num / w.iter().map(|b| b * b).sum::<f64>().max(1e-300)
        }),
        part_whole_sign_agreement: whole.as_ref().map(|w| {
            v.iter()
                .zip(w)
                .filter(|(a, b)| a.signum() == b.signum())
                .count() as f64
                / n
        }),
    }
}

/// Per reward model: its first-order check and each split's summary.
#[derive(Debug, Clone, Serialize)]
pub struct RewardSummary {
    pub reward: String,
    pub seconds: f64,
    pub first_order: FirstOrder,
    pub splits: Vec<SplitSummary>,
}

/// What `summary.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub rmflow_version: &'static str,
    pub train_pairs: usize,
    pub seconds: f64,
    pub rewards: Vec<RewardSummary>,
}

pub fn summary(o: &DynamicsOutcome) -> Summary {
    let ranges = ranges(&o.splits);
    Summary {
        rmflow_version: RMFLOW_VERSION,
        train_pairs: o.train_pairs,
        seconds: o.seconds,
        rewards: o
            .rewards
            .iter()
            .map(|r| RewardSummary {
                reward: r.reward.name().to_string(),
                seconds: r.seconds,
                first_order: first_order(r),
                splits: o
                    .splits
                    .iter()
                    .zip(&ranges)
                    .map(|(s, range)| split_summary(r, s, range.clone()))
                    .collect(),
            })
            .collect(),
    }
}
