//! Small random setups shared by the property tests.
#![allow(dead_code)]

use proptest::prelude::*;
use rmflow::config::{Config, UnembeddingInit};

/// A small but complete random configuration (every split non-empty).
pub fn small_config() -> impl Strategy<Value = Config> {
    (
        any::<u64>(),
        2usize..7,
        (1usize..4, 1usize..4, 1usize..4, 1usize..4, 0usize..12),
        (0.0f64..3.0, 0.0f64..3.0),
        3usize..12,
        prop::bool::ANY,
        0.0f64..1.0,
        0.3f64..3.0,
    )
        .prop_map(
            |(seed, dim, (gs, gu, bs, bu, filler), (alpha, kappa), n, tied, head, beta)| {
                let mut c = Config {
                    seed,
                    ..Default::default()
                };
                c.setup.dim = dim;
                c.setup.good_seen = gs;
                c.setup.good_unseen = gu;
                c.setup.bad_seen = bs;
                c.setup.bad_unseen = bu;
                c.setup.filler_tokens = filler;
                c.setup.alpha = alpha;
                c.setup.kappa = kappa;
                c.setup.train_pairs = n;
                c.setup.eval_pairs = 4;
                c.setup.unembedding_init = if tied {
                    UnembeddingInit::Tied
                } else {
                    UnembeddingInit::Independent
                };
                c.setup.head_scale = head;
                c.setup.beta = beta;
                c
            },
        )
}

/// [`small_config`] with responses of 1 to 3 tokens and an overlap split.
pub fn small_sequence_config() -> impl Strategy<Value = Config> {
    (small_config(), 1usize..4, 0.0f64..=1.0).prop_map(|(mut c, k, f)| {
        c.setup.response_length = k;
        c.setup.eval_overlap = vec![f];
        c
    })
}
