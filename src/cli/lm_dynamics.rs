//! `rmflow lm-dynamics`: the paper's mechanism (MATH.md §3) measured on a recipe's pairs
//! (`lm::dynamics`).

use super::args::OutputFlags;
use super::progress::progress_bar;
use anyhow::Result;
use rmflow::error::InputError;
use rmflow::io::atomic::{check_inputs, AtomicDir};
use rmflow::lm::dynamics::{self, model::Checkpoint, DynamicsOptions, ModelSource};
use rmflow::lm::open_device;
use rmflow::lm::recipe::{RecipeFile, Reward};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct LmDynamicsArgs {
    /// Hugging Face folder of the model measured at step 0 (with --config). Not with
    /// --checkpoint, whose run names its model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Recipe config (as lm-recipe's: the persona, or [preferences]) whose pairs are measured.
    /// Not with --checkpoint, whose run names its config.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A checkpoint of an lm-recipe run, `<OUT>.checkpoint/state-NNNNNN` (kept with
    /// --keep-checkpoints; full fine-tuning): its reward model is measured at that point, its
    /// IM-RM against the pretrained model as reference.
    #[arg(long, conflicts_with_all = ["model", "config"])]
    checkpoint: Option<PathBuf>,
    /// Output folder, written atomically: pairs.csv, tokens.csv, summary.json, config.json.
    #[arg(long)]
    out: PathBuf,
    /// Reward models, comma-separated: imrm, imrm_no_ref, exrm. [default: exrm,imrm at step 0;
    /// the checkpoint's own]
    #[arg(long)]
    reward: Option<String>,
    /// Evaluation splits to measure, comma-separated (e.g. paraphrase_test,translate_french_test).
    /// [default: every split but train]
    #[arg(long, value_delimiter = ',')]
    sets: Vec<String>,
    /// Measure the first N pairs of each evaluation split (the training direction always uses
    /// every training pair).
    #[arg(long)]
    limit: Option<usize>,
    /// The gradient-descent step η of the first-step check. [default: the η whose predicted
    /// largest margin change is --target-change]
    #[arg(long)]
    eta: Option<f64>,
    /// The largest predicted margin change (reward units) the automatic η aims at.
    #[arg(long, default_value_t = 1e-4)]
    target_change: f64,
    /// The whole-model step's size relative to the parameters, ‖εg‖/‖θ‖: its velocities are
    /// central differences at ε and ε/2 (f32 parameters: a step much below 1e-6 is mostly
    /// rounded away, which `whole_applied` in summary.json shows).
    #[arg(long, default_value_t = 1e-5)]
    whole_step: f64,
    /// Skip the whole-model step (a backward over every training pair, and four scorings of
    /// the evaluation pairs): velocities and the part's step only.
    #[arg(long)]
    no_whole_step: bool,
    /// Where the transformer runs: cpu, or cuda (needs --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    #[command(flatten)]
    output: OutputFlags,
}

/// `--reward`: imrm, imrm_no_ref or exrm, each once.
fn rewards_of(arg: &str) -> Result<Vec<Reward>> {
    let mut out = Vec::new();
    for name in arg.split(',').map(str::trim) {
        let r = Reward::from_name(name)
            .filter(|r| matches!(r, Reward::Imrm | Reward::ImrmNoRef | Reward::Exrm))
            .ok_or_else(|| {
                InputError(format!(
                    "--reward: {name:?} is not one of imrm, imrm_no_ref, exrm"
                ))
            })?;
        if !out.contains(&r) {
            out.push(r);
        }
    }
    Ok(out)
}

