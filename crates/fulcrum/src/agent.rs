//! `fulcrum agent`: the load agent for a backend host.
//!
//! Serves, as JSON over HTTP (`GET /report`, and `GET /` the same), what the
//! host can take: CPU, memory, traffic on one interface, established TCP
//! connections, listening sockets with their owning processes, and the
//! operator's capacity and state. The report type and how the balancer
//! scores it live in `fulcrum_core::agent`; this module reads /proc and /sys.
//!
//! A sampler thread reads the kernel's counters every second and publishes
//! the latest sample; a request only copies it (and reads the small state
//! file), so it never waits for a sampling interval. Rates and utilisations
//! are differences between the last two samples.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use fulcrum_core::agent::{AgentReport, AgentState, ListeningSocket, Network};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

mod procfs;

pub use procfs::{
    parse_link_speed, parse_meminfo, parse_net_dev, parse_net_tcp, parse_pid_stat, parse_proc_stat,
    parse_socket_link, parse_vm_rss, CpuTimes, InterfaceCounters, ProcessTimes, TcpSocket, TCP_ESTABLISHED,
    TCP_LISTEN,
};

/// How often the sampler reads the kernel's counters.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// The interval of the first sample, taken before the agent says it is
/// listening so that the first report already has rates; short so that
/// starting stays quick.
const FIRST_INTERVAL: Duration = Duration::from_millis(250);
/// Most of a state file the agent reads: it wants one word.
const STATE_FILE_LIMIT: u64 = 4096;

/// What `fulcrum agent` was asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    pub listen: SocketAddr,
    /// The interface to report traffic for; `None` picks one ([`default_interface`]).
    pub interface: Option<String>,
    /// Sessions this host can take, passed through to the report.
    pub capacity: Option<u64>,
    /// A file whose first word (`up`, `drain`, `down`) is the operator state.
    pub state_file: Option<PathBuf>,
}

/// Runs the agent until Ctrl-C or SIGTERM.
pub fn main(options: Options) -> ExitCode {
    let Some(runtime) = crate::run::runtime(false) else { return ExitCode::FAILURE };
    runtime.block_on(async {
        let interface = match options.interface.clone() {
            Some(name) => name,
            None => default_interface(Path::new("/sys/class/net")),
        };
        let listener = match TcpListener::bind(options.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: agent: cannot listen on {}: {e}", options.listen);
                return ExitCode::FAILURE;
            }
        };
        let stop = crate::shutdown::signal();
        let latest = match start_sampler(interface).await {
            Ok(latest) => latest,
            Err(e) => {
                eprintln!("error: agent: {e}");
                return ExitCode::FAILURE;
            }
        };
        let agent = Arc::new(Agent { latest, capacity: options.capacity, state_file: options.state_file });
        let address = listener.local_addr().map_or(options.listen, |a| a);
        println!("listening agent address={address}");
        tokio::select! {
            () = serve(listener, agent) => {}
            () = stop => {}
        }
        ExitCode::SUCCESS
    })
}

/// What a request handler needs: the latest sample and the operator's settings.
struct Agent {
    /// The sampler's latest report, without the operator's fields.
    latest: Arc<ArcSwap<AgentReport>>,
    capacity: Option<u64>,
    /// Read on every report so that `echo drain > FILE` takes effect at once.
    state_file: Option<PathBuf>,
}

/// Serves connections from `listener` forever.
async fn serve(listener: TcpListener, agent: Arc<Agent>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, agent.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>, agent: Arc<Agent>) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = status;
        r
    };
    if !matches!(req.uri().path(), "/" | "/report") {
        return Ok(text(StatusCode::NOT_FOUND, "not found: the report is at /report\n"));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "the report takes GET\n");
        r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    let report = agent.report().await;
    let mut body = match serde_json::to_vec_pretty(&report) {
        Ok(body) => body,
        Err(_) => return Ok(text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the report\n")),
    };
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    let headers = r.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    Ok(r)
}

