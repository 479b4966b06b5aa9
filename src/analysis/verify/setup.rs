//! All claims on one configuration: the runs verify trains, and the rows built from them.

use super::claim::{Bound, Claim};
use super::dynamics::{claims_dynamics, DYNAMICS_CLAIMS};
use super::options::{Fault, VerifyOptions};
use super::residual::residual_rows;
use super::theorem2a::{
    claims_2a, dual_unseen_claim, full_vocabulary_skips, unembedding_gap, PATH_AGREEMENT_BOUND,
};
use super::theorem2b::{claims_2b, qp_claim, qp_claims};
use crate::config::{Config, GradientPath, Optimizer};
use crate::experiment::observables::Observation;
use crate::experiment::simulation::{
    max_margin_for, run_model, MaxMarginResult, ModelKind, ModelRun,
};
use crate::problem::synthetic::Setup;
use crate::solve::max_margin::MaxMarginError;
use anyhow::Result;
use rayon::prelude::*;

/// Jobs of [`verify_setup`] reported to its progress callback (seven trainings, the §3 checks and
/// the residual flow).
pub const SETUP_JOBS: u64 = 9;

/// Horizon of the faithful full-softmax IM-RM flow when the IM-RM data is certified not
/// separable: the flow then relaxes to a finite minimiser, turns stiff, and an explicit
/// integrator needs a number of steps that grows like `t` (79 249 steps to `t = 1e6` on a
/// 2-dimensional example), each costing `O(N·V·D)` on this path.
pub const NON_SEPARABLE_FAITHFUL_T_MAX: f64 = 1e3;

/// All claims on one configuration; `on_job` is called as each of the [`SETUP_JOBS`] finishes.
///
/// Hypotheses gate the rows: Theorem 2(a) and its companions need single-token responses
/// (`K = 1`); outside that they are SKIP with the reason and the IM-RM trainings are not run.
/// 2(b) needs the EX-RM data to be linearly separable (certified by the QP).
pub fn verify_setup(
    config: &Config,
    opts: &VerifyOptions,
    on_job: &(dyn Fn(&str) + Sync),
) -> Result<Vec<Claim>> {
    let setup = Setup::try_generate(config)?;
    if config.setup.response_length != 1 {
        return verify_multi_token(config, &setup, on_job);
    }
    opts.check(config)?;
    let tau = config.eval.tie_tolerance;
    let separators = Separators {
        exrm: max_margin_for(ModelKind::Explicit, &setup, tau),
        imrm: max_margin_for(ModelKind::Implicit, &setup, tau),
    };
    let t_faithful = faithful_horizon(config, opts, separators.imrm.is_ok());
    let variants = Variants::new(config, opts, t_faithful);
    let jobs = run_jobs(opts.full_vocabulary, on_job);
    let (runs, (dynamics, residual)) = rayon::join(
        || train_runs(&jobs, config, &setup, &variants, &separators, on_job),
        || {
            rayon::join(
                || {
                    if !opts.full_vocabulary {
                        return Ok(vec![]);
                    }
                    let r = claims_dynamics(config, &setup);
                    on_job("§3 dynamics checks");
                    r
                },
                || {
                    let r = residual_rows(config, &setup, &separators.exrm, opts);
                    on_job("EX-RM residual flow");
                    r
                },
            )
        },
    );
    let runs = runs?;
    let (dynamics, residual) = (dynamics?, residual?);
    let mut claims = imrm_claims(config, opts, &setup, &runs, t_faithful);
    claims.extend(claims_2b(
        &runs.exrm,
        &runs.imrm,
        &setup.train.hidden_differences(),
        config.train.t_max,
    ));
    claims.extend(dual_unseen_claim(
        &setup,
        &separators.imrm,
        config.setup.beta,
    ));
    claims.extend(residual);
    if runs.full.is_some() {
        claims.extend(dynamics);
    } else {
        claims.extend(full_vocabulary_skips(&[], &DYNAMICS_CLAIMS));
    }
    claims.extend(qp_claims(&separators.exrm, &separators.imrm));
    Ok(claims)
}

/// The max-margin separators of both models on the training pairs (or why there is none).
struct Separators {
    exrm: std::result::Result<MaxMarginResult, MaxMarginError>,
    imrm: std::result::Result<MaxMarginResult, MaxMarginError>,
}

