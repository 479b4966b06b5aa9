//! Numerical verification of Theorem 2 and its companion facts (MATH.md §4), claim by claim.
//!
//! Each [`Claim`] has a measured value, a bound stated before the run, and a status; `verify`
//! fails (non-zero exit) if any claim fails. The proof and the claim ↔ test map are in
//! `proofs/theorem2.md`.

use crate::config::{Config, GradientPath, Optimizer};
use crate::experiment::observables::Observation;
use crate::experiment::simulation::{
    max_margin_for, run_model, MaxMarginResult, ModelKind, ModelRun,
};
use crate::problem::synthetic::Setup;
use crate::solve::max_margin::{implicit_dual_prediction, CERTIFICATE_TOLERANCE};
use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

/// Threshold on `1 − cos(θ(t_max), θ*)` for both models (stated a priori; see proofs/theorem2.md).
pub const DIRECTION_GAP_BOUND: f64 = 1e-2;
/// Threshold on `|⟨u(t), û*⟩/ln t − ‖u*‖| / ‖u*‖` at `t_max`.
pub const RATE_BOUND: f64 = 5e-2;
/// Full vs sparse IM-RM gradient paths: `max|U_full − U_sparse| / max|ΔU|` at the common horizon
/// (both integrated with the same adaptive tolerances, so they may differ by ~rtol).
pub const PATH_AGREEMENT_BOUND: f64 = 1e-6;
/// EX-RM loss at `t_max`.
pub const FINAL_LOSS_BOUND: f64 = 1e-6;
/// Shortest horizon for which the 2(b) bounds above were set (loss, direction, rate, residual,
/// accuracy of the max-margin separator): 2(b) is a statement about `t → ∞` and the direction
/// error decays like `1/ln t` (MATH.md §4), so at shorter horizons those rows are reported, not
/// judged (only the monotone loss, true at every horizon, is judged there).
pub const CONVERGENCE_HORIZON: f64 = 1e50;

/// Outcome of a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    /// Reported, not judged (e.g. the AdamW counter-example).
    Info,
    /// Not applicable (e.g. no separator exists for 2b).
    Skip,
}

/// The bound a measured value is held to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Bound {
    AtMost(f64),
    AtLeast(f64),
    /// Exactly this value (no tolerance).
    Exactly(f64),
    /// Within `[lo, hi]`.
    Between(f64, f64),
    /// Reported only.
    Report,
}

impl Bound {
    fn holds(self, x: f64) -> bool {
        match self {
            Bound::AtMost(b) => x <= b,
            Bound::AtLeast(b) => x >= b,
            Bound::Exactly(b) => x == b,
            Bound::Between(lo, hi) => x >= lo && x <= hi,
            Bound::Report => true,
        }
    }

    fn text(self) -> String {
        match self {
            Bound::AtMost(b) => format!("≤ {b:.0e}"),
            Bound::AtLeast(b) => format!("≥ {b:.0e}"),
            Bound::Exactly(b) => format!("= {b} exactly"),
            Bound::Between(lo, hi) => format!("in [{lo}, {hi}]"),
            Bound::Report => "(reported)".to_string(),
        }
    }

    /// Which of two measurements is worse under this bound.
    fn worse(self, a: f64, b: f64) -> f64 {
        match self {
            Bound::Between(lo, hi) => {
                let mid = 0.5 * (lo + hi);
                if (a - mid).abs() >= (b - mid).abs() {
                    a
                } else {
                    b
                }
            }
            Bound::AtLeast(_) => a.min(b),
            Bound::Exactly(v) => {
                if (a - v).abs() >= (b - v).abs() {
                    a
                } else {
                    b
                }
            }
            _ => a.max(b),
        }
    }
}

/// One verified claim.
#[derive(Debug, Clone, Serialize)]
pub struct Claim {
    /// Stable id, e.g. `2a.flow_full.drift` (named in proofs/theorem2.md).
    pub id: String,
    pub description: String,
    pub measured: f64,
    pub bound: Bound,
    pub status: Status,
}

impl Claim {
    fn judged(id: &str, description: &str, measured: f64, bound: Bound) -> Claim {
        let status = if matches!(bound, Bound::Report) {
            Status::Info
        } else if bound.holds(measured) {
            Status::Pass
        } else {
            Status::Fail
        };
        Claim {
            id: id.into(),
            description: description.into(),
            measured,
            bound,
            status,
        }
    }

    fn info(id: &str, description: &str, measured: f64) -> Claim {
        Claim {
            id: id.into(),
            description: description.into(),
            measured,
            bound: Bound::Report,
            status: Status::Info,
        }
    }

    fn skipped(id: &str, description: &str) -> Claim {
        Claim {
            id: id.into(),
            description: description.into(),
            measured: f64::NAN,
            bound: Bound::Report,
            status: Status::Skip,
        }
    }
}

/// A deliberately broken variant, to show that `verify` can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// Check claim 2a for "gradient descent" on a run that is really AdamW (weight decay moves
    /// unseen rows): 2a must FAIL.
    AdamwAsGd,
}

/// Settings of the verification runs besides the config.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Horizon of the faithful full-vocabulary flow (capped at `train.t_max`).
    pub faithful_t_max: f64,
    /// Steps of the GD, Adam and AdamW runs.
    pub discrete_steps: u64,
    /// Step size of the GD run (the Adam runs use `adam_lr`).
    pub gd_lr: f64,
    pub adam_lr: f64,
    pub fault: Option<Fault>,
    /// Horizon (`log10 t`) of the EX-RM residual check; `None` skips it.
    pub residual_horizon_log10: Option<f64>,
    /// Run the checks that hold the full `V × D` unembedding (faithful full-softmax flow, GD,
    /// Adam, AdamW, full-vs-sparse agreement, the §3 dynamics checks). `false`: only the checks
    /// whose cost does not grow with `V` (the seen-row IM-RM flow, the EX-RM flow, the QPs, the
    /// residual flow); the others are SKIP with the reason. Needs `train.imrm_gradient = "sparse"`.
    pub full_vocabulary: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            faithful_t_max: 1e8,
            discrete_steps: 200,
            gd_lr: 0.5,
            adam_lr: 1e-2,
            fault: None,
            residual_horizon_log10: Some(RESIDUAL_HORIZON_LOG10),
            full_vocabulary: true,
        }
    }
}

