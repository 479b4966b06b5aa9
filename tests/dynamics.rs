//! Learning dynamics (MATH.md §3, §5 with K ≥ 1): the recurrent map, ρ, velocities.

mod common;

use ndarray::Array1;
use proptest::prelude::*;
use rmflow::analysis::dynamics::{
    dynamics_checks, token_overlap, token_overlap_explicit, ResponsePrefixes,
};
use rmflow::config::GradientPath;
use rmflow::problem::reward::{loss_and_gradient, ImplicitRm, MarginModel};
use rmflow::problem::synthetic::Setup;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// `s_0 = h_x`, `s_k = tanh(A s_{k−1} + B e_{y_k})`, `h_{x,y} = s_K`: the setup runs the map as
    /// matrix products over all pairs; stepping it pair by pair gives the same states to 1e-14
    /// (max abs; only the summation order differs, and every state lies in [−1, 1]).
    #[test]
    fn responses_follow_the_recurrent_map(config in common::small_sequence_config()) {
        let setup = Setup::generate(&config);
        let lm = setup.generator.as_ref().expect("synthetic setup");
        let (a, b, e) = (&lm.recurrent.a, &lm.recurrent.b, &lm.embeddings);
        let gap = |x: ndarray::ArrayView1<f64>, y: ndarray::ArrayView1<f64>| {
            x.iter().zip(y.iter()).map(|(p, q)| (p - q).abs()).fold(0.0f64, f64::max)
        };
        for p in setup.splits() {
            prop_assert_eq!(p.response_length(), config.setup.response_length);
            for i in 0..p.len() {
                for (tokens, prefixes, last) in [(&p.chosen_tokens, &p.chosen_prefix_hidden, &p.chosen_hidden), (&p.rejected_tokens, &p.rejected_prefix_hidden, &p.rejected_hidden)] {
                    let mut s: Array1<f64> = p.prompt_hidden.row(i).to_owned();
                    for k in 0..p.response_length() {
                        let g = gap(prefixes.slice(ndarray::s![i, k, ..]), s.view());
                        prop_assert!(g <= 1e-14, "prefix state {k} of pair {i} differs by {g:e}");
                        s = (a.dot(&s) + b.dot(&e.row(tokens[[i, k]]))).mapv(f64::tanh);
                    }
                    let g = gap(last.row(i), s.view());
                    prop_assert!(g <= 1e-14, "response state of pair {i} differs by {g:e}");
                }
            }
        }
    }

    /// The overlap split takes round(f·K) tokens of each response from the seen set.
    #[test]
    fn overlap_splits_have_the_requested_token_overlap(config in common::small_sequence_config()) {
        let setup = Setup::generate(&config);
        let f = config.setup.eval_overlap[0];
        let k = config.setup.response_length;
        let want = (f * k as f64).round() as usize;
        let split = setup.evals.iter().find(|p| p.name == rmflow::config::overlap_split_name(f)).unwrap();
        for tokens in [&split.chosen_tokens, &split.rejected_tokens] {
            for row in tokens.rows() {
                let seen = row.iter().filter(|t| setup.seen_tokens.binary_search(t).is_ok()).count();
                prop_assert_eq!(seen, want);
            }
        }
    }

    /// The expanded ρ equals ⟨e_y − π, e_ȳ − π̄⟩ from explicit V-vectors (1e-12: V·ε bound), and
    /// |ρ| ≤ 2.
    #[test]
    fn rho_expanded_formula_matches_definition(config in common::small_sequence_config()) {
        let setup = Setup::generate(&config);
        let (v, d) = (setup.vocab_size(), setup.dim());
        let u: Vec<f64> = setup.unembedding_init.full().iter().enumerate().map(|(i, x)| x + 0.5 * ((i % 7) as f64 - 3.0)).collect();
        let u = ndarray::ArrayView2::from_shape((v, d), &u).unwrap();
        let ep = ResponsePrefixes::new(&setup.evals[1]);
        let tp = ResponsePrefixes::new(&setup.train);
        let rho = token_overlap(u, &ep, &tp);
        for r in 0..ep.tokens.len() {
            for c in 0..tp.tokens.len() {
                let x = token_overlap_explicit(u, ep.states.row(r), ep.tokens[r], tp.states.row(c), tp.tokens[c]);
                prop_assert!((x - rho[[r, c]]).abs() <= 1e-12, "ρ {} vs explicit {x}", rho[[r, c]]);
                prop_assert!(rho[[r, c]].abs() <= 2.0);
            }
        }
    }

    /// Multi-token IM-RM gradient (full path) against central finite differences.
    #[test]
    fn sequence_imrm_gradient_matches_finite_differences(config in common::small_sequence_config()) {
        let setup = Setup::generate(&config);
        let model = ImplicitRm::new(&setup.train, setup.unembedding_init.full().view(), config.setup.beta, GradientPath::Full);
        let theta: Vec<f64> = setup.unembedding_init.full().iter().enumerate().map(|(i, x)| x + 0.2 * ((i % 5) as f64 - 2.0)).collect();
        let mut g = vec![0.0; theta.len()];
        loss_and_gradient(&model, &theta, &mut g);
        let loss = |th: &[f64]| {
            let mut m = vec![0.0; model.n_pairs()];
            model.margins(th, &mut m);
            rmflow::problem::reward::mean_loss(&m)
        };
        let h = 1e-5;
        let mut t = theta.clone();
        for j in 0..theta.len() {
            t[j] = theta[j] + h;
            let lp = loss(&t);
            t[j] = theta[j] - h;
            let lm = loss(&t);
            t[j] = theta[j];
            let fd = (lp - lm) / (2.0 * h);
            prop_assert!((fd - g[j]).abs() <= 1e-7 * (1.0 + g[j].abs()), "coordinate {j}: fd {fd} vs {}", g[j]);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Velocity formulas against the integrated flow and a GD step; unseen single-token
    /// responses of one prompt share their velocity (MATH.md §3).
    #[test]
    fn velocities_match_the_flow(config in common::small_sequence_config()) {
        let setup = Setup::generate(&config);
        let c = dynamics_checks(&config, &setup, 3.0).unwrap();
        prop_assert!(c.rho_identity_error <= 1e-12, "{c:?}");
        prop_assert!(c.rho_max_abs <= 2.0, "{c:?}");
        prop_assert!(c.imrm_velocity_vs_flow <= 1e-6, "{c:?}");
        prop_assert!(c.exrm_velocity_vs_flow <= 1e-6, "{c:?}");
        if config.setup.response_length == 1 {
            prop_assert!(c.unseen_velocity_gap <= 1e-12, "{c:?}");
        }
        // O(η²): halving η divides the error by ~4, once the error is above rounding (1e-13).
        if c.gd_error > 1e-13 {
            prop_assert!((3.5..=4.5).contains(&c.gd_error_ratio), "{c:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The training-direction route (`direction`, what `lm-dynamics` runs on real vocabularies)
    /// gives the `ρ`-matrix route's (`split_dynamics`, `rmflow dynamics`' exports) IM-RM reward
    /// velocities and their token-identity parts, response by response, and the EX-RM's head
    /// velocities, within 1e-10 relative to the largest (summation order only), for K = 1..3 at a
    /// trained-looking U and unequal flow weights.
    #[test]
    fn direction_route_matches_the_rho_route(config in common::small_sequence_config()) {
        use rmflow::analysis::dynamics::direction::{head_direction, ResponseStates, TrainingDirection};
        use rmflow::analysis::dynamics::{flow_weights, split_dynamics, TrainingSide};
        let setup = Setup::generate(&config);
        let (v, d) = (setup.vocab_size(), setup.dim());
        let beta = config.setup.beta;
        let u: Vec<f64> = setup.unembedding_init.full().iter().enumerate().map(|(i, x)| x + 0.3 * ((i % 5) as f64 - 2.0)).collect();
        let u = ndarray::ArrayView2::from_shape((v, d), &u).unwrap();
        let n = setup.train.len();
        let margins: Vec<f64> = (0..n).map(|i| (i as f64 - n as f64 / 2.0) * 0.7).collect();
        let c = flow_weights(&margins);
        let side = TrainingSide::new(&setup.train);
        let k = setup.train.response_length();
        let states = |p: &rmflow::problem::synthetic::PairSet, i: usize, s: usize| {
            let pre = if s == 0 { &p.chosen_prefix_hidden } else { &p.rejected_prefix_hidden };
            let tok = if s == 0 { &p.chosen_tokens } else { &p.rejected_tokens };
            (pre.slice(ndarray::s![i, .., ..]).to_owned(), tok.row(i).to_vec())
        };
        let mut dir = TrainingDirection::zeros(v, d);
        for (i, &w) in c.iter().enumerate() {
            for (s, sign) in [(0, 1.0), (1, -1.0)] {
                let (h, t) = states(&setup.train, i, s);
                dir.add(u, ResponseStates { tokens: &t, states: h.view() }, sign * w);
            }
        }
        let head = head_direction(side.features.view(), &c);
        for eval in &setup.evals {
            let ep = rmflow::analysis::dynamics::ResponsePrefixes::new(eval);
            let got = split_dynamics(u, eval, &ep, &side, &c, &c, beta);
            let want_total = got.velocity.imrm_response.sum_axis(ndarray::Axis(1));
            let want_id = got.velocity.imrm_response_identity.sum_axis(ndarray::Axis(1));
            let want_ex = got.velocity.exrm_response.sum_axis(ndarray::Axis(1));
            let scale = want_total.iter().chain(want_ex.iter()).fold(1e-300f64, |a, x| a.max(x.abs()));
            for j in 0..eval.len() {
                for s in 0..2 {
                    let (h, t) = states(eval, j, s);
                    let vel = dir.velocities(u, ResponseStates { tokens: &t, states: h.view() });
                    prop_assert_eq!(vel.len(), k);
                    let total: f64 = beta * beta * vel.iter().map(|x| x.total).sum::<f64>();
                    let id: f64 = beta * beta * vel.iter().map(|x| x.identity).sum::<f64>();
                    let last = if s == 0 { eval.chosen_hidden.row(j) } else { eval.rejected_hidden.row(j) };
                    let ex = last.dot(&head);
                    let r = 2 * j + s;
                    prop_assert!((total - want_total[r]).abs() <= 1e-10 * scale, "{}: response {r} IM-RM {total} vs ρ route {}", eval.name, want_total[r]);
                    prop_assert!((id - want_id[r]).abs() <= 1e-10 * scale, "{}: response {r} identity {id} vs ρ route {}", eval.name, want_id[r]);
                    prop_assert!((ex - want_ex[r]).abs() <= 1e-10 * scale, "{}: response {r} EX-RM {ex} vs ρ route {}", eval.name, want_ex[r]);
                }
            }
        }
    }
}