/// Horizon of the faithful full-softmax IM-RM flow and its seen-row companion: the configured
/// horizon capped at `opts.faithful_t_max`, and at [`NON_SEPARABLE_FAITHFUL_T_MAX`] when the
/// IM-RM data is not separable.
fn faithful_horizon(config: &Config, opts: &VerifyOptions, im_separable: bool) -> f64 {
    let t = opts.faithful_t_max.min(config.train.t_max);
    if im_separable {
        t
    } else {
        t.min(NON_SEPARABLE_FAITHFUL_T_MAX)
    }
}

/// The configs of the IM-RM runs beside the main ones.
struct Variants {
    faithful: Config,
    gd: Config,
    adam: Config,
    adamw: Config,
    seen_rows: Config,
}

impl Variants {
    fn new(config: &Config, opts: &VerifyOptions, t_faithful: f64) -> Variants {
        let variant = |optimizer: Optimizer, path: GradientPath, t_max: f64, lr: f64| {
            let mut c = config.clone();
            c.train.optimizer = optimizer;
            c.train.imrm_gradient = path;
            c.train.t_max = t_max;
            c.train.lr = lr;
            c
        };
        let discrete_t = |lr: f64| opts.discrete_steps as f64 * lr;
        let (gd_lr, adam_lr, flow_lr) = (opts.gd_lr, opts.adam_lr, config.train.lr);
        Variants {
            faithful: variant(Optimizer::Flow, GradientPath::Full, t_faithful, flow_lr),
            gd: variant(Optimizer::Gd, GradientPath::Full, discrete_t(gd_lr), gd_lr),
            adam: variant(
                Optimizer::Adam,
                GradientPath::Full,
                discrete_t(adam_lr),
                adam_lr,
            ),
            adamw: variant(
                Optimizer::Adamw,
                GradientPath::Full,
                discrete_t(adam_lr),
                adam_lr,
            ),
            seen_rows: variant(Optimizer::Flow, GradientPath::SeenRows, t_faithful, flow_lr),
        }
    }
}

/// One training of [`verify_setup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    /// The IM-RM as configured.
    Imrm,
    /// The EX-RM as configured.
    Exrm,
    /// The IM-RM flow on the full-softmax gradient, to the faithful horizon.
    Faithful,
    Gd,
    Adam,
    Adamw,
    /// The IM-RM flow on the seen-row gradient, to the faithful horizon (the companion of
    /// `Faithful`).
    SeenRows,
}

impl Run {
    /// Its name in progress messages.
    fn label(self) -> &'static str {
        match self {
            Run::Imrm => "IM-RM flow",
            Run::Exrm => "EX-RM flow",
            Run::Faithful => "IM-RM full-softmax flow",
            Run::Gd => "IM-RM GD",
            Run::Adam => "IM-RM Adam",
            Run::Adamw => "IM-RM AdamW",
            Run::SeenRows => "IM-RM sparse flow",
        }
    }
}

/// The runs to train, in the order they are scheduled; without the full vocabulary only the
/// main two, and the others are reported skipped to `on_job` at once.
fn run_jobs(full_vocabulary: bool, on_job: &(dyn Fn(&str) + Sync)) -> Vec<Run> {
    if full_vocabulary {
        return vec![
            Run::Faithful,
            Run::Gd,
            Run::Adam,
            Run::Adamw,
            Run::Imrm,
            Run::Exrm,
            Run::SeenRows,
        ];
    }
    for run in [Run::Faithful, Run::Gd, Run::Adam, Run::Adamw, Run::SeenRows] {
        on_job(&format!(
            "{} skipped (without the full vocabulary)",
            run.label()
        ));
    }
    on_job("§3 dynamics checks skipped (without the full vocabulary)");
    vec![Run::Imrm, Run::Exrm]
}

/// The trained runs, by name.
struct Runs {
    imrm: ModelRun,
    exrm: ModelRun,
    /// The full-vocabulary runs, when run.
    full: Option<FullRuns>,
}

/// The runs that hold the full `V × D` unembedding.
struct FullRuns {
    faithful: ModelRun,
    gd: ModelRun,
    adam: ModelRun,
    adamw: ModelRun,
    seen_rows: ModelRun,
}