impl VerifyOptions {
    /// Lighter settings for the random trials: faithful flow to `1e6`, 100 discrete steps, no
    /// residual check to `1e10000` (the trials also observe one time per decade).
    pub fn for_trials(&self) -> VerifyOptions {
        VerifyOptions {
            faithful_t_max: self.faithful_t_max.min(1e6),
            discrete_steps: self.discrete_steps.min(100),
            residual_horizon_log10: None,
            ..self.clone()
        }
    }
}

/// `max_t f(o_t)`, NaN if any value is NaN (so a non-finite measurement can never pass).
fn max_over<'a>(
    traj: impl IntoIterator<Item = &'a Observation>,
    f: impl Fn(&Observation) -> f64,
) -> f64 {
    traj.into_iter().map(f).fold(0.0, |a, x| {
        if a.is_nan() || x.is_nan() {
            f64::NAN
        } else {
            a.max(x)
        }
    })
}

fn split<'a>(o: &'a Observation, name: &str) -> &'a crate::experiment::observables::SplitMetrics {
    o.splits
        .iter()
        .find(|s| s.split == name)
        .expect("split observed")
}

/// Claim 2a rows for one IM-RM run.
fn claims_2a(
    prefix: &str,
    what: &str,
    run: &ModelRun,
    tau: f64,
    with_margin: bool,
    judged: bool,
) -> Vec<Claim> {
    let drift = max_over(&run.trajectory, |o| o.unseen_row_drift.unwrap_or(f64::NAN));
    let acc = max_over(&run.trajectory, |o| {
        (split(o, "unseen").tie_aware_accuracy - 0.5).abs()
    });
    let mut out = Vec::new();
    let mk = |id: &str, d: String, x: f64, b: Bound| {
        if judged {
            Claim::judged(id, &d, x, b)
        } else {
            Claim::info(id, &d, x)
        }
    };
    out.push(mk(
        &format!("2a.{prefix}.drift"),
        format!("{what}: unseen-row drift max_t max_z∉T ‖U_z(t) − U_z(0)‖"),
        drift,
        Bound::Exactly(0.0),
    ));
    if with_margin {
        let margin = max_over(&run.trajectory, |o| split(o, "unseen").max_abs_margin);
        out.push(mk(
            &format!("2a.{prefix}.unseen_margin"),
            format!("{what}: max_t max |margin| on unseen pairs (τ = {tau:.0e})"),
            margin,
            Bound::AtMost(tau),
        ));
    }
    out.push(mk(
        &format!("2a.{prefix}.unseen_accuracy"),
        format!("{what}: max_t |tie-aware unseen accuracy − ½|"),
        acc,
        Bound::Exactly(0.0),
    ));
    out
}

/// Claim 2b rows for the EX-RM flow, and the IM-RM direction (companion).
/// `max |U_a − U_b|` over every entry of two IM-RM runs on `setup`, whichever rows each keeps
/// (rows a run does not keep are `U(0)`'s).
fn unembedding_gap(setup: &Setup, a: &ModelRun, b: &ModelRun) -> f64 {
    let d = setup.dim();
    let row = |run: &ModelRun, z: usize| -> Option<Vec<f64>> {
        match &run.rows {
            None => Some(run.final_params[z * d..(z + 1) * d].to_vec()),
            Some(rows) => rows
                .binary_search(&z)
                .ok()
                .map(|r| run.final_params[r * d..(r + 1) * d].to_vec()),
        }
    };
    let mut gap = 0.0f64;
    let mut initial = None;
    for z in 0..setup.vocab_size() {
        let (ra, rb) = (row(a, z), row(b, z));
        if ra.is_none() && rb.is_none() {
            continue;
        }
        let u0 = initial
            .get_or_insert_with(|| setup.unembedding_init.full())
            .row(z)
            .to_vec();
        let ra = ra.unwrap_or_else(|| u0.clone());
        let rb = rb.unwrap_or(u0);
        gap = ra
            .iter()
            .zip(&rb)
            .map(|(x, y)| (x - y).abs())
            .fold(gap, f64::max);
    }
    gap
}

