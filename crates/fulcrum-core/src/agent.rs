//! The load agent's report: what a backend host can take, as `fulcrum agent`
//! serves it (JSON over HTTP) and as the daemon's poller reads it.
//!
//! The agent reads every number from /proc and /sys on its host; this module
//! only defines the shape and the two questions the balancer asks of a
//! report: how loaded is the host ([`load_score`]) and is a backend's port
//! open on it ([`is_listening`]).
//!
//! Scales: every utilisation is a share from 0.0 to 1.0 of the whole host
//! (all cores together), sizes are bytes, rates are bytes per second.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// One report of a load agent (`GET /report`).
///
/// Fields the host cannot tell are `null` (`None`), never guessed.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AgentReport {
    /// CPU utilisation of the host over the last sampling interval, 0.0..=1.0
    /// of all cores together (from /proc/stat: busy time / total time).
    pub cpu: f64,
    /// Memory of the host.
    pub memory: Memory,
    /// Traffic and capacity of one network interface.
    pub network: Network,
    /// Established TCP connections on the host, IPv4 and IPv6, in every
    /// direction (a loopback connection counts once per end).
    pub tcp_established: u64,
    /// The host's listening TCP sockets, with their owning processes.
    pub listening: Vec<ListeningSocket>,
    /// The operator's capacity for this host, in sessions (`--capacity`);
    /// `None` when not set.
    pub capacity: Option<u64>,
    /// What the operator wants of this host (`--state-file`); `up` by default.
    pub state: AgentState,
    /// Problems the agent worked around (an unknown word in the state file,
    /// an unreadable /proc file), for the operator to read.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// Host memory, from /proc/meminfo.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Memory {
    /// Usable RAM, bytes (`MemTotal`).
    pub total_bytes: u64,
    /// RAM available for new work without swapping, bytes (`MemAvailable`:
    /// free memory plus reclaimable cache).
    pub available_bytes: u64,
}

/// One network interface, from /proc/net/dev and /sys/class/net.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Network {
    /// The interface name (`eth0`, `lo`).
    pub interface: String,
    /// Bytes received per second over the last sampling interval.
    pub rx_bytes_per_second: f64,
    /// Bytes sent per second over the last sampling interval.
    pub tx_bytes_per_second: f64,
    /// Link speed, bytes per second (the kernel's Mbit/s × 125 000); `None`
    /// when the kernel does not know it (loopback, virtual devices).
    pub speed_bytes_per_second: Option<u64>,
    /// Link speed minus the busier direction, bytes per second, floored at 0;
    /// `None` when the speed is unknown.
    pub free_bytes_per_second: Option<u64>,
}

/// A listening TCP socket on the host and the process that owns it.
///
/// The process fields are `None` when the agent cannot see the owner (another
/// user's process and the agent is not root, another PID namespace); `cpu`
/// is also `None` on the first sample after the process appeared, for want
/// of a previous sample to take a difference from.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ListeningSocket {
    /// Local address and port; `0.0.0.0` or `::` for every address.
    pub address: SocketAddr,
    /// The owning process id.
    pub pid: Option<u32>,
    /// The owning process's command name (/proc/PID/comm, at most 15 bytes).
    pub command: Option<String>,
    /// The owning process's CPU use over the last sampling interval, as a
    /// share 0.0..=1.0 of the whole host (the same scale as the host `cpu`).
    pub cpu: Option<f64>,
    /// The owning process's resident memory, bytes (/proc/PID/status VmRSS).
    pub rss_bytes: Option<u64>,
}

/// What the operator wants of the host, set through the agent's state file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// Take sessions as load allows.
    #[default]
    Up,
    /// Take no new sessions; let existing ones finish.
    Drain,
    /// Take nothing: the host is going away.
    Down,
}

impl AgentState {
    /// The word for this state, as in the state file and the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Up => "up",
            AgentState::Drain => "drain",
            AgentState::Down => "down",
        }
    }
}

