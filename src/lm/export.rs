//! Output of full fine-tuning (`rmflow lm --mode full`): `full/<model>/` beside the head-only
//! run's simulate layout (experiments/README.md, "Real-model output").

use super::finetune::FullRun;
use crate::export::{write_pairs, AtomicDir};
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
        "unseen_row_drift": run.unseen_row_drift,
        "representation_shift": run.shift,
        "relative_parameter_change": run.relative_parameter_change,
        "unchanged_parameters": run.unchanged_parameters,
        "seconds": run.seconds,
    })
}

/// Accuracy table (strict / tie-aware) of fully fine-tuned models, one line per model.
pub fn full_table(runs: &[FullRun]) -> String {
    let mut out = String::new();
    if let Some(first) = runs.first() {
        out.push_str(&format!("{:<8}", "model"));
        for s in &first.splits {
            out.push_str(&format!("{:>20}", s.split));
        }
        out.push('\n');
    }
    for r in runs {
        out.push_str(&format!("{:<8}", r.kind.name()));
        for s in &r.splits {
            out.push_str(&format!(
                "{:>20}",
                format!("{:.3} / {:.3}", s.strict_accuracy, s.tie_aware_accuracy)
            ));
        }
        out.push('\n');
        if let Some(d) = r.unseen_row_drift {
            out.push_str(&format!("         unseen-row drift {d:.3e}"));
        }
        let unseen = r.shift.iter().find(|s| s.split == "unseen");
        if let Some(s) = unseen {
            out.push_str(&format!(
                "  representation shift on unseen (prompt / response) {:.3} / {:.3}\n",
                s.prompt, s.response
            ));
        }
    }
    out
}
