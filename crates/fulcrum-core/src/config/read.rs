//! Typed, located access to a parsed TOML document.
//!
//! Every getter records what is wrong, with the line it is on, and carries on,
//! so one pass over a file finds every problem in it. A serde derive over the
//! document stops at the first type error, and `serde_ignored` reports unknown
//! keys by path but not by line; walking `toml_edit`'s spanned tree does both.

use std::ops::Range;
use std::time::Duration;

use serde::de::value::{Error as ValueError, StrDeserializer};
use serde::de::DeserializeOwned;
use toml_edit::{Item, TableLike, Value};

use super::ConfigError;

/// A value and the line it was found on.
#[derive(Clone, Copy, Debug)]
pub(super) struct Located<T> {
    pub value: T,
    pub line: Option<usize>,
}

/// What reading a configuration found wrong (or merely odd), in file order
/// once `finish`ed.
pub(super) struct Report<'t> {
    text: &'t str,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
}

impl<'t> Report<'t> {
    pub fn new(text: &'t str) -> Self {
        Report { text, errors: Vec::new(), warnings: Vec::new() }
    }

    /// The 1-based line a byte span starts on.
    pub fn line(&self, span: Option<Range<usize>>) -> Option<usize> {
        let start = span?.start.min(self.text.len());
        Some(self.text.as_bytes()[..start].iter().filter(|b| **b == b'\n').count() + 1)
    }

    /// An error about `key path: what is wrong`.
    pub fn error(&mut self, line: Option<usize>, path: &str, message: impl AsRef<str>) {
        let message = match path {
            "" => message.as_ref().to_owned(),
            _ => format!("{path}: {}", message.as_ref()),
        };
        self.errors.push(ConfigError { line, path: path.to_owned(), message });
    }

    /// An error whose message goes on from the thing's name: `pool "web" has no backends`.
    pub fn error_on(&mut self, line: Option<usize>, path: &str, predicate: &str) {
        let message = format!("{path} {predicate}");
        self.errors.push(ConfigError { line, path: path.to_owned(), message });
    }

    /// A warning about `key path: what is odd`.
    pub fn warn(&mut self, line: Option<usize>, path: &str, message: impl AsRef<str>) {
        let message = format!("{path}: {}", message.as_ref());
        self.warnings.push(ConfigError { line, path: path.to_owned(), message });
    }

    /// A warning whose message goes on from the thing's name.
    pub fn warn_on(&mut self, line: Option<usize>, path: &str, predicate: &str) {
        let message = format!("{path} {predicate}");
        self.warnings.push(ConfigError { line, path: path.to_owned(), message });
    }

