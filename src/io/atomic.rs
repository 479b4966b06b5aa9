//! Output that is never half-written and never lost: every folder and file is built under a
//! temporary sibling and moved onto its destination only when complete.
//!
//! Rules shared by every command (`simulate`, `dynamics`, `sweep`, `lm`, `verify --json`):
//! - the destination is checked, and the temporary created, *before* any computation, so a path
//!   typo fails at once;
//! - an existing destination is replaced only with `--force`, and only if it looks like an rmflow
//!   output ([`RUN_MARKERS`]) unless the caller allows any folder ([`Replace::AnyFolder`]);
//! - replacing swaps the two folders atomically (Linux `renameat2(RENAME_EXCHANGE)`; elsewhere the
//!   old folder is renamed aside, the new one moved in, and the old one restored if that fails),
//!   then deletes the old one: at no moment are both the old and the new results gone;
//! - temporaries are named `.NAME.tmp-PID`; ones left by a killed process (PID no longer alive)
//!   are removed the next time the same destination is written.

use crate::error::InputError;
use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// Files whose presence marks a folder as an rmflow output that `--force` may replace.
pub const RUN_MARKERS: [&str; 5] = [
    "summary.json",
    "setup.json",
    "lm.json",
    "sweep.csv",
    "rmflow-convert.json",
];

/// What may be replaced at an existing destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Refuse any existing destination.
    Never,
    /// Replace an rmflow output folder (one of [`RUN_MARKERS`] inside) or an existing file.
    RmflowOutput,
    /// Replace any folder (`--force --force-foreign`).
    AnyFolder,
}

impl Replace {
    /// From the command-line flags.
    pub fn from_flags(force: bool, force_foreign: bool) -> Replace {
        match (force, force_foreign) {
            (_, true) => Replace::AnyFolder,
            (true, false) => Replace::RmflowOutput,
            (false, false) => Replace::Never,
        }
    }
}

fn parent_and_name(dest: &Path) -> Result<(PathBuf, String)> {
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

/// Whether process `pid` is alive (Linux: `/proc/PID`; elsewhere assumed alive, so nothing is
/// removed that might belong to a running process).
fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

/// Removes `.NAME.tmp-PID` siblings whose process is gone (left by a kill).
fn clean_stale_temporaries(parent: &Path, name: &str) {
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = file
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !process_alive(pid) {
            let p = e.path();
            let _ = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
        }
    }
}

/// Checks that `dest` may be written under `replace`; `folder` says what kind of output it is.
fn check_destination(dest: &Path, replace: Replace, folder: bool) -> Result<()> {
    let meta = match fs::symlink_metadata(dest) {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    let kind = if folder {
        "output folder"
    } else {
        "output file"
    };
    if replace == Replace::Never {
        return Err(InputError(format!(
            "{kind} {} already exists (pass --force to replace it)",
            dest.display()
        ))
        .into());
    }
    if folder {
        if !meta.is_dir() {
            return Err(InputError(format!(
                "{} exists and is not a folder; refusing to replace it with an output folder",
                dest.display()
            ))
            .into());
        }
        let marked = RUN_MARKERS.iter().any(|m| dest.join(m).is_file());
        if !marked && replace != Replace::AnyFolder {
            return Err(InputError(format!(
                "{} does not look like an rmflow output (none of {} inside); refusing to replace it with --force alone (add --force-foreign to replace it anyway)",
                dest.display(),
                RUN_MARKERS.join(", ")
            ))
            .into());
        }
    } else if meta.is_dir() {
        return Err(InputError(format!(
            "{} is a folder; refusing to replace it with an output file",
            dest.display()
        ))
        .into());
    }
    Ok(())
}

fn prepare(dest: &Path, replace: Replace, folder: bool) -> Result<PathBuf> {
    check_destination(dest, replace, folder)?;
    let (parent, name) = parent_and_name(dest)?;
    fs::create_dir_all(&parent).map_err(|e| {
        InputError(format!(
            "cannot create the output's parent folder {}: {e}",
            parent.display()
        ))
    })?;
    clean_stale_temporaries(&parent, &name);
    Ok(parent.join(format!(".{name}.tmp-{}", std::process::id())))
}

/// Atomically exchanges two paths (Linux `renameat2(RENAME_EXCHANGE)`); `false` if unsupported.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes())?;
    let cb = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both pointers are valid NUL-terminated paths for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOSYS) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(false),
        _ => Err(err),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> std::io::Result<bool> {
    Ok(false)
}

