//! What a recipe run writes (`recipe.json`, `metrics.csv`, `rewards.csv`, …) and prints.

use super::run::{RecipeOutcome, PSEUDO_LIKELIHOOD_NOTE};
use super::{Built, RunIdentity, SetReport};
use crate::error::InputError;
use crate::lm::train::epochs::Mode;
use crate::lm::train::evaluate::{Evaluation, SplitEvaluation};
use crate::lm::train::resume::RunSoFar;
use crate::lm::train::reward::Reward;
use crate::lm::train::sequences::PreferenceProblem;
use anyhow::Result;

/// Writes `recipe.json`, `sequences.jsonl`, `metrics.csv`, `history.csv`, `rewards.csv`,
/// `pair_rewards.csv` and `<mode>/<model>/summary.json`, and with an EX-RM `alignment.csv` (experiments/README.md,
/// "Recipe output").
pub fn write_outputs(dir: &crate::io::atomic::AtomicDir, o: &RecipeOutcome) -> Result<()> {
    dir.write_json("recipe.json", &recipe_json(o))?;
    dir.write_text("sequences.jsonl", &sequences_jsonl(o)?)?;
    if o.runs.iter().any(|r| r.reward == super::Reward::Exgrm) {
        dir.write_text("verification.jsonl", &verification_jsonl(o)?)?;
    }
    for r in &o.runs {
        dir.write_json(
            &format!("{}/{}/summary.json", r.mode.name(), r.reward.name()),
            &serde_json::to_value(r)?,
        )?;
    }
    dir.write_text("metrics.csv", &metrics_csv(o))?;
    dir.write_text("history.csv", &history_csv(o))?;
    dir.write_text("rewards.csv", &rewards_csv(o))?;
    dir.write_text("pair_rewards.csv", &pair_rewards_csv(o))?;
    if o.runs.iter().any(|r| r.reward == super::Reward::Exrm) {
        dir.write_text("alignment.csv", &alignment_csv(o))?;
    }
    Ok(())
}

/// `recipe.json`: version, model, config, prompt format, splits and a summary of every run.
fn recipe_json(o: &RecipeOutcome) -> serde_json::Value {
    let masked = o.arch == crate::lm::Architecture::Bert;
    serde_json::json!({
        "rmflow_version": env!("CARGO_PKG_VERSION"),
        "model": o.model.display().to_string(),
        "architecture": o.arch,
        "device": o.device,
        "seed": o.file.seed,
        "config": o.file,
        "prompt_format": o.problem.prompt_format,
        "added_tokens": o.problem.added_tokens.iter().map(|(t, id)| serde_json::json!({"token": t, "id": id})).collect::<Vec<_>>(),
        "note": if masked { Some(PSEUDO_LIKELIHOOD_NOTE) } else { None },
        "evaluation_cuts": o.file.train.drop_last_token_of_longest.then(|| evaluation_cuts(o)),
        "sets": o.sets,
        "train_prompts": o.problem.prompts_train,
        "test_prompts": o.problem.prompts_test,
        "splits": o.problem.splits.iter().map(|s| serde_json::json!({
            "name": s.name, "pairs": s.chosen.len(), "chosen": s.chosen, "rejected": s.rejected,
        })).collect::<Vec<_>>(),
        "runs": o.runs.iter().map(|r| serde_json::json!({
            "mode": r.mode, "model": r.reward.name(), "parameters": r.parameters,
            "steps": r.history.len(), "seconds": r.seconds,
            "seconds_per_step": r.step_seconds / r.history.len().max(1) as f64,
            "evaluation_tokens_per_second": evaluation_rate(r),
            "extraction": r.extraction.map(|e| serde_json::json!({
                "seconds": e.seconds, "tokens": e.tokens,
                "tokens_per_second": e.tokens as f64 / e.seconds.max(f64::MIN_POSITIVE),
            })),
            "step_pairs": r.history.iter().map(|h| &h.pairs).collect::<Vec<_>>(),
            "training_rows_cut": o.file.train.drop_last_token_of_longest
                .then(|| r.history.iter().map(|h| h.last_tokens_dropped).sum::<usize>()),
            "final": r.evaluations.last().map(|c| &c.splits),
        })).collect::<Vec<_>>(),
    })
}

/// Tokens per second over every evaluation's forwards of a run.
fn evaluation_rate(r: &crate::lm::train::epochs::TrainRun) -> f64 {
    let tokens: usize = r.evaluations.iter().map(|e| e.tokens).sum();
    let seconds: f64 = r.evaluations.iter().map(|e| e.seconds).sum();
    tokens as f64 / seconds.max(f64::MIN_POSITIVE)
}

