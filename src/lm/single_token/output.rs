//! Output of full fine-tuning (`rmflow lm --mode full`): `full/<model>/` beside the head-only
//! run's simulate layout (experiments/README.md, "Real-model output").

use crate::io::atomic::AtomicDir;
use crate::io::layout::write_pairs;
use crate::lm::checkpoint::hf_config::Architecture;
use crate::lm::single_token::finetune::FullRun;
use crate::lm::single_token::setup::RealModelRun;
use crate::lm::single_token::setup::SplitSequences;
use crate::problem::synthetic::SplitId;
use anyhow::Result;
use serde_json::{json, Value};

/// `full/<model>/summary.json`, `history.csv`, per split the re-extracted representations
/// (`train/`, `eval_<split>/` as in simulate), and the trained head or answer rows of `U`.
pub fn write_full_run(dir: &AtomicDir, run: &FullRun) -> Result<()> {
    let root = format!("full/{}", run.kind.name());
    dir.write_json(&format!("{root}/summary.json"), &full_summary(run))?;
    let mut csv = String::from("step,loss,batch_strict_accuracy\n");
    for r in &run.history {
        csv.push_str(&format!(
            "{},{:e},{:e}\n",
            r.step, r.loss, r.batch_strict_accuracy
        ));
    }
    dir.write_text(&format!("{root}/history.csv"), &csv)?;
    dir.write_text(&format!("{root}/checkpoints.csv"), &evaluations_csv(run))?;
    for p in &run.pairs {
        let folder = if p.name == "train" {
            format!("{root}/train")
        } else {
            format!("{root}/eval_{}", p.name)
        };
        write_pairs(dir, &folder, p)?;
    }
    if let Some(h) = &run.head {
        dir.write_npy(&format!("{root}/head.npy"), h)?;
    }
    if let Some((tokens, init, fin)) = &run.answer_rows {
        let t = ndarray::Array1::from_iter(tokens.iter().map(|&x| i64::from(x)));
        dir.write_npy(&format!("{root}/answer_tokens.npy"), &t)?;
        dir.write_npy(&format!("{root}/answer_rows_init.npy"), init)?;
        dir.write_npy(&format!("{root}/answer_rows_final.npy"), fin)?;
    }
    Ok(())
}

/// The JSON summary of one fully fine-tuned model.
pub fn full_summary(run: &FullRun) -> Value {
    json!({
        "model": run.kind.name(),
        "parameters": run.parameters,
        "steps": run.history.len(),
        "first_loss": run.history.first().map(|r| r.loss),
        "final_loss": run.history.last().map(|r| r.loss),
        "splits": run.splits,
        "checkpoints": run.evaluations,
        "unseen_row_drift": run.unseen_row_drift,
        "answer_direction_cosine": run.answer_direction_cosine,
        "representation_shift": run.shift,
        "relative_parameter_change": run.relative_parameter_change,
        "unchanged_parameters": run.unchanged_parameters,
        "seconds": run.seconds,
        "seconds_per_step": run.step_seconds / run.history.len().max(1) as f64,
    })
}

/// Accuracy table (strict / tie-aware) of fully fine-tuned models, one line per model.
pub fn full_table(runs: &[FullRun]) -> String {
    let rows: Vec<(&str, &[crate::experiment::observables::SplitMetrics])> = runs
        .iter()
        .map(|r| (r.kind.name(), r.splits.as_slice()))
        .collect();
    let mut out = crate::experiment::observables::accuracy_table(&rows);
    for r in runs {
        out.push_str(&format!("{:<8}", r.kind.name()));
        if let Some(d) = r.unseen_row_drift {
            out.push_str(&format!(" unseen-row drift {d:.3e},"));
        }
        if let Some(s) = r.shift.iter().find(|s| SplitId::Unseen.is(&s.split)) {
            out.push_str(&format!(
                " representation shift on unseen (prompt / response) {:.3} / {:.3}",
                s.prompt, s.response
            ));
        }
        out.push('\n');
    }
    out
}

/// `step,<split>_strict_accuracy,<split>_tie_aware_accuracy,…` per evaluation.
pub fn evaluations_csv(run: &FullRun) -> String {
    let mut out = String::from("step");
    if let Some(c) = run.evaluations.first() {
        for s in &c.splits {
            out.push_str(&format!(
                ",{0}_strict_accuracy,{0}_tie_aware_accuracy,{0}_mean_margin",
                s.split
            ));
        }
    }
    out.push('\n');
    for c in &run.evaluations {
        out.push_str(&c.step.to_string());
        for s in &c.splits {
            out.push_str(&format!(
                ",{:e},{:e},{:e}",
                s.strict_accuracy, s.tie_aware_accuracy, s.mean_margin
            ));
        }
        out.push('\n');
    }
    out
}

