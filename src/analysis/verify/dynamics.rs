//! The §3 learning-dynamics rows: `ρ_{k,l}` identities and reward velocities against finite
//! differences.

use super::claim::{Bound, Claim};
use crate::config::Config;
use crate::problem::synthetic::Setup;
use anyhow::Result;

/// Ids of the §3 rows ([`claims_dynamics`]).
pub(super) const DYNAMICS_CLAIMS: [&str; 6] = [
    "3.rho_identity",
    "3.rho_bound",
    "3.velocity_flow_imrm",
    "3.velocity_flow_exrm",
    "3.gd_first_order",
    "3.unseen_equal_velocity",
];

/// Time at which the learning-dynamics checks are made.
pub const DYNAMICS_CHECK_TIME: f64 = 10.0;

/// MATH.md §3 rows: ρ identity and bound, velocities against the flow and a GD step.
pub(super) fn claims_dynamics(config: &Config, setup: &Setup) -> Result<Vec<Claim>> {
    let c = crate::analysis::dynamics::dynamics_checks(config, setup, DYNAMICS_CHECK_TIME)?;
    let t = c.t;
    let mut out = vec![
        Claim::judged("3.rho_identity", "max |ρ expanded − ρ from explicit V-vectors| (seen split block)", c.rho_identity_error, Bound::AtMost(1e-12)),
        Claim::judged("3.rho_bound", &format!("max |ρ_{{k,l}}| over seen and unseen splits at t = {t}"), c.rho_max_abs, Bound::AtMost(2.0)),
        Claim::judged("3.velocity_flow_imrm", &format!("IM-RM dm/dt formula vs central difference along the flow at t = {t} (relative)"), c.imrm_velocity_vs_flow, Bound::AtMost(1e-6)),
        Claim::judged("3.velocity_flow_exrm", &format!("EX-RM dm/dt formula vs central difference along the flow at t = {t} (relative)"), c.exrm_velocity_vs_flow, Bound::AtMost(1e-6)),
        Claim::judged("3.gd_first_order", "IM-RM GD step: err(η)/err(η/2) of the first-order reward prediction, η = 1e-2 (O(η²) ⇒ 4)", c.gd_error_ratio, Bound::Between(3.5, 4.5)),
    ];
    if c.unseen_velocity_gap.is_nan() {
        out.push(Claim::skipped(
            "3.unseen_equal_velocity",
            "K > 1: unseen responses do not share velocities",
        ));
    } else {
        out.push(Claim::judged("3.unseen_equal_velocity", "IM-RM reward velocities of the two unseen responses of each unseen pair: max gap / max |v|", c.unseen_velocity_gap, Bound::AtMost(1e-12)));
    }
    Ok(out)
}
