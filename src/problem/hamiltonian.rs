//! The Hamiltonian-cycle task of the paper's verification-versus-generation experiment
//! (MATH.md §7), as the official `HamiltonianCycleDatasetLoader` builds it: graphs with a planted
//! Hamiltonian cycle, prompts listing vertices and edges, the planted cycle as the chosen
//! response and a vertex order that is not a cycle as the rejected one; the official evaluator's
//! check of a generated response; and every vertex order of a graph, for exact generation
//! probabilities at small `n`.
//!
//! Where rmflow differs from the official code: the draws come from ChaCha8 seeded by
//! [`CycleSpec::seed`], not from `torch.Generator` (same distribution, not the same graphs); the
//! draw order is the official one (cycle order, then one Bernoulli per other pair in `(i, j)`
//! order, then the edge shuffle, then up to ten rejected orders). Where ten drawn orders are all
//! cycles (a complete graph: frequent at small `n` and large `p`, never seen at the official
//! `n = 10, p = 0.2`) the official loader raises; rmflow draws that pair's graph again, up to
//! [`MAX_GRAPH_DRAWS`] times.

use crate::config::{check, ConfigError};
use crate::error::InputError;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The separator between listed items (`<sep>`), added to the vocabulary.
pub const SEP: &str = "<sep>";
/// The separator inside an edge (`u<edge_sep>v`), added to the vocabulary.
pub const EDGE_SEP: &str = "<edge_sep>";
/// Rejected orders drawn before giving up (the official `MAX_ATTEMPTS_NOT_HAM_CYCLE`).
pub const MAX_REJECTED_DRAWS: usize = 10;
/// Graphs drawn for one pair before refusing the spec as too dense.
pub const MAX_GRAPH_DRAWS: usize = 1000;
/// The largest `n` whose `n!` vertex orders [`vertex_orders`] enumerates (8! = 40 320).
pub const MAX_ENUMERATED_VERTICES: usize = 8;

/// `[data]` of the Hamiltonian-cycle experiment (defaults: the official plan).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CycleSpec {
    /// Vertices per graph (official: 10).
    pub vertices: usize,
    /// Probability of each edge outside the planted cycle (official: 0.2).
    pub edge_probability: f64,
    /// Training pairs (official: 1000).
    pub train_pairs: usize,
    /// Test pairs (official: 200).
    pub test_pairs: usize,
    /// Seed of the draws (official `dataset_prep_random_seed`: 517).
    pub seed: u64,
}

impl Default for CycleSpec {
    fn default() -> Self {
        CycleSpec {
            vertices: 10,
            edge_probability: 0.2,
            train_pairs: 1000,
            test_pairs: 200,
            seed: 517,
        }
    }
}

impl CycleSpec {
    /// Domains of the fields; errors name the field (`data.…`, the table of
    /// `experiments/ham_cycle.toml`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let n = self.vertices;
        check(
            (4..=64).contains(&n),
            "data.vertices",
            "must be in [4, 64] (on 3 vertices every order is a cycle: no rejected response exists)",
            n,
        )?;
        let p = self.edge_probability;
        check(
            (0.0..=1.0).contains(&p),
            "data.edge_probability",
            "must be in [0, 1]",
            p,
        )?;
        check(
            self.train_pairs >= 1,
            "data.train_pairs",
            "must be ≥ 1",
            self.train_pairs,
        )?;
        check(
            self.test_pairs >= 1,
            "data.test_pairs",
            "must be ≥ 1",
            self.test_pairs,
        )
    }
}

/// An undirected graph on `0..n`: its edges in the prompt's (shuffled) order, each `(u, v)` with
/// `u < v`, and its adjacency matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    pub vertices: usize,
    pub edges: Vec<(usize, usize)>,
    adjacent: Vec<bool>,
}

impl Graph {
    /// The graph with these edges (each pair once, in either orientation).
    pub fn new(vertices: usize, edges: Vec<(usize, usize)>) -> Graph {
        let mut adjacent = vec![false; vertices * vertices];
        for &(u, v) in &edges {
            adjacent[u * vertices + v] = true;
            adjacent[v * vertices + u] = true;
        }
        Graph {
            vertices,
            edges,
            adjacent,
        }
    }

    pub fn has_edge(&self, u: usize, v: usize) -> bool {
        self.adjacent[u * self.vertices + v]
    }

    /// Whether `order` is a Hamiltonian cycle: every vertex once, every consecutive pair (the
    /// last and the first included) an edge.
    pub fn is_cycle(&self, order: &[usize]) -> bool {
        let n = self.vertices;
        if order.len() != n {
            return false;
        }
        let mut seen = vec![false; n];
        for &v in order {
            if v >= n || std::mem::replace(&mut seen[v], true) {
                return false;
            }
        }
        (0..n).all(|i| self.has_edge(order[i], order[(i + 1) % n]))
    }

