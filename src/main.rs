//! `rmflow` command line: a thin caller of the library.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use rmflow::config::{Config, GradientPath, Optimizer};
use rmflow::observables::Observation;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "rmflow",
    version,
    about = "Learning dynamics of implicit (DPO-style) vs explicit reward models (Razin et al., arXiv 2507.07981)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train both reward models on a synthetic setup and export everything (layout: experiments/README.md).
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
        /// Override the seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Override train.imrm_gradient.
        #[arg(long, value_parser = parse_path)]
        imrm_gradient: Option<GradientPath>,
        /// Replace --out if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Verify Theorem 2 numerically, claim by claim; exits non-zero if any claim fails.
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
        /// Self-test of the checker: verify a deliberately broken variant (must FAIL).
        #[arg(long, value_enum, hide = true)]
        inject_fault: Option<rmflow::verify::Fault>,
    },
    /// Learning dynamics (MATH.md §3): ρ coefficients and reward-velocity decompositions along training.
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
        /// Replace --out if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Accuracy of both models across a parameter sweep, mean and 95 % interval over seeds.
    Sweep {
        /// Sweep file: `[sweep]` (parameter, values, seeds) and `[base]` config (e.g. experiments/overlap_sweep.toml).
        #[arg(long)]
        config: PathBuf,
        /// Output CSV, written atomically; the resolved sweep file is written beside it (`.toml`).
        #[arg(long)]
        out: PathBuf,
    },
    /// Real-model mode (MATH.md §6, feature `lm`): Theorem 2's setting on a pretrained
    /// transformer's frozen representations (head-only, exported in simulate's layout), and with
    /// `--mode full` full fine-tuning of the whole model for both reward types (in `full/`).
    #[cfg(feature = "lm")]
    Lm {
        /// Hugging Face folder with config.json (model_type bert, llama or gpt2), *.safetensors and
        /// tokenizer.json (all-MiniLM-L6-v2: scripts/fetch-model.sh).
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
        /// Replace --out if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Print the embedded default config (experiments/theorem2.toml).
    DefaultConfig,
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

fn progress_bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} observations  {msg}",
        )
        .expect("valid template"),
    );
    bar
}

fn print_accuracy_table(rows: &[&Observation], tau: f64) {
    println!(
        "accuracy at t = {:e} (strict / tie-aware, tie tolerance τ = {tau:e}):",
        rows[0].t
    );
    let table: Vec<(&str, &[rmflow::observables::SplitMetrics])> = rows
        .iter()
        .map(|o| (o.model, o.splits.as_slice()))
        .collect();
    print!("{}", rmflow::observables::accuracy_table(&table));
}

