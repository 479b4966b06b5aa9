//! One run end to end: setup → max-margin separators → both reward models trained → trajectory.

use super::ablations::{seen_row_evaluation, token_mean_setup, Ablations};
use super::observer::Observer;
use crate::config::{Config, GradientPath};
use crate::experiment::observables::{
    reward_summary, split_metrics, Observation, RewardSummary, SplitMetrics,
};
use crate::problem::reward::{
    ExplicitRm, ImplicitRm, MarginModel, ReferenceTerm, SeenRowsImplicitRm,
};
use crate::problem::rows::RowBlock;
use crate::problem::synthetic::Setup;
use crate::solve::max_margin::{
    implicit_separator_margins, max_margin_head, max_margin_unembedding_rows, MaxMarginError,
    MaxMarginSolution,
};
use crate::solve::ode::OdeStats;
use crate::solve::training::{train_screened, Screening, ScreeningStats};
use anyhow::Result;
use ndarray::Array1;

/// Longest flow horizon accepted on data certified not separable (stiff beyond it).
pub const NON_SEPARABLE_FLOW_LIMIT: f64 = 1e6;

/// Which reward model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ModelKind {
    /// EX-RM `r_u = ⟨u, h_{x,y}⟩`, parameters `u ∈ R^D`.
    Explicit,
    /// IM-RM `r_U = β ln(π_U/π_ref)`, parameters `U ∈ R^{V×D}`.
    Implicit,
}

impl ModelKind {
    /// Short name used in files (`exrm`, `imrm`).
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Explicit => "exrm",
            ModelKind::Implicit => "imrm",
        }
    }

    /// Name used in messages (`EX-RM`, `IM-RM`).
    pub fn label(self) -> &'static str {
        match self {
            ModelKind::Explicit => "EX-RM",
            ModelKind::Implicit => "IM-RM",
        }
    }
}

/// The max-margin separator of one model, or why there is none.
#[derive(Debug, Clone)]
pub struct MaxMarginResult {
    /// `u*` (EX-RM) or `ΔU*` on the rows `rows` (IM-RM), flattened.
    pub params: Vec<f64>,
    /// IM-RM: the rows of `ΔU*` in `params` (the training tokens `T`; every other row is 0).
    pub rows: Option<Vec<usize>>,
    pub solution: MaxMarginSolution,
    /// The separator's own accuracy on every split (tie tolerance as configured).
    pub accuracy: Vec<SplitMetrics>,
}

/// A trained model with its trajectory.
#[derive(Debug, Clone)]
pub struct ModelRun {
    pub kind: ModelKind,
    /// IM-RM trained on its seen rows: the rows of `U` that `initial` and `final_params` hold
    /// (`T ∪ E`, every token of some pair; [|rows|, D] row-major), every other row being `U(0)`'s
    /// throughout. `None`: the whole parameter vector (EX-RM `u`, or IM-RM `U` as [V, D]).
    pub rows: Option<Vec<usize>>,
    pub initial: Vec<f64>,
    pub final_params: Vec<f64>,
    pub trajectory: Vec<Observation>,
    pub steps: u64,
    pub ode: Option<OdeStats>,
    /// The flow's field screening, when it ran (`training::Screening`).
    pub screening: Option<ScreeningStats>,
    pub max_margin: std::result::Result<MaxMarginResult, MaxMarginError>,
    /// Per split at `t_max`: the official evaluator's reward statistics (normalised absolute
    /// reward margin, mean chosen and rejected rewards); filled by [`Simulation::new`], empty for
    /// runs made outside a simulation (e.g. `verify`'s variants).
    pub rewards: Vec<RewardSummary>,
}

/// A whole simulation: config, setup and both models.
#[derive(Debug, Clone)]
pub struct Simulation {
    pub config: Config,
    pub setup: Setup,
    pub explicit: ModelRun,
    pub implicit: ModelRun,
    pub ablations: Ablations,
}

