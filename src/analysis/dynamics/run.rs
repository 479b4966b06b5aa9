//! `rmflow dynamics`: a simulation observed with the §3 quantities at every observation, and
//! `ρ` tensors at the requested snapshot times.

use super::overlap::ResponsePrefixes;
use super::velocity::{flow_weights, split_dynamics, DynamicsSummary, SplitDynamics, TrainingSide};
use ndarray::ArrayView2;

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
pub(super) fn snapshot_indices(times: &[f64], requested: &[f64], t_max: f64) -> Vec<usize> {
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