/// With the official flush's drop: per split, how many of its distinct sequences the official
/// evaluator's batches cut short, and which tokens they lose.
fn evaluation_cuts(o: &RecipeOutcome) -> serde_json::Value {
    let p = &o.problem;
    let cut = crate::lm::train::flush::evaluation_drops(&p.sequences, &p.eval_batches);
    let splits: Vec<serde_json::Value> = p
        .splits
        .iter()
        .map(|s| {
            let mut distinct: Vec<usize> = s.chosen.iter().chain(&s.rejected).copied().collect();
            distinct.sort_unstable();
            distinct.dedup();
            let mut tokens = std::collections::BTreeMap::<String, usize>::new();
            for &i in distinct.iter().filter(|&&i| cut[i]) {
                let last = p.sequences[i]
                    .response_tokens
                    .last()
                    .cloned()
                    .unwrap_or_default();
                *tokens.entry(last).or_default() += 1;
            }
            serde_json::json!({
                "split": s.name, "sequences": distinct.len(),
                "cut": tokens.values().sum::<usize>(), "tokens_lost": tokens,
            })
        })
        .collect();
    serde_json::Value::Array(splits)
}

/// `sequences.jsonl`: every scored sequence, one JSON object a line.
fn sequences_jsonl(o: &RecipeOutcome) -> Result<String> {
    let mut jsonl = String::new();
    for (i, s) in o.problem.sequences.iter().enumerate() {
        jsonl.push_str(&serde_json::to_string(&serde_json::json!({
            "index": i, "prompt": s.prompt, "side": s.side, "prefix": s.prefix, "word": s.word,
            "response_text": s.response_text, "ids": s.ids, "response_start": s.response_start,
            "response_end": s.response_end, "word_span": s.word_span,
        }))?);
        jsonl.push('\n');
    }
    Ok(jsonl)
}

/// `verification.jsonl`: the EX-GRM's verification requests.
fn verification_jsonl(o: &RecipeOutcome) -> Result<String> {
    let mut v = String::new();
    for (i, s) in o.problem.verification.iter().enumerate() {
        v.push_str(&serde_json::to_string(&serde_json::json!({
            "index": i, "prompt": s.prompt, "side": s.side, "prefix": s.prefix,
            "word": s.word, "ids": s.ids,
        }))?);
        v.push('\n');
    }
    Ok(v)
}

/// `metrics.csv`'s columns.
const METRICS_HEADER: &str = "mode,model,epoch,step,split,pairs,exact_tie_accuracy,tie_aware_accuracy,strict_accuracy,ties,normalised_abs_margin,mean_chosen_reward,mean_rejected_reward,mean_margin,loss";

/// `metrics.csv`: one row per run, evaluation and split.
fn metrics_csv(o: &RecipeOutcome) -> String {
    let mut metrics = format!("{METRICS_HEADER}\n");
    for r in &o.runs {
        for c in &r.evaluations {
            for (s, split) in c.splits.iter().zip(&o.problem.splits) {
                metrics.push_str(&metrics_row(
                    (r.mode, r.reward),
                    c,
                    s,
                    Some(split.chosen.len()),
                ));
                metrics.push('\n');
            }
        }
    }
    metrics
}

/// One row of `metrics.csv` (`pairs` empty where unknown).
fn metrics_row(
    (mode, reward): (Mode, Reward),
    c: &Evaluation,
    s: &SplitEvaluation,
    pairs: Option<usize>,
) -> String {
    let (a, w) = (&s.accuracy, &s.rewards);
    [
        mode.name().to_string(),
        reward.name().to_string(),
        c.epoch.to_string(),
        c.step.to_string(),
        a.split.clone(),
        pairs.map_or(String::new(), |p| p.to_string()),
        a.exact_tie_accuracy.to_string(),
        a.tie_aware_accuracy.to_string(),
        a.strict_accuracy.to_string(),
        a.ties.to_string(),
        format!("{:e}", w.normalised_abs_margin),
        format!("{:e}", w.mean_chosen_reward),
        format!("{:e}", w.mean_rejected_reward),
        format!("{:e}", a.mean_margin),
        format!("{:e}", s.loss),
    ]
    .join(",")
}

