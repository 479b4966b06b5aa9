//! A statements file (`experiments/data/persona_statements.txt`): one statement per line, `#`
//! comments and blank lines skipped.

use anyhow::{bail, Result};
use std::path::Path;

/// The statements of the file at `path`, in order; an input error if it has none.
pub fn read_statements(path: &Path) -> Result<Vec<String>> {
    let text = crate::io::input::read_text(path, "statements file")?;
    let s: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    if s.is_empty() {
        bail!("statements file {} has no statements", path.display());
    }
    Ok(s)
}
