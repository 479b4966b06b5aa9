//! Input files read whole (configs, sweep files, statements, shard files, a model's JSON files):
//! only regular files, and at most [`MAX_TEXT_INPUT`] bytes, so that `/dev/zero`, a FIFO without
//! a writer or a mistyped multi-gigabyte path is refused at once instead of read forever.

use crate::error::InputError;
use std::io::Read;
use std::path::Path;

/// The largest text input rmflow reads (256 MiB); weights are memory-mapped, never read so.
pub const MAX_TEXT_INPUT: u64 = 256 << 20;

/// Errors unless `path` is a regular file (a folder, FIFO or device is refused without being
/// opened); any size: weights are memory-mapped, not read whole.
pub fn check_regular_file(path: &Path, what: &str) -> Result<std::fs::Metadata, InputError> {
    let p = path.display();
    let meta =
        std::fs::metadata(path).map_err(|e| InputError(format!("cannot read {what} {p}: {e}")))?;
    if meta.is_dir() {
        return Err(InputError(format!("{what} {p} is a folder, not a file")));
    }
    if !meta.is_file() {
        return Err(InputError(format!(
            "{what} {p} is not a regular file (a FIFO, device or socket); rmflow reads inputs only from regular files"
        )));
    }
    Ok(meta)
}

/// Why `path` cannot be read as a text input, if it cannot: missing, not a regular file, or
/// over [`MAX_TEXT_INPUT`].
pub fn check_regular(path: &Path, what: &str) -> Result<(), InputError> {
    let meta = check_regular_file(path, what)?;
    if meta.len() > MAX_TEXT_INPUT {
        return Err(InputError(format!(
            "{what} {} is {} bytes, above the {MAX_TEXT_INPUT}-byte limit for a text input",
            path.display(),
            meta.len()
        )));
    }
    Ok(())
}

/// The whole of the text file `path` (`what` names it in errors: "config", "statements file"…).
pub fn read_text(path: &Path, what: &str) -> Result<String, InputError> {
    check_regular(path, what)?;
    let p = path.display();
    let file = std::fs::File::open(path)
        .map_err(|e| InputError(format!("cannot read {what} {p}: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_TEXT_INPUT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| InputError(format!("cannot read {what} {p}: {e}")))?;
    if bytes.len() as u64 > MAX_TEXT_INPUT {
        return Err(InputError(format!(
            "{what} {p} is above the {MAX_TEXT_INPUT}-byte limit for a text input"
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        InputError(format!(
            "{what} {p} is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}
