//! The synthetic language model of MATH.md §5, for responses of `K ≥ 1` tokens.
//!
//! Tokens `e_y = α s_y μ + g_y`; prompts `h_x = κ ν_c + N(0, I/D)`; the fixed recurrent map
//! `s_0 = h_x`, `s_k = tanh(A s_{k−1} + B e_{y_k})`, with `h_{x,y<k} = s_{k−1}` and `h_{x,y} = s_K`
//! (for one token, `h_{x,y} = tanh(A h_x + B e_y)`); unembedding `U(0)`, head `u(0)`; splits.

use crate::config::{overlap_split_name, Config, SetupConfig, UnembeddingInit};
use ndarray::{s, Array1, Array2, Array3, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

/// Latent label `s_y` of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenLabel {
    Good,
    Bad,
    Filler,
}

impl TokenLabel {
    /// `s_y ∈ {+1, −1, 0}`.
    pub fn sign(self) -> f64 {
        match self {
            TokenLabel::Good => 1.0,
            TokenLabel::Bad => -1.0,
            TokenLabel::Filler => 0.0,
        }
    }
}

/// Vocabulary layout: `[good seen | good unseen | bad seen | bad unseen | filler]`.
#[derive(Debug, Clone)]
pub struct Vocabulary {
    pub labels: Vec<TokenLabel>,
    pub good_seen: Vec<usize>,
    pub good_unseen: Vec<usize>,
    pub bad_seen: Vec<usize>,
    pub bad_unseen: Vec<usize>,
}

impl Vocabulary {
    fn new(s: &SetupConfig) -> Vocabulary {
        let mut next = 0usize;
        let mut take = |n: usize| {
            let r: Vec<usize> = (next..next + n).collect();
            next += n;
            r
        };
        let good_seen = take(s.good_seen);
        let good_unseen = take(s.good_unseen);
        let bad_seen = take(s.bad_seen);
        let bad_unseen = take(s.bad_unseen);
        let v = next + s.filler_tokens;
        let mut labels = vec![TokenLabel::Filler; v];
        for &t in good_seen.iter().chain(&good_unseen) {
            labels[t] = TokenLabel::Good;
        }
        for &t in bad_seen.iter().chain(&bad_unseen) {
            labels[t] = TokenLabel::Bad;
        }
        Vocabulary {
            labels,
            good_seen,
            good_unseen,
            bad_seen,
            bad_unseen,
        }
    }

    pub fn size(&self) -> usize {
        self.labels.len()
    }
}

/// The fixed random recurrent map `s_k = tanh(A s_{k−1} + B e_{y_k})` (MATH.md §5).
#[derive(Debug, Clone)]
pub struct RecurrentMap {
    pub a: Array2<f64>,
    pub b: Array2<f64>,
}

/// Preference pairs `(x_i, y_i⁺, y_i⁻)` with their hidden representations; responses have `K`
/// tokens (`K = 1` is Theorem 2's setting).
#[derive(Debug, Clone)]
pub struct PairSet {
    /// Split name (`train`, `seen`, `unseen`, `domain`, `overlapP`).
    pub name: String,
    /// `h_x`, [n, D].
    pub prompt_hidden: Array2<f64>,
    /// `h_{x,y⁺} = s_K(y⁺)`, [n, D].
    pub chosen_hidden: Array2<f64>,
    /// `h_{x,y⁻}`, [n, D].
    pub rejected_hidden: Array2<f64>,
    /// `y⁺_k`, [n, K].
    pub chosen_tokens: Array2<usize>,
    /// `y⁻_k`, [n, K].
    pub rejected_tokens: Array2<usize>,
    /// `h_{x,y⁺<k} = s_{k−1}(y⁺)` for `k = 1..K` (`s_0 = h_x`), [n, K, D].
    pub chosen_prefix_hidden: Array3<f64>,
    /// `h_{x,y⁻<k}`, [n, K, D].
    pub rejected_prefix_hidden: Array3<f64>,
}