/// Trains every job in parallel (each an independent run; results collected in job order, so
/// nothing depends on the thread count) and names the results.
fn train_runs(
    jobs: &[Run],
    config: &Config,
    setup: &Setup,
    variants: &Variants,
    separators: &Separators,
    on_job: &(dyn Fn(&str) + Sync),
) -> Result<Runs> {
    let mut trained: Vec<(Run, ModelRun)> = jobs
        .par_iter()
        .map(|&job| {
            let no_progress = &mut |_: &Observation| {};
            let (kind, c, mm) = match job {
                Run::Exrm => (ModelKind::Explicit, config, &separators.exrm),
                Run::Imrm => (ModelKind::Implicit, config, &separators.imrm),
                Run::Faithful => (ModelKind::Implicit, &variants.faithful, &separators.imrm),
                Run::Gd => (ModelKind::Implicit, &variants.gd, &separators.imrm),
                Run::Adam => (ModelKind::Implicit, &variants.adam, &separators.imrm),
                Run::Adamw => (ModelKind::Implicit, &variants.adamw, &separators.imrm),
                Run::SeenRows => (ModelKind::Implicit, &variants.seen_rows, &separators.imrm),
            };
            let r = run_model(kind, c, setup, mm.clone(), no_progress);
            on_job(job.label());
            r.map(|r| (job, r))
        })
        .collect::<Result<_>>()?;
    let mut take = |run: Run| -> Option<ModelRun> {
        let at = trained.iter().position(|(r, _)| *r == run)?;
        Some(trained.swap_remove(at).1)
    };
    let full = take(Run::Faithful).map(|faithful| FullRuns {
        faithful,
        gd: take(Run::Gd).expect("scheduled with the full vocabulary"),
        adam: take(Run::Adam).expect("scheduled with the full vocabulary"),
        adamw: take(Run::Adamw).expect("scheduled with the full vocabulary"),
        seen_rows: take(Run::SeenRows).expect("scheduled with the full vocabulary"),
    });
    Ok(Runs {
        imrm: take(Run::Imrm).expect("always scheduled"),
        exrm: take(Run::Exrm).expect("always scheduled"),
        full,
    })
}

/// The Theorem 2(a) rows: the faithful flow, the configured IM-RM flow, the discrete
/// optimizers and the gradient paths' agreement.
fn imrm_claims(
    config: &Config,
    opts: &VerifyOptions,
    setup: &Setup,
    runs: &Runs,
    t_faithful: f64,
) -> Vec<Claim> {
    let tau = config.eval.tie_tolerance;
    let mut claims = Vec::new();
    match &runs.full {
        Some(r) => claims.extend(claims_2a(
            "flow_full",
            &format!(
                "IM-RM flow, full-softmax gradient, t ≤ {t_faithful:.0e}{}",
                if runs.imrm.max_margin.is_ok() {
                    ""
                } else {
                    " (IM-RM data not separable: stiff beyond, horizon capped)"
                }
            ),
            &r.faithful,
            tau,
            true,
            true,
        )),
        None => claims.extend(full_vocabulary_skips(&["flow_full"], &[])),
    }
    claims.extend(configured_flow_claims(config, runs));
    match &runs.full {
        Some(r) => claims.extend(discrete_claims(config, opts, setup, r, t_faithful)),
        None => claims.extend(full_vocabulary_skips(
            &["gd", "adam", "adamw"],
            &["companion.paths_agree"],
        )),
    }
    claims
}

/// `2a.flow.*`: the IM-RM flow as configured (its drift row is SKIP for the seen-row IM-RM
/// without the full vocabulary, whose state has no unseen rows).
fn configured_flow_claims(config: &Config, runs: &Runs) -> Vec<Claim> {
    let path = match config.train.imrm_gradient {
        GradientPath::Full => "full",
        GradientPath::SeenRows => "sparse",
    };
    let seen_row_drift = "seen-row IM-RM: rows outside the training tokens are not part of its state (U(0) by construction); measured on the full-vocabulary runs";
    claims_2a(
        "flow",
        &format!(
            "IM-RM flow, {path} gradient, t ≤ {:.0e}",
            config.train.t_max
        ),
        &runs.imrm,
        config.eval.tie_tolerance,
        true,
        true,
    )
    .into_iter()
    .map(|c| {
        if runs.full.is_none() && c.id == "2a.flow.drift" {
            Claim::skipped(&c.id, seen_row_drift)
        } else {
            c
        }
    })
    .collect()
}

