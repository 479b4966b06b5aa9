//! The official pairs as the trainer's sequences: the prompt rendered as a user turn with the
//! generation prompt, the response (a vertex order joined by `<sep>`) with the template's eos.

use crate::lm::checkpoint::chat_template::ChatTemplate;
use crate::lm::recipe::{PairSplit, PreferenceProblem, ScoredSequence, Side};
use crate::lm::train::sequences::SequenceBuilder;
use crate::lm::LanguageModel;
use crate::problem::hamiltonian::{response, CyclePair};
use anyhow::{Context, Result};

/// The chat template of the model folder `dir` (the from-scratch model carries the official
/// default one).
pub fn template_of(dir: &std::path::Path) -> Result<ChatTemplate> {
    ChatTemplate::from_model_dir(dir)?.with_context(|| {
        format!(
            "{}: no chat_template in tokenizer_config.json (the ham-cycle model is written with the official default template)",
            dir.display()
        )
    })
}

/// The sequences (chosen, rejected) of pair `pair` counted over both splits (a test pair's
/// index is the training pairs' count plus its own): [`cycle_problem`]'s layout, by which
/// `pair_rewards.csv` reads a run's per-sequence rewards.
pub fn pair_sequences(pair: usize) -> (usize, usize) {
    (2 * pair, 2 * pair + 1)
}

/// The sequences of the pairs rendered by `template`: `train` then `test`, chosen then rejected
/// per pair ([`pair_sequences`]); splits `train` and `test`.
pub fn cycle_problem(
    lm: &LanguageModel,
    template: &ChatTemplate,
    train: &[CyclePair],
    test: &[CyclePair],
) -> Result<PreferenceProblem> {
    let builder = SequenceBuilder {
        lm,
        template: Some(template.clone()),
    };
    let mut sequences: Vec<ScoredSequence> = Vec::new();
    let mut splits = Vec::new();
    for (name, pairs, offset) in [("train", train, 0), ("test", test, train.len())] {
        let mut split = PairSplit {
            name: name.into(),
            chosen: vec![],
            rejected: vec![],
        };
        for (k, pair) in pairs.iter().enumerate() {
            let prompt = pair.graph.prompt();
            for (side, order) in [
                (Side::Chosen, &pair.chosen),
                (Side::Rejected, &pair.rejected),
            ] {
                let s = builder.build(offset + k, &prompt, side, "", &response(order))?;
                let (c, r) = pair_sequences(offset + k);
                debug_assert_eq!(sequences.len(), if side == Side::Chosen { c } else { r });
                match side {
                    Side::Chosen => split.chosen.push(sequences.len()),
                    Side::Rejected => split.rejected.push(sequences.len()),
                }
                sequences.push(s);
            }
        }
        splits.push(split);
    }
    let prompts = |p: &[CyclePair]| p.iter().map(|x| x.graph.prompt()).collect();
    Ok(PreferenceProblem {
        prompts_train: prompts(train),
        prompts_test: prompts(test),
        sequences,
        splits,
        prompt_format: format!("chat template: {}", template.source),
        added_tokens: vec![],
        verification: vec![],
        eval_batches: vec![],
    })
}

/// The token ids of `prompt` rendered as the user turn with the generation prompt.
pub fn prompt_ids(lm: &LanguageModel, template: &ChatTemplate, prompt: &str) -> Result<Vec<u32>> {
    let (text, _) = template.prompt_and_response(prompt, "")?;
    let enc = lm
        .tokenizer
        .encode(text.as_str(), false)
        .map_err(|e| anyhow::anyhow!("tokenizing {text:?}: {e}"))?;
    Ok(enc.get_ids().to_vec())
}
