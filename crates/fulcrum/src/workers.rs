//! Worker threads for `fulcrum run` with more than one worker: one
//! current-thread runtime per thread, each serving the sessions handed to
//! it from start to end. The accept loops run on the first worker, which
//! hands sessions out in turn (itself included); health checks, the admin
//! API and reloads stay on the main thread's runtime.
//!
//! Accepting on a worker rather than on the main thread: with the main
//! thread accepting, a connection-per-request load kept three threads busy
//! on two cores; wrk `Connection: close`, 2 workers against HAProxy's
//! `nbthread 2`, alternating bench/run pairs: 0.95, 0.99 and 1.00× with the
//! main thread accepting, 1.05, 1.03 and 1.06× with the first worker.
//!
//! Why not tokio's multi-thread runtime: with two workers on this 2-core
//! machine it served 1.01× the keep-alive rate of one worker, against 1.16×
//! this way (HAProxy's `nbthread 2`: 1.09× and 1.21× in the same two runs,
//! bench/RESULTS.md); its work stealing moves sessions and their wake-ups
//! between threads. Here a session, its backend connections and
//! their timers stay on one thread, as in HAProxy and NGINX.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// The running workers: their runtimes' handles, and how to stop them.
pub struct Workers {
    threads: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

static HANDLES: OnceLock<Vec<Handle>> = OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's worker number; `usize::MAX` off the workers.
    static WORKER: Cell<usize> = const { Cell::new(usize::MAX) };
}

impl Workers {
    /// Starts `n` worker threads and makes them the ones [`pick`] hands
    /// sessions to (once per process).
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            handles.push(runtime.handle().clone());
            let stop = stop.clone();
            // "worker-N" fits the 15 bytes the kernel keeps of a thread's name.
            let thread = std::thread::Builder::new().name(format!("worker-{i}")).spawn(move || {
                WORKER.with(|w| w.set(i));
                runtime.block_on(stop.cancelled());
                // Sessions still running after the grace period are cut here.
                runtime.shutdown_timeout(std::time::Duration::from_millis(100));
            })?;
            threads.push(thread);
        }
        if HANDLES.set(handles).is_err() {
            return Err(std::io::Error::other("the workers were already started"));
        }
        Ok(Workers { threads, stop })
    }

    /// Stops every worker, cutting the sessions they still serve.
    pub fn stop(self) {
        self.stop.cancel();
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// The runtime the next session goes to, in turn; `None` without workers
/// (the session then runs where it was accepted).
pub fn pick() -> Option<&'static Handle> {
    let handles = HANDLES.get().filter(|h| !h.is_empty())?;
    Some(&handles[NEXT.fetch_add(1, Ordering::Relaxed) % handles.len()])
}

/// The runtime that runs the accept loops: the first worker's, so that
/// accepting costs no thread of its own on the cores the workers share;
/// `None` without workers.
pub fn acceptor() -> Option<&'static Handle> {
    HANDLES.get().and_then(|h| h.first())
}

/// This thread's worker number (`usize::MAX` off the workers): pooled
/// backend connections are reused on the thread whose runtime watches them.
pub fn current() -> usize {
    WORKER.with(Cell::get)
}