fn claims_2b(
    ex: &ModelRun,
    im: &ModelRun,
    ex_features: &ndarray::Array2<f64>,
    t_max: f64,
) -> Vec<Claim> {
    let mut out = Vec::new();
    let last = ex.trajectory.last().expect("observed");
    // 2(b) is asymptotic: its bounds are judged from CONVERGENCE_HORIZON on, reported below it.
    let long = t_max >= CONVERGENCE_HORIZON;
    let horizon_note = if long {
        String::new()
    } else {
        format!(" [reported: t_max < {CONVERGENCE_HORIZON:.0e}, the horizon the bound is set for]")
    };
    let judge = |id: &str, d: &str, x: f64, b: Bound| {
        if long {
            Claim::judged(id, d, x, b)
        } else {
            Claim {
                bound: b,
                ..Claim::info(id, &format!("{d}{horizon_note}"), x)
            }
        }
    };
    let increase = ex
        .trajectory
        .windows(2)
        .map(|w| (w[1].loss - w[0].loss) / w[0].loss)
        .fold(f64::NEG_INFINITY, f64::max);
    out.push(Claim::judged(
        "2b.loss_monotone",
        "EX-RM largest relative loss increase between observations",
        increase,
        Bound::AtMost(0.0),
    ));
    let Ok(mm) = &ex.max_margin else {
        for id in [
            "2b.loss",
            "2b.direction",
            "2b.direction_decreasing",
            "2b.rate",
            "2b.residual_sublinear",
            "2b.accuracy",
        ] {
            out.push(Claim::skipped(
                id,
                "EX-RM data not separable: 2b does not apply",
            ));
        }
        return out;
    };
    out.push(judge(
        "2b.loss",
        &format!("EX-RM loss L(t_max = {t_max:.0e})"),
        last.loss,
        Bound::AtMost(FINAL_LOSS_BOUND),
    ));
    let conv: Vec<(f64, crate::experiment::observables::Convergence)> = ex
        .trajectory
        .iter()
        .filter_map(|o| o.convergence.map(|c| (o.t, c)))
        .collect();
    let c_last = conv.last().expect("observed").1;
    out.push(judge(
        "2b.direction",
        "EX-RM 1 − cos(u(t_max), u*)",
        c_last.direction_gap,
        Bound::AtMost(DIRECTION_GAP_BOUND),
    ));
    let late: Vec<&(f64, crate::experiment::observables::Convergence)> =
        conv.iter().filter(|(t, _)| *t >= 1e2).collect();
    let ratio = late
        .windows(2)
        .map(|w| w[1].1.direction_gap / w[0].1.direction_gap)
        .fold(0.0, f64::max);
    out.push(judge(
        "2b.direction_decreasing",
        "EX-RM max ratio of successive 1 − cos for t ≥ 1e2",
        ratio,
        Bound::AtMost(1.0),
    ));
    let rate_err = (c_last.projected_rate - mm.solution.norm).abs() / mm.solution.norm;
    out.push(judge(
        "2b.rate",
        "EX-RM |⟨u, û*⟩/ln t − ‖u*‖| / ‖u*‖ at t_max",
        rate_err,
        Bound::AtMost(RATE_BOUND),
    ));
    // ‖ρ(t)‖/ln t, ρ = u(t) − u* ln t, at the ends of five equal log-windows covering the last
    // half of the decades: a bounded ρ makes it decrease (the judged, finite-horizon consequence).
    let ln_max = t_max.ln();
    if ln_max > 2.0 * std::f64::consts::LN_10 {
        let at = |frac: f64| -> (f64, f64) {
            let target = ln_max * frac;
            let (t, c) = conv
                .iter()
                .min_by(|a, b| {
                    (a.0.ln() - target)
                        .abs()
                        .total_cmp(&(b.0.ln() - target).abs())
                })
                .expect("observed");
            (c.residual_norm, t.ln())
        };
        let r: Vec<(f64, f64)> = (0..=5).map(|k| at(0.5 + 0.1 * k as f64)).collect();
        let ratio = r
            .windows(2)
            .map(|w| (w[1].0 / w[1].1) / (w[0].0 / w[0].1))
            .fold(0.0, f64::max);
        out.push(judge(
            "2b.residual_sublinear",
            "EX-RM ‖u(t) − u* ln t‖/ln t at 6 log-spaced times of the last half: max ratio of successive values",
            ratio,
            Bound::AtMost(1.0),
        ));
        out.push(Claim::info(
            "2b.residual_growth",
            "EX-RM ‖u(t_max) − u* ln t_max‖ − ‖u(√t_max) − u* ln √t_max‖ (0 once bounded; see proofs/theorem2.md)",
            r[5].0 - r[0].0,
        ));
        out.push(Claim::info(
            "2b.residual",
            "EX-RM ‖u(t_max) − u* ln t_max‖",
            c_last.residual_norm,
        ));
        let z = ex_features;
        let margins = z.dot(&ndarray::ArrayView1::from(&mm.params));
        let gap = (0..margins.len())
            .filter(|i| !mm.solution.support.contains(i))
            .map(|i| margins[i] - 1.0)
            .fold(f64::INFINITY, f64::min);
        if gap.is_finite() {
            out.push(Claim::info(
                "2b.near_support_weight",
                &format!("t_max^(−δ): weight the nearest non-support pair (margin 1 + δ, δ = {gap:.2e}) still carries at t_max"),
                (-gap * ln_max).exp(),
            ));
        }
    } else {
        out.push(Claim::skipped(
            "2b.residual_sublinear",
            "t_max below 1e2: no late decades to compare",
        ));
    }
    let worst_acc = last
        .splits
        .iter()
        .zip(&mm.accuracy)
        .map(|(a, b)| (a.tie_aware_accuracy - b.tie_aware_accuracy).abs())
        .fold(0.0, f64::max);
    out.push(judge(
        "2b.accuracy",
        "EX-RM accuracy minus u*'s, max over splits (tie-aware)",
        worst_acc,
        Bound::Exactly(0.0),
    ));
    match (
        &im.max_margin,
        im.trajectory.last().and_then(|o| o.convergence),
    ) {
        (Ok(_), Some(c)) => out.push(judge(
            "companion.imrm_direction",
            "IM-RM 1 − cos(ΔU(t_max), ΔU*)",
            c.direction_gap,
            Bound::AtMost(DIRECTION_GAP_BOUND),
        )),
        _ => out.push(Claim::skipped(
            "companion.imrm_direction",
            "IM-RM features not separable",
        )),
    }
    out
}

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
    let tau = config.eval.tie_tolerance;
    let mm_ex = max_margin_for(ModelKind::Explicit, &setup, tau);
    let mm_im = max_margin_for(ModelKind::Implicit, &setup, tau);
    let im_separable = mm_im.is_ok();

    let variant = |optimizer: Optimizer, path: GradientPath, t_max: f64, lr: f64| {
        let mut c = config.clone();
        c.train.optimizer = optimizer;
        c.train.imrm_gradient = path;
        c.train.t_max = t_max;
        c.train.lr = lr;
        c
    };
    let t_faithful = if im_separable {
        opts.faithful_t_max.min(config.train.t_max)
    } else {
        opts.faithful_t_max
            .min(config.train.t_max)
            .min(NON_SEPARABLE_FAITHFUL_T_MAX)
    };
    let discrete_t = |lr: f64| opts.discrete_steps as f64 * lr;
    let gd = variant(
        Optimizer::Gd,
        GradientPath::Full,
        discrete_t(opts.gd_lr),
        opts.gd_lr,
    );
    let adam = variant(
        Optimizer::Adam,
        GradientPath::Full,
        discrete_t(opts.adam_lr),
        opts.adam_lr,
    );
    let adamw = variant(
        Optimizer::Adamw,
        GradientPath::Full,
        discrete_t(opts.adam_lr),
        opts.adam_lr,
    );
    let faithful = variant(
        Optimizer::Flow,
        GradientPath::Full,
        t_faithful,
        config.train.lr,
    );
    let cancelled = variant(
        Optimizer::Flow,
        GradientPath::Sparse,
        t_faithful,
        config.train.lr,
    );

    // The main runs and the IM-RM variants on the two cores.
    // Every run is an independent job (results collected in a fixed order, so the report does
    // not depend on the thread count); the dynamics checks run beside them.
    enum Job<'a> {
        Main(ModelKind),
        Variant(&'a Config),
    }
    let full_vocabulary = opts.full_vocabulary;
    if !full_vocabulary && !config.trains_seen_rows() {
        bail!(
            "verify without the full vocabulary needs the seen-row IM-RM: train.imrm_gradient = \"sparse\", \
             train.optimizer other than \"adamw\" and setup.response_length = 1"
        );
    }
    let jobs: Vec<Job> = if full_vocabulary {
        vec![
            Job::Variant(&faithful),
            Job::Variant(&gd),
            Job::Variant(&adam),
            Job::Variant(&adamw),
            Job::Main(ModelKind::Implicit),
            Job::Main(ModelKind::Explicit),
            Job::Variant(&cancelled),
        ]
    } else {
        for job in [
            "IM-RM full-softmax flow",
            "IM-RM GD",
            "IM-RM Adam",
            "IM-RM AdamW",
            "IM-RM sparse flow",
            "§3 dynamics checks",
        ] {
            on_job(&format!("{job} skipped (without the full vocabulary)"));
        }
        vec![
            Job::Main(ModelKind::Implicit),
            Job::Main(ModelKind::Explicit),
        ]
    };
    let (runs, dynamics) = rayon::join(
        || -> Result<Vec<ModelRun>> {
            jobs.par_iter()
                .map(|job| {
                    let r = match job {
                        Job::Main(kind) => {
                            let mm = if *kind == ModelKind::Explicit {
                                mm_ex.clone()
                            } else {
                                mm_im.clone()
                            };
                            run_model(*kind, config, &setup, mm, &mut |_: &Observation| {})
                        }
                        Job::Variant(c) => run_model(
                            ModelKind::Implicit,
                            c,
                            &setup,
                            mm_im.clone(),
                            &mut |_: &Observation| {},
                        ),
                    };
                    on_job(match job {
                        Job::Main(ModelKind::Explicit) => "EX-RM flow",
                        Job::Main(ModelKind::Implicit) => "IM-RM flow",
                        Job::Variant(c) => match (c.train.optimizer, c.train.imrm_gradient) {
                            (Optimizer::Gd, _) => "IM-RM GD",
                            (Optimizer::Adam, _) => "IM-RM Adam",
                            (Optimizer::Adamw, _) => "IM-RM AdamW",
                            (Optimizer::Flow, GradientPath::Full) => "IM-RM full-softmax flow",
                            (Optimizer::Flow, GradientPath::Sparse) => "IM-RM sparse flow",
                        },
                    });
                    r
                })
                .collect()
        },
        || {
            rayon::join(
                || {
                    if !full_vocabulary {
                        return Ok(vec![]);
                    }
                    let r = claims_dynamics(config, &setup);
                    on_job("§3 dynamics checks");
                    r
                },
                || {
                    let r = residual_rows(config, &setup, &mm_ex, opts);
                    on_job("EX-RM residual flow");
                    r
                },
            )
        },
    );
    let mut runs = runs?.into_iter();
    let (dynamics, residual) = dynamics;
    let dynamics_claims = dynamics?;
    let residual_claims = residual?;
    let mut next = || runs.next().expect("one run per job");
    // The full-vocabulary runs (faithful flow, GD, Adam, AdamW, sparse companion), when run.
    struct FullRuns {
        full: ModelRun,
        gd: ModelRun,
        adam: ModelRun,
        adamw: ModelRun,
        sparse: ModelRun,
    }
    let (full_runs, im, ex) = if full_vocabulary {
        let (full, gd, adam, adamw, im, ex, sparse) =
            (next(), next(), next(), next(), next(), next(), next());
        let runs = FullRuns {
            full,
            gd,
            adam,
            adamw,
            sparse,
        };
        (Some(runs), im, ex)
    } else {
        let (im, ex) = (next(), next());
        (None, im, ex)
    };
    let path = match config.train.imrm_gradient {
        GradientPath::Full => "full",
        GradientPath::Sparse => "sparse",
    };

    let mut claims = Vec::new();
    match &full_runs {
        Some(r) => claims.extend(claims_2a(
            "flow_full",
            &format!(
                "IM-RM flow, full-softmax gradient, t ≤ {t_faithful:.0e}{}",
                if im_separable {
                    ""
                } else {
                    " (IM-RM data not separable: stiff beyond, horizon capped)"
                }
            ),
            &r.full,
            tau,
            true,
            true,
        )),
        None => claims.extend(full_vocabulary_skips(&["flow_full"], &[])),
    }
    let seen_row_drift = "seen-row IM-RM: rows outside the training tokens are not part of its state (U(0) by construction); measured on the full-vocabulary runs";
    claims.extend(
        claims_2a(
            "flow",
            &format!(
                "IM-RM flow, {path} gradient, t ≤ {:.0e}",
                config.train.t_max
            ),
            &im,
            tau,
            true,
            true,
        )
        .into_iter()
        .map(|c| {
            if full_runs.is_none() && c.id == "2a.flow.drift" {
                Claim::skipped(&c.id, seen_row_drift)
            } else {
                c
            }
        }),
    );
    match &full_runs {
        Some(r) => {
            let gd_checked = if opts.fault == Some(Fault::AdamwAsGd) {
                &r.adamw
            } else {
                &r.gd
            };
            claims.extend(claims_2a(
                "gd",
                &format!("IM-RM GD η = {}, {} steps", opts.gd_lr, opts.discrete_steps),
                gd_checked,
                tau,
                false,
                true,
            ));
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
                .full
                .final_params
                .iter()
                .zip(&r.full.initial)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            let gap = unembedding_gap(&setup, &r.full, &r.sparse);
            claims.push(Claim::judged(
                "companion.paths_agree",
                &format!("IM-RM full vs sparse gradient: max|U_full − U_sparse| / max|ΔU| at t = {t_faithful:.0e}"),
                gap / scale.max(f64::MIN_POSITIVE),
                Bound::AtMost(PATH_AGREEMENT_BOUND),
            ));
        }
        None => claims.extend(full_vocabulary_skips(
            &["gd", "adam", "adamw"],
            &["companion.paths_agree"],
        )),
    }

    claims.extend(claims_2b(
        &ex,
        &im,
        &setup.train.hidden_differences(),
        config.train.t_max,
    ));
    claims.extend(dual_unseen_claim(&setup, &mm_im, config.setup.beta));
    claims.extend(residual_claims);
    if full_runs.is_some() {
        claims.extend(dynamics_claims);
    } else {
        claims.extend(full_vocabulary_skips(&[], &DYNAMICS_CLAIMS));
    }
    claims.extend(qp_claims(&mm_ex, &mm_im));
    Ok(claims)
}