impl PairSet {
    pub fn len(&self) -> usize {
        self.chosen_tokens.nrows()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Response length `K`.
    pub fn response_length(&self) -> usize {
        self.chosen_tokens.ncols()
    }

    /// `(y_i⁺, y_i⁻)` of a single-token set (`K = 1`; the first tokens otherwise).
    pub fn token_pair(&self, i: usize) -> (usize, usize) {
        (self.chosen_tokens[[i, 0]], self.rejected_tokens[[i, 0]])
    }

    /// EX-RM features `z_i = h_{x_i,y_i⁺} − h_{x_i,y_i⁻}` (MATH.md §2), [n, D].
    pub fn hidden_differences(&self) -> Array2<f64> {
        &self.chosen_hidden - &self.rejected_hidden
    }

    /// Every token of every response, sorted and deduplicated.
    pub fn tokens(&self) -> Vec<usize> {
        let mut t: Vec<usize> = self
            .chosen_tokens
            .iter()
            .chain(self.rejected_tokens.iter())
            .copied()
            .collect();
        t.sort_unstable();
        t.dedup();
        t
    }
}

/// Where the tokens of one response come from: position `k` draws from `seen` if it is one of
/// `n_seen` positions chosen at random, else from `unseen`.
struct TokenPools<'a> {
    seen: &'a [usize],
    unseen: &'a [usize],
    n_seen: usize,
}

impl<'a> TokenPools<'a> {
    /// Every position from `tokens`.
    fn all(tokens: &'a [usize], k: usize) -> TokenPools<'a> {
        TokenPools {
            seen: tokens,
            unseen: tokens,
            n_seen: k,
        }
    }
}

/// The parts of the synthetic language model of MATH.md §5 that generate the representations.
#[derive(Debug, Clone)]
pub struct SyntheticLm {
    /// Quality direction `μ` (unit).
    pub quality_direction: Array1<f64>,
    /// Prompt-cluster directions `ν_0` (training) and `ν_1` (domain shift), unit.
    pub cluster_directions: [Array1<f64>; 2],
    /// Input embeddings `e_y`, drawn row by row on demand.
    pub embeddings: TokenEmbeddings,
    pub recurrent: RecurrentMap,
}

/// Stream of the noise `g_y` of token `y`'s embedding: `EMBEDDING_STREAM | y`.
const EMBEDDING_STREAM: u64 = 1 << 32;
/// Stream of row `z` of an independent `U(0)`: `UNEMBEDDING_STREAM | z`.
const UNEMBEDDING_STREAM: u64 = 2 << 32;

/// The generator of one token's row: ChaCha8 keyed by the run's seed, on its own stream
/// `tag | token` (the setup's sequential draws use stream 0). Counter-based: row `z` is the same
/// whether or not any other row is drawn, and no `V × D` matrix is needed to get it.
fn row_rng(seed: u64, tag: u64, token: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(tag | token as u64);
    rng
}

/// Rows `rows` of a per-token matrix, each from `row(z)`, drawn in parallel (bit-identical for
/// any thread count: rows are independent streams).
fn gather_rows(
    rows: &[usize],
    dim: usize,
    row: impl Fn(usize) -> Array1<f64> + Sync,
) -> Array2<f64> {
    let drawn: Vec<Array1<f64>> = rows.par_iter().map(|&z| row(z)).collect();
    let mut out = Array2::zeros((rows.len(), dim));
    for (mut o, r) in out.rows_mut().into_iter().zip(drawn) {
        o.assign(&r);
    }
    out
}

/// Input embeddings `e_y = α s_y μ + g_y`, `g_y ~ N(0, I/D)` (MATH.md §5), drawn per token from
/// its own stream (`row_rng`).
#[derive(Debug, Clone)]
pub struct TokenEmbeddings {
    seed: u64,
    alpha: f64,
    quality_direction: Array1<f64>,
    labels: std::sync::Arc<Vec<TokenLabel>>,
}

impl TokenEmbeddings {
    pub fn vocab_size(&self) -> usize {
        self.labels.len()
    }

    pub fn dim(&self) -> usize {
        self.quality_direction.len()
    }

