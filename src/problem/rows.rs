//! Rows of the unembedding `U` (MATH.md §4, Theorem 2(a)): gradient flow moves only the rows of
//! the training tokens, so an IM-RM's state, its max-margin `ΔU*` and its exports are blocks of
//! rows of the `[V, D]` matrix. [`RowBlock`] names which rows a flattened block holds, so no
//! caller decodes `values[r·D..(r+1)·D]` by hand.

/// A block of rows of a `[V, D]` matrix, flattened row-major: the rows of `tokens` (sorted), or
/// all `V` rows in order when `tokens` is `None`.
#[derive(Debug, Clone, Copy)]
pub struct RowBlock<'a> {
    pub tokens: Option<&'a [usize]>,
    pub values: &'a [f64],
    pub dim: usize,
}

impl<'a> RowBlock<'a> {
    /// The block of `tokens` (sorted; `None`: every row) in `values`, rows of length `dim`.
    pub fn new(tokens: Option<&'a [usize]>, values: &'a [f64], dim: usize) -> RowBlock<'a> {
        debug_assert!(tokens.map_or(true, |t| t.len() * dim == values.len()));
        RowBlock {
            tokens,
            values,
            dim,
        }
    }

    /// The `k`-th stored row.
    pub fn stored(&self, k: usize) -> &'a [f64] {
        &self.values[k * self.dim..(k + 1) * self.dim]
    }

    /// Where the row of token `t` is stored, if the block holds it.
    pub fn position(&self, t: usize) -> Option<usize> {
        match self.tokens {
            None => (t * self.dim < self.values.len()).then_some(t),
            Some(tokens) => tokens.binary_search(&t).ok(),
        }
    }

    /// The row of token `t`, if the block holds it.
    pub fn row(&self, t: usize) -> Option<&'a [f64]> {
        self.position(t).map(|k| self.stored(k))
    }

    /// The token of the `k`-th stored row.
    fn token(&self, k: usize) -> usize {
        self.tokens.map_or(k, |t| t[k])
    }

    /// The rows of `tokens` (each held by the block), flattened.
    pub fn select(&self, tokens: &[usize]) -> Vec<f64> {
        tokens
            .iter()
            .flat_map(|&t| self.row(t).expect("row present").iter().copied())
            .collect()
    }

    /// Writes every stored row into `target`, a block of the rows `target_tokens` (sorted,
    /// holding every token of this block; `None`: all `V` rows), at its token's row.
    pub fn scatter_into(&self, target: &mut [f64], target_tokens: Option<&[usize]>) {
        let d = self.dim;
        for k in 0..self.values.len() / d.max(1) {
            let t = self.token(k);
            let at = match target_tokens {
                None => t,
                Some(rows) => rows
                    .binary_search(&t)
                    .expect("target holds the block's rows"),
            };
            target[at * d..(at + 1) * d].copy_from_slice(self.stored(k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_found_selected_and_scattered_by_token() {
        let values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let block = RowBlock::new(Some(&[2, 5, 7]), &values, 2);
        assert_eq!(block.row(5), Some(&[3.0, 4.0][..]));
        assert_eq!(block.row(3), None);
        assert_eq!(block.select(&[7, 2]), vec![5.0, 6.0, 1.0, 2.0]);
        let mut full = vec![0.0; 16];
        block.scatter_into(&mut full, None);
        assert_eq!(&full[4..6], &[1.0, 2.0]);
        assert_eq!(&full[14..16], &[5.0, 6.0]);
        let mut part = vec![9.0; 8];
        block.scatter_into(&mut part, Some(&[2, 4, 5, 7]));
        assert_eq!(part, vec![1.0, 2.0, 9.0, 9.0, 3.0, 4.0, 5.0, 6.0]);
        let all = RowBlock::new(None, &full, 2);
        assert_eq!(all.row(7), Some(&[5.0, 6.0][..]));
        assert_eq!(all.row(8), None);
    }
}