/// `companion.dual_unseen`: the IM-RM max-margin dual's prediction on the unseen pairs.
fn dual_unseen_claim(
    setup: &Setup,
    mm_im: &std::result::Result<MaxMarginResult, String>,
    beta: f64,
) -> Option<Claim> {
    Some(match mm_im {
        Ok(m) => {
            let unseen = setup.evals.iter().find(|p| p.name == "unseen")?;
            let pred = implicit_dual_prediction(&setup.train, &m.solution.dual, beta, unseen);
            let worst = pred.iter().fold(0.0f64, |a, p| a.max(p.abs()));
            Claim::judged(
                "companion.dual_unseen",
                "IM-RM max-margin dual prediction Σα_i K_IM(i,j), max over unseen pairs",
                worst,
                Bound::Exactly(0.0),
            )
        }
        Err(_) => Claim::skipped("companion.dual_unseen", "IM-RM features not separable"),
    })
}

/// `qp.exrm`, `qp.imrm`: the QP certificates.
fn qp_claims(
    mm_ex: &std::result::Result<MaxMarginResult, String>,
    mm_im: &std::result::Result<MaxMarginResult, String>,
) -> Vec<Claim> {
    [("qp.exrm", "EX-RM", mm_ex), ("qp.imrm", "IM-RM", mm_im)]
        .into_iter()
        .map(|(id, what, mm)| match mm {
            Ok(MaxMarginResult { solution, .. }) => Claim::judged(
                id,
                &format!("{what} max-margin QP certificate: worst violation (margin, dual sign, slackness, gap, stationarity)"),
                solution.certificate.worst_violation(),
                Bound::AtMost(CERTIFICATE_TOLERANCE),
            ),
            Err(e) => Claim::skipped(id, &format!("{what}: {e}")),
        })
        .collect()
}

