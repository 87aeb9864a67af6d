//! What an http exchange leaves behind: its bytes each way in the session's
//! row and in the service's and backend's counters (added as they move),
//! the response counted by class, and the access log line.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use fulcrum_core::http::RequestHead;
use fulcrum_core::model::BackendId;
use fulcrum_core::session::Session;
use tokio::time::Instant;

use crate::service::ServiceRuntime;
use crate::sessions::Meter;
use crate::stats::{count_status, BackendStats, ServiceStats};
use crate::upstream::PoolRuntime;

/// The counters one exchange adds its bytes to.
#[derive(Clone, Copy)]
pub(super) struct Tally<'a> {
    /// The session's row, when the table is on.
    pub row: Option<&'a Session>,
    pub service: &'a ServiceStats,
    /// This exchange's own bytes from and to the client, for the access log.
    pub exchange: &'a [AtomicU64; 2],
}

impl<'a> Tally<'a> {
    /// Bytes from the client (passed on to `backend`, if they go to one).
    pub fn inbound(&self, backend: Option<&'a BackendStats>) -> Meter<'a> {
        Meter([
            self.row.map(|r| &r.bytes_in),
            Some(&self.service.bytes_in),
            Some(&self.exchange[0]),
            backend.map(|b| &b.bytes_out),
        ])
    }

    /// Bytes to the client (from `backend`, if they come from one).
    pub fn outbound(&self, backend: Option<&'a BackendStats>) -> Meter<'a> {
        Meter([
            self.row.map(|r| &r.bytes_out),
            Some(&self.service.bytes_out),
            Some(&self.exchange[1]),
            backend.map(|b| &b.bytes_in),
        ])
    }
}

/// One exchange as the counters and the access log see it.
pub(super) struct Record<'a> {
    pub tally: Tally<'a>,
    /// The status sent to the client; 0 while none was.
    pub status: u16,
    /// The backend the request went to last.
    pub backend: Option<(&'a PoolRuntime, BackendId)>,
    /// When the request head was read, if an access log line will be written.
    started: Option<Instant>,
}

impl<'a> Record<'a> {
    /// A record for an exchange whose request head of `head_len` bytes was just read.
    pub fn start(tally: Tally<'a>, head_len: usize) -> Self {
        tally.service.requests.fetch_add(1, Ordering::Relaxed);
        tally.inbound(None).add(head_len as u64);
        Record { tally, status: 0, backend: None, started: crate::sessions::access_log().then(Instant::now) }
    }

    /// Counts the response the client got, the request on the row, and
    /// writes the access log line; `head` is `None` for a request refused
    /// before its head could be parsed.
    pub fn finish(self, service: &ServiceRuntime, client: SocketAddr, head: Option<&RequestHead>) {
        if self.status != 0 {
            count_status(&self.tally.service.responses, self.status);
        }
        if let Some(row) = self.tally.row {
            row.request_done(crate::sessions::unix_ms());
        }
        let Some(started) = self.started else { return };
        let (pool, backend) = match self.backend {
            Some((pool, id)) => (&*pool.name, &*pool.backend(id).name),
            None => ("-", "-"),
        };
        tracing::info!(
            target: "access",
            service = %service.name,
            client = %client,
            method = %head.map_or("-", |h| h.method.as_str()),
            target = %head.map_or("-", |h| h.target.as_str()),
            status = self.status,
            pool = %pool,
            backend = %backend,
            bytes_in = self.tally.exchange[0].load(Ordering::Relaxed),
            bytes_out = self.tally.exchange[1].load(Ordering::Relaxed),
            duration_ms = started.elapsed().as_millis() as u64,
            "request"
        );
    }
}