impl Simulation {
    /// Assembles a simulation: the models' single-response rewards and its [`Ablations`] (the
    /// IM-RM trained without its reference, and one more EX-RM flow when `K > 1`).
    pub fn new(
        config: Config,
        setup: Setup,
        mut explicit: ModelRun,
        mut implicit: ModelRun,
    ) -> Result<Simulation> {
        let reward_splits = super::rewards::plan(&config).splits;
        explicit.rewards = explicit_rewards(&setup, &explicit.final_params);
        let scored = scored_without_reference(&config, &setup, &mut implicit, reward_splits);
        let imrm_no_reference_run =
            run_implicit_without_reference(&config, &setup, implicit.max_margin.clone())?;
        let imrm_no_reference = imrm_no_reference_run
            .trajectory
            .last()
            .map(|o| o.splits.clone())
            .unwrap_or_default();
        let exrm_token_mean = exrm_token_mean(&config, &setup)?;
        Ok(Simulation {
            config,
            setup,
            explicit,
            implicit,
            ablations: Ablations {
                imrm_no_reference,
                imrm_no_reference_run,
                imrm_no_reference_initial: scored.initial,
                imrm_scored_without_reference: scored.trained,
                exrm_token_mean,
            },
        })
    }

    pub fn runs(&self) -> [&ModelRun; 2] {
        [&self.explicit, &self.implicit]
    }

    /// `U(t_max)` as [V, D] (`O(V·D)`: rebuilt from `U(0)` when only the rows of the pairs'
    /// tokens are kept).
    pub fn final_unembedding(&self) -> ndarray::Array2<f64> {
        let d = self.setup.dim();
        match &self.implicit.rows {
            None => ndarray::Array2::from_shape_vec(
                (self.setup.vocab_size(), d),
                self.implicit.final_params.clone(),
            )
            .expect("V×D"),
            Some(rows) => {
                let mut u = self.setup.unembedding_init.full();
                RowBlock::new(Some(rows), &self.implicit.final_params, d)
                    .scatter_into(u.as_slice_mut().expect("standard layout"), None);
                u
            }
        }
    }

    /// The rows `rows` (sorted tokens) of `U(0)` and `U(t_max)`, [|rows|, D] each.
    pub fn unembedding_rows(&self, rows: &[usize]) -> (ndarray::Array2<f64>, ndarray::Array2<f64>) {
        let d = self.setup.dim();
        let initial = self.setup.unembedding_init.rows(rows);
        let last = match &self.implicit.rows {
            None => self.final_unembedding().select(ndarray::Axis(0), rows),
            Some(kept) => ndarray::Array2::from_shape_vec(
                (rows.len(), d),
                RowBlock::new(Some(kept), &self.implicit.final_params, d).select(rows),
            )
            .expect("rows×D"),
        };
        (initial, last)
    }

    /// `u(t_max)`.
    pub fn final_head(&self) -> Array1<f64> {
        Array1::from(self.explicit.final_params.clone())
    }
}

/// Max-margin separator of `kind` on the training pairs, with its accuracy on every split.
pub fn max_margin_for(
    kind: ModelKind,
    setup: &Setup,
    tie_tolerance: f64,
) -> std::result::Result<MaxMarginResult, MaxMarginError> {
    let beta = setup.config.beta;
    match kind {
        ModelKind::Explicit => {
            let (u, solution) = max_margin_head(&setup.train.hidden_differences())?;
            let accuracy = setup
                .splits()
                .map(|p| {
                    split_metrics(
                        &p.name,
                        p.hidden_differences()
                            .dot(&u)
                            .as_slice()
                            .expect("contiguous"),
                        tie_tolerance,
                    )
                })
                .collect();
            Ok(MaxMarginResult {
                params: u.to_vec(),
                rows: None,
                solution,
                accuracy,
            })
        }
        ModelKind::Implicit => {
            let (rows, delta, solution) = max_margin_unembedding_rows(&setup.train, beta)?;
            let accuracy = setup
                .splits()
                .map(|p| {
                    split_metrics(
                        &p.name,
                        &implicit_separator_margins(&rows, &delta, beta, p),
                        tie_tolerance,
                    )
                })
                .collect();
            Ok(MaxMarginResult {
                params: delta.into_raw_vec_and_offset().0,
                rows: Some(rows),
                solution,
                accuracy,
            })
        }
    }
}

