//! The Fulcrum daemon: the tokio shell around `fulcrum-core`.

pub mod backend;
pub mod demo;
pub mod run;
