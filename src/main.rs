//! `rmflow` command line: a thin caller of the library.
//!
//! Exit codes (also in `--help` and the README): 0 success, 1 a `verify` claim failed, 2 usage or
//! input error, 3 refused (would not fit in memory, or cannot end well), 4 failed while running.

#[cfg(feature = "lm")]
use anyhow::Context;
use anyhow::Result;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use rmflow::config::{Config, GradientPath, Optimizer};
use rmflow::error::{ClaimsFailed, InputError};
use rmflow::experiment::observables::Observation;
use rmflow::io::atomic::{AtomicDir, AtomicFile, Replace};
use rmflow::io::resources::{check_memory, Workload};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const EXIT_CODES: &str = "Exit codes:
  0  success
  1  verify: at least one claim FAILED
  2  usage or input error: bad arguments, invalid config (the field and file are named),
     missing input file, output path taken (no --force) or unusable
  3  refused: estimated memory above what is available (--ignore-memory-estimate overrides),
     or a long gradient flow on data certified not linearly separable
  4  failed while running: numerical breakdown (NaN, step-size underflow), I/O error
Outputs are written atomically: on any error no output folder or file is left behind.";

#[derive(Parser)]
#[command(
    name = "rmflow",
    version,
    about = "Learning dynamics of implicit (DPO-style) vs explicit reward models (Razin et al., arXiv 2507.07981)",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How an existing output may be replaced.
#[derive(clap::Args, Clone, Copy)]
struct OutputFlags {
    /// Replace --out if it exists and is an rmflow output (old results are kept until the new
    /// ones are in place).
    #[arg(long)]
    force: bool,
    /// With --force: replace --out even if it does not look like an rmflow output.
    #[arg(long, requires = "force")]
    force_foreign: bool,
}

