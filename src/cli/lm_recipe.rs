//! `rmflow lm-recipe` (the paper's recipe, MATH.md §6), with checkpoints a run resumes from
//! (`--checkpoint-every`, `--resume`; `lm::train::resume`).

use super::args::OutputFlags;
use super::lm::StageBars;
use super::progress::{progress_bar, Progress};
use super::resume::{refuse_difference, CheckpointFlags};
use anyhow::Result;
use rmflow::error::InputError;
use rmflow::io::atomic::{check_inputs, check_not_overwriting_input, AtomicDir};
use rmflow::lm::recipe::{self, Mode, RecipeFile, Reward, RunIdentity};
use rmflow::lm::train::resume::CheckpointDir;
use rmflow::lm::{open_device, Architecture};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Clone)]
pub struct LmRecipeArgs {
    /// Hugging Face folder: config.json (model_type llama, qwen2, gpt_neox, gpt2, or bert
    /// for the pseudo-log-likelihood proxy), *.safetensors, tokenizer.json, and
    /// tokenizer_config.json for the chat template where the model has one. Required unless
    /// --resume.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Recipe config: the persona (experiments/persona_paper.toml) or preference data
    /// (experiments/uf_shift.toml, experiments/math_shift.toml). Required unless --resume.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output folder, written atomically. Required unless --resume.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where the transformer runs: cpu, or cuda (needs --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// full: every parameter trained (the paper); head: body frozen, EX-RM head or IM-RM
    /// unembedding trained; both: head then full. [default: full]
    #[arg(long, value_parser = ["head", "full", "both"])]
    mode: Option<String>,
    /// Override train.epochs of the config (e.g. a short smoke run; ≥ 1).
    #[arg(long)]
    epochs: Option<usize>,
    /// Override train.eval_every_epochs: evaluate every split every N epochs (1: a per-epoch
    /// history, as the official `validate_every = 1`), and after the last.
    #[arg(long)]
    eval_every: Option<usize>,
    /// Reward models to train, comma-separated: exrm (last token), imrm, exrm_token_mean
    /// (mean reward over response tokens), imrm_no_ref (no reference model, trained so),
    /// exgrm (generative RM, P("Yes"), causal LMs); both = exrm,imrm; all = every one. Each
    /// starts from the same pretrained weights, so one at a time gives the same numbers.
    /// [default: both]
    #[arg(long)]
    reward: Option<String>,
    /// Take the prompts from Anthropic's persona JSONL (e.g. `anthropics/evals`
    /// persona/agreeableness.jsonl) instead of data.statements: records whose
    /// answer_matching_behavior is " Yes", prompt = the record's question (sets
    /// data.format = "persona_jsonl", data.group_size = 1).
    #[arg(long)]
    persona_jsonl: Option<PathBuf>,
    #[command(flatten)]
    checkpoints: CheckpointFlags,
    #[command(flatten)]
    output: OutputFlags,
}

/// What a recipe run is: the model, the resolved config, what it trains, where it writes.
struct Plan {
    model: PathBuf,
    file: RecipeFile,
    out: PathBuf,
    modes: Vec<Mode>,
    rewards: Vec<Reward>,
}

impl Plan {
    /// The run's identity, written as `run.json` and compared on `--resume` (with `recorded`,
    /// the run's own `model_files`, whose form [`model_files`] follows).
    fn identity(&self, recorded: Option<&Value>) -> Result<Value> {
        Ok(json!({
            "rmflow_version": env!("CARGO_PKG_VERSION"),
            "model": self.model,
            "model_files": model_files(&self.model, recorded)?,
            "config": self.file,
            "modes": self.modes,
            "rewards": self.rewards,
        }))
    }

    /// The run `identity` (read from `run_json`) describes, with its output at `out`.
    fn of_identity(identity: &Value, run_json: &Path, out: &Path) -> Result<Plan> {
        let id = RunIdentity::of(identity, run_json)?;
        Ok(Plan {
            model: id.model,
            file: id.config,
            out: out.to_path_buf(),
            modes: id.modes,
            rewards: id.rewards,
        })
    }
}

/// The size and SHA-256 of every file of the model folder (`[bytes, "hex"]`): a model whose
/// content changed since a run started is refused on `--resume`, while the same files imported
/// or copied again (a new machine) are not. Runs started before the digest recorded each file's
/// modification time instead (`[bytes, seconds]`); where `recorded` (the run's own `model_files`)
/// is of that form, the folder is described in it, so that those runs resume as they did.
fn model_files(dir: &Path, recorded: Option<&Value>) -> Result<Value> {
    let mut files = serde_json::Map::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| InputError(format!("cannot read model folder {}: {e}", dir.display())))?;
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    let by_time = recorded
        .and_then(Value::as_object)
        .and_then(|m| m.values().next())
        .is_some_and(|v| v[1].is_number());
    for e in entries {
        let meta = e.metadata()?;
        if meta.is_file() {
            let name = e.file_name().to_string_lossy().to_string();
            let mark = match by_time {
                true => json!(meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs())),
                false => json!(file_sha256(&e.path())?),
            };
            files.insert(name, json!([meta.len(), mark]));
        }
    }
    Ok(Value::Object(files))
}

