//! Tiny randomly initialised checkpoints (config.json, model.safetensors, tokenizer.json) of each
//! family, so the loading, extraction and fine-tuning paths run with no download (tests, smoke
//! runs). The weights are exactly the tensors the family's loader requests, drawn N(0, 0.02²)
//! (norm weights 1, biases 0) from a seeded ChaCha8 stream; the tokenizer is a lower-casing
//! word-level vocabulary of the given texts.

use crate::lm::checkpoint::hf_config::Architecture;
use crate::lm::nets;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;

/// Sizes of a tiny checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct TinySpec {
    pub arch: Architecture,
    pub dim: usize,
    pub layers: usize,
    pub heads: usize,
    /// Llama and Qwen2: key/value heads (grouped-query attention when < `heads`).
    pub kv_heads: usize,
    /// Llama and Qwen2: `lm_head` tied to `embed_tokens`.
    pub tied: bool,
    pub seed: u64,
}

/// Records every requested tensor, drawn on first request.
struct RandomWeights {
    rng: Mutex<ChaCha8Rng>,
    drawn: Mutex<BTreeMap<String, Tensor>>,
}

impl SimpleBackend for RandomWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut drawn = self.drawn.lock().expect("poisoned");
        if let Some(t) = drawn.get(name) {
            return Ok(t.clone());
        }
        let n = s.elem_count();
        let values: Vec<f32> = if s.rank() == 1 && name.ends_with("weight") {
            vec![1.0; n]
        } else if name.ends_with("bias") {
            vec![0.0; n]
        } else {
            let normal = Normal::new(0.0f32, 0.02).expect("valid normal");
            let mut rng = self.rng.lock().expect("poisoned");
            (0..n).map(|_| normal.sample(&mut *rng)).collect()
        };
        let t = Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?;
        drawn.insert(name.to_string(), t.clone());
        Ok(t)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("tiny checkpoint: no unchecked access to `{name}`")
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.drawn.lock().expect("poisoned").contains_key(name)
    }
}

/// Writes a tiny checkpoint of `spec.arch` into `dir` whose vocabulary holds every word of `texts`.
pub fn write_tiny_checkpoint(dir: &Path, spec: TinySpec, texts: &[String]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut specials = vec!["[PAD]", "[UNK]"];
    if spec.arch == Architecture::Bert {
        specials.extend(["[CLS]", "[SEP]", "[MASK]"]);
    } else {
        // The EX-GRM's verdicts, cased as it looks them up (the word-level vocabulary is
        // lower-cased): matched in the text before normalisation.
        specials.extend([
            crate::lm::train::reward::YES_TOKEN,
            crate::lm::train::reward::NO_TOKEN,
        ]);
    }
    let mut words = whitespace_words(texts);
    words.remove("[mask]");
    words.remove("mask");
    let mut vocab: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
    vocab.extend(
        words
            .into_iter()
            .filter(|w| !specials.contains(&w.as_str())),
    );
    // BERT needs the word pieces of "[MASK]" only as the special token itself.
    let v = vocab.len().max(spec.dim);
    while vocab.len() < v {
        vocab.push(format!("[unused{}]", vocab.len()));
    }
    let tokenizer = word_level_tokenizer(spec.arch, &vocab, &specials);
    let config = tiny_config(&spec, v);
    let tensors = random_weights(&spec, &config, v)?;
    let weights = dir.join("model.safetensors");
    // candle's error shows its I/O cause and also returns it as its source: one message, once.
    candle_core::safetensors::save(&tensors, &weights)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", weights.display()))?;
    for (name, value) in [("config.json", &config), ("tokenizer.json", &tokenizer)] {
        let path = dir.join(name);
        std::fs::write(&path, serde_json::to_string_pretty(value)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The lower-cased words of `texts`, split as the `Whitespace` pre-tokenizer splits: `\w+` and
/// runs of punctuation.
fn whitespace_words(texts: &[String]) -> BTreeSet<String> {
    let mut words = BTreeSet::new();
    for t in texts {
        let lower = t.to_lowercase();
        let mut cur = String::new();
        let mut kind = 0u8;
        for ch in lower.chars() {
            let k = if ch.is_whitespace() {
                0
            } else if ch.is_alphanumeric() || ch == '_' {
                1
            } else {
                2
            };
            if k != kind && !cur.is_empty() {
                words.insert(std::mem::take(&mut cur));
            }
            if k != 0 {
                cur.push(ch);
            }
            kind = k;
        }
        if !cur.is_empty() {
            words.insert(cur);
        }
    }
    words
}

/// A word-level `tokenizer.json` over `vocab` (lower-casing, whitespace pre-tokenizer; BERT's
/// `[CLS] … [SEP]` template).
fn word_level_tokenizer(
    arch: Architecture,
    vocab: &[String],
    specials: &[&str],
) -> serde_json::Value {
    let id = |s: &str| vocab.iter().position(|w| w == s).expect("special token") as u32;
    let added: Vec<_> = specials
        .iter()
        .map(|s| json!({"id": id(s), "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let post = if arch == Architecture::Bert {
        json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [id("[CLS]")], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [id("[SEP]")], "tokens": ["[SEP]"]}
            }
        })
    } else {
        serde_json::Value::Null
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": post,
        "decoder": null,
        "model": {
            "type": "WordLevel",
            "vocab": vocab.iter().enumerate().map(|(i, w)| (w.clone(), i)).collect::<BTreeMap<_, _>>(),
            "unk_token": "[UNK]"
        }
    });
    tokenizer
}

