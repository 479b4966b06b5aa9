//! Max-margin separators with certificates (MATH.md §4).
//!
//! EX-RM: `u* = argmin{‖u‖ : ⟨u, z_i⟩ ≥ 1}` solved in the primal. IM-RM: `ΔU*` in the feature
//! space `φ_i = β (e_{y_i⁺} − e_{y_i⁻}) h_{x_i}ᵀ`, solved through the dual with the product kernel
//! `K_IM(i,j) = β² ⟨e_{y_i⁺} − e_{y_i⁻}, e_{y_j⁺} − e_{y_j⁻}⟩ ⟨h_{x_i}, h_{x_j}⟩` (no V×D feature
//! is ever formed per example). Both QPs are solved by Clarabel; the certificate is recomputed
//! here from the returned primal and dual points, independently of the solver's own report.

use crate::synthetic::PairSet;
use clarabel::algebra::CscMatrix;
use clarabel::solver::{DefaultSettings, DefaultSolver, IPSolver, SolverStatus, SupportedConeT};
use ndarray::{Array1, Array2, ArrayView2};
use serde::Serialize;

/// Tolerance behind every certificate check: `min margin ≥ 1 − tol`, slackness, gap and
/// stationarity `≤ tol` (the QP is solved to Clarabel's default 1e-8 feasibility and gap).
pub const CERTIFICATE_TOLERANCE: f64 = 1e-6;

/// Optimality certificate of a hard-margin problem `min ½‖w‖² s.t. ⟨w, φ_i⟩ ≥ 1`.
#[derive(Debug, Clone, Serialize)]
pub struct Certificate {
    /// Clarabel's termination status.
    pub solver_status: String,
    pub solver_iterations: u32,
    /// `min_i ⟨w, φ_i⟩` (primal feasibility: ≥ 1 − tol).
    pub min_margin: f64,
    /// `min_i α_i` (dual feasibility: ≥ −tol).
    pub min_dual: f64,
    /// `max_i α_i |⟨w, φ_i⟩ − 1| / max(1, max_i α_i)`: relative to the dual scale, which grows
    /// like `1/β²` (IM-RM) or `1/‖z‖²`, so the check is invariant to rescaling the features.
    pub complementary_slackness: f64,
    /// `|½‖w‖² − (Σα − ½‖Σ α_i φ_i‖²)| / max(1, ½‖w‖²)`.
    pub duality_gap: f64,
    /// `‖w − Σ α_i φ_i‖ / max(1, ‖w‖)` (0 by construction when `w` is built from `α`).
    pub stationarity: f64,
}

impl Certificate {
    /// All four optimality conditions hold within [`CERTIFICATE_TOLERANCE`].
    pub fn holds(&self) -> bool {
        let t = CERTIFICATE_TOLERANCE;
        self.min_margin >= 1.0 - t
            && self.min_dual >= -t
            && self.complementary_slackness <= t
            && self.duality_gap <= t
            && self.stationarity <= t
    }

    /// The largest violation among the optimality conditions (≤ tol when [`Self::holds`]).
    pub fn worst_violation(&self) -> f64 {
        (1.0 - self.min_margin)
            .max(-self.min_dual)
            .max(self.complementary_slackness)
            .max(self.duality_gap)
            .max(self.stationarity)
    }
}

/// A solved hard-margin problem: dual variables, support set, `‖w*‖`, certificate.
#[derive(Debug, Clone, Serialize)]
pub struct MaxMarginSolution {
    /// `α_i ≥ 0`, one per training pair.
    pub dual: Vec<f64>,
    /// Indices with `α_i > 1e-6 · max α` (the support vectors).
    pub support: Vec<usize>,
    /// `‖w*‖`; the geometric margin is `1/‖w*‖`.
    pub norm: f64,
    pub certificate: Certificate,
}