/// Which of a recipe run's tables `rmflow lm-progress` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressTable {
    /// `metrics.csv`'s rows (`pairs` empty: a checkpoint does not hold the splits).
    Metrics,
    /// `alignment.csv`'s rows.
    Alignment,
    /// `pair_rewards.csv`'s rows: the run's pairs are built again from its `run.json` (its
    /// model and config, read as `lm-recipe --resume` reads them).
    Pairs,
}

/// The evaluations of the run whose newest checkpoint `so_far` is (`rmflow lm-progress`), as
/// `table`'s rows so far, with a `status` column (`finished`, or `in training` for the reward
/// model the checkpoint was written in).
pub fn progress_csv(so_far: &RunSoFar, table: ProgressTable) -> Result<String> {
    type Rows = Box<dyn Fn((Mode, Reward), &[Evaluation]) -> Vec<String>>;
    let (header, rows_of): (&str, Rows) = match table {
        ProgressTable::Metrics => (
            METRICS_HEADER,
            Box::new(|run, evaluations| {
                evaluations
                    .iter()
                    .flat_map(|c| c.splits.iter().map(move |s| metrics_row(run, c, s, None)))
                    .collect()
            }),
        ),
        ProgressTable::Alignment => (ALIGNMENT_HEADER, Box::new(alignment_rows)),
        ProgressTable::Pairs => {
            let b = built_again(so_far)?;
            (
                PAIR_REWARDS_HEADER,
                Box::new(move |run, evaluations| {
                    pair_rewards_rows(run, evaluations, (&b.problem, &b.sets))
                }),
            )
        }
    };
    let mut csv = format!("{header},status\n");
    for (mode, reward, evaluations, status) in runs_so_far(so_far)? {
        for row in rows_of((mode, reward), evaluations) {
            csv.push_str(&format!("{row},{status}\n"));
        }
    }
    Ok(csv)
}

/// One reward model's evaluations in a checkpoint, and its status (`finished`, `in training`).
type RunRows<'a> = (Mode, Reward, &'a [Evaluation], &'static str);

/// Each reward model's evaluations in the checkpoint, in training order, with its status.
fn runs_so_far(so_far: &RunSoFar) -> Result<Vec<RunRows<'_>>> {
    let mut runs: Vec<RunRows> = so_far
        .finished
        .iter()
        .map(|r| (r.mode, r.reward, r.evaluations.as_slice(), "finished"))
        .collect();
    if let Some(p) = &so_far.current {
        let (mode, reward) = *RunIdentity::of(&so_far.identity, &so_far.run_json())?
            .trained_in_order()
            .get(runs.len())
            .ok_or_else(|| {
                InputError(format!(
                    "{}: a reward model in training after the run's last one",
                    so_far.state.display()
                ))
            })?;
        runs.push((mode, reward, p.evaluations.as_slice(), "in training"));
    }
    Ok(runs)
}

/// The run's pairs, built again from its `run.json`'s model folder and config on the CPU.
fn built_again(so_far: &RunSoFar) -> Result<Built> {
    let id = RunIdentity::of(&so_far.identity, &so_far.run_json())?;
    let device = candle_core::Device::Cpu;
    let (lm, _) =
        super::load_recipe_model(&id.model, &device, crate::lm::Forward::Nets, &id.config)?;
    super::build_input(&id.config, &lm)
}

/// `history.csv`: one row per optimizer step.
fn history_csv(o: &RecipeOutcome) -> String {
    let mut history = String::from("mode,model,step,epoch,loss,batch_accuracy\n");
    for r in &o.runs {
        for h in &r.history {
            history.push_str(&format!(
                "{},{},{},{},{:e},{}\n",
                r.mode.name(),
                r.reward.name(),
                h.step,
                h.epoch,
                h.loss,
                h.batch_accuracy
            ));
        }
    }
    history
}

/// `alignment.csv`: the EX-RM's footnote-3 statistics at every evaluation, one row per split
/// compared with the training pairs and statistic (`inner_product`, `cosine`,
/// `max_margin_cosine`).
fn alignment_csv(o: &RecipeOutcome) -> String {
    let mut csv = format!("{ALIGNMENT_HEADER}\n");
    for r in &o.runs {
        for row in alignment_rows((r.mode, r.reward), &r.evaluations) {
            csv.push_str(&row);
            csv.push('\n');
        }
    }
    csv
}

/// `alignment.csv`'s columns.
const ALIGNMENT_HEADER: &str = "mode,model,epoch,step,split,train_pairs,split_pairs,statistic,count,mean,min,first_quartile,median,third_quartile,max,fraction_positive";

