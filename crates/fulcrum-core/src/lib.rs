//! Sans-io logic of the Fulcrum load balancer.
//!
//! Nothing here opens a socket, reads the clock or draws from a global random
//! number generator: time and seeds come in as arguments, decisions go out as
//! return values. The daemon (`crates/fulcrum`) is the I/O shell around it.

pub mod agent;
pub mod config;
pub mod health;
pub mod http;
pub mod model;
pub mod persist;
pub mod policy;
pub mod proxy;
pub mod route;
pub mod select;
pub mod session;
pub mod snat;
pub mod sni;