    pub fn error_count(&self) -> usize {
        self.errors.len()
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// Errors and warnings sorted by line, so they read in file order; the
    /// ones with no line (about the file as a whole) come last.
    pub fn finish(mut self) -> (Vec<ConfigError>, Vec<ConfigError>) {
        let order = |e: &ConfigError| (e.line.is_none(), e.line);
        self.errors.sort_by_key(order);
        self.warnings.sort_by_key(order);
        (self.errors, self.warnings)
    }

    /// Opens a table whose keys must all be in `known`: any other key is
    /// reported as unknown, with the closest known key as a suggestion.
    pub fn section<'d>(
        &mut self,
        path: String,
        prefix: &str,
        table: &'d dyn TableLike,
        line: Option<usize>,
        known: &[&str],
    ) -> Section<'d> {
        for (key, item) in table.iter() {
            if known.contains(&key) {
                continue;
            }
            let key_span = table.key(key).and_then(|k| k.span());
            let line = self.line(key_span.or_else(|| item.span())).or(line);
            let mut message = format!("unknown key {:?}", format!("{prefix}{key}"));
            if let Some(near) = closest(key, known) {
                message.push_str(&format!(", did you mean {:?}?", format!("{prefix}{near}")));
            }
            self.error(line, &path, message);
        }
        Section { path, prefix: prefix.to_owned(), table, line }
    }

    /// `key` as a nested table of `s` (`[service.timeouts]`, or
    /// `timeouts = { … }`): messages keep `s`'s path and prefix the key.
    pub fn subsection<'d>(&mut self, s: &Section<'d>, key: &str, known: &[&str]) -> Option<Section<'d>> {
        let prefix = format!("{}{key}.", s.prefix);
        self.open(s, key, s.path.clone(), &prefix, known)
    }

    /// `key` as a table named by its own key (`[admin]`): messages say `admin: …`.
    pub fn named_section<'d>(&mut self, s: &Section<'d>, key: &str, known: &[&str]) -> Option<Section<'d>> {
        self.open(s, key, key.to_owned(), "", known)
    }

    fn open<'d>(
        &mut self,
        s: &Section<'d>,
        key: &str,
        path: String,
        prefix: &str,
        known: &[&str],
    ) -> Option<Section<'d>> {
        let found = self.get(s, key)?;
        match found.value.as_table_like() {
            Some(table) => Some(self.section(path, prefix, table, found.line, known)),
            None => {
                self.wrong_type(s, key, found, "a table");
                None
            }
        }
    }

    /// `key` as an array of tables (`[[pool]]`, or `pool = [{ … }]`); absent
    /// is empty. `header` is the tables' header as written in the file
    /// (`pool.backend`), for the message about a wrong shape.
    pub fn tables<'d>(
        &mut self,
        s: &Section<'d>,
        key: &str,
        header: &str,
    ) -> Vec<Located<&'d dyn TableLike>> {
        let Some(found) = self.get(s, key) else {
            return Vec::new();
        };
        let wanted = format!("an array of tables, one [[{header}]] each");
        match found.value {
            Item::ArrayOfTables(array) => array
                .iter()
                .map(|t| Located { value: t as &dyn TableLike, line: self.line(t.span()) })
                .collect(),
            Item::Value(Value::Array(array)) => {
                let mut tables = Vec::new();
                for value in array.iter() {
                    let line = self.line(value.span());
                    match value.as_inline_table() {
                        Some(t) => tables.push(Located { value: t as &dyn TableLike, line }),
                        None => self.error(
                            line,
                            &s.path,
                            format!("{} must be {wanted}, found {}", s.key(key), kind(value)),
                        ),
                    }
                }
                tables
            }
            _ => {
                self.wrong_type(s, key, found, &wanted);
                Vec::new()
            }
        }
    }

    pub fn string<'d>(&mut self, s: &Section<'d>, key: &str) -> Option<Located<&'d str>> {
        let found = self.get(s, key)?;
        match found.value.as_str() {
            Some(value) => Some(Located { value, line: found.line }),
            None => {
                self.wrong_type(s, key, found, "a string");
                None
            }
        }
    }

    pub fn integer(&mut self, s: &Section<'_>, key: &str) -> Option<Located<i64>> {
        let found = self.get(s, key)?;
        match found.value.as_integer() {
            Some(value) => Some(Located { value, line: found.line }),
            None => {
                self.wrong_type(s, key, found, "an integer");
                None
            }
        }
    }

    pub fn boolean(&mut self, s: &Section<'_>, key: &str) -> Option<Located<bool>> {
        let found = self.get(s, key)?;
        match found.value.as_bool() {
            Some(value) => Some(Located { value, line: found.line }),
            None => {
                self.wrong_type(s, key, found, "a boolean (true or false)");
                None
            }
        }
    }

    /// An array of strings, each with its own line.
    pub fn strings<'d>(&mut self, s: &Section<'d>, key: &str) -> Option<Located<Vec<Located<&'d str>>>> {
        let found = self.get(s, key)?;
        let Some(array) = found.value.as_array() else {
            self.wrong_type(s, key, found, "an array of strings");
            return None;
        };
        let mut values = Vec::new();
        for value in array.iter() {
            let line = self.line(value.span()).or(found.line);
            match value.as_str() {
                Some(v) => values.push(Located { value: v, line }),
                None => {
                    let message = format!("{} must hold only strings, found {}", s.key(key), kind(value));
                    self.error(line, &s.path, message);
                }
            }
        }
        Some(Located { value: values, line: found.line })
    }

    /// A duration string (`"500ms"`, `"2s"`, `"30m"`); `default` when absent
    /// and, after an error, when malformed or zero.
    pub fn duration(&mut self, s: &Section<'_>, key: &str, default: Duration) -> Duration {
        self.positive_duration(s, key, default).map_or(default, |d| d.value)
    }

    /// A duration that must not be zero, located; `None` when absent or
    /// wrong. `default` is only named in the message about a zero.
    pub fn positive_duration(
        &mut self,
        s: &Section<'_>,
        key: &str,
        default: Duration,
    ) -> Option<Located<Duration>> {
        let found = self.any_duration(s, key)?;
        if found.value.is_zero() {
            let message = format!(
                "{} is zero, which is always a mistake; give a positive duration (the default is {:?})",
                s.key(key),
                humantime::format_duration(default).to_string()
            );
            self.error(found.line, &s.path, message);
            return None;
        }
        Some(found)
    }

    /// A duration string, zero included, located; `None` when absent or
    /// malformed (after an error).
    pub fn any_duration(&mut self, s: &Section<'_>, key: &str) -> Option<Located<Duration>> {
        const LIKE: &str = r#"a number and a unit, like "500ms", "2s" or "30m""#;
        let found = self.get(s, key)?;
        let name = s.key(key);
        let Some(text) = found.value.as_str() else {
            let message =
                format!("{name} must be a duration string ({LIKE}), found {}", kind_of(found.value));
            self.error(found.line, &s.path, message);
            return None;
        };
        match humantime::parse_duration(text) {
            Ok(value) => Some(Located { value, line: found.line }),
            Err(e) => {
                let message = format!("{name} {text:?} is not a duration ({e}); write {LIKE}");
                self.error(found.line, &s.path, message);
                None
            }
        }
    }

    /// One of a closed set of words, turned into `T` by its serde derive so
    /// the spelling lives in one place (`model.rs`); `allowed` is listed in
    /// the error message. `None` when absent or wrong.
    pub fn choice<T: DeserializeOwned>(&mut self, s: &Section<'_>, key: &str, allowed: &[&str]) -> Option<T> {
        let found = self.string(s, key)?;
        match T::deserialize(StrDeserializer::<ValueError>::new(found.value)) {
            Ok(value) => Some(value),
            Err(_) => {
                let allowed: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
                let message =
                    format!("{} {:?} is not one of {}", s.key(key), found.value, allowed.join(", "));
                self.error(found.line, &s.path, message);
                None
            }
        }
    }

    /// Reports each of `keys` that the table lacks, at the table's header.
    pub fn require(&mut self, s: &Section<'_>, keys: &[&str]) {
        for key in keys {
            if !s.table.contains_key(key) {
                let message = format!("missing required key {:?}", s.key(key));
                self.error(s.line, &s.path, message);
            }
        }
    }

    /// Reports `key`, if given, as belonging to other values of the
    /// `selector` key: `health.path is only for kind "http", but health.kind
    /// is "tcp"`. `allowed` are the selector's words that read `key`;
    /// `default` is what an unset selector means.
    pub fn only_for(&mut self, s: &Section<'_>, key: &str, selector: &str, allowed: &[&str], default: &str) {
        let Some(found) = self.get(s, key) else { return };
        let words: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
        let words = words.join(" or ");
        let actual = match self.get(s, selector).and_then(|f| f.value.as_str()) {
            Some(word) => format!("{} is {word:?}", s.key(selector)),
            None => format!("{} is not set (so {default:?}); add {selector} = {words}", s.key(selector)),
        };
        let message = format!("{} is only for {selector} {words}, but {actual}", s.key(key));
        self.error(found.line, &s.path, message);
    }

    /// The item under `key` and its line (the value's, else the key's, else the table's).
    pub fn get<'d>(&self, s: &Section<'d>, key: &str) -> Option<Located<&'d Item>> {
        let (k, item) = s.table.get_key_value(key)?;
        let line = self.line(item.span()).or_else(|| self.line(k.span())).or(s.line);
        Some(Located { value: item, line })
    }

    fn wrong_type(&mut self, s: &Section<'_>, key: &str, found: Located<&Item>, wanted: &str) {
        let message = format!("{} must be {wanted}, found {}", s.key(key), kind_of(found.value));
        self.error(found.line, &s.path, message);
    }
}

/// One table of the file and the lexicon words that name it in messages.
pub(super) struct Section<'d> {
    /// `service "web"`, `pool "web" backend 2`; empty for the top level.
    pub path: String,
    /// Dotted key prefix inside that thing, for nested tables: `timeouts.`.
    prefix: String,
    table: &'d dyn TableLike,
    /// The table's header line, where a missing key is reported.
    pub line: Option<usize>,
}

impl Section<'_> {
    /// `key` as written from the thing's own table: `timeouts.connect`.
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Whether the table has `key`, whatever its value.
    pub fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }
}

/// The known key closest to a misspelt one, if any is close enough to be a
/// likely typo (Jaro-Winkler similarity from `strsim`, the crate clap uses for
/// its own "did you mean" suggestions).
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(key, k), *k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

/// What a TOML item is, in words for "must be …, found …" messages.
pub(super) fn kind_of(item: &Item) -> &'static str {
    match item {
        Item::Value(v) => kind(v),
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
        Item::None => "nothing",
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "a table",
    }
}
