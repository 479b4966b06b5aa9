//! Scoring passes a kill does not restart. An evaluation or the IM-RM's reference pass scores
//! every sequence in chunks (one forward each); on a preference dataset one pass takes most of an
//! hour on a CPU, longer than a step by far. With checkpoints, each chunk's values are appended
//! to a journal in the checkpoint folder as soon as they are scored
//! (`scoring-<reward>-<mode>-<pass>.cbor`: a header naming the pass and its chunks, then one
//! record per chunk done, CBOR: exact f64). A resumed run that starts the same pass reads the
//! chunks done back and scores only the others.
//!
//! The result equals an uninterrupted pass's bit for bit: a resumed run's model is the
//! uninterrupted run's (its tensors are restored exactly and its steps replayed as they ran), the
//! chunks are the same (they depend only on the sequences), and a chunk's values depend only on
//! the chunk and the model. A record cut short by a kill, or a journal of another pass (another
//! run's, an edited file), is dropped from where it stops matching: those chunks are scored
//! again. A journal that cannot be written (a full disk) only costs the resume: the pass goes on
//! without it, saying so.

use super::epochs::TrainEvent;
use super::resume::{interrupt_point, test_hook, Checkpoints};
use anyhow::Result;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What a journal holds first: the pass it belongs to and its chunks' sizes.
#[derive(Serialize, Deserialize, PartialEq)]
struct Header {
    pass: String,
    chunk_sizes: Vec<usize>,
}

/// One chunk's values `V` (a list: one per sequence, in chunk order).
#[derive(Serialize, Deserialize)]
struct Record<V> {
    chunk: usize,
    sequences: Vec<usize>,
    values: V,
}

/// A report of a pass's progress.
type Report<'e> = &'e mut dyn FnMut(TrainEvent) -> Result<()>;

/// One scoring pass over chunks of sequences: kept in a journal where the run keeps one
/// ([`Checkpoints::kept_path`]), its progress reported as [`TrainEvent::Scored`].
pub(crate) struct Pass<'e> {
    /// Names the pass in the journal's header and file name (reward model, mode, what is scored).
    name: String,
    /// The stage the pass is, as progress shows it (`evaluating every split after epoch 2`).
    stage: String,
    journal: Option<PathBuf>,
    report: Option<Report<'e>>,
}

impl<'e> Pass<'e> {
    /// A pass with neither journal nor reports (checks, a model's log-probabilities).
    pub(crate) fn plain() -> Pass<'static> {
        Pass {
            name: String::new(),
            stage: String::new(),
            journal: None,
            report: None,
        }
    }

    /// The pass `name` (`exrm-full-evaluation-after-step-000014`) of the progress stage `stage`,
    /// journaled where `checkpoints` keeps files.
    pub(crate) fn kept(
        (name, stage): (String, &str),
        checkpoints: &dyn Checkpoints,
        report: Report<'e>,
    ) -> Self {
        let Journal(journal) = Journal::of(&name, checkpoints);
        Pass {
            name,
            stage: stage.to_string(),
            journal,
            report: Some(report),
        }
    }

    /// `score` of every chunk (the values of each of its sequences), in chunk order: the chunks
    /// the journal holds read back, the others scored and appended to it. Stops at the next chunk
    /// once SIGTERM arrives (an [`interrupt_point`]).
    pub(crate) fn run<T: Serialize + DeserializeOwned>(
        &mut self,
        chunks: &[Vec<usize>],
        mut score: impl FnMut(&[usize]) -> Result<Vec<T>>,
    ) -> Result<Vec<(usize, T)>> {
        let header = Header {
            pass: self.name.clone(),
            chunk_sizes: chunks.iter().map(Vec::len).collect(),
        };
        let total: usize = header.chunk_sizes.iter().sum();
        let (mut out, done, mut writer) = self.open(&header, chunks)?;
        if done > 0 {
            self.event(TrainEvent::Stage(format!(
                "{}, resumed: {} of {total} sequences read back from the scoring journal",
                self.stage,
                out.len()
            )))?;
        }
        for (k, chunk) in chunks.iter().enumerate().skip(done) {
            interrupt_point("scoring sequences")?;
            let values = score(chunk)?;
            if let Some(w) = writer.as_mut() {
                if let Err(e) = append(w, k, chunk, &values) {
                    writer = None;
                    self.event(TrainEvent::Stage(format!(
                        "cannot append to the scoring journal ({e}); the pass goes on without it"
                    )))?;
                }
            }
            out.extend(chunk.iter().copied().zip(values));
            self.event(TrainEvent::Scored {
                sequences: out.len(),
                of: total,
            })?;
            static CHUNKS: AtomicUsize = AtomicUsize::new(0);
            test_hook("scored-chunk", CHUNKS.fetch_add(1, Ordering::Relaxed) + 1);
        }
        Ok(out)
    }

    /// Removes the journal: its pass's values are kept elsewhere now (an evaluation in the next
    /// checkpoint).
    pub(crate) fn finish(self) {
        self.journal().remove();
    }

    /// The pass's journal, to remove once what it holds is kept elsewhere (the reference
    /// tables, after both their passes).
    pub(crate) fn journal(self) -> Journal {
        Journal(self.journal)
    }

    /// Reports the pass's stage as started.
    pub(crate) fn begin(&mut self) -> Result<()> {
        self.event(TrainEvent::Stage(self.stage.clone()))
    }

    /// Reports `e` where the pass reports.
    fn event(&mut self, e: TrainEvent) -> Result<()> {
        match self.report.as_mut() {
            Some(report) => report(e),
            None => Ok(()),
        }
    }

    /// The values the journal holds for `header`'s pass (its valid records, in order), how many
    /// chunks they make, and the journal opened for appending after them; a journal of another
    /// pass is started anew.
    #[allow(clippy::type_complexity)]
    fn open<T: DeserializeOwned>(
        &mut self,
        header: &Header,
        chunks: &[Vec<usize>],
    ) -> Result<(Vec<(usize, T)>, usize, Option<std::fs::File>)> {
        let Some(path) = self.journal.clone() else {
            return Ok((Vec::new(), 0, None));
        };
        let (values, done, valid) = std::fs::read(&path)
            .map(|bytes| read_records(&bytes, header, chunks))
            .unwrap_or_default();
        let opened = if valid > 0 {
            std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .and_then(|f| f.set_len(valid as u64).map(|()| f))
        } else {
            encode(header).and_then(|bytes| {
                let mut f = std::fs::File::create(&path)?;
                f.write_all(&bytes)?;
                Ok(f)
            })
        };
        match opened {
            Ok(f) => Ok((values, done, Some(f))),
            Err(e) => {
                self.event(TrainEvent::Stage(format!(
                    "cannot write the scoring journal {} ({e}); the pass goes on without it",
                    path.display()
                )))?;
                Ok((values, done, None))
            }
        }
    }
}