/// Trains one model on `setup` with `config.train`, calling `progress` after each observation.
/// `max_margin` is the separator of `kind` on `setup` ([`max_margin_for`]), reused across runs.
pub fn run_model(
    kind: ModelKind,
    config: &Config,
    setup: &Setup,
    max_margin: std::result::Result<MaxMarginResult, MaxMarginError>,
    progress: &mut dyn FnMut(&Observation),
) -> Result<ModelRun> {
    run_model_observed(
        ModelProblem {
            kind,
            config,
            setup,
            max_margin,
        },
        Watchers {
            progress,
            hook: None,
        },
        RunVariant::SCORED,
    )
}

/// The IM-RM without a reference, `r = β ln π_U` (the official `no_ref_model`, MATH.md §1),
/// trained on its own margins by the same path, optimizer and observer as the IM-RM.
/// `max_margin` is the IM-RM's separator: the reference only shifts every margin by a constant,
/// so the direction is the same.
pub fn run_implicit_without_reference(
    config: &Config,
    setup: &Setup,
    max_margin: std::result::Result<MaxMarginResult, MaxMarginError>,
) -> Result<ModelRun> {
    run_model_observed(
        ModelProblem {
            kind: ModelKind::Implicit,
            config,
            setup,
            max_margin,
        },
        Watchers {
            progress: &mut |_| {},
            hook: None,
        },
        RunVariant {
            reference_term: ReferenceTerm::Omitted,
            trajectory: Trajectory::Ends,
        },
    )
}

/// [`run_model`] with a hook that also sees the whole parameters `θ(t)` (`u`, or `U` as [V, D],
/// rebuilt from the seen rows when that is how the IM-RM is trained) at every observation.
pub fn run_model_with(
    kind: ModelKind,
    config: &Config,
    setup: &Setup,
    max_margin: std::result::Result<MaxMarginResult, MaxMarginError>,
    hook: &mut dyn FnMut(&Observation, &[f64]) -> Result<()>,
) -> Result<ModelRun> {
    run_model_observed(
        ModelProblem {
            kind,
            config,
            setup,
            max_margin,
        },
        Watchers {
            progress: &mut |_| {},
            hook: Some(hook),
        },
        RunVariant::SCORED,
    )
}

/// A hook that sees each observation with the whole parameters `θ(t)`.
pub(super) type ParamsHook<'a> = dyn FnMut(&Observation, &[f64]) -> Result<()> + 'a;

/// Which observations a run's trajectory keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Trajectory {
    /// Every observation time of the config.
    Every,
    /// The first (`t = 0`) and the last only: for an ablation whose trajectory is not exported
    /// (each observation is a pass over every split; at `N = 10⁴`, `D = 4 096` about 25 ms, 410
    /// of them with the default density to `t = 1e100`). The integration is the same either way.
    Ends,
}

/// What a run trains and keeps beyond its model and config.
#[derive(Debug, Clone, Copy)]
pub(super) struct RunVariant {
    pub(super) reference_term: ReferenceTerm,
    pub(super) trajectory: Trajectory,
}

impl RunVariant {
    /// The reward models as scored: `β ln π/π_ref`, every observation kept.
    pub(super) const SCORED: RunVariant = RunVariant {
        reference_term: ReferenceTerm::Subtracted,
        trajectory: Trajectory::Every,
    };
}

/// One model's training problem: the reward model, the config and setup it trains on, and its
/// max-margin separator.
pub(super) struct ModelProblem<'a> {
    pub(super) kind: ModelKind,
    pub(super) config: &'a Config,
    pub(super) setup: &'a Setup,
    pub(super) max_margin: std::result::Result<MaxMarginResult, MaxMarginError>,
}