/// Ids of the §3 rows ([`claims_dynamics`]).
const DYNAMICS_CLAIMS: [&str; 6] = [
    "3.rho_identity",
    "3.rho_bound",
    "3.velocity_flow_imrm",
    "3.velocity_flow_exrm",
    "3.gd_first_order",
    "3.unseen_equal_velocity",
];

/// Rows of the full-vocabulary checks, SKIP (`VerifyOptions::full_vocabulary = false`): the
/// 2(a) rows of `runs` (e.g. `"gd"`), then `extra` ids.
fn full_vocabulary_skips(runs: &[&str], extra: &[&str]) -> Vec<Claim> {
    let why = "not run (verify --without-full-vocabulary): needs the full V × D unembedding";
    let mut ids: Vec<String> = Vec::new();
    for prefix in runs {
        ids.push(format!("2a.{prefix}.drift"));
        if *prefix == "flow_full" {
            ids.push(format!("2a.{prefix}.unseen_margin"));
        }
        ids.push(format!("2a.{prefix}.unseen_accuracy"));
    }
    ids.extend(extra.iter().map(|id| id.to_string()));
    ids.iter().map(|id| Claim::skipped(id, why)).collect()
}

/// `K > 1`: Theorem 2 covers single-token responses only. The 2a rows, the IM-RM companions and
/// the IM-RM QP are SKIP with the reason; the EX-RM is still linear in `u`, so 2b is judged (when
/// its data is separable), and the §3 identities that hold for any `K` are checked.
fn verify_multi_token(
    config: &Config,
    setup: &Setup,
    on_job: &(dyn Fn(&str) + Sync),
) -> Result<Vec<Claim>> {
    let k = config.setup.response_length;
    let tau = config.eval.tie_tolerance;
    let why =
        format!("K = {k} tokens per response: Theorem 2(a) holds for single-token responses only");
    let mut claims: Vec<Claim> = [
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
    ]
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
    let imrm_placeholder = ModelRun {
        kind: ModelKind::Implicit,
        rows: None,
        initial: vec![],
        final_params: vec![],
        trajectory: vec![],
        steps: 0,
        ode: None,
        screening: None,
        max_margin: Err(why.clone()),
        rewards: vec![],
    };
    claims.extend(
        claims_2b(
            &ex,
            &imrm_placeholder,
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
    match &mm_ex {
        Ok(MaxMarginResult { solution, .. }) => claims.push(Claim::judged(
            "qp.exrm",
            "EX-RM max-margin QP certificate: worst violation (margin, dual sign, slackness, gap, stationarity)",
            solution.certificate.worst_violation(),
            Bound::AtMost(CERTIFICATE_TOLERANCE),
        )),
        Err(e) => claims.push(Claim::skipped("qp.exrm", &format!("EX-RM: {e}"))),
    }
    claims.push(Claim::skipped("qp.imrm", &why));
    Ok(claims)
}

/// Time at which the learning-dynamics checks are made.
pub const DYNAMICS_CHECK_TIME: f64 = 10.0;

/// MATH.md §3 rows: ρ identity and bound, velocities against the flow and a GD step.
fn claims_dynamics(config: &Config, setup: &Setup) -> Result<Vec<Claim>> {
    let c = crate::analysis::dynamics::dynamics_checks(config, setup, DYNAMICS_CHECK_TIME)?;
    let t = c.t;
    let mut out = vec![
        Claim::judged("3.rho_identity", "max |ρ expanded − ρ from explicit V-vectors| (seen split block)", c.rho_identity_error, Bound::AtMost(1e-12)),
        Claim::judged("3.rho_bound", &format!("max |ρ_{{k,l}}| over seen and unseen splits at t = {t}"), c.rho_max_abs, Bound::AtMost(2.0)),
        Claim::judged("3.velocity_flow_imrm", &format!("IM-RM dm/dt formula vs central difference along the flow at t = {t} (relative)"), c.imrm_velocity_vs_flow, Bound::AtMost(1e-6)),
        Claim::judged("3.velocity_flow_exrm", &format!("EX-RM dm/dt formula vs central difference along the flow at t = {t} (relative)"), c.exrm_velocity_vs_flow, Bound::AtMost(1e-6)),
        Claim::judged("3.gd_first_order", "IM-RM GD step: err(η)/err(η/2) of the first-order reward prediction, η = 1e-2 (O(η²) ⇒ 4)", c.gd_error_ratio, Bound::Between(3.5, 4.5)),
    ];
    if c.unseen_velocity_gap.is_nan() {
        out.push(Claim::skipped(
            "3.unseen_equal_velocity",
            "K > 1: unseen responses do not share velocities",
        ));
    } else {
        out.push(Claim::judged("3.unseen_equal_velocity", "IM-RM reward velocities of the two unseen responses of each unseen pair: max gap / max |v|", c.unseen_velocity_gap, Bound::AtMost(1e-12)));
    }
    Ok(out)
}

/// A configuration drawn around `base` for trial `k`: seed, α, κ, sizes varied (deterministic in k).
pub fn trial_config(base: &Config, k: u64) -> Config {
    let mut rng = ChaCha8Rng::seed_from_u64(0x7269_616c ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut c = base.clone();
    c.seed = base.seed.wrapping_add(1 + k);
    c.setup.alpha = base.setup.alpha * rng.random_range(0.75..1.5);
    c.setup.kappa = base.setup.kappa * rng.random_range(0.5..1.5);
    c.setup.dim = [24, 32, 48][rng.random_range(0..3)];
    c.setup.train_pairs = [100, 150, 200, 300][rng.random_range(0..4)];
    c.setup.good_seen = rng.random_range(4..=12);
    c.setup.bad_seen = rng.random_range(4..=12);
    c
}

/// Worst case of one claim over trials.
#[derive(Debug, Clone, Serialize)]
pub struct WorstCase {
    pub id: String,
    pub description: String,
    pub worst: f64,
    pub bound: Bound,
    pub status: Status,
    pub failed_trials: Vec<u64>,
    pub skipped_trials: usize,
}

/// The whole verification: the configured setup, and the worst case over random trials.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub rmflow_version: &'static str,
    pub config: Config,
    pub claims: Vec<Claim>,
    pub trials: usize,
    pub worst_cases: Vec<WorstCase>,
    pub trial_claims: Vec<Vec<Claim>>,
}

impl Report {
    /// True when no claim failed, on the setup or in any trial.
    pub fn passed(&self) -> bool {
        self.claims.iter().all(|c| c.status != Status::Fail)
            && self.worst_cases.iter().all(|w| w.status != Status::Fail)
    }
}

/// Verifies `config`, then `trials` random setups around it in parallel.
/// `on_job` is called as each job of the configured setup finishes ([`SETUP_JOBS`] of them), and
/// once per finished trial (`"trial"`).
pub fn verify(
    config: &Config,
    trials: usize,
    opts: &VerifyOptions,
    on_job: &(dyn Fn(&str) + Sync),
) -> Result<Report> {
    let claims = verify_setup(config, opts, on_job)?;
    let trial_opts = opts.for_trials();
    let trial_claims: Vec<Vec<Claim>> = (0..trials as u64)
        .into_par_iter()
        .map(|k| {
            let mut c = trial_config(config, k);
            c.train.observations_per_decade = 1.0;
            let r = verify_setup(&c, &trial_opts, &|_| {});
            on_job("trial");
            r
        })
        .collect::<Result<_>>()?;
    let mut worst_cases: Vec<WorstCase> = Vec::new();
    for (k, tc) in trial_claims.iter().enumerate() {
        for c in tc {
            let w = match worst_cases.iter_mut().find(|w| w.id == c.id) {
                Some(w) => w,
                None => {
                    worst_cases.push(WorstCase {
                        id: c.id.clone(),
                        description: c.description.clone(),
                        worst: f64::NAN,
                        bound: c.bound,
                        status: Status::Skip,
                        failed_trials: vec![],
                        skipped_trials: 0,
                    });
                    worst_cases.last_mut().expect("pushed")
                }
            };
            match c.status {
                Status::Skip => w.skipped_trials += 1,
                s => {
                    w.bound = c.bound;
                    w.worst = if w.worst.is_nan() {
                        c.measured
                    } else {
                        c.bound.worse(w.worst, c.measured)
                    };
                    if s == Status::Fail {
                        w.failed_trials.push(k as u64);
                        w.status = Status::Fail;
                    } else if w.status != Status::Fail {
                        w.status = s;
                    }
                }
            }
        }
    }
    Ok(Report {
        rmflow_version: crate::io::layout::RMFLOW_VERSION,
        config: config.clone(),
        claims,
        trials,
        worst_cases,
        trial_claims,
    })
}

fn status_text(s: Status) -> &'static str {
    match s {
        Status::Pass => "PASS",
        Status::Fail => "FAIL",
        Status::Info => "INFO",
        Status::Skip => "SKIP",
    }
}

/// The table printed by `rmflow verify`.
pub fn render(report: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let c = &report.config;
    writeln!(
        s,
        "Theorem 2 (MATH.md §4), rmflow {}: seed {}, V = {}, D = {}, N = {}, α = {}, κ = {}, β = {}, flow to t = {:.0e}, τ = {:.0e}",
        report.rmflow_version,
        c.seed,
        c.vocab_size(),
        c.setup.dim,
        c.setup.train_pairs,
        c.setup.alpha,
        c.setup.kappa,
        c.setup.beta,
        c.train.t_max,
        c.eval.tie_tolerance
    )
    .unwrap();
    writeln!(
        s,
        "{:<28} {:>12} {:>14}  {:<6} claim",
        "id", "measured", "bound", "status"
    )
    .unwrap();
    for cl in &report.claims {
        writeln!(
            s,
            "{:<28} {:>12.3e} {:>14}  {:<6} {}",
            cl.id,
            cl.measured,
            cl.bound.text(),
            status_text(cl.status),
            cl.description
        )
        .unwrap();
    }
    if report.trials > 0 {
        writeln!(
            s,
            "\nWorst case over {} random setups around it (seed, α, κ, D, N, seen tokens varied):",
            report.trials
        )
        .unwrap();
        writeln!(
            s,
            "{:<28} {:>12} {:>14}  {:<6} failed / skipped trials",
            "id", "worst", "bound", "status"
        )
        .unwrap();
        for w in &report.worst_cases {
            writeln!(
                s,
                "{:<28} {:>12.3e} {:>14}  {:<6} {:?} / {}",
                w.id,
                w.worst,
                w.bound.text(),
                status_text(w.status),
                w.failed_trials,
                w.skipped_trials
            )
            .unwrap();
        }
    }
    let failed = report
        .claims
        .iter()
        .filter(|c| c.status == Status::Fail)
        .count()
        + report
            .worst_cases
            .iter()
            .filter(|w| w.status == Status::Fail)
            .count();
    let count = |st: Status| report.claims.iter().filter(|c| c.status == st).count();
    writeln!(
        s,
        "\n{}\n(configured setup: {} PASS, {} FAIL, {} INFO, {} SKIP; SKIP = not run: outside the claim's hypotheses, or left out by a flag, as its row says)",
        if failed == 0 {
            "ALL CLAIMS HOLD".to_string()
        } else {
            format!("{failed} CLAIM(S) FAILED")
        },
        count(Status::Pass),
        count(Status::Fail),
        count(Status::Info),
        count(Status::Skip)
    )
    .unwrap();
    s
}

/// Horizon of the residual check `2b.residual_*`, as `log10 t` (MATH.md §4: `ρ(t) → w̃`).
pub const RESIDUAL_HORIZON_LOG10: f64 = 10_000.0;
/// `2b.residual_bounded`: largest change of `‖ρ‖` between observations 10 decades apart over the
/// last tenth of the horizon, relative to `max(1, ‖ρ(t_max)‖)` (`‖w̃‖` scales like `1/‖z‖`).
pub const RESIDUAL_BOUNDED_BOUND: f64 = 1e-6;
/// `2b.residual_limit`: `max_{i∈S} |⟨ρ(t_max), z_i⟩ + ln(N α_i)|` (Soudry et al.'s
/// characterisation of `w̃` with the QP's duals `α`). The QP's relative accuracy (~1e-9) enters
/// `ρ = u − u* ln t` multiplied by `ln t ≈ 2.3e4`.
pub const RESIDUAL_LIMIT_BOUND: f64 = 1e-3;

/// The EX-RM residual `ρ(t) = u(t) − u* ln t` integrated to `10^horizon_log10` by
/// [`crate::solve::training::residual_flow`], with what Theorem 2(b) says of its limit.
#[derive(Debug, Clone, Serialize)]
pub struct ResidualTrace {
    /// Observation times (`log10 t`): every decade to 100, every 10 decades after.
    pub log10_t: Vec<f64>,
    /// `‖ρ(t)‖` at those times.
    pub rho_norm: Vec<f64>,
    /// Support set of the QP (`α_i > 1e-6 max α`).
    pub support: Vec<usize>,
    /// Whether the support vectors are linearly independent (their Gram matrix has a Cholesky
    /// factor with every pivot above `1e-10` of the largest diagonal).
    pub support_independent: bool,
    /// Per support vector `i`: `⟨ρ(t_max), z_i⟩` and `−ln(N α_i)`.
    pub limit: Vec<(usize, f64, f64)>,
    /// `min_{i∉S} ⟨u*, z_i⟩ − 1`: the nearest non-support pair's margin excess `δ`.
    pub delta: f64,
    pub accepted_steps: u64,
    pub seconds: f64,
}

/// Integrates the EX-RM residual of `setup` to `10^horizon_log10` against the separator `mm`.
pub fn residual_to_horizon(
    config: &Config,
    setup: &Setup,
    mm: &MaxMarginResult,
    horizon_log10: f64,
) -> Result<ResidualTrace> {
    let start = std::time::Instant::now();
    let z = setup.train.hidden_differences();
    let n = z.nrows();
    let model = crate::problem::reward::ExplicitRm::new(&setup.train);
    let mut early = config.train.clone();
    early.optimizer = Optimizer::Flow;
    early.t_max = 1.0;
    early.t_max_log10 = None;
    early.first_observation = 1.0;
    early.observations_per_decade = 1.0;
    let u1 = crate::solve::training::train(
        &model,
        &setup.head_init.to_vec(),
        &early,
        "EX-RM",
        &mut |_, _, _| Ok(()),
    )?
    .theta;
    let mut log10_t: Vec<f64> = (1..=100).map(f64::from).collect();
    let mut l = 110.0;
    while l < horizon_log10 {
        log10_t.push(l);
        l += 10.0;
    }
    log10_t.retain(|&x| x < horizon_log10);
    log10_t.push(horizon_log10);
    let (rho, stats) =
        crate::solve::training::residual_flow(&z, &mm.params, &u1, &log10_t, &config.train)?;
    let rho_norm: Vec<f64> = rho.iter().map(|r| crate::numerics::norm(r)).collect();
    let last = rho.last().expect("the horizon is observed");
    let support = mm.solution.support.clone();
    let dot = |i: usize, v: &[f64]| -> f64 { z.row(i).iter().zip(v).map(|(a, b)| a * b).sum() };
    let limit = support
        .iter()
        .map(|&i| (i, dot(i, last), -(n as f64 * mm.solution.dual[i]).ln()))
        .collect();
    let delta = (0..n)
        .filter(|i| !support.contains(i))
        .map(|i| dot(i, &mm.params) - 1.0)
        .fold(f64::INFINITY, f64::min);
    Ok(ResidualTrace {
        log10_t,
        rho_norm,
        support_independent: linearly_independent(&z, &support),
        support,
        limit,
        delta,
        accepted_steps: stats.accepted_steps,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Rows `rows` of `z` are linearly independent: Cholesky of their Gram matrix, every pivot
/// above `1e-10 ×` the largest diagonal entry.
fn linearly_independent(z: &ndarray::Array2<f64>, rows: &[usize]) -> bool {
    let k = rows.len();
    let mut g = vec![vec![0.0; k]; k];
    for a in 0..k {
        for b in 0..k {
            g[a][b] = z.row(rows[a]).dot(&z.row(rows[b]));
        }
    }
    let scale = (0..k).map(|a| g[a][a]).fold(0.0, f64::max);
    for j in 0..k {
        let pivot = g[j][j] - (0..j).map(|m| g[j][m] * g[j][m]).sum::<f64>();
        if pivot <= 1e-10 * scale {
            return false;
        }
        let d = pivot.sqrt();
        g[j][j] = d;
        for i in j + 1..k {
            let s = g[i][j] - (0..j).map(|m| g[i][m] * g[j][m]).sum::<f64>();
            g[i][j] = s / d;
        }
    }
    true
}

/// The residual rows: integrated when the EX-RM data are separable and the options ask for it,
/// SKIP otherwise.
fn residual_rows(
    config: &Config,
    setup: &Setup,
    mm: &std::result::Result<MaxMarginResult, String>,
    opts: &VerifyOptions,
) -> Result<Vec<Claim>> {
    let ids = ["2b.residual_bounded", "2b.residual_limit"];
    let skip = |why: &str| ids.iter().map(|id| Claim::skipped(id, why)).collect();
    match (mm, opts.residual_horizon_log10) {
        (Err(_), _) => Ok(skip("EX-RM data not separable: 2b does not apply")),
        (Ok(_), None) => Ok(skip(
            "residual flow to 1e10000 not run (random trials, or verify --skip-residual)",
        )),
        (Ok(mm), Some(h)) => Ok(claims_residual(&residual_to_horizon(config, setup, mm, h)?)),
    }
}

/// Claims `2b.residual_bounded`, `2b.residual_limit` and the INFO rows of the residual trace.
fn claims_residual(trace: &ResidualTrace) -> Vec<Claim> {
    let h = *trace.log10_t.last().expect("observed");
    let tail: Vec<f64> = trace
        .log10_t
        .iter()
        .zip(&trace.rho_norm)
        .filter(|(l, _)| **l >= 0.9 * h)
        .map(|(_, r)| *r)
        .collect();
    let scale = trace.rho_norm.last().expect("observed").max(1.0);
    let settled = tail
        .windows(2)
        .map(|w| (w[1] - w[0]).abs() / scale)
        .fold(
            0.0,
            |a: f64, x| if x.is_nan() { f64::NAN } else { a.max(x) },
        );
    let mut out = vec![Claim::judged(
        "2b.residual_bounded",
        &format!(
            "EX-RM max |Δ‖ρ‖| / max(1, ‖ρ‖), ρ = u(t) − u* ln t, observations 10 decades apart, last tenth of t ≤ 1e{h} (ρ integrated directly)"
        ),
        settled,
        Bound::AtMost(RESIDUAL_BOUNDED_BOUND),
    )];
    if trace.support_independent {
        let worst = trace
            .limit
            .iter()
            .map(|(_, a, b)| (a - b).abs())
            .fold(
                0.0,
                |a: f64, x| if x.is_nan() { f64::NAN } else { a.max(x) },
            );
        out.push(Claim::judged(
            "2b.residual_limit",
            &format!(
                "EX-RM max over {} support vectors |⟨ρ(1e{h}), z_i⟩ + ln(N α_i)| (α from the QP)",
                trace.limit.len()
            ),
            worst,
            Bound::AtMost(RESIDUAL_LIMIT_BOUND),
        ));
    } else {
        out.push(Claim::skipped(
            "2b.residual_limit",
            "support vectors linearly dependent: the duals do not determine w̃ (not the almost-every-data-set case)",
        ));
    }
    out.push(Claim::info(
        "2b.residual_at_horizon",
        &format!("EX-RM ‖u(t) − u* ln t‖ at t = 1e{h}"),
        *trace.rho_norm.last().expect("observed"),
    ));
    if trace.delta.is_finite() {
        out.push(Claim::info(
            "2b.near_support_at_horizon",
            &format!(
                "t^(−δ) at t = 1e{h}: weight of the nearest non-support pair (δ = {:.2e})",
                trace.delta
            ),
            10f64.powf(-trace.delta * h),
        ));
    }
    out
}
