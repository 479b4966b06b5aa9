//! One run end to end: setup → max-margin separators → both reward models trained → trajectory.

use crate::config::{Config, GradientPath};
use crate::max_margin::{
    implicit_dual_prediction, max_margin_head, max_margin_unembedding_delta, MaxMarginSolution,
};
use crate::observables::{
    convergence, reward_summary, split_metrics, Observation, RewardSummary, SplitMetrics,
};
use crate::ode::OdeStats;
use crate::reward::{mean_loss, ExplicitRm, ImplicitRm, MarginModel, SeenRowsImplicitRm};
use crate::synthetic::Setup;
use crate::training::train;
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
    /// `u*` (EX-RM) or `ΔU*` flattened (IM-RM).
    pub params: Vec<f64>,
    pub solution: MaxMarginSolution,
    /// The separator's own accuracy on every split (tie tolerance as configured).
    pub accuracy: Vec<SplitMetrics>,
}

/// A trained model with its trajectory.
#[derive(Debug, Clone)]
pub struct ModelRun {
    pub kind: ModelKind,
    pub initial: Vec<f64>,
    pub final_params: Vec<f64>,
    pub trajectory: Vec<Observation>,
    pub steps: u64,
    pub ode: Option<OdeStats>,
    pub max_margin: std::result::Result<MaxMarginResult, String>,
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

/// The paper's ablations, read off the same setup (MATH.md §1, §6).
#[derive(Debug, Clone)]
pub struct Ablations {
    /// IM-RM without a reference model, `r = β ln π_U(y|x)`: the same training (the reference
    /// term has no gradient), scored without subtracting `β ln π_ref`. Per split at `t_max`.
    pub imrm_no_reference: Vec<SplitMetrics>,
    /// The same at `t = 0` (`U = U(0)`): on unseen tokens, whose rows never move, the two agree
    /// exactly; the ranking there is `U(0)`'s.
    pub imrm_no_reference_initial: Vec<SplitMetrics>,
    /// `K > 1`: the EX-RM on the mean of the hidden states after each response token
    /// (`(1/K) Σ_k h_{x,y≤k}`, the official code's alternative) instead of the last one, trained
    /// by the same flow. `None` for `K = 1`, where the two coincide.
    pub exrm_token_mean: Option<ModelRun>,
}

/// Measures a model on every split at parameters `θ` (IM-RM margins always through the faithful
/// full-vocabulary log-softmax, whatever gradient path trains it).
pub struct Observer {
    kind: ModelKind,
    split_models: Vec<(String, Box<dyn MarginModel>)>,
    theta0: Vec<f64>,
    unseen_rows: Vec<usize>,
    dim: usize,
    reference: Option<Vec<f64>>,
    tie_tolerance: f64,
}

impl Observer {
    pub fn new(
        kind: ModelKind,
        setup: &Setup,
        theta0: Vec<f64>,
        reference: Option<Vec<f64>>,
        tie_tolerance: f64,
    ) -> Observer {
        let split_models: Vec<(String, Box<dyn MarginModel>)> = setup
            .splits()
            .map(|p| {
                let m: Box<dyn MarginModel> = match kind {
                    ModelKind::Explicit => Box::new(ExplicitRm::new(p)),
                    ModelKind::Implicit => Box::new(ImplicitRm::new(
                        p,
                        setup.unembedding_init.view(),
                        setup.config.beta,
                        GradientPath::Full,
                    )),
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
            reference,
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

    /// All observables at `(time, step, θ)`.
    pub fn observe(&self, time: crate::training::ObsTime, step: u64, theta: &[f64]) -> Observation {
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
        let convergence = self.reference.as_ref().map(|r| match self.kind {
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

/// Max-margin separator of `kind` on the training pairs, with its accuracy on every split.
pub fn max_margin_for(
    kind: ModelKind,
    setup: &Setup,
    tie_tolerance: f64,
) -> std::result::Result<MaxMarginResult, String> {
    let beta = setup.config.beta;
    match kind {
        ModelKind::Explicit => {
            let (u, solution) =
                max_margin_head(&setup.train.hidden_differences()).map_err(|e| e.to_string())?;
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
                solution,
                accuracy,
            })
        }
        ModelKind::Implicit => {
            let (delta, solution) =
                max_margin_unembedding_delta(&setup.train, beta, setup.vocab_size())
                    .map_err(|e| e.to_string())?;
            let accuracy = setup
                .splits()
                .map(|p| {
                    split_metrics(
                        &p.name,
                        &implicit_dual_prediction(&setup.train, &solution.dual, beta, p),
                        tie_tolerance,
                    )
                })
                .collect();
            Ok(MaxMarginResult {
                params: delta.into_raw_vec_and_offset().0,
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
    max_margin: std::result::Result<MaxMarginResult, String>,
    progress: &mut dyn FnMut(&Observation),
) -> Result<ModelRun> {
    run_model_with(kind, config, setup, max_margin, &mut |o, _| {
        progress(o);
        Ok(())
    })
}

/// [`run_model`] with a hook that also sees the parameters `θ(t)` at every observation.
pub fn run_model_with(
    kind: ModelKind,
    config: &Config,
    setup: &Setup,
    max_margin: std::result::Result<MaxMarginResult, String>,
    hook: &mut dyn FnMut(&Observation, &[f64]) -> Result<()>,
) -> Result<ModelRun> {
    let tau = config.eval.tie_tolerance;
    if let Err(reason) = &max_margin {
        if config.train.optimizer == crate::config::Optimizer::Flow
            && config.train.horizon_log10() > NON_SEPARABLE_FLOW_LIMIT.log10()
            && reason.contains("not linearly separable")
        {
            return Err(crate::error::Refusal(format!(
                "{}: {reason}. The loss then has a finite minimiser and the log-time gradient flow turns stiff; \
                 refusing train.t_max = {} > {NON_SEPARABLE_FLOW_LIMIT:e} for the flow (lower train.t_max or use a discrete optimizer)",
                kind.label(),
                crate::training::format_time(config.train.horizon_log10())
            ))
            .into());
        }
    }
    // The sparse IM-RM path trains only the rows of seen tokens (flow, GD, Adam); AdamW's decay
    // moves every row, so it keeps the full state.
    let reduced = (kind == ModelKind::Implicit
        && config.train.imrm_gradient == GradientPath::Sparse
        && config.train.optimizer != crate::config::Optimizer::Adamw
        && setup.train.response_length() == 1)
        .then(|| {
            SeenRowsImplicitRm::new(
                &setup.train,
                setup.unembedding_init.view(),
                setup.config.beta,
            )
        });
    let initial: Vec<f64> = match kind {
        ModelKind::Explicit => setup.head_init.to_vec(),
        ModelKind::Implicit => setup.unembedding_init.iter().copied().collect(),
    };
    let (objective, start): (Box<dyn MarginModel>, Vec<f64>) = match (kind, &reduced) {
        (ModelKind::Explicit, _) => (Box::new(ExplicitRm::new(&setup.train)), initial.clone()),
        (ModelKind::Implicit, Some(r)) => (Box::new(r.clone()), r.initial()),
        (ModelKind::Implicit, None) => (
            Box::new(ImplicitRm::new(
                &setup.train,
                setup.unembedding_init.view(),
                setup.config.beta,
                config.train.imrm_gradient,
            )),
            initial.clone(),
        ),
    };
    fn full<'a>(
        reduced: &Option<SeenRowsImplicitRm>,
        theta: &'a [f64],
    ) -> std::borrow::Cow<'a, [f64]> {
        match reduced {
            Some(r) => std::borrow::Cow::Owned(r.embed(theta)),
            None => std::borrow::Cow::Borrowed(theta),
        }
    }
    let observer = Observer::new(
        kind,
        setup,
        initial.clone(),
        max_margin.as_ref().ok().map(|m| m.params.clone()),
        tau,
    );
    let mut trajectory = Vec::new();
    let outcome = train(
        objective.as_ref(),
        &start,
        &config.train,
        kind.label(),
        &mut |t, step, theta| {
            let theta = full(&reduced, theta);
            let obs = observer.observe(t, step, &theta);
            hook(&obs, &theta)?;
            trajectory.push(obs);
            Ok(())
        },
    )?;
    let final_params = full(&reduced, &outcome.theta).into_owned();
    Ok(ModelRun {
        kind,
        initial,
        final_params,
        trajectory,
        steps: outcome.steps,
        ode: outcome.ode,
        max_margin,
        rewards: Vec::new(),
    })
}

/// Per split, the EX-RM rewards `⟨u, h_{x,y}⟩` of every response at `u` summarised by
/// [`reward_summary`].
fn explicit_rewards(setup: &Setup, u: &[f64]) -> Vec<RewardSummary> {
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

/// The pair sets of `setup` with each response's hidden representation replaced by the mean of
/// the states after each of its tokens, `(1/K) Σ_{k=1..K} s_k` (`s_K` is the last one).
pub fn token_mean_setup(setup: &Setup) -> Setup {
    let mut s = setup.clone();
    for p in std::iter::once(&mut s.train).chain(s.evals.iter_mut()) {
        let k = p.response_length();
        for (last, prefixes) in [
            (&mut p.chosen_hidden, &p.chosen_prefix_hidden),
            (&mut p.rejected_hidden, &p.rejected_prefix_hidden),
        ] {
            for i in 0..last.nrows() {
                let mut mean = last.row(i).to_owned();
                for j in 1..k {
                    mean += &prefixes.slice(ndarray::s![i, j, ..]);
                }
                last.row_mut(i).assign(&(mean / k as f64));
            }
        }
    }
    s
}

impl Simulation {
    /// Assembles a simulation and computes its [`Ablations`] (one more EX-RM flow when `K > 1`).
    pub fn new(
        config: Config,
        setup: Setup,
        mut explicit: ModelRun,
        mut implicit: ModelRun,
    ) -> Result<Simulation> {
        let tau = config.eval.tie_tolerance;
        explicit.rewards = explicit_rewards(&setup, &explicit.final_params);
        // One full-softmax pass per split gives the IM-RM's rewards r⁺, r⁻ (β Σ (ln π_U − ln π_ref)),
        // hence its margins; adding back the reference term gives the no-reference margins.
        let (mut now, mut start) = (Vec::new(), Vec::new());
        for p in setup.splits() {
            let im = ImplicitRm::new(
                p,
                setup.unembedding_init.view(),
                setup.config.beta,
                GradientPath::Full,
            );
            let (chosen, rejected): (Vec<f64>, Vec<f64>) =
                im.rewards(&implicit.final_params).into_iter().unzip();
            implicit
                .rewards
                .push(reward_summary(&p.name, &chosen, &rejected));
            let reference = im.reference_margins();
            let no_reference: Vec<f64> = chosen
                .iter()
                .zip(&rejected)
                .zip(&reference)
                .map(|((a, b), r)| a - b + r)
                .collect();
            now.push(split_metrics(&p.name, &no_reference, tau));
            start.push(split_metrics(&p.name, &reference, tau));
        }
        let exrm_token_mean = if setup.train.response_length() > 1 {
            let mean_setup = token_mean_setup(&setup);
            let mut run = run_model(
                ModelKind::Explicit,
                &config,
                &mean_setup,
                max_margin_for(ModelKind::Explicit, &mean_setup, tau),
                &mut |_| {},
            )?;
            run.rewards = explicit_rewards(&mean_setup, &run.final_params);
            Some(run)
        } else {
            None
        };
        Ok(Simulation {
            config,
            setup,
            explicit,
            implicit,
            ablations: Ablations {
                imrm_no_reference: now,
                imrm_no_reference_initial: start,
                exrm_token_mean,
            },
        })
    }

    pub fn runs(&self) -> [&ModelRun; 2] {
        [&self.explicit, &self.implicit]
    }

    /// `U(t_max)` as [V, D].
    pub fn final_unembedding(&self) -> ndarray::Array2<f64> {
        ndarray::Array2::from_shape_vec(
            (self.setup.vocab_size(), self.setup.dim()),
            self.implicit.final_params.clone(),
        )
        .expect("V×D")
    }

    /// `u(t_max)`.
    pub fn final_head(&self) -> Array1<f64> {
        Array1::from(self.explicit.final_params.clone())
    }
}