/// What watches a run: `progress` after each observation and, optionally, a hook that also
/// sees the whole parameters.
pub(super) struct Watchers<'a, 'b> {
    pub(super) progress: &'a mut dyn FnMut(&Observation),
    pub(super) hook: Option<&'a mut ParamsHook<'b>>,
}

/// Trains `problem` as `variant`, watched by `watch`.
pub(super) fn run_model_observed(
    problem: ModelProblem,
    watch: Watchers,
    variant: RunVariant,
) -> Result<ModelRun> {
    let (kind, config, setup) = (problem.kind, problem.config, problem.setup);
    let max_margin = problem.max_margin;
    let (progress, mut hook) = (watch.progress, watch.hook);
    let reference_term = variant.reference_term;
    refuse_stiff_flow(kind, config, &max_margin)?;
    let reduced = (kind == ModelKind::Implicit && config.trains_seen_rows()).then(|| {
        SeenRowsImplicitRm::new(&setup.train, &setup.unembedding_init, setup.config.beta)
            .with_reference(reference_term)
    });
    let (built, start, observer) = objective(
        kind,
        config,
        setup,
        &max_margin,
        reduced.as_ref(),
        reference_term,
    );
    let objective: &dyn MarginModel = match (&built, &reduced) {
        (Some(b), _) => b.as_ref(),
        (None, Some(r)) => r,
        (None, None) => unreachable!("a model is built unless the seen-row one is used"),
    };
    let direction = separator_direction(&max_margin, kind, reduced.as_ref());
    let mut trajectory = Vec::new();
    // Trajectory::Ends: the latest observation is held and observed once training has ended.
    let mut latest: Option<(crate::solve::training::ObsTime, u64, Vec<f64>)> = None;
    let outcome = train_screened(
        objective,
        &start,
        &config.train,
        kind.label(),
        direction.map(|direction| Screening { direction }),
        &mut |t, step, theta| {
            if variant.trajectory == Trajectory::Ends && !trajectory.is_empty() {
                latest = Some((t, step, theta.to_vec()));
                return Ok(());
            }
            let obs = observer.observe(t, step, theta);
            progress(&obs);
            if let Some(hook) = hook.as_mut() {
                match &reduced {
                    Some(r) => hook(&obs, &r.embed(theta, &setup.unembedding_init))?,
                    None => hook(&obs, theta)?,
                }
            }
            trajectory.push(obs);
            Ok(())
        },
    )?;
    if let Some((t, step, theta)) = latest {
        trajectory.push(observer.observe(t, step, &theta));
    }
    drop(built);
    let (rows, initial, final_params) = match &reduced {
        Some(r) => {
            let (rows, initial, last) = pair_token_rows(setup, r, &outcome.theta);
            (Some(rows), initial, last)
        }
        None => (None, start, outcome.theta),
    };
    Ok(ModelRun {
        kind,
        rows,
        initial,
        final_params,
        trajectory,
        steps: outcome.steps,
        ode: outcome.ode,
        screening: outcome.screening,
        max_margin,
        rewards: Vec::new(),
    })
}

/// The trained IM-RM scored as `β ln π_U` (its reference term added back), per split, at
/// `t_max` and at `t = 0`.
struct ScoredWithoutReference {
    trained: Vec<SplitMetrics>,
    initial: Vec<SplitMetrics>,
}

