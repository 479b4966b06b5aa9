//! Tokens of prompts and answers: a word's single token id, a prompt's ids and the position
//! the answer is read at, the sequence with the answer in place.

use crate::lm::checkpoint::hf_config::Architecture;
use crate::lm::model::language_model::LanguageModel;
use anyhow::{bail, Context, Result};
use std::path::Path;
use tokenizers::Tokenizer;

impl LanguageModel {
    /// The single token id of `word` (after a space where `leading_space`, as the causal
    /// families' BPE vocabularies write a word inside a sentence), or an error naming the word.
    pub fn answer_token(&self, word: &str, leading_space: bool) -> Result<u32> {
        let text = if leading_space {
            format!(" {word}")
        } else {
            word.to_string()
        };
        let enc = self
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| self.tokenizer_error(&text, e))?;
        match enc.get_ids() {
            [id] if Some(*id) == self.unknown_token() => bail!(
                "answer word {word:?} is not in the vocabulary of {}: it encodes to the unknown token {:?} (id {id}), which every such word shares",
                self.dir.join("tokenizer.json").display(),
                enc.get_tokens()[0]
            ),
            [id] => Ok(*id),
            ids => bail!(
                "answer word {word:?} is not a single token of {} (it splits into {:?})",
                self.dir.join("tokenizer.json").display(),
                enc.get_tokens().iter().zip(ids).collect::<Vec<_>>()
            ),
        }
    }

    /// The tokenizer's failure on `text` (a word-level vocabulary without its unknown token, say):
    /// an input error naming the model folder's `tokenizer.json`.
    pub(crate) fn tokenizer_error(&self, text: &str, e: impl std::fmt::Display) -> anyhow::Error {
        crate::error::InputError(format!(
            "{}: cannot tokenize {text:?}: {e}",
            self.dir.join("tokenizer.json").display()
        ))
        .into()
    }

    /// The id of the tokenizer's unknown token (WordPiece `[UNK]`, a BPE or word-level `unk`),
    /// if it has one.
    pub fn unknown_token(&self) -> Option<u32> {
        use tokenizers::models::ModelWrapper;
        let name = match self.tokenizer.get_model() {
            ModelWrapper::WordPiece(m) => Some(m.unk_token.clone()),
            ModelWrapper::BPE(m) => m.unk_token.clone(),
            ModelWrapper::WordLevel(m) => Some(m.unk_token.clone()),
            ModelWrapper::Unigram(_) => None,
        }?;
        self.tokenizer.token_to_id(&name)
    }

    /// The token ids of `prompt` (prompt and response prefix) ready for an answer, and the
    /// position where the answer's reward is read:
    /// BERT `[CLS] prompt [MASK] [SEP]` with the `[MASK]` index; causal `prompt` with its last index
    /// (the answer is appended after it, and read one position later).
    pub fn prompt_ids(&self, prompt: &str) -> Result<(Vec<u32>, usize)> {
        let text = match self.mask_id {
            Some(_) => format!("{prompt} [MASK]"),
            None => prompt.to_string(),
        };
        let e = self
            .tokenizer
            .encode(text.as_str(), true)
            .map_err(|e| self.tokenizer_error(&text, e))?;
        let ids = e.get_ids().to_vec();
        if ids.is_empty() {
            bail!("prompt {text:?} encodes to no tokens");
        }
        // A causal answer is one more token (`with_answer`).
        let answered = ids.len() + usize::from(self.mask_id.is_none());
        self.check_length(answered, &|| {
            let head: String = prompt.chars().take(60).collect();
            format!("the prompt {head:?}… with its answer")
        })?;
        let pos = match self.mask_id {
            Some(m) => ids
                .iter()
                .position(|&t| t == m)
                .with_context(|| format!("no [MASK] slot in {text:?}"))?,
            None => ids.len() - 1,
        };
        Ok((ids, pos))
    }

    /// The sequence `prompt + y` and the position of `y` in it.
    pub fn with_answer(&self, prompt: &[u32], pos: usize, y: u32) -> (Vec<u32>, usize) {
        match self.mask_id {
            Some(_) => {
                let mut s = prompt.to_vec();
                s[pos] = y;
                (s, pos)
            }
            None => {
                let mut s = prompt.to_vec();
                s.push(y);
                (s, pos + 1)
            }
        }
    }
}

/// BERT's `[MASK]` id (the slot the answer fills), from the tokenizer at `path`; `None` for the
/// causal families.
pub(crate) fn mask_token(
    arch: Architecture,
    tokenizer: &Tokenizer,
    path: &Path,
) -> Result<Option<u32>> {
    match arch {
        Architecture::Bert => tokenizer
            .token_to_id("[MASK]")
            .with_context(|| format!("{}: no [MASK] token", path.display()))
            .map(Some),
        _ => Ok(None),
    }
}
