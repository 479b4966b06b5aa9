//! Gradients against central finite differences, and the full vs sparse IM-RM paths (MATH.md §2).

mod common;

use proptest::prelude::*;
use rmflow::config::GradientPath;
use rmflow::problem::reward::{loss_and_gradient, mean_loss, ExplicitRm, ImplicitRm, MarginModel};
use rmflow::problem::synthetic::Setup;

fn loss_at(model: &dyn MarginModel, theta: &[f64]) -> f64 {
    let mut m = vec![0.0; model.n_pairs()];
    model.margins(theta, &mut m);
    mean_loss(&m)
}

/// Max over coordinates of |analytic − central difference| / (1 + |analytic|), step h = 1e-5:
/// truncation O(h²·L''') ≈ 1e-10 and rounding O(ε·L/h) ≈ 1e-11, so 1e-7 leaves a wide margin.
fn fd_error(model: &dyn MarginModel, theta: &[f64]) -> f64 {
    let mut g = vec![0.0; theta.len()];
    loss_and_gradient(model, theta, &mut g);
    let h = 1e-5;
    let mut worst = 0.0f64;
    let mut t = theta.to_vec();
    for j in 0..theta.len() {
        t[j] = theta[j] + h;
        let lp = loss_at(model, &t);
        t[j] = theta[j] - h;
        let lm = loss_at(model, &t);
        t[j] = theta[j];
        worst = worst.max(((lp - lm) / (2.0 * h) - g[j]).abs() / (1.0 + g[j].abs()));
    }
    worst
}

fn perturbed(theta: &[f64], seed: u64) -> Vec<f64> {
    // A deterministic perturbation so the check is not only at the initialisation.
    theta
        .iter()
        .enumerate()
        .map(|(i, v)| v + 0.3 * (((i as u64 * 2654435761 + seed) % 1000) as f64 / 1000.0 - 0.5))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn explicit_gradient_matches_finite_differences(config in common::small_config()) {
        let setup = Setup::generate(&config);
        let model = ExplicitRm::new(&setup.train);
        let theta = perturbed(&setup.head_init.to_vec(), config.seed);
        let err = fd_error(&model, &theta);
        prop_assert!(err < 1e-7, "EX-RM gradient vs finite differences: {err:e}");
    }

    #[test]
    fn implicit_gradients_match_finite_differences(config in common::small_config()) {
        let setup = Setup::generate(&config);
        let u0: Vec<f64> = setup.unembedding_init.full().iter().copied().collect();
        let theta = perturbed(&u0, config.seed);
        for path in [GradientPath::Full, GradientPath::SeenRows] {
            let model = ImplicitRm::new(&setup.train, setup.unembedding_init.full().view(), config.setup.beta, path);
            let err = fd_error(&model, &theta);
            prop_assert!(err < 1e-7, "IM-RM {path:?} gradient vs finite differences: {err:e}");
        }
    }

    /// Full (log-softmax over V, π terms cancelling numerically) and sparse (cancelled form) paths:
    /// unseen rows of the full gradient are exactly 0, seen rows agree to rounding (1e-12 relative).
    #[test]
    fn full_and_sparse_imrm_gradients_agree(config in common::small_config()) {
        let setup = Setup::generate(&config);
        let u0: Vec<f64> = setup.unembedding_init.full().iter().copied().collect();
        let theta = perturbed(&u0, config.seed ^ 7);
        let full = ImplicitRm::new(&setup.train, setup.unembedding_init.full().view(), config.setup.beta, GradientPath::Full);
        let sparse = ImplicitRm::new(&setup.train, setup.unembedding_init.full().view(), config.setup.beta, GradientPath::SeenRows);
        let (mut gf, mut gs) = (vec![0.0; theta.len()], vec![0.0; theta.len()]);
        let lf = loss_and_gradient(&full, &theta, &mut gf);
        let ls = loss_and_gradient(&sparse, &theta, &mut gs);
        prop_assert!((lf - ls).abs() <= 1e-12 * (1.0 + lf.abs()), "losses {lf} vs {ls}");
        let d = config.setup.dim;
        let scale = gs.iter().fold(0.0f64, |a, g| a.max(g.abs())).max(1e-300);
        for z in setup.unseen_tokens() {
            for j in 0..d {
                prop_assert_eq!(gf[z * d + j], 0.0, "full gradient row of unseen token {} is not exactly 0", z);
                prop_assert_eq!(gs[z * d + j], 0.0);
            }
        }
        for (a, b) in gf.iter().zip(&gs) {
            prop_assert!((a - b).abs() <= 1e-12 * scale, "full {a} vs sparse {b}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The reduced IM-RM state (rows of T only) has the margins and gradient rows of the full
    /// sparse path exactly, and embeds back into U(0) elsewhere.
    #[test]
    fn reduced_seen_rows_state_matches_the_sparse_path(config in common::small_config()) {
        let setup = Setup::generate(&config);
        let d = config.setup.dim;
        let full = ImplicitRm::new(&setup.train, setup.unembedding_init.full().view(), config.setup.beta, GradientPath::SeenRows);
        let reduced = rmflow::problem::reward::SeenRowsImplicitRm::new(&setup.train, &setup.unembedding_init, config.setup.beta);
        let theta_t = perturbed(&reduced.initial(), config.seed);
        let u = reduced.embed(&theta_t, &setup.unembedding_init);
        let (mut gf, mut gr) = (vec![0.0; u.len()], vec![0.0; theta_t.len()]);
        let lf = loss_and_gradient(&full, &u, &mut gf);
        let lr = loss_and_gradient(&reduced, &theta_t, &mut gr);
        prop_assert_eq!(lf, lr);
        for (r, &t) in reduced.rows.iter().enumerate() {
            prop_assert_eq!(&gf[t * d..(t + 1) * d], &gr[r * d..(r + 1) * d]);
        }
        let u0: Vec<f64> = setup.unembedding_init.full().iter().copied().collect();
        for z in setup.unseen_tokens() {
            prop_assert_eq!(&u[z * d..(z + 1) * d], &u0[z * d..(z + 1) * d]);
        }
    }
}
