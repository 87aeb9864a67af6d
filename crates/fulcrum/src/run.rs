//! `fulcrum run`: load the configuration, bind, serve until a signal, then
//! drain in-flight sessions within the grace period.

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use fulcrum_core::model::Model;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Runs the load balancer from the configuration file at `path`.
pub fn main(path: &Path, workers: Option<usize>) -> ExitCode {
    init_logging();
    let model = match load(path) {
        Ok(model) => model,
        Err(n) => {
            eprintln!("{}: {n} error(s), not started", path.display());
            return ExitCode::FAILURE;
        }
    };
    let Some(runtime) = runtime(workers) else { return ExitCode::FAILURE };
    let base = path.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    let code = runtime.block_on(async { serve(model, &base, crate::shutdown::signal()).await });
    // Sessions still running after the grace period are cut here.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    code
}

/// Reads and validates a configuration file, printing every warning and
/// every error to stderr (each naming its line and key path). `Err` carries
/// the number of errors (0 when the file could not be read).
pub fn load(path: &Path) -> Result<Model, usize> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        eprintln!("error: cannot read {}: {e}", path.display());
        0usize
    })?;
    match fulcrum_core::config::load(&text) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            Ok(loaded.model)
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            Err(errors.len())
        }
    }
}

/// A multi-threaded runtime with `workers` threads (default: one per core).
pub fn runtime(workers: Option<usize>) -> Option<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n.max(1));
    }
    match builder.enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            None
        }
    }
}

/// Binds every listener of `model`, prints one `listening` line per listener
/// on stdout, serves until `stop` resolves, then lets in-flight sessions
/// finish for up to the grace period.
pub async fn serve(model: Model, base: &Path, stop: impl Future<Output = ()>) -> ExitCode {
    // Before anything is announced: a SIGHUP from then on must find the handler.
    ignore_hangup();
    let bound = match crate::server::bind(&model, base) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (service, listener) in &bound.listeners {
        if let Ok(address) = listener.local_addr() {
            println!("listening service={} address={address}", service.name);
        }
    }
    if let Some(admin) = &model.admin {
        tracing::warn!(listen = %admin.listen, "the admin API is not served yet; [admin] is accepted and ignored");
    }
    let shutdown = CancellationToken::new();
    let sessions = TaskTracker::new();
    let accepting = tokio::spawn(bound.serve(shutdown.clone(), sessions.clone()));
    stop.await;
    let grace = model.runtime.shutdown_grace;
    tracing::info!(
        sessions = sessions.len(),
        ?grace,
        "shutting down: no longer accepting, finishing sessions"
    );
    shutdown.cancel();
    let _ = accepting.await;
    sessions.close();
    if tokio::time::timeout(grace, sessions.wait()).await.is_err() {
        tracing::warn!(sessions = sessions.len(), "grace period over, cutting the remaining sessions");
    }
    ExitCode::SUCCESS
}

/// SIGHUP's default action kills the process, and operators send it expecting
/// a reload: until reload exists, keep serving and say so.
fn ignore_hangup() {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::warn!("SIGHUP received: reload is not supported yet, configuration unchanged");
        }
    });
}

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into a log file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}