/// A finished pass's journal file, if it has one.
pub(crate) struct Journal(Option<PathBuf>);

impl Journal {
    /// The journal of the pass `name`, where `checkpoints` keeps files (none where it keeps none).
    pub(crate) fn of(name: &str, checkpoints: &dyn Checkpoints) -> Journal {
        Journal(checkpoints.kept_path(&format!("scoring-{name}.cbor")))
    }

    pub(crate) fn remove(self) {
        if let Some(path) = self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The values of the journal's records that continue `header`'s pass chunk by chunk, how many
/// chunks they are, and the length of the bytes up to their end (0 where the header is another
/// pass's).
fn read_records<T: DeserializeOwned>(
    bytes: &[u8],
    header: &Header,
    chunks: &[Vec<usize>],
) -> (Vec<(usize, T)>, usize, usize) {
    let mut rest = bytes;
    match ciborium::from_reader::<Header, _>(&mut rest) {
        Ok(h) if h == *header => {}
        _ => return (Vec::new(), 0, 0),
    }
    let mut valid = bytes.len() - rest.len();
    let mut out = Vec::new();
    let mut done = 0;
    for (k, chunk) in chunks.iter().enumerate() {
        let Ok(r) = ciborium::from_reader::<Record<Vec<T>>, _>(&mut rest) else {
            break;
        };
        if r.chunk != k || r.sequences != *chunk || r.values.len() != chunk.len() {
            break;
        }
        out.extend(r.sequences.into_iter().zip(r.values));
        (done, valid) = (k + 1, bytes.len() - rest.len());
    }
    (out, done, valid)
}

fn encode<S: Serialize>(value: &S) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    ciborium::into_writer(value, &mut bytes).map_err(std::io::Error::other)?;
    Ok(bytes)
}

/// Chunk `k`'s record at the journal's end, in one write.
fn append<T: Serialize>(
    f: &mut std::fs::File,
    k: usize,
    chunk: &[usize],
    values: &[T],
) -> std::io::Result<()> {
    let record = Record {
        chunk: k,
        sequences: chunk.to_vec(),
        values,
    };
    f.write_all(&encode(&record)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(chunks: &[Vec<usize>]) -> Header {
        Header {
            pass: "p".into(),
            chunk_sizes: chunks.iter().map(Vec::len).collect(),
        }
    }

    /// A journal's records read back up to the first that is cut short or does not continue
    /// the pass; the valid length is where the next record is appended.
    #[test]
    fn records_read_back_up_to_the_first_invalid_one() {
        let chunks = vec![vec![2, 0], vec![1], vec![3, 4]];
        let h = header(&chunks);
        let mut bytes = encode(&h).unwrap();
        let mut ends = vec![bytes.len()];
        for (k, c) in chunks.iter().enumerate().take(2) {
            let values: Vec<f64> = c.iter().map(|&i| i as f64 + 0.25).collect();
            bytes.extend(
                encode(&Record {
                    chunk: k,
                    sequences: c.clone(),
                    values,
                })
                .unwrap(),
            );
            ends.push(bytes.len());
        }
        let (v, done, n) = read_records::<f64>(&bytes, &h, &chunks);
        assert_eq!(v, vec![(2, 2.25), (0, 0.25), (1, 1.25)]);
        assert_eq!((done, n), (2, ends[2]));
        // Cut inside the second record: only the first is kept.
        let (v, done, n) = read_records::<f64>(&bytes[..ends[2] - 3], &h, &chunks);
        assert_eq!((v.len(), done, n), (2, 1, ends[1]));
        // Another pass's journal: nothing.
        let other = Header {
            pass: "q".into(),
            ..header(&chunks)
        };
        assert_eq!(read_records::<f64>(&bytes, &other, &chunks).2, 0);
        // Other chunks (another ordering of the sequences): nothing past the header.
        let moved = vec![vec![0, 2], vec![1], vec![3, 4]];
        let (v, done, n) = read_records::<f64>(&bytes, &h, &moved);
        assert_eq!((v.len(), done, n), (0, 0, ends[0]));
    }
}
