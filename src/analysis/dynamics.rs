//! Learning dynamics (MATH.md §3): token-overlap coefficients `ρ_{k,l}`, reward velocities under
//! gradient flow, and their decomposition into per-training-example contributions.
//!
//! IM-RM: `d r_U(x,y)/dt = β² Σ_i c_i Σ_k Σ_l [ρ_{k,l}(y; y_i⁺) ⟨h_{x,y<k}, h_{x_i,y_i⁺<l}⟩ − (same for y_i⁻)]`
//! with `c_i = σ(−m_i)/N` and `ρ_{k,l} = 1{y_k = ȳ_l} − π(ȳ_l|·) − π(y_k|·) + ⟨π(·|h_{x,y<k}), π(·|h_{x̄,ȳ<l})⟩`,
//! computed through this expanded formula (one softmax per prefix, never a V-vector per pair of
//! pairs). EX-RM: `d r_u(x,y)/dt = Σ_i c_i ⟨h_{x,y}, z_i⟩`.

use crate::config::{Config, GradientPath, Optimizer};
use crate::numerics::{sigmoid, softmax_in_place};
use crate::problem::reward::{loss_and_gradient, ExplicitRm, ImplicitRm, MarginModel};
use crate::problem::synthetic::PairSet;
use crate::problem::synthetic::Setup;
use crate::solve::ode::{integrate, OdeOptions};
use crate::solve::training::train;
use ndarray::{s, Array2, ArrayView2, Axis};
use rayon::prelude::*;
use serde::Serialize;

/// Rows per parallel block of the prefix computations.
const BLOCK: usize = 128;

/// Every prefix of every response of a pair set: row `r = (2i + side)·K + k` holds
/// `h_{x_i, y<k}` and the token `y_k` of response `side` (0: `y⁺`, 1: `y⁻`) of pair `i`.
#[derive(Debug, Clone)]
pub struct ResponsePrefixes {
    pub states: Array2<f64>,
    pub tokens: Vec<usize>,
    pub pairs: usize,
    pub k: usize,
}

impl ResponsePrefixes {
    pub fn new(p: &PairSet) -> ResponsePrefixes {
        let (n, k, d) = (p.len(), p.response_length(), p.prompt_hidden.ncols());
        let mut states = Array2::zeros((2 * n * k, d));
        let mut tokens = Vec::with_capacity(2 * n * k);
        for i in 0..n {
            for (side, (pre, tok)) in [
                (&p.chosen_prefix_hidden, &p.chosen_tokens),
                (&p.rejected_prefix_hidden, &p.rejected_tokens),
            ]
            .into_iter()
            .enumerate()
            {
                for kk in 0..k {
                    states
                        .row_mut((2 * i + side) * k + kk)
                        .assign(&pre.slice(s![i, kk, ..]));
                    tokens.push(tok[[i, kk]]);
                }
            }
        }
        ResponsePrefixes {
            states,
            tokens,
            pairs: n,
            k,
        }
    }

    /// Row of prefix `k` of response `side` of pair `i`.
    pub fn row(&self, i: usize, side: usize, k: usize) -> usize {
        (2 * i + side) * self.k + k
    }
}

/// `softmax(U h)` for every row of `states` ([R, V]), in parallel row blocks.
pub fn prefix_distributions(u: ArrayView2<f64>, states: &Array2<f64>) -> Array2<f64> {
    let blocks: Vec<Array2<f64>> = (0..states.nrows())
        .step_by(BLOCK)
        .collect::<Vec<_>>()
        .par_iter()
        .map(|&r0| {
            let r1 = (r0 + BLOCK).min(states.nrows());
            let mut p = crate::numerics::mat_mul_bt(states.slice(s![r0..r1, ..]), u);
            for mut row in p.rows_mut() {
                softmax_in_place(row.as_slice_mut().expect("contiguous row"));
            }
            p
        })
        .collect();
    ndarray::concatenate(
        Axis(0),
        &blocks.iter().map(|b| b.view()).collect::<Vec<_>>(),
    )
    .expect("same width")
}

/// `A Bᵀ` in parallel row blocks of `A` (each entry computed by one thread: thread-count independent).
fn gram(a: &Array2<f64>, b: &Array2<f64>) -> Array2<f64> {
    let blocks: Vec<Array2<f64>> = (0..a.nrows())
        .step_by(BLOCK)
        .collect::<Vec<_>>()
        .par_iter()
        .map(|&r0| a.slice(s![r0..(r0 + BLOCK).min(a.nrows()), ..]).dot(&b.t()))
        .collect();
    ndarray::concatenate(
        Axis(0),
        &blocks.iter().map(|b| b.view()).collect::<Vec<_>>(),
    )
    .expect("same width")
}