/// The whole output of `rmflow lm` into `dir`: simulate's layout for the head-only run,
/// `full/<model>/` for each fully fine-tuned model, `lm_config.toml` and `lm.json`.
pub fn write_run(dir: &AtomicDir, run: &RealModelRun) -> Result<()> {
    crate::io::layout::write_simulation_into(dir, &run.sim)?;
    dir.write_text(
        "config.toml",
        &format!(
            "# rmflow {}: engine config of the head-only run on {}'s representations.\n\
             # [setup] holds the problem's sizes (dim, token counts, pairs, beta); its synthetic-LM\n\
             # fields (alpha, kappa, recurrent_gain, ...) were not used. The real-model config is lm_config.toml.\n{}",
            crate::io::layout::RMFLOW_VERSION,
            run.model.display(),
            run.sim.config.to_toml()
        ),
    )?;
    for f in &run.full {
        write_full_run(dir, f)?;
    }
    dir.write_text(
        "lm_config.toml",
        &format!(
            "# rmflow {}: resolved real-model config of this run\n{}",
            crate::io::layout::RMFLOW_VERSION,
            toml::to_string(&run.file)?
        ),
    )?;
    dir.write_text("sequences.jsonl", &sequences_jsonl(&run.sequences)?)?;
    dir.write_json("lm.json", &lm_json(run))
}

/// One JSON line per extracted sequence, in the order the per-sequence forward reads them
/// (per split: every prompt, then every chosen, then every rejected sequence): `split`, `pair`,
/// `role` (`prompt`, `chosen`, `rejected`), token `ids` and the position `read`.
pub fn sequences_jsonl(sequences: &[SplitSequences]) -> Result<String> {
    let mut out = String::new();
    for q in sequences {
        for (role, seqs, read) in [
            ("prompt", &q.prompts, &q.prompt_pos),
            ("chosen", &q.chosen, &q.chosen_pos),
            ("rejected", &q.rejected, &q.rejected_pos),
        ] {
            for (pair, (ids, read)) in seqs.iter().zip(read).enumerate() {
                out.push_str(&serde_json::to_string(&json!({
                    "split": q.name, "pair": pair, "role": role, "ids": ids, "read": read,
                }))?);
                out.push('\n');
            }
        }
    }
    Ok(out)
}

/// What a full fine-tuning run of `rmflow lm` is not (printed and in `lm.json`).
pub const NOT_THE_PAPER_NOTE: &str = "full fine-tuning here uses single-token answers (β, optimizer and steps from [finetune]); it is not the paper's recipe and its results are not a reproduction of the paper's (the paper's IM-RM is at about 0.02 on paraphrased responses); the recipe is `rmflow lm-recipe`";

/// What the IM-RM's reference is on a masked encoder.
pub const MASKED_REFERENCE_NOTE: &str = "masked encoder: π_ref = softmax(E h_mask) through the tied word embeddings, a fixed reference rather than a language model's distribution (the checkpoint has no MLM head)";

/// `lm.json`: model, architecture, device, mode, answer tokens, sizes, times, full summaries.
pub fn lm_json(run: &RealModelRun) -> Value {
    let mut notes = Vec::new();
    if run.arch == Architecture::Bert {
        notes.push(MASKED_REFERENCE_NOTE);
    }
    if !run.full.is_empty() {
        notes.push(NOT_THE_PAPER_NOTE);
    }
    json!({
        "notes": notes,
        "rmflow_version": crate::io::layout::RMFLOW_VERSION,
        "model": run.model.display().to_string(),
        "architecture": run.arch,
        "device": run.device,
        "mode": run.mode,
        "seed": run.file.seed,
        "answer_tokens": run.answers,
        "prompt_format": run.prompt_format,
        "representation_alignment": run.alignment,
        "sequences_encoded": run.sequences_encoded,
        "tokens_encoded": run.tokens_encoded,
        "seconds": {
            "load": run.timing.load,
            "extract": run.timing.extract,
            "train_head_only": run.timing.train_head_only,
            "full_finetune": run.full.iter().map(|r| (r.kind.name(), r.seconds)).collect::<std::collections::BTreeMap<_, _>>(),
        },
        "full": run.full.iter().map(full_summary).collect::<Vec<_>>(),
    })
}