/// Moves the finished `temp` onto `dest`, replacing what is there without ever losing both. On
/// failure the old `dest` is in place and the new output is kept at a visible sibling, named in
/// the error.
fn install(temp: &Path, dest: &Path, replace: Replace, folder: bool) -> Result<()> {
    let keep_new = |why: String| -> anyhow::Error {
        let (parent, name) = parent_and_name(dest).unwrap_or((PathBuf::from("."), "out".into()));
        let kept = parent.join(format!("{name}.new-{}", std::process::id()));
        match fs::rename(temp, &kept) {
            Ok(()) => anyhow::anyhow!(
                "{why}; {} is unchanged and the new results are at {}",
                dest.display(),
                kept.display()
            ),
            Err(_) => anyhow::anyhow!(
                "{why}; {} is unchanged and the new results are at {}",
                dest.display(),
                temp.display()
            ),
        }
    };
    if fs::symlink_metadata(dest).is_err() {
        return fs::rename(temp, dest).map_err(|e| {
            keep_new(format!(
                "cannot move the output onto {}: {e}",
                dest.display()
            ))
        });
    }
    // The destination appeared or was there from the start: check again, then swap.
    if let Err(e) = check_destination(dest, replace, folder) {
        return Err(keep_new(format!("{e:#}")));
    }
    let old_at = match exchange(temp, dest) {
        Ok(true) => temp.to_path_buf(),
        Ok(false) => {
            let (parent, name) = parent_and_name(dest)?;
            let aside = parent.join(format!("{name}.old-{}", std::process::id()));
            fs::rename(dest, &aside).map_err(|e| {
                keep_new(format!("cannot move the old {} aside: {e}", dest.display()))
            })?;
            if let Err(e) = fs::rename(temp, dest) {
                let _ = fs::rename(&aside, dest);
                return Err(keep_new(format!(
                    "cannot move the output onto {}: {e}",
                    dest.display()
                )));
            }
            aside
        }
        Err(e) => {
            return Err(keep_new(format!(
                "cannot swap the output into {}: {e}",
                dest.display()
            )))
        }
    };
    let removed = if fs::symlink_metadata(&old_at)
        .map(|m| m.is_dir())
        .unwrap_or(false)
    {
        fs::remove_dir_all(&old_at)
    } else {
        fs::remove_file(&old_at)
    };
    if let Err(e) = removed {
        eprintln!(
            "warning: the new output is in place at {}, but the replaced one could not be removed from {}: {e} (remove it by hand)",
            dest.display(),
            old_at.display()
        );
    }
    Ok(())
}

/// A folder under construction; moved onto its destination by [`AtomicDir::commit`], removed if
/// dropped before that (an error leaves no partial output).
pub struct AtomicDir {
    temp: PathBuf,
    dest: PathBuf,
    replace: Replace,
    committed: bool,
}

impl AtomicDir {
    /// Checks `dest` (see the module rules) and creates the temporary folder now.
    pub fn create(dest: &Path, replace: Replace) -> Result<AtomicDir> {
        let temp = prepare(dest, replace, true)?;
        if fs::symlink_metadata(&temp).is_ok() {
            fs::remove_dir_all(&temp)
                .with_context(|| format!("cannot clear stale {}", temp.display()))?;
        }
        fs::create_dir(&temp).map_err(|e| {
            InputError(format!(
                "cannot create a folder beside {}: {e}",
                dest.display()
            ))
        })?;
        Ok(AtomicDir {
            temp,
            dest: dest.to_path_buf(),
            replace,
            committed: false,
        })
    }

    /// Path of `rel` inside the folder under construction, its parent folders created.
    pub fn path(&self, rel: &str) -> Result<PathBuf> {
        let p = self.temp.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        Ok(p)
    }

    /// Moves the finished folder onto its destination.
    pub fn commit(mut self) -> Result<PathBuf> {
        install(&self.temp, &self.dest, self.replace, true)?;
        self.committed = true;
        Ok(self.dest.clone())
    }
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        if !self.committed && fs::symlink_metadata(&self.temp).is_ok() {
            let _ = fs::remove_dir_all(&self.temp);
        }
    }
}

/// A file under construction: the temporary is created at once (so a bad path fails before any
/// computation), filled by [`AtomicFile::commit`], and moved onto the destination.
pub struct AtomicFile {
    temp: PathBuf,
    dest: PathBuf,
    replace: Replace,
    committed: bool,
}

impl AtomicFile {
    /// Checks `dest` and creates the (empty) temporary now.
    pub fn create(dest: &Path, replace: Replace) -> Result<AtomicFile> {
        let temp = prepare(dest, replace, false)?;
        fs::write(&temp, b"").map_err(|e| {
            InputError(format!(
                "cannot create a file beside {}: {e}",
                dest.display()
            ))
        })?;
        Ok(AtomicFile {
            temp,
            dest: dest.to_path_buf(),
            replace,
            committed: false,
        })
    }

    /// Writes `text` and moves the file onto its destination.
    pub fn commit(mut self, text: &str) -> Result<PathBuf> {
        fs::write(&self.temp, text)
            .with_context(|| format!("cannot write {}", self.temp.display()))?;
        install(&self.temp, &self.dest, self.replace, false)?;
        self.committed = true;
        Ok(self.dest.clone())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Writes `text` to `path` through a temporary sibling and a rename (no partial file on error),
/// replacing an existing file.
pub fn write_text_atomically(path: &Path, text: &str) -> Result<()> {
    AtomicFile::create(path, Replace::RmflowOutput)?.commit(text)?;
    Ok(())
}

/// Errors if `input` lies at `output` or inside it (a run must never overwrite its own config).
pub fn check_not_overwriting_input(input: &Path, output: &Path) -> Result<()> {
    let canon = |p: &Path| -> Option<PathBuf> {
        if let Ok(c) = fs::canonicalize(p) {
            return Some(c);
        }
        let (parent, name) = parent_and_name(p).ok()?;
        Some(fs::canonicalize(parent).ok()?.join(name))
    };
    if let (Some(i), Some(o)) = (canon(input), canon(output)) {
        if i == o || i.starts_with(&o) {
            return Err(InputError(format!(
                "the output {} would overwrite the input {}; choose another --out",
                output.display(),
                input.display()
            ))
            .into());
        }
    }
    Ok(())
}
