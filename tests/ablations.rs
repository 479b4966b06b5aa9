//! The paper's ablations and metrics on the synthetic model (MATH.md §1, §6).

use rmflow::config::{Config, UnembeddingInit};
use rmflow::experiment::observables::{reward_summary, split_metrics};
use rmflow::problem::synthetic::SplitId;

#[test]
fn imrm_without_reference_ranks_unseen_tokens_by_the_initial_rows_forever() {
    for init in [UnembeddingInit::Tied, UnembeddingInit::Independent] {
        let mut c = Config::embedded_default();
        c.train.t_max = 1e8;
        c.setup.unembedding_init = init;
        let sim = rmflow::experiment::simulation::simulate(&c, &mut |_| {}).unwrap();
        let a = &sim.ablations;
        let unseen = |v: &[rmflow::experiment::observables::SplitMetrics]| {
            v.iter()
                .find(|s| SplitId::Unseen.is(&s.split))
                .unwrap()
                .clone()
        };
        // Unseen rows never move (Theorem 2a), so the no-reference margins on unseen pairs are
        // U(0)'s up to the rounding of the log-normalisers (≤ 1e-12 here).
        let (now, start) = (
            unseen(&a.imrm_no_reference),
            unseen(&a.imrm_no_reference_initial),
        );
        assert_eq!(now.tie_aware_accuracy, start.tie_aware_accuracy, "{init:?}");
        assert_eq!(now.strict_accuracy, start.strict_accuracy, "{init:?}");
        assert!(
            (now.mean_margin - start.mean_margin).abs() < 1e-12,
            "{init:?}"
        );
        assert!(
            (now.min_margin - start.min_margin).abs() < 1e-12,
            "{init:?}"
        );
        assert!(
            a.exrm_token_mean.is_none(),
            "K = 1 has no token-mean variant"
        );
    }
}

/// The ablation is trained on its own margins: the loss weights σ(−m_i) see `β ln π_U`, so its
/// trajectory differs from the referenced run's (which is what the scored variant reads), while
/// its unseen rows stay at U(0) all the same.
#[test]
fn imrm_without_reference_is_trained_on_its_own_margins() {
    let mut c = Config::embedded_default();
    c.train.t_max = 1e4;
    c.setup.unembedding_init = UnembeddingInit::Independent;
    let sim = rmflow::experiment::simulation::simulate(&c, &mut |_| {}).unwrap();
    let a = &sim.ablations;
    let run = &a.imrm_no_reference_run;
    // Same rows stored, different final values on the training tokens.
    assert_eq!(run.rows, sim.implicit.rows);
    let moved: f64 = run
        .final_params
        .iter()
        .zip(&sim.implicit.final_params)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(moved > 1e-3, "trained without reference = scored: {moved}");
    // At t = 0 its training loss is that of the no-reference margins, not ln 2.
    let first = run.trajectory.first().unwrap();
    assert!(
        (first.loss - std::f64::consts::LN_2).abs() > 1e-6,
        "{}",
        first.loss
    );
    assert!((sim.implicit.trajectory[0].loss - std::f64::consts::LN_2).abs() < 1e-12);
    // Unseen rows of U are never part of the state: the stored non-training rows are U(0)'s.
    let train = sim.setup.train.tokens();
    let rows = run.rows.as_ref().unwrap();
    let d = sim.setup.dim();
    for (r, t) in rows.iter().enumerate() {
        if train.binary_search(t).is_err() {
            assert_eq!(
                run.final_params[r * d..(r + 1) * d],
                run.initial[r * d..(r + 1) * d]
            );
        }
    }
    // Trained and scored variants are different quantities on the training pairs.
    let train_acc = |v: &[rmflow::experiment::observables::SplitMetrics]| {
        v.iter()
            .find(|s| SplitId::Train.is(&s.split))
            .unwrap()
            .mean_margin
    };
    assert_ne!(
        train_acc(&a.imrm_no_reference),
        train_acc(&a.imrm_scored_without_reference)
    );
}

/// The full-vocabulary path and the seen-row path train the same ablation (K = 1).
#[test]
fn imrm_without_reference_agrees_on_both_gradient_paths() {
    let mut c = Config::embedded_default();
    c.train.t_max = 1e3;
    c.setup.filler_tokens = 100;
    c.setup.train_pairs = 40;
    c.setup.eval_pairs = 20;
    let mut runs = Vec::new();
    for path in [
        rmflow::config::GradientPath::SeenRows,
        rmflow::config::GradientPath::Full,
    ] {
        c.train.imrm_gradient = path;
        let sim = rmflow::experiment::simulation::simulate(&c, &mut |_| {}).unwrap();
        runs.push(sim.ablations.imrm_no_reference);
    }
    for (a, b) in runs[0].iter().zip(&runs[1]) {
        assert_eq!(a.split, b.split);
        assert!(
            (a.mean_margin - b.mean_margin).abs() <= 1e-6 * (1.0 + a.mean_margin.abs()),
            "{}: {} vs {}",
            a.split,
            a.mean_margin,
            b.mean_margin
        );
    }
}

#[test]
fn token_mean_exrm_runs_for_multi_token_responses() {
    let mut c = Config::from_file(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/experiments/multitoken.toml"
    )))
    .unwrap();
    c.train.t_max = 1e3;
    c.setup.train_pairs = 60;
    c.setup.eval_pairs = 20;
    let sim = rmflow::experiment::simulation::simulate(&c, &mut |_| {}).unwrap();
    let mean = sim.ablations.exrm_token_mean.as_ref().expect("K > 1");
    let last = mean.trajectory.last().unwrap();
    assert_eq!(
        last.splits.len(),
        sim.explicit.trajectory.last().unwrap().splits.len()
    );
    // Its features differ from the last-token ones.
    let m = rmflow::experiment::ablations::token_mean_setup(&sim.setup);
    assert_ne!(m.train.chosen_hidden, sim.setup.train.chosen_hidden);
}

#[test]
fn exact_tie_accuracy_and_normalised_margin_follow_their_definitions() {
    let m = [1.0, -1.0, 0.0, 0.0, 1e-12];
    let s = split_metrics("x", &m, 1e-9);
    assert_eq!(s.strict_accuracy, 2.0 / 5.0);
    assert_eq!(s.exact_tie_accuracy, 3.0 / 5.0);
    assert_eq!(s.tie_aware_accuracy, 2.5 / 5.0);
    // chosen (1, 3), rejected (0, 0): |margins| 1 and 3; std of (1, 3, 0, 0) with n − 1.
    let r = reward_summary("x", &[1.0, 3.0], &[0.0, 0.0]);
    let mean: f64 = 1.0;
    let std = (((1.0 - mean).powi(2) + (3.0 - mean).powi(2) + 2.0 * mean * mean) / 3.0).sqrt();
    assert!((r.normalised_abs_margin - 2.0 / (std + 1e-8)).abs() < 1e-12);
    assert_eq!((r.mean_chosen_reward, r.mean_rejected_reward), (2.0, 0.0));
}
