//! The observer of a training run: at every observation time, the metrics of every split, the
//! distance travelled, the unseen-row drift and the convergence to the max-margin separator.

use super::simulation::ModelKind;
use crate::config::GradientPath;
use crate::experiment::observables::{convergence, split_metrics, Observation};
use crate::problem::reward::{
    mean_loss, ExplicitRm, ImplicitRm, MarginModel, ReferenceTerm, SeenRowsImplicitRm,
};
use crate::problem::synthetic::Setup;

/// Measures a model on every split at parameters `θ`. The IM-RM's margins go through the
/// faithful full-vocabulary log-softmax when `θ` is the whole `U` ([`Observer::new`]), and through
/// the seen-row form otherwise ([`Observer::seen_rows`]).
pub struct Observer {
    pub(super) kind: ModelKind,
    pub(super) split_models: Vec<(String, Box<dyn MarginModel>)>,
    pub(super) theta0: Vec<f64>,
    /// Rows of `θ` of tokens in no training pair (full `U` only; on the seen rows there are none).
    pub(super) unseen_rows: Vec<usize>,
    pub(super) dim: usize,
    pub(super) separator: Option<Vec<f64>>,
    pub(super) tie_tolerance: f64,
}

impl Observer {
    /// `θ` is `u` (EX-RM) or the whole `U` as [V, D] (IM-RM, its rewards with `reference_term`),
    /// `separator` (the max-margin separator, MATH.md §3) in the same layout.
    pub fn new(
        kind: ModelKind,
        setup: &Setup,
        theta0: Vec<f64>,
        separator: Option<Vec<f64>>,
        tie_tolerance: f64,
        reference_term: ReferenceTerm,
    ) -> Observer {
        let u0 = (kind == ModelKind::Implicit).then(|| setup.unembedding_init.full());
        let split_models: Vec<(String, Box<dyn MarginModel>)> = setup
            .splits()
            .map(|p| {
                let m: Box<dyn MarginModel> = match &u0 {
                    None => Box::new(ExplicitRm::new(p)),
                    Some(u0) => Box::new(
                        ImplicitRm::new(p, u0.view(), setup.config.beta, GradientPath::Full)
                            .with_reference(reference_term),
                    ),
                };
                (p.name.clone(), m)
            })
            .collect();
        Observer {
            kind,
            split_models,
            theta0,
            unseen_rows: if kind == ModelKind::Implicit {
                setup.unseen_tokens()
            } else {
                vec![]
            },
            dim: setup.dim(),
            separator,
            tie_tolerance,
        }
    }

    /// The IM-RM with `θ = U_T` (the rows of the training tokens, `T = rows`): every split's
    /// margins in the seen-row form (MATH.md §2; the log-normaliser is shared by a pair's
    /// two responses), tokens outside `T` at `U(0)`. `O(n·D)` per split, independent of `V`.
    /// `separator` is `ΔU*_T`; the rewards are taken with `reference_term`.
    pub fn seen_rows(
        setup: &Setup,
        rows: &[usize],
        separator: Option<Vec<f64>>,
        tie_tolerance: f64,
        reference_term: ReferenceTerm,
    ) -> Observer {
        let split_models: Vec<(String, Box<dyn MarginModel>)> = setup
            .splits()
            .map(|p| {
                let m: Box<dyn MarginModel> = Box::new(
                    SeenRowsImplicitRm::on_rows(
                        p,
                        rows,
                        &setup.unembedding_init,
                        setup.config.beta,
                    )
                    .with_reference(reference_term),
                );
                (p.name.clone(), m)
            })
            .collect();
        Observer {
            kind: ModelKind::Implicit,
            split_models,
            theta0: setup
                .unembedding_init
                .rows(rows)
                .into_raw_vec_and_offset()
                .0,
            unseen_rows: vec![],
            dim: setup.dim(),
            separator,
            tie_tolerance,
        }
    }

    /// Margins of every split (`train` first) at `θ`.
    pub fn split_margins(&self, theta: &[f64]) -> Vec<(String, Vec<f64>)> {
        self.split_models
            .iter()
            .map(|(name, m)| {
                let mut out = vec![0.0; m.n_pairs()];
                m.margins(theta, &mut out);
                (name.clone(), out)
            })
            .collect()
    }

    /// All observables at `(time, step, θ)`. On the seen rows, `unseen_row_drift` is 0 by
    /// construction (those rows are not part of the state); the full path measures it.
    pub fn observe(
        &self,
        time: crate::solve::training::ObsTime,
        step: u64,
        theta: &[f64],
    ) -> Observation {
        let margins = self.split_margins(theta);
        let loss = mean_loss(&margins[0].1);
        let splits = margins
            .iter()
            .map(|(n, m)| split_metrics(n, m, self.tie_tolerance))
            .collect();
        let delta: Vec<f64> = theta.iter().zip(&self.theta0).map(|(a, b)| a - b).collect();
        let unseen_row_drift = (self.kind == ModelKind::Implicit).then(|| {
            self.unseen_rows
                .iter()
                .map(|&z| crate::numerics::norm(&delta[z * self.dim..(z + 1) * self.dim]))
                .fold(0.0, f64::max)
        });
        let convergence = self.separator.as_ref().map(|r| match self.kind {
            ModelKind::Explicit => convergence(theta, r, time.ln_t()),
            ModelKind::Implicit => convergence(&delta, r, time.ln_t()),
        });
        Observation {
            model: self.kind.name(),
            t: time.t,
            log10_t: time.log10_t,
            step,
            loss,
            splits,
            param_distance: crate::numerics::norm(&delta),
            unseen_row_drift,
            convergence,
        }
    }
}
