//! A run's files (layout in experiments/README.md): `config.toml`, `metrics.csv` (one row per
//! reward model and evaluation), `prompts.csv` (the IM-RM's per-prompt generations and masses),
//! `pair_rewards.csv` (every pair's rewards at every evaluation), `token_rewards.csv` (the
//! IM-RM's reward per response token at every evaluation), `pretrain.csv`, `steps.csv`,
//! `pairs.jsonl`, `summary.json`, and the checkpoints `initial/`
//! and `reference/` (Hugging Face folders).

use super::problem::pair_sequences;
use super::run::{CycleEpoch, CycleOutcome, PromptRecord};
use crate::error::InputError;
use crate::io::atomic::AtomicDir;
use crate::lm::train::epochs::TrainRun;
use crate::lm::train::evaluate::Evaluation;
use crate::lm::train::resume::RunSoFar;
use crate::lm::train::reward::Reward;
use crate::lm::train::sequences::Side;
use crate::problem::hamiltonian::{count_cycle_orders, response};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::fmt::Write;

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or(String::new(), |x| x.to_string())
}

/// A float in exponent notation (masses far below 1e-20 stay short), empty where absent.
fn opt_e(v: &Option<f64>) -> String {
    v.map_or(String::new(), |x| format!("{x:e}"))
}

/// `metrics.csv`.
pub fn metrics_csv(o: &CycleOutcome) -> String {
    metrics_table(&o.epochs)
}

/// Which of a run's tables `rmflow lm-progress` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressTable {
    /// `metrics.csv`'s rows: every evaluation so far.
    Metrics,
    /// `prompts.csv`'s rows: every IM-RM evaluation's per-prompt generations.
    Prompts,
    /// `pair_rewards.csv`'s rows: every pair's rewards at every evaluation so far.
    Pairs,
    /// `token_rewards.csv`'s rows: the IM-RM's reward per response token at every evaluation.
    Tokens,
}

/// The rows of `table` that a run's newest checkpoint holds (`rmflow lm-progress`; none before
/// the first evaluation).
pub fn progress_csv(so_far: &RunSoFar, table: ProgressTable) -> Result<String> {
    // The observer's records (metrics and prompts), decoded only for the tables they make.
    let recorded = || match so_far.observed.as_deref() {
        Some(bytes) => super::resume::recorded(bytes),
        None => Ok((Vec::new(), Vec::new())),
    };
    Ok(match table {
        ProgressTable::Metrics => metrics_table(&recorded()?.0),
        ProgressTable::Prompts => prompts_table(&recorded()?.1),
        ProgressTable::Pairs => {
            let file: super::CycleFile = serde_json::from_value(so_far.identity["config"].clone())
                .map_err(|e| {
                    InputError(format!(
                        "{}: run.json has no valid `config`: {e}",
                        so_far.state.display()
                    ))
                })?;
            let runs = evaluations_so_far(so_far);
            pair_rewards_table(&runs, file.data.train_pairs, file.data.test_pairs)?
        }
        ProgressTable::Tokens => token_rewards_table(&evaluations_so_far(so_far)),
    })
}

/// Each reward model's evaluations in a run's newest checkpoint: the finished ones', then the
/// one in training's (the cycle trains the IM-RM, then the EX-RM: [`super::run::run_cycle`]).
fn evaluations_so_far(so_far: &RunSoFar) -> Vec<(Reward, &[Evaluation])> {
    let mut runs = evaluations_of(&so_far.finished);
    if let Some(p) = &so_far.current {
        let reward = [Reward::Imrm, Reward::Exrm][runs.len().min(1)];
        runs.push((reward, p.evaluations.as_slice()));
    }
    runs
}

/// Each trained reward model's evaluations.
fn evaluations_of(runs: &[TrainRun]) -> Vec<(Reward, &[Evaluation])> {
    runs.iter()
        .map(|r| (r.reward, r.evaluations.as_slice()))
        .collect()
}

/// `token_rewards.csv`.
fn token_rewards_csv(o: &CycleOutcome) -> String {
    token_rewards_table(&evaluations_of(&o.runs))
}

