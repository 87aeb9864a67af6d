//! The configuration file: TOML text in, a validated [`Model`] out.
//!
//! [`load`] reports every problem in a file at once, each naming the thing
//! that is wrong in lexicon words and the line it is on:
//!
//! ```text
//! line 12: pool "web" backend 2: address "10.0.0.1" has no port; write IP:port, like "10.0.0.1:80"
//! line 20: service "api": pool "nope" is not defined (pools defined: "web")
//! ```
//!
//! The text is parsed into `toml_edit`'s spanned document, then `schema`
//! reads one table at a time (`checks` the health and passive tables of a
//! pool; `routes`, `persistence` and `policy` those of a service; `snat`
//! each `[[snat_pool]]`) and
//! `validate` checks what spans tables. The
//! schema itself (keys, types, defaults) is documented in
//! `examples/quickstart.toml` (routing in `examples/routing.toml` and
//! `examples/sni.toml`, SNAT pools in `examples/snat.toml`) and at the
//! top of each reader.

mod checks;
mod persistence;
mod policy;
mod read;
mod routes;
mod schema;
mod snat;
mod validate;

#[cfg(test)]
mod tests;

use toml_edit::ImDocument;

use crate::model::Model;
use read::Report;

/// A configuration that passed validation, with the warnings it raised
/// (each a whole message, like an error's `Display`).
#[derive(Debug)]
pub struct Loaded {
    pub model: Model,
    pub warnings: Vec<String>,
}

/// One thing wrong with a configuration file; `Display` gives the whole
/// user-facing message, `line N: ` first when it has a line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", at_line(.line))]
pub struct ConfigError {
    /// 1-based line where the problem can be seen; `None` for the file as a
    /// whole (e.g. no service at all).
    pub line: Option<usize>,
    /// The thing that is wrong in lexicon words, `pool "web" backend 2`;
    /// empty for the top level.
    pub path: String,
    /// The message without its line: `pool "web" backend 2: address …`.
    pub message: String,
}

fn at_line(line: &Option<usize>) -> String {
    line.map(|l| format!("line {l}: ")).unwrap_or_default()
}

/// Parses and validates a whole configuration text.
///
/// Returns the model and its warnings, or every error found (sorted by line),
/// never just the first: unknown keys, wrong types and cross-references are
/// all checked in one pass. Only a TOML syntax error stops the reading, since
/// nothing after it can be trusted.
pub fn load(text: &str) -> Result<Loaded, Vec<ConfigError>> {
    let document = ImDocument::parse(text).map_err(|e| vec![syntax_error(text, &e)])?;
    let mut r = Report::new(text);
    let root = r.section(String::new(), "", document.as_table(), None, schema::TOP_KEYS);

    let admin = schema::admin(&mut r, &root);
    let runtime = schema::runtime(&mut r, &root);
    let pool_tables = r.tables(&root, "pool", "pool");
    let pools = pool_tables.into_iter().enumerate().map(|(i, t)| schema::pool(&mut r, t, i)).collect();
    let service_tables = r.tables(&root, "service", "service");
    let services =
        service_tables.into_iter().enumerate().map(|(i, t)| schema::service(&mut r, t, i)).collect();
    let snat_tables = r.tables(&root, "snat_pool", "snat_pool");
    let snat_pools =
        snat_tables.into_iter().enumerate().map(|(i, t)| snat::snat_pool(&mut r, t, i)).collect();
    let model = validate::model(&mut r, admin, runtime, services, pools, snat_pools);

    let (mut errors, warnings) = r.finish();
    match model {
        Some(model) if errors.is_empty() => {
            Ok(Loaded { model, warnings: warnings.iter().map(ToString::to_string).collect() })
        }
        _ => {
            if errors.is_empty() {
                // Every reader that leaves a part out reports why; this is a backstop.
                let message = "the configuration could not be read (a bug in fulcrum: please report it)";
                errors.push(ConfigError { line: None, path: String::new(), message: message.into() });
            }
            Err(errors)
        }
    }
}

fn syntax_error(text: &str, e: &toml_edit::TomlError) -> ConfigError {
    let start = e.span().map_or(text.len(), |s| s.start.min(text.len()));
    let before = text.as_bytes()[..start].split(|b| *b == b'\n').next_back().unwrap_or_default();
    let column = String::from_utf8_lossy(before).chars().count() + 1;
    let mut detail: Vec<&str> = e.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if detail.is_empty() {
        detail.push(if start == text.len() { "unexpected end of file" } else { "unexpected input" });
    }
    ConfigError {
        line: Report::new(text).line(e.span()),
        path: String::new(),
        message: format!("invalid TOML at column {column}: {}", detail.join("; ")),
    }
}

impl Model {
    /// A one-line summary: "1 service, 1 pool, 3 backends", and ", 1 snat
    /// pool" when there are any.
    pub fn summary(&self) -> String {
        let backends = self.pools.iter().map(|p| p.backends.len()).sum();
        let mut summary = format!(
            "{}, {}, {}",
            count(self.services.len(), "service"),
            count(self.pools.len(), "pool"),
            count(backends, "backend")
        );
        if !self.snat_pools.is_empty() {
            summary.push_str(&format!(", {}", count(self.snat_pools.len(), "snat pool")));
        }
        summary
    }
}

fn count(n: usize, word: &str) -> String {
    match n {
        1 => format!("1 {word}"),
        _ => format!("{n} {word}s"),
    }
}
