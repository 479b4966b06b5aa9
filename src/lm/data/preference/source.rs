//! Where one split of a preference dataset is and how it is read: a [`DataSource`] (path,
//! split, format, column names) into [`PreferencePair`]s.

use super::arrow::{self as arrow_io, Container};
use super::shape::{pair_of, PreferencePair};
use super::{jsonl, Cell, DataError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One split of a preference dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    /// A `save_to_disk` folder (`dataset_dict.json`, or one split's `state.json`), an Arrow IPC
    /// file (stream or file format), a Parquet file, or JSON Lines / a JSON array.
    pub path: PathBuf,
    /// The split of a `DatasetDict` folder (needed where it lists several).
    #[serde(default)]
    pub split: Option<String>,
    /// The format; absent: from the path (a folder: `save_to_disk`; `.parquet`; `.jsonl`,
    /// `.json`; anything else: Arrow, stream or file format by its first bytes).
    #[serde(default)]
    pub format: Option<DataFormat>,
    /// Which columns hold the prompt and the responses.
    #[serde(default)]
    pub columns: Columns,
}

/// The formats read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    /// `datasets`' `save_to_disk` folder.
    HfDataset,
    /// An Arrow IPC file, stream or file format.
    Arrow,
    Parquet,
    /// JSON Lines, or a JSON array of objects.
    Json,
}

/// Column names (defaults `prompt`, `chosen`, `rejected`). Without a prompt column (the
/// default name absent from the data) the prompt is implicit in both responses (TRL).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Columns {
    pub prompt: Option<String>,
    pub chosen: Option<String>,
    pub rejected: Option<String>,
}

impl DataSource {
    pub fn new(path: impl Into<PathBuf>) -> DataSource {
        DataSource {
            path: path.into(),
            split: None,
            format: None,
            columns: Columns::default(),
        }
    }

    /// The format given, or the one the path says.
    pub fn format(&self) -> DataFormat {
        if let Some(f) = self.format {
            return f;
        }
        let ext = self.path.extension().and_then(|e| e.to_str()).unwrap_or("");
        match ext.to_ascii_lowercase().as_str() {
            _ if self.path.is_dir() => DataFormat::HfDataset,
            "parquet" => DataFormat::Parquet,
            "jsonl" | "json" | "ndjson" => DataFormat::Json,
            _ => DataFormat::Arrow,
        }
    }
}

/// A split's cells, whatever the format: the prompt column (absent: implicit) and both responses.
struct Table {
    file: PathBuf,
    prompt: Option<Vec<Cell>>,
    chosen: Vec<Cell>,
    rejected: Vec<Cell>,
}

/// Every pair of the split `source` names, in its order; no rows is an error.
pub fn read_pairs(source: &DataSource) -> Result<Vec<PreferencePair>, DataError> {
    let names = [
        source.columns.prompt.as_deref().unwrap_or("prompt"),
        source.columns.chosen.as_deref().unwrap_or("chosen"),
        source.columns.rejected.as_deref().unwrap_or("rejected"),
    ];
    let table = match source.format() {
        DataFormat::Json => json_table(&source.path, names, source.columns.prompt.is_some())?,
        DataFormat::HfDataset => {
            let files = dataset_files(&source.path, source.split.as_deref())?;
            arrow_table(&files, names, source.columns.prompt.is_some())?
        }
        DataFormat::Arrow | DataFormat::Parquet => arrow_table(
            std::slice::from_ref(&source.path),
            names,
            source.columns.prompt.is_some(),
        )?,
    };
    if table.chosen.is_empty() {
        return Err(DataError::Empty {
            file: table.file,
            context: source.split.clone().map(|s| format!("split {s:?}")),
        });
    }
    let Table {
        file,
        prompt,
        chosen,
        rejected,
    } = table;
    let mut prompt = prompt.map(Vec::into_iter);
    chosen
        .into_iter()
        .zip(rejected)
        .enumerate()
        .map(|(row, pair)| {
            let p = prompt.as_mut().and_then(Iterator::next);
            pair_of((&file, row), p, pair, names)
        })
        .collect()
}

