//! Arrow IPC (stream and file format) and Parquet through the Apache Arrow crates: a file's
//! record batches, and a column of them as [`Cell`]s (strings, or lists of `{role, content}`
//! structs for conversations).

use super::shape::Message;
use super::{Cell, DataError};
use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use std::path::Path;

/// Which container a file is, from its first bytes: Arrow's file format opens with `ARROW1`,
/// Parquet with `PAR1`; anything else is read as an Arrow IPC stream (what `datasets`'
/// `save_to_disk` writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    Stream,
    File,
    Parquet,
}

impl Container {
    pub fn detect(path: &Path) -> Result<Container, DataError> {
        let mut head = [0u8; 6];
        let n = {
            use std::io::Read;
            let mut f = open(path)?;
            f.read(&mut head).map_err(|e| malformed(path, e))?
        };
        Ok(match &head[..n] {
            b"ARROW1" => Container::File,
            [b'P', b'A', b'R', b'1', ..] => Container::Parquet,
            _ => Container::Stream,
        })
    }
}

fn open(path: &Path) -> Result<std::fs::File, DataError> {
    std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::Missing {
            file: path.to_path_buf(),
            context: None,
        },
        _ => malformed(path, e),
    })
}

fn malformed(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Malformed {
        file: path.to_path_buf(),
        row: None,
        why: e.to_string(),
    }
}

/// Every record batch of `path` read as `container`; an empty (0-byte) or truncated file is an
/// error naming it.
pub fn read_batches(path: &Path, container: Container) -> Result<Vec<RecordBatch>, DataError> {
    let file = open(path)?;
    if file.metadata().map(|m| m.len()).unwrap_or(1) == 0 {
        return Err(DataError::Empty {
            file: path.to_path_buf(),
            context: Some("the file is 0 bytes".into()),
        });
    }
    let bad = |e: &dyn std::fmt::Display| {
        malformed(
            path,
            format!("not a readable {container:?} file ({e}); truncated?"),
        )
    };
    match container {
        Container::Stream => {
            let reader =
                arrow_ipc::reader::StreamReader::try_new(std::io::BufReader::new(file), None)
                    .map_err(|e| bad(&e))?;
            reader.collect::<Result<Vec<_>, _>>().map_err(|e| bad(&e))
        }
        Container::File => {
            let reader = arrow_ipc::reader::FileReader::try_new(file, None).map_err(|e| bad(&e))?;
            reader.collect::<Result<Vec<_>, _>>().map_err(|e| bad(&e))
        }
        Container::Parquet => {
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .and_then(|b| b.build())
                    .map_err(|e| bad(&e))?;
            reader.collect::<Result<Vec<_>, _>>().map_err(|e| bad(&e))
        }
    }
}

/// Whether `batches` have a column `name` (the first batch's schema; all share it).
pub fn has_column(batches: &[RecordBatch], name: &str) -> bool {
    batches
        .first()
        .is_some_and(|b| b.schema().column_with_name(name).is_some())
}

/// Column `name` of `batches` (the `role` it plays) as one cell per row, rows counted from
/// `first_row`; a missing column, another type, a null or a message without a string `role` and
/// `content` is an error naming the file, column and row.
pub fn column_cells(
    file: &Path,
    batches: &[RecordBatch],
    (role, name): (&'static str, &str),
    first_row: usize,
) -> Result<Vec<Cell>, DataError> {
    let mut out = Vec::new();
    for b in batches {
        let Some(column) = b.column_by_name(name) else {
            return Err(DataError::NoColumn {
                file: file.to_path_buf(),
                role,
                column: name.to_string(),
                found: b
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect(),
            });
        };
        for i in 0..column.len() {
            let row = first_row + out.len();
            out.push(cell(file, column, i, (name, row))?);
        }
    }
    Ok(out)
}

/// Row `i` of `column` as a cell.
fn cell(
    file: &Path,
    column: &ArrayRef,
    i: usize,
    (name, row): (&str, usize),
) -> Result<Cell, DataError> {
    let value = |why: String| DataError::Value {
        file: file.to_path_buf(),
        row,
        column: name.to_string(),
        why,
    };
    if column.is_null(i) {
        return Err(value("null".into()));
    }
    if let Some(s) = text(column, i) {
        return Ok(Cell::Text(s));
    }
    let turns = match column.data_type() {
        DataType::List(_) => column.as_list::<i32>().value(i),
        DataType::LargeList(_) => column.as_list::<i64>().value(i),
        other => {
            return Err(DataError::Type {
                file: file.to_path_buf(),
                column: name.to_string(),
                found: other.to_string(),
            })
        }
    };
    let Some(turns) = turns.as_struct_opt() else {
        return Err(DataError::Type {
            file: file.to_path_buf(),
            column: name.to_string(),
            found: column.data_type().to_string(),
        });
    };
    let field = |f: &str| {
        turns
            .column_by_name(f)
            .ok_or_else(|| value(format!("a message has no {f:?} field")))
    };
    let (roles, contents) = (field("role")?, field("content")?);
    (0..turns.len())
        .map(|k| {
            let get = |a: &ArrayRef, f: &str| {
                (!a.is_null(k))
                    .then(|| text(a, k))
                    .flatten()
                    .ok_or_else(|| {
                        value(format!(
                            "message {k}: {f:?} is not a string ({})",
                            a.data_type()
                        ))
                    })
            };
            Ok(Message {
                role: get(roles, "role")?,
                content: get(contents, "content")?,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Cell::Messages)
}

/// Row `i` of a string array (`Utf8`, `LargeUtf8`, `Utf8View`), or `None` for another type.
fn text(a: &ArrayRef, i: usize) -> Option<String> {
    match a.data_type() {
        DataType::Utf8 => Some(a.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Some(a.as_string::<i64>().value(i).to_string()),
        DataType::Utf8View => Some(a.as_string_view().value(i).to_string()),
        _ => None,
    }
}