    /// `e_y`.
    pub fn row(&self, y: usize) -> Array1<f64> {
        let d = self.dim();
        let mut rng = row_rng(self.seed, EMBEDDING_STREAM, y);
        let mut e = gaussian_vector(&mut rng, d, 1.0 / (d as f64).sqrt());
        e.scaled_add(self.alpha * self.labels[y].sign(), &self.quality_direction);
        e
    }

    /// `e_y` for each `y` of `ys`, [|ys|, D].
    pub fn rows(&self, ys: &[usize]) -> Array2<f64> {
        gather_rows(ys, self.dim(), |y| self.row(y))
    }

    /// Every `e_y`, [V, D] (`O(V·D)` memory: only for the full-vocabulary paths).
    pub fn full(&self) -> Array2<f64> {
        self.rows(&(0..self.vocab_size()).collect::<Vec<_>>())
    }
}

/// The initial unembedding `U(0)` (also `π_ref`'s), row by row (MATH.md §5): tied to the
/// embeddings, independent Gaussian rows, or a given matrix (a real model's, MATH.md §6). Rows of
/// the synthetic kinds are drawn on demand, so runs whose cost follows the seen and evaluated
/// tokens never hold `V × D` numbers.
#[derive(Debug, Clone)]
pub enum InitialUnembedding {
    /// `U(0)_z = c e_z`.
    Tied {
        embeddings: TokenEmbeddings,
        scale: f64,
    },
    /// `U(0)_z ~ N(0, c² I/D)`, each row from its own stream.
    Independent {
        seed: u64,
        vocab_size: usize,
        dim: usize,
        scale: f64,
    },
    /// A given `[V, D]` matrix.
    Given(Array2<f64>),
}

impl InitialUnembedding {
    pub fn vocab_size(&self) -> usize {
        match self {
            InitialUnembedding::Tied { embeddings, .. } => embeddings.vocab_size(),
            InitialUnembedding::Independent { vocab_size, .. } => *vocab_size,
            InitialUnembedding::Given(m) => m.nrows(),
        }
    }

    pub fn dim(&self) -> usize {
        match self {
            InitialUnembedding::Tied { embeddings, .. } => embeddings.dim(),
            InitialUnembedding::Independent { dim, .. } => *dim,
            InitialUnembedding::Given(m) => m.ncols(),
        }
    }

    /// `U(0)_z`.
    pub fn row(&self, z: usize) -> Array1<f64> {
        match self {
            InitialUnembedding::Tied { embeddings, scale } => embeddings.row(z) * *scale,
            InitialUnembedding::Independent {
                seed, dim, scale, ..
            } => {
                let mut rng = row_rng(*seed, UNEMBEDDING_STREAM, z);
                gaussian_vector(&mut rng, *dim, scale / (*dim as f64).sqrt())
            }
            InitialUnembedding::Given(m) => m.row(z).to_owned(),
        }
    }

    /// `U(0)_z` for each `z` of `rows`, [|rows|, D].
    pub fn rows(&self, rows: &[usize]) -> Array2<f64> {
        match self {
            InitialUnembedding::Given(m) => m.select(Axis(0), rows),
            _ => gather_rows(rows, self.dim(), |z| self.row(z)),
        }
    }

    /// The whole `[V, D]` matrix (for the full-vocabulary path, and exports that ask for it).
    pub fn full(&self) -> Array2<f64> {
        match self {
            InitialUnembedding::Given(m) => m.clone(),
            _ => self.rows(&(0..self.vocab_size()).collect::<Vec<_>>()),
        }
    }