impl Agent {
    /// The latest sample with the operator's capacity and current state.
    async fn report(&self) -> AgentReport {
        let mut report = AgentReport::clone(&self.latest.load());
        report.capacity = self.capacity;
        if let Some(path) = &self.state_file {
            let (state, warning) = read_state_file(path).await;
            report.state = state;
            report.warnings.extend(warning);
        }
        report
    }
}

/// Reads the operator state from `path`; see [`state_from_file`].
async fn read_state_file(path: &Path) -> (AgentState, Option<String>) {
    use tokio::io::AsyncReadExt;
    let read = async {
        let file = tokio::fs::File::open(path).await?;
        let mut text = String::new();
        file.take(STATE_FILE_LIMIT).read_to_string(&mut text).await?;
        Ok::<_, std::io::Error>(text)
    };
    match read.await {
        Ok(text) => state_from_file(path, Some(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => state_from_file(path, None),
        Err(e) => (AgentState::Up, Some(format!("state file {}: {e}; reporting up", path.display()))),
    }
}

/// The operator state a state file's text asks for, and a warning when the
/// file says something else: the first word is the state; a missing
/// (`None`) or empty file means `up`, as does an unknown word, which also
/// warns. Falling back to `up` keeps a typo from taking a host out of service.
pub fn state_from_file(path: &Path, text: Option<&str>) -> (AgentState, Option<String>) {
    let Some(word) = text.and_then(|t| t.split_whitespace().next()) else {
        return (AgentState::Up, None);
    };
    match word.parse() {
        Ok(state) => (state, None),
        Err(e) => (AgentState::Up, Some(format!("state file {}: {e}; reporting up", path.display()))),
    }
}

/// The interface whose traffic the agent reports when `--interface` is not
/// given: among the entries of `sys_class_net` other than `lo`, in name
/// order, the first with a known link speed, else the first whose speed file
/// can be read at all (a real NIC with no link negotiated yet), else `lo`.
/// Virtual devices (bridges, tunnels, ifb) refuse the read, which keeps them
/// out.
pub fn default_interface(sys_class_net: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(sys_class_net)
        .map(|dir| dir.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    names.sort();
    let readable: Vec<(String, Option<u64>)> = names
        .into_iter()
        .filter(|name| name != "lo")
        .filter_map(|name| {
            let text = std::fs::read_to_string(sys_class_net.join(&name).join("speed")).ok()?;
            let speed = parse_link_speed(&text);
            Some((name, speed))
        })
        .collect();
    readable
        .iter()
        .find(|(_, speed)| speed.is_some())
        .or_else(|| readable.first())
        .map_or_else(|| "lo".to_owned(), |(name, _)| name.clone())
}

/// Takes the first sample (two readings `FIRST_INTERVAL` apart), then starts
/// the sampler thread that replaces it every `SAMPLE_INTERVAL`. Fails when
/// the host has no /proc the agent can read, or no such interface.
async fn start_sampler(interface: String) -> Result<Arc<ArcSwap<AgentReport>>, AgentError> {
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("agent-sampler".to_owned())
        .spawn(move || {
            let mut sampler = match Sampler::new(interface) {
                Ok(s) => s,
                Err(e) => {
                    let _ = first_tx.send(Err(e));
                    return;
                }
            };
            sampler.sample();
            std::thread::sleep(FIRST_INTERVAL);
            let latest = Arc::new(ArcSwap::from_pointee(sampler.sample()));
            if first_tx.send(Ok(latest.clone())).is_err() {
                return;
            }
            loop {
                std::thread::sleep(SAMPLE_INTERVAL);
                latest.store(Arc::new(sampler.sample()));
            }
        })
        .map_err(AgentError::Thread)?;
    first_rx.await.map_err(|_| AgentError::SamplerStopped)?
}

/// Why the agent cannot start on this host.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot read {path}: {source} (the agent reads Linux /proc)")]
    Read { path: &'static str, source: std::io::Error },
    #[error("{path} lacks {what}: not the format the agent knows")]
    Format { path: &'static str, what: &'static str },
    #[error("no interface {name:?}; this host has {known} (see --interface)")]
    NoInterface { name: String, known: String },
    #[error("cannot start the sampler thread: {0}")]
    Thread(std::io::Error),
    #[error("the sampler stopped before its first sample")]
    SamplerStopped,
}

/// Reads the kernel's counters and turns two readings into a report. Keeps
/// the previous reading of each counter it takes differences of.
struct Sampler {
    interface: String,
    /// Host CPU ticks at the previous sample.
    cpu: Option<CpuTimes>,
    /// The interface's counters at the previous sample, and when.
    net: Option<(Instant, InterfaceCounters)>,
    /// CPU ticks of each listening socket's owner at the previous sample.
    processes: HashMap<u32, ProcessTimes>,
    /// Owners of listening sockets by inode, from the last scan of
    /// /proc/*/fd; the scan reads every descriptor of every process, so it
    /// runs again only when the set of listening inodes changes or a known
    /// owner has gone.
    owners: HashMap<u64, u32>,
    /// The listening inodes the last scan looked for.
    scanned: BTreeSet<u64>,
    /// Values of the last sample, kept when a later read fails so that a
    /// report shows the last known value (with a warning), not an invented one.
    last: AgentReport,
}

impl Sampler {
    /// Reads /proc/stat, /proc/meminfo and /proc/net/dev once to make sure the
    /// agent can do its job on this host.
    fn new(interface: String) -> Result<Sampler, AgentError> {
        let read = |path: &'static str| {
            std::fs::read_to_string(path).map_err(|source| AgentError::Read { path, source })
        };
        let format = |path, what| AgentError::Format { path, what };
        parse_proc_stat(&read("/proc/stat")?).ok_or(format("/proc/stat", "a cpu line"))?;
        let memory = parse_meminfo(&read("/proc/meminfo")?)
            .ok_or(format("/proc/meminfo", "MemTotal or MemAvailable"))?;
        let interfaces = parse_net_dev(&read("/proc/net/dev")?);
        if !interfaces.iter().any(|(name, _)| *name == interface) {
            let known: Vec<&str> = interfaces.iter().map(|(n, _)| n.as_str()).collect();
            return Err(AgentError::NoInterface { name: interface, known: known.join(", ") });
        }
        let last = AgentReport {
            cpu: 0.0,
            memory,
            network: Network {
                interface: interface.clone(),
                rx_bytes_per_second: 0.0,
                tx_bytes_per_second: 0.0,
                speed_bytes_per_second: None,
                free_bytes_per_second: None,
            },
            tcp_established: 0,
            listening: Vec::new(),
            capacity: None,
            state: AgentState::Up,
            warnings: Vec::new(),
        };
        Ok(Sampler {
            interface,
            cpu: None,
            net: None,
            processes: HashMap::new(),
            owners: HashMap::new(),
            scanned: BTreeSet::new(),
            last,
        })
    }

    /// Reads every counter once and returns the report since the previous
    /// call. A file that cannot be read leaves its fields as they were and
    /// adds a warning; it never fails the whole report.
    fn sample(&mut self) -> AgentReport {
        let mut warnings = Vec::new();
        let mut warn = |what: String| warnings.push(what);
        let mut report = self.last.clone();

        let mut cpu_ticks = 0;
        match std::fs::read_to_string("/proc/stat").ok().as_deref().and_then(parse_proc_stat) {
            Some(now) => {
                if let Some(before) = self.cpu {
                    report.cpu = now.utilisation_since(before);
                    cpu_ticks = now.total.saturating_sub(before.total);
                }
                self.cpu = Some(now);
            }
            None => warn("cannot read /proc/stat; cpu is from an earlier sample".to_owned()),
        }

        match std::fs::read_to_string("/proc/meminfo").ok().as_deref().and_then(parse_meminfo) {
            Some(memory) => report.memory = memory,
            None => warn("cannot read /proc/meminfo; memory is from an earlier sample".to_owned()),
        }

        report.network = self.network(&mut warn);

        let mut sockets = Vec::new();
        for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
            match std::fs::read_to_string(path) {
                Ok(text) => sockets.extend(parse_net_tcp(&text)),
                // A kernel without IPv6 has no tcp6.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && path.ends_with('6') => {}
                Err(e) => warn(format!("cannot read {path}: {e}")),
            }
        }
        report.tcp_established = sockets.iter().filter(|s| s.state == TCP_ESTABLISHED).count() as u64;
        let mut listening: Vec<TcpSocket> = sockets.into_iter().filter(|s| s.state == TCP_LISTEN).collect();
        listening.sort_by_key(|s| (s.local.port(), s.local.ip()));
        report.listening = self.owners_of(&listening, cpu_ticks);

        self.last = report.clone();
        report.warnings = warnings;
        report
    }

    /// The interface's rates since the previous sample and its link speed.
    fn network(&mut self, warn: &mut impl FnMut(String)) -> Network {
        let mut network = self.last.network.clone();
        let now = Instant::now();
        let counters = std::fs::read_to_string("/proc/net/dev")
            .ok()
            .and_then(|text| parse_net_dev(&text).into_iter().find(|(name, _)| *name == self.interface))
            .map(|(_, counters)| counters);
        match counters {
            Some(counters) => {
                if let Some((then, before)) = self.net {
                    let seconds = now.duration_since(then).as_secs_f64();
                    if seconds > 0.0 {
                        // Counters restart when the interface is re-created: no rate then.
                        let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds;
                        network.rx_bytes_per_second = rate(before.rx_bytes, counters.rx_bytes);
                        network.tx_bytes_per_second = rate(before.tx_bytes, counters.tx_bytes);
                    }
                }
                self.net = Some((now, counters));
            }
            None => warn(format!(
                "interface {:?} is gone from /proc/net/dev; rates are from an earlier sample",
                self.interface
            )),
        }
        let speed_file = Path::new("/sys/class/net").join(&self.interface).join("speed");
        network.speed_bytes_per_second =
            std::fs::read_to_string(speed_file).ok().as_deref().and_then(parse_link_speed);
        network.free_bytes_per_second = network.speed_bytes_per_second.map(|speed| {
            let busiest = network.rx_bytes_per_second.max(network.tx_bytes_per_second);
            (speed as f64 - busiest).max(0.0) as u64
        });
        network
    }

    /// The listening sockets with their owners' pid, command, CPU share over
    /// `cpu_ticks` (the host's ticks since the previous sample) and RSS.
    fn owners_of(&mut self, listening: &[TcpSocket], cpu_ticks: u64) -> Vec<ListeningSocket> {
        let inodes: BTreeSet<u64> = listening.iter().map(|s| s.inode).filter(|&i| i != 0).collect();
        let mut times = HashMap::new();
        let mut gone = false;
        for &pid in self.owners.values() {
            if let std::collections::hash_map::Entry::Vacant(slot) = times.entry(pid) {
                let now = read_pid_stat(pid);
                // Exited, or its pid now names another process (a new start time).
                gone |= match (now, self.processes.get(&pid)) {
                    (None, _) => true,
                    (Some(now), Some(before)) => now.start != before.start,
                    (Some(_), None) => false,
                };
                slot.insert(now);
            }
        }
        if inodes != self.scanned || gone {
            self.owners = scan_socket_owners(&inodes);
            self.scanned = inodes;
        }

        let mut processes = HashMap::new();
        let sockets = listening
            .iter()
            .map(|socket| {
                let pid = self.owners.get(&socket.inode).copied();
                let mut entry =
                    ListeningSocket { address: socket.local, pid, command: None, cpu: None, rss_bytes: None };
                let Some(pid) = pid else { return entry };
                let now = *times.entry(pid).or_insert_with(|| read_pid_stat(pid));
                entry.command = read_pid_file(pid, "comm").map(|c| c.trim_end().to_owned());
                entry.rss_bytes = read_pid_file(pid, "status").as_deref().and_then(parse_vm_rss);
                if let Some(now) = now {
                    entry.cpu = match self.processes.get(&pid) {
                        Some(before) if before.start == now.start && cpu_ticks > 0 => Some(
                            (now.ticks.saturating_sub(before.ticks) as f64 / cpu_ticks as f64)
                                .clamp(0.0, 1.0),
                        ),
                        _ => None,
                    };
                    processes.insert(pid, now);
                }
                entry
            })
            .collect();
        self.processes = processes;
        sockets
    }
}

fn read_pid_file(pid: u32, name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/{name}")).ok()
}

fn read_pid_stat(pid: u32) -> Option<ProcessTimes> {
    read_pid_file(pid, "stat").as_deref().and_then(parse_pid_stat)
}

/// Finds, for each of `inodes`, the process holding it: the lowest pid with
/// a /proc/PID/fd link `socket:[INODE]` (a forked server's parent, usually).
/// Processes whose descriptors the agent may not read are skipped, so their
/// sockets stay without an owner.
fn scan_socket_owners(inodes: &BTreeSet<u64>) -> HashMap<u64, u32> {
    let mut owners = HashMap::new();
    if inodes.is_empty() {
        return owners;
    }
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .map(|dir| dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    pids.sort_unstable();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            let Some(inode) = target.to_str().and_then(parse_socket_link) else { continue };
            if inodes.contains(&inode) {
                owners.entry(inode).or_insert(pid);
            }
        }
        if owners.len() == inodes.len() {
            break;
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_words() {
        let path = Path::new("/run/fulcrum/state");
        assert_eq!(state_from_file(path, None), (AgentState::Up, None));
        assert_eq!(state_from_file(path, Some("")), (AgentState::Up, None));
        assert_eq!(state_from_file(path, Some("drain\n")), (AgentState::Drain, None));
        assert_eq!(state_from_file(path, Some("  down  for maintenance\n")), (AgentState::Down, None));
        assert_eq!(state_from_file(path, Some("UP")), (AgentState::Up, None));
        let (state, warning) = state_from_file(path, Some("drian\n"));
        assert_eq!(state, AgentState::Up);
        let warning = warning.expect("a warning");
        assert!(warning.contains("/run/fulcrum/state") && warning.contains("drian"), "{warning}");
    }

    #[test]
    fn default_interface_prefers_a_known_speed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let add = |name: &str, speed: Option<&str>| {
            let d = dir.path().join(name);
            std::fs::create_dir(&d).expect("mkdir");
            if let Some(s) = speed {
                std::fs::write(d.join("speed"), s).expect("write");
            }
        };
        add("lo", None);
        assert_eq!(default_interface(dir.path()), "lo");
        add("virbr0", None);
        assert_eq!(default_interface(dir.path()), "lo");
        add("eth1", Some("-1\n"));
        assert_eq!(default_interface(dir.path()), "eth1");
        add("eth2", Some("10000\n"));
        assert_eq!(default_interface(dir.path()), "eth2");
        add("eth0", Some("1000\n"));
        assert_eq!(default_interface(dir.path()), "eth0");
        assert_eq!(default_interface(&dir.path().join("missing")), "lo");
    }

    #[test]
    fn the_report_is_json_the_core_type_reads_back() {
        let mut sampler = Sampler::new("lo".to_owned()).expect("a Linux /proc");
        sampler.sample();
        let report = sampler.sample();
        let json = serde_json::to_string(&report).expect("encode");
        let back: AgentReport = serde_json::from_str(&json).expect("decode");
        // Floats may differ in the last bit through text; the rest must not.
        assert!((back.cpu - report.cpu).abs() < 1e-9);
        assert_eq!(back.memory, report.memory);
        assert_eq!(back.network.interface, "lo");
        assert_eq!(back.tcp_established, report.tcp_established);
        assert_eq!(back.listening.len(), report.listening.len());
        assert_eq!(back.state, AgentState::Up);
        assert!(json.contains("\"state\":\"up\""), "{json}");
        assert!(json.contains("\"speed_bytes_per_second\":null"), "{json}");
    }
}
