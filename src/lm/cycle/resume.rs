//! What the cycle keeps in its checkpoints beside the trainer's ([`crate::lm::train::resume`]):
//! the pretrained reference, built once (a resumed run copies it back instead of pretraining
//! again; a run killed while pretraining pretrains again, which gives the same weights), and the
//! observations so far (every evaluation's record, the IM-RM's per-prompt generations and masses,
//! `ln π_ref(C|x)` per prompt).

use super::pretrain::PretrainStep;
use super::run::{CycleEpoch, PromptRecord};
use crate::lm::train::resume::Observed;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What the cycle measured beside the trainer, in evaluation order.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Observations {
    pub(super) epochs: Vec<CycleEpoch>,
    pub(super) prompts: Vec<PromptRecord>,
    /// `ln π_ref(C|x)` per evaluated prompt, from the IM-RM's epoch-0 evaluation.
    pub(super) reference_masses: Option<Vec<f64>>,
}

impl Observations {
    /// The observations a resumed run starts from (none for a new run).
    pub(super) fn restore(slot: &Observed) -> Result<Observations> {
        match slot.borrow().as_deref() {
            None => Ok(Observations::default()),
            Some(bytes) => Observations::decode(bytes),
        }
    }

    fn decode(bytes: &[u8]) -> Result<Observations> {
        ciborium::from_reader(bytes)
            .map_err(|e| anyhow::anyhow!("the checkpoint's cycle observations: {e}"))
    }

    /// Replaces the checkpoints' copy with these.
    pub(super) fn store(&self, slot: &Observed) -> Result<()> {
        let mut bytes = Vec::new();
        ciborium::into_writer(self, &mut bytes)
            .map_err(|e| anyhow::anyhow!("cannot encode the cycle observations: {e}"))?;
        *slot.borrow_mut() = Some(bytes);
        Ok(())
    }
}

/// The evaluations and the per-prompt records in a checkpoint's observer state `bytes`
/// (`rmflow lm-progress`).
pub(super) fn recorded(bytes: &[u8]) -> Result<(Vec<CycleEpoch>, Vec<PromptRecord>)> {
    let o = Observations::decode(bytes)?;
    Ok((o.epochs, o.prompts))
}

/// The pretraining's record kept beside the pretrained weights.
#[derive(Serialize, Deserialize)]
struct Pretrained {
    history: Vec<PretrainStep>,
    seconds: f64,
}

/// The pretraining kept in `checkpoints/pretrained/`, its files copied into `reference`; `None`
/// where there is none yet.
pub(super) fn saved_pretraining(
    checkpoints: &Path,
    reference: &Path,
) -> Result<Option<(Vec<PretrainStep>, f64)>> {
    let kept = checkpoints.join("pretrained");
    let record = kept.join("pretrain.cbor");
    if !record.is_file() {
        return Ok(None);
    }
    let bytes =
        std::fs::read(&record).with_context(|| format!("cannot read {}", record.display()))?;
    let p: Pretrained = ciborium::from_reader(bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("{}: unreadable: {e}", record.display()))?;
    std::fs::create_dir_all(reference)?;
    for e in std::fs::read_dir(&kept)?.flatten() {
        if e.file_name() != "pretrain.cbor" {
            std::fs::copy(e.path(), reference.join(e.file_name()))
                .with_context(|| format!("cannot copy {}", e.path().display()))?;
        }
    }
    Ok(Some((p.history, p.seconds)))
}

/// Keeps the pretrained `reference` and its record in `checkpoints/pretrained/` (written into a
/// temporary folder, then renamed: a kill leaves either all of it or nothing).
pub(super) fn save_pretraining(
    checkpoints: &Path,
    reference: &Path,
    history: &[PretrainStep],
    seconds: f64,
) -> Result<()> {
    let tmp = checkpoints.join("pretrained.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    for e in std::fs::read_dir(reference)?.flatten() {
        std::fs::copy(e.path(), tmp.join(e.file_name()))
            .with_context(|| format!("cannot copy {}", e.path().display()))?;
    }
    let mut bytes = Vec::new();
    let record = Pretrained {
        history: history.to_vec(),
        seconds,
    };
    ciborium::into_writer(&record, &mut bytes)
        .map_err(|e| anyhow::anyhow!("cannot encode the pretraining record: {e}"))?;
    std::fs::write(tmp.join("pretrain.cbor"), bytes)?;
    let kept = checkpoints.join("pretrained");
    std::fs::rename(&tmp, &kept).with_context(|| format!("cannot rename {}", tmp.display()))
}
