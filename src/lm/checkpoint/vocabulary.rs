//! Tokens added to a checkpoint's tokenizer and its vocabulary matrices resized to match, as
//! `transformers` does it (`add_special_tokens`, then `resize_token_embeddings(len(tokenizer))`
//! with its default mean-resizing): the official recipe's `update_tokenizer` +
//! `update_model_num_embeddings_and_special_tokens` (MATH.md §6).

use candle_core::{DType, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use tokenizers::{AddedToken, Tokenizer};

/// Tokens to add to a checkpoint's tokenizer (each a new id unless already in the vocabulary),
/// and the seed of the new rows' draws.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedTokens {
    /// Added as special tokens (`add_special_tokens`: skipped when decoding).
    pub tokens: Vec<String>,
    /// Added after them as plain tokens (`add_tokens`: normalised, kept when decoding), as the
    /// official code adds the Hamiltonian-cycle task's `<sep>` and `<edge_sep>`.
    pub plain: Vec<String>,
    pub seed: u64,
}

/// The vocabulary matrices `[from, D]` of a checkpoint resized to `[to, D]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resize {
    pub(crate) from: usize,
    pub(crate) to: usize,
    pub(crate) seed: u64,
}

/// Adds `tokens` (`special`: as `add_special_tokens` registers them, `normalized = false`,
/// skipped when decoding; else as `add_tokens` does, normalised, kept when decoding).
fn add(tokenizer: &mut Tokenizer, tokens: &[String], special: bool) {
    let added: Vec<AddedToken> = tokens
        .iter()
        .map(|t| AddedToken::from(t.clone(), special))
        .collect();
    match special {
        true => tokenizer.add_special_tokens(&added),
        false => tokenizer.add_tokens(&added),
    };
}

/// The checkpoint tensors with one row per token: input embeddings and untied output heads of
/// every family rmflow loads.
pub(crate) fn is_vocabulary_matrix(stored_name: &str) -> bool {
    [
        "word_embeddings.weight",
        "embed_tokens.weight",
        "lm_head.weight",
        "wte.weight",
        "embed_in.weight",
        "embed_out.weight",
    ]
    .iter()
    .any(|s| stored_name.ends_with(s))
}

/// `t` `[from, D]` resized to `[to, D]` as `resize_token_embeddings` does: the first
/// `min(from, to)` rows kept; each new row drawn from `N(μ, 1e-9 Σ)` with `μ` and `Σ` the old
/// rows' mean and covariance (`Σ = CᵀC / from`, `C` the centred rows), computed in f32. The draw
/// is `μ + √(1e-9 / from) · gᵀC` with `g ~ N(0, I_from)` (exactly that distribution, no
/// factorisation of `Σ`), seeded by `seed` and the tensor's name, so a reload gives the same
/// rows. `transformers` falls back to `μ` when `1e-9 Σ` fails its positive-definiteness check;
/// here that is when `Σ` is singular by rank (`from ≤ D`).
pub(crate) fn resize_rows(t: &Tensor, r: Resize, name: &str) -> candle_core::Result<Tensor> {
    let (from, d) = t.dims2()?;
    if r.to <= from {
        return t.narrow(0, 0, r.to);
    }
    let added = r.to - from;
    let t32 = t.to_dtype(DType::F32)?;
    let mean = t32.mean_keepdim(0)?;
    let new = if from > d {
        let centred = t32.broadcast_sub(&mean)?;
        let mut rng = ChaCha8Rng::seed_from_u64(r.seed ^ name_hash(name));
        let g: Vec<f32> = (0..added * from)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        let g = Tensor::from_vec(g, (added, from), t.device())?;
        let scale = (1e-9 / from as f64).sqrt();
        (g.matmul(&centred)? * scale)?.broadcast_add(&mean)?
    } else {
        mean.repeat((added, 1))?
    };
    Tensor::cat(&[&t32, &new.to_dtype(t.dtype())?], 0)
}

/// The first 8 bytes of SHA-256(`name`): a per-tensor stream of the seeded draws.
fn name_hash(name: &str) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(name.as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// `added` tokens put into `tokenizer` and `config.json`'s `vocab_size` (`raw`, read from
/// `cfg_path`) raised to match: the resize of the vocabulary matrices, where it grows.
pub(crate) fn add_tokens(
    added: Option<&AddedTokens>,
    raw: &mut serde_json::Value,
    tokenizer: &mut tokenizers::Tokenizer,
    cfg_path: &std::path::Path,
) -> anyhow::Result<Option<Resize>> {
    use anyhow::Context;
    let Some(a) = added else { return Ok(None) };
    let from = raw
        .get("vocab_size")
        .and_then(|v| v.as_u64())
        .with_context(|| format!("{}: no vocab_size", cfg_path.display()))? as usize;
    add(tokenizer, &a.tokens, true);
    add(tokenizer, &a.plain, false);
    let to = tokenizer.get_vocab_size(true);
    raw["vocab_size"] = to.into();
    Ok((to != from).then_some(Resize {
        from,
        to,
        seed: a.seed,
    }))
}