/// [`ScoredWithoutReference`] of `implicit`, filling its single-response rewards for
/// `reward_splits` on the way (both need the same logits).
fn scored_without_reference(
    config: &Config,
    setup: &Setup,
    implicit: &mut ModelRun,
    reward_splits: super::rewards::RewardSplits,
) -> ScoredWithoutReference {
    let tau = config.eval.tie_tolerance;
    let mut scored = ScoredWithoutReference {
        trained: Vec::new(),
        initial: Vec::new(),
    };
    if let Some(rows) = &implicit.rows {
        let ev = seen_row_evaluation(setup, rows, &implicit.final_params, reward_splits);
        implicit.rewards = ev.rewards;
        for (p, (a, b)) in setup
            .splits()
            .zip(ev.no_reference.iter().zip(&ev.reference))
        {
            scored.trained.push(split_metrics(&p.name, a, tau));
            scored.initial.push(split_metrics(&p.name, b, tau));
        }
        return scored;
    }
    // One full-softmax pass per split gives the IM-RM's rewards r⁺, r⁻ (β Σ (ln π_U − ln π_ref)),
    // hence its margins; adding back the reference term gives the no-reference margins.
    let u0 = setup.unembedding_init.full();
    for p in setup.splits() {
        let im = ImplicitRm::new(p, u0.view(), setup.config.beta, GradientPath::Full);
        let (chosen, rejected): (Vec<f64>, Vec<f64>) =
            im.rewards(&implicit.final_params).into_iter().unzip();
        if reward_splits.includes(&p.name) {
            implicit
                .rewards
                .push(reward_summary(&p.name, &chosen, &rejected));
        }
        let reference = im.reference_margins();
        let no_reference: Vec<f64> = chosen
            .iter()
            .zip(&rejected)
            .zip(&reference)
            .map(|((a, b), r)| a - b + r)
            .collect();
        scored
            .trained
            .push(split_metrics(&p.name, &no_reference, tau));
        scored.initial.push(split_metrics(&p.name, &reference, tau));
    }
    scored
}

/// The EX-RM trained on the mean hidden state over response tokens (the official token-mean
/// ablation), for `K > 1`; `None` for `K = 1`, where it is the EX-RM itself.
fn exrm_token_mean(config: &Config, setup: &Setup) -> Result<Option<ModelRun>> {
    if setup.train.response_length() <= 1 {
        return Ok(None);
    }
    let mean_setup = token_mean_setup(setup);
    let mut run = run_model(
        ModelKind::Explicit,
        config,
        &mean_setup,
        max_margin_for(ModelKind::Explicit, &mean_setup, config.eval.tie_tolerance),
        &mut |_| {},
    )?;
    run.rewards = explicit_rewards(&mean_setup, &run.final_params);
    Ok(Some(run))
}

/// The separator's direction in the trained state's layout: `u*`, or `ΔU*` on the rows of `T`
/// (the seen-row state is `T`, sorted, like the separator's rows); `None` without one.
fn separator_direction<'a>(
    max_margin: &'a std::result::Result<MaxMarginResult, MaxMarginError>,
    kind: ModelKind,
    reduced: Option<&SeenRowsImplicitRm>,
) -> Option<&'a [f64]> {
    match (max_margin, kind, reduced) {
        (Ok(m), ModelKind::Explicit, _) => Some(&m.params),
        (Ok(m), ModelKind::Implicit, Some(r)) if m.rows.as_deref() == Some(&r.rows[..]) => {
            Some(&m.params)
        }
        _ => None,
    }
}

/// A long gradient flow on data certified not separable is refused (exit code 3): the loss has
/// a finite minimiser there and the log-time flow turns stiff.
pub(super) fn refuse_stiff_flow(
    kind: ModelKind,
    config: &Config,
    max_margin: &std::result::Result<MaxMarginResult, MaxMarginError>,
) -> Result<()> {
    if let Err(reason) = max_margin {
        if config.train.optimizer == crate::config::Optimizer::Flow
            && config.train.horizon_log10() > NON_SEPARABLE_FLOW_LIMIT.log10()
            && matches!(reason, MaxMarginError::NotSeparable { .. })
        {
            return Err(crate::error::Refusal(format!(
                "{}: {reason}. The loss then has a finite minimiser and the log-time gradient flow turns stiff; \
                 refusing train.t_max = {} > {NON_SEPARABLE_FLOW_LIMIT:e} for the flow (lower train.t_max or use a discrete optimizer)",
                kind.label(),
                crate::solve::training::format_time(config.train.horizon_log10())
            ))
            .into());
        }
    }
    Ok(())
}