/// The rows of `alignment.csv` of one reward model's evaluations.
fn alignment_rows((mode, reward): (Mode, Reward), evaluations: &[Evaluation]) -> Vec<String> {
    let mut rows = Vec::new();
    for c in evaluations {
        for a in &c.representation_alignment {
            let stats = [
                ("inner_product", &a.inner_products),
                ("cosine", &a.cosines),
                ("max_margin_cosine", &a.max_margin_cosines),
            ];
            for (name, s) in stats {
                let Some(s) = s else { continue };
                rows.push(format!(
                    "{},{},{},{},{},{},{},{name},{},{:e},{:e},{:e},{:e},{:e},{:e},{}",
                    mode.name(),
                    reward.name(),
                    c.epoch,
                    c.step,
                    a.unseen_split,
                    a.train_pairs,
                    a.unseen_pairs,
                    s.count,
                    s.mean,
                    s.min,
                    s.first_quartile,
                    s.median,
                    s.third_quartile,
                    s.max,
                    s.fraction_positive
                ));
            }
        }
    }
    rows
}

/// `rewards.csv`: every sequence's reward at the end of each run.
fn rewards_csv(o: &RecipeOutcome) -> String {
    let mut rewards = String::from("mode,model,sequence,reward\n");
    for r in &o.runs {
        for (i, x) in r.rewards.iter().enumerate() {
            rewards.push_str(&format!(
                "{},{},{i},{x:e}\n",
                r.mode.name(),
                r.reward.name()
            ));
        }
    }
    rewards
}

/// `pair_rewards.csv`'s columns.
const PAIR_REWARDS_HEADER: &str = "mode,model,epoch,step,split,pair,row,chosen_sequence,rejected_sequence,chosen_reward,rejected_reward";

/// `pair_rewards.csv`: every pair's rewards at every evaluation, with its sequences (index as in
/// `sequences.jsonl`) and, for preference data, its row in the dataset.
fn pair_rewards_csv(o: &RecipeOutcome) -> String {
    let mut csv = format!("{PAIR_REWARDS_HEADER}\n");
    for r in &o.runs {
        for row in pair_rewards_rows((r.mode, r.reward), &r.evaluations, (&o.problem, &o.sets)) {
            csv.push_str(&row);
            csv.push('\n');
        }
    }
    csv
}

/// One reward model's rows of `pair_rewards.csv`: each pair of each split of `problem` (its row
/// in the dataset from `sets`, for preference data) at each evaluation that kept its rewards.
fn pair_rewards_rows(
    (mode, reward): (Mode, Reward),
    evaluations: &[Evaluation],
    (problem, sets): (&PreferenceProblem, &[SetReport]),
) -> Vec<String> {
    let mut rows = Vec::new();
    for e in evaluations.iter().filter(|e| !e.rewards.is_empty()) {
        for (k, split) in problem.splits.iter().enumerate() {
            let dataset_rows = sets.get(k).map(|s| s.pair_rows.as_slice());
            for (j, (&c, &x)) in split.chosen.iter().zip(&split.rejected).enumerate() {
                let row = dataset_rows
                    .and_then(|v| v.get(j))
                    .map_or(String::new(), usize::to_string);
                rows.push(format!(
                    "{},{},{},{},{},{j},{row},{c},{x},{:e},{:e}",
                    mode.name(),
                    reward.name(),
                    e.epoch,
                    e.step,
                    split.name,
                    e.rewards[c],
                    e.rewards[x]
                ));
            }
        }
    }
    rows
}

/// The final accuracy table: per run, each split's exact-tie and τ-tolerant accuracy and the
/// normalised margin.
pub fn final_table(o: &RecipeOutcome) -> String {
    let mut s = format!(
        "{:<6} {:<16} {:<18} {:>9} {:>9} {:>11}\n",
        "mode", "model", "split", "acc(τ=0)", "acc(τ)", "norm|Δr|"
    );
    for r in &o.runs {
        if let Some(c) = r.evaluations.last() {
            for m in &c.splits {
                s.push_str(&format!(
                    "{:<6} {:<16} {:<18} {:>9.3} {:>9.3} {:>11.3}\n",
                    r.mode.name(),
                    r.reward.name(),
                    m.accuracy.split,
                    m.accuracy.exact_tie_accuracy,
                    m.accuracy.tie_aware_accuracy,
                    m.rewards.normalised_abs_margin
                ));
            }
        }
    }
    s
}
