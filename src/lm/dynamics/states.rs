//! The representations the decomposition reads, f64: per sequence the response tokens, the
//! states `h_{x,y<k}` that predict them, and the last state `h_{x,y}` (what the EX-RM reads).

use crate::analysis::dynamics::direction::ResponseStates;
use crate::lm::model::language_model::LanguageModel;
use crate::lm::nets::kernels::Kernels;
use crate::lm::train::features::{by_length, prompt_chunks, shared_prompt_features, Need};
use crate::lm::train::sequences::ScoredSequence;
use anyhow::Result;
use ndarray::{Array1, Array2};

/// One sequence's representations.
#[derive(Debug, Clone)]
pub struct SequenceStates {
    pub tokens: Vec<usize>,
    /// `h_{x,y<k}`, one row per response token.
    pub states: Array2<f64>,
    /// `h_{x,y}` at the last response token.
    pub last: Array1<f64>,
}

impl SequenceStates {
    pub fn response(&self) -> ResponseStates<'_> {
        ResponseStates {
            tokens: &self.tokens,
            states: self.states.view(),
        }
    }
}

/// The representations of the sequences `idx` of `seqs` (indexed like `seqs`; `None` for the
/// others), through the inference kernels in length-ordered chunks of `batch` sequences.
pub fn sequence_states(
    lm: &LanguageModel,
    seqs: &[ScoredSequence],
    idx: &[usize],
    batch: usize,
) -> Result<Vec<Option<SequenceStates>>> {
    let need = Need {
        implicit: true,
        response: false,
        last: true,
    };
    let mut out = vec![None; seqs.len()];
    for chunk in prompt_chunks(seqs, &by_length(seqs, idx), batch) {
        let refs: Vec<&ScoredSequence> = chunk.iter().map(|&i| &seqs[i]).collect();
        let f = shared_prompt_features(lm, &refs, need, Kernels::Inference)?;
        let predict = f.predict.to_vec2::<f32>()?;
        let last = f.last.to_vec2::<f32>()?;
        let mut rows = predict.iter().zip(&f.targets).zip(&f.owner).peekable();
        for (j, &i) in chunk.iter().enumerate() {
            let mut tokens = Vec::new();
            let mut states = Vec::new();
            while let Some(((h, &t), _)) = rows.next_if(|(_, &o)| o == j) {
                tokens.push(t as usize);
                states.extend(h.iter().map(|&x| f64::from(x)));
            }
            let k = tokens.len();
            out[i] = Some(SequenceStates {
                tokens,
                states: Array2::from_shape_vec((k, lm.dim), states)?,
                last: last[j].iter().map(|&x| f64::from(x)).collect(),
            });
        }
    }
    Ok(out)
}
