//! Replays the fuzz corpora on stable, as an ordinary `cargo test`.
//!
//! Every file under `fuzz/corpus/<target>/` (the committed seeds and the
//! inputs kept from fuzzing runs) and `fuzz/regressions/<target>/` (each
//! crash the fuzzer found, minimised) goes through the same function the
//! fuzz target calls: the bodies live once, in `fuzz/src/lib.rs`, and are
//! compiled into this test as a module. So CI checks every input without
//! cargo-fuzz or a nightly toolchain, and a fixed crash stays fixed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[path = "../../../fuzz/src/lib.rs"]
mod targets;

/// The `fuzz/` directory of the repository.
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files of `dir`, sorted; none when it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> =
        entries.map(|e| e.expect("read a corpus directory entry").path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

/// Runs `target` on every input of its corpus and regressions; fails with
/// the list of every input that panicked (not just the first).
fn replay(name: &str) {
    let (_, target) = targets::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fuzz target {name} in fuzz/src/lib.rs"));
    let corpus = inputs(&fuzz_dir().join("corpus").join(name));
    assert!(!corpus.is_empty(), "fuzz/corpus/{name}/ is missing or empty: the seeds are committed");
    let regressions = inputs(&fuzz_dir().join("regressions").join(name));

    let mut failed = Vec::new();
    for path in corpus.iter().chain(&regressions) {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| target(&data))) {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            let shown = path.strip_prefix(fuzz_dir()).unwrap_or(path);
            failed.push(format!("fuzz/{}: {message}", shown.display()));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} inputs of fuzz target {name} panic (replay one with `cargo fuzz run {name} FILE` in fuzz/):\n{}",
        failed.len(),
        corpus.len() + regressions.len(),
        failed.join("\n")
    );
}

/// A target added to `fuzz/fuzz_targets/` without a body in `TARGETS` and
/// a test here would be fuzzed but never replayed.
#[test]
fn every_target_is_replayed() {
    let tests = include_str!("fuzz_corpus.rs");
    let mut files: Vec<String> = inputs(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|p| p.file_stem()?.to_str().map(str::to_owned))
        .collect();
    files.sort();
    let mut names: Vec<String> = targets::TARGETS.iter().map(|(n, _)| (*n).to_owned()).collect();
    names.sort();
    assert_eq!(files, names, "fuzz/fuzz_targets/*.rs and TARGETS in fuzz/src/lib.rs differ");
    for name in names {
        assert!(
            tests.contains(&format!("fn {name}() {{\n    replay(")),
            "no replay test for fuzz target {name}"
        );
    }
}

#[test]
fn http_request() {
    replay("http_request");
}

#[test]
fn http_response() {
    replay("http_response");
}

#[test]
fn chunked() {
    replay("chunked");
}

#[test]
fn config() {
    replay("config");
}

#[test]
fn proxy_protocol() {
    replay("proxy_protocol");
}

#[test]
fn client_hello() {
    replay("client_hello");
}

#[test]
fn route_path() {
    replay("route_path");
}
