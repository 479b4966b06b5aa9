//! JSON Lines (one object per line) and JSON arrays of objects, as `datasets`' `json` loader
//! reads them: a column is a key, a string cell a string, a conversation a list of
//! `{role, content}` objects.

use super::shape::Message;
use super::{Cell, DataError};
use serde_json::Value;
use std::path::Path;

/// The rows of `path` (one JSON object each); blank lines are skipped, and row numbers count
/// the rows, not the lines.
pub fn read_rows(path: &Path) -> Result<Vec<serde_json::Map<String, Value>>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::Missing {
            file: path.to_path_buf(),
            context: None,
        },
        _ => malformed(path, None, e.to_string()),
    })?;
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| malformed(path, None, format!("not UTF-8 at byte {}", e.valid_up_to())))?;
        let rows: Vec<Value> =
            serde_json::from_str(text).map_err(|e| malformed(path, None, e.to_string()))?;
        return rows
            .into_iter()
            .enumerate()
            .map(|(i, v)| object(path, i, v))
            .collect();
    }
    let mut rows = Vec::new();
    for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let row = rows.len();
        let text = std::str::from_utf8(line).map_err(|e| {
            malformed(
                path,
                Some(row),
                format!("line {}: not UTF-8 at byte {}", n + 1, e.valid_up_to()),
            )
        })?;
        let v: Value = serde_json::from_str(text)
            .map_err(|e| malformed(path, Some(row), format!("line {}: {e}", n + 1)))?;
        rows.push(object(path, row, v)?);
    }
    Ok(rows)
}

fn object(path: &Path, row: usize, v: Value) -> Result<serde_json::Map<String, Value>, DataError> {
    match v {
        Value::Object(m) => Ok(m),
        other => Err(malformed(
            path,
            Some(row),
            format!("a row must be a JSON object, not {}", kind(&other)),
        )),
    }
}

fn malformed(path: &Path, row: Option<usize>, why: String) -> DataError {
    DataError::Malformed {
        file: path.to_path_buf(),
        row,
        why,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Whether the first row has the key `name`.
pub fn has_column(rows: &[serde_json::Map<String, Value>], name: &str) -> bool {
    rows.first().is_some_and(|r| r.contains_key(name))
}

/// The key `name` (the `role` it plays) of every row as a cell.
pub fn column_cells(
    path: &Path,
    rows: &[serde_json::Map<String, Value>],
    (role, name): (&'static str, &str),
) -> Result<Vec<Cell>, DataError> {
    if !has_column(rows, name) {
        return Err(DataError::NoColumn {
            file: path.to_path_buf(),
            role,
            column: name.to_string(),
            found: rows
                .first()
                .map(|r| r.keys().cloned().collect())
                .unwrap_or_default(),
        });
    }
    rows.iter()
        .enumerate()
        .map(|(row, r)| {
            let value = |why: String| DataError::Value {
                file: path.to_path_buf(),
                row,
                column: name.to_string(),
                why,
            };
            match r.get(name) {
                None => Err(value("missing".into())),
                Some(Value::String(s)) => Ok(Cell::Text(s.clone())),
                Some(Value::Array(items)) => messages(items).map(Cell::Messages).map_err(value),
                Some(other) => Err(value(format!(
                    "{}, expected a string or a list of {{role, content}} messages",
                    kind(other)
                ))),
            }
        })
        .collect()
}

fn messages(items: &[Value]) -> Result<Vec<Message>, String> {
    items
        .iter()
        .enumerate()
        .map(|(k, m)| {
            let field = |f: &str| match m.get(f) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(v) => Err(format!("message {k}: {f:?} is {}, not a string", kind(v))),
                None => Err(format!("message {k} has no {f:?}")),
            };
            Ok(Message {
                role: field("role")?,
                content: field("content")?,
            })
        })
        .collect()
}