impl OutputFlags {
    fn replace(self) -> Replace {
        Replace::from_flags(self.force, self.force_foreign)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Train both reward models on a synthetic setup and export everything (layout: experiments/README.md).
    #[command(after_help = EXIT_CODES)]
    Simulate {
        /// TOML config (default: the embedded experiments/theorem2.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Output folder, written atomically.
        #[arg(long)]
        out: PathBuf,
        /// Override train.optimizer.
        #[arg(long, value_enum)]
        optimizer: Option<Optimizer>,
        /// Override train.t_max (flow time; discrete optimizers run t_max/lr steps).
        #[arg(long)]
        t_max: Option<f64>,
        /// Override train.t_max_log10: the flow's horizon as log10 t, up to 100000 (past f64's
        /// 1.8e308; consider a small train.observations_per_decade).
        #[arg(long, conflicts_with = "t_max")]
        t_max_log10: Option<f64>,
        /// Override the seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Override train.imrm_gradient.
        #[arg(long, value_parser = parse_path)]
        imrm_gradient: Option<GradientPath>,
        /// Also write the full [V, D] matrices init/unembedding.npy and final/unembedding.npy
        /// (export.full_unembedding; by default only the rows of the pairs' tokens are written).
        #[arg(long)]
        full_unembedding: bool,
        #[command(flatten)]
        output: OutputFlags,
        /// Run even if the estimated peak memory exceeds the memory available.
        #[arg(long)]
        ignore_memory_estimate: bool,
    },
    /// Verify Theorem 2 numerically, claim by claim; exits 1 if any claim fails.
    #[command(after_help = EXIT_CODES)]
    Verify {
        /// TOML config (default: the embedded experiments/theorem2.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Random setups drawn around the config (seed, α, κ, sizes), checked in parallel.
        #[arg(long, default_value_t = 20)]
        trials: usize,
        /// Also write the full report (every claim of every trial) as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Replace the --json file if it exists.
        #[arg(long)]
        force: bool,
        /// Run even if the estimated peak memory exceeds the memory available.
        #[arg(long)]
        ignore_memory_estimate: bool,
        /// Run only the checks whose cost does not grow with V (seen-row IM-RM flow, EX-RM flow,
        /// QP certificates, residual flow); the full-vocabulary ones (faithful full-softmax flow,
        /// GD, Adam, AdamW, full-vs-sparse agreement, §3 dynamics) are SKIP rows. For sizes whose
        /// V × D copies do not fit; needs train.imrm_gradient = "sparse".
        #[arg(long)]
        without_full_vocabulary: bool,
        /// Do not integrate the EX-RM residual ρ = u − u* ln t to t = 1e10000 (its two rows are
        /// SKIP). At large N·D it costs thousands of passes over the features, and on data whose
        /// non-support margins sit within δ of the margin, ρ settles only once δ·ln t ≫ 1.
        #[arg(long)]
        skip_residual: bool,
        /// Self-test of the checker: verify a deliberately broken variant (must FAIL).
        #[arg(long, value_enum, hide = true)]
        inject_fault: Option<rmflow::analysis::verify::Fault>,
    },
    /// Learning dynamics (MATH.md §3): ρ coefficients and reward-velocity decompositions along training.
    #[command(after_help = EXIT_CODES)]
    Dynamics {
        /// TOML config (default: the embedded experiments/theorem2.toml, to t = 1e8).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Output folder, written atomically (simulate's layout plus dynamics.csv and dynamics/).
        #[arg(long)]
        out: PathBuf,
        /// Override train.t_max.
        #[arg(long)]
        t_max: Option<f64>,
        /// Override the seed.
        #[arg(long)]
        seed: Option<u64>,
        #[command(flatten)]
        output: OutputFlags,
        /// Run even if the estimated peak memory exceeds the memory available.
        #[arg(long)]
        ignore_memory_estimate: bool,
    },
    /// Accuracy of both models across a parameter sweep, mean and 95 % interval over seeds;
    /// `--shard I/N` runs one slice (Slurm array task), `sweep merge` joins the slices.
    #[command(after_help = EXIT_CODES)]
    Sweep(SweepArgs),
    /// Real-model mode (MATH.md §6, feature `lm`): Theorem 2's setting — single-token answers in a
    /// `[MASK]` slot or after the prompt — on a pretrained transformer's frozen representations
    /// (head-only, exported in simulate's layout), and with `--mode full` full fine-tuning of the
    /// whole model for both reward types (in `full/`). The paper's own recipe is `lm-recipe`.
    #[cfg(feature = "lm")]
    #[command(after_help = EXIT_CODES)]
    Lm {
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
    },
    /// The paper's controlled experiment in its own recipe (MATH.md §6, feature `lm`): prefix +
    /// word responses, sequence-level IM-RM and EX-RM rewards, Adam on every parameter (`full`)
    /// or on the head / unembedding over frozen representations (`head`), evaluated on the
    /// training pairs and on shifted prefixes and words.
    #[cfg(feature = "lm")]
    #[command(name = "lm-recipe", after_help = EXIT_CODES)]
    LmRecipe {
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
        /// Which reward models to train: exrm, imrm, or both (each from the same pretrained
        /// weights, so one at a time gives the same numbers as both).
        #[arg(long, default_value = "both", value_parser = ["exrm", "imrm", "both"])]
        reward: String,
        /// Take the prompts from Anthropic's persona JSONL (e.g. `anthropics/evals`
        /// persona/agreeableness.jsonl) instead of data.statements: records whose
        /// answer_matching_behavior is " Yes", prompt = the record's question (sets
        /// data.format = "persona_jsonl", data.group_size = 1).
        #[arg(long)]
        persona_jsonl: Option<PathBuf>,
        #[command(flatten)]
        output: OutputFlags,
    },
    /// Write a copy of a checkpoint folder with its f32 weights cast to f16 or bf16 (feature
    /// `lm`): half the bytes, for carrying a model where the f32 file does not fit. rmflow loads
    /// either copy as f32; the copy differs by the weights' rounding only.
    #[cfg(feature = "lm")]
    #[command(name = "lm-convert", after_help = EXIT_CODES)]
    LmConvert {
        /// Hugging Face folder (config.json, *.safetensors, tokenizer.json).
        #[arg(long)]
        model: PathBuf,
        /// f16 or bf16.
        #[arg(long, default_value = "f16", value_parser = ["f16", "bf16"])]
        dtype: String,
        /// Output folder, written atomically (with rmflow-convert.json describing the copy).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        output: OutputFlags,
    },
    /// Write a Hugging Face checkpoint folder (config.json, model.safetensors in f32,
    /// tokenizer.json, tokenizer_config.json with the chat template, rmflow-import.json) from a
    /// llama GGUF file (feature `lm`), dequantised by candle's GGUF reader, with the q/k rows put
    /// back in Hugging Face's rotary layout: SmolLM2-135M-Instruct from
    /// `scripts/fetch-model.sh smollm2`. Every `lm` command then loads the folder.
    #[cfg(feature = "lm")]
    #[command(name = "lm-import-gguf", after_help = EXIT_CODES)]
    LmImportGguf {
        /// The GGUF file (general.architecture = llama, byte-level BPE tokenizer).
        #[arg(long)]
        gguf: PathBuf,
        /// Output folder, written atomically.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        output: OutputFlags,
    },
    /// Write tiny random checkpoints of every family rmflow loads (bert, llama-gqa, llama-tied,
    /// gpt2, qwen2, qwen2-tied, pythia) into OUT/NAME (feature `lm`): for forward checks on other
    /// machines and smoke runs of `lm` and `lm-recipe`.
    #[cfg(feature = "lm")]
    #[command(name = "lm-tiny", after_help = EXIT_CODES)]
    LmTiny {
        /// Output folder, written atomically.
        #[arg(long)]
        out: PathBuf,
        /// Also give the vocabularies every word of this recipe config (statements, prefixes,
        /// words), so that `rmflow lm-recipe` runs on the tiny checkpoints.
        #[arg(long)]
        recipe: Option<PathBuf>,
        #[command(flatten)]
        output: OutputFlags,
    },
    /// Final hidden states of fixed probe sentences at their read positions, under rmflow's
    /// reference and differentiable forwards, as JSON (feature `lm`); compared with
    /// `transformers` by scripts/reference_forward.py and across devices by scripts/gpu-check.sh.
    #[cfg(feature = "lm")]
    #[command(name = "lm-forward", after_help = EXIT_CODES)]
    LmForward {
        /// Hugging Face folder (config.json, *.safetensors, tokenizer.json).
        #[arg(long)]
        model: PathBuf,
        /// cpu or cuda.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// JSON file to write (atomically).
        #[arg(long)]
        out: PathBuf,
        /// Replace --out if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Validate a config and print its sizes and the estimated peak memory of each command,
    /// without running anything (exit 2 if the config is invalid).
    #[command(after_help = EXIT_CODES)]
    Check {
        /// TOML config (default: the embedded experiments/theorem2.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the embedded default config (experiments/theorem2.toml).
    DefaultConfig,
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct SweepArgs {
    #[command(subcommand)]
    action: Option<SweepAction>,
    /// Sweep file: `[sweep]` (parameter, values, seeds) and `[base]` config (e.g. experiments/overlap_sweep.toml).
    #[arg(long, required = true)]
    config: Option<PathBuf>,
    /// Output folder. Without --shard, written atomically: sweep.csv (the table) and sweep.toml
    /// (the resolved sweep file, with the rmflow version). With --shard, the folder that collects
    /// the shard files (shard-IIII-of-NNNN.json).
    #[arg(long, required = true)]
    out: Option<PathBuf>,
    /// Run only slice I of N (0-based) of the sweep's units, balanced by estimated cost. Without
    /// it, SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT are used when both are set.
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
    #[command(flatten)]
    output: OutputFlags,
    /// Run even if the estimated peak memory exceeds the memory available.
    #[arg(long)]
    ignore_memory_estimate: bool,
}

#[derive(Subcommand)]
enum SweepAction {
    /// Merge the shard files of one sweep into the table an unsharded run writes (byte-identical
    /// sweep.csv); every shard must be present, from the same sweep and rmflow version.
    Merge {
        /// Folder with the shard files.
        shard_dir: PathBuf,
        /// Output folder, written atomically (sweep.csv, sweep.toml).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        output: OutputFlags,
    },
}

/// The shard of this process: `--shard I/N`, else a Slurm array task's (said on stderr).
fn shard_of(flag: Option<&str>) -> Result<Option<(usize, usize)>> {
    if let Some(s) = flag {
        return rmflow::analysis::sweep::parse_shard(s).map(Some);
    }
    let var = |k: &str| std::env::var(k).ok();
    match (var("SLURM_ARRAY_TASK_ID"), var("SLURM_ARRAY_TASK_COUNT")) {
        (Some(id), Some(count)) => {
            let min: usize = match var("SLURM_ARRAY_TASK_MIN") {
                Some(m) => m.parse().map_err(|_| {
                    InputError(format!("SLURM_ARRAY_TASK_MIN is not a number: {m:?}"))
                })?,
                None => 0,
            };
            let id: usize = id
                .parse()
                .map_err(|_| InputError(format!("SLURM_ARRAY_TASK_ID is not a number: {id:?}")))?;
            let shard = format!("{}/{count}", id.saturating_sub(min));
            eprintln!(
                "rmflow sweep: running shard {shard} from SLURM_ARRAY_TASK_ID = {id}, SLURM_ARRAY_TASK_COUNT = {count} (SLURM_ARRAY_TASK_MIN = {min})"
            );
            rmflow::analysis::sweep::parse_shard(&shard).map(Some)
        }
        _ => Ok(None),
    }
}

fn print_sweep_table(rows: &[rmflow::analysis::sweep::SweepRow]) {
    println!(
        "{:>8} {:<6} {:>22} {:>22}",
        "value", "model", "tie-aware (95% CI)", "strict (95% CI)"
    );
    for r in rows {
        println!(
            "{:>8} {:<6} {:>22} {:>22}",
            r.value,
            r.model,
            format!("{:.3} ± {:.3}", r.tie_aware_mean, r.tie_aware_ci95),
            format!("{:.3} ± {:.3}", r.strict_mean, r.strict_ci95)
        );
    }
}

fn sweep(args: SweepArgs) -> Result<()> {
    if let Some(SweepAction::Merge {
        shard_dir,
        out,
        output,
    }) = args.action
    {
        let dir = AtomicDir::create(&out, output.replace())?;
        let merged = rmflow::analysis::sweep::merge_shards(&shard_dir)?;
        print_sweep_table(&merged.rows);
        rmflow::analysis::sweep::write_sweep_into(
            &dir,
            &merged.file,
            &merged.source,
            &merged.rows,
        )?;
        let written = dir.commit()?;
        println!(
            "merged {} shards into {} (sweep.csv, sweep.toml)",
            merged.shards,
            written.display()
        );
        return Ok(());
    }
    let (config, out) = (
        args.config.expect("required by clap"),
        args.out.expect("required by clap"),
    );
    rmflow::io::atomic::check_not_overwriting_input(&config, &out)?;
    let shard = shard_of(args.shard.as_deref())?;
    if shard.is_none() && out.extension().is_some_and(|e| e == "csv" || e == "toml") {
        return Err(InputError(format!(
            "--out {} names a file, but a sweep writes a folder (sweep.csv and sweep.toml inside): pass a folder path such as runs/my_sweep",
            out.display()
        ))
        .into());
    }
    let file = rmflow::analysis::sweep::SweepFile::from_file(&config)?;
    for c in file.configs(0)? {
        check_memory(&c, Workload::Simulate, args.ignore_memory_estimate)?;
    }
    match shard {
        None => {
            let dir = AtomicDir::create(&out, args.output.replace())?;
            let n_units = file.units().len() as u64;
            let bar = progress_bar("sweep", n_units, "runs");
            let rows = rmflow::analysis::sweep::run_sweep(&file, &|| bar.inc("run done"))?;
            bar.finish();
            print_sweep_table(&rows);
            rmflow::analysis::sweep::write_sweep_into(
                &dir,
                &file,
                &config.display().to_string(),
                &rows,
            )?;
            let written = dir.commit()?;
            println!("wrote {} (sweep.csv, sweep.toml)", written.display());
        }
        Some((i, n)) => {
            std::fs::create_dir_all(&out).map_err(|e| {
                InputError(format!(
                    "cannot create the shard folder {}: {e}",
                    out.display()
                ))
            })?;
            let path = out.join(rmflow::analysis::sweep::shard_file_name(i, n));
            rmflow::io::atomic::check_not_overwriting_input(&config, &path)?;
            let replace = if args.output.force {
                Replace::RmflowOutput
            } else {
                Replace::Never
            };
            let target = AtomicFile::create(&path, replace)?;
            let ids = rmflow::analysis::sweep::shard_assignment(&file, n)?.swap_remove(i);
            let bar = progress_bar(&format!("sweep shard {i}/{n}"), ids.len() as u64, "runs");
            let results = rmflow::analysis::sweep::run_units(&file, &ids, &|| bar.inc("run done"))?;
            bar.finish();
            let shard_file =
                rmflow::analysis::sweep::ShardFile::new(&file, &config, (i, n), ids, &results)?;
            let written = target.commit(&(serde_json::to_string_pretty(&shard_file)? + "\n"))?;
            println!(
                "wrote {} ({} of {} runs; merge with: rmflow sweep merge {} --out DIR)",
                written.display(),
                shard_file.units.len(),
                file.units().len(),
                out.display()
            );
        }
    }
    Ok(())
}

fn parse_path(s: &str) -> Result<GradientPath, String> {
    match s {
        "full" => Ok(GradientPath::Full),
        "sparse" => Ok(GradientPath::Sparse),
        _ => Err(format!("expected `full` or `sparse`, got `{s}`")),
    }
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    Ok(match path {
        Some(p) => Config::from_file(p)?,
        None => Config::embedded_default(),
    })
}

/// Validates a config after command-line overrides (the error says so).
fn validate_overridden(cfg: &Config, origin: Option<&Path>) -> Result<()> {
    cfg.validate().map_err(|e| {
        let origin = match origin {
            Some(p) => format!("{} with command-line overrides", p.display()),
            None => "the embedded default with command-line overrides".to_string(),
        };
        anyhow::Error::new(e.in_origin(&origin))
    })
}

/// Progress of a long step: a bar on a terminal, otherwise a plain line on stderr at the start,
/// at most every 10 s, and at the end (so logs of batch jobs show where a run is).
struct Progress {
    bar: Option<ProgressBar>,
    plain: Mutex<PlainState>,
    label: String,
    len: u64,
    unit: &'static str,
    start: Instant,
}

struct PlainState {
    pos: u64,
    last_print: Instant,
}

const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(10);

fn progress_bar(label: &str, len: u64, unit: &'static str) -> Progress {
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{spinner}} [{{elapsed_precise}}] {label} {{bar:30}} {{pos}}/{{len}} {unit}  {{msg}}"
            ))
            .expect("valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    if bar.is_none() {
        eprintln!("rmflow {label}: started ({len} {unit})");
    }
    Progress {
        bar,
        plain: Mutex::new(PlainState {
            pos: 0,
            last_print: Instant::now(),
        }),
        label: label.to_string(),
        len,
        unit,
        start: Instant::now(),
    }
}

impl Progress {
    /// A stage message (shown at once, without advancing).
    fn stage(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.set_message(msg.to_string()),
            None => eprintln!("rmflow {}: {msg}", self.label),
        }
    }