impl fmt::Display for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not `up`, `drain` or `down`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown agent state {0:?}: expected up, drain or down")]
pub struct UnknownAgentState(pub String);

impl FromStr for AgentState {
    type Err = UnknownAgentState;

    /// Parses `up`, `drain` or `down`, ignoring ASCII case.
    fn from_str(word: &str) -> Result<Self, Self::Err> {
        match word.to_ascii_lowercase().as_str() {
            "up" => Ok(AgentState::Up),
            "drain" => Ok(AgentState::Drain),
            "down" => Ok(AgentState::Down),
            _ => Err(UnknownAgentState(word.to_owned())),
        }
    }
}

/// How full a host is by its report, from 0.0 (idle) to 1.0 (full).
///
/// The score is the largest of the host's normalised dimensions, each clamped
/// to 0.0..=1.0:
///
/// - CPU: `cpu`;
/// - memory: `1 − available_bytes / total_bytes` (skipped when total is 0);
/// - bandwidth, when the link speed is known and non-zero:
///   `max(rx, tx) / speed_bytes_per_second`;
/// - connections, when `capacity` is set: `tcp_established / capacity`
///   (a capacity of 0 means full).
///
/// The maximum, not an average, because one saturated resource is enough to
/// make a host slow: a host at 100 % CPU with idle memory is full. A
/// dimension the report cannot tell (`null`) does not count. NaN values, which
/// only a malformed report can carry, count as 0. The operator `state` is
/// not part of the score: drain and down are decisions, not load.
pub fn load_score(report: &AgentReport) -> f64 {
    let share = |x: f64| if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) };
    let mut score = share(report.cpu);
    let memory = report.memory;
    if memory.total_bytes > 0 {
        let available = memory.available_bytes as f64 / memory.total_bytes as f64;
        score = score.max(share(1.0 - available));
    }
    let net = &report.network;
    if let Some(speed) = net.speed_bytes_per_second.filter(|&s| s > 0) {
        let busiest = net.rx_bytes_per_second.max(net.tx_bytes_per_second);
        score = score.max(share(busiest / speed as f64));
    }
    match report.capacity {
        Some(0) => score = 1.0,
        Some(capacity) => score = score.max(share(report.tcp_established as f64 / capacity as f64)),
        None => {}
    }
    score
}