/// The IM-RM's mean reward contribution `β (ln π − ln π_ref)` per occurrence of each response
/// token (by evaluation, split and side; `count`: its occurrences over the split's sequences),
/// from the evaluations' [`implicit_tokens`](crate::lm::train::evaluate::SplitEvaluation):
/// which tokens the training made more or less likely. The EX-RM has none.
fn token_rewards_table(runs: &[(Reward, &[Evaluation])]) -> String {
    let mut s = String::from("reward,epoch,step,split,side,token,mean,count\n");
    for (reward, evaluations) in runs {
        for e in evaluations.iter() {
            for split in &e.splits {
                for t in split.implicit_tokens.iter().flatten() {
                    let side = match t.side {
                        Side::Chosen => "chosen",
                        Side::Rejected => "rejected",
                    };
                    let _ = writeln!(
                        s,
                        "{},{},{},{},{side},{},{:e},{}",
                        reward.name(),
                        e.epoch,
                        e.step,
                        split.accuracy.split,
                        crate::io::csv::field(&t.token),
                        t.mean,
                        t.count
                    );
                }
            }
        }
    }
    s
}

/// `pair_rewards.csv`.
fn pair_rewards_csv(o: &CycleOutcome) -> Result<String> {
    pair_rewards_table(&evaluations_of(&o.runs), o.train.len(), o.test.len())
}

/// Every pair's rewards at every evaluation of each reward model in `runs` (its evaluations'
/// per-sequence rewards, laid out as [`pair_sequences`] says: `train_pairs` training pairs,
/// then `test_pairs` test pairs); an evaluation that holds another count is an error.
fn pair_rewards_table(
    runs: &[(Reward, &[Evaluation])],
    train_pairs: usize,
    test_pairs: usize,
) -> Result<String> {
    let mut s = String::from("reward,epoch,step,split,pair,chosen_reward,rejected_reward\n");
    let sequences = 2 * (train_pairs + test_pairs);
    for (reward, evaluations) in runs {
        for e in evaluations.iter() {
            if e.rewards.len() != sequences {
                bail!(
                    "the {} evaluation after epoch {} holds {} sequence rewards, not 2 × ({train_pairs} + {test_pairs})",
                    reward.name(),
                    e.epoch,
                    e.rewards.len()
                );
            }
            for k in 0..train_pairs + test_pairs {
                let (split, pair) = match k < train_pairs {
                    true => ("train", k),
                    false => ("test", k - train_pairs),
                };
                let (c, r) = pair_sequences(k);
                let _ = writeln!(
                    s,
                    "{},{},{},{split},{pair},{:e},{:e}",
                    reward.name(),
                    e.epoch,
                    e.step,
                    e.rewards[c],
                    e.rewards[r]
                );
            }
        }
    }
    Ok(s)
}

/// `metrics.csv` of the evaluations `epochs`.
fn metrics_table(epochs: &[CycleEpoch]) -> String {
    let mut s = String::from("reward,epoch,step,train_accuracy,test_accuracy,min_test_margin,mean_test_margin,sampled_success,greedy_success,mean_cycle_mass,mean_reference_cycle_mass,mean_order_mass,bound_holds,max_bound_excess,max_restricted_error,generated_tokens,generation_seconds,enumeration_seconds\n");
    for e in epochs {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{:e},{:e},{},{},{},{},{},{},{},{},{},{:.3},{:.3}",
            e.reward,
            e.epoch,
            e.step,
            e.train_accuracy,
            e.test_accuracy,
            e.min_test_margin,
            e.mean_test_margin,
            opt(&e.sampled_success),
            opt(&e.greedy_success),
            opt_e(&e.mean_cycle_mass),
            opt_e(&e.mean_reference_cycle_mass),
            opt_e(&e.mean_order_mass),
            opt(&e.bound_holds),
            opt_e(&e.max_bound_excess),
            opt_e(&e.max_restricted_error),
            e.generated_tokens,
            e.generation_seconds,
            e.enumeration_seconds
        );
    }
    s
}

