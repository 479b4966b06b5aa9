//! What the trainer trains on: tokenized sequences (prompt + response, their response span),
//! the preference pairs of every split over them, and the builder that tokenizes texts as the
//! official code does (each text on its own, through the chat template where there is one).

use crate::lm::checkpoint::chat_template::{ChatTemplate, Message};
use crate::lm::data::preference::Turns;
use crate::lm::model::language_model::LanguageModel;
use anyhow::{bail, Context, Result};
use serde::Serialize;

/// Which side of a pair a response stands on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Chosen,
    Rejected,
}

/// One scored sequence `prompt + response`.
#[derive(Debug, Clone, Serialize)]
pub struct ScoredSequence {
    pub ids: Vec<u32>,
    /// Index of the first response token in `ids`.
    pub response_start: usize,
    /// One past the last scored response token (BERT: before `[SEP]`).
    pub response_end: usize,
    /// Token range of the answer word in `ids`, where prefix and word tokenize on their own
    /// boundaries (for the per-part reward contributions).
    pub word_span: Option<(usize, usize)>,
    pub prompt: usize,
    pub side: Side,
    pub prefix: String,
    pub word: String,
    /// The response text as tokenized (chat-template suffix included).
    pub response_text: String,
    /// The response's tokens as strings (the tokenizer's pieces).
    pub response_tokens: Vec<String>,
}

/// Pairs of sequences evaluated together.
#[derive(Debug, Clone, Serialize)]
pub struct PairSplit {
    pub name: String,
    pub chosen: Vec<usize>,
    pub rejected: Vec<usize>,
}

/// One batch of the official evaluator: the sequences it scores and those padded beside them
/// (which decide the flush's last-token drop, [`super::flush`]).
#[derive(Debug, Clone, Serialize)]
pub struct EvalBatch {
    pub scored: Vec<usize>,
    pub beside: Vec<usize>,
}

/// Every sequence of a run and the splits over them (`train` first: the training pairs).
#[derive(Debug, Clone, Serialize)]
pub struct PreferenceProblem {
    pub prompts_train: Vec<String>,
    pub prompts_test: Vec<String>,
    pub sequences: Vec<ScoredSequence>,
    pub splits: Vec<PairSplit>,
    /// Where the chat template came from, or why none was used.
    pub prompt_format: String,
    /// Tokens the default template added to the tokenizer, with their ids.
    pub added_tokens: Vec<(String, u32)>,
    /// The EX-GRM's input for each of `sequences` (same index): the official verification
    /// request as a user turn with the generation prompt, scored at its last token (causal LMs
    /// only; empty for a masked encoder).
    #[serde(skip)]
    pub verification: Vec<ScoredSequence>,
    /// How the official evaluator batches the sequences (empty where the experiment does not
    /// describe it): only the flush's drop reads it.
    pub eval_batches: Vec<EvalBatch>,
}

impl PreferenceProblem {
    /// The sequences `reward` reads: the verification requests (EX-GRM) or the responses.
    pub fn scored_sequences(&self, reward: super::reward::Reward) -> Result<&[ScoredSequence]> {
        if reward != super::reward::Reward::Exgrm {
            return Ok(&self.sequences);
        }
        if self.verification.len() != self.sequences.len() {
            bail!(
                "the EX-GRM needs a causal language model (no verification sequences were built)"
            );
        }
        Ok(&self.verification)
    }
}

/// Tokenizes prompts and responses as the official code does (each text on its own, no special
/// tokens added), with the chat template where there is one; masked encoders get
/// `[CLS] prompt response [SEP]`.
pub(crate) struct SequenceBuilder<'a> {
    pub(crate) lm: &'a LanguageModel,
    pub(crate) template: Option<ChatTemplate>,
}

