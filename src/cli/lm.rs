//! `rmflow lm` (Theorem 2's setting on a real transformer) and `rmflow lm-recipe` (the paper's
//! recipe), MATH.md §6.

use super::args::OutputFlags;
use super::progress::{progress_bar, Progress};
use super::tables::print_simulation_tables;
use anyhow::Result;
use rmflow::io::atomic::{check_inputs, check_not_overwriting_input, AtomicDir};
use rmflow::lm::{open_device, Architecture, LmFile};
use std::path::PathBuf;

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
        out!("{}", rmflow::lm::train::alignment::describe(a));
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
