//! How far a real model's representations carry the training preference to unseen answers
//! (MATH.md §4(b), the paper's footnote 3; the official `persona_compute_hidden_repr_similarity.py`).
//!
//! With `z = h_{x,y⁺} − h_{x,y⁻}`, the EX-RM ranks an unseen pair as `u*` does, and `u*` is a
//! non-negative combination of training `z_i`: an unseen `z_j` is ranked correctly where it has
//! positive inner product with that combination. The statistics below are the official script's:
//! the inner products and cosines `⟨z_i, z_j⟩` of every training pair `i` with every unseen pair
//! `j` (mean, min, quartiles, max, fraction positive), and `cos(u*, z_j)` over the unseen pairs.
//! Quantiles as `torch.quantile` (linear interpolation at `q (n − 1)`); the median as
//! `torch.median` (the lower middle value for an even count).

use crate::problem::synthetic::PairSet;
use ndarray::{Array2, ArrayView1};
use serde::Serialize;

/// Order statistics of a sample, as the official script logs them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub min: f64,
    pub first_quartile: f64,
    pub median: f64,
    pub third_quartile: f64,
    pub max: f64,
    pub fraction_positive: f64,
}

impl Summary {
    /// The statistics of `values` (NaNs excluded; `None` when nothing is left).
    pub fn of(values: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let quantile = |q: f64| {
            let at = q * (n - 1) as f64;
            let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
            v[lo] + (at - lo as f64) * (v[hi] - v[lo])
        };
        Some(Summary {
            count: n,
            mean: v.iter().sum::<f64>() / n as f64,
            min: v[0],
            first_quartile: quantile(0.25),
            median: v[(n - 1) / 2],
            third_quartile: quantile(0.75),
            max: v[n - 1],
            fraction_positive: v.iter().filter(|&&x| x > 0.0).count() as f64 / n as f64,
        })
    }
}

/// The footnote-3 statistics of one run (in `lm.json` as `representation_alignment`).
#[derive(Debug, Clone, Serialize)]
pub struct Alignment {
    /// Which split the unseen pairs come from.
    pub unseen_split: String,
    pub train_pairs: usize,
    pub unseen_pairs: usize,
    /// `⟨z_i, z_j⟩`, training pair `i`, unseen pair `j`.
    pub inner_products: Option<Summary>,
    /// `⟨z_i, z_j⟩ / (‖z_i‖ ‖z_j‖)`.
    pub cosines: Option<Summary>,
    /// `cos(u*, z_j)` over the unseen pairs, `u*` the EX-RM's max-margin separator.
    pub max_margin_cosines: Option<Summary>,
}

fn differences(p: &PairSet) -> Array2<f64> {
    &p.chosen_hidden - &p.rejected_hidden
}

fn norm(v: ArrayView1<f64>) -> f64 {
    v.dot(&v).sqrt()
}

/// The statistics of `unseen` against `train`, with `u_star` when the separator was found.
pub fn alignment(train: &PairSet, unseen: &PairSet, u_star: Option<&[f64]>) -> Alignment {
    let (zt, zu) = (differences(train), differences(unseen));
    let gram = zt.dot(&zu.t());
    let (nt, nu): (Vec<f64>, Vec<f64>) = (
        zt.rows().into_iter().map(norm).collect(),
        zu.rows().into_iter().map(norm).collect(),
    );
    let inner: Vec<f64> = gram.iter().copied().collect();
    let cosines: Vec<f64> = gram
        .indexed_iter()
        .map(|((i, j), &g)| g / (nt[i] * nu[j]))
        .collect();
    let max_margin = u_star.map(|u| {
        let u = ndarray::ArrayView1::from(u);
        let nu_star = norm(u);
        zu.rows()
            .into_iter()
            .zip(&nu)
            .map(|(z, &n)| z.dot(&u) / (n * nu_star))
            .collect::<Vec<f64>>()
    });
    Alignment {
        unseen_split: unseen.name.clone(),
        train_pairs: train.len(),
        unseen_pairs: unseen.len(),
        inner_products: Summary::of(&inner),
        cosines: Summary::of(&cosines),
        max_margin_cosines: max_margin.as_deref().and_then(Summary::of),
    }
}

/// The statistics as printed by `rmflow lm` (one line each).
pub fn describe(a: &Alignment) -> String {
    let line = |name: &str, s: &Option<Summary>| {
        match s {
        Some(s) => format!(
            "  {name:<34} mean {:+.4}  quartiles {:+.4} / {:+.4} / {:+.4}  range [{:+.4}, {:+.4}]  positive {:.3}\n",
            s.mean, s.first_quartile, s.median, s.third_quartile, s.min, s.max, s.fraction_positive
        ),
        None => format!("  {name:<34} (none)\n"),
    }
    };
    format!(
        "representation alignment, z = h(x,y⁺) − h(x,y⁻), {} training × {} {} pairs (the paper's footnote 3):\n{}{}{}",
        a.train_pairs,
        a.unseen_pairs,
        a.unseen_split,
        line("⟨z_train, z_unseen⟩", &a.inner_products),
        line("cos(z_train, z_unseen)", &a.cosines),
        line("cos(u*, z_unseen)", &a.max_margin_cosines),
    )
}
