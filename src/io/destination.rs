//! What an output may replace, and which paths it must never touch (its own inputs).
//!
//! - A folder output replaces, with `--force`, only a folder marked as the same kind of rmflow
//!   output: a run ([`RUN_MARKERS`]) for the commands that write runs, a checkpoint
//!   ([`CHECKPOINT_MARKERS`]) for the commands that write model folders. A checkpoint is an input
//!   to runs, never a run `--force` may replace. `--force --force-foreign` replaces any folder.
//! - A file output replaces, with `--force`, only a regular file that is an rmflow JSON output (a
//!   top-level `rmflow_version`); with [`Replace::Foreign`] any regular file. Never a symbolic
//!   link (it is not followed), a folder, a device or a FIFO.
//! - [`check_not_overwriting_input`]: the output is not an input, does not contain one, and does
//!   not lie inside an input folder.

use crate::error::InputError;
use anyhow::Result;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Files whose presence marks a folder as an rmflow run that `--force` may replace.
pub const RUN_MARKERS: [&str; 5] = [
    "summary.json",
    "setup.json",
    "lm.json",
    "sweep.csv",
    "recipe.json",
];

/// Files whose presence marks a folder as a model folder rmflow wrote (`lm-convert`,
/// `lm-import-gguf`, `lm-tiny`).
pub const CHECKPOINT_MARKERS: [&str; 2] = ["rmflow-convert.json", "rmflow-import.json"];

/// The largest file read to decide whether it is an rmflow JSON output.
const MAX_OUTPUT_FILE_PROBE: u64 = 1 << 28;

/// What may be replaced at an existing destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Refuse any existing destination.
    Never,
    /// Replace an rmflow output of the same kind (see the module doc).
    RmflowOutput,
    /// Replace any folder or regular file (`--force --force-foreign`).
    Foreign,
}

impl Replace {
    /// From the command-line flags.
    pub fn from_flags(force: bool, force_foreign: bool) -> Replace {
        match (force, force_foreign) {
            (_, true) => Replace::Foreign,
            (true, false) => Replace::RmflowOutput,
            (false, false) => Replace::Never,
        }
    }
}

/// The kind of output being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// A run folder (`simulate`, `dynamics`, `sweep`, `lm`, `lm-recipe`).
    Run,
    /// A model folder (`lm-convert`, `lm-import-gguf`, `lm-tiny`).
    Checkpoint,
    /// A single file (`verify --json`, `lm-forward`, a sweep shard, a figure's data).
    File,
}

impl OutputKind {
    fn markers(self) -> &'static [&'static str] {
        match self {
            OutputKind::Run => &RUN_MARKERS,
            OutputKind::Checkpoint => &CHECKPOINT_MARKERS,
            OutputKind::File => &[],
        }
    }
}

/// The folder holding `dest` and its final name.
pub(crate) fn parent_and_name(dest: &Path) -> Result<(PathBuf, String)> {
    let name = dest
        .file_name()
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .ok_or_else(|| InputError(format!("output path {} has no final name", dest.display())))?
        .to_string_lossy()
        .into_owned();
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name))
}

/// Whether `path` is a regular file holding a JSON object with `rmflow_version`.
fn is_rmflow_json(path: &Path) -> bool {
    let Ok(f) = fs::File::open(path) else {
        return false;
    };
    let mut text = String::new();
    if f.take(MAX_OUTPUT_FILE_PROBE)
        .read_to_string(&mut text)
        .is_err()
    {
        return false;
    }
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("rmflow_version").cloned())
        .is_some()
}

fn refuse(message: String) -> Result<()> {
    Err(InputError(message).into())
}

/// Checks that `dest` may be written under `replace` as an output of `kind`.
pub(crate) fn check_destination(dest: &Path, replace: Replace, kind: OutputKind) -> Result<()> {
    let Ok(meta) = fs::symlink_metadata(dest) else {
        return Ok(());
    };
    let what = if kind == OutputKind::File {
        "output file"
    } else {
        "output folder"
    };
    let d = dest.display();
    if replace == Replace::Never {
        return refuse(format!(
            "{what} {d} already exists (pass --force to replace it)"
        ));
    }
    if meta.file_type().is_symlink() {
        return refuse(format!(
            "{d} is a symbolic link; rmflow does not replace links or follow them for an output (name the target itself)"
        ));
    }
    if kind == OutputKind::File {
        return check_file_destination(dest, &meta, replace);
    }
    if !meta.is_dir() {
        return refuse(format!(
            "{d} exists and is not a folder; refusing to replace it with an output folder"
        ));
    }
    let markers = kind.markers();
    let marked = markers.iter().any(|m| dest.join(m).is_file());
    if !marked && replace != Replace::Foreign {
        let other = if kind == OutputKind::Run {
            CHECKPOINT_MARKERS.iter().find(|m| dest.join(m).is_file())
        } else {
            RUN_MARKERS.iter().find(|m| dest.join(m).is_file())
        };
        let why = match other {
            Some(m) if kind == OutputKind::Run => {
                format!("it is a model folder ({m} inside), not a run")
            }
            Some(m) => format!("it is a run ({m} inside), not a model folder"),
            None => format!(
                "it does not look like an rmflow output (none of {} inside)",
                markers.join(", ")
            ),
        };
        return refuse(format!(
            "refusing to replace {d} with --force alone: {why} (add --force-foreign to replace it anyway)"
        ));
    }
    Ok(())
}

fn check_file_destination(dest: &Path, meta: &fs::Metadata, replace: Replace) -> Result<()> {
    let d = dest.display();
    if meta.is_dir() {
        return refuse(format!(
            "{d} is a folder; refusing to replace it with an output file"
        ));
    }
    if !meta.is_file() {
        return refuse(format!(
            "{d} is not a regular file (a device, FIFO or socket); refusing to replace it"
        ));
    }
    if replace != Replace::Foreign && !is_rmflow_json(dest) {
        return refuse(format!(
            "refusing to replace {d} with --force: it is not an rmflow output (no JSON rmflow_version inside); remove it by hand or choose another path"
        ));
    }
    Ok(())
}

/// `p` made absolute with symbolic links resolved, as far as it exists.
fn canonical(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = fs::canonicalize(p) {
        return Some(c);
    }
    let (parent, name) = parent_and_name(p).ok()?;
    Some(canonical(&parent)?.join(name))
}

/// Errors if the output `output` would overwrite or sit inside the input `input`: the output
/// is the input, contains it, or (an input folder, such as a model) lies inside it.
pub fn check_not_overwriting_input(input: &Path, output: &Path) -> Result<()> {
    let (Some(i), Some(o)) = (canonical(input), canonical(output)) else {
        return Ok(());
    };
    let input_folder = i.is_dir();
    let clash = if i == o {
        "is"
    } else if i.starts_with(&o) {
        "contains"
    } else if input_folder && o.starts_with(&i) {
        "lies inside"
    } else {
        return Ok(());
    };
    refuse(format!(
        "the output {} would overwrite the input {} {} (the output {clash} it); choose another --out",
        output.display(),
        if input_folder { "folder" } else { "file" },
        input.display()
    ))
}

/// [`check_not_overwriting_input`] for every input of a command.
pub fn check_inputs<'a>(inputs: impl IntoIterator<Item = &'a Path>, output: &Path) -> Result<()> {
    inputs
        .into_iter()
        .try_for_each(|i| check_not_overwriting_input(i, output))
}
