//! The training pairs' order: one seeded shuffle of `0..n` per epoch (ChaCha8, the run's seed
//! salted), read whole per epoch ([`epoch_orders`], the trainer of [`super::epochs`]) or as
//! fixed-size steps that run across epochs ([`Batches`], full fine-tuning of `rmflow lm`).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The salt of the shuffler's seed (`seed ^ SALT`).
const SALT: u64 = 0x5eed_f17e;

/// One seeded shuffle of the pair indices `0..n` per epoch.
pub struct EpochShuffle {
    n: usize,
    rng: ChaCha8Rng,
}

impl EpochShuffle {
    pub fn new(seed: u64, n: usize) -> EpochShuffle {
        EpochShuffle {
            n,
            rng: ChaCha8Rng::seed_from_u64(seed ^ SALT),
        }
    }

    /// The next epoch's order.
    pub fn next_epoch(&mut self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.n).collect();
        order.shuffle(&mut self.rng);
        order
    }
}

/// The training pairs' order in each epoch: one seeded shuffle per epoch.
pub fn epoch_orders(seed: u64, pairs: usize) -> impl Iterator<Item = Vec<usize>> {
    let mut shuffle = EpochShuffle::new(seed, pairs);
    std::iter::repeat_with(move || shuffle.next_epoch())
}

/// Mini-batches of training pairs: `per_step` indices a step, drawn without replacement within
/// an epoch (shuffled unless a step takes every pair); a step may run across an epoch's end.
pub struct Batches {
    per_step: usize,
    shuffle: EpochShuffle,
    order: Vec<usize>,
}

impl Batches {
    /// `batch_pairs` pairs a step out of `n` (0: every pair).
    pub fn new(n: usize, batch_pairs: usize, seed: u64) -> Batches {
        let per_step = if batch_pairs == 0 {
            n
        } else {
            batch_pairs.min(n)
        };
        Batches {
            per_step,
            shuffle: EpochShuffle::new(seed, n),
            order: Vec::new(),
        }
    }

    /// The next step's pair indices.
    pub fn next_step(&mut self) -> Vec<usize> {
        if self.order.len() < self.per_step {
            let epoch = if self.per_step < self.shuffle.n {
                self.shuffle.next_epoch()
            } else {
                (0..self.shuffle.n).collect()
            };
            self.order.extend(epoch);
        }
        self.order.drain(..self.per_step).collect()
    }
}
