//! `rmflow lm` (Theorem 2's setting on a real transformer) and `rmflow lm-recipe` (the paper's
//! recipe), MATH.md §6.

use super::args::OutputFlags;
use super::progress::{progress_bar, Progress};
use super::tables::print_simulation_tables;
use anyhow::Result;
use rmflow::error::InputError;
use rmflow::io::atomic::{check_inputs, check_not_overwriting_input, AtomicDir, Replace};
use rmflow::lm::recipe::{self, Mode, RecipeFile, Reward};
use rmflow::lm::{open_device, Architecture, Device, LmFile};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct LmArgs {
    /// Hugging Face folder with config.json (model_type bert, llama, qwen2, gpt2 or
    /// gpt_neox), *.safetensors and tokenizer.json (all-MiniLM-L6-v2:
    /// scripts/fetch-model.sh).
    #[arg(long)]
    model: PathBuf,
    /// Real-model config (experiments/persona.toml).
    #[arg(long)]
    config: PathBuf,
    /// Output folder, written atomically.
    #[arg(long)]
    out: PathBuf,
    /// Where the transformer runs: cpu, or cuda (needs --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// head: body frozen, head/unembedding trained by the engine's flow (Theorem 2);
    /// full: also fine-tune the whole model with AdamW (`[finetune]`), both written.
    #[arg(long, default_value = "head", value_parser = ["head", "full"])]
    mode: String,
    #[command(flatten)]
    output: OutputFlags,
}

#[derive(clap::Args)]
pub struct LmRecipeArgs {
    /// Hugging Face folder: config.json (model_type llama, qwen2, gpt_neox, gpt2, or bert
    /// for the pseudo-log-likelihood proxy), *.safetensors, tokenizer.json, and
    /// tokenizer_config.json for the chat template where the model has one.
    #[arg(long)]
    model: PathBuf,
    /// Recipe config (experiments/persona_paper.toml).
    #[arg(long)]
    config: PathBuf,
    /// Output folder, written atomically.
    #[arg(long)]
    out: PathBuf,
    /// Where the transformer runs: cpu, or cuda (needs --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// full: every parameter trained (the paper); head: body frozen, EX-RM head or IM-RM
    /// unembedding trained; both: head then full.
    #[arg(long, default_value = "full", value_parser = ["head", "full", "both"])]
    mode: String,
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
    #[arg(long, default_value = "both")]
    reward: String,
    /// Take the prompts from Anthropic's persona JSONL (e.g. `anthropics/evals`
    /// persona/agreeableness.jsonl) instead of data.statements: records whose
    /// answer_matching_behavior is " Yes", prompt = the record's question (sets
    /// data.format = "persona_jsonl", data.group_size = 1).
    #[arg(long)]
    persona_jsonl: Option<PathBuf>,
    #[command(flatten)]
    output: OutputFlags,
}

/// One progress bar per (stage, reward model), replaced when the training moves to the next.
pub(super) struct StageBars<K: PartialEq + Copy> {
    current: Option<(K, Progress)>,
}

impl<K: PartialEq + Copy> StageBars<K> {
    pub(super) fn new() -> Self {
        StageBars { current: None }
    }

    /// The bar of `key`, started (and the previous one finished) on first use.
    pub(super) fn bar(&mut self, key: K, start: impl FnOnce() -> Progress) -> &Progress {
        if self.current.as_ref().map(|c| c.0) != Some(key) {
            if let Some((_, b)) = self.current.take() {
                b.finish();
            }
            self.current = Some((key, start()));
        }
        &self.current.as_ref().expect("just set").1
    }

    pub(super) fn finish(self) {
        if let Some((_, b)) = self.current {
            b.finish();
        }
    }
}

