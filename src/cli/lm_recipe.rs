//! `rmflow lm-recipe` (the paper's recipe, MATH.md §6), with checkpoints a run resumes from
//! (`--checkpoint-every`, `--resume`; `lm::train::resume`).

use super::args::OutputFlags;
use super::lm::StageBars;
use super::progress::progress_bar;
use anyhow::Result;
use rmflow::error::InputError;
use rmflow::io::atomic::{check_inputs, check_not_overwriting_input, AtomicDir};
use rmflow::lm::recipe::{self, Mode, RecipeFile, Reward};
use rmflow::lm::train::resume::{checkpoint_dir_of, CheckpointDir};
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
    /// Recipe config (experiments/persona_paper.toml). Required unless --resume.
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
    /// Write a checkpoint every N epochs into OUT.checkpoint/ (0: only on SIGTERM). It holds
    /// every trained tensor, the optimizers' moments and the history; the previous one stays
    /// valid until the next is complete; the folder is removed when the run's output is in
    /// place. CPU runs only.
    #[arg(long, default_value_t = 1)]
    checkpoint_every: usize,
    /// Keep every checkpoint (default: only the newest), and the folder after the run.
    #[arg(long)]
    keep_checkpoints: bool,
    /// Continue the run whose --out was RUN_DIR from its newest checkpoint (in
    /// RUN_DIR.checkpoint/). --model, --config and the run's other options default to the
    /// run's own; given, they must equal them (a difference is refused, naming it). The
    /// outputs equal an uninterrupted run's. SIGTERM stops a run after its current step with a
    /// checkpoint and exit code 5.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
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
    /// The run's identity, written as `run.json` and compared on `--resume`.
    fn identity(&self) -> Result<Value> {
        Ok(json!({
            "rmflow_version": env!("CARGO_PKG_VERSION"),
            "model": self.model,
            "model_files": model_files(&self.model)?,
            "config": self.file,
            "modes": self.modes,
            "rewards": self.rewards,
        }))
    }

    /// The run `identity` describes (with its output at `out`).
    fn of_identity(identity: &Value, out: &Path) -> Result<Plan> {
        let bad = |what: &str| {
            InputError(format!(
                "--resume: the checkpoint's run.json has no valid `{what}`"
            ))
        };
        let field = |name: &str| identity.get(name).cloned().ok_or_else(|| bad(name));
        Ok(Plan {
            model: serde_json::from_value(field("model")?).map_err(|_| bad("model"))?,
            file: serde_json::from_value(field("config")?).map_err(|_| bad("config"))?,
            out: out.to_path_buf(),
            modes: serde_json::from_value(field("modes")?).map_err(|_| bad("modes"))?,
            rewards: serde_json::from_value(field("rewards")?).map_err(|_| bad("rewards"))?,
        })
    }
}

/// The size and modification time of every file of the model folder: a model changed since a
/// run started is refused on `--resume`.
fn model_files(dir: &Path) -> Result<Value> {
    let mut files = serde_json::Map::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| InputError(format!("cannot read model folder {}: {e}", dir.display())))?;
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let meta = e.metadata()?;
        if meta.is_file() {
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            let name = e.file_name().to_string_lossy().to_string();
            files.insert(name, json!([meta.len(), modified]));
        }
    }
    Ok(Value::Object(files))
}

/// The first path at which `a` and `b` differ (`config.train.lr`), if any.
fn first_difference(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let (u, v) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                first_difference(u, v, &format!("{at}.{k}"))
            })
        }
        _ if a == b => None,
        _ => Some(at.trim_start_matches('.').to_string()),
    }
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
        file.use_persona_jsonl(path.clone());
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
    let dir = checkpoint_dir_of(run_dir);
    if !dir.join("run.json").is_file() {
        return Err(InputError(format!(
            "--resume {}: no checkpoints in {} (was the run started with this --out?)",
            run_dir.display(),
            dir.display()
        ))
        .into());
    }
    let (checkpoints, identity) =
        CheckpointDir::open(&dir, a.checkpoint_every, a.keep_checkpoints)?;
    let saved = Plan::of_identity(&identity, run_dir)?;
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
        now = plan_of_args(&given)?.identity()?;
    } else {
        now["model_files"] = model_files(&saved.model)?;
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
    if let Some(field) = first_difference(&identity, &now, "") {
        return Err(InputError(format!(
            "--resume {}: `{field}` differs from the interrupted run's ({} vs {}); resume with the run's own, or start a new run",
            run_dir.display(),
            pointer(&identity, &field),
            pointer(&now, &field)
        ))
        .into());
    }
    Ok((saved, checkpoints))
}

/// The value at a dotted path, for messages.
fn pointer(v: &Value, dotted: &str) -> String {
    let p = format!("/{}", dotted.replace('.', "/"));
    v.pointer(&p).map_or("absent".into(), |x| x.to_string())
}

pub fn run_recipe(a: LmRecipeArgs) -> Result<()> {
    let device = open_device(&a.device)?;
    let (plan, dir, checkpoints) = match &a.resume {
        Some(run_dir) => {
            let (plan, c) = resumed_plan(&a, run_dir)?;
            let dir = AtomicDir::create(&plan.out, a.output.replace())?;
            (plan, dir, c)
        }
        None => {
            let plan = plan_of_args(&a)?;
            check_inputs(
                [plan.model.as_path(), plan.file.data.statements.as_path()],
                &plan.out,
            )?;
            let dir = AtomicDir::create(&plan.out, a.output.replace())?;
            let c = CheckpointDir::create(
                &checkpoint_dir_of(&plan.out),
                &plan.identity()?,
                a.checkpoint_every,
                a.keep_checkpoints,
            )?;
            (plan, dir, c)
        }
    };
    train(&plan, device, dir, checkpoints, a.keep_checkpoints)
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
    let total = recipe::steps_per_run(&plan.file) as u64;
    let mut bars = StageBars::new();
    let mut loading = Some(progress_bar("lm-recipe", 0, "steps"));
    if let Some(l) = &loading {
        l.stage(&format!(
            "loading {} and building the pairs",
            plan.model.display()
        ));
    }
    let outcome = match recipe::run_recipe(
        &plan.model,
        &plan.file,
        &device,
        &plan.modes,
        &plan.rewards,
        Some(&mut checkpoints),
        &mut |mode, kind, event| {
            if let Some(l) = loading.take() {
                l.finish();
            }
            let bar = bars.bar((mode, kind), || {
                progress_bar(
                    &format!("lm-recipe {} {}", mode.name(), kind.label()),
                    total,
                    "steps",
                )
            });
            match event {
                recipe::TrainEvent::Stage(msg) => bar.stage(&msg),
                recipe::TrainEvent::Step(r) => {
                    bar.inc(&format!("epoch {} loss {:.4}", r.epoch, r.loss))
                }
                recipe::TrainEvent::Evaluated { .. } => {}
            }
        },
    ) {
        Ok(o) => o,
        Err(e) => {
            // Nothing to resume from yet (e.g. a bad input found while building the pairs).
            if checkpoints.is_empty() {
                let _ = checkpoints.remove();
            }
            return Err(e);
        }
    };
    bars.finish();
    recipe::write_outputs(&dir, &outcome)?;
    let written = dir.commit()?;
    if !keep {
        checkpoints.remove()?;
    }
    print_recipe_outcome(&outcome);
    outln!("wrote {}", written.display());
    Ok(())
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
