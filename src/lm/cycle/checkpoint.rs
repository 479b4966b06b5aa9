//! The model of the experiment as a Hugging Face folder: a Llama (`LlamaForCausalLM`, tied
//! embeddings) with a word-level vocabulary, and a `tokenizer_config.json` carrying the official
//! default chat template (`<|user|>{prompt}{eos}<|assistant|>{response}{eos}`, what the official
//! `update_tokenizer` gives Pythia), so the recipe renders prompts exactly as it does for any
//! template-less checkpoint, with no vocabulary resizing.
//!
//! The vocabulary: the template's `<|padding|>`, `<|endoftext|>`, `<|user|>`, `<|assistant|>`
//! (special tokens); `<sep>` and `<edge_sep>` (added as plain tokens, as the official
//! `add_tokens` does); the prompt's words `Vertices`, `Edges`, `:`; `[UNK]`; and the vertex ids
//! `0 … n−1` as whole words.

use super::config::CycleFile;
use crate::lm::checkpoint::tiny::{random_weights, tiny_config, TinySpec};
use crate::lm::recipe::template::{
    ASSISTANT_TOKEN, DEFAULT_EOS_TOKEN, DEFAULT_PADDING_TOKEN, OFFICIAL_TEMPLATE, USER_TOKEN,
};
use crate::lm::Architecture;
use crate::problem::hamiltonian::{EDGE_SEP, SEP};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::Path;

const UNK: &str = "[UNK]";
const WORDS: [&str; 3] = ["Vertices", "Edges", ":"];

/// The vocabulary and the ids the decoder and the enumeration use.
#[derive(Debug, Clone)]
pub struct CycleTokens {
    /// Token strings by id.
    pub vocab: Vec<String>,
    /// Whether each id is a special token (skipped when decoding, as `skip_special_tokens`).
    pub special: Vec<bool>,
    pub sep: u32,
    pub eos: u32,
    /// `vertex[v]`: the id of vertex `v`'s word.
    pub vertex: Vec<u32>,
}

impl CycleTokens {
    /// The vocabulary of the `vertices`-vertex task, in id order.
    pub fn new(vertices: usize) -> CycleTokens {
        let specials = [
            DEFAULT_PADDING_TOKEN,
            DEFAULT_EOS_TOKEN,
            USER_TOKEN,
            ASSISTANT_TOKEN,
        ];
        let mut vocab: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
        let mut special = vec![true; specials.len()];
        for t in [SEP, EDGE_SEP, UNK].iter().chain(WORDS.iter()) {
            vocab.push(t.to_string());
            special.push(false);
        }
        let first = vocab.len() as u32;
        vocab.extend((0..vertices).map(|v| v.to_string()));
        special.resize(vocab.len(), false);
        let id = |t: &str| {
            vocab
                .iter()
                .position(|w| w == t)
                .expect("in the vocabulary") as u32
        };
        let (sep, eos) = (id(SEP), id(DEFAULT_EOS_TOKEN));
        CycleTokens {
            vocab,
            special,
            sep,
            eos,
            vertex: (0..vertices as u32).map(|v| first + v).collect(),
        }
    }

    /// The token ids of `order` as a response: `v₁ <sep> v₂ … <sep> vₙ <eos>`.
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

    /// The text of generated ids, special tokens skipped, pieces joined as written.
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .filter(|&&i| !self.special.get(i as usize).copied().unwrap_or(true))
            .map(|&i| self.vocab[i as usize].as_str())
            .collect()
    }

    /// `tokenizer.json`: word level, no normaliser, the whitespace pre-tokenizer (`\w+` and
    /// runs of punctuation; the added tokens are split off first).
    fn tokenizer_json(&self) -> serde_json::Value {
        let added: Vec<_> = self
            .vocab
            .iter()
            .enumerate()
            .filter(|(i, t)| self.special[*i] || *t == SEP || *t == EDGE_SEP)
            .map(|(i, t)| {
                json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": self.special[i]})
            })
            .collect();
        let vocab: serde_json::Map<String, serde_json::Value> = self
            .vocab
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), json!(i)))
            .collect();
        json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": UNK}
        })
    }
}

/// The longest sequence of the task on `n` vertices: the rendered prompt (template tokens,
/// `Vertices : ` and `n` vertices, `Edges : ` and at most every pair as an edge) and a response
/// of `n` vertices plus `extra` tokens.
pub fn max_sequence_len(n: usize, extra: usize) -> usize {
    let prompt = 3 + 2 + 2 * n + 2 + 4 * n * (n - 1) / 2;
    prompt + 2 * n + extra
}

/// Writes the untrained model of `file` into `dir` (created): config.json, model.safetensors,
/// tokenizer.json, tokenizer_config.json.
pub fn write_initial_checkpoint(dir: &Path, file: &CycleFile) -> Result<CycleTokens> {
    let tokens = CycleTokens::new(file.data.vertices);
    let m = &file.model;
    let spec = TinySpec {
        arch: Architecture::Llama,
        dim: m.dim,
        layers: m.layers,
        heads: m.heads,
        kv_heads: m.heads,
        tied: true,
        seed: file.seed,
    };
    let v = tokens.vocab.len();
    let mut config = tiny_config(&spec, v);
    let positions = max_sequence_len(file.data.vertices, file.eval.extra_new_tokens);
    config["max_position_embeddings"] = json!(positions);
    config["eos_token_id"] = json!(tokens.eos);
    config["pad_token_id"] = json!(0);
    let tensors = random_weights(&spec, &config, v)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    let write = |name: &str, value: &serde_json::Value| -> Result<()> {
        std::fs::write(dir.join(name), serde_json::to_string_pretty(value)?)
            .with_context(|| format!("cannot write {}", dir.join(name).display()))
    };
    write("config.json", &config)?;
    write("tokenizer.json", &tokens.tokenizer_json())?;
    write(
        "tokenizer_config.json",
        &json!({
            "chat_template": OFFICIAL_TEMPLATE,
            "eos_token": DEFAULT_EOS_TOKEN,
            "pad_token": DEFAULT_PADDING_TOKEN,
            "bos_token": null,
            "unk_token": UNK,
            "model_max_length": positions
        }),
    )?;
    Ok(tokens)
}

/// Checks that the tokenizer of a loaded checkpoint encodes `order`'s response text to
/// [`CycleTokens::response_ids`] (the enumeration builds ids directly).
pub fn check_response_encoding(
    tokenizer: &tokenizers::Tokenizer,
    tokens: &CycleTokens,
    order: &[usize],
) -> Result<()> {
    let text = format!(
        "{}{DEFAULT_EOS_TOKEN}",
        crate::problem::hamiltonian::response(order)
    );
    let enc = tokenizer
        .encode(text.as_str(), false)
        .map_err(|e| anyhow::anyhow!("tokenizing {text:?}: {e}"))?;
    if enc.get_ids() != tokens.response_ids(order).as_slice() {
        bail!(
            "the checkpoint's tokenizer encodes {text:?} to {:?}, not to the task's ids {:?}",
            enc.get_ids(),
            tokens.response_ids(order)
        );
    }
    Ok(())
}