/// `prompts.csv`.
fn prompts_csv(o: &CycleOutcome) -> String {
    prompts_table(&o.prompts)
}

/// `prompts.csv` of the per-prompt records `prompts`.
fn prompts_table(prompts: &[PromptRecord]) -> String {
    let mut s = String::from("epoch,prompt,sampled_correct,greedy_correct,sampled_stopped,greedy_stopped,cycle_orders,ln_cycle_mass,ln_reference_cycle_mass,ln_order_mass,sampled_text,greedy_text\n");
    for p in prompts {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{}",
            p.epoch,
            p.prompt,
            u8::from(p.sampled_correct),
            u8::from(p.greedy_correct),
            u8::from(p.sampled_stopped),
            u8::from(p.greedy_stopped),
            opt(&p.cycle_orders),
            opt(&p.ln_cycle_mass),
            opt(&p.ln_reference_cycle_mass),
            opt(&p.ln_order_mass),
            crate::io::csv::field(&p.sampled_text),
            crate::io::csv::field(&p.greedy_text)
        );
    }
    s
}

fn steps_csv(o: &CycleOutcome) -> String {
    let mut s = String::from("reward,step,epoch,loss,batch_accuracy\n");
    for r in &o.runs {
        for h in &r.history {
            let _ = writeln!(
                s,
                "{},{},{},{},{}",
                r.reward.name(),
                h.step,
                h.epoch,
                h.loss,
                h.batch_accuracy
            );
        }
    }
    s
}

/// `pairs.jsonl`; `cycle_orders` is the Held–Karp count, `null` above
/// [`MAX_COUNTED_VERTICES`](crate::problem::hamiltonian::MAX_COUNTED_VERTICES) vertices.
/// `counted` is called after each graph (the counts take seconds at 20 vertices).
fn pairs_jsonl(o: &CycleOutcome, counted: &mut dyn FnMut()) -> Result<String> {
    let mut s = String::new();
    for (split, pairs) in [("train", &o.train), ("test", &o.test)] {
        for (i, p) in pairs.iter().enumerate() {
            let line = json!({
                "split": split, "index": i, "prompt": p.graph.prompt(),
                "chosen": response(&p.chosen), "rejected": response(&p.rejected),
                "cycle_orders": count_cycle_orders(&p.graph),
            });
            counted();
            s.push_str(&serde_json::to_string(&line)?);
            s.push('\n');
        }
    }
    Ok(s)
}

/// `summary.json`: version, config, timings and the last evaluation of each reward model.
fn summary(o: &CycleOutcome) -> serde_json::Value {
    let last = |name: &str| o.epochs.iter().rev().find(|e| e.reward == name);
    let runs: Vec<_> = o
        .runs
        .iter()
        .map(|r| {
            json!({
                "reward": r.reward.name(), "parameters": r.parameters, "steps": r.history.len(),
                "seconds": r.seconds, "step_seconds": r.step_seconds,
                "final": last(r.reward.name()),
            })
        })
        .collect();
    json!({
        "rmflow_version": env!("CARGO_PKG_VERSION"),
        "experiment": "hamiltonian-cycle verification vs generation (MATH.md §7)",
        "config": o.file,
        "tokens": o.tokens.describe(),
        "pretrain": o.file.model.path.is_none().then(|| json!({
            "seconds": o.pretrain_seconds,
            "first_loss": o.pretrain.first().map(|s| s.loss),
            "last_loss": o.pretrain.last().map(|s| s.loss),
            "uniform_order_loss_per_token": uniform_order_loss(o.file.data.vertices),
        })),
        "runs": runs,
        "differences_from_official": differences(o),
    })
}