/// `ρ` between every prefix of `eval` (rows) and every prefix of `train` (columns), [R_e, R_t],
/// by the expanded formula `1{y = ȳ} − π(ȳ|·) − π(y|·̄) + ⟨π, π̄⟩`.
pub fn token_overlap(
    u: ArrayView2<f64>,
    eval: &ResponsePrefixes,
    train: &ResponsePrefixes,
) -> Array2<f64> {
    let pe = prefix_distributions(u, &eval.states);
    let pt = prefix_distributions(u, &train.states);
    let mut rho = gram(&pe, &pt);
    for (r, mut row) in rho.rows_mut().into_iter().enumerate() {
        let y = eval.tokens[r];
        for (c, v) in row.iter_mut().enumerate() {
            let yb = train.tokens[c];
            let same = if y == yb { 1.0 } else { 0.0 };
            *v += (same - pe[[r, yb]]) - pt[[c, y]];
        }
    }
    rho
}

/// `ρ` from its definition `⟨e_y − π(·|h), e_ȳ − π(·|h̄)⟩` with explicit V-vectors (reference for tests).
pub fn token_overlap_explicit(
    u: ArrayView2<f64>,
    h: ndarray::ArrayView1<f64>,
    y: usize,
    hb: ndarray::ArrayView1<f64>,
    yb: usize,
) -> f64 {
    let mut p = u.dot(&h).to_vec();
    let mut q = u.dot(&hb).to_vec();
    softmax_in_place(&mut p);
    softmax_in_place(&mut q);
    (0..p.len())
        .map(|v| {
            ((if v == y { 1.0 } else { 0.0 }) - p[v]) * ((if v == yb { 1.0 } else { 0.0 }) - q[v])
        })
        .sum()
}

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
    fn of(values: impl Iterator<Item = f64>) -> Stats {
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

/// `ρ` reshaped for export: [n_e, 2, K_e, n_t, 2, K_t].
pub fn rho_tensor(
    rho: &Array2<f64>,
    eval_pairs: usize,
    ke: usize,
    train_pairs: usize,
    kt: usize,
) -> ndarray::Array6<f64> {
    ndarray::Array6::from_shape_vec(
        (eval_pairs, 2, ke, train_pairs, 2, kt),
        rho.iter().copied().collect(),
    )
    .expect("ρ has (2·ke·eval_pairs) × (2·kt·train_pairs) entries, row order (pair, side, k)")
}

/// The full `ρ` and velocity data of every eval split at one snapshot time.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Index into the trajectory (same for both models).
    pub index: usize,
    pub t: f64,
    pub splits: Vec<SplitDynamics>,
}

/// A simulation with its learning dynamics tracked at every observation time.
#[derive(Debug, Clone)]
pub struct DynamicsRun {
    pub simulation: crate::experiment::simulation::Simulation,
    /// Per observation: `(t, summaries of the eval splits)`.
    pub tracked: Vec<(f64, Vec<DynamicsSummary>)>,
    pub snapshots: Vec<Snapshot>,
}

/// Trajectory indices nearest (in `log t`; `t = 0` exactly) to the requested snapshot times.
fn snapshot_indices(times: &[f64], requested: &[f64], t_max: f64) -> Vec<usize> {
    let wanted: Vec<f64> = if requested.is_empty() {
        vec![0.0, 1.0, t_max]
    } else {
        requested.to_vec()
    };
    let mut idx: Vec<usize> = wanted
        .iter()
        .map(|&w| {
            let key = |t: f64| {
                if w == 0.0 || t == 0.0 {
                    if t == w {
                        0.0
                    } else {
                        f64::INFINITY
                    }
                } else {
                    (t.ln() - w.ln()).abs()
                }
            };
            (0..times.len())
                .min_by(|&a, &b| key(times[a]).total_cmp(&key(times[b])))
                .expect("observed")
        })
        .collect();
    idx.sort_unstable();
    idx.dedup();
    idx
}