/// Whether a backend at `addr` has a listening socket on the reporting host:
/// a socket on the same port whose address is `addr`'s IP or a wildcard
/// (`0.0.0.0` or `::`).
///
/// A wildcard of either family counts for both: a `::` socket accepts IPv4
/// too unless the owner set `IPV6_V6ONLY`, which the report cannot show, and
/// calling a listening service down is the costlier mistake. An IPv4-mapped
/// IPv6 address (`::ffff:10.0.0.1`) is the same host as its IPv4 address.
pub fn is_listening(report: &AgentReport, addr: SocketAddr) -> bool {
    let want = addr.ip().to_canonical();
    report.listening.iter().any(|socket| {
        let ip = socket.address.ip();
        socket.address.port() == addr.port() && (ip.is_unspecified() || ip.to_canonical() == want)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> AgentReport {
        AgentReport {
            cpu: 0.1,
            memory: Memory { total_bytes: 1000, available_bytes: 800 },
            network: Network {
                interface: "eth0".to_owned(),
                rx_bytes_per_second: 100.0,
                tx_bytes_per_second: 50.0,
                speed_bytes_per_second: Some(1000),
                free_bytes_per_second: Some(900),
            },
            tcp_established: 5,
            listening: Vec::new(),
            capacity: None,
            state: AgentState::Up,
            warnings: Vec::new(),
        }
    }

    fn socket(address: &str) -> ListeningSocket {
        ListeningSocket {
            address: address.parse().expect("address"),
            pid: Some(1),
            command: Some("web".to_owned()),
            cpu: None,
            rss_bytes: None,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn load_score_is_the_busiest_dimension() {
        // cpu 0.1, memory 0.2, bandwidth 0.1: memory wins.
        assert!(close(load_score(&report()), 0.2));
        let mut r = report();
        r.cpu = 0.7;
        assert!(close(load_score(&r), 0.7));
        let mut r = report();
        r.network.tx_bytes_per_second = 600.0;
        assert!(close(load_score(&r), 0.6));
        let mut r = report();
        r.capacity = Some(10);
        assert!(close(load_score(&r), 0.5));
    }

    #[test]
    fn load_score_skips_what_the_report_cannot_tell() {
        let mut r = report();
        r.network.speed_bytes_per_second = None;
        r.network.rx_bytes_per_second = 1e12;
        r.memory = Memory { total_bytes: 0, available_bytes: 0 };
        r.tcp_established = 1_000_000;
        assert!(close(load_score(&r), 0.1));
        r.network.speed_bytes_per_second = Some(0);
        assert!(close(load_score(&r), 0.1));
    }

    #[test]
    fn load_score_stays_in_range() {
        let mut r = report();
        r.cpu = 3.0;
        assert!(close(load_score(&r), 1.0));
        r.cpu = f64::NAN;
        assert!(close(load_score(&r), 0.2));
        r.cpu = -1.0;
        r.memory.available_bytes = 5000;
        r.network.rx_bytes_per_second = -7.0;
        r.network.tx_bytes_per_second = f64::NAN;
        assert!(close(load_score(&r), 0.0));
        r.capacity = Some(2);
        r.tcp_established = 100;
        assert!(close(load_score(&r), 1.0));
        r.capacity = Some(0);
        r.tcp_established = 0;
        assert!(close(load_score(&r), 1.0));
    }

    #[test]
    fn load_score_of_an_idle_host_is_zero() {
        let mut r = report();
        r.cpu = 0.0;
        r.memory.available_bytes = r.memory.total_bytes;
        r.network.rx_bytes_per_second = 0.0;
        r.network.tx_bytes_per_second = 0.0;
        r.capacity = Some(100);
        r.tcp_established = 0;
        assert!(close(load_score(&r), 0.0));
    }

    #[test]
    fn listening_on_the_exact_address() {
        let mut r = report();
        r.listening = vec![socket("10.0.0.1:80"), socket("[fe80::1]:8443")];
        assert!(is_listening(&r, "10.0.0.1:80".parse().expect("addr")));
        assert!(!is_listening(&r, "10.0.0.2:80".parse().expect("addr")));
        assert!(!is_listening(&r, "10.0.0.1:81".parse().expect("addr")));
        assert!(is_listening(&r, "[fe80::1]:8443".parse().expect("addr")));
        assert!(!is_listening(&r, "[fe80::2]:8443".parse().expect("addr")));
        assert!(is_listening(&r, "[::ffff:10.0.0.1]:80".parse().expect("addr")));
    }

    #[test]
    fn listening_on_a_wildcard() {
        let mut r = report();
        r.listening = vec![socket("0.0.0.0:80"), socket("[::]:443")];
        assert!(is_listening(&r, "10.0.0.1:80".parse().expect("addr")));
        assert!(is_listening(&r, "[2001:db8::1]:80".parse().expect("addr")));
        assert!(is_listening(&r, "10.0.0.1:443".parse().expect("addr")));
        assert!(!is_listening(&r, "10.0.0.1:8080".parse().expect("addr")));
        r.listening.clear();
        assert!(!is_listening(&r, "10.0.0.1:80".parse().expect("addr")));
    }

    #[test]
    fn state_words() {
        assert_eq!("drain".parse(), Ok(AgentState::Drain));
        assert_eq!("DOWN".parse(), Ok(AgentState::Down));
        assert_eq!("up".parse(), Ok(AgentState::Up));
        assert!("maintenance".parse::<AgentState>().is_err());
        assert_eq!(AgentState::default(), AgentState::Up);
    }
}
