//! A pretrained transformer as the reward models' backbone (MATH.md §6): loading a local Hugging
//! Face folder (config.json, *.safetensors, tokenizer.json) into trainable candle variables, and
//! the final hidden state `h` at a chosen position of each sequence.
//!
//! Families: BERT (masked: the answer fills a `[MASK]` slot), Llama, Qwen2, GPT-2 and GPT-NeoX
//! (causal: `π(y|x)` is read at the last prompt position, the EX-RM at the position of `y`).

use crate::lm::checkpoint::files::architecture;
use crate::lm::checkpoint::files::check_tokenizer_size;
use crate::lm::checkpoint::files::read_json;
use crate::lm::checkpoint::files::read_tokenizer;
use crate::lm::checkpoint::files::unique_tensor_names;
use crate::lm::checkpoint::files::ModelFiles;
use crate::lm::checkpoint::hf_config::normalise_config;
use crate::lm::checkpoint::hf_config::positions_of;
use crate::lm::checkpoint::hf_config::Architecture;
use crate::lm::checkpoint::hf_config::RawConfig;
use crate::lm::checkpoint::tensors::CheckpointVars;
use crate::lm::checkpoint::tensors::UnembeddingLayout;
use crate::lm::checkpoint::vocabulary::add_tokens;
use crate::lm::model::extract::to_array2;
use crate::lm::model::tokens::mask_token;
use crate::lm::nets;
use crate::lm::nets::bert::BertShape;
use crate::lm::nets::gpt2::Gpt2;
use crate::lm::nets::gpt2::Gpt2Config;
use crate::lm::nets::gpt_neox::GptNeox;
use crate::lm::nets::gpt_neox::GptNeoxConfig;
use anyhow::{Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use candle_transformers::models::llama::{Llama, LlamaConfig};
use ndarray::Array2;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokenizers::Tokenizer;

/// Which implementation runs the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// candle-transformers' own models (inference kernels, no backward), the second
    /// implementation [`Forward::Nets`] is checked against (`rmflow lm-forward`,
    /// `tests/lm_tiny.rs`). Only BERT and Llama have one; Qwen2, GPT-2 and GPT-NeoX load
    /// [`Forward::Nets`] under this request, which [`LanguageModel::forward`] reports.
    CandleReference,
    /// [`nets`]: rmflow's own networks, with a backward for training and inference-kernel paths
    /// (shared prompts, packed BERT) for extraction and scoring; every run uses these.
    Nets,
}

impl Architecture {
    /// Whether candle-transformers has this family's model ([`Forward::CandleReference`]).
    pub fn has_candle_reference(self) -> bool {
        matches!(self, Architecture::Bert | Architecture::Llama)
    }
}

pub(crate) enum Network {
    Bert(BertModel),
    /// Loaded with an identity read-out in place of `lm_head`, so its last-position output is `h`.
    Llama(Llama, candle_transformers::models::llama::Config),
    DiffBert(nets::Bert),
    /// Llama, or Qwen2 (q/k/v biases).
    DiffLlama(nets::Llama),
    Gpt2(Gpt2),
    GptNeox(GptNeox),
}

/// A loaded backbone: network, tokenizer and the unembedding `U(0)` of the IM-RM.
pub struct LanguageModel {
    pub arch: Architecture,
    pub(crate) network: Network,
    pub tokenizer: Tokenizer,
    pub device: Device,
    pub dir: PathBuf,
    /// Hidden size `D`.
    pub dim: usize,
    /// Vocabulary size `V`.
    pub vocab_size: usize,
    /// `[MASK]` id (BERT only).
    pub mask_id: Option<u32>,
    /// IM-RM unembedding `U` [V, D]: BERT word embeddings, GPT-2 `wte`, Llama/Qwen2 `lm_head`
    /// (`embed_tokens` when tied), GPT-NeoX `embed_out`. A variable of the network: full
    /// fine-tuning trains it.
    pub(crate) unembedding: Tensor,
    /// The variable name of an untied unembedding (not part of the body that computes `h`).
    pub(crate) untied_unembedding: Option<String>,
    pub(crate) vars: Arc<Mutex<BTreeMap<String, Var>>>,
    /// Positions the forward supports (`max_position_embeddings` / `n_positions`), if stated.
    pub(crate) max_positions: Option<usize>,
    /// config.json's `initializer_range` (the std Hugging Face draws new weights with).
    pub initializer_range: Option<f64>,
}

