//! Config errors: which field, what was expected, what was found, and where it came from.

/// A configuration error: which field, and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing, not a regular file, too large or not UTF-8 (the message says which).
    #[error("{0}")]
    Read(crate::error::InputError),
    #[error("invalid config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("invalid config{}: field `{field}` {expected} (got {got})", origin.as_ref().map(|o| format!(" {o}")).unwrap_or_default())]
    Field {
        field: String,
        expected: &'static str,
        got: String,
        /// The file (or other source) the config came from, when known.
        origin: Option<String>,
    },
}

impl ConfigError {
    /// Names `origin` (a file path) in a field error.
    pub fn in_origin(self, origin: &str) -> ConfigError {
        match self {
            ConfigError::Field {
                field,
                expected,
                got,
                origin: None,
            } => ConfigError::Field {
                field,
                expected,
                got,
                origin: Some(origin.to_string()),
            },
            other => other,
        }
    }
}

/// A TOML error on one line: `line L, column C (`the line`): message`.
pub fn one_line_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let line_no = text[..start].matches('\n').count() + 1;
            let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
            let column = text[line_start..start].chars().count() + 1;
            let line = text[line_start..].lines().next().unwrap_or("").trim();
            format!("line {line_no}, column {column} (`{line}`): {message}")
        }
        None => message,
    }
}

/// A field error on `field` unless `ok`.
pub fn check(
    ok: bool,
    field: &str,
    expected: &'static str,
    got: impl ToString,
) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Field {
            field: field.to_string(),
            expected,
            got: got.to_string(),
            origin: None,
        })
    }
}