/// SHA-256 (hex) of a file's bytes.
fn file_sha256(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path)
        .map_err(|e| InputError(format!("cannot read {}: {e}", path.display())))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)
        .map_err(|e| InputError(format!("cannot read {}: {e}", path.display())))?;
    Ok(format!("{:x}", h.finalize()))
}

/// `--mode`.
fn modes_of(mode: &str) -> Vec<Mode> {
    match mode {
        "head" => vec![Mode::Head],
        "both" => vec![Mode::Head, Mode::Full],
        _ => vec![Mode::Full],
    }
}

/// The plan the arguments give (every required one present).
fn plan_of_args(a: &LmRecipeArgs) -> Result<Plan> {
    let need = |v: &Option<PathBuf>, flag: &str| {
        v.clone()
            .ok_or_else(|| InputError(format!("{flag} is required (or --resume RUN_DIR)")))
    };
    let (model, config, out) = (
        need(&a.model, "--model")?,
        need(&a.config, "--config")?,
        need(&a.out, "--out")?,
    );
    check_not_overwriting_input(&config, &out)?;
    let mut file = RecipeFile::from_file(&config)?;
    if let Some(path) = &a.persona_jsonl {
        file.use_persona_jsonl(path.clone())?;
    }
    if a.epochs == Some(0) || a.eval_every == Some(0) {
        return Err(InputError(
            "--epochs and --eval-every must be ≥ 1 (an untrained model is not a run)".into(),
        )
        .into());
    }
    if let Some(e) = a.epochs {
        file.train.epochs = e;
    }
    if let Some(e) = a.eval_every {
        file.train.eval_every_epochs = e;
    }
    Ok(Plan {
        model,
        file,
        out,
        modes: modes_of(a.mode.as_deref().unwrap_or("full")),
        rewards: reward_list(a.reward.as_deref().unwrap_or("both"))?,
    })
}

/// `--resume RUN_DIR`: the interrupted run's plan and checkpoints; the arguments given must
/// describe the same run.
fn resumed_plan(a: &LmRecipeArgs, run_dir: &Path) -> Result<(Plan, CheckpointDir)> {
    let (checkpoints, identity) = a.checkpoints.open(run_dir)?;
    let run_json = checkpoints.path().join("run.json");
    let saved = Plan::of_identity(&identity, &run_json, run_dir)?;
    let given = LmRecipeArgs {
        model: a.model.clone().or(Some(saved.model.clone())),
        config: a.config.clone(),
        out: Some(a.out.clone().unwrap_or(run_dir.to_path_buf())),
        ..a.clone()
    };
    if let Some(out) = &a.out {
        if out != run_dir {
            return Err(InputError(format!(
                "--out {} differs from --resume {}",
                out.display(),
                run_dir.display()
            ))
            .into());
        }
    }
    let mut now = identity.clone();
    if given.config.is_some() {
        now = plan_of_args(&given)?.identity(identity.get("model_files"))?;
    } else {
        now["model_files"] = model_files(&saved.model, identity.get("model_files"))?;
        let (m, r) = (&a.mode, &a.reward);
        if let Some(m) = m {
            now["modes"] = json!(modes_of(m));
        }
        if let Some(r) = r {
            now["rewards"] = json!(reward_list(r)?);
        }
        if a.epochs.is_some() || a.eval_every.is_some() || a.persona_jsonl.is_some() {
            return Err(InputError(
                "--resume: --epochs, --eval-every and --persona-jsonl change the config; give --config as well, or leave them out".into(),
            )
            .into());
        }
    }
    now["rmflow_version"] = identity["rmflow_version"].clone();
    refuse_difference(&identity, &now, run_dir)?;
    Ok((saved, checkpoints))
}

pub fn run_recipe(a: LmRecipeArgs) -> Result<()> {
    let device = open_device(&a.device)?;
    let (plan, dir, checkpoints) = match &a.checkpoints.resume {
        Some(run_dir) => {
            let (plan, c) = resumed_plan(&a, run_dir)?;
            let dir = AtomicDir::create(&plan.out, a.output.replace())?;
            (plan, dir, c)
        }
        None => {
            let plan = plan_of_args(&a)?;
            let mut inputs = vec![plan.model.as_path()];
            inputs.extend(plan.file.data_paths());
            check_inputs(inputs, &plan.out)?;
            let dir = AtomicDir::create(&plan.out, a.output.replace())?;
            let c = a.checkpoints.create(&plan.out, &plan.identity(None)?)?;
            (plan, dir, c)
        }
    };
    train(
        &plan,
        device,
        dir,
        checkpoints,
        a.checkpoints.keep_checkpoints,
    )
}

