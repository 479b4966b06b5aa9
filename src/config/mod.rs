//! Run configuration (see `experiments/README.md`): the tables as serde structs with documented
//! defaults, their validation ([`Config::validate`] names the offending field, `setup.dim`,
//! `train.t_max`, …), and the command-line overrides ([`Config::apply`]).

mod error;
mod load;
mod overrides;
mod schema;
mod validate;

pub use error::{check, one_line_toml_error, ConfigError};
pub use load::{parse_toml, read_toml};
pub use overrides::Overrides;
pub use schema::*;