/// The model trained (built here unless it is the seen-row one), its initial state, and the
/// observer of its trajectory.
pub(super) fn objective(
    kind: ModelKind,
    config: &Config,
    setup: &Setup,
    max_margin: &std::result::Result<MaxMarginResult, MaxMarginError>,
    reduced: Option<&SeenRowsImplicitRm>,
    reference_term: ReferenceTerm,
) -> (Option<Box<dyn MarginModel>>, Vec<f64>, Observer) {
    let tau = config.eval.tie_tolerance;
    let separator = max_margin.as_ref().ok().map(|m| m.params.clone());
    match (kind, reduced) {
        (ModelKind::Explicit, _) => (
            Some(Box::new(ExplicitRm::new(&setup.train))),
            setup.head_init.to_vec(),
            Observer::new(
                kind,
                setup,
                setup.head_init.to_vec(),
                separator,
                tau,
                reference_term,
            ),
        ),
        (ModelKind::Implicit, Some(r)) => (
            None,
            r.initial(),
            Observer::seen_rows(setup, &r.rows, separator, tau, reference_term),
        ),
        (ModelKind::Implicit, None) => {
            let u0 = setup.unembedding_init.full();
            let d = setup.dim();
            // ΔU* on the rows of T, scattered into [V, D].
            let separator = max_margin.as_ref().ok().map(|m| {
                let mut full = vec![0.0; u0.len()];
                let rows = m.rows.as_deref().unwrap_or_default();
                RowBlock::new(Some(rows), &m.params, d).scatter_into(&mut full, None);
                full
            });
            let theta0: Vec<f64> = u0.iter().copied().collect();
            (
                Some(Box::new(
                    ImplicitRm::new(
                        &setup.train,
                        u0.view(),
                        setup.config.beta,
                        config.train.imrm_gradient,
                    )
                    .with_reference(reference_term),
                )),
                theta0.clone(),
                Observer::new(kind, setup, theta0, separator, tau, reference_term),
            )
        }
    }
}

/// The seen-row IM-RM's stored rows `T ∪ E` (every pair's tokens): their ids, `U(0)` on them,
/// and the final values (`T` trained, the others at `U(0)`), flattened.
pub(super) fn pair_token_rows(
    setup: &Setup,
    reduced: &SeenRowsImplicitRm,
    theta: &[f64],
) -> (Vec<usize>, Vec<f64>, Vec<f64>) {
    let d = setup.dim();
    let rows = setup.pair_tokens();
    let initial = setup.unembedding_init.rows(&rows);
    let initial = initial.into_raw_vec_and_offset().0;
    let mut last = initial.clone();
    RowBlock::new(Some(&reduced.rows), theta, d).scatter_into(&mut last, Some(&rows));
    (rows, initial, last)
}

/// Per split, the EX-RM rewards `⟨u, h_{x,y}⟩` of every response at `u` summarised by
/// [`reward_summary`].
pub(super) fn explicit_rewards(setup: &Setup, u: &[f64]) -> Vec<RewardSummary> {
    let u = ndarray::ArrayView1::from(u);
    setup
        .splits()
        .map(|p| {
            reward_summary(
                &p.name,
                p.chosen_hidden.dot(&u).as_slice().expect("owned"),
                p.rejected_hidden.dot(&u).as_slice().expect("owned"),
            )
        })
        .collect()
}

/// Generates the setup from `config` and trains both models.
pub fn simulate(config: &Config, progress: &mut dyn FnMut(&Observation)) -> Result<Simulation> {
    let setup = Setup::try_generate(config)?;
    let tau = config.eval.tie_tolerance;
    let explicit = run_model(
        ModelKind::Explicit,
        config,
        &setup,
        max_margin_for(ModelKind::Explicit, &setup, tau),
        progress,
    )?;
    let implicit = run_model(
        ModelKind::Implicit,
        config,
        &setup,
        max_margin_for(ModelKind::Implicit, &setup, tau),
        progress,
    )?;
    Simulation::new(config.clone(), setup, explicit, implicit)
}
