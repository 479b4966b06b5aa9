//! Chat templates (MATH.md §6, the recipe's prompt format): the Jinja `chat_template` of a
//! checkpoint's `tokenizer_config.json`, rendered with minijinja in Hugging Face's environment
//! (`trim_blocks`, `lstrip_blocks`, Python string methods, `raise_exception`, `strftime_now` on a
//! fixed date), checked against `apply_chat_template` on the fixtures of
//! `tests/fixtures/reference/chat_templates.json`.

use crate::error::InputError;
use anyhow::Result;
use minijinja::{context, Environment, Error, ErrorKind};
use serde::Serialize;
use std::path::Path;

/// One message of a conversation.
#[derive(Debug, Clone, Serialize)]
pub struct Message<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

/// The date `strftime_now` renders unless one is given: Llama-3.2-Instruct's template's own
/// fallback ("26 Jul 2024", used where `strftime_now` is undefined), so that a run renders the
/// same text with or without it, and never the wall clock.
pub const DEFAULT_TEMPLATE_DATE: &str = "2024-07-26";

/// `date` (`YYYY-MM-DD`) as a calendar date; an error naming the value otherwise.
pub fn parse_template_date(date: &str) -> Result<chrono::NaiveDate> {
    chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").map_err(|e| {
        InputError(format!(
            "template date {date:?} is not a YYYY-MM-DD date: {e}"
        ))
        .into()
    })
}

/// `date` formatted by the strftime pattern `format` (`transformers`' `strftime_now`, on a fixed
/// date); an unknown directive is a template error, not a panic.
fn strftime(date: chrono::NaiveDate, format: &str) -> Result<String, Error> {
    use chrono::format::{Item, StrftimeItems};
    let items: Vec<Item> = StrftimeItems::new(format).collect();
    if items.iter().any(|i| matches!(i, Item::Error)) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format {format:?}"),
        ));
    }
    let mut out = String::new();
    use std::fmt::Write;
    write!(out, "{}", date.format_with_items(items.into_iter())).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: {format:?} does not apply to a date"),
        )
    })?;
    Ok(out)
}

/// A compiled chat template with the special tokens it may refer to.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    pub bos_token: String,
    pub eos_token: String,
    /// Where the template came from (reported in outputs).
    pub source: String,
}

/// The special token `name` of a `tokenizer_config.json` (a string, or an object with
/// `content`); `None` where it is absent, null or empty.
pub fn special_token(cfg: &serde_json::Value, name: &str) -> Option<String> {
    let s = match cfg.get(name)? {
        serde_json::Value::String(s) => s.clone(),
        v => v.get("content")?.as_str()?.to_string(),
    };
    (!s.is_empty()).then_some(s)
}

impl ChatTemplate {
    /// Compiles `source` (named `origin` in errors).
    pub fn new(source: &str, bos_token: &str, eos_token: &str, origin: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| InputError(format!("{origin}: chat_template does not compile: {e:#}")))?;
        let mut template = ChatTemplate {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            source: origin.to_string(),
        };
        template.set_date(parse_template_date(DEFAULT_TEMPLATE_DATE)?);
        Ok(template)
    }

    /// `strftime_now(format)` renders `date` (fixed, so runs stay reproducible).
    pub fn set_date(&mut self, date: chrono::NaiveDate) {
        self.env
            .add_function("strftime_now", move |format: String| {
                strftime(date, &format)
            });
    }

    /// The checkpoint's template, from `tokenizer_config.json` (`chat_template` as a string, or
    /// the entry named "default" of a list), or from a `chat_template.jinja` file beside it;
    /// `None` where the checkpoint has none.
    pub fn from_model_dir(dir: &Path) -> Result<Option<Self>> {
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = if cfg_path.is_file() {
            let text = crate::io::input::read_text(&cfg_path, "tokenizer config")?;
            serde_json::from_str(&text)
                .map_err(|e| InputError(format!("{}: not valid JSON: {e}", cfg_path.display())))?
        } else {
            serde_json::Value::Null
        };
        let (bos, eos) = (
            special_token(&cfg, "bos_token").unwrap_or_default(),
            special_token(&cfg, "eos_token").unwrap_or_default(),
        );
        let origin = cfg_path.display().to_string();
        match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => Ok(Some(Self::new(s, &bos, &eos, &origin)?)),
            Some(serde_json::Value::Array(list)) => {
                let default = list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template"))
                    .and_then(|t| t.as_str());
                match default {
                    Some(s) => Ok(Some(Self::new(s, &bos, &eos, &origin)?)),
                    None => Err(InputError(format!(
                        "{origin}: chat_template is a list without an entry named \"default\""
                    ))
                    .into()),
                }
            }
            Some(serde_json::Value::Null) | None => {
                let jinja = dir.join("chat_template.jinja");
                if jinja.is_file() {
                    let s = crate::io::input::read_text(&jinja, "chat template")?;
                    Ok(Some(Self::new(
                        &s,
                        &bos,
                        &eos,
                        &jinja.display().to_string(),
                    )?))
                } else {
                    Ok(None)
                }
            }
            Some(_) => Err(InputError(format!(
                "{origin}: chat_template must be a string or a list"
            ))
            .into()),
        }
    }

    /// The rendered conversation (`apply_chat_template(messages, tokenize=False, ...)`); a
    /// template that fails on it is an input error naming the template's file.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let failed = |e: Error| {
            InputError(format!(
                "{}: rendering the chat template: {e:#}",
                self.source
            ))
        };
        let t = self.env.get_template("chat").map_err(failed)?;
        Ok(t.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(failed)?)
    }

    /// The official recipe's split of a chat into prompt and response text: the prompt is the
    /// user turn with the generation prompt, the response what the full conversation adds to it
    /// (end-of-turn tokens included).
    pub fn prompt_and_response(&self, user: &str, assistant: &str) -> Result<(String, String)> {
        self.split_conversation(
            &[Message {
                role: "user",
                content: user,
            }],
            &[Message {
                role: "assistant",
                content: assistant,
            }],
        )
    }

    /// [`Self::prompt_and_response`] for conversations (TRL's conversational shape): the prompt
    /// is `prompt` rendered with the generation prompt, the response what `prompt + response`
    /// rendered without it adds.
    pub fn split_conversation(
        &self,
        prompt: &[Message],
        response: &[Message],
    ) -> Result<(String, String)> {
        let head = self.render(prompt, true)?;
        let full = self.render(&[prompt, response].concat(), false)?;
        match full.strip_prefix(&head) {
            Some(r) => Ok((head, r.to_string())),
            None => Err(InputError(format!(
                "{}: the conversation with the answer does not start with the rendered prompt, so the response cannot be cut off it (prompt {head:?}, full {full:?})",
                self.source
            ))
            .into()),
        }
    }
}
