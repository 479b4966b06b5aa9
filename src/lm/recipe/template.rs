//! The recipe's prompt format, as the official `update_tokenizer` sets it (MATH.md §6): the
//! checkpoint's own chat template where it has one; otherwise a default template with the special
//! tokens `<|user|>` and `<|assistant|>` (and a pad and an eos token where there are none) added
//! to the tokenizer, and the vocabulary matrices resized to match (`transformers`' mean-resizing,
//! [`crate::lm::checkpoint::vocabulary`]), identically for the policy and the reference.

use super::config::RecipeFile;
use crate::lm::checkpoint::chat_template::ChatTemplate;
use crate::lm::checkpoint::vocabulary::AddedTokens;
use crate::lm::{Architecture, Forward, LanguageModel};
use anyhow::Result;
use candle_core::Device;
use std::path::Path;

/// `DEFAULT_USER_TOKEN` of the official `utils/strings.py`.
pub const USER_TOKEN: &str = "<|user|>";
/// `DEFAULT_ASSISTANT_TOKEN`.
pub const ASSISTANT_TOKEN: &str = "<|assistant|>";
/// `DEFAULT_EOS_TOKEN`, added where the checkpoint has no eos token.
pub const DEFAULT_EOS_TOKEN: &str = "<|endoftext|>";
/// `DEFAULT_PADDING_TOKEN`, added where the checkpoint has no pad token (or one with id 0: the
/// official check is Python's `not tokenizer.pad_token_id`).
pub const DEFAULT_PADDING_TOKEN: &str = "<|padding|>";
/// The official `get_chat_template()`: a user turn `<|user|>{content}{eos}`, an assistant (or
/// system) turn `<|assistant|>{content}{eos}`, the generation prompt `<|assistant|>`.
pub const OFFICIAL_TEMPLATE: &str = "{% for message in messages %}{% if message['role'] == 'user' %}{{ '<|user|>' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}{{ '<|assistant|>' + message['content'] + eos_token }}{% elif message['role'] == 'assistant' %}{{ '<|assistant|>'  + message['content'] + eos_token }}{% endif %}{% if loop.last and add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}{% endfor %}";

/// How prompts and responses are rendered, and what the tokenizer gains for it.
pub struct PromptFormat {
    pub template: Option<ChatTemplate>,
    /// The default template's tokens (with the eos/pad/bos/unk of `tokenizer_config.json`, which
    /// `transformers` registers as special), `None` otherwise.
    pub added: Option<AddedTokens>,
    /// What was used, in words (`recipe.json`'s `prompt_format`).
    pub description: String,
}

impl PromptFormat {
    /// The format of the checkpoint in `dir` under `file`'s `chat_template` (`false`:
    /// plain concatenation; masked encoders: always plain).
    pub fn of(dir: &Path, arch: Architecture, file: &RecipeFile) -> Result<PromptFormat> {
        let plain = |why: &str| PromptFormat {
            template: None,
            added: None,
            description: format!("plain concatenation ({why})"),
        };
        if !arch.is_causal() {
            return Ok(plain("masked encoder: no chat template"));
        }
        let (chat_template, date) = file.chat_template();
        if !chat_template {
            let table = match file.preferences {
                Some(_) => "preferences",
                None => "responses",
            };
            return Ok(plain(&format!("{table}.chat_template = false")));
        }
        let date = crate::lm::checkpoint::chat_template::parse_template_date(date)?;
        Self::of_checkpoint(dir, file.seed, date)
    }

    /// The chat template of the causal checkpoint in `dir`: its own, or the official default
    /// one with the tokens `update_tokenizer` adds (their rows drawn from `seed`); `date` is the
    /// template's `strftime_now`.
    pub fn of_checkpoint(dir: &Path, seed: u64, date: chrono::NaiveDate) -> Result<PromptFormat> {
        if let Some(mut t) = ChatTemplate::from_model_dir(dir)? {
            t.set_date(date);
            let description = format!("chat template of {}", t.source);
            return Ok(PromptFormat {
                template: Some(t),
                added: None,
                description,
            });
        }
        official_default(dir, seed, date)
    }
}

/// `update_tokenizer` on a checkpoint without a chat template: the tokens it adds, in its order,
/// and the default template over the resulting eos token.
fn official_default(dir: &Path, seed: u64, date: chrono::NaiveDate) -> Result<PromptFormat> {
    let cfg = read_tokenizer_config(dir)?;
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
        .map_err(|e| crate::error::InputError(format!("{}: {e}", tok_path.display())))?;
    let special = |name: &str| crate::lm::checkpoint::chat_template::special_token(&cfg, name);
    // transformers registers the configured special tokens first.
    let mut tokens: Vec<String> = ["bos_token", "eos_token", "unk_token", "pad_token"]
        .iter()
        .filter_map(|n| special(n))
        .collect();
    tokens.dedup();
    // Python's `not tokenizer.pad_token_id`: no pad token, or one whose id is 0. A configured pad
    // missing from the vocabulary gets a new id (> 0).
    let pad_id = special("pad_token").map(|p| tokenizer.token_to_id(&p).unwrap_or(u32::MAX));
    if pad_id.unwrap_or(0) == 0 {
        tokens.push(DEFAULT_PADDING_TOKEN.into());
    }
    let eos = match special("eos_token") {
        Some(e) => e,
        None => {
            tokens.push(DEFAULT_EOS_TOKEN.into());
            DEFAULT_EOS_TOKEN.into()
        }
    };
    tokens.extend([USER_TOKEN.to_string(), ASSISTANT_TOKEN.to_string()]);
    let bos = special("bos_token").unwrap_or_default();
    let source = format!(
        "the official default template (update_tokenizer; {} has no chat_template)",
        dir.display()
    );
    let mut template = ChatTemplate::new(OFFICIAL_TEMPLATE, &bos, &eos, &source)?;
    template.set_date(date);
    Ok(PromptFormat {
        description: format!("chat template: {source}"),
        template: Some(template),
        added: Some(AddedTokens {
            tokens,
            plain: Vec::new(),
            seed,
        }),
    })
}

fn read_tokenizer_config(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(serde_json::Value::Null);
    }
    let text = crate::io::input::read_text(&path, "tokenizer config")?;
    serde_json::from_str(&text).map_err(|e| {
        crate::error::InputError(format!("{}: not valid JSON: {e}", path.display())).into()
    })
}

/// The checkpoint in `dir` loaded for the recipe of `file`: with the default template's tokens
/// and resized vocabulary where it needs them; and its prompt format.
pub fn load_recipe_model(
    dir: &Path,
    device: &Device,
    forward: Forward,
    file: &RecipeFile,
) -> Result<(LanguageModel, PromptFormat)> {
    let probe = crate::lm::model::architecture_of(dir)?;
    let format = PromptFormat::of(dir, probe, file)?;
    let lm = LanguageModel::load_with(dir, device, forward, format.added.as_ref())?;
    Ok((lm, format))
}