    /// One unit done, with a message.
    fn inc(&self, msg: &str) {
        match &self.bar {
            Some(b) => {
                b.set_message(msg.to_string());
                b.inc(1);
            }
            None => {
                let mut s = self.plain.lock().unwrap_or_else(|e| e.into_inner());
                s.pos += 1;
                if s.last_print.elapsed() >= PLAIN_PROGRESS_EVERY {
                    s.last_print = Instant::now();
                    eprintln!(
                        "rmflow {}: {}/{} {} ({msg}), {:.0} s elapsed",
                        self.label,
                        s.pos,
                        self.len,
                        self.unit,
                        self.start.elapsed().as_secs_f64()
                    );
                }
            }
        }
    }

    fn finish(self) {
        match &self.bar {
            Some(b) => b.finish_and_clear(),
            None => eprintln!(
                "rmflow {}: done in {:.1} s",
                self.label,
                self.start.elapsed().as_secs_f64()
            ),
        }
    }
}

fn print_named_accuracy_table(
    table: &[(&str, &[rmflow::experiment::observables::SplitMetrics])],
    at: &str,
    tau: f64,
) {
    println!(
        "accuracy at t = {at} (strict / exact ties count ½ [τ = 0, the paper's] / tie-aware with τ = {tau:e}):"
    );
    print!("{}", rmflow::experiment::observables::accuracy_table(table));
}