/// Trains both models (as `simulate`) and measures `ρ` and the velocity decomposition on every
/// evaluation split at every observation time; full tensors at the snapshot times.
pub fn run(
    config: &crate::config::Config,
    progress: &mut dyn FnMut(&crate::experiment::observables::Observation),
) -> anyhow::Result<DynamicsRun> {
    use crate::experiment::simulation::{max_margin_for, run_model_with, ModelKind, Simulation};
    config.validate()?;
    let setup = crate::problem::synthetic::Setup::try_generate(config)?;
    let tau = config.eval.tie_tolerance;
    let beta = config.setup.beta;
    let ex_model = crate::problem::reward::ExplicitRm::new(&setup.train);
    let mut c_ex_at: Vec<Vec<f64>> = Vec::new();
    let explicit = run_model_with(
        ModelKind::Explicit,
        config,
        &setup,
        max_margin_for(ModelKind::Explicit, &setup, tau),
        &mut |o, theta| {
            let mut m = vec![0.0; setup.train.len()];
            crate::problem::reward::MarginModel::margins(&ex_model, theta, &mut m);
            c_ex_at.push(flow_weights(&m));
            progress(o);
            Ok(())
        },
    )?;
    let times: Vec<f64> = explicit.trajectory.iter().map(|o| o.t).collect();
    let snap = snapshot_indices(&times, &config.dynamics.snapshot_times, config.train.t_max);
    let im_model = crate::problem::reward::ImplicitRm::new(
        &setup.train,
        setup.unembedding_init.full().view(),
        beta,
        crate::config::GradientPath::Full,
    );
    let train_side = TrainingSide::new(&setup.train);
    let eval_prefixes: Vec<ResponsePrefixes> =
        setup.evals.iter().map(ResponsePrefixes::new).collect();
    let (v, d) = (setup.vocab_size(), setup.dim());
    let mut tracked = Vec::new();
    let mut snapshots = Vec::new();
    let mut index = 0usize;
    let implicit = run_model_with(
        ModelKind::Implicit,
        config,
        &setup,
        max_margin_for(ModelKind::Implicit, &setup, tau),
        &mut |o, theta| {
            let mut m = vec![0.0; setup.train.len()];
            im_model.faithful_margins(theta, &mut m);
            let c_im = flow_weights(&m);
            let u = ArrayView2::from_shape((v, d), theta)?;
            let splits: Vec<SplitDynamics> = setup
                .evals
                .iter()
                .zip(&eval_prefixes)
                .map(|(e, ep)| split_dynamics(u, e, ep, &train_side, &c_im, &c_ex_at[index], beta))
                .collect();
            tracked.push((o.t, splits.iter().map(|s| s.summary.clone()).collect()));
            if snap.contains(&index) {
                snapshots.push(Snapshot {
                    index,
                    t: o.t,
                    splits,
                });
            }
            index += 1;
            progress(o);
            Ok(())
        },
    )?;
    Ok(DynamicsRun {
        simulation: Simulation::new(config.clone(), setup, explicit, implicit)?,
        tracked,
        snapshots,
    })
}

/// Numerical checks of MATH.md §3 on one setup (used by `verify` and the tests).
#[derive(Debug, Clone, Serialize)]
pub struct DynamicsChecks {
    /// Time at which the checks are made (both models trained by gradient flow up to it).
    pub t: f64,
    /// `max |ρ_expanded − ρ_explicit|` over a block of (eval prefix, train prefix) pairs.
    pub rho_identity_error: f64,
    /// `max |ρ|` over all entries of the seen and unseen splits (theory: ≤ 2).
    pub rho_max_abs: f64,
    /// `max_j |dm_j/dt (formula) − central difference along the integrated flow| / max_j |dm_j/dt|`, IM-RM.
    pub imrm_velocity_vs_flow: f64,
    /// The same for the EX-RM.
    pub exrm_velocity_vs_flow: f64,
    /// `err(η)/err(η/2)` for `err(η) = max |r(θ − η∇L) − r(θ) − η dr/dt|` over the seen split's
    /// responses, IM-RM, η = 1e-2.
    pub gd_error_ratio: f64,
    /// `err(η)` at η = 1e-2 (the ratio is meaningful only above rounding, ~1e-13 here).
    pub gd_error: f64,
    /// `K = 1`: `max_j |v(x_j, y_j⁺) − v(x_j, y_j⁻)| / max |v|` for the reward velocities of the two
    /// unseen responses of each unseen pair (theory: 0); NaN for `K > 1`.
    pub unseen_velocity_gap: f64,
}

