//! The Fulcrum daemon: the tokio shell around `fulcrum-core`.

pub mod admin;
pub mod agent;
pub mod alloc;
pub mod backend;
pub mod check;
pub mod clock;
pub mod ctl;
pub mod demo;
pub mod front;
pub mod generation;
pub mod l4;
pub mod l7;
pub mod limit;
pub mod listeners;
pub mod run;
pub mod server;
pub mod service;
pub mod sessions;
pub mod shutdown;
pub mod snat;
pub mod state;
pub mod stats;
pub mod upstream;
pub mod workers;