/// Why no separator was returned.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MaxMarginError {
    #[error("the training pairs are not linearly separable in the {space} (Clarabel: {status}); no max-margin separator exists")]
    NotSeparable { space: &'static str, status: String },
    #[error("the max-margin QP in the {space} was not solved (Clarabel: {status})")]
    SolverFailed { space: &'static str, status: String },
    #[error("the max-margin QP in the {space} could not be set up: {message}")]
    Setup {
        space: &'static str,
        message: String,
    },
}

fn settings() -> DefaultSettings<f64> {
    DefaultSettings {
        verbose: false,
        max_iter: 500,
        ..DefaultSettings::default()
    }
}

fn support_of(alpha: &[f64]) -> Vec<usize> {
    let max = alpha.iter().copied().fold(0.0, f64::max);
    (0..alpha.len())
        .filter(|&i| alpha[i] > 1e-6 * max)
        .collect()
}

fn dense_csc(m: &ArrayView2<f64>, upper_only: bool, scale: f64) -> CscMatrix<f64> {
    let (rows, cols) = m.dim();
    let mut colptr = Vec::with_capacity(cols + 1);
    let mut rowval = Vec::new();
    let mut nzval = Vec::new();
    colptr.push(0);
    for j in 0..cols {
        let last = if upper_only { j + 1 } else { rows };
        for i in 0..last {
            let v = m[[i, j]];
            if v != 0.0 {
                rowval.push(i);
                nzval.push(scale * v);
            }
        }
        colptr.push(rowval.len());
    }
    CscMatrix::new(rows, cols, colptr, rowval, nzval)
}

fn identity_csc(n: usize, scale: f64) -> CscMatrix<f64> {
    CscMatrix::new(n, n, (0..=n).collect(), (0..n).collect(), vec![scale; n])
}

fn classify(status: SolverStatus, space: &'static str) -> Result<(), MaxMarginError> {
    match status {
        SolverStatus::Solved | SolverStatus::AlmostSolved => Ok(()),
        SolverStatus::PrimalInfeasible
        | SolverStatus::AlmostPrimalInfeasible
        | SolverStatus::DualInfeasible
        | SolverStatus::AlmostDualInfeasible => Err(MaxMarginError::NotSeparable {
            space,
            status: format!("{status:?}"),
        }),
        other => Err(MaxMarginError::SolverFailed {
            space,
            status: format!("{other:?}"),
        }),
    }
}

/// EX-RM max-margin head `u* = argmin{‖u‖ : ⟨u, z_i⟩ ≥ 1 ∀i}` from the primal QP
/// `min ½‖u‖² s.t. −Z u + s = −1, s ≥ 0`; `α` are the constraint multipliers.
pub fn max_margin_head(
    features: &Array2<f64>,
) -> Result<(Array1<f64>, MaxMarginSolution), MaxMarginError> {
    const SPACE: &str = "hidden-representation space of the EX-RM";
    let (n, d) = features.dim();
    if n == 0 || d == 0 {
        return Err(MaxMarginError::Setup {
            space: SPACE,
            message: format!("need ≥ 1 pair and dimension ≥ 1 (got {n} × {d})"),
        });
    }
    let p = identity_csc(d, 1.0);
    let a = dense_csc(&features.view(), false, -1.0);
    let b = vec![-1.0; n];
    let cones = [SupportedConeT::NonnegativeConeT(n)];
    let mut solver =
        DefaultSolver::new(&p, &vec![0.0; d], &a, &b, &cones, settings()).map_err(|e| {
            MaxMarginError::Setup {
                space: SPACE,
                message: format!("{e:?}"),
            }
        })?;
    solver.solve();
    let sol = &solver.solution;
    classify(sol.status, SPACE)?;
    let u = Array1::from(sol.x.clone());
    let alpha = sol.z.clone();
    let margins = features.dot(&u);
    let combo = features.t().dot(&Array1::from(alpha.clone()));
    let primal = 0.5 * u.dot(&u);
    let dual_obj = alpha.iter().sum::<f64>() - 0.5 * combo.dot(&combo);
    let certificate = Certificate {
        solver_status: format!("{:?}", sol.status),
        solver_iterations: sol.iterations,
        min_margin: margins.iter().copied().fold(f64::INFINITY, f64::min),
        min_dual: alpha.iter().copied().fold(f64::INFINITY, f64::min),
        complementary_slackness: alpha
            .iter()
            .zip(&margins)
            .map(|(a, m)| (a * (m - 1.0)).abs())
            .fold(0.0, f64::max)
            / alpha.iter().copied().fold(1.0, f64::max),
        duality_gap: (primal - dual_obj).abs() / primal.max(1.0),
        stationarity: (&u - &combo).dot(&(&u - &combo)).sqrt() / u.dot(&u).sqrt().max(1.0),
    };
    let norm = u.dot(&u).sqrt();
    Ok((
        u,
        MaxMarginSolution {
            support: support_of(&alpha),
            dual: alpha,
            norm,
            certificate,
        },
    ))
}

/// Hard-margin dual `max Σα − ½ αᵀKα, α ≥ 0` for a PSD Gram matrix `K` (as the QP
/// `min ½αᵀKα − 1ᵀα s.t. −α + s = 0, s ≥ 0`). Unbounded ⇔ not separable.
pub fn max_margin_dual(
    kernel: &Array2<f64>,
    space: &'static str,
) -> Result<MaxMarginSolution, MaxMarginError> {
    let n = kernel.nrows();
    if n == 0 || kernel.ncols() != n {
        return Err(MaxMarginError::Setup {
            space,
            message: format!(
                "kernel must be square and non-empty (got {:?})",
                kernel.dim()
            ),
        });
    }
    let p = dense_csc(&kernel.view(), true, 1.0);
    let a = identity_csc(n, -1.0);
    let cones = [SupportedConeT::NonnegativeConeT(n)];
    let mut solver = DefaultSolver::new(&p, &vec![-1.0; n], &a, &vec![0.0; n], &cones, settings())
        .map_err(|e| MaxMarginError::Setup {
            space,
            message: format!("{e:?}"),
        })?;
    solver.solve();
    let sol = &solver.solution;
    classify(sol.status, space)?;
    // Clip the interior-point solution onto α ≥ 0 (it is feasible to ~1e-8) before certifying.
    let alpha: Vec<f64> = sol.x.iter().map(|&a| a.max(0.0)).collect();
    let ka = kernel.dot(&Array1::from(alpha.clone()));
    let quad: f64 = alpha.iter().zip(&ka).map(|(a, k)| a * k).sum();
    let sum: f64 = alpha.iter().sum();
    let certificate = Certificate {
        solver_status: format!("{:?}", sol.status),
        solver_iterations: sol.iterations,
        min_margin: ka.iter().copied().fold(f64::INFINITY, f64::min),
        min_dual: sol.x.iter().copied().fold(f64::INFINITY, f64::min),
        complementary_slackness: alpha
            .iter()
            .zip(&ka)
            .map(|(a, m)| (a * (m - 1.0)).abs())
            .fold(0.0, f64::max)
            / alpha.iter().copied().fold(1.0, f64::max),
        duality_gap: (0.5 * quad - (sum - 0.5 * quad)).abs() / (0.5 * quad).max(1.0),
        stationarity: 0.0,
    };
    Ok(MaxMarginSolution {
        support: support_of(&alpha),
        dual: alpha,
        norm: quad.max(0.0).sqrt(),
        certificate,
    })
}

/// `K_EX(i,j) = ⟨z_i, z_j⟩` (MATH.md §4).
pub fn explicit_kernel(features: &Array2<f64>) -> Array2<f64> {
    features.dot(&features.t())
}

/// `⟨e_{a⁺} − e_{a⁻}, e_{b⁺} − e_{b⁻}⟩ ∈ {−2,…,2}`: token overlap of two response pairs.
pub fn token_overlap(a: (usize, usize), b: (usize, usize)) -> f64 {
    let d = |x: usize, y: usize| if x == y { 1.0 } else { 0.0 };
    d(a.0, b.0) - d(a.0, b.1) - d(a.1, b.0) + d(a.1, b.1)
}

/// Cross kernel `K_IM(i,j) = β² ⟨e_{y_i⁺} − e_{y_i⁻}, e_{y_j⁺} − e_{y_j⁻}⟩ ⟨h_{x_i}, h_{x_j}⟩`
/// between the pairs of `a` (rows) and `b` (columns) (MATH.md §4).
pub fn implicit_kernel(a: &PairSet, b: &PairSet, beta: f64) -> Array2<f64> {
    let prompt = a.prompt_hidden.dot(&b.prompt_hidden.t());
    Array2::from_shape_fn((a.len(), b.len()), |(i, j)| {
        let overlap = token_overlap(a.token_pair(i), b.token_pair(j));
        beta * beta * overlap * prompt[[i, j]]
    })
}

/// IM-RM max-margin direction `ΔU* = Σ_i α_i β (e_{y_i⁺} − e_{y_i⁻}) h_{x_i}ᵀ`, [V, D], from the
/// dual with `K_IM`; only rows of training tokens are non-zero.
pub fn max_margin_unembedding_delta(
    train: &PairSet,
    beta: f64,
    vocab_size: usize,
) -> Result<(Array2<f64>, MaxMarginSolution), MaxMarginError> {
    if train.response_length() != 1 {
        return Err(MaxMarginError::Setup {
            space: "unembedding feature space of the IM-RM",
            message: format!(
                "responses have K = {} tokens: the IM-RM is linear in ΔU only for K = 1 (the prefixes of y⁺ and y⁻ differ, so the normalisers do not cancel)",
                train.response_length()
            ),
        });
    }
    let solution = max_margin_dual(
        &implicit_kernel(train, train, beta),
        "unembedding feature space of the IM-RM",
    )?;
    let mut delta = Array2::zeros((vocab_size, train.prompt_hidden.ncols()));
    for (i, &a) in solution.dual.iter().enumerate() {
        if a != 0.0 {
            let h = train.prompt_hidden.row(i);
            delta
                .row_mut(train.token_pair(i).0)
                .scaled_add(a * beta, &h);
            delta
                .row_mut(train.token_pair(i).1)
                .scaled_add(-a * beta, &h);
        }
    }
    Ok((delta, solution))
}

/// Dual prediction of the IM-RM max-margin model on `eval`: `f_j = Σ_i α_i K_IM(i, j)`.
/// Exactly 0 for a pair whose tokens occur in no training pair (zero token overlap).
pub fn implicit_dual_prediction(
    train: &PairSet,
    dual: &[f64],
    beta: f64,
    eval: &PairSet,
) -> Vec<f64> {
    let k = implicit_kernel(train, eval, beta);
    (0..eval.len())
        .map(|j| dual.iter().enumerate().map(|(i, a)| a * k[[i, j]]).sum())
        .collect()
}