/// The accuracy table of a simulation with its ablations, then the reward statistics.
fn print_simulation_tables(sim: &rmflow::experiment::simulation::Simulation) {
    let finals: Vec<&Observation> = sim
        .runs()
        .iter()
        .map(|r| r.trajectory.last().expect("observed"))
        .collect();
    let mut table: Vec<(&str, &[rmflow::experiment::observables::SplitMetrics])> = finals
        .iter()
        .map(|o| (o.model, o.splits.as_slice()))
        .collect();
    let a = &sim.ablations;
    table.push(("imrm-noref", a.imrm_no_reference.as_slice()));
    if let Some(run) = &a.exrm_token_mean {
        table.push((
            "exrm-mean",
            run.trajectory.last().expect("observed").splits.as_slice(),
        ));
    }
    print_named_accuracy_table(
        &table,
        &rmflow::solve::training::format_time(finals[0].log10_t),
        sim.config.eval.tie_tolerance,
    );
    println!("  imrm-noref: the IM-RM scored without its reference (r = β ln π_U); exrm-mean: the EX-RM on the mean hidden state over response tokens (K > 1 only)");
    println!("normalised |reward margin| mean|r⁺ − r⁻| / (std of all rewards + 1e-8) (the official evaluator's):");
    let mut line = format!("{:<12}", "model");
    for r in &sim.explicit.rewards {
        line.push_str(&format!("{:>12}", r.split));
    }
    println!("{line}");
    for run in sim.runs() {
        let mut line = format!("{:<12}", run.kind.name());
        for r in &run.rewards {
            line.push_str(&format!("{:>12.3}", r.normalised_abs_margin));
        }
        println!("{line}");
    }
}