    /// Calls `f(first_row, block)` on consecutive blocks of at most `block_rows` rows of `U(0)`,
    /// in order: the whole matrix streamed in `O(block_rows · D)` memory.
    pub fn for_each_block(
        &self,
        block_rows: usize,
        f: &mut dyn FnMut(usize, ndarray::ArrayView2<f64>),
    ) {
        let v = self.vocab_size();
        let mut start = 0;
        while start < v {
            let end = (start + block_rows.max(1)).min(v);
            match self {
                InitialUnembedding::Given(m) => f(start, m.slice(s![start..end, ..])),
                _ => {
                    let block = self.rows(&(start..end).collect::<Vec<_>>());
                    f(start, block.view());
                }
            }
            start = end;
        }
    }
}

/// A reward-learning problem: vocabulary, initial parameters and the splits' representations
/// (drawn by [`Setup::generate`], or extracted from a real model by `lm::build_setup`).
#[derive(Debug, Clone)]
pub struct Setup {
    pub config: SetupConfig,
    pub seed: u64,
    pub vocab: Vocabulary,
    /// The synthetic language model that drew the representations (MATH.md §5); `None` when they
    /// come from a real transformer (MATH.md §6).
    pub generator: Option<SyntheticLm>,
    /// `U(0)`; also the reference model `π_ref = π_{U(0)}`. Rows on demand
    /// ([`InitialUnembedding::row`]); the full `[V, D]` matrix only when asked.
    pub unembedding_init: InitialUnembedding,
    /// `u(0)`, `[D]`.
    pub head_init: Array1<f64>,
    pub train: PairSet,
    /// Evaluation splits: `seen`, `unseen`, `domain`, then one `overlapP` per `setup.eval_overlap`.
    pub evals: Vec<PairSet>,
    /// `T`: tokens occurring in some training response (any position), sorted.
    pub seen_tokens: Vec<usize>,
}

/// The named splits of the paper's setting (MATH.md §4): training, and the evaluation splits
/// with seen answers, unseen answers and a shifted domain (the `overlapP` splits are named by
/// [`crate::config::overlap_split_name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitId {
    Train,
    Seen,
    Unseen,
    Domain,
}

impl SplitId {
    /// The split's name in every output (`split` columns, folders).
    pub const fn name(self) -> &'static str {
        match self {
            SplitId::Train => "train",
            SplitId::Seen => "seen",
            SplitId::Unseen => "unseen",
            SplitId::Domain => "domain",
        }
    }

    /// Whether `name` is this split's.
    pub fn is(self, name: &str) -> bool {
        name == self.name()
    }
}

/// `k` flags with `n_seen` of them true, at positions drawn uniformly (no draw when all or none).
fn choose_positions(rng: &mut ChaCha8Rng, k: usize, n_seen: usize) -> Vec<bool> {
    let mut flags = vec![false; k];
    if n_seen >= k {
        return vec![true; k];
    }
    if n_seen == 0 {
        return flags;
    }
    let mut idx: Vec<usize> = (0..k).collect();
    for j in 0..n_seen {
        let r = rng.random_range(j..k);
        idx.swap(j, r);
        flags[idx[j]] = true;
    }
    flags
}

fn gaussian_vector(rng: &mut ChaCha8Rng, d: usize, std: f64) -> Array1<f64> {
    Array1::from_shape_fn(d, |_| std * rng.sample::<f64, _>(StandardNormal))
}

fn unit_vector(rng: &mut ChaCha8Rng, d: usize) -> Array1<f64> {
    loop {
        let v = gaussian_vector(rng, d, 1.0);
        let n = v.dot(&v).sqrt();
        if n > 1e-12 {
            return v / n;
        }
    }
}

fn gaussian_matrix(rng: &mut ChaCha8Rng, rows: usize, cols: usize, std: f64) -> Array2<f64> {
    Array2::from_shape_fn((rows, cols), |_| std * rng.sample::<f64, _>(StandardNormal))
}

impl Setup {
    /// [`Setup::generate`] after validating `config`, then checks that every drawn array is finite
    /// (the error names the array): the entry point of every command.
    pub fn try_generate(config: &Config) -> anyhow::Result<Setup> {
        config.validate()?;
        let setup = Setup::generate(config);
        setup.check_finite()?;
        Ok(setup)
    }

