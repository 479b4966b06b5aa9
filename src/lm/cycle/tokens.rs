//! How the experiment writes a vertex order as token ids (the enumeration scores those ids
//! directly) and reads generated ids back as text (the official check reads the text): the
//! from-scratch model's word-level vocabulary, or a pretrained checkpoint's tokenizer with
//! `<sep>` and `<edge_sep>` added.

use super::checkpoint::word_vocabulary;
use crate::lm::checkpoint::chat_template::ChatTemplate;
use crate::lm::train::sequences::ScoredSequence;
use crate::problem::hamiltonian::SEP;
use anyhow::{bail, Context, Result};
use serde_json::json;

/// The ids the decoder and the enumeration use, and how ids become text.
#[derive(Debug, Clone)]
pub struct CycleTokens {
    pub sep: u32,
    /// The token that ends a response and stops generation (the template's eos).
    pub eos: u32,
    /// `vertex[v]`: the id of vertex `v`'s one token.
    pub vertex: Vec<u32>,
    text: Text,
}

/// How generated ids become text, special tokens skipped (`skip_special_tokens = True`).
#[derive(Debug, Clone)]
enum Text {
    /// Token strings by id, and whether each id is special: the pieces joined as written.
    Words {
        vocab: Vec<String>,
        special: Vec<bool>,
    },
    /// The checkpoint's tokenizer and its decoder.
    Tokenizer(Box<tokenizers::Tokenizer>),
}

impl CycleTokens {
    /// The from-scratch model's vocabulary on `vertices` vertices
    /// ([`super::checkpoint::write_initial_checkpoint`] writes it).
    pub fn new(vertices: usize) -> CycleTokens {
        let (vocab, special) = word_vocabulary(vertices);
        Self::words(vocab, special, vertices).expect("the word vocabulary has every token")
    }

    /// The ids of `vocab` (`special[i]`: id `i` is special) for `vertices` vertices.
    pub(crate) fn words(
        vocab: Vec<String>,
        special: Vec<bool>,
        vertices: usize,
    ) -> Result<CycleTokens> {
        let id = |t: &str| -> Result<u32> {
            let i = vocab.iter().position(|w| w == t);
            Ok(i.with_context(|| format!("{t:?} is not in the vocabulary"))? as u32)
        };
        let eos = crate::lm::recipe::template::DEFAULT_EOS_TOKEN;
        Ok(CycleTokens {
            sep: id(SEP)?,
            eos: id(eos)?,
            vertex: (0..vertices)
                .map(|v| id(&v.to_string()))
                .collect::<Result<_>>()?,
            text: Text::Words { vocab, special },
        })
    }

    /// The ids of a pretrained checkpoint's `tokenizer` (with `<sep>` added) whose prompts are
    /// rendered by `template`: each vertex id must be one token, as the enumeration writes it.
    pub fn of_tokenizer(
        tokenizer: &tokenizers::Tokenizer,
        template: &ChatTemplate,
        vertices: usize,
    ) -> Result<CycleTokens> {
        let id = |t: &str| {
            tokenizer
                .token_to_id(t)
                .with_context(|| format!("the tokenizer has no token {t:?}"))
        };
        let vertex = (0..vertices)
            .map(|v| {
                let text = v.to_string();
                let e = tokenizer
                    .encode(text.as_str(), false)
                    .map_err(|e| anyhow::anyhow!("tokenizing {text:?}: {e}"))?;
                match e.get_ids() {
                    [one] => Ok(*one),
                    ids => bail!(
                        "vertex {v} is {} tokens {ids:?}; the exact enumeration writes each vertex as one token",
                        ids.len()
                    ),
                }
            })
            .collect::<Result<_>>()?;
        Ok(CycleTokens {
            sep: id(SEP)?,
            eos: id(&template.eos_token)?,
            vertex,
            text: Text::Tokenizer(Box::new(tokenizer.clone())),
        })
    }

    /// The token ids of `order` as a generated response: `v₁ <sep> v₂ … <sep> vₙ <eos>` (what
    /// a template appends after the eos is never generated).
    pub fn response_ids(&self, order: &[usize]) -> Vec<u32> {
        let mut ids = Vec::with_capacity(2 * order.len());
        for (k, &v) in order.iter().enumerate() {
            if k > 0 {
                ids.push(self.sep);
            }
            ids.push(self.vertex[v]);
        }
        ids.push(self.eos);
        ids
    }

    /// The text of generated ids, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.text {
            Text::Words { vocab, special } => Ok(ids
                .iter()
                .filter(|&&i| !special.get(i as usize).copied().unwrap_or(true))
                .map(|&i| vocab[i as usize].as_str())
                .collect()),
            Text::Tokenizer(t) => t
                .decode(ids, true)
                .map_err(|e| anyhow::anyhow!("decoding {ids:?}: {e}")),
        }
    }

    /// Checks that the trainer's sequence of `order` (`seq`, tokenized from text through the
    /// template) opens its response with [`Self::response_ids`]: the enumeration scores exactly
    /// what the reward models are trained on.
    pub fn check(&self, seq: &ScoredSequence, order: &[usize]) -> Result<()> {
        let trained = &seq.ids[seq.response_start..seq.response_end];
        let written = self.response_ids(order);
        if !trained.starts_with(&written) {
            bail!(
                "the tokenizer gives the response {:?} the ids {trained:?}, which do not open with the enumeration's {written:?}",
                seq.response_text
            );
        }
        Ok(())
    }

    /// The ids, for `summary.json`: the whole vocabulary of the word-level model; the task's ids
    /// in a pretrained tokenizer.
    pub fn describe(&self) -> serde_json::Value {
        match &self.text {
            Text::Words { vocab, .. } => json!(vocab),
            Text::Tokenizer(t) => json!({
                "vocab_size": t.get_vocab_size(true),
                "sep": self.sep,
                "edge_sep": t.token_to_id(crate::problem::hamiltonian::EDGE_SEP),
                "eos": self.eos,
                "vertex": self.vertex,
            }),
        }
    }
}
