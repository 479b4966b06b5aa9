//! Reading a TOML config: the file read as bounded UTF-8 text, parsed into its serde struct and
//! validated; every error a [`ConfigError`] naming the file (and the field, where one is wrong).

use super::error::{one_line_toml_error, ConfigError};
use serde::de::DeserializeOwned;
use std::path::Path;

/// Parses `text` (`origin` names it in errors) into `T` and checks it with `validate`.
pub fn parse_toml<T: DeserializeOwned>(
    text: &str,
    origin: &str,
    validate: impl FnOnce(&T) -> Result<(), ConfigError>,
) -> Result<T, ConfigError> {
    let value: T = toml::from_str(text).map_err(|e| ConfigError::Parse {
        origin: origin.to_string(),
        message: one_line_toml_error(text, &e),
    })?;
    validate(&value).map_err(|e| e.in_origin(origin))?;
    Ok(value)
}

/// Reads the `what` config at `path`, then [`parse_toml`].
pub fn read_toml<T: DeserializeOwned>(
    path: &Path,
    what: &str,
    validate: impl FnOnce(&T) -> Result<(), ConfigError>,
) -> Result<T, ConfigError> {
    let text = crate::io::input::read_text(path, what).map_err(ConfigError::Read)?;
    parse_toml(&text, &path.display().to_string(), validate)
}