    /// Errors naming the first array (`U(0)` on the tokens of the pairs, `u(0)`, a split's
    /// representations) that holds a NaN or an infinity.
    pub fn check_finite(&self) -> anyhow::Result<()> {
        let finite = |x: &f64| x.is_finite();
        let u0_rows = match &self.unembedding_init {
            InitialUnembedding::Given(m) => m.iter().all(finite),
            u0 => u0.rows(&self.pair_tokens()).iter().all(finite),
        };
        let mut arrays: Vec<(String, bool)> = vec![
            ("the initial unembedding U(0)".into(), u0_rows),
            (
                "the initial head u(0)".into(),
                self.head_init.iter().all(finite),
            ),
        ];
        for p in self.splits() {
            arrays.push((
                format!("the hidden representations of split `{}`", p.name),
                p.prompt_hidden.iter().all(finite)
                    && p.chosen_hidden.iter().all(finite)
                    && p.rejected_hidden.iter().all(finite)
                    && p.chosen_prefix_hidden.iter().all(finite)
                    && p.rejected_prefix_hidden.iter().all(finite),
            ));
        }
        if let Some((name, _)) = arrays.into_iter().find(|(_, ok)| !ok) {
            anyhow::bail!(
                "{name} contain non-finite values (NaN or ±inf): the setup's scales (setup.alpha, setup.kappa, gains, setup.unembedding_scale) overflow f64"
            );
        }
        Ok(())
    }

    /// Draws the whole setup from `config.seed` (MATH.md §5). The sequential draws (`μ`, `ν`,
    /// `A`, `B`, `u(0)`, then per pair `h_x` and the tokens) use ChaCha8's stream 0 in a fixed
    /// order; embedding and independent `U(0)` rows come from per-token streams, drawn only for
    /// tokens that occur in pairs. The recurrent map runs as matrix products over all pairs of a
    /// split. The config must be valid ([`Config::validate`]); [`Setup::try_generate`] checks
    /// that first.
    pub fn generate(config: &Config) -> Setup {
        let s = config.setup.clone();
        let d = s.dim;
        let noise = 1.0 / (d as f64).sqrt();
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let vocab = Vocabulary::new(&s);
        let quality_direction = unit_vector(&mut rng, d);
        let cluster_directions = cluster_directions(&mut rng, d, s.domain_alignment);
        let embeddings = TokenEmbeddings {
            seed: config.seed,
            alpha: s.alpha,
            quality_direction: quality_direction.clone(),
            labels: std::sync::Arc::new(vocab.labels.clone()),
        };
        let recurrent = RecurrentMap {
            a: gaussian_matrix(&mut rng, d, d, s.recurrent_gain * noise),
            b: gaussian_matrix(&mut rng, d, d, s.input_gain * noise),
        };
        let unembedding_init = match s.unembedding_init {
            UnembeddingInit::Tied => InitialUnembedding::Tied {
                embeddings: embeddings.clone(),
                scale: s.unembedding_scale,
            },
            UnembeddingInit::Independent => InitialUnembedding::Independent {
                seed: config.seed,
                vocab_size: vocab.size(),
                dim: d,
                scale: s.unembedding_scale,
            },
        };
        let head_init = gaussian_vector(&mut rng, d, s.head_scale * noise);
        let mut drawer = PairDrawer {
            rng,
            setup: &s,
            noise,
            cluster_directions: &cluster_directions,
            recurrent: &recurrent,
            embeddings: &embeddings,
        };
        let k_len = s.response_length;
        let all = |seen| TokenPools::all(seen, k_len);
        let train = drawer.draw(
            SplitId::Train.name(),
            s.train_pairs,
            0,
            all(&vocab.good_seen),
            all(&vocab.bad_seen),
        );
        let seen_tokens = train.tokens();
        let evals = drawer.eval_splits(&vocab, &seen_tokens);
        Setup {
            config: s,
            seed: config.seed,
            vocab,
            generator: Some(SyntheticLm {
                quality_direction,
                cluster_directions,
                embeddings,
                recurrent,
            }),
            unembedding_init,
            head_init,
            train,
            evals,
            seen_tokens,
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.size()
    }

    pub fn dim(&self) -> usize {
        self.config.dim
    }

    /// The split `id`, if the setup has it.
    pub fn split(&self, id: SplitId) -> Option<&PairSet> {
        self.splits().find(|p| id.is(&p.name))
    }

    /// Training split followed by the evaluation splits.
    pub fn splits(&self) -> impl Iterator<Item = &PairSet> {
        std::iter::once(&self.train).chain(self.evals.iter())
    }

    /// Every token of every response of every split, sorted: `T ∪ E`, the rows of `U` a run with
    /// the seen-row IM-RM ever reads.
    pub fn pair_tokens(&self) -> Vec<usize> {
        let mut t: Vec<usize> = self.splits().flat_map(|p| p.tokens()).collect();
        t.sort_unstable();
        t.dedup();
        t
    }

    /// Tokens in no training response (`z ∉ T`), sorted.
    pub fn unseen_tokens(&self) -> Vec<usize> {
        (0..self.vocab_size())
            .filter(|t| self.seen_tokens.binary_search(t).is_err())
            .collect()
    }
}

/// The two prompt clusters' directions `ν_0`, `ν_1` (unit vectors drawn from `rng`); with
/// `alignment = a`, `ν_1 = a ν_0 + √(1 − a²) ν_⊥`, `ν_⊥` the unit part of the drawn `ν_1`
/// orthogonal to `ν_0`.
fn cluster_directions(rng: &mut ChaCha8Rng, d: usize, alignment: Option<f64>) -> [Array1<f64>; 2] {
    let mut directions = [unit_vector(rng, d), unit_vector(rng, d)];
    if let Some(a) = alignment {
        let (n0, n1) = (&directions[0], &directions[1]);
        let perp = n1 - &(n0 * n0.dot(n1));
        let norm = perp.dot(&perp).sqrt();
        if norm > 1e-12 {
            directions[1] = n0 * a + &perp * ((1.0 - a * a).max(0.0).sqrt() / norm);
        }
    }
    directions
}

/// Draws the splits' pairs from the setup's stream 0, in a fixed order: per pair the prompt
/// `h_x = κ ν_c + N(0, I/D)`, then the chosen and the rejected tokens.
struct PairDrawer<'a> {
    rng: ChaCha8Rng,
    setup: &'a SetupConfig,
    /// `1/√D`.
    noise: f64,
    cluster_directions: &'a [Array1<f64>; 2],
    recurrent: &'a RecurrentMap,
    embeddings: &'a TokenEmbeddings,
}