fn simulate(config: Config, out: &Path, force: bool) -> Result<()> {
    let n_obs = rmflow::training::observation_times(&config.train).len() as u64;
    let bar = progress_bar(2 * n_obs);
    let sim = rmflow::simulation::simulate(&config, &mut |o| {
        bar.set_message(format!("{} t = {:.2e}", o.model, o.t));
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    let written = rmflow::export::write_simulation(&sim, out, force)?;
    let finals: Vec<&Observation> = sim
        .runs()
        .iter()
        .map(|r| r.trajectory.last().expect("observed"))
        .collect();
    print_accuracy_table(&finals, config.eval.tie_tolerance);
    if let Some(d) = finals[1].unseen_row_drift {
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
            seed,
            imrm_gradient,
            force,
        } => {
            let mut cfg = load_config(config.as_deref())?;
            if let Some(o) = optimizer {
                cfg.train.optimizer = o;
            }
            if let Some(t) = t_max {
                cfg.train.t_max = t;
            }
            if let Some(s) = seed {
                cfg.seed = s;
            }
            if let Some(p) = imrm_gradient {
                cfg.train.imrm_gradient = p;
            }
            cfg.validate().context("after command-line overrides")?;
            simulate(cfg, &out, force)
        }
        Command::Verify {
            config,
            trials,
            json,
            inject_fault,
        } => {
            let cfg = load_config(config.as_deref())?;
            let opts = rmflow::verify::VerifyOptions {
                fault: inject_fault,
                ..Default::default()
            };
            let bar = progress_bar(trials as u64);
            bar.set_message("random setups verified");
            let t0 = std::time::Instant::now();
            let report = rmflow::verify::verify(&cfg, trials, &opts, &|| bar.inc(1))?;
            bar.finish_and_clear();
            print!("{}", rmflow::verify::render(&report));
            eprintln!("verified in {:.2} s", t0.elapsed().as_secs_f64());
            if let Some(path) = json {
                rmflow::export::write_text_atomically(
                    &path,
                    &(serde_json::to_string_pretty(&report)? + "\n"),
                )?;
            }
            if !report.passed() {
                anyhow::bail!("Theorem 2 verification failed (see the FAIL rows above)");
            }
            Ok(())
        }
        Command::Dynamics {
            config,
            out,
            t_max,
            seed,
            force,
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
            cfg.validate().context("after command-line overrides")?;
            let n_obs = rmflow::training::observation_times(&cfg.train).len() as u64;
            let bar = progress_bar(2 * n_obs);
            let run = rmflow::dynamics::run(&cfg, &mut |o| {
                bar.set_message(format!("{} t = {:.2e}", o.model, o.t));
                bar.inc(1);
            })?;
            bar.finish_and_clear();
            let written = rmflow::export::write_dynamics(&run, &out, force)?;
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
        Command::Sweep { config, out } => {
            let file = rmflow::sweep::SweepFile::from_file(&config)?;
            let bar = progress_bar(file.sweep.seeds as u64);
            bar.set_message("seeds done");
            let rows = rmflow::sweep::run_sweep(&file, &|| bar.inc(1))?;
            bar.finish_and_clear();
            println!(
                "{:>8} {:<6} {:>22} {:>22}",
                "value", "model", "tie-aware (95% CI)", "strict (95% CI)"
            );
            for r in &rows {
                println!(
                    "{:>8} {:<6} {:>22} {:>22}",
                    r.value,
                    r.model,
                    format!("{:.3} ± {:.3}", r.tie_aware_mean, r.tie_aware_ci95),
                    format!("{:.3} ± {:.3}", r.strict_mean, r.strict_ci95)
                );
            }
            let meta = format!(
                "# rmflow {}: resolved sweep of {}\n{}",
                rmflow::export::RMFLOW_VERSION,
                config.display(),
                toml::to_string(&file)?
            );
            rmflow::export::write_text_atomically(&out.with_extension("toml"), &meta)?;
            rmflow::export::write_text_atomically(&out, &rmflow::sweep::sweep_csv(&rows))?;
            println!(
                "wrote {} and {}",
                out.display(),
                out.with_extension("toml").display()
            );
            Ok(())
        }
        #[cfg(feature = "lm")]
        Command::Lm {
            model,
            config,
            out,
            device,
            mode,
            force,
        } => {
            let device = match device.as_str() {
                "cpu" => candle_core::Device::Cpu,
                "cuda" => candle_core::Device::new_cuda(0).context("--device cuda: no CUDA device (build with --features cuda on a machine with a GPU)")?,
                other => anyhow::bail!("--device must be cpu or cuda, got {other:?}"),
            };
            let file = rmflow::lm::LmFile::from_file(&config)?;
            run_lm(&model, &file, &out, device, &mode, force)
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
            ExitCode::from(2)
        }
    }
}

#[cfg(feature = "lm")]
fn run_lm(
    model: &std::path::Path,
    file: &rmflow::lm::LmFile,
    out: &std::path::Path,
    device: candle_core::Device,
    mode: &str,
    force: bool,
) -> Result<()> {
    use rmflow::simulation::ModelKind;
    let mode = if mode == "full" {
        rmflow::lm::Mode::Full
    } else {
        rmflow::lm::Mode::Head
    };
    let dir = rmflow::export::AtomicDir::create(out, force)?;
    let mut bar: Option<(ModelKind, ProgressBar)> = None;
    let run = rmflow::lm::run_experiment(model, file, &device, mode, &mut |kind, r| {
        if bar.as_ref().map(|b| b.0) != Some(kind) {
            if let Some((_, b)) = bar.take() {
                b.finish_and_clear();
            }
            bar = Some((kind, progress_bar(file.finetune.steps as u64)));
        }
        let b = &bar.as_ref().expect("set above").1;
        b.set_message(format!(
            "full fine-tuning {}: loss {:.4}",
            kind.label(),
            r.loss
        ));
        b.inc(1);
    })?;
    if let Some((_, b)) = bar {
        b.finish_and_clear();
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
    let finals: Vec<&Observation> = run
        .sim
        .runs()
        .iter()
        .map(|r| r.trajectory.last().expect("observed"))
        .collect();
    println!("head-only (body frozen, Theorem 2):");
    print_accuracy_table(&finals, run.sim.config.eval.tie_tolerance);
    if !run.full.is_empty() {
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
