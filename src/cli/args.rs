//! The `rmflow` command tree and the flags several commands share.

use clap::{Parser, Subcommand};
use rmflow::config::{Config, GradientPath};
use rmflow::io::atomic::Replace;
use std::path::Path;

/// The exit codes, printed after every command's help.
pub const EXIT_CODES: &str = "Exit codes:
  0  success
  1  verify: at least one claim FAILED
  2  usage or input error: bad arguments, invalid config (the field and file are named),
     missing input file, output path taken (no --force) or unusable
  3  refused: estimated memory above what is available (--ignore-memory-estimate overrides),
     or a long gradient flow on data certified not linearly separable
  4  failed while running: numerical breakdown (NaN, step-size underflow), I/O error
  5  interrupted by SIGTERM (lm-recipe, ham-cycle): stopped after the current step or
     evaluation with a checkpoint, or while scoring sequences; continue with --resume
Outputs are written atomically: on any error no output folder or file is left behind, except
when stdout fails after the output was committed (exit 4): the files are complete and kept.";

#[derive(Parser)]
#[command(
    name = "rmflow",
    version,
    about = "Learning dynamics of implicit (DPO-style) vs explicit reward models (Razin et al., arXiv 2507.07981)",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Train both reward models on a synthetic setup and export everything (layout: experiments/README.md).
    #[command(after_help = EXIT_CODES)]
    Simulate(super::simulate::SimulateArgs),
    /// Verify Theorem 2 numerically, claim by claim; exits 1 if any claim fails.
    #[command(after_help = EXIT_CODES)]
    Verify(super::verify::VerifyArgs),
    /// Learning dynamics (MATH.md §3): ρ coefficients and reward-velocity decompositions along training.
    #[command(after_help = EXIT_CODES)]
    Dynamics(super::dynamics::DynamicsArgs),
    /// Accuracy of both models across a parameter sweep, mean and 95 % interval over seeds;
    /// `--shard I/N` runs one slice (Slurm array task), `sweep merge` joins the slices.
    #[command(after_help = EXIT_CODES)]
    Sweep(super::sweep::SweepArgs),
    /// Real-model mode (MATH.md §6, feature `lm`): Theorem 2's setting — single-token answers in a
    /// `[MASK]` slot or after the prompt — on a pretrained transformer's frozen representations
    /// (head-only, exported in simulate's layout), and with `--mode full` full fine-tuning of the
    /// whole model for both reward types (in `full/`). The paper's own recipe is `lm-recipe`.
    #[cfg(feature = "lm")]
    #[command(after_help = EXIT_CODES)]
    Lm(super::lm::LmArgs),
    /// The paper's experiments in its own recipe (MATH.md §6, feature `lm`): the persona's
    /// responses, a prefix and a word (Section 5.1, `[data]` and `[responses]`), or preference datasets
    /// (Section 5.2, `[preferences]`: a training set and named evaluation sets, token-level and
    /// domain shift), sequence-level IM-RM and EX-RM rewards, Adam on every parameter (`full`)
    /// or on the head / unembedding over frozen representations (`head`).
    #[cfg(feature = "lm")]
    #[command(name = "lm-recipe", after_help = EXIT_CODES)]
    LmRecipe(super::lm_recipe::LmRecipeArgs),
    /// The paper's mechanism measured on a real LM (MATH.md §3, feature `lm`): for each
    /// evaluation pair of a recipe config, the IM-RM's unembedding margin velocity split into
    /// token identity and the rest (with the tokens that carry it), the EX-RM head's, and the
    /// actual change after one small gradient step on the part and on the whole model, at η and
    /// η/2 (the first-order check). At step 0 (--model, --config) or at a run's checkpoint.
    #[cfg(feature = "lm")]
    #[command(name = "lm-dynamics", after_help = EXIT_CODES)]
    LmDynamics(super::lm_dynamics::LmDynamicsArgs),
    /// The Hamiltonian-cycle experiment (MATH.md §7, feature `lm`): does an IM-RM that verifies
    /// Hamiltonian cycles generate them? A small Llama pretrained on random vertex orders is
    /// `π_ref`; the IM-RM and the EX-RM are trained from it by the recipe; every epoch measures
    /// verification accuracy, sampled and greedy generation and, for n ≤ 8, the exact `π(C|x)`.
    #[cfg(feature = "lm")]
    #[command(name = "ham-cycle", after_help = EXIT_CODES)]
    HamCycle(super::ham_cycle::HamCycleArgs),
    /// A long run read before it ends (feature `lm`): the evaluations its newest checkpoint
    /// holds, as CSV on stdout (`lm-recipe`: metrics.csv's columns and a `status`, or with
    /// --alignment alignment.csv's; `ham-cycle`: metrics.csv's rows so far, or with --prompts
    /// prompts.csv's, --pairs pair_rewards.csv's, --tokens token_rewards.csv's). Reads no
    /// tensors.
    #[cfg(feature = "lm")]
    #[command(name = "lm-progress", after_help = EXIT_CODES)]
    LmProgress(super::lm_progress::LmProgressArgs),
    /// Read one split of a preference dataset as the experiments will (feature `lm`): Hugging
    /// Face `save_to_disk` folders, Arrow IPC (stream or file), Parquet, JSON Lines; TRL's
    /// standard, implicit-prompt and conversational shapes, columns mapped by name. Prints its
    /// size and first pair; `--out` writes the pairs as JSON Lines. Bad data: exit 2 naming the
    /// file, row and column.
    #[cfg(feature = "lm")]
    #[command(name = "lm-data", after_help = EXIT_CODES)]
    LmData(super::lm_data::LmDataArgs),
    /// Write a copy of a checkpoint folder with its f32 weights cast to f16 or bf16 (feature
    /// `lm`): half the bytes, for carrying a model where the f32 file does not fit. rmflow loads
    /// either copy as f32; the copy differs by the weights' rounding only.
    #[cfg(feature = "lm")]
    #[command(name = "lm-convert", after_help = EXIT_CODES)]
    LmConvert(super::lm_files::LmConvertArgs),
    /// Write a Hugging Face checkpoint folder (config.json, model.safetensors in f32,
    /// tokenizer.json, tokenizer_config.json with the chat template, rmflow-import.json) from a
    /// llama GGUF file (feature `lm`), dequantised by candle's GGUF reader, with the q/k rows put
    /// back in Hugging Face's rotary layout: SmolLM2-135M-Instruct from
    /// `scripts/fetch-model.sh smollm2`. Every `lm` command then loads the folder.
    #[cfg(feature = "lm")]
    #[command(name = "lm-import-gguf", after_help = EXIT_CODES)]
    LmImportGguf(super::lm_files::LmImportGgufArgs),
    /// Write tiny random checkpoints of every family rmflow loads (bert, llama-gqa, llama-tied,
    /// gpt2, qwen2, qwen2-tied, pythia) into OUT/NAME (feature `lm`): for forward checks on other
    /// machines and smoke runs of `lm` and `lm-recipe`.
    #[cfg(feature = "lm")]
    #[command(name = "lm-tiny", after_help = EXIT_CODES)]
    LmTiny(super::lm_files::LmTinyArgs),
    /// Final hidden states of fixed probe sentences at their read positions, under rmflow's
    /// reference and differentiable forwards, as JSON (feature `lm`); compared with
    /// `transformers` by scripts/reference_forward.py and across devices by scripts/gpu-check.sh.
    #[cfg(feature = "lm")]
    #[command(name = "lm-forward", after_help = EXIT_CODES)]
    LmForward(super::lm_files::LmForwardArgs),
    /// Validate a config and print its sizes and the estimated peak memory of each command,
    /// without running anything (exit 2 if the config is invalid).
    #[command(after_help = EXIT_CODES)]
    Check(super::check::CheckArgs),
    /// Print the embedded default config (experiments/theorem2.toml).
    DefaultConfig,
}

/// How an existing output may be replaced.
#[derive(clap::Args, Clone, Copy)]
pub struct OutputFlags {
    /// Replace --out if it exists and is an rmflow output (old results are kept until the new
    /// ones are in place).
    #[arg(long)]
    pub force: bool,
    /// With --force: replace --out even if it does not look like an rmflow output.
    #[arg(long, requires = "force")]
    pub force_foreign: bool,
}

impl OutputFlags {
    pub fn replace(self) -> Replace {
        Replace::from_flags(self.force, self.force_foreign)
    }
}

/// `--imrm-gradient full|sparse`.
pub fn parse_gradient_path(s: &str) -> Result<GradientPath, String> {
    match s {
        "full" => Ok(GradientPath::Full),
        "sparse" => Ok(GradientPath::SeenRows),
        _ => Err(format!("expected `full` or `sparse`, got `{s}`")),
    }
}

/// `--config PATH`, or the embedded default.
pub fn load_config(path: Option<&Path>) -> Result<Config, rmflow::config::ConfigError> {
    Ok(match path {
        Some(p) => Config::from_file(p)?,
        None => Config::embedded_default(),
    })
}