    /// The prompt: `Vertices: <sep>0<sep>1…` and, on the next line, `Edges: <sep>u<edge_sep>v…`.
    pub fn prompt(&self) -> String {
        let vertices: String = (0..self.vertices).map(|v| format!("{SEP}{v}")).collect();
        let edges: String = self
            .edges
            .iter()
            .map(|(u, v)| format!("{SEP}{u}{EDGE_SEP}{v}"))
            .collect();
        format!("Vertices: {vertices}\nEdges: {edges}")
    }
}

/// A vertex order as a response: the vertices joined by `<sep>`.
pub fn response(order: &[usize]) -> String {
    order
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(SEP)
}

/// The official evaluator's verdict on a generated response to `graph`'s prompt: exactly `n`
/// `<sep>`-separated entries, all decimal digits, forming a Hamiltonian cycle. Stricter in one
/// corner: the official check asks the entries to be distinct as *strings*, so `01` and `1` pass
/// it as two vertices; here the vertices must be distinct as numbers.
pub fn is_correct_generation(graph: &Graph, generated: &str) -> bool {
    let parts: Vec<&str> = generated.split(SEP).collect();
    if parts.len() != graph.vertices {
        return false;
    }
    let mut order = Vec::with_capacity(parts.len());
    for p in parts {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        match p.parse::<usize>() {
            Ok(v) => order.push(v),
            Err(_) => return false,
        }
    }
    graph.is_cycle(&order)
}

/// One preference pair: the graph, its planted cycle (chosen) and a non-cycle order (rejected).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CyclePair {
    pub graph: Graph,
    pub chosen: Vec<usize>,
    pub rejected: Vec<usize>,
}

/// A uniformly random order of `0..n`.
fn random_order(rng: &mut ChaCha8Rng, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    order
}

/// One pair, drawn as the official loader does (see the module doc); `None` when ten drawn
/// orders were all Hamiltonian cycles (the official loader raises).
fn draw_pair(rng: &mut ChaCha8Rng, n: usize, p: f64) -> Option<CyclePair> {
    let (graph, cycle) = draw_graph(rng, n, p);
    let rejected = (0..MAX_REJECTED_DRAWS)
        .map(|_| random_order(rng, n))
        .find(|o| !graph.is_cycle(o))?;
    Some(CyclePair {
        graph,
        chosen: cycle,
        rejected,
    })
}

/// A graph with a planted cycle (returned with it), drawn as the official loader does: the
/// cycle's order, one Bernoulli(`p`) per other pair in `(i, j)` order, the edge shuffle.
fn draw_graph(rng: &mut ChaCha8Rng, n: usize, p: f64) -> (Graph, Vec<usize>) {
    let cycle = random_order(rng, n);
    let mut edges: Vec<(usize, usize)> = (0..n)
        .map(|i| {
            let (a, b) = (cycle[i], cycle[(i + 1) % n]);
            (a.min(b), a.max(b))
        })
        .collect();
    for i in 0..n {
        for j in i + 1..n {
            if !edges.contains(&(i, j)) && rng.random::<f64>() < p {
                edges.push((i, j));
            }
        }
    }
    edges.shuffle(rng);
    (Graph::new(n, edges), cycle)
}

/// A simple random walk of `len` vertices on `graph`: a uniformly random start, then each step
/// to a uniformly random neighbour of the current vertex (going back allowed, so vertices
/// repeat). The pretraining responses that teach the reference model which pairs are edges
/// (`pretrain.walk_fraction`). A vertex without neighbours ends the walk early; a graph with a
/// planted cycle has none.
pub fn random_walk(rng: &mut ChaCha8Rng, graph: &Graph, len: usize) -> Vec<usize> {
    let n = graph.vertices;
    let mut walk = Vec::with_capacity(len);
    if n == 0 || len == 0 {
        return walk;
    }
    walk.push(rng.random_range(0..n));
    while walk.len() < len {
        let here = walk[walk.len() - 1];
        let next: Vec<usize> = (0..n).filter(|&v| graph.has_edge(here, v)).collect();
        match next.choose(rng) {
            Some(&v) => walk.push(v),
            None => break,
        }
    }
    walk
}

