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
use super::tokens::CycleTokens;
use crate::lm::checkpoint::tiny::{random_weights, tiny_config, TinySpec};
use crate::lm::recipe::template::{
    ASSISTANT_TOKEN, DEFAULT_EOS_TOKEN, DEFAULT_PADDING_TOKEN, OFFICIAL_TEMPLATE, USER_TOKEN,
};
use crate::lm::Architecture;
use crate::problem::hamiltonian::{EDGE_SEP, SEP};
use anyhow::{Context, Result};
use serde_json::json;
use std::path::Path;

const UNK: &str = "[UNK]";
const WORDS: [&str; 3] = ["Vertices", "Edges", ":"];

/// The from-scratch model's word-level vocabulary, in id order: the template's special tokens,
/// `<sep>`, `<edge_sep>`, `[UNK]`, the prompt's words and the vertex ids `0 … n−1`.
pub(crate) fn word_vocabulary(vertices: usize) -> (Vec<String>, Vec<bool>) {
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
    vocab.extend((0..vertices).map(|v| v.to_string()));
    special.resize(vocab.len(), false);
    (vocab, special)
}

/// The word-level `tokenizer.json` of `vocab` (`special[i]`: id `i` is a special token): no
/// normaliser, the whitespace pre-tokenizer (`\w+` and runs of punctuation; the added tokens
/// are split off first).
fn tokenizer_json(vocab: &[String], special: &[bool]) -> serde_json::Value {
    let added: Vec<_> = vocab
        .iter()
        .enumerate()
        .filter(|(i, t)| special[*i] || *t == SEP || *t == EDGE_SEP)
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": special[i]})
        })
        .collect();
    let ids: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": ids, "unk_token": UNK}
    })
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
    let (vocab, special) = word_vocabulary(file.data.vertices);
    let tokens = CycleTokens::words(vocab.clone(), special.clone(), file.data.vertices)?;
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
    let v = vocab.len();
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
    write("tokenizer.json", &tokenizer_json(&vocab, &special))?;
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
