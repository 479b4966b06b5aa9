//! The EX-RM residual flow `ρ = u − u* ln t` in `s = ln t` (Theorem 2(b)'s refinement).

use super::train::check_finite;
use crate::config::TrainConfig;
use crate::numerics::softplus;
use crate::solve::ode::{integrate, OdeOptions, OdeStats};
use anyhow::Result;

/// The EX-RM flow written for its residual `ρ = u − u* ln t` (MATH.md §4, Theorem 2(b)): in
/// `s = ln t`, `dρ/ds = (1/N) Σ_i exp(s − softplus(m_i)) z_i − u*`, with
/// `m_i = s⟨u*, z_i⟩ + ⟨ρ, z_i⟩`. Since `u = u* s + ρ` exactly for any fixed `u*`, this is the
/// same flow as [`train`](super::train())'s; but the state stays bounded, so `ρ` is integrated to the integrator's
/// relative accuracy instead of being the difference of two vectors of size `‖u*‖ ln t`, and the
/// horizon is limited only by `s` (`t = 10^100000` and beyond). Starts from `u(1)` (the flow's
/// linear-time phase, [`train`](super::train()) to `t = 1`); returns `ρ` at each `log10 t` of `log10_times`
/// (all > 0, increasing) and the integrator's counters.
pub fn residual_flow(
    features: &ndarray::Array2<f64>,
    u_star: &[f64],
    u_at_1: &[f64],
    log10_times: &[f64],
    cfg: &TrainConfig,
) -> Result<(Vec<Vec<f64>>, OdeStats)> {
    let (n, d) = features.dim();
    let star_margin: Vec<f64> = features
        .rows()
        .into_iter()
        .map(|z| z.iter().zip(u_star).map(|(a, b)| a * b).sum())
        .collect();
    let outputs: Vec<f64> = log10_times
        .iter()
        .map(|l| l * std::f64::consts::LN_10)
        .collect();
    let opts = OdeOptions {
        rtol: cfg.rtol,
        atol: cfg.atol,
        max_steps: cfg.max_steps,
        fixed_step: None,
        min_step: 1e-8,
        dense_output: cfg.dense_output,
    };
    let mut rho_margin = vec![0.0; n];
    let mut out = Vec::with_capacity(outputs.len());
    let stats = integrate(
        |s, rho, drho| {
            for (i, z) in features.rows().into_iter().enumerate() {
                rho_margin[i] = z.iter().zip(rho).map(|(a, b)| a * b).sum::<f64>();
            }
            drho.iter_mut().zip(u_star).for_each(|(g, u)| *g = -u);
            for (i, z) in features.rows().into_iter().enumerate() {
                let m = s * star_margin[i] + rho_margin[i];
                let w = (s - softplus(m)).exp() / n as f64;
                for j in 0..d {
                    drho[j] += w * z[j];
                }
            }
            check_finite(
                "EX-RM residual flow",
                s / std::f64::consts::LN_10,
                &rho_margin,
                drho,
                "dρ/ds",
            )
        },
        0.0,
        u_at_1,
        &outputs,
        &opts,
        |_, rho, _| {
            out.push(rho.to_vec());
            Ok(())
        },
    )?;
    Ok((out, stats))
}
