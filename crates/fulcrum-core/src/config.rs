//! Placeholder: being written (TOML schema + validate()).
use crate::model::Model;

/// A configuration that passed validation, with the warnings it raised.
#[derive(Debug)]
pub struct Loaded {
    pub model: Model,
    pub warnings: Vec<String>,
}

/// One thing wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    pub message: String,
}

/// Parses and validates a whole configuration text; every error at once.
pub fn load(_text: &str) -> Result<Loaded, Vec<ConfigError>> {
    Err(vec![ConfigError { message: "not yet".into() }])
}

impl Model {
    /// A one-line summary: "1 service, 1 pool, 3 backends".
    pub fn summary(&self) -> String {
        String::new()
    }
}
