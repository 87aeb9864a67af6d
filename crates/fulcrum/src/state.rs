//! What operators see and steer: the live services, pools and SNAT
//! pools (replaced whole on reload), the session table, and the way to ask
//! for a reload. The admin API holds one `Shared`; the data path never
//! reads it.

use std::sync::Arc;

use arc_swap::ArcSwap;
use fulcrum_core::session::SessionTable;
use tokio::sync::{mpsc, oneshot};

use crate::service::ServiceRuntime;
use crate::snat::SnatRuntime;
use crate::upstream::PoolRuntime;

/// One generation of the configuration as it runs.
pub struct Live {
    pub services: Vec<Arc<ServiceRuntime>>,
    pub pools: Vec<Arc<PoolRuntime>>,
    pub snat: Vec<Arc<SnatRuntime>>,
}

/// A reload request: the answer says what changed, or why nothing did.
pub type ReloadReply = oneshot::Sender<Result<String, String>>;

pub struct Shared {
    pub live: ArcSwap<Live>,
    pub sessions: Arc<SessionTable>,
    /// Asks the runner to reload the configuration file.
    pub reload: mpsc::Sender<ReloadReply>,
    /// Tokens for mutating API calls; empty: no token needed.
    pub admin_tokens: Vec<String>,
}