/// The cells of JSON rows; the prompt column only where present (or named: then required).
fn json_table(path: &Path, names: [&str; 3], prompt_named: bool) -> Result<Table, DataError> {
    let rows = jsonl::read_rows(path)?;
    let prompt = if prompt_named || jsonl::has_column(&rows, names[0]) {
        Some(jsonl::column_cells(path, &rows, ("prompt", names[0]))?)
    } else {
        None
    };
    Ok(Table {
        file: path.to_path_buf(),
        prompt,
        chosen: jsonl::column_cells(path, &rows, ("chosen response", names[1]))?,
        rejected: jsonl::column_cells(path, &rows, ("rejected response", names[2]))?,
    })
}

/// The cells of Arrow or Parquet files read in order (rows numbered across them).
fn arrow_table(
    files: &[PathBuf],
    names: [&str; 3],
    prompt_named: bool,
) -> Result<Table, DataError> {
    let mut t = Table {
        file: files.first().cloned().unwrap_or_default(),
        prompt: None,
        chosen: Vec::new(),
        rejected: Vec::new(),
    };
    for file in files {
        let batches = arrow_io::read_batches(file, Container::detect(file)?)?;
        let first = t.chosen.len();
        if prompt_named || arrow_io::has_column(&batches, names[0]) {
            let cells = arrow_io::column_cells(file, &batches, ("prompt", names[0]), first)?;
            t.prompt.get_or_insert_with(Vec::new).extend(cells);
        }
        t.chosen.extend(arrow_io::column_cells(
            file,
            &batches,
            ("chosen response", names[1]),
            first,
        )?);
        t.rejected.extend(arrow_io::column_cells(
            file,
            &batches,
            ("rejected response", names[2]),
            first,
        )?);
    }
    Ok(t)
}

/// The Arrow files of one split of a `save_to_disk` folder: `dir` holds `dataset_dict.json`
/// (its `splits`; `split` picks one, needed where there are several) or is one split
/// (`state.json`, whose `_data_files` name the files).
fn dataset_files(dir: &Path, split: Option<&str>) -> Result<Vec<PathBuf>, DataError> {
    let dict = dir.join("dataset_dict.json");
    let split_dir = if dict.is_file() {
        let listed = json_field::<Vec<String>>(&dict, "splits")?;
        let name = match (split, listed.as_slice()) {
            (Some(s), _) => s.to_string(),
            (None, [only]) => only.clone(),
            (None, _) => return Err(DataError::WhichSplit { file: dict, listed }),
        };
        if !listed.contains(&name) {
            return Err(DataError::NoSplit {
                file: dict,
                split: name,
                listed,
            });
        }
        dir.join(&name)
    } else {
        dir.to_path_buf()
    };
    let state = split_dir.join("state.json");
    if !state.is_file() {
        return Err(DataError::Missing {
            file: state,
            context: Some("a save_to_disk split holds state.json and its Arrow files".into()),
        });
    }
    let files = json_field::<Vec<serde_json::Value>>(&state, "_data_files")?;
    files
        .iter()
        .map(|f| match f.get("filename").and_then(|v| v.as_str()) {
            Some(name) => Ok(split_dir.join(name)),
            None => Err(DataError::Malformed {
                file: state.clone(),
                row: None,
                why: "an entry of _data_files has no filename".into(),
            }),
        })
        .collect()
}

/// The field `key` of the JSON object in `path`.
fn json_field<T: serde::de::DeserializeOwned>(path: &Path, key: &str) -> Result<T, DataError> {
    let bad = |why: String| DataError::Malformed {
        file: path.to_path_buf(),
        row: None,
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let field = v
        .get(key)
        .cloned()
        .ok_or_else(|| bad(format!("no {key:?}")))?;
    serde_json::from_value(field).map_err(|e| bad(format!("{key:?}: {e}")))
}