/// Where the run differs from the official plan (`ham_cycle_reward_model_experiment.json`).
fn differences(o: &CycleOutcome) -> Vec<String> {
    let f = &o.file;
    let mut d = vec![match &f.model.path {
        None => "model: a small Llama trained from scratch (config [model]) and pretrained on random vertex orders, not Pythia-1B".to_string(),
        Some(p) => format!("model: the pretrained checkpoint {}, not Pythia-1B (its own chat template where it has one)", p.display()),
    }];
    if f.train.adamw.lr != 1e-6 {
        d.push(format!("train.lr = {:e} (official 1e-6)", f.train.adamw.lr));
    }
    let n = f.data.vertices;
    if (n, f.data.train_pairs, f.data.test_pairs) != (10, 1000, 200) {
        d.push(format!(
            "data: n = {n}, {} / {} pairs (official n = 10, 1000 / 200)",
            f.data.train_pairs, f.data.test_pairs
        ));
    }
    if f.train.epochs != 15 {
        d.push(format!("train.epochs = {} (official 15)", f.train.epochs));
    }
    d.extend([
        "draws: ChaCha8 from data.seed, not torch.Generator (same distribution, other graphs)",
            "generation: at most 2n + eval.extra_new_tokens new tokens (official 300); decoded by joining the tokens' strings, special tokens skipped",
            "generation is scored on the test prompts only (official: train and test)",
    ].map(String::from));
    d
}

/// `ln n! / (2n)`: the per-token loss of a model that is uniform over vertex orders and certain
/// of every separator and the eos (`2n` response tokens): what pretraining can reach.
pub fn uniform_order_loss(n: usize) -> f64 {
    (1..=n).map(|k| (k as f64).ln()).sum::<f64>() / (2 * n) as f64
}

/// Writes every file of `o` into `dir` (the checkpoints are already there); `counted` is called
/// once per pair as `pairs.jsonl` counts its graph's cycles.
pub fn write_outputs(dir: &AtomicDir, o: &CycleOutcome, counted: &mut dyn FnMut()) -> Result<()> {
    let put = |name: &str, text: &str| -> Result<()> {
        let p = dir.path(name)?;
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))
    };
    put("config.toml", &toml::to_string(&o.file)?)?;
    put("metrics.csv", &metrics_csv(o))?;
    put("prompts.csv", &prompts_csv(o))?;
    put("steps.csv", &steps_csv(o))?;
    put("pair_rewards.csv", &pair_rewards_csv(o)?)?;
    put("token_rewards.csv", &token_rewards_csv(o))?;
    let mut pre = String::from("step,loss\n");
    for s in &o.pretrain {
        let _ = writeln!(pre, "{},{}", s.step, s.loss);
    }
    put("pretrain.csv", &pre)?;
    put("pairs.jsonl", &pairs_jsonl(o, counted)?)?;
    put("summary.json", &serde_json::to_string_pretty(&summary(o))?)?;
    Ok(())
}

/// The printed table: the first and last evaluation of each reward model.
pub fn final_table(o: &CycleOutcome) -> String {
    let mut s = String::from("reward  epoch  test acc  min margin δ  sampled  greedy  π(C|x)    π_ref(C|x)  bound holds\n");
    let f = |v: Option<f64>, w: usize| v.map_or(format!("{:>w$}", "-"), |x| format!("{x:>w$.4}"));
    // Masses far below 1e-4 (a pretrained model's, ~1e-45) in exponent notation.
    let g = |v: Option<f64>, w: usize| v.map_or(format!("{:>w$}", "-"), |x| format!("{x:>w$.2e}"));
    for name in ["imrm", "exrm"] {
        let rows: Vec<_> = o.epochs.iter().filter(|e| e.reward == name).collect();
        for e in [rows.first(), rows.last()].into_iter().flatten() {
            let _ = writeln!(
                s,
                "{:<6}  {:>5}  {:>8.4}  {:>12.3e}  {}  {}  {}  {}  {}",
                e.reward,
                e.epoch,
                e.test_accuracy,
                e.min_test_margin,
                f(e.sampled_success, 7),
                f(e.greedy_success, 6),
                g(e.mean_cycle_mass, 8),
                g(e.mean_reference_cycle_mass, 10),
                f(e.bound_holds, 11)
            );
        }
    }
    s
}
