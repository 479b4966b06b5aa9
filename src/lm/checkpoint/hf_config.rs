//! A Hugging Face `config.json`: the family ([`Architecture`], from `model_type`), its fields
//! normalised across families and the sizes checked before anything is allocated.

use anyhow::{bail, Result};
use std::path::Path;

/// The transformer family, from `model_type` in config.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Bert,
    Llama,
    Gpt2,
    /// GPT-NeoX (Pythia).
    #[serde(rename = "gpt_neox")]
    GptNeox,
    /// Qwen2 / Qwen2.5.
    Qwen2,
}

impl Architecture {
    pub fn is_causal(self) -> bool {
        !matches!(self, Architecture::Bert)
    }

    /// `model_type` of config.json.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Bert => "bert",
            Architecture::Llama => "llama",
            Architecture::Gpt2 => "gpt2",
            Architecture::GptNeox => "gpt_neox",
            Architecture::Qwen2 => "qwen2",
        }
    }
}

/// The number of positions the model's forward supports, where its config says.
pub(crate) fn positions_of(raw: &serde_json::Value) -> Option<usize> {
    ["max_position_embeddings", "n_positions"]
        .iter()
        .find_map(|k| raw.get(k).and_then(|v| v.as_u64()))
        .map(|n| n as usize)
}

/// A normalised `config.json` and where it came from (for errors).
pub(crate) struct RawConfig<'a> {
    pub(crate) raw: &'a serde_json::Value,
    pub(crate) path: &'a Path,
    pub(crate) model_type: &'a str,
}

impl RawConfig<'_> {
    /// The config as one family's typed config.
    pub(crate) fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.raw.clone()).map_err(|e| {
            anyhow::anyhow!(
                "{}: not a {} config: {e}",
                self.path.display(),
                self.model_type
            )
        })
    }
}

/// Brings a config.json written by `transformers` ≥ 5 (`rope_parameters`) to the field names the
/// loaders read (`rope_theta`, `rope_scaling`, GPT-NeoX `rotary_pct`/`rotary_emb_base`), and
/// refuses the variants these forwards do not implement, naming the field.
pub(crate) fn normalise_config(arch: Architecture, raw: &mut serde_json::Value) -> Result<()> {
    let Some(obj) = raw.as_object_mut() else {
        bail!("config.json is not a JSON object");
    };
    if let Some(p) = obj.get("rope_parameters").cloned() {
        let theta = p.get("rope_theta").cloned();
        let kind = p
            .get("rope_type")
            .and_then(|v| v.as_str())
            .unwrap_or("default")
            .to_string();
        if let Some(t) = theta {
            obj.entry("rope_theta").or_insert(t.clone());
            if arch == Architecture::GptNeox {
                obj.entry("rotary_emb_base").or_insert(t);
            }
        }
        if let Some(f) = p.get("partial_rotary_factor").cloned() {
            obj.entry("rotary_pct").or_insert(f);
        }
        match kind.as_str() {
            "default" => {}
            "llama3" if arch == Architecture::Llama => {
                obj.entry("rope_scaling").or_insert(p.clone());
            }
            other => bail!("rope_parameters.rope_type {other:?} is not supported (expected \"default\", or \"llama3\" for Llama)"),
        }
    }
    if let Some(f) = obj.get("partial_rotary_factor").cloned() {
        obj.entry("rotary_pct").or_insert(f);
    }
    check_sizes(arch, obj)?;
    let flag = |name: &str| obj.get(name).and_then(|v| v.as_bool()).unwrap_or(false);
    match arch {
        Architecture::Llama if flag("attention_bias") || flag("mlp_bias") => {
            bail!("attention_bias / mlp_bias = true is not supported for llama")
        }
        Architecture::Qwen2 if flag("use_sliding_window") => {
            bail!("use_sliding_window = true is not supported (full attention only)")
        }
        Architecture::GptNeox
            if obj.get("attention_bias").and_then(|v| v.as_bool()) == Some(false) =>
        {
            bail!("attention_bias = false is not supported for gpt_neox")
        }
        _ => {}
    }
    if matches!(arch, Architecture::Llama | Architecture::Qwen2) {
        if let Some(act) = obj.get("hidden_act").and_then(|v| v.as_str()) {
            if act != "silu" {
                bail!(
                    "hidden_act {act:?} is not supported for {} (expected \"silu\")",
                    arch.model_type()
                );
            }
        }
        let get = |n: &str| obj.get(n).and_then(|v| v.as_u64());
        if let (Some(hd), Some(d), Some(h)) = (
            get("head_dim"),
            get("hidden_size"),
            get("num_attention_heads"),
        ) {
            if h == 0 || hd * h != d {
                bail!("head_dim = {hd} but hidden_size / num_attention_heads = {d} / {h}: only head_dim = hidden_size / num_attention_heads is supported");
            }
        }
    }
    Ok(())
}

/// Refuses sizes no forward can run: zero layers, heads, widths or vocabulary, a width not
/// divisible by the heads, key/value heads that do not divide the heads.
pub(crate) fn check_sizes(
    arch: Architecture,
    obj: &serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    fn get(
        obj: &serde_json::Map<String, serde_json::Value>,
        names: &[&'static str],
    ) -> Option<(&'static str, u64)> {
        names
            .iter()
            .find_map(|n| obj.get(*n).and_then(|v| v.as_u64()).map(|v| (*n, v)))
    }
    let get = |names: &[&'static str]| get(obj, names);
    let (width, heads, layers) = if arch == Architecture::Gpt2 {
        (
            ["n_embd"].as_slice(),
            ["n_head"].as_slice(),
            ["n_layer"].as_slice(),
        )
    } else {
        (
            ["hidden_size"].as_slice(),
            ["num_attention_heads"].as_slice(),
            ["num_hidden_layers"].as_slice(),
        )
    };
    for names in [
        width,
        heads,
        layers,
        &["vocab_size"],
        &["max_position_embeddings", "n_positions"],
        &["intermediate_size"],
    ] {
        if let Some((n, 0)) = get(names) {
            bail!("{n} = 0: a model needs at least one");
        }
    }
    if let (Some((wn, w)), Some((hn, h))) = (get(width), get(heads)) {
        if w % h != 0 {
            bail!("{wn} = {w} is not divisible by {hn} = {h}");
        }
        if let Some((kn, k)) = get(&["num_key_value_heads"]) {
            if k == 0 || h % k != 0 {
                bail!("{kn} = {k} does not divide {hn} = {h}");
            }
        }
    }
    Ok(())
}
