//! `GET /metrics`: Prometheus (OpenMetrics) text, rendered at scrape time
//! straight from the atomics the data path already keeps.
//!
//! A [`Collector`] rather than a fresh `Registry` of `Counter`s per scrape:
//! the counters exist already (in `stats.rs`, owned by pools and services
//! so they survive reloads of everything else), and a collector encodes them
//! where they live — no copy into metric objects, no per-series allocation,
//! no `Family` hash maps behind a lock, nothing to keep in step when a
//! reload adds or removes a backend. The data path pays nothing: it bumps
//! its relaxed atomics as it would without `/metrics`.
//!
//! Labels are the lexicon's words: `service`, `pool`, `backend`, `class`
//! (`2xx`...), `snat_pool`. Every name starts with `fulcrum_`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use fulcrum_core::model::BackendId;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::api::CLASSES;
use super::{ApiError, AppState};
use crate::service::ServiceRuntime;
use crate::state::Shared;
use crate::stats::{Histogram, LATENCY_BUCKETS_MS};
use crate::upstream::PoolRuntime;

/// The content type of OpenMetrics text, which Prometheus negotiates.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A registry whose only member renders `shared` on each scrape.
pub fn registry(shared: Arc<Shared>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Collect(shared)));
    registry
}

/// `GET /metrics`
pub async fn handler(State(app): State<AppState>) -> Response {
    let mut text = String::with_capacity(16 * 1024);
    match prometheus_client::encoding::text::encode(&mut text, &app.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(_) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "metrics could not be encoded").into_response()
        }
    }
}

struct Collect(Arc<Shared>);

impl fmt::Debug for Collect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("fulcrum metrics collector")
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// Encodes one counter family: its descriptor, then one line per series.
fn counters<'a, L: EncodeLabelSet + 'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, value) in series {
        family.encode_family(&labels)?.encode_counter::<NoLabelSet, u64, u64>(&value, None)?;
    }
    Ok(())
}

fn gauges<'a, L: EncodeLabelSet + 'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, i64)>,
) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        family.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

fn svc(s: &ServiceRuntime) -> Labels<'_> {
    vec![("service", &*s.name)]
}