/// `count` graphs of `spec`'s size and density drawn from `seed` (not `spec.seed`, so they are
/// independent of the training and test pairs): the prompts of the reference model's
/// pretraining, whose responses are random vertex orders (and walks, `pretrain.walk_fraction`).
pub fn pretraining_graphs(spec: &CycleSpec, count: usize, seed: u64) -> Vec<Graph> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|_| draw_graph(&mut rng, spec.vertices, spec.edge_probability).0)
        .collect()
}

/// The training and test pairs of `spec` (one stream: training pairs first).
pub fn generate(spec: &CycleSpec) -> Result<(Vec<CyclePair>, Vec<CyclePair>), InputError> {
    spec.validate().map_err(|e| InputError(e.to_string()))?;
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let mut draw = |count: usize| -> Result<Vec<CyclePair>, InputError> {
        (0..count)
            .map(|_| {
                (0..MAX_GRAPH_DRAWS)
                    .find_map(|_| draw_pair(&mut rng, spec.vertices, spec.edge_probability))
                    .ok_or_else(|| {
                        InputError(format!(
                            "{MAX_GRAPH_DRAWS} graphs in a row had {MAX_REJECTED_DRAWS} random vertex orders that were all Hamiltonian cycles (data.edge_probability = {} is too dense to draw a rejected response)",
                            spec.edge_probability
                        ))
                    })
            })
            .collect()
    };
    let train = draw(spec.train_pairs)?;
    let test = draw(spec.test_pairs)?;
    Ok((train, test))
}

/// Every order of `0..n` (`n!` of them, lexicographic), for `n ≤ MAX_ENUMERATED_VERTICES`.
pub fn vertex_orders(n: usize) -> Result<Vec<Vec<usize>>, InputError> {
    if n > MAX_ENUMERATED_VERTICES {
        return Err(InputError(format!(
            "exact enumeration needs n ≤ {MAX_ENUMERATED_VERTICES} vertices ({n}! orders asked)"
        )));
    }
    let mut order: Vec<usize> = (0..n).collect();
    let mut out = vec![order.clone()];
    // Next lexicographic permutation until the last.
    loop {
        let Some(i) = (1..n).rev().find(|&i| order[i - 1] < order[i]) else {
            return Ok(out);
        };
        let j = (i..n)
            .rev()
            .find(|&j| order[j] > order[i - 1])
            .expect("a larger element follows");
        order.swap(i - 1, j);
        order[i..].reverse();
        out.push(order.clone());
    }
}

/// Most vertices [`count_cycle_orders`] counts on: Held–Karp holds `2^n · n` counts (20: 168 MB,
/// about 0.1 s a graph on 2 cores); above it the count is not computed.
pub const MAX_COUNTED_VERTICES: usize = 20;

