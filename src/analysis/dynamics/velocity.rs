//! Reward velocities under gradient flow (MATH.md §3) and their decomposition into
//! per-training-example contributions: IM-RM `d r_U(x,y)/dt = β² Σ_i c_i Σ_k Σ_l [ρ_{k,l}(y; y_i⁺)
//! ⟨h_{x,y<k}, h_{x_i,y_i⁺<l}⟩ − (same for y_i⁻)]` with `c_i = σ(−m_i)/N`; EX-RM `d r_u(x,y)/dt =
//! Σ_i c_i ⟨h_{x,y}, z_i⟩`.

use super::overlap::{gram, token_overlap, ResponsePrefixes};
use crate::numerics::sigmoid;
use crate::problem::synthetic::PairSet;
use ndarray::{Array2, ArrayView2, Axis};
use serde::Serialize;

/// Flow weights `c_i = σ(−m_i)/N` (so `dθ/dt = Σ_i c_i ∂m_i/∂θ`).
pub fn flow_weights(margins: &[f64]) -> Vec<f64> {
    let n = margins.len() as f64;
    margins.iter().map(|&m| sigmoid(-m) / n).collect()
}

/// Per-training-example contributions to reward velocities.
#[derive(Debug, Clone)]
pub struct VelocityDecomposition {
    /// IM-RM, per eval response `(2j + side)` and training pair `i`: `d r/dt` contributions, [2n_e, n_t].
    pub imrm_response: Array2<f64>,
    /// Their token-identity part (`ρ_{k,l}` replaced by `1{y_k = ȳ_l}`), [2n_e, n_t].
    pub imrm_response_identity: Array2<f64>,
    /// EX-RM, per eval response: `c_i ⟨h_{x,y}, z_i⟩`, [2n_e, n_t].
    pub exrm_response: Array2<f64>,
}

impl VelocityDecomposition {
    /// Margin contributions `(response y⁺) − (response y⁻)`, [n_e, n_t].
    pub fn margin(a: &Array2<f64>) -> Array2<f64> {
        let n = a.nrows() / 2;
        Array2::from_shape_fn((n, a.ncols()), |(j, i)| a[[2 * j, i]] - a[[2 * j + 1, i]])
    }
}

/// IM-RM reward-velocity contributions from `ρ` and the prefix similarities (MATH.md §3).
pub fn imrm_velocity(
    rho: &Array2<f64>,
    eval: &ResponsePrefixes,
    train: &ResponsePrefixes,
    c_im: &[f64],
    beta: f64,
) -> (Array2<f64>, Array2<f64>) {
    let sim = gram(&eval.states, &train.states);
    let (ne, nt, ke, kt) = (eval.pairs, train.pairs, eval.k, train.k);
    let mut total = Array2::zeros((2 * ne, nt));
    let mut identity = Array2::zeros((2 * ne, nt));
    for j in 0..ne {
        for se in 0..2 {
            for i in 0..nt {
                let (mut acc, mut acc_id) = (0.0, 0.0);
                for st in 0..2 {
                    let sign = if st == 0 { 1.0 } else { -1.0 };
                    for k in 0..ke {
                        let r = eval.row(j, se, k);
                        for l in 0..kt {
                            let c = train.row(i, st, l);
                            let s = sim[[r, c]];
                            acc += sign * rho[[r, c]] * s;
                            if eval.tokens[r] == train.tokens[c] {
                                acc_id += sign * s;
                            }
                        }
                    }
                }
                let w = beta * beta * c_im[i];
                total[[2 * j + se, i]] = w * acc;
                identity[[2 * j + se, i]] = w * acc_id;
            }
        }
    }
    (total, identity)
}

/// EX-RM reward-velocity contributions `c_i ⟨h_{x,y}, z_i⟩` for each eval response, [2n_e, n_t].
pub fn exrm_velocity(eval: &PairSet, train_features: &Array2<f64>, c_ex: &[f64]) -> Array2<f64> {
    let ne = eval.len();
    let mut h = Array2::zeros((2 * ne, eval.chosen_hidden.ncols()));
    for j in 0..ne {
        h.row_mut(2 * j).assign(&eval.chosen_hidden.row(j));
        h.row_mut(2 * j + 1).assign(&eval.rejected_hidden.row(j));
    }
    let mut v = h.dot(&train_features.t());
    for mut row in v.rows_mut() {
        row.iter_mut().zip(c_ex).for_each(|(x, c)| *x *= c);
    }
    v
}

