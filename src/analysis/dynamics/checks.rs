//! The §3 identities checked numerically (`verify`'s `3.*` rows): `ρ` expanded vs explicit, its
//! bound, the velocity formulas against a central difference along the flow, a GD step's
//! first-order prediction, and equal velocities of the two unseen responses of a pair.

use super::overlap::{token_overlap_explicit, ResponsePrefixes};
use super::velocity::{
    flow_weights, split_dynamics, SplitDynamics, TrainingSide, VelocityDecomposition,
};
use crate::config::{Config, GradientPath, Optimizer};
use crate::numerics::sigmoid;
use crate::problem::reward::{loss_and_gradient, ExplicitRm, ImplicitRm, MarginModel};
use crate::problem::synthetic::Setup;
use crate::solve::ode::{integrate, OdeOptions};
use crate::solve::training::train;
use ndarray::{Array2, ArrayView2, Axis};
use serde::Serialize;

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
pub(super) struct FlowedModels {
    pub(super) im: ImplicitRm,
    pub(super) ex: ExplicitRm,
    pub(super) theta_im: Vec<f64>,
    pub(super) theta_ex: Vec<f64>,
}

impl FlowedModels {
    pub(super) fn new(config: &Config, setup: &Setup, t: f64) -> anyhow::Result<FlowedModels> {
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
pub(super) fn margins(m: &dyn MarginModel, theta: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; m.n_pairs()];
    m.margins(theta, &mut out);
    out
}

/// `ρ`: the largest gap between the expanded formula and the explicit V-vectors on a block of
/// the seen split (24 × 48 prefix pairs), and `max |ρ|` over the seen and unseen splits.
pub(super) fn rho_checks(
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
pub(super) fn margin_velocity(response: &Array2<f64>) -> Vec<f64> {
    VelocityDecomposition::margin(response)
        .sum_axis(Axis(1))
        .to_vec()
}

/// `dm/dt` of `eval_model`'s margins along the flow of `m` from `theta`, by a central difference
/// of step `h` (both sides integrated to `rtol = 1e-13`).
pub(super) fn flow_difference(
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
pub(super) fn relative_error(pred: &[f64], got: &[f64]) -> f64 {
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
pub(super) fn gd_first_order(
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
pub(super) fn unseen_velocity_gap(dyn_unseen: &SplitDynamics, pairs: usize) -> f64 {
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
