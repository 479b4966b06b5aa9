//! A checkpoint folder's files (MATH.md §6): config.json, the `*.safetensors` weights (one file
//! or a sharded index) and tokenizer.json, found and read with errors naming the file.

use crate::lm::checkpoint::hf_config::Architecture;
use anyhow::{bail, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = crate::io::input::read_text(path, "model file")?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}

/// The tensor names of every safetensors file; a name in two files is an error naming both.
pub(crate) fn unique_tensor_names(
    weights: &[PathBuf],
) -> Result<std::collections::HashSet<String>> {
    let mut seen: HashMap<String, &Path> = HashMap::new();
    for path in weights {
        // SAFETY: memory-mapped read-only, only the header is read.
        let file = unsafe { MmapedSafetensors::new(path) }
            .with_context(|| format!("{}: not a safetensors file", path.display()))?;
        for (name, _) in file.tensors() {
            if let Some(first) = seen.insert(name.clone(), path) {
                bail!(
                    "tensor `{name}` is in both {} and {}; a checkpoint holds each tensor once",
                    first.display(),
                    path.display()
                );
            }
        }
    }
    Ok(seen.into_keys().collect())
}

/// The files of a checkpoint folder.
pub(crate) struct ModelFiles {
    pub(crate) config: PathBuf,
    pub(crate) tokenizer: PathBuf,
    /// Every `*.safetensors`, sorted.
    pub(crate) weights: Vec<PathBuf>,
    /// How errors name the weights: the file, or the folder and the file count.
    pub(crate) source: String,
}

impl ModelFiles {
    pub(crate) fn find(dir: &Path) -> Result<ModelFiles> {
        let file = |name: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            if !p.is_file() {
                bail!(
                    "model folder {}: missing {name} (all-MiniLM-L6-v2 comes from scripts/fetch-model.sh, tiny test checkpoints from `rmflow lm-tiny`)",
                    dir.display()
                );
            }
            Ok(p)
        };
        let (config, tokenizer) = (file("config.json")?, file("tokenizer.json")?);
        let mut weights: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot list model folder {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        weights.sort();
        for w in &weights {
            crate::io::input::check_regular_file(w, "weights file")?;
        }
        if weights.is_empty() {
            bail!(
                "model folder {}: missing model.safetensors (no *.safetensors file)",
                dir.display()
            );
        }
        let source = if weights.len() == 1 {
            weights[0].display().to_string()
        } else {
            format!("{} ({} safetensors files)", dir.display(), weights.len())
        };
        Ok(ModelFiles {
            config,
            tokenizer,
            weights,
            source,
        })
    }
}

/// The family of the checkpoint in `dir` (its `config.json`'s `model_type`).
pub fn architecture_of(dir: &Path) -> Result<Architecture> {
    let path = dir.join("config.json");
    Ok(architecture(&read_json(&path)?, &path)?.0)
}

/// The family of `config.json`'s `model_type`, and the `model_type` itself.
pub(crate) fn architecture(
    raw: &serde_json::Value,
    cfg_path: &Path,
) -> Result<(Architecture, String)> {
    let model_type = raw
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let arch = match model_type.as_str() {
        "bert" => Architecture::Bert,
        "llama" => Architecture::Llama,
        "gpt2" => Architecture::Gpt2,
        "gpt_neox" => Architecture::GptNeox,
        "qwen2" => Architecture::Qwen2,
        other => bail!(
            "{}: model_type {other:?} is not supported (expected \"bert\", \"llama\", \"qwen2\", \"gpt2\" or \"gpt_neox\")",
            cfg_path.display()
        ),
    };
    Ok((arch, model_type))
}

/// `tokenizer.json` without padding or truncation (sequences are padded per batch here).
pub(crate) fn read_tokenizer(tok_path: &Path) -> Result<Tokenizer> {
    let mut tokenizer = Tokenizer::from_file(tok_path)
        .map_err(|e| crate::error::InputError(format!("{}: {e}", tok_path.display())))?;
    // Sentence-transformers ship fixed-length padding.
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(None)
        .map_err(|e| anyhow::anyhow!("{}: {e}", tok_path.display()))?;
    Ok(tokenizer)
}

/// The tokenizer must not have more tokens than the weights' `vocab_size`.
pub(crate) fn check_tokenizer_size(
    tokenizer: &Tokenizer,
    tok_path: &Path,
    vocab_size: usize,
    cfg_path: &Path,
) -> Result<()> {
    if tokenizer.get_vocab_size(true) > vocab_size {
        bail!(
            "{} has {} tokens but {} declares vocab_size = {vocab_size}: tokenizer and weights do not match",
            tok_path.display(),
            tokenizer.get_vocab_size(true),
            cfg_path.display(),
        );
    }
    Ok(())
}