/// Runs the §3 checks at time `t` (flow from the setup's initialisation).
pub fn dynamics_checks(config: &Config, setup: &Setup, t: f64) -> anyhow::Result<DynamicsChecks> {
    let beta = config.setup.beta;
    let flowed = FlowedModels::new(config, setup, t)?;
    let (v, d) = (setup.vocab_size(), setup.dim());
    let u = ArrayView2::from_shape((v, d), flowed.theta_im.as_slice())?;
    let c_im = flow_weights(&margins(&flowed.im, &flowed.theta_im));
    let c_ex = flow_weights(&margins(&flowed.ex, &flowed.theta_ex));
    let train_side = TrainingSide::new(&setup.train);
    let split = |name: &str| {
        setup
            .evals
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("{name} split"))
    };
    let (seen, unseen) = (split("seen"), split("unseen"));
    let ep = ResponsePrefixes::new(seen);
    let dyn_seen = split_dynamics(u, seen, &ep, &train_side, &c_im, &c_ex, beta);
    let dyn_unseen = split_dynamics(
        u,
        unseen,
        &ResponsePrefixes::new(unseen),
        &train_side,
        &c_im,
        &c_ex,
        beta,
    );
    let (rho_identity_error, rho_max_abs) =
        rho_checks(u, &ep, &train_side.prefixes, &dyn_seen, &dyn_unseen);
    let im_seen = ImplicitRm::new(
        seen,
        setup.unembedding_init.full().view(),
        beta,
        GradientPath::Full,
    );
    let ex_seen = ExplicitRm::new(seen);
    let h = 1e-4 * t.max(1.0);
    let pred_im = margin_velocity(&dyn_seen.velocity.imrm_response);
    let pred_ex = margin_velocity(&dyn_seen.velocity.exrm_response);
    let imrm_velocity_vs_flow = relative_error(
        &pred_im,
        &flow_difference(&flowed.im, &flowed.theta_im, &im_seen, h)?,
    );
    let exrm_velocity_vs_flow = relative_error(
        &pred_ex,
        &flow_difference(&flowed.ex, &flowed.theta_ex, &ex_seen, h)?,
    );
    let (gd_error, gd_error_ratio) = gd_first_order(&flowed, &im_seen, &dyn_seen);
    let unseen_velocity_gap = if setup.config.response_length == 1 {
        unseen_velocity_gap(&dyn_unseen, unseen.len())
    } else {
        f64::NAN
    };
    Ok(DynamicsChecks {
        t,
        rho_identity_error,
        rho_max_abs,
        imrm_velocity_vs_flow,
        exrm_velocity_vs_flow,
        gd_error_ratio,
        gd_error,
        unseen_velocity_gap,
    })
}

/// Both reward models on the full-vocabulary path, integrated by gradient flow to `t`.
struct FlowedModels {
    im: ImplicitRm,
    ex: ExplicitRm,
    theta_im: Vec<f64>,
    theta_ex: Vec<f64>,
}

impl FlowedModels {
    fn new(config: &Config, setup: &Setup, t: f64) -> anyhow::Result<FlowedModels> {
        let mut tc = config.train.clone();
        tc.optimizer = Optimizer::Flow;
        tc.imrm_gradient = GradientPath::Full;
        tc.t_max = t;
        tc.first_observation = t.min(1e-2);
        let im = ImplicitRm::new(
            &setup.train,
            setup.unembedding_init.full().view(),
            config.setup.beta,
            GradientPath::Full,
        );
        let ex = ExplicitRm::new(&setup.train);
        let u0: Vec<f64> = setup.unembedding_init.full().iter().copied().collect();
        let theta_im = train(&im, &u0, &tc, "IM-RM", &mut |_, _, _| Ok(()))?.theta;
        let theta_ex = train(
            &ex,
            &setup.head_init.to_vec(),
            &tc,
            "EX-RM",
            &mut |_, _, _| Ok(()),
        )?
        .theta;
        Ok(FlowedModels {
            im,
            ex,
            theta_im,
            theta_ex,
        })
    }
}

/// The margins of `m` at `theta`.
fn margins(m: &dyn MarginModel, theta: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; m.n_pairs()];
    m.margins(theta, &mut out);
    out
}

/// `ρ`: the largest gap between the expanded formula and the explicit V-vectors on a block of
/// the seen split (24 × 48 prefix pairs), and `max |ρ|` over the seen and unseen splits.
fn rho_checks(
    u: ArrayView2<f64>,
    ep: &ResponsePrefixes,
    train_prefixes: &ResponsePrefixes,
    dyn_seen: &SplitDynamics,
    dyn_unseen: &SplitDynamics,
) -> (f64, f64) {
    let mut rho_identity_error = 0.0f64;
    for r in 0..ep.tokens.len().min(24) {
        for c in 0..train_prefixes.tokens.len().min(48) {
            let explicit = token_overlap_explicit(
                u,
                ep.states.row(r),
                ep.tokens[r],
                train_prefixes.states.row(c),
                train_prefixes.tokens[c],
            );
            rho_identity_error = rho_identity_error.max((explicit - dyn_seen.rho[[r, c]]).abs());
        }
    }
    let rho_max_abs = dyn_seen
        .rho
        .iter()
        .chain(dyn_unseen.rho.iter())
        .fold(0.0f64, |a, x| a.max(x.abs()));
    (rho_identity_error, rho_max_abs)
}