/// The number of vertex orders that are Hamiltonian cycles of `graph` (each undirected cycle
/// counted `2n` times: `n` starts × 2 directions), by Held–Karp dynamic programming over subsets
/// (independent of [`Graph::is_cycle`]); `None` above [`MAX_COUNTED_VERTICES`] vertices
/// (the validation accepts up to 64).
pub fn count_cycle_orders(graph: &Graph) -> Option<u64> {
    let n = graph.vertices;
    if n > MAX_COUNTED_VERTICES {
        return None;
    }
    // paths[mask · n + v]: Hamiltonian paths from vertex 0 over `mask` ending at v (one flat
    // table: n ≤ 20 fits u64, at most 19! paths).
    let mut paths = vec![0u64; (1usize << n) * n];
    paths[n] = 1; // mask 1, v = 0
    for mask in 1..(1usize << n) {
        if mask & 1 == 0 {
            continue;
        }
        for v in 0..n {
            let count = paths[mask * n + v];
            if count == 0 {
                continue;
            }
            for w in 0..n {
                if mask & (1 << w) == 0 && graph.has_edge(v, w) {
                    paths[(mask | (1 << w)) * n + w] += count;
                }
            }
        }
    }
    let full = (1usize << n) - 1;
    let directed_from_zero: u64 = (1..n)
        .filter(|&v| graph.has_edge(v, 0))
        .map(|v| paths[full * n + v])
        .sum();
    // Directed cycles through vertex 0 as the start, times n starting positions.
    Some(directed_from_zero * n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planted_cycles_are_cycles_and_rejected_orders_never_are() {
        for (n, p) in [(4, 1.0), (4, 0.5), (6, 0.2), (10, 0.2), (12, 0.9)] {
            let spec = CycleSpec {
                vertices: n,
                edge_probability: p,
                train_pairs: 60,
                test_pairs: 20,
                seed: 3,
            };
            match generate(&spec) {
                Ok((train, test)) => {
                    for pair in train.iter().chain(&test) {
                        assert!(pair.graph.is_cycle(&pair.chosen), "n {n}: planted");
                        assert!(!pair.graph.is_cycle(&pair.rejected), "n {n}: rejected");
                        assert!(pair.graph.edges.iter().all(|&(u, v)| u < v && v < n));
                        let mut e = pair.graph.edges.clone();
                        e.sort_unstable();
                        e.dedup();
                        assert_eq!(e.len(), pair.graph.edges.len(), "an edge listed twice");
                        assert!(is_correct_generation(&pair.graph, &response(&pair.chosen)));
                        assert!(!is_correct_generation(
                            &pair.graph,
                            &response(&pair.rejected)
                        ));
                    }
                }
                // K4 (p = 1): every order is a cycle, no rejected response exists.
                Err(e) => assert!(n == 4 && p == 1.0 && e.0.contains("too dense"), "{e}"),
            }
        }
    }

    #[test]
    fn the_cycle_check_agrees_with_held_karp_on_small_graphs() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for n in 3..=7 {
            let orders = vertex_orders(n).unwrap();
            assert_eq!(orders.len(), (1..=n).product::<usize>());
            for _ in 0..25 {
                let p = rng.random::<f64>();
                let edges: Vec<(usize, usize)> = (0..n)
                    .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
                    .filter(|_| rng.random::<f64>() < p)
                    .collect();
                let g = Graph::new(n, edges);
                let by_check = orders.iter().filter(|o| g.is_cycle(o)).count() as u64;
                assert_eq!(
                    Some(by_check),
                    count_cycle_orders(&g),
                    "n {n}, {:?}",
                    g.edges
                );
            }
        }
    }

    #[test]
    fn generations_are_scored_as_the_official_evaluator_does() {
        let g = Graph::new(4, vec![(0, 1), (1, 2), (2, 3), (0, 3)]);
        assert!(is_correct_generation(&g, "0<sep>1<sep>2<sep>3"));
        assert!(is_correct_generation(&g, "2<sep>1<sep>0<sep>3"));
        for bad in [
            "0<sep>2<sep>1<sep>3",
            "0<sep>1<sep>2",
            "0<sep>1<sep>2<sep>3<sep>",
            "0<sep>1<sep>1<sep>3",
            "0<sep>1<sep>2<sep>x",
            "0<sep>1<sep>2<sep>-3",
            "0<sep>1<sep>2<sep>7",
            "0<sep>1<sep>01<sep>3",
        ] {
            assert!(!is_correct_generation(&g, bad), "{bad}");
        }
        assert_eq!(
            g.prompt(),
            "Vertices: <sep>0<sep>1<sep>2<sep>3\nEdges: <sep>0<edge_sep>1<sep>1<edge_sep>2<sep>2<edge_sep>3<sep>0<edge_sep>3"
        );
    }

    #[test]
    fn draws_are_reproducible_and_seeded() {
        let spec = CycleSpec {
            vertices: 6,
            train_pairs: 10,
            test_pairs: 5,
            ..CycleSpec::default()
        };
        assert_eq!(generate(&spec).unwrap(), generate(&spec).unwrap());
        let other = CycleSpec {
            seed: 518,
            ..spec.clone()
        };
        assert_ne!(generate(&spec).unwrap().0, generate(&other).unwrap().0);
        assert!(vertex_orders(9).is_err());
        let three = CycleSpec {
            vertices: 3,
            ..spec
        };
        assert!(matches!(
            three.validate(),
            Err(ConfigError::Field { field, .. }) if field == "data.vertices"
        ));
    }

    #[test]
    fn random_walks_follow_edges_and_reach_every_neighbour() {
        let graphs = pretraining_graphs(&CycleSpec::default(), 20, 11);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for g in &graphs {
            let mut used = vec![false; g.vertices * g.vertices];
            for _ in 0..200 {
                let w = random_walk(&mut rng, g, g.vertices);
                assert_eq!(w.len(), g.vertices);
                for s in w.windows(2) {
                    assert!(g.has_edge(s[0], s[1]), "step {s:?} is not an edge");
                    used[s[0] * g.vertices + s[1]] = true;
                }
            }
            // 200 walks of 9 steps go along every edge both ways: near stationarity a step
            // takes a given direction with probability 1/(2m), m ≈ 17 edges, so one is missed
            // with probability about e^(-1800/34) ≈ 1e-23.
            for &(u, v) in &g.edges {
                assert!(
                    used[u * g.vertices + v] && used[v * g.vertices + u],
                    "({u}, {v})"
                );
            }
        }
        let lonely = Graph::new(3, vec![]);
        assert_eq!(random_walk(&mut rng, &lonely, 3).len(), 1);
    }
}
