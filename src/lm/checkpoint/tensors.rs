//! The checkpoint's tensors as trainable candle variables: per-family tensor names, the Llama
//! read-out's aliases, and where the unembedding `U` lives (tied or not).

use crate::lm::checkpoint::hf_config::Architecture;
use crate::lm::checkpoint::hf_config::RawConfig;
use crate::lm::nets::gpt2::Gpt2Config;
use crate::lm::nets::gpt_neox::GptNeoxConfig;
use anyhow::Result;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_transformers::models::bert::Config as BertConfig;
use candle_transformers::models::llama::LlamaConfig;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Name under which the Llama read-out (`[I_D; 0]`, not a parameter) replaces `lm_head.weight`.
pub(crate) const LLAMA_READOUT: &str = "lm_head.weight";

/// Name under which the true Llama `lm_head.weight` is requested as the IM-RM unembedding.
pub(crate) const LLAMA_UNEMBEDDING_ALIAS: &str = "rmflow.unembedding";

/// Tensors of the checkpoint's safetensors files as candle variables, created on first request
/// (shape-checked against the config) and shared by every request of the same name (tied weights).
pub(crate) struct CheckpointVars {
    pub(crate) files: MmapedSafetensors,
    pub(crate) names: std::collections::HashSet<String>,
    pub(crate) source: String,
    /// Requested name → constant tensor (not a parameter).
    pub(crate) constants: HashMap<String, Tensor>,
    /// Requested name → name in the file.
    pub(crate) aliases: HashMap<String, String>,
    pub(crate) vars: Arc<Mutex<BTreeMap<String, Var>>>,
    /// Tokens were added: vocabulary matrices are resized on load.
    pub(crate) resize: Option<super::vocabulary::Resize>,
}

impl CheckpointVars {
    /// The stored name of `name`: as is, or under a wrapper prefix (`bert.`, `transformer.`, `model.`).
    pub(crate) fn stored_name(&self, name: &str) -> Option<String> {
        let name = self.aliases.get(name).map(String::as_str).unwrap_or(name);
        ["", "bert.", "transformer.", "model.", "gpt_neox."]
            .iter()
            .map(|p| format!("{p}{name}"))
            .find(|n| self.names.contains(n))
    }
}

impl SimpleBackend for CheckpointVars {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Some(t) = self.constants.get(name) {
            return Ok(t.clone());
        }
        let mut vars = self.vars.lock().expect("variable map poisoned");
        if let Some(v) = vars.get(name) {
            return Ok(v.as_tensor().clone());
        }
        let stored = self.stored_name(name).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{}: no tensor `{name}` (the architecture in config.json needs it)",
                self.source
            ))
        })?;
        let mut t = self.files.load(&stored, dev)?;
        if let Some(r) = self.resize {
            if super::vocabulary::is_vocabulary_matrix(&stored)
                && t.dims().first() == Some(&r.from)
                && s.dims().first() == Some(&r.to)
            {
                t = super::vocabulary::resize_rows(&t, r, &stored)?;
            }
        }
        if t.shape() != &s {
            candle_core::bail!(
                "{}: tensor `{stored}` has shape {:?} but config.json implies {:?}",
                self.source,
                t.dims(),
                s.dims()
            );
        }
        let v = Var::from_tensor(&t.to_dtype(dtype)?)?;
        vars.insert(name.to_string(), v.clone());
        Ok(v.as_tensor().clone())
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let stored = self
            .stored_name(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: no `{name}`", self.source)))?;
        self.files.load(&stored, dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.constants.contains_key(name) || self.stored_name(name).is_some()
    }
}

/// Where the IM-RM unembedding `U` [V, D] is in the checkpoint.
pub(crate) struct UnembeddingLayout {
    pub(crate) dim: usize,
    pub(crate) vocab_size: usize,
    /// The tensor read as `U`.
    pub(crate) name: &'static str,
    /// The separate `lm_head` tensor of an untied model (excluded from the body's parameters).
    pub(crate) untied: Option<String>,
}

impl UnembeddingLayout {
    /// For Llama, also registers the identity read-out that makes candle's reference forward
    /// return hidden states, and aliases an untied `lm_head`.
    pub(crate) fn of(
        arch: Architecture,
        config: &RawConfig,
        backend: &mut CheckpointVars,
        device: &Device,
    ) -> Result<UnembeddingLayout> {
        let layout = |dim, vocab_size, name, untied: Option<&str>| UnembeddingLayout {
            dim,
            vocab_size,
            name,
            untied: untied.map(String::from),
        };
        Ok(match arch {
            Architecture::Bert => {
                let c: BertConfig = config.parse()?;
                layout(
                    c.hidden_size,
                    c.vocab_size,
                    "embeddings.word_embeddings.weight",
                    None,
                )
            }
            Architecture::Llama => {
                let c: LlamaConfig = config.parse()?;
                let (d, v) = (c.hidden_size, c.vocab_size);
                // The reference forward's hidden-state read-out (`[I_D; 0]` as lm_head) needs
                // V ≥ D; the differentiable forward does not (checked in `build_network`).
                if v >= d {
                    let readout =
                        Tensor::eye(d, DType::F32, device)?.pad_with_zeros(0, 0, v - d)?;
                    backend.constants.insert(LLAMA_READOUT.into(), readout);
                }
                if c.tie_word_embeddings == Some(true) {
                    layout(d, v, "model.embed_tokens.weight", None)
                } else {
                    backend
                        .aliases
                        .insert(LLAMA_UNEMBEDDING_ALIAS.into(), "lm_head.weight".into());
                    layout(d, v, LLAMA_UNEMBEDDING_ALIAS, Some(LLAMA_UNEMBEDDING_ALIAS))
                }
            }
            Architecture::Qwen2 => {
                let c: LlamaConfig = config.parse()?;
                if c.tie_word_embeddings == Some(true) {
                    layout(
                        c.hidden_size,
                        c.vocab_size,
                        "model.embed_tokens.weight",
                        None,
                    )
                } else {
                    layout(
                        c.hidden_size,
                        c.vocab_size,
                        "lm_head.weight",
                        Some("lm_head.weight"),
                    )
                }
            }
            Architecture::Gpt2 => {
                let c: Gpt2Config = config.parse()?;
                layout(c.n_embd, c.vocab_size, "wte.weight", None)
            }
            Architecture::GptNeox => {
                let c: GptNeoxConfig = config.parse()?;
                if c.tie_word_embeddings {
                    layout(c.hidden_size, c.vocab_size, "embed_in.weight", None)
                } else {
                    layout(
                        c.hidden_size,
                        c.vocab_size,
                        "embed_out.weight",
                        Some("embed_out.weight"),
                    )
                }
            }
        })
    }
}
