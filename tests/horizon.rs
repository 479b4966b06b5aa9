//! Horizons past f64's `t ≤ 1.8e308`: the flow in `s = ln t`, and the residual flow of 2(b).

use rmflow::config::Config;
use rmflow::experiment::simulation::{max_margin_for, ModelKind};
use rmflow::problem::reward::ExplicitRm;
use rmflow::problem::synthetic::Setup;

#[test]
fn residual_flow_is_the_same_flow_as_the_head_flow() {
    let c = Config::embedded_default();
    let setup = Setup::try_generate(&c).unwrap();
    let mm = max_margin_for(ModelKind::Explicit, &setup, 1e-9).unwrap();
    let model = ExplicitRm::new(&setup.train);
    let head_at = |t_max: f64| {
        let mut tc = c.train.clone();
        tc.t_max = t_max;
        let u0 = setup.head_init.to_vec();
        rmflow::solve::training::train(&model, &u0, &tc, "t", &mut |_, _, _| Ok(()))
            .unwrap()
            .theta
    };
    let (u1, u) = (head_at(1.0), head_at(1e50));
    let z = setup.train.hidden_differences();
    let (rho, _) =
        rmflow::solve::training::residual_flow(&z, &mm.params, &u1, &[10.0, 50.0], &c.train)
            .unwrap();
    let ln_t = 50.0 * std::f64::consts::LN_10;
    let from_u: Vec<f64> = u
        .iter()
        .zip(&mm.params)
        .map(|(a, b)| a - b * ln_t)
        .collect();
    let scale = rmflow::numerics::norm(&rho[1]);
    let gap = from_u
        .iter()
        .zip(&rho[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    // Both integrated with rtol = 1e-8; u has norm ~‖u*‖ ln t ≈ 35, ρ ≈ 2.6.
    assert!(
        gap / scale < 1e-6,
        "ρ from u − u* ln t and from the residual flow differ by {gap}"
    );
}

#[test]
fn simulate_reaches_t_ten_to_the_three_thousand() {
    let mut c = Config::embedded_default();
    c.train.t_max_log10 = Some(3000.0);
    c.train.observations_per_decade = 0.01;
    c.validate().unwrap();
    let sim = rmflow::experiment::simulation::simulate(&c, &mut |_| {}).unwrap();
    for run in sim.runs() {
        let last = run.trajectory.last().unwrap();
        assert_eq!(last.log10_t, 3000.0);
        assert_eq!(last.t, f64::INFINITY);
        let conv = last.convergence.unwrap();
        // Theory (MATH.md §4): 1 − cos ≈ ‖ρ_⊥‖²/(2‖θ*‖² ln²t) ≈ 1.6e-6 (EX-RM) at ln t ≈ 6908.
        assert!(conv.direction_gap < 1e-5, "{}: {conv:?}", run.kind.label());
        assert!(conv.residual_norm.is_finite());
    }
    let csv =
        rmflow::io::layout::trajectory_csv(&sim.explicit.trajectory.iter().collect::<Vec<_>>());
    assert!(
        csv.lines().last().unwrap().starts_with("exrm,inf,3e3,"),
        "{}",
        csv.lines().last().unwrap()
    );
    // The IM-RM's unseen rows stay where they were at any horizon.
    assert_eq!(
        sim.implicit.trajectory.last().unwrap().unseen_row_drift,
        Some(0.0)
    );
}

#[test]
fn horizon_fields_are_validated() {
    let mut c = Config::embedded_default();
    c.train.t_max_log10 = Some(f64::NAN);
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("train.t_max_log10"));
    c.train.t_max_log10 = Some(1e6);
    assert!(c.validate().is_err());
    c.train.t_max_log10 = Some(400.0);
    c.train.optimizer = rmflow::config::Optimizer::Gd;
    assert!(c.validate().unwrap_err().to_string().contains("discrete"));
    let mut c = Config::embedded_default();
    c.train.t_max_log10 = Some(10000.0);
    c.train.observations_per_decade = 1000.0;
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("observations"));
}
