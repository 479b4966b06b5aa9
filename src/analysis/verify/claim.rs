//! A claim: a measured value, a bound stated before the run, and a status.

use crate::experiment::observables::Observation;
use serde::Serialize;

/// Outcome of a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    /// Reported, not judged (e.g. the AdamW counter-example).
    Info,
    /// Not applicable (e.g. no separator exists for 2b).
    Skip,
}

/// The bound a measured value is held to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Bound {
    AtMost(f64),
    AtLeast(f64),
    /// Exactly this value (no tolerance).
    Exactly(f64),
    /// Within `[lo, hi]`.
    Between(f64, f64),
    /// Reported only.
    Report,
}

impl Bound {
    pub(super) fn holds(self, x: f64) -> bool {
        match self {
            Bound::AtMost(b) => x <= b,
            Bound::AtLeast(b) => x >= b,
            Bound::Exactly(b) => x == b,
            Bound::Between(lo, hi) => x >= lo && x <= hi,
            Bound::Report => true,
        }
    }

    pub(super) fn text(self) -> String {
        match self {
            Bound::AtMost(b) => format!("≤ {b:.0e}"),
            Bound::AtLeast(b) => format!("≥ {b:.0e}"),
            Bound::Exactly(b) => format!("= {b} exactly"),
            Bound::Between(lo, hi) => format!("in [{lo}, {hi}]"),
            Bound::Report => "(reported)".to_string(),
        }
    }

    /// Which of two measurements is worse under this bound.
    pub(super) fn worse(self, a: f64, b: f64) -> f64 {
        match self {
            Bound::Between(lo, hi) => {
                let mid = 0.5 * (lo + hi);
                if (a - mid).abs() >= (b - mid).abs() {
                    a
                } else {
                    b
                }
            }
            Bound::AtLeast(_) => a.min(b),
            Bound::Exactly(v) => {
                if (a - v).abs() >= (b - v).abs() {
                    a
                } else {
                    b
                }
            }
            _ => a.max(b),
        }
    }
}

/// One verified claim.
#[derive(Debug, Clone, Serialize)]
pub struct Claim {
    /// Stable id, e.g. `2a.flow_full.drift` (named in proofs/theorem2.md).
    pub id: String,
    pub description: String,
    pub measured: f64,
    pub bound: Bound,
    pub status: Status,
}

impl Claim {
    pub(super) fn judged(id: &str, description: &str, measured: f64, bound: Bound) -> Claim {
        let status = if matches!(bound, Bound::Report) {
            Status::Info
        } else if bound.holds(measured) {
            Status::Pass
        } else {
            Status::Fail
        };
        Claim {
            id: id.into(),
            description: description.into(),
            measured,
            bound,
            status,
        }
    }

    pub(super) fn info(id: &str, description: &str, measured: f64) -> Claim {
        Claim {
            id: id.into(),
            description: description.into(),
            measured,
            bound: Bound::Report,
            status: Status::Info,
        }
    }

    pub(super) fn skipped(id: &str, description: &str) -> Claim {
        Claim {
            id: id.into(),
            description: description.into(),
            measured: f64::NAN,
            bound: Bound::Report,
            status: Status::Skip,
        }
    }
}

/// `max_t f(o_t)`, NaN if any value is NaN (so a non-finite measurement can never pass).
pub(super) fn max_over<'a>(
    traj: impl IntoIterator<Item = &'a Observation>,
    f: impl Fn(&Observation) -> f64,
) -> f64 {
    traj.into_iter().map(f).fold(0.0, |a, x| {
        if a.is_nan() || x.is_nan() {
            f64::NAN
        } else {
            a.max(x)
        }
    })
}

pub(super) fn split<'a>(
    o: &'a Observation,
    name: &str,
) -> &'a crate::experiment::observables::SplitMetrics {
    o.splits
        .iter()
        .find(|s| s.split == name)
        .expect("split observed")
}