/// `--reward`: names separated by commas (`both`, `all` as shorthands), each once, in the
/// order given.
fn reward_list(arg: &str) -> Result<Vec<Reward>> {
    let mut out: Vec<Reward> = Vec::new();
    for name in arg.split(',').map(str::trim) {
        let add: Vec<Reward> = match name {
            "both" => vec![Reward::Exrm, Reward::Imrm],
            "all" => Reward::ALL.to_vec(),
            _ => vec![Reward::from_name(name).ok_or_else(|| {
                InputError(format!(
                    "--reward: unknown reward model {name:?} (one of {}, both, all)",
                    Reward::ALL.map(|r| r.name()).join(", ")
                ))
            })?],
        };
        for r in add {
            if !out.contains(&r) {
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// Trains the plan's reward models (checkpointed), writes the outputs, removes the checkpoints.
fn train(
    plan: &Plan,
    device: rmflow::lm::Device,
    dir: AtomicDir,
    mut checkpoints: CheckpointDir,
    keep: bool,
) -> Result<()> {
    let mut bars = RecipeBars::new(plan);
    let outcome = match recipe::run_recipe(
        &plan.model,
        &plan.file,
        &device,
        (&plan.modes, &plan.rewards),
        Some(&mut checkpoints),
        &mut |event| bars.show(event),
    ) {
        Ok(o) => o,
        Err(e) => {
            super::resume::after_failure(checkpoints, &e);
            return Err(e);
        }
    };
    bars.bars.finish();
    recipe::write_outputs(&dir, &outcome)?;
    let written = dir.commit()?;
    if !keep {
        checkpoints.remove()?;
    }
    print_recipe_outcome(&outcome);
    outln!("wrote {}", written.display());
    Ok(())
}

/// The run's progress bars: one while loading the model and building the pairs, then one per
/// mode and reward model.
struct RecipeBars {
    bars: StageBars<(Mode, Reward)>,
    /// The loading bar, until the pairs are built.
    loading: Option<Progress>,
    /// Optimizer steps of each reward model (known once the pairs are built).
    steps: u64,
}

impl RecipeBars {
    fn new(plan: &Plan) -> RecipeBars {
        let loading = progress_bar("lm-recipe", 0, "steps");
        loading.stage(&format!(
            "loading {} and building the pairs",
            plan.model.display()
        ));
        RecipeBars {
            bars: StageBars::new(),
            loading: Some(loading),
            steps: 0,
        }
    }

    fn show(&mut self, event: recipe::RecipeEvent) {
        let (mode, kind, event) = match event {
            recipe::RecipeEvent::Built {
                problem,
                steps_per_run,
            } => {
                self.steps = steps_per_run as u64;
                if let Some(l) = self.loading.take() {
                    l.stage(&recipe::problem_summary(problem));
                    l.finish();
                }
                return;
            }
            recipe::RecipeEvent::Train(m, k, e) => (m, k, e),
        };
        let steps = self.steps;
        let bar = self.bars.bar((mode, kind), || {
            progress_bar(
                &format!("lm-recipe {} {}", mode.name(), kind.label()),
                steps,
                "steps",
            )
        });
        match event {
            recipe::TrainEvent::Stage(msg) => bar.stage(&msg),
            recipe::TrainEvent::Step(r) => bar.advance_to(
                r.step as u64,
                &format!("epoch {} loss {:.4}", r.epoch, r.loss),
            ),
            e @ recipe::TrainEvent::Resumed { steps, .. } => {
                let msg = e.resumed_message();
                bar.advance_to(steps as u64, &msg);
                bar.stage(&msg);
            }
            recipe::TrainEvent::Scored { sequences, of } => {
                bar.detail(&format!("{sequences} of {of} sequences scored"))
            }
            recipe::TrainEvent::Evaluated { .. } => {}
        }
    }
}

fn print_recipe_outcome(outcome: &recipe::RecipeOutcome) {
    outln!(
        "{} ({:?}), prompts: {}; {} sequences",
        outcome.model.display(),
        outcome.arch,
        outcome.problem.prompt_format,
        outcome.problem.sequences.len()
    );
    if outcome.arch == Architecture::Bert {
        outln!("note: {}", recipe::PSEUDO_LIKELIHOOD_NOTE);
    }
    for r in &outcome.runs {
        outln!(
            "{} {}: {} parameters trained, {} steps, {:.1} s ({:.3} s per step)",
            r.mode.name(),
            r.reward.label(),
            r.parameters,
            r.history.len(),
            r.seconds,
            r.step_seconds / r.history.len().max(1) as f64
        );
    }
    out!("{}", recipe::final_table(outcome));
}
