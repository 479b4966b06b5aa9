//! Exact generation probabilities by enumeration (`n ≤ 8`): every vertex order `σ` of a prompt
//! is scored as the response `σ₁ <sep> σ₂ … <sep> σₙ <eos>`, the prompt's keys and values
//! computed once for all orders ([`LanguageModel::continuation_hidden_states`]). From
//! `ln π(σ|x) = Σ_k ln π(y_k | x, y_<k)`:
//! - `π(C|x) = Σ_{σ ∈ C(x)} π(σ|x)`, `C(x)` the orders that are Hamiltonian cycles of the
//!   prompt's graph: the probability that one sample is a correct generation, up to the
//!   (measured-as-absent here) mass of texts that decode to a cycle through other tokens;
//! - `π(orders|x) = Σ_σ π(σ|x)`: the mass on well-formed permutations;
//! - a check of the bookkeeping: the same conditionals restricted to the grammar (at each vertex
//!   step a softmax over the unused vertices only) define a distribution over the `n!` orders,
//!   whose total must be 1.

use super::tokens::CycleTokens;
use crate::lm::LanguageModel;
use crate::numerics::logsumexp;
use crate::problem::hamiltonian::Graph;
use anyhow::Result;
use candle_core::Tensor;
use ndarray::ArrayView1;
use serde::Serialize;

/// One prompt's exact masses (natural logs).
#[derive(Debug, Clone, Serialize)]
pub struct OrderMass {
    /// `ln π(C|x)`.
    pub ln_cycles: f64,
    /// `ln π(orders|x)`.
    pub ln_orders: f64,
    /// Total of the grammar-restricted distribution (1 up to f32 rounding).
    pub restricted_total: f64,
    /// `|C(x)|`: orders that are Hamiltonian cycles (`2n ×` the undirected cycles).
    pub cycle_orders: usize,
}

/// Rows of `h` whose logits are formed at once: a `[ROWS, V]` block (f32, then f64), so a
/// pretrained vocabulary of ~50 000 tokens costs ~0.3 GB, not one `[R, V]` matrix.
const ROWS: usize = 1024;

/// For each row of `h` [R, D] under `unembedding` [V, D]: the logsumexp of its logits (f64)
/// and its logits at `ids` (f64, `[R, ids.len()]`).
fn task_logits(
    h: &Tensor,
    unembedding: &Tensor,
    ids: &[u32],
) -> Result<(Vec<f64>, ndarray::Array2<f64>)> {
    let r = h.dim(0)?;
    let mut lse = Vec::with_capacity(r);
    let mut picked = ndarray::Array2::zeros((r, ids.len()));
    let u_t = unembedding.t()?;
    for start in (0..r).step_by(ROWS) {
        let rows = ROWS.min(r - start);
        let logits = crate::lm::model::to_array2(&h.narrow(0, start, rows)?.matmul(&u_t)?)?;
        for (k, row) in logits.rows().into_iter().enumerate() {
            lse.push(logsumexp(row.as_slice().expect("standard layout")));
            for (j, &t) in ids.iter().enumerate() {
                picked[[start + k, j]] = row[t as usize];
            }
        }
    }
    Ok((lse, picked))
}

/// The exact masses of `graph`'s prompt (`prompt` its rendered ids) under the policy with
/// unembedding `unembedding`, scoring `orders` (every vertex order) in batches of `batch`.
pub fn order_masses(
    lm: &LanguageModel,
    unembedding: &Tensor,
    tokens: &CycleTokens,
    prompt: &[u32],
    graph: &Graph,
    orders: &[Vec<usize>],
    batch: usize,
) -> Result<OrderMass> {
    let n = graph.vertices;
    // The logits read: the vertices' (columns 0..n), then the separator's and the eos'.
    let ids: Vec<u32> = tokens.vertex[..n]
        .iter()
        .copied()
        .chain([tokens.sep, tokens.eos])
        .collect();
    let column = |t: u32| ids.iter().position(|&i| i == t).expect("a task token");
    let (mut cycles, mut all, mut restricted) = (Vec::new(), Vec::new(), Vec::new());
    for chunk in orders.chunks(batch) {
        let responses: Vec<Vec<u32>> = chunk.iter().map(|o| tokens.response_ids(o)).collect();
        // Inputs: every response token but the last (eos); row k predicts token k + 1.
        let inputs: Vec<Vec<u32>> = responses
            .iter()
            .map(|r| r[..r.len() - 1].to_vec())
            .collect();
        let (h_last, h) = lm.continuation_hidden_states(prompt, &inputs)?;
        let (first_lse, first) = task_logits(&h_last.unsqueeze(0)?, unembedding, &ids)?;
        let (b, c, d) = h.dims3()?;
        let (rest_lse, rest) = task_logits(&h.reshape((b * c, d))?, unembedding, &ids)?;
        for (j, (order, resp)) in chunk.iter().zip(&responses).enumerate() {
            let row = |k: usize| -> (f64, ArrayView1<f64>) {
                if k == 0 {
                    (first_lse[0], first.row(0))
                } else {
                    (rest_lse[j * c + k - 1], rest.row(j * c + k - 1))
                }
            };
            let mut lp = 0.0;
            let mut lr = 0.0;
            let mut used = vec![false; n];
            for (k, &t) in resp.iter().enumerate() {
                let (lse, logits) = row(k);
                let logit = logits[column(t)];
                lp += logit - lse;
                if k % 2 == 0 && k < 2 * n - 1 {
                    // A vertex step: the grammar allows the unused vertices.
                    let allowed: Vec<f64> =
                        (0..n).filter(|&v| !used[v]).map(|v| logits[v]).collect();
                    lr += logit - logsumexp(&allowed);
                    used[order[k / 2]] = true;
                }
            }
            all.push(lp);
            restricted.push(lr);
            if graph.is_cycle(order) {
                cycles.push(lp);
            }
        }
    }
    Ok(OrderMass {
        ln_cycles: if cycles.is_empty() {
            f64::NEG_INFINITY
        } else {
            logsumexp(&cycles)
        },
        ln_orders: logsumexp(&all),
        restricted_total: logsumexp(&restricted).exp(),
        cycle_orders: cycles.len(),
    })
}
