//! `rmflow ham-cycle` (feature `lm`): the Hamiltonian-cycle experiment of MATH.md §7.

use super::args::OutputFlags;
use super::lm::StageBars;
use super::progress::progress_bar;
use super::resume::{refuse_difference, CheckpointFlags};
use anyhow::Result;
use rmflow::error::InputError;
use rmflow::io::atomic::AtomicDir;
use rmflow::lm::cycle::{self, CycleEvent, CycleFile};
use rmflow::lm::open_device;
use rmflow::lm::recipe::Reward;
use rmflow::lm::train::resume::CheckpointDir;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct HamCycleArgs {
    /// Config (TOML; every field optional, defaults in experiments/ham_cycle.toml: the official
    /// n = 10, p = 0.2, 1000/200 pairs). Without it: those defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override `data.vertices` (n ≤ 8 also computes the exact probabilities).
    #[arg(long)]
    vertices: Option<usize>,
    /// A pretrained causal checkpoint (Hugging Face folder) as the reference model, as the
    /// official code uses Pythia-1B: overrides `model.path`. `<sep>` and `<edge_sep>` are added
    /// to its tokenizer and its vocabulary resized; prompts and responses go through its chat
    /// template (or the official default one). Without it (and without `model.path`): the small
    /// Llama trained from scratch.
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Override `train.lr` (the reward models' Adam learning rate; official 1e-6).
    #[arg(long)]
    lr: Option<f64>,
    /// Output folder, written atomically (layout: experiments/README.md). Required unless
    /// --resume.
    #[arg(long)]
    out: Option<PathBuf>,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Run even if the estimated peak memory exceeds the memory available.
    #[arg(long)]
    ignore_memory_estimate: bool,
    #[command(flatten)]
    checkpoints: CheckpointFlags,
    #[command(flatten)]
    output: OutputFlags,
}

/// The run's identity, written as `run.json` and compared on `--resume`.
fn identity(file: &CycleFile, device: &str) -> Value {
    json!({
        "rmflow_version": env!("CARGO_PKG_VERSION"),
        "config": file,
        "device": device,
    })
}

/// `--resume RUN_DIR`: the interrupted run's config, output and checkpoints; a config or device
/// given must be the run's own.
fn resumed(a: &HamCycleArgs, run_dir: &Path) -> Result<(CycleFile, PathBuf, CheckpointDir)> {
    if a.out.as_ref().is_some_and(|o| o != run_dir) {
        return Err(
            InputError(format!("--out differs from --resume {}", run_dir.display())).into(),
        );
    }
    let (checkpoints, saved) = a.checkpoints.open(run_dir)?;
    let file: CycleFile = serde_json::from_value(saved["config"].clone()).map_err(|e| {
        InputError(format!(
            "--resume: the checkpoint's run.json has no valid `config`: {e}"
        ))
    })?;
    let overridden = a.vertices.is_some() || a.model.is_some() || a.lr.is_some();
    let mut now = match a.config.is_some() || overridden {
        true => identity(&config_of(a)?, &a.device),
        false => identity(&file, &a.device),
    };
    now["rmflow_version"] = saved["rmflow_version"].clone();
    refuse_difference(&saved, &now, run_dir)?;
    Ok((file, run_dir.to_path_buf(), checkpoints))
}

/// The config of `a`: the file (or the defaults) with the flags' overrides, validated.
fn config_of(a: &HamCycleArgs) -> Result<CycleFile> {
    let mut file = match &a.config {
        Some(p) => CycleFile::from_file(p)?,
        None => CycleFile::from_text(
            cycle::DEFAULT_CYCLE_TOML,
            "(embedded experiments/ham_cycle.toml)",
        )?,
    };
    if let Some(n) = a.vertices {
        file.data.vertices = n;
        file.validate()
            .map_err(|e| rmflow::error::InputError(format!("--vertices {n}: {e:#}")))?;
    }
    if let Some(lr) = a.lr {
        file.train.adamw.lr = lr;
        file.validate()
            .map_err(|e| InputError(format!("--lr {lr}: {e:#}")))?;
    }
    if let Some(dir) = &a.model {
        file.model.path = Some(dir.clone());
        file.validate()
            .map_err(|e| InputError(format!("--model {}: {e:#}", dir.display())))?;
    }
    file.check_model()?;
    Ok(file)
}

pub fn run(a: HamCycleArgs) -> Result<()> {
    let (file, out, resumed) = match &a.checkpoints.resume {
        Some(run_dir) => {
            let (file, out, c) = resumed(&a, run_dir)?;
            (file, out, Some(c))
        }
        None => {
            let out = a
                .out
                .clone()
                .ok_or_else(|| InputError("--out is required (or --resume RUN_DIR)".into()))?;
            (config_of(&a)?, out, None)
        }
    };
    refuse_above_memory(&a, &file)?;
    let device = open_device(&a.device)?;
    let dir = AtomicDir::create(&out, a.output.replace())?;
    let mut checkpoints = match resumed {
        Some(c) => c,
        None => a.checkpoints.create(&out, &identity(&file, &a.device))?,
    };
    // The checkpoints' folders inside the output (the run creates them).
    let (initial, reference) = (dir.path("initial")?, dir.path("reference")?);
    let mut bars = CycleBars::new(&file);
    let outcome = cycle::run_cycle(
        &file,
        (&initial, &reference),
        &device,
        Some(&mut checkpoints),
        &mut |e| bars.show(e),
    );
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            super::resume::after_failure(checkpoints, &e);
            return Err(e);
        }
    };
    bars.bars.finish();
    write(dir, &outcome)?;
    if !a.checkpoints.keep_checkpoints {
        checkpoints.remove()?;
    }
    Ok(())
}

