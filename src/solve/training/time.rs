//! Times of the flow: observation times on a log grid, exact as `log10 t` past f64's range.

use crate::config::TrainConfig;

/// A time of the flow: `t` and `log10 t` (the latter exact past f64's range, where `t` is `inf`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ObsTime {
    pub t: f64,
    pub log10_t: f64,
}

impl ObsTime {
    /// `t = 0`.
    pub const ZERO: ObsTime = ObsTime {
        t: 0.0,
        log10_t: f64::NEG_INFINITY,
    };

    /// From `t`.
    pub fn from_t(t: f64) -> ObsTime {
        ObsTime {
            t,
            log10_t: t.log10(),
        }
    }

    /// `ln t`.
    pub fn ln_t(self) -> f64 {
        self.log10_t * std::f64::consts::LN_10
    }
}

/// Observation times as `log10 t`: `−inf` (`t = 0`), then `observations_per_decade` log-spaced
/// points per decade from `first_observation` to the horizon (both included).
pub fn observation_log10_times(cfg: &TrainConfig) -> Vec<f64> {
    let (a, b) = (cfg.first_observation.log10(), cfg.horizon_log10());
    let n = ((b - a) * cfg.observations_per_decade).ceil() as usize + 1;
    let mut times = vec![f64::NEG_INFINITY];
    if n <= 1 || b <= a {
        times.push(b);
    } else {
        times.extend(crate::numerics::linspace(a, b, n));
        *times.last_mut().expect("non-empty") = b;
    }
    times
}

/// Observation times `t` (see [`observation_log10_times`]; `inf` past f64's range), with the
/// horizon exactly `t_max` when no `t_max_log10` is set.
pub fn observation_times(cfg: &TrainConfig) -> Vec<f64> {
    let mut times: Vec<f64> = observation_log10_times(cfg)
        .into_iter()
        .map(|l| {
            if l == f64::NEG_INFINITY {
                0.0
            } else {
                10f64.powf(l)
            }
        })
        .collect();
    if cfg.t_max_log10.is_none() {
        *times.last_mut().expect("non-empty") = cfg.t_max;
    }
    times
}

/// `6.000000e2`, or `10^1234.500` past f64's range.
pub fn format_time(log10_t: f64) -> String {
    if log10_t == f64::NEG_INFINITY {
        "0".to_string()
    } else if log10_t < 300.0 {
        format!("{:.6e}", 10f64.powf(log10_t))
    } else {
        format!("10^{log10_t:.3}")
    }
}