fn observation_progress(label: &str, cfg: &Config) -> Progress {
    let n_obs = rmflow::solve::training::observation_times(&cfg.train).len() as u64;
    let p = progress_bar(label, 2 * n_obs, "observations");
    p.stage(&format!(
        "drawing the setup and solving the max-margin QPs (V = {}, D = {}, N = {})",
        cfg.vocab_size(),
        cfg.setup.dim,
        cfg.setup.train_pairs
    ));
    p
}

fn simulate(config: Config, out: &Path, replace: Replace, allow_memory: bool) -> Result<()> {
    check_memory(&config, Workload::Simulate, allow_memory)?;
    let dir = AtomicDir::create(out, replace)?;
    let bar = observation_progress("simulate", &config);
    let sim = rmflow::experiment::simulation::simulate(&config, &mut |o| {
        bar.inc(&format!(
            "{} t = {}",
            o.model,
            rmflow::solve::training::format_time(o.log10_t)
        ));
    })?;
    bar.finish();
    rmflow::io::layout::write_simulation_into(&dir, &sim)?;
    let written = dir.commit()?;
    print_simulation_tables(&sim);
    if let Some(d) = sim
        .implicit
        .trajectory
        .last()
        .and_then(|o| o.unseen_row_drift)
    {
        println!("IM-RM unseen-row drift max_z‖U_z(t) − U_z(0)‖ at t_max: {d:e}");
    }
    println!("wrote {}", written.display());
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Simulate {
            config,
            out,
            optimizer,
            t_max,
            t_max_log10,
            seed,
            imrm_gradient,
            full_unembedding,
            output,
            ignore_memory_estimate,
        } => {
            let mut cfg = load_config(config.as_deref())?;
            if full_unembedding {
                cfg.export.full_unembedding = true;
            }
            if let Some(o) = optimizer {
                cfg.train.optimizer = o;
            }
            if let Some(t) = t_max {
                cfg.train.t_max = t;
                cfg.train.t_max_log10 = None;
            }
            if let Some(l) = t_max_log10 {
                cfg.train.t_max_log10 = Some(l);
            }
            if let Some(s) = seed {
                cfg.seed = s;
            }
            if let Some(p) = imrm_gradient {
                cfg.train.imrm_gradient = p;
            }
            validate_overridden(&cfg, config.as_deref())?;
            if let Some(c) = &config {
                rmflow::io::atomic::check_not_overwriting_input(c, &out)?;
            }
            simulate(cfg, &out, output.replace(), ignore_memory_estimate)
        }
        Command::Verify {
            config,
            trials,
            json,
            force,
            ignore_memory_estimate,
            without_full_vocabulary,
            skip_residual,
            inject_fault,
        } => {
            let cfg = load_config(config.as_deref())?;
            if without_full_vocabulary && !cfg.trains_seen_rows() {
                return Err(InputError(
                    "--without-full-vocabulary needs the seen-row IM-RM: train.imrm_gradient = \"sparse\", setup.response_length = 1 and train.optimizer other than \"adamw\"".into(),
                )
                .into());
            }
            let mut est_cfg = cfg.clone();
            if trials > 0 {
                est_cfg.setup.dim = est_cfg.setup.dim.max(48);
                est_cfg.setup.train_pairs = est_cfg.setup.train_pairs.max(300);
            }
            let workload = if without_full_vocabulary {
                Workload::VerifySeenRows
            } else {
                Workload::Verify
            };
            check_memory(&est_cfg, workload, ignore_memory_estimate)?;
            let json_file = match &json {
                Some(p) => {
                    if let Some(c) = &config {
                        rmflow::io::atomic::check_not_overwriting_input(c, p)?;
                    }
                    let replace = if force {
                        Replace::RmflowOutput
                    } else {
                        Replace::Never
                    };
                    Some(AtomicFile::create(p, replace)?)
                }
                None => None,
            };
            let defaults = rmflow::analysis::verify::VerifyOptions::default();
            let opts = rmflow::analysis::verify::VerifyOptions {
                fault: inject_fault,
                full_vocabulary: !without_full_vocabulary,
                residual_horizon_log10: defaults.residual_horizon_log10.filter(|_| !skip_residual),
                ..defaults
            };
            let bar = progress_bar(
                "verify",
                rmflow::analysis::verify::SETUP_JOBS + trials as u64,
                "jobs (9 on the configured setup, then one per random setup)",
            );
            let t0 = Instant::now();
            let report = rmflow::analysis::verify::verify(&cfg, trials, &opts, &|job| {
                bar.inc(&format!("{job} done"));
            })?;
            bar.finish();
            print!("{}", rmflow::analysis::verify::render(&report));
            eprintln!("verified in {:.2} s", t0.elapsed().as_secs_f64());
            if let Some(f) = json_file {
                f.commit(&(serde_json::to_string_pretty(&report)? + "\n"))?;
            }
            if !report.passed() {
                return Err(ClaimsFailed(
                    "Theorem 2 verification failed (see the FAIL rows above)".into(),
                )
                .into());
            }
            Ok(())
        }
        Command::Dynamics {
            config,
            out,
            t_max,
            seed,
            output,
            ignore_memory_estimate,
        } => {
            let mut cfg = match config.as_deref() {
                Some(p) => Config::from_file(p)?,
                None => {
                    let mut c = Config::embedded_default();
                    c.train.t_max = 1e8;
                    c
                }
            };
            if let Some(t) = t_max {
                cfg.train.t_max = t;
            }
            if let Some(s) = seed {
                cfg.seed = s;
            }
            validate_overridden(&cfg, config.as_deref())?;
            if let Some(c) = &config {
                rmflow::io::atomic::check_not_overwriting_input(c, &out)?;
            }
            check_memory(&cfg, Workload::Dynamics, ignore_memory_estimate)?;
            let dir = AtomicDir::create(&out, output.replace())?;
            let bar = observation_progress("dynamics", &cfg);
            let run = rmflow::analysis::dynamics::run(&cfg, &mut |o| {
                bar.inc(&format!("{} t = {:.2e}", o.model, o.t));
            })?;
            bar.finish();
            rmflow::io::layout::write_dynamics_into(&dir, &run)?;
            let written = dir.commit()?;
            let (t, last) = run.tracked.last().expect("observed");
            println!("learning dynamics at t = {t:e}: share of the IM-RM velocity from token identity (margins, rewards) and mean |dm/dt|:");
            for s in last {
                println!(
                    "  {:<10} identity share {:.3} (margins) {:.3} (rewards)   IM-RM {:.3e}   EX-RM {:.3e}",
                    s.split, s.imrm_identity_share, s.imrm_reward_identity_share, s.imrm_margin_velocity_mean_abs, s.exrm_margin_velocity_mean_abs
                );
            }
            println!("wrote {}", written.display());
            Ok(())
        }
        Command::Sweep(args) => sweep(args),
        #[cfg(feature = "lm")]
        Command::Lm {
            model,
            config,
            out,
            device,
            mode,
            output,
        } => {
            let device = lm_device(&device)?;
            rmflow::io::atomic::check_not_overwriting_input(&config, &out)?;
            let file = rmflow::lm::LmFile::from_file(&config)?;
            run_lm(&model, &file, &out, device, &mode, output.replace())
        }
        #[cfg(feature = "lm")]
        Command::LmRecipe {
            model,
            config,
            out,
            device,
            mode,
            epochs,
            eval_every,
            reward,
            persona_jsonl,
            output,
        } => {
            let device = lm_device(&device)?;
            rmflow::io::atomic::check_not_overwriting_input(&config, &out)?;
            let mut file = rmflow::lm::recipe::RecipeFile::from_file(&config)?;
            if let Some(path) = persona_jsonl {
                rmflow::io::atomic::check_not_overwriting_input(&path, &out)?;
                file.data.statements = path;
                file.data.format = rmflow::lm::recipe::StatementFormat::PersonaJsonl;
                file.data.group_size = 1;
            }
            if epochs == Some(0) || eval_every == Some(0) {
                return Err(InputError(
                    "--epochs and --eval-every must be ≥ 1 (an untrained model is not a run)"
                        .into(),
                )
                .into());
            }
            if let Some(e) = epochs {
                file.train.epochs = e;
            }
            if let Some(e) = eval_every {
                file.train.eval_every_epochs = e;
            }
            run_lm_recipe(
                &model,
                &file,
                &out,
                device,
                &mode,
                &reward,
                output.replace(),
            )
        }
        #[cfg(feature = "lm")]
        Command::LmTiny {
            out,
            recipe,
            output,
        } => {
            let mut texts: Vec<String> = rmflow::lm::tiny::PROBE_TEXTS
                .iter()
                .map(|t| t.to_string())
                .collect();
            if let Some(path) = &recipe {
                let file = rmflow::lm::recipe::RecipeFile::from_file(path)?;
                texts.extend(rmflow::lm::recipe::vocabulary_texts(&file)?);
            }
            let dir = rmflow::io::atomic::AtomicDir::create(&out, output.replace())?;
            for (name, spec) in rmflow::lm::tiny::standard_specs() {
                rmflow::lm::tiny::write_tiny_checkpoint(&dir.path(name)?, spec, &texts)?;
            }
            std::fs::write(
                dir.path("rmflow-convert.json")?,
                serde_json::to_string_pretty(&serde_json::json!({
                    "rmflow_version": env!("CARGO_PKG_VERSION"),
                    "tiny_checkpoints": rmflow::lm::tiny::standard_specs().iter().map(|(n, _)| *n).collect::<Vec<_>>(),
                }))?,
            )?;
            println!("wrote {}", dir.commit()?.display());
            Ok(())
        }
        #[cfg(feature = "lm")]
        Command::LmForward {
            model,
            device,
            out,
            force,
        } => {
            let device = lm_device(&device)?;
            let file = rmflow::io::atomic::AtomicFile::create(
                &out,
                if force {
                    Replace::RmflowOutput
                } else {
                    Replace::Never
                },
            )?;
            let texts: Vec<String> = rmflow::lm::tiny::PROBE_TEXTS
                .iter()
                .map(|t| t.to_string())
                .collect();
            let record = rmflow::lm::tiny::forward_record(&model, &device, &texts)?;
            file.commit(&serde_json::to_string(&record)?)?;
            println!("wrote {}", out.display());
            Ok(())
        }
        #[cfg(feature = "lm")]
        Command::LmImportGguf { gguf, out, output } => {
            rmflow::io::atomic::check_not_overwriting_input(&gguf, &out)?;
            let t = std::time::Instant::now();
            eprintln!(
                "lm-import-gguf: reading and dequantising {}",
                gguf.display()
            );
            let r = rmflow::lm::gguf::import_gguf(&gguf, &out, output.replace())?;
            println!(
                "wrote {}: {} tensors ({}), {:.1} M parameters as f32, vocabulary {} with {} merges, pre-tokenizer {:?}, chat template {}; {:.1} s",
                out.display(),
                r.tensors,
                r.tensor_types
                    .iter()
                    .map(|(k, n)| format!("{n} {k}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                r.parameters as f64 / 1e6,
                r.vocab_size,
                r.merges,
                r.pre_tokenizer,
                if r.chat_template { "kept" } else { "none" },
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        #[cfg(feature = "lm")]
        Command::LmConvert {
            model,
            dtype,
            out,
            output,
        } => {
            let dtype = rmflow::lm::convert::parse_half_dtype(&dtype)
                .map_err(|e| InputError(e.to_string()))?;
            if out == model {
                return Err(InputError(format!(
                    "--out {} is the --model folder itself; write the copy elsewhere",
                    out.display()
                ))
                .into());
            }
            let c = rmflow::lm::convert::convert_checkpoint(&model, &out, dtype, output.replace())?;
            println!(
                "wrote {}: {} tensors cast to {}, {} kept, {} other files copied; safetensors {} → {}",
                out.display(),
                c.cast,
                c.dtype,
                c.kept,
                c.files.len(),
                rmflow::io::resources::human_bytes(c.bytes_before as f64),
                rmflow::io::resources::human_bytes(c.bytes_after as f64)
            );
            Ok(())
        }
        Command::Check { config } => {
            let cfg = load_config(config.as_deref())?;
            let s = &cfg.setup;
            println!(
                "config {} is valid: V = {}, D = {}, N = {}, {} evaluation splits of {} pairs, K = {}, β = {}, {} to t = {:e}",
                config.as_deref().map_or("(embedded default)".into(), |p| p.display().to_string()),
                cfg.vocab_size(),
                s.dim,
                s.train_pairs,
                3 + s.eval_overlap.len(),
                s.eval_pairs,
                s.response_length,
                s.beta,
                cfg.train.optimizer.name(),
                cfg.train.t_max
            );
            let avail = rmflow::io::resources::available_memory();
            for (name, w) in [
                ("simulate", Workload::Simulate),
                ("dynamics", Workload::Dynamics),
                ("verify --trials 0", Workload::Verify),
                (
                    "verify --trials 0 --without-full-vocabulary",
                    Workload::VerifySeenRows,
                ),
            ] {
                let e = rmflow::io::resources::estimate(&cfg, w);
                let fits = match avail {
                    Some(a) if e.bytes > a => "exceeds the memory available",
                    Some(_) => "fits",
                    None => "available memory unknown",
                };
                println!(
                    "  {name:<44} estimated peak memory {} — {fits}",
                    e.describe()
                );
            }
            if let Some(a) = avail {
                println!(
                    "  memory available: {}",
                    rmflow::io::resources::human_bytes(a)
                );
            }
            Ok(())
        }
        Command::DefaultConfig => {
            print!("{}", rmflow::config::DEFAULT_CONFIG_TOML);
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(rmflow::error::exit_code(&e))
        }
    }
}

/// `--device cpu|cuda` of the real-model commands.
#[cfg(feature = "lm")]
fn lm_device(device: &str) -> Result<candle_core::Device> {
    Ok(match device {
        "cpu" => candle_core::Device::Cpu,
        "cuda" => candle_core::Device::new_cuda(0).context(if cfg!(feature = "cuda") {
            "--device cuda: CUDA device 0 could not be opened (is a GPU visible, and libcuda.so.1 from its driver on the library path?)"
        } else {
            "--device cuda: this binary was built without CUDA support (rebuild with --features cuda; see the README's GPU section)"
        })?,
        other => {
            return Err(InputError(format!("--device must be cpu or cuda, got {other:?}")).into())
        }
    })
}

#[cfg(feature = "lm")]
fn run_lm_recipe(
    model: &std::path::Path,
    file: &rmflow::lm::recipe::RecipeFile,
    out: &std::path::Path,
    device: candle_core::Device,
    mode: &str,
    reward: &str,
    replace: Replace,
) -> Result<()> {
    use rmflow::experiment::simulation::ModelKind;
    use rmflow::lm::recipe::{self, RecipeMode};
    let modes: &[RecipeMode] = match mode {
        "head" => &[RecipeMode::Head],
        "both" => &[RecipeMode::Head, RecipeMode::Full],
        _ => &[RecipeMode::Full],
    };
    let kinds: &[ModelKind] = match reward {
        "exrm" => &[ModelKind::Explicit],
        "imrm" => &[ModelKind::Implicit],
        _ => &[ModelKind::Explicit, ModelKind::Implicit],
    };
    let dir = rmflow::io::atomic::AtomicDir::create(out, replace)?;
    let total = recipe::steps_per_run(file) as u64;
    let mut bar: Option<((RecipeMode, ModelKind), Progress)> = None;
    eprintln!("rmflow lm-recipe: loading {}", model.display());
    let outcome = recipe::run_recipe(
        model,
        file,
        &device,
        modes,
        kinds,
        &mut |mode, kind, event| {
            if bar.as_ref().map(|b| b.0) != Some((mode, kind)) {
                if let Some((_, b)) = bar.take() {
                    b.finish();
                }
                bar = Some((
                    (mode, kind),
                    progress_bar(
                        &format!("lm-recipe {} {}", mode.name(), kind.label()),
                        total,
                        "steps",
                    ),
                ));
            }
            if let Some((_, b)) = &bar {
                match event {
                    recipe::RecipeEvent::Stage(msg) => b.stage(&msg),
                    recipe::RecipeEvent::Step(r) => {
                        b.inc(&format!("epoch {} loss {:.4}", r.epoch, r.loss))
                    }
                }
            }
        },
    )?;
    if let Some((_, b)) = bar {
        b.finish();
    }
    recipe::write_outputs(&dir, &outcome)?;
    let written = dir.commit()?;
    println!(
        "{} ({:?}), prompts: {}; {} sequences",
        outcome.model.display(),
        outcome.arch,
        outcome.problem.prompt_format,
        outcome.problem.sequences.len()
    );
    if outcome.arch == rmflow::lm::Architecture::Bert {
        println!("note: {}", recipe::PSEUDO_LIKELIHOOD_NOTE);
    }
    for r in &outcome.runs {
        println!(
            "{} {}: {} parameters trained, {} steps, {:.1} s ({:.3} s per step)",
            r.mode.name(),
            r.kind.label(),
            r.parameters,
            r.history.len(),
            r.seconds,
            r.step_seconds / r.history.len().max(1) as f64
        );
    }
    print!("{}", recipe::final_table(&outcome));
    println!("wrote {}", written.display());
    Ok(())
}

#[cfg(feature = "lm")]
fn run_lm(
    model: &std::path::Path,
    file: &rmflow::lm::LmFile,
    out: &std::path::Path,
    device: candle_core::Device,
    mode: &str,
    replace: Replace,
) -> Result<()> {
    use rmflow::experiment::simulation::ModelKind;
    let mode = if mode == "full" {
        rmflow::lm::Mode::Full
    } else {
        rmflow::lm::Mode::Head
    };
    let dir = rmflow::io::atomic::AtomicDir::create(out, replace)?;
    let mut bar: Option<(ModelKind, Progress)> = None;
    eprintln!(
        "rmflow lm: loading {} and extracting representations",
        model.display()
    );
    let run = rmflow::lm::run_experiment(model, file, &device, mode, &mut |kind, r| {
        if bar.as_ref().map(|b| b.0) != Some(kind) {
            if let Some((_, b)) = bar.take() {
                b.finish();
            }
            bar = Some((
                kind,
                progress_bar(
                    &format!("lm full fine-tuning {}", kind.label()),
                    file.finetune.steps as u64,
                    "steps",
                ),
            ));
        }
        if let Some((_, b)) = &bar {
            b.inc(&format!("loss {:.4}", r.loss));
        }
    })?;
    if let Some((_, b)) = bar {
        b.finish();
    }
    rmflow::lm::export::write_run(&dir, &run)?;
    let written = dir.commit()?;
    let t = &run.timing;
    println!("answer tokens (word → id): {:?}", run.answers);
    println!(
        "load {:.1} s, extraction {:.1} s for {} sequences, {} tokens ({:.0} tokens/s), head-only training {:.1} s",
        t.load,
        t.extract,
        run.sequences_encoded,
        run.tokens_encoded,
        run.tokens_encoded as f64 / t.extract,
        t.train_head_only
    );
    println!("prompts: {}", run.prompt_format);
    println!("head-only (body frozen, single-token answers: Theorem 2's setting):");
    print_simulation_tables(&run.sim);
    if let Some(a) = &run.alignment {
        print!("{}", rmflow::lm::alignment::describe(a));
    }
    if run.arch == rmflow::lm::Architecture::Bert {
        println!("note: {}", rmflow::lm::export::MASKED_REFERENCE_NOTE);
    }
    if !run.full.is_empty() {
        println!("note: {}", rmflow::lm::export::NOT_THE_PAPER_NOTE);
        println!(
            "full fine-tuning ({} AdamW steps, lr {:e}; {}):",
            file.finetune.steps,
            file.finetune.lr,
            run.full
                .iter()
                .map(|r| format!("{} {:.1} s", r.kind.name(), r.seconds))
                .collect::<Vec<_>>()
                .join(", ")
        );
        print!("{}", rmflow::lm::export::full_table(&run.full));
    }
    println!("wrote {}", written.display());
    Ok(())
}