/// Summary of `ρ` and of the velocity decomposition on one evaluation split at one time.
#[derive(Debug, Clone, Serialize)]
pub struct DynamicsSummary {
    pub split: String,
    /// Entries of `ρ` whose two tokens are equal: count, mean, std, min, max.
    pub rho_same: Stats,
    /// Entries whose tokens differ.
    pub rho_diff: Stats,
    /// `Σ_j |v_id,j| / Σ_j (|v_id,j| + |v_rest,j|)` over the split's margin velocities (0/0 → NaN).
    pub imrm_identity_share: f64,
    /// The same share for the rewards of single responses (`Σ` over responses, not margins): for
    /// one token the non-identity (normaliser) part cancels in every margin but not in rewards.
    pub imrm_reward_identity_share: f64,
    /// Mean over pairs of `|dm/dt|`, IM-RM.
    pub imrm_margin_velocity_mean_abs: f64,
    /// Mean of `|dm/dt|` of the token-identity part, IM-RM.
    pub imrm_identity_velocity_mean_abs: f64,
    /// Mean of `|dm/dt|`, EX-RM.
    pub exrm_margin_velocity_mean_abs: f64,
}

/// count, mean, std, min, max.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Stats {
    pub count: usize,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    pub(super) fn of(values: impl Iterator<Item = f64>) -> Stats {
        let v: Vec<f64> = values.collect();
        if v.is_empty() {
            return Stats {
                count: 0,
                mean: f64::NAN,
                std: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
        Stats {
            count: v.len(),
            mean,
            std: var.sqrt(),
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

/// Everything about one eval split at one time: `ρ` [R_e, R_t] and the decomposition.
#[derive(Debug, Clone)]
pub struct SplitDynamics {
    pub rho: Array2<f64>,
    pub velocity: VelocityDecomposition,
    pub summary: DynamicsSummary,
}

/// What the decomposition needs of the training set, computed once per run: its response
/// prefixes and the EX-RM features `z_i`.
#[derive(Debug, Clone)]
pub struct TrainingSide {
    pub prefixes: ResponsePrefixes,
    pub features: Array2<f64>,
}

impl TrainingSide {
    pub fn new(train: &PairSet) -> TrainingSide {
        TrainingSide {
            prefixes: ResponsePrefixes::new(train),
            features: train.hidden_differences(),
        }
    }
}

/// `ρ` and velocities on `eval` (with its prefixes `ep`) given the IM-RM state `U` with its flow weights `c_im`, and the
/// EX-RM flow weights `c_ex` (both from the training margins at the same time).
pub fn split_dynamics(
    u: ArrayView2<f64>,
    eval: &PairSet,
    ep: &ResponsePrefixes,
    train: &TrainingSide,
    c_im: &[f64],
    c_ex: &[f64],
    beta: f64,
) -> SplitDynamics {
    let train_prefixes = &train.prefixes;
    let rho = token_overlap(u, ep, train_prefixes);
    let (imrm_response, imrm_response_identity) =
        imrm_velocity(&rho, ep, train_prefixes, c_im, beta);
    let exrm_response = exrm_velocity(eval, &train.features, c_ex);
    let (mut same, mut diff) = (Vec::new(), Vec::new());
    for ((r, c), &v) in rho.indexed_iter() {
        if ep.tokens[r] == train_prefixes.tokens[c] {
            same.push(v);
        } else {
            diff.push(v);
        }
    }
    let (rho_same, rho_diff) = (Stats::of(same.into_iter()), Stats::of(diff.into_iter()));
    let im = VelocityDecomposition::margin(&imrm_response).sum_axis(Axis(1));
    let id = VelocityDecomposition::margin(&imrm_response_identity).sum_axis(Axis(1));
    let ex = VelocityDecomposition::margin(&exrm_response).sum_axis(Axis(1));
    let n = im.len() as f64;
    let abs_id: f64 = id.iter().map(|v| v.abs()).sum();
    let abs_rest: f64 = im.iter().zip(&id).map(|(a, b)| (a - b).abs()).sum();
    let resp = imrm_response.sum_axis(Axis(1));
    let resp_id = imrm_response_identity.sum_axis(Axis(1));
    let r_id: f64 = resp_id.iter().map(|v| v.abs()).sum();
    let r_rest: f64 = resp.iter().zip(&resp_id).map(|(a, b)| (a - b).abs()).sum();
    let summary = DynamicsSummary {
        split: eval.name.clone(),
        rho_same,
        rho_diff,
        imrm_identity_share: abs_id / (abs_id + abs_rest),
        imrm_reward_identity_share: r_id / (r_id + r_rest),
        imrm_margin_velocity_mean_abs: im.iter().map(|v| v.abs()).sum::<f64>() / n,
        imrm_identity_velocity_mean_abs: abs_id / n,
        exrm_margin_velocity_mean_abs: ex.iter().map(|v| v.abs()).sum::<f64>() / n,
    };
    SplitDynamics {
        rho,
        velocity: VelocityDecomposition {
            imrm_response,
            imrm_response_identity,
            exrm_response,
        },
        summary,
    }
}