/// `config.json` of a tiny checkpoint of `spec` with vocabulary size `v`.
pub(crate) fn tiny_config(spec: &TinySpec, v: usize) -> serde_json::Value {
    let (d, l, h) = (spec.dim, spec.layers, spec.heads);
    match spec.arch {
        Architecture::Bert => json!({
            "model_type": "bert", "vocab_size": v, "hidden_size": d, "num_hidden_layers": l,
            "num_attention_heads": h, "intermediate_size": 4 * d, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
            "max_position_embeddings": 128, "type_vocab_size": 2, "initializer_range": 0.02,
            "layer_norm_eps": 1e-12, "pad_token_id": 0, "position_embedding_type": "absolute",
            "use_cache": true, "classifier_dropout": null
        }),
        Architecture::Llama => json!({
            "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": v,
            "hidden_size": d, "intermediate_size": 3 * d, "num_hidden_layers": l,
            "num_attention_heads": h, "num_key_value_heads": spec.kv_heads,
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 128,
            "tie_word_embeddings": spec.tied, "bos_token_id": null, "eos_token_id": null
        }),
        Architecture::Gpt2 => json!({
            "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": v,
            "n_positions": 128, "n_embd": d, "n_layer": l, "n_head": h,
            "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"
        }),
        Architecture::Qwen2 => json!({
            "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": v,
            "hidden_size": d, "intermediate_size": 3 * d, "num_hidden_layers": l,
            "num_attention_heads": h, "num_key_value_heads": spec.kv_heads,
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 128,
            "tie_word_embeddings": spec.tied, "use_sliding_window": false,
            "hidden_act": "silu", "bos_token_id": null, "eos_token_id": null
        }),
        Architecture::GptNeox => json!({
            "model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], "vocab_size": v,
            "hidden_size": d, "intermediate_size": 4 * d, "num_hidden_layers": l,
            "num_attention_heads": h, "rotary_pct": 0.25, "rotary_emb_base": 10000.0,
            "layer_norm_eps": 1e-5, "use_parallel_residual": true, "hidden_act": "gelu",
            "max_position_embeddings": 128, "tie_word_embeddings": false,
            "bos_token_id": null, "eos_token_id": null
        }),
    }
}

/// Every tensor the family's loader asks for, drawn from `spec.seed` in the order it asks.
pub(crate) fn random_weights(
    spec: &TinySpec,
    config: &serde_json::Value,
    v: usize,
) -> Result<std::collections::HashMap<String, Tensor>> {
    let d = spec.dim;
    let backend = std::sync::Arc::new(RandomWeights {
        rng: Mutex::new(ChaCha8Rng::seed_from_u64(spec.seed)),
        drawn: Mutex::new(BTreeMap::new()),
    });
    struct Shared(std::sync::Arc<RandomWeights>);
    impl SimpleBackend for Shared {
        fn get(
            &self,
            s: Shape,
            n: &str,
            h: candle_nn::Init,
            t: DType,
            d: &Device,
        ) -> candle_core::Result<Tensor> {
            self.0.get(s, n, h, t, d)
        }
        fn get_unchecked(&self, n: &str, t: DType, d: &Device) -> candle_core::Result<Tensor> {
            self.0.get_unchecked(n, t, d)
        }
        fn contains_tensor(&self, n: &str) -> bool {
            self.0.contains_tensor(n)
        }
    }
    let vb = VarBuilder::from_backend(Box::new(Shared(backend.clone())), DType::F32, Device::Cpu);
    let parse = |c: &serde_json::Value| c.clone();
    match spec.arch {
        Architecture::Bert => {
            nets::Bert::load(vb, &serde_json::from_value(parse(config))?)?;
        }
        Architecture::Llama => {
            let c: candle_transformers::models::llama::LlamaConfig =
                serde_json::from_value(parse(config))?;
            nets::Llama::load(vb.clone(), &c.into_config(false), false)?;
            if !spec.tied {
                vb.get((v, d), "lm_head.weight")?;
            }
        }
        Architecture::Gpt2 => {
            nets::Gpt2::load(vb, &serde_json::from_value(parse(config))?)?;
        }
        Architecture::Qwen2 => {
            let c: candle_transformers::models::llama::LlamaConfig =
                serde_json::from_value(parse(config))?;
            nets::Llama::load(vb.clone(), &c.into_config(false), true)?;
            if !spec.tied {
                vb.get((v, d), "lm_head.weight")?;
            }
        }
        Architecture::GptNeox => {
            let c: nets::GptNeoxConfig = serde_json::from_value(parse(config))?;
            nets::GptNeox::load(vb.pp("gpt_neox"), &c)?;
            vb.get((v, d), "embed_out.weight")?;
        }
    }
    let tensors = backend.drawn.lock().expect("poisoned").clone();
    Ok(tensors.into_iter().collect())
}