impl PairDrawer<'_> {
    /// `n` pairs named `name` on prompt cluster `cluster`, responses from `good` and `bad`.
    fn draw(
        &mut self,
        name: &str,
        n: usize,
        cluster: usize,
        good: TokenPools,
        bad: TokenPools,
    ) -> PairSet {
        let (d, k_len) = (self.setup.dim, self.setup.response_length);
        let mut prompt_hidden = Array2::zeros((n, d));
        let mut chosen_tokens = Array2::zeros((n, k_len));
        let mut rejected_tokens = Array2::zeros((n, k_len));
        let rng = &mut self.rng;
        for i in 0..n {
            let h = &self.cluster_directions[cluster] * self.setup.kappa
                + gaussian_vector(rng, d, self.noise);
            let respond = |pools: &TokenPools,
                           tokens: &mut ndarray::ArrayViewMut1<usize>,
                           rng: &mut ChaCha8Rng| {
                let from_seen = choose_positions(rng, k_len, pools.n_seen);
                for k in 0..k_len {
                    let pool = if from_seen[k] {
                        pools.seen
                    } else {
                        pools.unseen
                    };
                    tokens[k] = pool[rng.random_range(0..pool.len())];
                }
            };
            respond(&good, &mut chosen_tokens.row_mut(i), rng);
            respond(&bad, &mut rejected_tokens.row_mut(i), rng);
            prompt_hidden.row_mut(i).assign(&h);
        }
        respond_through_map(
            name,
            self.recurrent,
            self.embeddings,
            prompt_hidden,
            chosen_tokens,
            rejected_tokens,
        )
    }

    /// The evaluation splits, in order: `seen` (new prompts, the training pairs' tokens),
    /// `unseen` (tokens absent from training), `domain` (the other prompt cluster), then one
    /// `overlapP` split per `setup.eval_overlap` entry.
    fn eval_splits(&mut self, vocab: &Vocabulary, seen_tokens: &[usize]) -> Vec<PairSet> {
        let s = self.setup;
        let k_len = s.response_length;
        let in_training = |pool: &[usize]| -> Vec<usize> {
            pool.iter()
                .copied()
                .filter(|t| seen_tokens.binary_search(t).is_ok())
                .collect()
        };
        let (seen_good, seen_bad) = (in_training(&vocab.good_seen), in_training(&vocab.bad_seen));
        let all = |seen| TokenPools::all(seen, k_len);
        let mut evals = vec![
            self.draw(
                SplitId::Seen.name(),
                s.eval_pairs,
                0,
                all(&seen_good),
                all(&seen_bad),
            ),
            self.draw(
                SplitId::Unseen.name(),
                s.eval_pairs,
                0,
                all(&vocab.good_unseen),
                all(&vocab.bad_unseen),
            ),
            self.draw(
                SplitId::Domain.name(),
                s.eval_pairs,
                1,
                all(&seen_good),
                all(&seen_bad),
            ),
        ];
        for &f in &s.eval_overlap {
            let n_seen = (f * k_len as f64).round() as usize;
            let good = TokenPools {
                seen: &seen_good,
                unseen: &vocab.good_unseen,
                n_seen,
            };
            let bad = TokenPools {
                seen: &seen_bad,
                unseen: &vocab.bad_unseen,
                n_seen,
            };
            evals.push(self.draw(&overlap_split_name(f), s.eval_pairs, 0, good, bad));
        }
        evals
    }
}

