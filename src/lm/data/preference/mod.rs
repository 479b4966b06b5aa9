//! Preference data as researchers have it: Hugging Face `save_to_disk` folders (a `DatasetDict`
//! or one split), single Arrow IPC files (stream or file format), Parquet and JSONL
//! ([`source`]); in TRL's shapes ([`shape`]): standard (`prompt` / `chosen` / `rejected`
//! strings, or the implicit-prompt form with only `chosen` / `rejected`) and conversational
//! (lists of `{role, content}` messages, rendered later with the model's chat template). Column
//! names can be mapped; extra columns are ignored. Every problem is a [`DataError`] naming the
//! file, and the row and column where there is one (exit code 2).
//!
//! - [`source`]: where the data is and how it is read (one split of one dataset).
//! - [`arrow`]: Arrow IPC and Parquet through the Apache Arrow crates, into [`Cell`]s.
//! - [`jsonl`]: JSON Lines into [`Cell`]s.
//! - [`shape`]: cells into [`PreferencePair`]s, TRL's implicit prompt extracted.

pub mod arrow;
pub mod jsonl;
pub mod shape;
pub mod source;

pub use shape::{Message, PreferencePair, Turns};
pub use source::{read_pairs, Columns, DataFormat, DataSource};

use std::path::PathBuf;

/// One value of a preference column: a string, or a conversation.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    Messages(Vec<Message>),
}

/// What was wrong with a preference data file; `row` counts from 0 over the split.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DataError {
    #[error("{file}: not found{}", .context.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Missing {
        file: PathBuf,
        context: Option<String>,
    },
    #[error("{file}: the split {split:?} is not there (dataset_dict.json lists {listed:?})")]
    NoSplit {
        file: PathBuf,
        split: String,
        listed: Vec<String>,
    },
    #[error("{file}: several splits ({listed:?}); name one (`split = \"…\"`)")]
    WhichSplit { file: PathBuf, listed: Vec<String> },
    #[error("{file}: no column {column:?} for the {role} (columns: {found:?}); name it with `columns.{role} = \"NAME\"`")]
    NoColumn {
        file: PathBuf,
        role: &'static str,
        column: String,
        found: Vec<String>,
    },
    #[error("{file}: column {column:?} is {found}, expected a string or a list of {{role, content}} messages")]
    Type {
        file: PathBuf,
        column: String,
        found: String,
    },
    #[error("{file}: row {row}, column {column:?}: {why}")]
    Value {
        file: PathBuf,
        row: usize,
        column: String,
        why: String,
    },
    #[error("{file}: no rows{}", .context.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Empty {
        file: PathBuf,
        context: Option<String>,
    },
    #[error("{file}{}: {why}", .row.map(|r| format!(", row {r}")).unwrap_or_default())]
    Malformed {
        file: PathBuf,
        row: Option<usize>,
        why: String,
    },
}