pub fn run_lm(a: LmArgs) -> Result<()> {
    let device = open_device(&a.device)?;
    check_not_overwriting_input(&a.config, &a.out)?;
    let file = LmFile::from_file(&a.config)?;
    let statements = [
        Some(&file.lm.statements),
        file.lm.rejected_statements.as_ref(),
    ];
    check_inputs(
        [a.model.as_path()]
            .into_iter()
            .chain(statements.into_iter().flatten().map(PathBuf::as_path)),
        &a.out,
    )?;
    let mode = if a.mode == "full" {
        rmflow::lm::Mode::Full
    } else {
        rmflow::lm::Mode::Head
    };
    let dir = AtomicDir::create(&a.out, a.output.replace())?;
    let mut bars = StageBars::new();
    let mut head = Some(progress_bar("lm", 0, "steps"));
    if let Some(h) = &head {
        h.stage(&format!(
            "loading {}, extracting representations, training the heads (body frozen)",
            a.model.display()
        ));
    }
    let steps = file.finetune.steps as u64;
    let run = rmflow::lm::run_experiment(&a.model, &file, &device, mode, &mut |kind, r| {
        if let Some(h) = head.take() {
            h.finish();
        }
        bars.bar(kind, || {
            progress_bar(
                &format!("lm full fine-tuning {}", kind.label()),
                steps,
                "steps",
            )
        })
        .inc(&format!("loss {:.4}", r.loss));
    })?;
    if let Some(h) = head.take() {
        h.finish();
    }
    bars.finish();
    rmflow::lm::single_token::output::write_run(&dir, &run)?;
    let written = dir.commit()?;
    print_lm_run(&run, &file);
    outln!("wrote {}", written.display());
    Ok(())
}

fn print_lm_run(run: &rmflow::lm::RealModelRun, file: &LmFile) {
    let t = &run.timing;
    outln!("answer tokens (word → id): {:?}", run.answers);
    outln!(
        "load {:.1} s, extraction {:.1} s for {} sequences, {} tokens ({:.0} tokens/s), head-only training {:.1} s",
        t.load,
        t.extract,
        run.sequences_encoded,
        run.tokens_encoded,
        run.tokens_encoded as f64 / t.extract,
        t.train_head_only
    );
    outln!("prompts: {}", run.prompt_format);
    outln!("head-only (body frozen, single-token answers: Theorem 2's setting):");
    print_simulation_tables(&run.sim);
    if let Some(a) = &run.alignment {
        out!("{}", rmflow::lm::single_token::alignment::describe(a));
    }
    if run.arch == Architecture::Bert {
        outln!(
            "note: {}",
            rmflow::lm::single_token::output::MASKED_REFERENCE_NOTE
        );
    }
    if !run.full.is_empty() {
        outln!(
            "note: {}",
            rmflow::lm::single_token::output::NOT_THE_PAPER_NOTE
        );
        outln!(
            "full fine-tuning ({} AdamW steps, lr {:e}; {}):",
            file.finetune.steps,
            file.finetune.adamw.lr,
            run.full
                .iter()
                .map(|r| format!("{} {:.1} s", r.kind.name(), r.seconds))
                .collect::<Vec<_>>()
                .join(", ")
        );
        out!(
            "{}",
            rmflow::lm::single_token::output::full_table(&run.full)
        );
    }
}

pub fn run_recipe(a: LmRecipeArgs) -> Result<()> {
    let device = open_device(&a.device)?;
    check_not_overwriting_input(&a.config, &a.out)?;
    let mut file = RecipeFile::from_file(&a.config)?;
    if let Some(path) = &a.persona_jsonl {
        file.use_persona_jsonl(path.clone());
    }
    check_inputs([a.model.as_path(), file.data.statements.as_path()], &a.out)?;
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
    let modes: &[Mode] = match a.mode.as_str() {
        "head" => &[Mode::Head],
        "both" => &[Mode::Head, Mode::Full],
        _ => &[Mode::Full],
    };
    let kinds = reward_list(&a.reward)?;
    train_recipe(
        &a.model,
        &file,
        &a.out,
        device,
        modes,
        &kinds,
        a.output.replace(),
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

fn train_recipe(
    model: &Path,
    file: &RecipeFile,
    out: &Path,
    device: Device,
    modes: &[Mode],
    kinds: &[Reward],
    replace: Replace,
) -> Result<()> {
    let dir = AtomicDir::create(out, replace)?;
    let total = recipe::steps_per_run(file) as u64;
    let mut bars = StageBars::new();
    let mut loading = Some(progress_bar("lm-recipe", 0, "steps"));
    if let Some(l) = &loading {
        l.stage(&format!(
            "loading {} and building the pairs",
            model.display()
        ));
    }
    let outcome = recipe::run_recipe(
        model,
        file,
        &device,
        modes,
        kinds,
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
    )?;
    bars.finish();
    recipe::write_outputs(&dir, &outcome)?;
    let written = dir.commit()?;
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
