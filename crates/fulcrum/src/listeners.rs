//! The bound listeners across reloads. A listener whose address stays in
//! the configuration keeps its socket, so no connection is refused while a
//! reload happens; the service behind it is swapped for the next accepted
//! connection. New addresses are bound before anything is committed, so a
//! failed bind leaves the running configuration untouched.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::generation::Generation;
use crate::server::{BindError, SessionListener};
use crate::service::ServiceRuntime;

/// Which configured listener a socket is. A configured port 0 (the OS
/// picks) has no address to recognise, so it is known by its service and
/// its place in the service's listen list.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Key {
    Address(SocketAddr),
    Ephemeral { service: String, position: usize },
}

struct Slot {
    key: Key,
    /// The address actually bound.
    local: SocketAddr,
    service: Arc<ArcSwap<ServiceRuntime>>,
    /// Stops this listener's accept loop.
    stop: CancellationToken,
    /// The accept loop, which owns the socket: it is closed once this ends.
    task: JoinHandle<()>,
}

#[derive(Default)]
pub struct Listeners {
    slots: Vec<Slot>,
}

/// What committing a generation does to the listeners.
pub struct Plan {
    /// Kept listeners (index into `slots`) and their new service.
    keep: Vec<(usize, Arc<ServiceRuntime>)>,
    /// Newly bound listeners.
    add: Vec<(Key, SessionListener, Arc<ServiceRuntime>)>,
}

impl Listeners {
    /// Binds what `generation` adds; a failure names the service and address,
    /// and drops the listeners bound so far.
    pub fn plan(&self, generation: &Generation) -> Result<Plan, BindError> {
        let mut plan = Plan { keep: Vec::new(), add: Vec::new() };
        for (service, model) in generation.services.iter().zip(&generation.model.services) {
            for (position, &address) in model.listen.iter().enumerate() {
                let key = if address.port() == 0 {
                    Key::Ephemeral { service: model.name.clone(), position }
                } else {
                    Key::Address(address)
                };
                match self.slots.iter().position(|s| s.key == key) {
                    Some(i) => plan.keep.push((i, service.clone())),
                    None => {
                        let listener = crate::server::listen_for_sessions(address).map_err(|source| {
                            BindError::Listen { service: model.name.clone(), address, source }
                        })?;
                        plan.add.push((key, listener, service.clone()));
                    }
                }
            }
        }
        Ok(plan)
    }

    /// Applies `plan`: swaps services under kept listeners, starts accept
    /// loops for new ones (printing a `listening` line each, as at start),
    /// stops the ones no longer configured. Returns the stopped loops: their
    /// sockets close as they end, on the accepting worker, so whoever awaits
    /// them knows the addresses are free again.
    #[must_use = "a removed listener is closed only once its loop has ended"]
    pub fn commit(
        &mut self,
        plan: Plan,
        shutdown: &CancellationToken,
        sessions: &TaskTracker,
    ) -> Vec<Stopped> {
        let mut stopped = Vec::new();
        let kept: Vec<usize> = plan.keep.iter().map(|(i, _)| *i).collect();
        for (i, service) in plan.keep {
            self.slots[i].service.store(service);
        }
        let mut slots = Vec::new();
        for (i, slot) in std::mem::take(&mut self.slots).into_iter().enumerate() {
            if kept.contains(&i) {
                slots.push(slot);
            } else {
                tracing::info!(address = %slot.local, "listener removed");
                slot.stop.cancel();
                stopped.push(Stopped { local: slot.local, task: slot.task });
            }
        }
        for (key, listener, service) in plan.add {
            let Ok(local) = listener.get_ref().local_addr() else { continue };
            println!("listening service={} address={local}", service.name);
            let service = Arc::new(ArcSwap::new(service));
            let stop = shutdown.child_token();
            let accepting = crate::server::accept_loop(
                listener,
                local,
                service.clone(),
                stop.clone(),
                shutdown.clone(),
                sessions.clone(),
            );
            let task = match crate::workers::acceptor() {
                Some(worker) => worker.spawn(accepting),
                None => tokio::spawn(accepting),
            };
            slots.push(Slot { key, local, service, stop, task });
        }
        self.slots = slots;
        for slot in &self.slots {
            let service = slot.service.load();
            let mut listen = service.listen.lock().unwrap_or_else(|p| p.into_inner());
            if !listen.contains(&slot.local) {
                listen.push(slot.local);
            }
        }
        stopped
    }
}

/// The accept loop of a removed listener, told to stop.
pub struct Stopped {
    local: SocketAddr,
    task: JoinHandle<()>,
}

/// Waits, 5 s at most in all, for stopped accept loops to end, which closes their sockets.
pub async fn closed(stopped: Vec<Stopped>) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    for Stopped { local, task } in stopped {
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(address = %local, error = %e, "a removed listener's accept loop failed")
            }
            Err(_) => {
                tracing::warn!(address = %local, "a removed listener's accept loop did not end within 5 s")
            }
        }
    }
}