/// The responses' hidden states through the recurrent map (MATH.md §5), as matrix products over
/// all pairs: `s_0 = h_x`, `s_k = tanh(s_{k−1} Aᵀ + (B e)_{y_k})`, with `B e_y` formed once per
/// distinct token of the split and `h_x Aᵀ` shared by both responses.
fn respond_through_map(
    name: &str,
    recurrent: &RecurrentMap,
    embeddings: &TokenEmbeddings,
    prompt_hidden: Array2<f64>,
    chosen_tokens: Array2<usize>,
    rejected_tokens: Array2<usize>,
) -> PairSet {
    use crate::numerics::mat_mul_bt;
    let (n, d) = prompt_hidden.dim();
    let k_len = chosen_tokens.ncols();
    let mut tokens: Vec<usize> = chosen_tokens
        .iter()
        .chain(rejected_tokens.iter())
        .copied()
        .collect();
    tokens.sort_unstable();
    tokens.dedup();
    let input = mat_mul_bt(embeddings.rows(&tokens).view(), recurrent.b.view());
    let input_row = |y: usize| input.row(tokens.binary_search(&y).expect("token of the split"));
    let prompt_drive = mat_mul_bt(prompt_hidden.view(), recurrent.a.view());
    let run = |response: &Array2<usize>| {
        let mut prefixes = Array3::zeros((n, k_len, d));
        let mut state = prompt_hidden.clone();
        for k in 0..k_len {
            prefixes.slice_mut(s![.., k, ..]).assign(&state);
            let mut pre = if k == 0 {
                prompt_drive.clone()
            } else {
                mat_mul_bt(state.view(), recurrent.a.view())
            };
            for (i, mut row) in pre.rows_mut().into_iter().enumerate() {
                row += &input_row(response[[i, k]]);
                row.mapv_inplace(f64::tanh);
            }
            state = pre;
        }
        (state, prefixes)
    };
    let (chosen_hidden, chosen_prefix_hidden) = run(&chosen_tokens);
    let (rejected_hidden, rejected_prefix_hidden) = run(&rejected_tokens);
    PairSet {
        name: name.to_string(),
        prompt_hidden,
        chosen_hidden,
        rejected_hidden,
        chosen_tokens,
        rejected_tokens,
        chosen_prefix_hidden,
        rejected_prefix_hidden,
    }
}