impl LanguageModel {
    /// Loads `config.json`, every `*.safetensors` and `tokenizer.json` from `dir` (f32 on `device`).
    pub fn load(dir: &Path, device: &Device, forward: Forward) -> Result<LanguageModel> {
        Self::load_with(dir, device, forward, None)
    }

    /// [`Self::load`] with `added` special tokens in the tokenizer and the vocabulary matrices
    /// resized to the tokenizer's new size (`transformers`' `add_special_tokens` +
    /// `resize_token_embeddings`, [`crate::lm::checkpoint::vocabulary`]).
    ///
    /// Every failure here is a problem of the folder (missing or malformed files, a config the
    /// forwards do not implement, weights that do not match it): an [`InputError`](crate::error::InputError)
    /// naming the file, exit code 2.
    pub fn load_with(
        dir: &Path,
        device: &Device,
        forward: Forward,
        added: Option<&crate::lm::checkpoint::vocabulary::AddedTokens>,
    ) -> Result<LanguageModel> {
        Self::load_files(dir, device, forward, added).map_err(|e| {
            crate::error::InputError(format!("cannot load model folder {}: {e:#}", dir.display()))
                .into()
        })
    }

    pub(crate) fn load_files(
        dir: &Path,
        device: &Device,
        forward: Forward,
        added: Option<&crate::lm::checkpoint::vocabulary::AddedTokens>,
    ) -> Result<LanguageModel> {
        let found = ModelFiles::find(dir)?;
        let cfg_path = &found.config;
        let names = unique_tensor_names(&found.weights)?;
        // SAFETY: the files are memory-mapped read-only; tensors are copied into variables.
        let files = unsafe { MmapedSafetensors::multi(&found.weights) }
            .with_context(|| format!("{}: not a safetensors file", found.source))?;
        let mut raw = read_json(cfg_path)?;
        let (arch, model_type) = architecture(&raw, cfg_path)?;
        normalise_config(arch, &mut raw)
            .map_err(|e| anyhow::anyhow!("{}: {e}", cfg_path.display()))?;
        let max_positions = positions_of(&raw);
        let initializer_range = raw.get("initializer_range").and_then(|v| v.as_f64());
        let mut tokenizer = read_tokenizer(&found.tokenizer)?;
        let resize = add_tokens(added, &mut raw, &mut tokenizer, cfg_path)?;
        let config = RawConfig {
            raw: &raw,
            path: cfg_path,
            model_type: &model_type,
        };
        let vars = Arc::new(Mutex::new(BTreeMap::new()));
        let mut backend = CheckpointVars {
            files,
            names,
            source: found.source.clone(),
            constants: HashMap::new(),
            aliases: HashMap::new(),
            vars: vars.clone(),
            resize,
        };
        let layout = UnembeddingLayout::of(arch, &config, &mut backend, device)?;
        let mismatch = |e: candle_core::Error| {
            anyhow::anyhow!(
                "{}: weights do not match {}: {e}",
                found.source,
                cfg_path.display()
            )
        };
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
        let network = build_network(arch, forward, &config, &vb).map_err(|e| match e {
            LoadError::Config(e) => e,
            LoadError::Weights(e) => mismatch(e),
        })?;
        let unembedding = vb
            .get((layout.vocab_size, layout.dim), layout.name)
            .map_err(mismatch)?;
        check_tokenizer_size(&tokenizer, &found.tokenizer, layout.vocab_size, cfg_path)?;
        let mask_id = mask_token(arch, &tokenizer, &found.tokenizer)?;
        Ok(LanguageModel {
            arch,
            network,
            tokenizer,
            device: device.clone(),
            dir: dir.to_path_buf(),
            dim: layout.dim,
            vocab_size: layout.vocab_size,
            mask_id,
            unembedding,
            untied_unembedding: layout.untied,
            vars,
            max_positions,
            initializer_range,
        })
    }