/// The margin velocity of each evaluation pair: the per-response velocities summed over the
/// training examples' contributions.
fn margin_velocity(response: &Array2<f64>) -> Vec<f64> {
    VelocityDecomposition::margin(response)
        .sum_axis(Axis(1))
        .to_vec()
}

/// `dm/dt` of `eval_model`'s margins along the flow of `m` from `theta`, by a central difference
/// of step `h` (both sides integrated to `rtol = 1e-13`).
fn flow_difference(
    m: &dyn MarginModel,
    theta: &[f64],
    eval_model: &dyn MarginModel,
    h: f64,
) -> anyhow::Result<Vec<f64>> {
    let n = m.n_pairs() as f64;
    let opts = OdeOptions {
        rtol: 1e-13,
        atol: 1e-15,
        max_steps: 100_000,
        fixed_step: None,
        min_step: 0.0,
        dense_output: false,
    };
    let mut scratch = vec![0.0; m.n_pairs()];
    let mut ends = Vec::new();
    for sign in [1.0, -1.0] {
        let mut end = theta.to_vec();
        integrate(
            |_, th, dth| {
                m.margins_and_pullback(th, &|mm| sign * sigmoid(-mm) / n, &mut scratch, dth);
                Ok(())
            },
            0.0,
            theta,
            &[h],
            &opts,
            |_, th, _| {
                end.copy_from_slice(th);
                Ok(())
            },
        )?;
        ends.push(margins(eval_model, &end));
    }
    Ok(ends[0]
        .iter()
        .zip(&ends[1])
        .map(|(a, b)| (a - b) / (2.0 * h))
        .collect())
}

/// `max |pred − got| / max |pred|`.
fn relative_error(pred: &[f64], got: &[f64]) -> f64 {
    let scale = pred
        .iter()
        .fold(0.0f64, |a, x| a.max(x.abs()))
        .max(f64::MIN_POSITIVE);
    pred.iter()
        .zip(got)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
        / scale
}

/// One GD step: the first-order prediction of the seen split's rewards (margins are linear in
/// `U` for `K = 1`, rewards are not: the normalisers move). Returns `err(η)` at `η = 1e-2` and
/// `err(η)/err(η/2)` (≈ 4 for a second-order remainder).
fn gd_first_order(
    flowed: &FlowedModels,
    im_seen: &ImplicitRm,
    dyn_seen: &SplitDynamics,
) -> (f64, f64) {
    let theta_im = &flowed.theta_im;
    let mut grad = vec![0.0; theta_im.len()];
    loss_and_gradient(&flowed.im, theta_im, &mut grad);
    let flat =
        |r: Vec<(f64, f64)>| -> Vec<f64> { r.into_iter().flat_map(|(a, b)| [a, b]).collect() };
    let r0 = flat(im_seen.rewards(theta_im));
    let pred_rewards = dyn_seen.velocity.imrm_response.sum_axis(Axis(1));
    let gd_err = |eta: f64| {
        let th: Vec<f64> = theta_im
            .iter()
            .zip(&grad)
            .map(|(a, g)| a - eta * g)
            .collect();
        flat(im_seen.rewards(&th))
            .iter()
            .zip(&r0)
            .zip(&pred_rewards)
            .map(|((r1, r0), v)| (r1 - r0 - eta * v).abs())
            .fold(0.0, f64::max)
    };
    let gd_error = gd_err(1e-2);
    (gd_error, gd_error / gd_err(5e-3))
}

/// `K = 1`: `max_j |v(x_j, y_j⁺) − v(x_j, y_j⁻)| / max |v|` over the unseen pairs' reward
/// velocities (theory: 0).
fn unseen_velocity_gap(dyn_unseen: &SplitDynamics, pairs: usize) -> f64 {
    let r = &dyn_unseen.velocity.imrm_response.sum_axis(Axis(1));
    let scale = r
        .iter()
        .fold(0.0f64, |a, x| a.max(x.abs()))
        .max(f64::MIN_POSITIVE);
    (0..pairs)
        .map(|j| (r[2 * j] - r[2 * j + 1]).abs())
        .fold(0.0, f64::max)
        / scale
}
