//! The flags and checks every resumable command shares (`lm-recipe`, `ham-cycle`):
//! `--checkpoint-every`, `--keep-checkpoints`, `--resume RUN_DIR`, and the comparison of a
//! resumed run's identity (`run.json`) with the arguments given.

use anyhow::Result;
use rmflow::error::InputError;
use rmflow::lm::train::resume::{checkpoint_dir_of, CheckpointDir, Replay};
use serde_json::Value;
use std::path::Path;

#[derive(clap::Args, Clone)]
pub struct CheckpointFlags {
    /// Write a checkpoint every N epochs into OUT.checkpoint/ (0: only on SIGTERM). It holds
    /// every trained tensor, the optimizers' moments and the history; the previous one stays
    /// valid until the next is complete; the folder is removed when the run's output is in
    /// place. CPU runs only.
    #[arg(long, default_value_t = 1)]
    pub checkpoint_every: usize,
    /// Keep every checkpoint (default: only the newest), and the folder after the run.
    #[arg(long)]
    pub keep_checkpoints: bool,
    /// Continue the run whose --out was RUN_DIR from its newest checkpoint (in
    /// RUN_DIR.checkpoint/). The run's config and options default to its own; given, they must
    /// equal them (a difference is refused, naming it). The outputs equal an uninterrupted
    /// run's. SIGTERM stops a run with exit code 5: after its current step or evaluation with a
    /// checkpoint, or at once while it scores sequences (resumed from its newest checkpoint,
    /// the sequences scored so far read back from the pass's journal).
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<std::path::PathBuf>,
    /// With --resume, where the newest checkpoint's weights (tensors.safetensors) are gone but
    /// its record (progress.cbor, run.json, LATEST) was kept: rebuild the weights by re-running
    /// its recorded optimizer steps from the model, each step's pairs, loss and batch accuracy
    /// checked bit for bit against the record and the rebuilt weights against its SHA-256; the
    /// recorded evaluations are not scored again. Costs the steps' time (not the
    /// evaluations'). Another build or CPU can round differently: a replay that departs from
    /// the record stops with exit code 4, naming the step, what differs and the machines.
    #[arg(long, requires = "resume")]
    pub replay: bool,
    /// With --replay: where a replayed step's loss or batch accuracy, or the rebuilt weights,
    /// depart from the record (another CPU's kernels round differently), go on with the rebuilt
    /// weights instead of stopping. Each departure is kept in the run's record and in its
    /// summary.json (`replay_drift`: step, what, recorded, replayed), so the run says which of
    /// its steps were computed twice and how far apart; its later evaluations read the rebuilt
    /// weights. The run is then not bit-identical to any uninterrupted run. Other pairs or step
    /// counts still stop it (exit 4): that is another run, not rounding.
    #[arg(long, requires = "replay")]
    pub allow_drift: bool,
}

impl CheckpointFlags {
    /// The checkpoints of the run whose output is `run_dir`, and its `run.json`.
    pub fn open(&self, run_dir: &Path) -> Result<(CheckpointDir, Value)> {
        let dir = checkpoint_dir_of(run_dir);
        if !dir.join("run.json").is_file() {
            return Err(InputError(format!(
                "--resume {}: no checkpoints in {} (was the run started with this --out?)",
                run_dir.display(),
                dir.display()
            ))
            .into());
        }
        CheckpointDir::open(
            &dir,
            self.checkpoint_every,
            self.keep_checkpoints,
            match (self.replay, self.allow_drift) {
                (false, _) => None,
                (true, false) => Some(Replay::Exact),
                (true, true) => Some(Replay::Drifting),
            },
        )
    }

    /// A new run's checkpoints beside `out`, its identity written as `run.json`.
    pub fn create(&self, out: &Path, identity: &Value) -> Result<CheckpointDir> {
        CheckpointDir::create(
            &checkpoint_dir_of(out),
            identity,
            self.checkpoint_every,
            self.keep_checkpoints,
        )
    }
}

/// After a run failed with `e`: its checkpoint folder removed where there is nothing to resume
/// (no checkpoint written, e.g. a bad input found while building the pairs), kept where SIGTERM
/// stopped it (what it computed once, the reference tables, is resumed from).
pub fn after_failure(checkpoints: CheckpointDir, e: &anyhow::Error) {
    let interrupted = rmflow::error::exit_code(e) == rmflow::error::EXIT_INTERRUPTED;
    if checkpoints.is_empty() && !interrupted {
        let _ = checkpoints.remove();
    }
}

/// Refuses a resume whose arguments describe another run than `saved` (the interrupted run's
/// identity), naming the first field that differs.
pub fn refuse_difference(saved: &Value, now: &Value, run_dir: &Path) -> Result<()> {
    match first_difference(saved, now, "") {
        None => Ok(()),
        Some(field) => Err(InputError(format!(
            "--resume {}: `{field}` differs from the interrupted run's ({} vs {}); resume with the run's own, or start a new run",
            run_dir.display(),
            pointer(saved, &field),
            pointer(now, &field)
        ))
        .into()),
    }
}

/// The first path at which `a` and `b` differ (`config.train.lr`), if any.
fn first_difference(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let (u, v) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                first_difference(u, v, &format!("{at}.{k}"))
            })
        }
        _ if a == b => None,
        _ => Some(at.trim_start_matches('.').to_string()),
    }
}

/// The value at a dotted path, for messages.
fn pointer(v: &Value, dotted: &str) -> String {
    let p = format!("/{}", dotted.replace('.', "/"));
    v.pointer(&p).map_or("absent".into(), |x| x.to_string())
}