/// `2a.gd.*`, `2a.adam.*`, `2a.adamw.*` and `companion.paths_agree`.
fn discrete_claims(
    config: &Config,
    opts: &VerifyOptions,
    setup: &Setup,
    r: &FullRuns,
    t_faithful: f64,
) -> Vec<Claim> {
    let tau = config.eval.tie_tolerance;
    let gd_checked = if opts.fault == Some(Fault::AdamwAsGd) {
        &r.adamw
    } else {
        &r.gd
    };
    let mut claims = claims_2a(
        "gd",
        &format!("IM-RM GD η = {}, {} steps", opts.gd_lr, opts.discrete_steps),
        gd_checked,
        tau,
        false,
        true,
    );
    claims.extend(claims_2a(
        "adam",
        &format!(
            "IM-RM Adam lr = {}, {} steps",
            opts.adam_lr, opts.discrete_steps
        ),
        &r.adam,
        tau,
        false,
        true,
    ));
    claims.extend(claims_2a(
        "adamw",
        &format!(
            "IM-RM AdamW lr = {}, wd = {} (expected counter-example: drift > 0)",
            opts.adam_lr, config.train.weight_decay
        ),
        &r.adamw,
        tau,
        false,
        false,
    ));
    let scale = r
        .faithful
        .final_params
        .iter()
        .zip(&r.faithful.initial)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let gap = unembedding_gap(setup, &r.faithful, &r.seen_rows);
    claims.push(Claim::judged(
        "companion.paths_agree",
        &format!("IM-RM full vs sparse gradient: max|U_full − U_sparse| / max|ΔU| at t = {t_faithful:.0e}"),
        gap / scale.max(f64::MIN_POSITIVE),
        Bound::AtMost(PATH_AGREEMENT_BOUND),
    ));
    claims
}

/// `K > 1`: Theorem 2 covers single-token responses only. The 2a rows, the IM-RM companions and
/// the IM-RM QP are SKIP with the reason; the EX-RM is still linear in `u`, so 2b is judged (when
/// its data is separable), and the §3 identities that hold for any `K` are checked.
pub(super) fn verify_multi_token(
    config: &Config,
    setup: &Setup,
    on_job: &(dyn Fn(&str) + Sync),
) -> Result<Vec<Claim>> {
    let k = config.setup.response_length;
    let tau = config.eval.tie_tolerance;
    let why =
        format!("K = {k} tokens per response: Theorem 2(a) holds for single-token responses only");
    let mut claims: Vec<Claim> = SINGLE_TOKEN_CLAIMS
        .iter()
        .map(|id| Claim::skipped(id, &why))
        .collect();
    let mm_ex = max_margin_for(ModelKind::Explicit, setup, tau);
    let (ex, dynamics) = rayon::join(
        || {
            let r = run_model(
                ModelKind::Explicit,
                config,
                setup,
                mm_ex.clone(),
                &mut |_: &Observation| {},
            );
            on_job("EX-RM flow");
            r
        },
        || {
            let r = claims_dynamics(config, setup);
            on_job("§3 dynamics checks");
            r
        },
    );
    let ex = ex?;
    let residual = residual_rows(config, setup, &mm_ex, &VerifyOptions::default());
    on_job("EX-RM residual flow");
    for _ in 0..SETUP_JOBS - 3 {
        on_job("IM-RM runs skipped (K > 1)");
    }
    claims.extend(
        claims_2b(
            &ex,
            &untrained_imrm(&why),
            &setup.train.hidden_differences(),
            config.train.t_max,
        )
        .into_iter()
        .map(|c| {
            if c.id == "companion.imrm_direction" {
                Claim::skipped(&c.id, &why)
            } else {
                c
            }
        }),
    );
    claims.push(Claim::skipped("companion.dual_unseen", &why));
    claims.extend(residual?);
    claims.extend(dynamics?);
    claims.push(qp_claim("qp.exrm", "EX-RM", &mm_ex));
    claims.push(Claim::skipped("qp.imrm", &why));
    Ok(claims)
}

/// The Theorem 2(a) rows, SKIP outside single-token responses.
const SINGLE_TOKEN_CLAIMS: [&str; 13] = [
    "2a.flow_full.drift",
    "2a.flow_full.unseen_margin",
    "2a.flow_full.unseen_accuracy",
    "2a.flow.drift",
    "2a.flow.unseen_margin",
    "2a.flow.unseen_accuracy",
    "2a.gd.drift",
    "2a.gd.unseen_accuracy",
    "2a.adam.drift",
    "2a.adam.unseen_accuracy",
    "2a.adamw.drift",
    "2a.adamw.unseen_accuracy",
    "companion.paths_agree",
];

/// An IM-RM that was not trained (for the rows of [`claims_2b`] that read it: SKIP).
fn untrained_imrm(why: &str) -> ModelRun {
    ModelRun {
        kind: ModelKind::Implicit,
        rows: None,
        initial: vec![],
        final_params: vec![],
        trajectory: vec![],
        steps: 0,
        ode: None,
        screening: None,
        max_margin: Err(MaxMarginError::Setup {
            space: "unembedding feature space of the IM-RM",
            message: why.to_string(),
        }),
        rewards: vec![],
    }
}