impl SequenceBuilder<'_> {
    pub(crate) fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode_with_pieces(text)?.0)
    }

    pub(crate) fn encode_with_pieces(&self, text: &str) -> Result<(Vec<u32>, Vec<String>)> {
        let e = self
            .lm
            .tokenizer
            .encode(text, false)
            .map_err(|e| self.lm.tokenizer_error(text, e))?;
        Ok((e.get_ids().to_vec(), e.get_tokens().to_vec()))
    }

    /// The sequence of the persona response `prefix + word` to `prompt`, with the word's token
    /// span where prefix and word tokenize on their own boundaries.
    pub(crate) fn build(
        &self,
        prompt_index: usize,
        prompt: &str,
        side: Side,
        prefix: &str,
        word: &str,
    ) -> Result<ScoredSequence> {
        let answer = format!("{prefix}{word}");
        let (prompt_text, response_text) = match &self.template {
            Some(t) => t.prompt_and_response(prompt, &answer)?,
            None => (prompt.to_string(), answer.clone()),
        };
        let mut s = self.assemble(prompt_index, side, (&prompt_text, response_text), &answer)?;
        // The word's tokens: where `prefix` and `prefix + word` tokenize on their own boundaries
        // into leading parts of the response's tokens.
        let (prefix_ids, answer_ids) = (self.encode(prefix)?, self.encode(&answer)?);
        let response_ids = &s.ids[s.response_start..s.response_end];
        let word_span = (answer_ids.starts_with(&prefix_ids)
            && response_ids.starts_with(&answer_ids)
            && prefix_ids.len() < answer_ids.len())
        .then_some((prefix_ids.len(), answer_ids.len()));
        s.word_span = word_span.map(|(a, b)| (s.response_start + a, s.response_start + b));
        s.prefix = prefix.to_string();
        s.word = word.to_string();
        Ok(s)
    }

    /// The sequence of a preference pair's response (TRL's shapes, [`Turns`]): a standard pair's
    /// texts as the persona's (the prompt a user turn, the response an assistant turn), a
    /// conversational pair's messages rendered whole; without a chat template, a standard pair's
    /// prompt and response concatenated (a conversation needs one).
    pub(crate) fn build_turns(
        &self,
        prompt_index: usize,
        prompt: &Turns,
        response: &Turns,
        side: Side,
    ) -> Result<ScoredSequence> {
        let texts = match (&self.template, prompt, response) {
            (Some(t), Turns::Text(p), Turns::Text(r)) => t.prompt_and_response(p, r)?,
            (None, Turns::Text(p), Turns::Text(r)) => (p.clone(), r.clone()),
            (Some(t), Turns::Messages(p), Turns::Messages(r)) => {
                t.split_conversation(&borrowed(p), &borrowed(r))?
            }
            (None, Turns::Messages(_), _) => {
                return Err(crate::error::InputError(format!(
                    "prompt {prompt_index}: a conversational pair is rendered through a chat template, and {} has none in use (chat_template = false, or a masked encoder)",
                    self.lm.dir.display()
                ))
                .into())
            }
            _ => bail!("prompt {prompt_index}: the prompt and the response are of different shapes"),
        };
        let (prompt_text, response_text) = texts;
        let answer = response_text.clone();
        self.assemble(prompt_index, side, (&prompt_text, response_text), &answer)
    }

    /// Tokenizes `prompt_text` and `response_text` on their own and joins them (masked
    /// encoders: `[CLS] prompt response [SEP]`); `answer` names the response in errors.
    fn assemble(
        &self,
        prompt_index: usize,
        side: Side,
        (prompt_text, response_text): (&str, String),
        answer: &str,
    ) -> Result<ScoredSequence> {
        let prompt_ids = self.encode(prompt_text)?;
        let (response_ids, response_tokens) = self.encode_with_pieces(&response_text)?;
        if response_ids.is_empty() {
            let through = match &self.template {
                Some(t) => format!("through the chat template of {}", t.source),
                None => "with no chat template".to_string(),
            };
            return Err(crate::error::InputError(format!(
                "response {response_text:?} (answer {answer:?} {through}) encodes to no tokens with {}",
                self.lm.dir.join("tokenizer.json").display()
            ))
            .into());
        }
        if let Some(unk) = self.lm.unknown_token().filter(|u| response_ids.contains(u)) {
            bail!(
                "response {answer:?} contains a token outside the vocabulary of {} (it encodes to the unknown token, id {unk}, which every such word shares): choose words the tokenizer knows",
                self.lm.dir.join("tokenizer.json").display()
            );
        }
        let (ids, start, end) = match self.lm.mask_id {
            Some(_) => {
                let cls = self.special("[CLS]")?;
                let sep = self.special("[SEP]")?;
                let mut ids = vec![cls];
                ids.extend(&prompt_ids);
                let start = ids.len();
                ids.extend(&response_ids);
                let end = ids.len();
                ids.push(sep);
                (ids, start, end)
            }
            None => {
                if prompt_ids.is_empty() {
                    bail!("prompt {prompt_text:?} encodes to no tokens: the first response token has no position to be predicted from");
                }
                let mut ids = prompt_ids;
                let start = ids.len();
                ids.extend(&response_ids);
                let end = ids.len();
                (ids, start, end)
            }
        };
        self.lm.check_length(ids.len(), &|| {
            format!("the sequence of prompt {prompt_index} with response {answer:?}")
        })?;
        Ok(ScoredSequence {
            ids,
            response_start: start,
            response_end: end,
            word_span: None,
            prompt: prompt_index,
            side,
            prefix: String::new(),
            word: String::new(),
            response_text,
            response_tokens,
        })
    }

    /// The EX-GRM's input for the response `prefix + word` to `prompt` (the official
    /// `convert_preference_batch_to_gen_rm_format`): the verification request rendered as a user
    /// turn with the generation prompt, tokenized on its own; the reward is read at its last
    /// token, so the "response" is empty (`response_start = response_end = len`).
    pub(crate) fn verification(
        &self,
        prompt_index: usize,
        prompt: &str,
        side: Side,
        prefix: &str,
        word: &str,
    ) -> Result<ScoredSequence> {
        let request = super::reward::VERIFICATION_FORMAT
            .replace("{question}", prompt)
            .replace("{answer}", &format!("{prefix}{word}"));
        let text = match &self.template {
            Some(t) => t.render(
                &[Message {
                    role: "user",
                    content: &request,
                }],
                true,
            )?,
            None => request,
        };
        let ids = self.encode(&text)?;
        if ids.is_empty() {
            bail!("verification request {text:?} encodes to no tokens");
        }
        self.lm.check_length(ids.len(), &|| {
            format!("the EX-GRM verification request of prompt {prompt_index}")
        })?;
        Ok(ScoredSequence {
            response_start: ids.len(),
            response_end: ids.len(),
            ids,
            word_span: None,
            prompt: prompt_index,
            side,
            prefix: prefix.to_string(),
            word: word.to_string(),
            response_text: String::new(),
            response_tokens: vec![],
        })
    }

    pub(crate) fn special(&self, token: &str) -> Result<u32> {
        self.lm.tokenizer.token_to_id(token).with_context(|| {
            format!(
                "{}: no {token} token",
                self.lm.dir.join("tokenizer.json").display()
            )
        })
    }
}

/// Owned messages as the chat template reads them.
fn borrowed(messages: &[crate::lm::data::preference::Message]) -> Vec<Message<'_>> {
    messages
        .iter()
        .map(|m| Message {
            role: &m.role,
            content: &m.content,
        })
        .collect()
}
