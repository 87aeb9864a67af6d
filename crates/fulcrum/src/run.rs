//! being written
pub fn main(_c: &std::path::Path, _w: Option<usize>) -> std::process::ExitCode { std::process::ExitCode::FAILURE }