    /// Errors unless every sequence fits the model's positions (`max_position_embeddings`,
    /// GPT-2's `n_positions`); `what` names the sequences ("statement 3 with prefix 1", …).
    pub fn check_length(&self, len: usize, what: &dyn Fn() -> String) -> Result<()> {
        match self.max_positions {
            Some(max) if len > max => Err(crate::error::InputError(format!(
                "{} is {len} tokens, longer than the {max} positions of {} (max_position_embeddings); shorten it or use a model with a longer context",
                what(),
                self.dir.display()
            ))
            .into()),
            _ => Ok(()),
        }
    }
}

/// Why a network could not be built: its config (the message is final) or its weights (the
/// caller names the files).
pub(crate) enum LoadError {
    Config(anyhow::Error),
    Weights(candle_core::Error),
}

impl From<anyhow::Error> for LoadError {
    fn from(e: anyhow::Error) -> Self {
        LoadError::Config(e)
    }
}

impl From<candle_core::Error> for LoadError {
    fn from(e: candle_core::Error) -> Self {
        LoadError::Weights(e)
    }
}

/// The network of `arch` for `forward`.
pub(crate) fn build_network(
    arch: Architecture,
    forward: Forward,
    config: &RawConfig,
    vb: &VarBuilder,
) -> std::result::Result<Network, LoadError> {
    Ok(match arch {
        Architecture::Bert => {
            let shape: BertShape = config.parse()?;
            let diff = nets::Bert::load(vb.clone(), &shape)?;
            if forward == Forward::CandleReference {
                let c: BertConfig = config.parse()?;
                Network::Bert(BertModel::load(vb.clone(), &c)?)
            } else {
                Network::DiffBert(diff)
            }
        }
        Architecture::Llama => {
            let c: LlamaConfig = config.parse()?;
            let mut c = c.into_config(false);
            // Loading the differentiable twin first checks every tensor (candle's
            // `Llama::load` panics on a missing one).
            let diff = nets::Llama::load(vb.clone(), &c, false)?;
            if forward == Forward::CandleReference {
                if c.vocab_size < c.hidden_size {
                    return Err(LoadError::Config(anyhow::anyhow!(
                        "{}: vocab_size {} < hidden_size {}: the reference forward's hidden-state read-out needs V ≥ D (the differentiable forward has no such limit)",
                        config.path.display(),
                        c.vocab_size,
                        c.hidden_size
                    )));
                }
                // The read-out replaces lm_head; the true unembedding is requested separately.
                c.tie_word_embeddings = false;
                Network::Llama(Llama::load(vb.clone(), &c)?, c)
            } else {
                Network::DiffLlama(diff)
            }
        }
        Architecture::Qwen2 => {
            let c: LlamaConfig = config.parse()?;
            let c = c.into_config(false);
            Network::DiffLlama(nets::Llama::load(vb.clone(), &c, true)?)
        }
        Architecture::Gpt2 => {
            let c: Gpt2Config = config.parse()?;
            Network::Gpt2(Gpt2::load(vb.clone(), &c)?)
        }
        Architecture::GptNeox => {
            let c: GptNeoxConfig = config.parse()?;
            Network::GptNeox(GptNeox::load(vb.clone(), &c)?)
        }
    })
}

impl LanguageModel {
    /// The implementation that runs: [`Forward::CandleReference`] only where one was requested
    /// and the family has it.
    pub fn forward(&self) -> Forward {
        match self.network {
            Network::Bert(_) | Network::Llama(..) => Forward::CandleReference,
            _ => Forward::Nets,
        }
    }
    /// The IM-RM unembedding `U` [V, D] (a variable of the network).
    pub fn unembedding(&self) -> &Tensor {
        &self.unembedding
    }

    /// `U` as f64.
    pub fn unembedding_f64(&self) -> Result<Array2<f64>> {
        to_array2(&self.unembedding)
    }

    /// Every parameter of the network (the unembedding included), in name order.
    pub fn parameters(&self) -> Vec<(String, Var)> {
        let vars = self.vars.lock().expect("variable map poisoned");
        vars.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
    }

    /// The parameters that compute `h` (all but an untied unembedding): what the EX-RM trains
    /// besides its head.
    pub fn body_parameters(&self) -> Vec<(String, Var)> {
        let mut p = self.parameters();
        p.retain(|(n, _)| Some(n) != self.untied_unembedding.as_ref());
        p
    }
}
