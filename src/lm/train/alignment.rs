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

use crate::lm::train::sequences::PairSplit;
use crate::problem::synthetic::PairSet;
use ndarray::{Array2, ArrayView1, Axis};
use serde::{Deserialize, Serialize};

/// Order statistics of a sample, as the official script logs them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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

/// The footnote-3 statistics of one run (in `lm.json` as `representation_alignment`; in a
/// recipe's EX-RM evaluations, one per split other than the training pairs).
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Training pairs left out of `u*` because their difference is exactly 0 (chosen and
    /// rejected read the same representation, e.g. identical responses): no head separates them,
    /// and their gradient is 0, so the separator the head's flow tends to is the others'.
    #[serde(default)]
    pub separator_excluded: usize,
}

fn differences(p: &PairSet) -> Array2<f64> {
    &p.chosen_hidden - &p.rejected_hidden
}

fn norm(v: ArrayView1<f64>) -> f64 {
    v.dot(&v).sqrt()
}

/// The statistics of `unseen` against `train`, with `u_star` when the separator was found.
pub fn alignment(train: &PairSet, unseen: &PairSet, u_star: Option<&[f64]>) -> Alignment {
    of_differences(
        &differences(train),
        &differences(unseen),
        &unseen.name,
        u_star,
    )
}

/// The statistics of the unseen differences `zu` (rows) against the training ones `zt`, with
/// `u_star` when the separator was found.
pub fn of_differences(
    zt: &Array2<f64>,
    zu: &Array2<f64>,
    unseen_split: &str,
    u_star: Option<&[f64]>,
) -> Alignment {
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
        unseen_split: unseen_split.to_string(),
        train_pairs: zt.nrows(),
        unseen_pairs: zu.nrows(),
        inner_products: Summary::of(&inner),
        cosines: Summary::of(&cosines),
        max_margin_cosines: max_margin.as_deref().and_then(Summary::of),
        separator_excluded: 0,
    }
}

/// The footnote-3 statistics of a preference problem's EX-RM representations `last` (the
/// last-token hidden state of every sequence, rows as the problem's sequences) over its `splits`:
/// the first split's pairs are the training pairs, and every other split is compared with them,
/// `u*` the max-margin separator of the training differences that are not exactly 0 (none when
/// the QP fails).
pub fn of_splits(splits: &[PairSplit], last: &Array2<f64>) -> Vec<Alignment> {
    let z = |s: &PairSplit| -> Array2<f64> {
        let pick = |idx: &[usize]| last.select(Axis(0), idx);
        pick(&s.chosen) - pick(&s.rejected)
    };
    let Some((train, rest)) = splits.split_first() else {
        return Vec::new();
    };
    let zt = z(train);
    let nonzero: Vec<usize> = (0..zt.nrows())
        .filter(|&i| zt.row(i).iter().any(|&x| x != 0.0))
        .collect();
    let u_star = crate::solve::max_margin::max_margin_head(&zt.select(Axis(0), &nonzero))
        .ok()
        .map(|(u, _)| u.to_vec());
    rest.iter()
        .map(|s| Alignment {
            separator_excluded: zt.nrows() - nonzero.len(),
            ..of_differences(&zt, &z(s), &s.name, u_star.as_deref())
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn split(name: &str, chosen: Vec<usize>, rejected: Vec<usize>) -> PairSplit {
        PairSplit {
            name: name.into(),
            chosen,
            rejected,
        }
    }

    /// Against its own training pairs, every pair is on the right side of `u*` with
    /// `⟨u*, z⟩ ≥ 1`, and the inner products are the Gram matrix of the differences.
    #[test]
    fn training_pairs_against_themselves() {
        let last = array![[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.5, -1.0], [0.0, 0.0]];
        let train = split("train", vec![0, 2], vec![1, 3]);
        let again = split("again", vec![0, 2], vec![1, 3]);
        let a = of_splits(&[train, again], &last);
        assert_eq!(a.len(), 1);
        let a = &a[0];
        assert_eq!(
            (a.unseen_split.as_str(), a.train_pairs, a.unseen_pairs),
            ("again", 2, 2)
        );
        // z = (1, −1), (1.5, 2): Gram entries 2, −0.5, −0.5, 6.25.
        let ip = a.inner_products.as_ref().unwrap();
        assert!((ip.mean - (2.0 - 0.5 - 0.5 + 6.25) / 4.0).abs() < 1e-12);
        assert_eq!((ip.min, ip.max, ip.fraction_positive), (-0.5, 6.25, 0.5));
        let mm = a.max_margin_cosines.as_ref().unwrap();
        assert_eq!(mm.fraction_positive, 1.0);
        assert!(mm.min > 0.0 && mm.max <= 1.0 + 1e-12);
    }

    /// A training pair whose two responses read the same representation (difference 0) cannot
    /// be separated: `u*` is the other pairs' separator, and the pair is counted as left out.
    #[test]
    fn a_zero_training_difference_is_left_out_of_the_separator() {
        let last = array![[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]];
        let with_zero = of_splits(
            &[
                split("train", vec![0, 2], vec![1, 2]),
                split("test", vec![0], vec![1]),
            ],
            &last,
        );
        let without = of_splits(
            &[
                split("train", vec![0], vec![1]),
                split("test", vec![0], vec![1]),
            ],
            &last,
        );
        assert_eq!(with_zero[0].separator_excluded, 1);
        assert_eq!(without[0].separator_excluded, 0);
        let (a, b) = (
            with_zero[0].max_margin_cosines.as_ref().unwrap(),
            without[0].max_margin_cosines.as_ref().unwrap(),
        );
        assert!((a.mean - b.mean).abs() < 1e-9 && (a.mean - 1.0).abs() < 1e-9);
    }

    /// A pair whose difference is the negative of a training one is on the wrong side of `u*`.
    #[test]
    fn reversed_pairs_are_negative() {
        let last = array![[1.0, 0.0], [0.0, 1.0]];
        let a = of_splits(
            &[
                split("train", vec![0], vec![1]),
                split("reversed", vec![1], vec![0]),
            ],
            &last,
        );
        let mm = a[0].max_margin_cosines.as_ref().unwrap();
        assert!(
            (mm.max + 1.0).abs() < 1e-9,
            "cos(u*, −z) = −1, got {}",
            mm.max
        );
        assert_eq!(a[0].cosines.as_ref().unwrap().fraction_positive, 0.0);
    }
}