/// The model measured and the reward models, from the arguments.
fn source_of(a: &LmDynamicsArgs) -> Result<(ModelSource, Vec<Reward>)> {
    if let Some(state) = &a.checkpoint {
        let c = Checkpoint::open(state)?;
        let rewards = match &a.reward {
            Some(r) => rewards_of(r)?,
            None => vec![c.reward],
        };
        if rewards != [c.reward] {
            return Err(InputError(format!(
                "--reward: the checkpoint holds the {} only",
                c.reward.name()
            ))
            .into());
        }
        return Ok((ModelSource::Checkpoint(c), rewards));
    }
    let (Some(model), Some(config)) = (&a.model, &a.config) else {
        return Err(InputError("give --model and --config, or --checkpoint".into()).into());
    };
    let file = RecipeFile::from_file(config)?;
    let rewards = rewards_of(a.reward.as_deref().unwrap_or("exrm,imrm"))?;
    let source = ModelSource::Pretrained {
        model: model.clone(),
        file,
    };
    Ok((source, rewards))
}

pub fn run(a: LmDynamicsArgs) -> Result<()> {
    let device = open_device(&a.device)?;
    if !(a.target_change > 0.0 && a.target_change.is_finite()) {
        return Err(InputError(format!(
            "--target-change must be positive and finite, got {}",
            a.target_change
        ))
        .into());
    }
    if let Some(e) = a.eta.filter(|e| !(*e > 0.0 && e.is_finite())) {
        return Err(InputError(format!("--eta must be positive and finite, got {e}")).into());
    }
    if !(a.whole_step > 0.0 && a.whole_step < 1.0) {
        return Err(InputError(format!(
            "--whole-step must be in (0, 1), got {}",
            a.whole_step
        ))
        .into());
    }
    if a.limit == Some(0) {
        return Err(InputError("--limit must be ≥ 1".into()).into());
    }
    let (source, rewards) = source_of(&a)?;
    let mut inputs: Vec<&std::path::Path> = a.config.iter().map(PathBuf::as_path).collect();
    inputs.extend(a.model.as_deref());
    inputs.extend(a.checkpoint.as_deref());
    check_inputs(inputs, &a.out)?;
    let dir = AtomicDir::create(&a.out, a.output.replace())?;
    let options = DynamicsOptions {
        rewards,
        sets: a.sets.clone(),
        limit: a.limit,
        eta: a.eta,
        target_change: a.target_change,
        whole_step: (!a.no_whole_step).then_some(a.whole_step),
    };
    let bar = progress_bar("lm-dynamics", 0, "stages");
    let outcome = dynamics::run_dynamics(source, options, &device, &mut |m| bar.stage(m))?;
    bar.finish();
    dynamics::output::write_outputs(&dir, &outcome)?;
    let written = dir.commit()?;
    print_summary(&outcome);
    outln!("wrote {}", written.display());
    Ok(())
}

fn print_summary(o: &dynamics::DynamicsOutcome) {
    let s = dynamics::output::summary(o);
    for r in &s.rewards {
        let f = &r.first_order;
        outln!(
            "{}: η = {:.3e}; first-order check of the part: error {:.2e} at η, {:.2e} at η/2 ({}); whole model (central differences, ‖εg‖/‖θ‖ {}, {} of it applied in f32): w(ε) vs w(ε/2) {}",
            r.reward,
            f.eta,
            f.part_error[0],
            f.part_error[1],
            if f.part_passes { "passes" } else { "FAILS" },
            f.whole_relative_step.map_or("-".into(), |c| format!("{c:.0e}")),
            f.whole_applied.map_or("-".into(), |c| format!("{c:.4}")),
            f.whole_consistency.map_or("-".into(), |c| format!("{c:.2e}")),
        );
        for sp in &r.splits {
            outln!(
                "  {:<28} pairs {:>4}  acc {:.3}  mean dm/dt {:+.3e}  negative {:.3}  identity share {}  sign(identity)=sign {}  part/whole {}",
                sp.split,
                sp.pairs,
                sp.accuracy,
                sp.mean_velocity,
                sp.velocity_negative,
                sp.identity_share.map_or("-".into(), |x| format!("{x:.3}")),
                sp.identity_sign_agreement.map_or("-".into(), |x| format!("{x:.3}")),
                sp.part_over_whole.map_or("-".into(), |x| format!("{x:.3}")),
            );
        }
    }
}