fn labels(p: &PoolRuntime, id: BackendId) -> Labels<'_> {
    vec![("pool", &*p.name), ("backend", &*p.backend(id).name)]
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Collector for Collect {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let shared = &self.0;
        let live = shared.live.load();

        enc.encode_descriptor(
            "fulcrum_sessions",
            "Sessions open now (rows of the session table).",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&gauge_value(shared.sessions.len() as u64))?;

        enc.encode_descriptor(
            "fulcrum_panics",
            "Sessions whose task panicked, caught and closed alone.",
            None,
            MetricType::Counter,
        )?
        .encode_counter::<NoLabelSet, u64, u64>(&crate::server::PANICS.load(Ordering::Relaxed), None)?;

        // Services.
        type ServiceCounter = fn(&crate::stats::ServiceStats) -> &AtomicU64;
        let service_counters: [(&str, &str, Option<Unit>, ServiceCounter); 5] = [
            ("fulcrum_service_sessions", "Client connections accepted.", None, |st| &st.sessions),
            ("fulcrum_service_requests", "HTTP requests received.", None, |st| &st.requests),
            ("fulcrum_service_received", "Bytes received from clients.", Some(Unit::Bytes), |st| {
                &st.bytes_in
            }),
            ("fulcrum_service_sent", "Bytes sent to clients.", Some(Unit::Bytes), |st| &st.bytes_out),
            ("fulcrum_service_refused", "Sessions refused by limits or policy.", None, |st| &st.refused),
        ];
        for (name, help, unit, field) in &service_counters {
            counters(
                &mut enc,
                name,
                help,
                unit.as_ref(),
                live.services.iter().map(|s| (svc(s), load(field(&s.stats)))),
            )?;
        }
        counters(
            &mut enc,
            "fulcrum_service_responses",
            "Responses sent to clients by class (Fulcrum's own answers included).",
            None,
            live.services.iter().flat_map(|s| {
                CLASSES.iter().zip(&s.stats.responses).map(|(&class, n)| {
                    let mut l = svc(s);
                    l.push(("class", class));
                    (l, load(n))
                })
            }),
        )?;

        gauges(
            &mut enc,
            "fulcrum_service_connections",
            "Client connections open now, counted against the service's max_connections.",
            live.services.iter().map(|s| (svc(s), gauge_value(s.connections.open() as u64))),
        )?;

        // Backends: every (pool, backend) pair, in configuration order.
        let backends: Vec<_> =
            live.pools.iter().flat_map(|p| (0..p.backends.len()).map(move |i| (p, BackendId(i)))).collect();
        type BackendCounter = fn(&crate::stats::BackendStats) -> &AtomicU64;
        let backend_counters: [(&str, &str, Option<Unit>, BackendCounter); 5] = [
            (
                "fulcrum_backend_requests",
                "Requests (http) or sessions (tcp) sent to the backend.",
                None,
                |st| &st.requests,
            ),
            ("fulcrum_backend_received", "Bytes received from the backend.", Some(Unit::Bytes), |st| {
                &st.bytes_in
            }),
            ("fulcrum_backend_sent", "Bytes sent to the backend.", Some(Unit::Bytes), |st| &st.bytes_out),
            ("fulcrum_backend_connect_errors", "Failed connects to the backend.", None, |st| {
                &st.connect_errors
            }),
            (
                "fulcrum_backend_retries",
                "Requests sent again, to another backend or on a fresh connection.",
                None,
                |st| &st.retries,
            ),
        ];
        for (name, help, unit, field) in &backend_counters {
            counters(
                &mut enc,
                name,
                help,
                unit.as_ref(),
                backends.iter().map(|&(p, id)| (labels(p, id), load(field(&p.backend(id).stats)))),
            )?;
        }
        counters(
            &mut enc,
            "fulcrum_backend_responses",
            "Responses received from the backend by class.",
            None,
            backends.iter().flat_map(|&(p, id)| {
                CLASSES.iter().zip(&p.backend(id).stats.responses).map(move |(&class, n)| {
                    let mut l = labels(p, id);
                    l.push(("class", class));
                    (l, load(n))
                })
            }),
        )?;
        gauges(
            &mut enc,
            "fulcrum_backend_health",
            "1 when the backend's health is up, 0 when down.",
            backends.iter().map(|&(p, id)| (labels(p, id), i64::from(p.backend(id).is_up()))),
        )?;
        gauges(
            &mut enc,
            "fulcrum_backend_sessions",
            "Sessions open on the backend now.",
            backends.iter().map(|&(p, id)| (labels(p, id), gauge_value(load(&p.backend(id).sessions)))),
        )?;
        gauges(
            &mut enc,
            "fulcrum_backend_weight",
            "The backend's configured weight.",
            backends.iter().map(|&(p, id)| (labels(p, id), i64::from(p.backend(id).weight))),
        )?;
        {
            let mut family = enc.encode_descriptor(
                "fulcrum_backend_latency",
                "From the request sent to the response head received (http).",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for &(p, id) in &backends {
                let l = labels(p, id);
                let (sum, count, buckets) = histogram(&p.backend(id).stats.latency);
                family.encode_family(&l)?.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }

        // SNAT pools: one allocator lock each, for one consistent reading.
        let snat: Vec<_> = live.snat.iter().map(|s| (vec![("snat_pool", &*s.name)], s.stats(), s)).collect();
        gauges(
            &mut enc,
            "fulcrum_snat_allocated",
            "Source address:ports handed out and not yet released.",
            snat.iter().map(|(l, st, _)| (l.clone(), gauge_value(st.allocated))),
        )?;
        gauges(
            &mut enc,
            "fulcrum_snat_capacity",
            "Source address:ports the pool can hand out at most (max_blocks x block_size).",
            snat.iter().map(|(l, st, _)| (l.clone(), gauge_value(st.capacity))),
        )?;
        gauges(
            &mut enc,
            "fulcrum_snat_blocks",
            "Connection blocks held now.",
            snat.iter().map(|(l, st, _)| (l.clone(), gauge_value(st.blocks_held))),
        )?;
        counters(
            &mut enc,
            "fulcrum_snat_exhausted",
            "Sessions refused because no source address:port was free in time.",
            None,
            snat.iter().map(|(l, _, s)| (l.clone(), load(&s.exhausted))),
        )?;
        counters(
            &mut enc,
            "fulcrum_snat_waited",
            "Sessions that found the pool exhausted and waited for a source address:port.",
            None,
            snat.iter().map(|(l, _, s)| (l.clone(), load(&s.waited))),
        )?;

        Ok(())
    }
}

/// A histogram's sum (seconds), count and per-bucket counts with upper
/// bounds in seconds; the encoder makes them cumulative, `f64::MAX` is +Inf.
fn histogram(h: &Histogram) -> (f64, u64, Vec<(f64, u64)>) {
    let bounds = LATENCY_BUCKETS_MS.iter().map(|ms| ms / 1000.0).chain([f64::MAX]);
    let buckets: Vec<(f64, u64)> = bounds.zip(&h.buckets).map(|(b, n)| (b, load(n))).collect();
    // Read the count as the buckets' total so the rendered histogram is
    // consistent even while observations land between the loads.
    let count = buckets.iter().map(|&(_, n)| n).sum();
    (load(&h.sum_micros) as f64 / 1e6, count, buckets)
}
