//! torch's CPU generator, for the official code's data draws (`persona_controlled_datamodule.py`):
//! `torch.Generator().manual_seed(seed)` is MT19937 seeded with the low 32 bits of `seed`
//! (`rand_mt`); `torch.randperm(n, generator=g)` is Fisher–Yates with `z = next_u32 % (n − i)`
//! swapped into place `i` (n below 2³²/20, where torch keeps this draw), and
//! `torch.randint(0, high, (1,), generator=g)` is `next_u32 % high`. Checked against torch 2.15
//! on the persona split (`tests/fixtures/torch_randperm_875.json`, `scripts/torch_split_fixture.py`).

use rand_mt::Mt;

/// A torch CPU generator after `manual_seed`.
pub struct TorchGenerator {
    mt: Mt,
}

impl TorchGenerator {
    /// `torch.Generator().manual_seed(seed)`.
    pub fn manual_seed(seed: u64) -> TorchGenerator {
        TorchGenerator {
            mt: Mt::new(seed as u32),
        }
    }

    /// `torch.randperm(n, generator=self)`; `n` below 2³²/20 (torch's 32-bit draw).
    pub fn randperm(&mut self, n: usize) -> Vec<usize> {
        assert!(
            n < (u32::MAX / 20) as usize,
            "randperm of {n}: beyond torch's 32-bit draw"
        );
        let mut r: Vec<usize> = (0..n).collect();
        for i in 0..n.saturating_sub(1) {
            let z = self.mt.next_u32() as usize % (n - i);
            r.swap(i, i + z);
        }
        r
    }

    /// `torch.randint(0, high, (1,), generator=self).item()`; `high` in 1..2³².
    pub fn randint(&mut self, high: usize) -> usize {
        assert!(
            high >= 1 && high <= u32::MAX as usize,
            "randint below {high}"
        );
        self.mt.next_u32() as usize % high
    }
}
