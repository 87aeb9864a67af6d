//! `fulcrum run`: load the configuration, bind, serve until a signal, then
//! drain in-flight sessions within the grace period.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use arc_swap::ArcSwap;
use fulcrum_core::model::Model;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::generation::Generation;
use crate::listeners::Listeners;
use crate::state::{ReloadReply, Shared};

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
    // One worker: everything on this thread. More: this thread checks and
    // administers; the first worker accepts, and the workers serve the sessions.
    let workers = workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let Some(runtime) = runtime(true) else { return ExitCode::FAILURE };
    let pool = if workers > 1 {
        match crate::workers::Workers::start(workers) {
            Ok(pool) => Some(pool),
            Err(e) => {
                eprintln!("error: cannot start {workers} worker threads: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let base = path.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    let code = runtime
        .block_on(async { serve(model, &base, Some(path.to_path_buf()), crate::shutdown::signal()).await });
    // Sessions still running after the grace period are cut here.
    if let Some(pool) = pool {
        pool.stop();
    }
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

/// A runtime on this thread alone (`run`'s main thread), or a multi-threaded
/// one with a thread per core (`backend`, `agent`, `demo`).
pub fn runtime(one_thread: bool) -> Option<tokio::runtime::Runtime> {
    let mut builder = if one_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    match builder.enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            None
        }
    }
}

/// Serves `model` until `stop` resolves, then lets in-flight sessions
/// finish for up to the grace period. Prints one `listening` line per bound
/// listener on stdout (the admin API's last). SIGHUP, or `POST
/// /api/v1/reload`, reloads `config_path`: the new configuration is checked
/// whole and applied at once, or refused with nothing changed.
pub async fn serve(
    model: Model,
    base: &Path,
    config_path: Option<PathBuf>,
    stop: impl Future<Output = ()>,
) -> ExitCode {
    // Before anything is announced: a SIGHUP from then on must find the handler.
    let mut hangups = signal(SignalKind::hangup()).ok();
    let shutdown = CancellationToken::new();
    let sessions = TaskTracker::new();
    let (generation, _) = match Generation::build(model, base, None) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut listeners = Listeners::default();
    let plan = match listeners.plan(&generation) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let admin = match &generation.model.admin {
        Some(a) => match crate::server::listen(a.listen) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("error: admin: cannot listen on {}: {e}", a.listen);
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let admin_tokens = match admin_tokens(&generation.model, base) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Switches first: no connection is accepted before the limits are in force.
    generation.start(None, &shutdown);
    let stopped = listeners.commit(plan, &shutdown, &sessions);
    debug_assert!(stopped.is_empty(), "nothing to stop at start");
    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadReply>(4);
    let shared = Arc::new(Shared {
        live: ArcSwap::from_pointee(generation.live()),
        sessions: crate::sessions::table().clone(),
        reload: reload_tx,
        admin_tokens,
    });
    if let Some(listener) = admin {
        if let Ok(address) = listener.local_addr() {
            println!("listening admin address={address}");
        }
        tokio::spawn(crate::admin::serve(listener, shared.clone(), shutdown.clone()));
    }
    let mut current = generation;
    tokio::pin!(stop);
    loop {
        let reply = tokio::select! {
            () = &mut stop => break,
            Some(()) = hangup(&mut hangups) => None,
            Some(reply) = reload_rx.recv() => Some(reply),
        };
        let mut ctx = Reload {
            path: config_path.as_deref(),
            base,
            listeners: &mut listeners,
            shutdown: &shutdown,
            sessions: &sessions,
        };
        let (result, stopped) = match ctx.reload(&mut current, &shared) {
            Ok((changes, stopped)) => (Ok(changes), stopped),
            Err(why) => (Err(why), Vec::new()),
        };
        // Answered once removed listeners are closed: their addresses are free for what comes next.
        crate::listeners::closed(stopped).await;
        match &result {
            Ok(changes) => tracing::info!(changes = %changes, "configuration reloaded"),
            Err(why) => tracing::warn!(error = %why, "reload refused, configuration unchanged"),
        }
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }
    // The grace period of the configuration in force now.
    let grace = current.model.runtime.shutdown_grace;
    tracing::info!(
        sessions = sessions.len(),
        ?grace,
        "shutting down: no longer accepting, finishing sessions"
    );
    shutdown.cancel();
    sessions.close();
    if tokio::time::timeout(grace, sessions.wait()).await.is_err() {
        tracing::warn!(sessions = sessions.len(), "grace period over, cutting the remaining sessions");
    }
    ExitCode::SUCCESS
}

/// The next SIGHUP (never, without a handler).
async fn hangup(hangups: &mut Option<Signal>) -> Option<()> {
    match hangups {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Everything a reload touches besides the generations.
struct Reload<'a> {
    path: Option<&'a Path>,
    base: &'a Path,
    listeners: &'a mut Listeners,
    shutdown: &'a CancellationToken,
    sessions: &'a TaskTracker,
}

impl Reload<'_> {
    /// Reads, checks and applies the configuration file; on any error nothing
    /// changes. Returns what changed and the accept loops of the listeners it
    /// removed (their sockets close as those end), or why nothing changed.
    fn reload(
        &mut self,
        current: &mut Generation,
        shared: &Shared,
    ) -> Result<(String, Vec<crate::listeners::Stopped>), String> {
        let path = self.path.ok_or("there is no configuration file to reload (fulcrum demo)")?;
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let loaded = fulcrum_core::config::load(&text).map_err(|errors| {
            let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
            format!("{}: {}", path.display(), all.join("; "))
        })?;
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        let model = loaded.model;
        if model.admin != current.model.admin {
            tracing::warn!("[admin] changes take effect on restart");
        }
        let (next, changes) =
            Generation::build(model, self.base, Some(current)).map_err(|e| e.to_string())?;
        let plan = self.listeners.plan(&next).map_err(|e| e.to_string())?;
        // Committed from here on: nothing below can fail.
        next.start(Some(current), self.shutdown);
        let stopped = self.listeners.commit(plan, self.shutdown, self.sessions);
        shared.live.store(Arc::new(next.live()));
        *current = next;
        let changes = if changes.is_empty() { "no change".into() } else { changes.join(", ") };
        Ok((changes, stopped))
    }
}

/// The tokens mutating admin calls need (`[admin] token_file`, one a line).
fn admin_tokens(model: &Model, base: &Path) -> Result<Vec<String>, String> {
    let Some(file) = model.admin.as_ref().and_then(|a| a.token_file.as_ref()) else { return Ok(Vec::new()) };
    let path = base.join(file);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("admin: token_file {:?}: cannot read: {e}", path.display()))?;
    let tokens: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if tokens.is_empty() {
        return Err(format!("admin: token_file {:?} has no token", path.display()));
    }
    Ok(tokens)
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
