//! A half-precision copy of a checkpoint folder, written by rmflow (for carrying a model where
//! the full-precision file does not fit, e.g. onto a GPU machine; README, "GPU").
//!
//! Every `f32` tensor of every `*.safetensors` file is cast to `f16` or `bf16`; tensors of any
//! other type are copied as they are, and so is every other file of the folder. rmflow loads
//! either copy as `f32` (`model::LanguageModel::load`), so the copy differs from the original only
//! by the rounding of the weights (relative 2^-11 for f16, 2^-8 for bf16). A `SHA256SUMS` file
//! (of the original bytes) is not copied.

use crate::io::atomic::{AtomicDir, Replace};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What [`convert_checkpoint`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Conversion {
    pub source: String,
    pub dtype: String,
    /// Tensors cast from f32.
    pub cast: usize,
    /// Tensors copied unchanged (not f32).
    pub kept: usize,
    /// Other files copied.
    pub files: Vec<String>,
    /// Bytes of safetensors before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// `f16` or `bf16`.
pub fn parse_half_dtype(s: &str) -> Result<DType> {
    match s {
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => bail!("--dtype must be f16 or bf16, got {other:?}"),
    }
}

/// Writes a copy of the checkpoint folder `src` to `dest` (atomically, under `replace`) with its
/// f32 weights cast to `dtype`, and `rmflow-convert.json` describing the copy.
pub fn convert_checkpoint(
    src: &Path,
    dest: &Path,
    dtype: DType,
    replace: Replace,
) -> Result<Conversion> {
    if !src.is_dir() {
        bail!("model folder {}: not a folder", src.display());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(src)
        .with_context(|| format!("cannot read {}", src.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    entries.sort();
    if !entries
        .iter()
        .any(|p| p.extension().is_some_and(|x| x == "safetensors"))
    {
        bail!(
            "model folder {}: no *.safetensors file to convert",
            src.display()
        );
    }
    let dir = AtomicDir::create_as(dest, replace, crate::io::atomic::OutputKind::Checkpoint)?;
    let mut out = Conversion {
        source: src.display().to_string(),
        dtype: format!("{dtype:?}").to_lowercase(),
        cast: 0,
        kept: 0,
        files: vec![],
        bytes_before: 0,
        bytes_after: 0,
    };
    for path in &entries {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{}: file name is not UTF-8", path.display()))?;
        // A checksum list describes the original bytes, which the copy no longer has.
        if path.is_dir() || name == "SHA256SUMS" {
            continue;
        }
        let target = dir.path(name)?;
        if path.extension().is_some_and(|x| x == "safetensors") {
            let tensors = read_safetensors(path)?;
            let mut converted: HashMap<String, Tensor> = HashMap::new();
            for (key, t) in tensors {
                if t.dtype() == DType::F32 {
                    converted.insert(key, t.to_dtype(dtype)?);
                    out.cast += 1;
                } else {
                    converted.insert(key, t);
                    out.kept += 1;
                }
            }
            candle_core::safetensors::save(&converted, &target)
                .with_context(|| format!("cannot write {}", target.display()))?;
            out.bytes_before += std::fs::metadata(path)?.len();
            out.bytes_after += std::fs::metadata(&target)?.len();
        } else {
            std::fs::copy(path, &target).with_context(|| {
                format!("cannot copy {} to {}", path.display(), target.display())
            })?;
            out.files.push(name.to_string());
        }
    }
    let record = serde_json::json!({
        "rmflow_version": env!("CARGO_PKG_VERSION"),
        "conversion": out,
    });
    std::fs::write(
        dir.path("rmflow-convert.json")?,
        serde_json::to_string_pretty(&record)?,
    )?;
    dir.commit()?;
    Ok(out)
}

/// Every tensor of `path`; an unreadable file (truncated, not safetensors) is an input error
/// naming it.
fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu).map_err(|e| {
        crate::error::InputError(format!(
            "{}: not a readable safetensors file: {e}",
            path.display()
        ))
        .into()
    })
}