/// Refuses a run whose estimated peak memory exceeds the memory available (unless
/// `--ignore-memory-estimate`), naming the fields that size it.
fn refuse_above_memory(a: &HamCycleArgs, file: &CycleFile) -> Result<()> {
    let (d, m) = (&file.data, &file.model);
    let model = match &m.path {
        Some(p) => format!("model.path = {}", p.display()),
        None => format!("model.dim = {}, model.layers = {}", m.dim, m.layers),
    };
    rmflow::io::resources::refuse_above_available(
        &file.memory_estimate()?,
        &format!(
            "data.vertices = {}, data.train_pairs = {}, data.test_pairs = {}, {model}",
            d.vertices, d.train_pairs, d.test_pairs
        ),
        "data.train_pairs, data.test_pairs, data.vertices, model.dim or model.layers",
        a.ignore_memory_estimate,
    )
}

/// The run's progress bars: pretraining (key 0, absent for a pretrained model's data stage
/// only), then each reward model's steps (EX-RM 1, IM-RM 2).
struct CycleBars {
    bars: StageBars<u8>,
    /// Pretraining steps (0 for a pretrained model: its bar only shows the data's stage).
    pretrain_steps: u64,
    /// Optimizer steps of each reward model.
    reward_steps: u64,
}

impl CycleBars {
    fn new(file: &CycleFile) -> CycleBars {
        CycleBars {
            bars: StageBars::new(),
            pretrain_steps: match file.model.path {
                Some(_) => 0,
                None => file.pretrain.steps as u64,
            },
            reward_steps: (file.train.epochs
                * file.data.train_pairs.div_ceil(file.train.pairs_per_step))
                as u64,
        }
    }

    fn show(&mut self, e: CycleEvent) {
        let (pretrain, steps) = (self.pretrain_steps, self.reward_steps);
        let pretrain_bar = || progress_bar("ham-cycle pretrain", pretrain, "steps");
        let key = |reward: Reward| 1 + u8::from(reward.is_implicit());
        let reward_bar = |reward: Reward| {
            move || progress_bar(&format!("ham-cycle {}", reward.label()), steps, "steps")
        };
        match e {
            CycleEvent::Stage(None, msg) => self.bars.bar(0, pretrain_bar).stage(&msg),
            CycleEvent::Stage(Some(r), msg) => self.bars.bar(key(r), reward_bar(r)).stage(&msg),
            CycleEvent::Pretrain(s) => self
                .bars
                .bar(0, pretrain_bar)
                .inc(&format!("loss {:.4}", s.loss)),
            CycleEvent::Step(r, s) => self.bars.bar(key(r), reward_bar(r)).advance_to(
                s.step as u64,
                &format!("epoch {} loss {:.4}", s.epoch, s.loss),
            ),
            CycleEvent::Scored(r, done, of) => self
                .bars
                .bar(key(r), reward_bar(r))
                .detail(&format!("{done} of {of} sequences scored")),
            CycleEvent::Resumed(r, done, msg) => {
                let bar = self.bars.bar(key(r), reward_bar(r));
                bar.advance_to(done as u64, &msg);
                bar.stage(&msg);
            }
        }
    }
}

/// Writes the outputs of a finished run into `dir` and installs it; prints the final table.
fn write(dir: AtomicDir, outcome: &cycle::CycleOutcome) -> Result<()> {
    let pairs = (outcome.train.len() + outcome.test.len()) as u64;
    let counting = progress_bar("ham-cycle outputs", pairs, "graphs");
    counting.stage("counting each graph's Hamiltonian cycles for pairs.jsonl (Held–Karp)");
    cycle::write_outputs(&dir, outcome, &mut || counting.inc("counted"))?;
    counting.finish();
    let written = dir.commit()?;
    out!("{}", cycle::output::final_table(outcome));
    outln!("wrote {}", written.display());
    Ok(())
}
