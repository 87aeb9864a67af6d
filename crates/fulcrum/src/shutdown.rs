//! The shutdown signal: Ctrl-C (SIGINT) or SIGTERM.

use std::future::Future;

use tokio::signal::unix::{signal as unix_signal, SignalKind};

/// Registers for SIGINT and SIGTERM now, and returns a future that resolves
/// on the first of them. Registering eagerly matters: a signal that arrives
/// after Fulcrum says it is listening must find the handler in place, or its
/// default action kills the process. Call it within a tokio runtime.
pub fn signal() -> impl Future<Output = ()> {
    let interrupt = unix_signal(SignalKind::interrupt());
    let terminate = unix_signal(SignalKind::terminate());
    async move {
        let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                // Without that handler the other signal still works.
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            () = wait(interrupt) => {}
            () = wait(terminate) => {}
        }
    }
}
