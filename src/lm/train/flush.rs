//! The official code's flush of the left padding and the token it drops
//! (`utils/rm_utils.py:84-88`, `__move_left_padding_to_the_right_and_remove_unnecessary_padding`).
//!
//! The official batch concatenates left-padded prompts with right-padded responses (the chosen
//! rows, then the rejected ones; responses padded to the longest of both sides), rolls every row
//! left past its padding, and keeps the columns `[: first_empty_col − 1]`. When the padded width
//! `max prompt + max response` exceeds the longest row, the first empty column is that row's
//! length, and the `− 1` cuts the last token of every row of that length: the IM-RM loses that
//! token's `ln π − ln π_ref` term and the EX-RM reads the token before it. When the longest
//! prompt and the longest response are in one row, no column is empty and nothing is cut.
//!
//! rmflow scores every response whole, as the paper describes it, unless
//! `train.drop_last_token_of_longest` asks for the drop; then the training micro-batches and the
//! official evaluator's batches ([`super::sequences::EvalBatch`]) decide which rows lose it.

use super::sequences::{EvalBatch, ScoredSequence};

/// Which of the batch rows `rows` (indices into `seqs`, causal sequences: prompt
/// `[0, response_start)`, response `[response_start, len)`) the flush cuts short.
pub fn dropped_rows(seqs: &[ScoredSequence], rows: &[usize]) -> Vec<bool> {
    let len = |i: usize| seqs[i].ids.len();
    let prompt = |i: usize| seqs[i].response_start;
    let width = rows.iter().map(|&i| prompt(i)).max().unwrap_or(0)
        + rows.iter().map(|&i| len(i) - prompt(i)).max().unwrap_or(0);
    let longest = rows.iter().map(|&i| len(i)).max().unwrap_or(0);
    rows.iter()
        .map(|&i| longest < width && len(i) == longest)
        .collect()
}

/// `s` without its last token (the response keeps at least its first token scored only where it
/// had two or more).
pub fn without_last_token(s: &ScoredSequence) -> ScoredSequence {
    let mut t = s.clone();
    t.ids.pop();
    t.response_end = t.response_end.min(t.ids.len());
    t.response_tokens
        .truncate(t.response_end - t.response_start);
    t.word_span = t
        .word_span
        .map(|(a, b)| (a.min(t.response_end), b.min(t.response_end)));
    t
}

/// The sequences and their reference values as the official evaluator scores them (`batches`):
/// [`apply`] of [`evaluation_drops`].
pub fn evaluation_rows(
    seqs: &[ScoredSequence],
    reference: &[Vec<f64>],
    batches: &[EvalBatch],
) -> (Vec<ScoredSequence>, Vec<Vec<f64>>) {
    apply(seqs, reference, &evaluation_drops(seqs, batches))
}

/// Whether each of `n` sequences loses its last token where the official evaluator scores it
/// (`batches`; a sequence scored in no batch keeps it).
pub fn evaluation_drops(seqs: &[ScoredSequence], batches: &[EvalBatch]) -> Vec<bool> {
    let mut dropped = vec![false; seqs.len()];
    for b in batches {
        let rows: Vec<usize> = b.scored.iter().chain(&b.beside).copied().collect();
        for (&i, d) in rows.iter().zip(dropped_rows(seqs, &rows)) {
            if d && b.scored.contains(&i) {
                dropped[i] = true;
            }
        }
    }
    dropped
}

/// `seqs` and their per-token `reference` values with the flagged ones cut short.
pub fn apply(
    seqs: &[ScoredSequence],
    reference: &[Vec<f64>],
    dropped: &[bool],
) -> (Vec<ScoredSequence>, Vec<Vec<f64>>) {
    seqs.iter()
        .zip(reference)
        .zip(dropped)
        .map(|((s, r), &d)| match d {
            true => {
                let t = without_last_token(s);
                let keep = (t.response_end - t.response_start).min(r.len());
                (t, r[..keep].to_vec())
            }
            false => (s.clone(), r.clone()),
        })
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::train::sequences::Side;

    fn seq(prompt: usize, response: usize) -> ScoredSequence {
        ScoredSequence {
            ids: (0..(prompt + response) as u32).collect(),
            response_start: prompt,
            response_end: prompt + response,
            word_span: Some((prompt + 1, prompt + response)),
            prompt: 0,
            side: Side::Chosen,
            prefix: String::new(),
            word: String::new(),
            response_text: String::new(),
            response_tokens: (0..response).map(|k| k.to_string()).collect(),
        }
    }

    /// The official flush on the docstring's example and its complement.
    #[test]
    fn longest_rows_lose_their_last_token_only_when_a_column_is_empty() {
        // Longest prompt (5) and longest response (4) in different rows: width 9, longest row
        // 8 (= 5 + 3 and 4 + 4): both rows of length 8 are cut.
        let seqs = vec![seq(5, 3), seq(4, 4), seq(3, 2)];
        assert_eq!(dropped_rows(&seqs, &[0, 1, 2]), vec![true, true, false]);
        // Both maxima in one row: no empty column, nothing cut.
        let seqs = vec![seq(5, 4), seq(4, 4), seq(3, 2)];
        assert_eq!(dropped_rows(&seqs, &[0, 1, 2]), vec![false, false, false]);
    }

    #[test]
    fn cutting_keeps_the_spans_inside_the_sequence() {
        let t = without_last_token(&seq(3, 2));
        assert_eq!(t.ids.len(), 4);
        assert_eq!((t.response_start, t.response_end), (3, 4));
        assert_eq!(t.response_tokens.len(), 1);
        assert_eq!(t.word_span, Some((4, 4)));
        let (s, r) = apply(&[seq(3, 2)], &[vec![-1.0, -2.0]], &[true]);
        assert_eq!((s[0].ids.len(), r[0].clone()), (4, vec![-1.0]));
    }

    /// A sequence counts as cut only in the batch that scores it.
    #[test]
    fn evaluation_drops_follow_the_scoring_batch() {
        let seqs = vec![seq(5, 3), seq(4, 4), seq(3, 2)];
        let batches = vec![
            EvalBatch {
                scored: vec![0],
                beside: vec![1, 2],
            },
            EvalBatch {
                scored: vec![2],
                beside: vec![],
            },
        ];
        assert_eq!(evaluation_drops(&seqs, &batches), vec![true, false, false]);
    }
}
