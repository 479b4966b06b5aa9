//! Command-line overrides of a config's fields ([`Config::apply`]), validated after they are
//! applied so that an error names the field and says the value came from the command line.

use super::error::ConfigError;
use super::schema::{Config, GradientPath, Optimizer};
use std::path::Path;

/// Fields a command may override (`None` / `false`: keep the config's value).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// `train.optimizer`.
    pub optimizer: Option<Optimizer>,
    /// `train.t_max`; clears `train.t_max_log10`, which would otherwise take precedence.
    pub t_max: Option<f64>,
    /// `train.t_max_log10`.
    pub t_max_log10: Option<f64>,
    /// `seed`.
    pub seed: Option<u64>,
    /// `train.imrm_gradient`.
    pub imrm_gradient: Option<GradientPath>,
    /// Sets `export.full_unembedding`.
    pub full_unembedding: bool,
}

impl Config {
    /// Applies `overrides`, then validates; `origin` (the config file, `None` for the embedded
    /// default) is named in the error together with "with command-line overrides".
    pub fn apply(
        &mut self,
        overrides: &Overrides,
        origin: Option<&Path>,
    ) -> Result<(), ConfigError> {
        let o = overrides;
        if o.full_unembedding {
            self.export.full_unembedding = true;
        }
        if let Some(opt) = o.optimizer {
            self.train.optimizer = opt;
        }
        if let Some(t) = o.t_max {
            self.train.t_max = t;
            self.train.t_max_log10 = None;
        }
        if let Some(l) = o.t_max_log10 {
            self.train.t_max_log10 = Some(l);
        }
        if let Some(s) = o.seed {
            self.seed = s;
        }
        if let Some(p) = o.imrm_gradient {
            self.train.imrm_gradient = p;
        }
        self.validate().map_err(|e| {
            let origin = match origin {
                Some(p) => format!("{} with command-line overrides", p.display()),
                None => "the embedded default with command-line overrides".to_string(),
            };
            e.in_origin(&origin)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_max_clears_the_log10_horizon_and_errors_name_the_origin() {
        let mut c = Config::embedded_default();
        c.train.t_max_log10 = Some(50.0);
        let o = Overrides {
            t_max: Some(1e3),
            seed: Some(7),
            ..Overrides::default()
        };
        c.apply(&o, None).unwrap();
        assert_eq!((c.train.t_max, c.train.t_max_log10, c.seed), (1e3, None, 7));
        let bad = Overrides {
            t_max: Some(-1.0),
            ..Overrides::default()
        };
        let e = c.apply(&bad, Some(Path::new("x.toml"))).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("train.t_max") && text.contains("x.toml with command-line overrides"),
            "{text}"
        );
    }
}
