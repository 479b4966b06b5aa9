//! Anthropic's persona files (`persona/<trait>.jsonl` of anthropics/evals, CC-BY-4.0): the
//! prompts of the records whose answer matching the behaviour is "Yes", as the official
//! datamodule filters them.

use anyhow::{bail, Result};
use std::path::Path;

/// The `question` of every record of a persona JSONL file whose `answer_matching_behavior` is
/// "yes" (trimmed, any case: the official `answer_matching_behavior_to_use = "Yes"` filter), in
/// file order. A malformed line is an error naming the file and the line. A record whose
/// question repeats an earlier one is dropped with a warning naming both lines (kept, it could put
/// one prompt in both the train and the test split).
pub fn read_persona_jsonl(path: &Path) -> Result<Vec<String>> {
    let text = crate::io::input::read_text(path, "persona file")?;
    let mut out = Vec::new();
    let mut first_line: std::collections::HashMap<String, usize> = Default::default();
    let mut repeats: Vec<String> = Vec::new();
    for (k, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), k + 1);
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{}: not a JSON object: {e}", at()))?;
        let field = |name: &str| -> Result<&str> {
            v.get(name)
                .and_then(|x| x.as_str())
                .ok_or_else(|| anyhow::anyhow!("{}: no string field `{name}`", at()))
        };
        let (question, answer) = (field("question")?, field("answer_matching_behavior")?);
        field("statement")?;
        if answer.trim().eq_ignore_ascii_case("yes") {
            match first_line.get(question) {
                Some(&first) => repeats.push(format!("line {} repeats line {first}", k + 1)),
                None => {
                    first_line.insert(question.to_string(), k + 1);
                    out.push(question.to_string());
                }
            }
        }
    }
    if !repeats.is_empty() {
        eprintln!(
            "warning: persona file {}: {} repeated record(s) dropped, each prompt is used once ({})",
            path.display(),
            repeats.len(),
            repeats.join(", ")
        );
    }
    if out.is_empty() {
        bail!(
            "persona file {} has no record with answer_matching_behavior \" Yes\"",
            path.display()
        );
    }
    Ok(out)
}