/// The tiny checkpoints the tests and `rmflow lm-tiny` write, one per family and variant:
/// `bert`, `llama-gqa` (grouped-query attention), `llama-tied` (tied `lm_head`), `gpt2`,
/// `qwen2` (q/k/v biases, grouped-query attention, untied), `qwen2-tied`, `pythia` (GPT-NeoX:
/// parallel residual, rotary on a quarter of each head).
pub fn standard_specs() -> Vec<(&'static str, TinySpec)> {
    let base = TinySpec {
        arch: Architecture::Bert,
        dim: 32,
        layers: 2,
        heads: 4,
        kv_heads: 4,
        tied: false,
        seed: 11,
    };
    vec![
        ("bert", base),
        (
            "llama-gqa",
            TinySpec {
                arch: Architecture::Llama,
                kv_heads: 2,
                ..base
            },
        ),
        (
            "llama-tied",
            TinySpec {
                arch: Architecture::Llama,
                tied: true,
                ..base
            },
        ),
        (
            "gpt2",
            TinySpec {
                arch: Architecture::Gpt2,
                ..base
            },
        ),
        (
            "qwen2",
            TinySpec {
                arch: Architecture::Qwen2,
                kv_heads: 2,
                ..base
            },
        ),
        (
            "qwen2-tied",
            TinySpec {
                arch: Architecture::Qwen2,
                tied: true,
                ..base
            },
        ),
        (
            "pythia",
            TinySpec {
                arch: Architecture::GptNeox,
                ..base
            },
        ),
    ]
}

/// Fixed sentences for the tiny checkpoints' vocabularies and forward checks.
pub const PROBE_TEXTS: [&str; 6] = [
    "I enjoy helping people with their problems. Answer: yes",
    "Helping others makes me happy. Answer: no",
    "I try to be kind to strangers. Answer: yes",
    "I do not hold grudges. Answer: no",
    "I share my food with others. Answer: yes",
    "I like to insult people. Answer: no",
];

/// Final hidden states of `PROBE_TEXTS` (or `texts`) at their read positions, under both forwards
/// where the model has them, as JSON: the record `rmflow lm-forward` writes and
/// `scripts/reference_forward.py` compares with `transformers`.
pub fn forward_record(dir: &Path, device: &Device, texts: &[String]) -> Result<serde_json::Value> {
    use crate::lm::{Forward, LanguageModel};
    let start = std::time::Instant::now();
    let reference = LanguageModel::load(dir, device, Forward::CandleReference)?;
    let mut ids = Vec::new();
    let mut pos = Vec::new();
    for t in texts {
        let (i, p) = reference.prompt_ids(t)?;
        ids.push(i);
        pos.push(p);
    }
    let as_rows = |a: ndarray::Array2<f64>| -> Vec<Vec<f64>> {
        a.rows().into_iter().map(|r| r.to_vec()).collect()
    };
    let h_ref = reference.hidden_at(&ids, &pos, 8)?;
    let diff = LanguageModel::load(dir, device, Forward::Nets)?;
    let h_diff = diff.hidden_at(&ids, &pos, 8)?;
    Ok(serde_json::json!({
        "rmflow_version": env!("CARGO_PKG_VERSION"),
        "model": dir.display().to_string(),
        "device": format!("{device:?}"),
        "texts": texts,
        "token_ids": ids,
        "positions": pos,
        "hidden": { "reference": as_rows(h_ref), "differentiable": as_rows(h_diff) },
        "seconds": start.elapsed().as_secs_f64(),
    }))
}

/// The probe texts as owned strings (the vocabulary of every tiny checkpoint, and the inputs
/// of `lm-forward`).
pub fn probe_texts() -> Vec<String> {
    PROBE_TEXTS.iter().map(|t| t.to_string()).collect()
}

/// `lm-tiny`: every [`standard_specs`] checkpoint into `dir/NAME`, with `texts` in their
/// vocabularies, and `rmflow-convert.json` listing them (which also marks `dir` as rmflow's).
pub fn write_standard_set(dir: &crate::io::atomic::AtomicDir, texts: &[String]) -> Result<()> {
    for (name, spec) in standard_specs() {
        write_tiny_checkpoint(&dir.path(name)?, spec, texts)?;
    }
    let marker = dir.path("rmflow-convert.json")?;
    std::fs::write(
        &marker,
        serde_json::to_string_pretty(&json!({
            "rmflow_version": env!("CARGO_PKG_VERSION"),
            "tiny_checkpoints": standard_specs().iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        }))?,
    )
    .with_context(|| format!("cannot write {}", marker.display()))?;
    Ok(())
}
