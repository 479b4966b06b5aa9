//! The EX-RM (MATH.md §1): `r_u(x, y) = ⟨u, h_{x,y}⟩`, margins `⟨u, z_i⟩` with
//! `z_i = h_{x_i,y_i⁺} − h_{x_i,y_i⁻}`.

use super::margin::MarginModel;
use crate::numerics::{row_axpy, row_dot};
use crate::problem::synthetic::PairSet;
use ndarray::Array2;
use rayon::prelude::*;

/// EX-RM `r_u(x,y) = ⟨u, h_{x,y}⟩`; margins `m_i = ⟨u, z_i⟩` (MATH.md §1). `θ = u ∈ R^D`.
#[derive(Debug, Clone)]
pub struct ExplicitRm {
    /// `z_i = h_{x_i,y_i⁺} − h_{x_i,y_i⁻}`, [N, D].
    pub features: Array2<f64>,
}

impl ExplicitRm {
    pub fn new(pairs: &PairSet) -> ExplicitRm {
        let z = pairs.hidden_differences();
        ExplicitRm {
            features: if z.is_standard_layout() {
                z
            } else {
                z.as_standard_layout().into_owned()
            },
        }
    }

    /// `z_i` as a slice (the features are kept row-major).
    pub(super) fn feature_row(&self, i: usize) -> &[f64] {
        self.features
            .row(i)
            .to_slice()
            .expect("EX-RM features are row-major")
    }
}

impl MarginModel for ExplicitRm {
    fn n_params(&self) -> usize {
        self.features.ncols()
    }

    fn n_pairs(&self) -> usize {
        self.features.nrows()
    }

    fn margins(&self, theta: &[f64], margins: &mut [f64]) {
        margins
            .par_chunks_mut(EXPLICIT_CHUNK)
            .enumerate()
            .for_each(|(c, out)| {
                for (k, m) in out.iter_mut().enumerate() {
                    *m = row_dot(self.feature_row(c * EXPLICIT_CHUNK + k), theta);
                }
            });
    }

    /// `∂m_i/∂u = z_i`, so the pull-back is `Zᵀ w`: one pass over `Z`, each row's margin, weight
    /// and contribution together (the screened form over every pair).
    fn margins_and_pullback(
        &self,
        theta: &[f64],
        weight: &(dyn Fn(f64) -> f64 + Sync),
        margins: &mut [f64],
        grad: &mut [f64],
    ) {
        let all: Vec<usize> = (0..self.n_pairs()).collect();
        self.margins_and_pullback_on(theta, weight, &all, margins, grad);
    }

    /// `‖z_i‖`.
    fn feature_norms(&self) -> Option<Vec<f64>> {
        Some(
            self.features
                .rows()
                .into_iter()
                .map(|z| z.dot(&z).sqrt())
                .collect(),
        )
    }

    fn margins_and_pullback_on(
        &self,
        theta: &[f64],
        weight: &(dyn Fn(f64) -> f64 + Sync),
        pairs: &[usize],
        margins: &mut [f64],
        grad: &mut [f64],
    ) {
        let partials: Vec<Vec<f64>> = margins
            .par_chunks_mut(EXPLICIT_CHUNK)
            .zip(pairs.par_chunks(EXPLICIT_CHUNK))
            .map(|(out, idx)| {
                let mut g = vec![0.0; theta.len()];
                for (m, &i) in out.iter_mut().zip(idx) {
                    let z = self.feature_row(i);
                    *m = row_dot(z, theta);
                    row_axpy(weight(*m), z, &mut g);
                }
                g
            })
            .collect();
        grad.fill(0.0);
        for g in partials {
            grad.iter_mut().zip(g.iter()).for_each(|(a, b)| *a += b);
        }
    }
}

/// Pairs per parallel chunk of the EX-RM's margins and pull-back: fixed, so the sums (chunk
/// partials added in chunk order) do not depend on the thread count.
pub(super) const EXPLICIT_CHUNK: usize = 256;
