//! Parsers for the /proc and /sys files the load agent reads.
//!
//! Each takes the text of one file and returns what the agent needs from it,
//! or `None` when the text is not what the kernel writes; none of them does
//! I/O, so the tests feed them fixed samples. Formats are those of
//! Documentation/filesystems/proc.rst and `man 5 proc`. Hand-written because
//! the `procfs` crate would bring a large dependency tree for five small
//! formats, and it parses every field of every file where we need two.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use fulcrum_core::agent::Memory;

/// `/proc/net/tcp` state of an established connection (`TCP_ESTABLISHED`).
pub const TCP_ESTABLISHED: u8 = 0x01;
/// `/proc/net/tcp` state of a listening socket (`TCP_LISTEN`).
pub const TCP_LISTEN: u8 = 0x0A;

/// The host's CPU time since boot, from the `cpu` line of /proc/stat, in
/// clock ticks (USER_HZ) summed over all cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTimes {
    /// Ticks spent doing anything but idling or waiting for I/O.
    pub busy: u64,
    /// All ticks: busy, idle and iowait.
    pub total: u64,
}

impl CpuTimes {
    /// The share of CPU time that was busy between `earlier` and `self`,
    /// 0.0..=1.0; 0.0 when no time passed. Counters that went backwards (the
    /// kernel's iowait can) count as no time.
    pub fn utilisation_since(self, earlier: CpuTimes) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        let busy = self.busy.saturating_sub(earlier.busy);
        (busy as f64 / total as f64).clamp(0.0, 1.0)
    }
}

/// Reads the aggregate `cpu` line of /proc/stat: `user nice system idle
/// iowait irq softirq steal guest guest_nice`. Idle time is `idle + iowait`;
/// `guest` and `guest_nice` are left out because `user` and `nice` already
/// include them.
pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.split_whitespace().next() == Some("cpu"))?;
    let fields: Vec<u64> =
        line.split_whitespace().skip(1).take(8).map(str::parse).collect::<Result<_, _>>().ok()?;
    if fields.len() < 4 {
        return None;
    }
    let total: u64 = fields.iter().sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Some(CpuTimes { busy: total - idle, total })
}

/// Reads `MemTotal` and `MemAvailable` (kB in the file) of /proc/meminfo, in
/// bytes. `None` without both (kernels before 3.14 lack `MemAvailable`, and
/// an estimate from the other fields would be invented).
pub fn parse_meminfo(text: &str) -> Option<Memory> {
    let field =
        |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':').and_then(parse_kib));
    Some(Memory { total_bytes: field("MemTotal")?, available_bytes: field("MemAvailable")? })
}

/// Parses `   1234 kB` into bytes.
fn parse_kib(value: &str) -> Option<u64> {
    let mut words = value.split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => n.checked_mul(1024),
        _ => None,
    }
}

/// Bytes an interface has received and sent since it came up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceCounters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Reads /proc/net/dev: two header lines, then `NAME: rx_bytes rx_packets
/// … (8 receive fields) tx_bytes …` per interface, in file order. The name
/// may run into the first number (`eth0:123`) when the counter is wide.
pub fn parse_net_dev(text: &str) -> Vec<(String, InterfaceCounters)> {
    text.lines()
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let fields: Vec<&str> = counters.split_whitespace().collect();
            let rx_bytes = fields.first()?.parse().ok()?;
            let tx_bytes = fields.get(8)?.parse().ok()?;
            Some((name.trim().to_owned(), InterfaceCounters { rx_bytes, tx_bytes }))
        })
        .collect()
}

/// Reads /sys/class/net/IF/speed (Mbit/s) into bytes per second. `None` for
/// the kernel's "unknown" (`-1`, or 0 on some drivers) and for anything
/// unparsable. (Loopback and virtual devices fail the read itself.)
pub fn parse_link_speed(text: &str) -> Option<u64> {
    let mbit: i64 = text.trim().parse().ok()?;
    u64::try_from(mbit).ok().filter(|&m| m > 0)?.checked_mul(125_000)
}

/// One row of /proc/net/tcp or /proc/net/tcp6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    pub local: SocketAddr,
    /// The kernel's TCP state number ([`TCP_LISTEN`], [`TCP_ESTABLISHED`], …).
    pub state: u8,
    /// The socket's inode, which /proc/PID/fd links name as `socket:[INODE]`;
    /// 0 for sockets no process holds (TIME_WAIT).
    pub inode: u64,
}

/// Reads /proc/net/tcp or /proc/net/tcp6: a header line, then one socket
/// per line, `sl local_address rem_address st … uid timeout inode …`.
/// Lines that do not parse are skipped, so one odd row never hides the rest.
///
/// Addresses are hex dumps of the kernel's network-order words read as
/// native-endian integers (`0100007F` is 127.0.0.1 on x86), so this reads
/// them back the same way: the text is only meaningful on the host that
/// wrote it, which is the only place the agent reads it.
pub fn parse_net_tcp(text: &str) -> Vec<TcpSocket> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = parse_hex_address(fields.get(1)?)?;
            let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
            let inode = fields.get(9)?.parse().ok()?;
            Some(TcpSocket { local, state, inode })
        })
        .collect()
}

/// `0100007F:1F90` → 127.0.0.1:8080; 32 hex digits before the colon for IPv6.
fn parse_hex_address(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = ip.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The inode in a /proc/PID/fd link target `socket:[INODE]`; `None` for
/// links to anything else (files, pipes, anon inodes).
pub fn parse_socket_link(target: &str) -> Option<u64> {
    target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// What the agent needs of /proc/PID/stat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessTimes {
    /// `utime + stime`: CPU time the process has used, clock ticks (USER_HZ,
    /// the unit of /proc/stat, so the two divide without knowing its value).
    pub ticks: u64,
    /// `starttime`, ticks after boot: with the pid, identifies one process
    /// across samples even when pids are reused.
    pub start: u64,
}

/// Reads /proc/PID/stat: `pid (comm) state ppid …`, where `comm` may hold
/// spaces and parentheses, so the fields are counted from the last `)`.
/// `utime`, `stime` and `starttime` are fields 14, 15 and 22 (1-based).
pub fn parse_pid_stat(text: &str) -> Option<ProcessTimes> {
    let (_, rest) = text.rsplit_once(')')?;
    // rest[0] is field 3 (state).
    let rest: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { rest.get(n - 3)?.parse().ok() };
    Some(ProcessTimes { ticks: field(14)?.checked_add(field(15)?)?, start: field(22)? })
}

/// Reads `VmRSS` of /proc/PID/status, in bytes; `None` for kernel threads,
/// which have no user memory and no such line.
pub fn parse_vm_rss(text: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix("VmRSS:").and_then(parse_kib))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat() {
        let text = "cpu  79036 0 57695 127639 676 0 24086 42 0 0\n\
                    cpu0 37443 0 28571 66329 221 0 11959 19 0 0\n\
                    intr 123 0\nctxt 456\n";
        let t = parse_proc_stat(text).expect("cpu line");
        assert_eq!(t.total, 79036 + 57695 + 127639 + 676 + 24086 + 42);
        assert_eq!(t.busy, 79036 + 57695 + 24086 + 42);
        assert_eq!(parse_proc_stat("cpu0 1 2 3 4\n"), None);
        assert_eq!(parse_proc_stat("cpu 1 2\n"), None);
        assert_eq!(parse_proc_stat("cpu 1 x 3 4\n"), None);
        // Old kernels: only four fields.
        assert_eq!(parse_proc_stat("cpu 1 2 3 4\n"), Some(CpuTimes { busy: 6, total: 10 }));
    }

    #[test]
    fn cpu_utilisation() {
        let a = CpuTimes { busy: 100, total: 1000 };
        let b = CpuTimes { busy: 175, total: 1100 };
        assert!((b.utilisation_since(a) - 0.75).abs() < 1e-9);
        assert_eq!(a.utilisation_since(a), 0.0);
        assert_eq!(a.utilisation_since(b), 0.0);
    }

    #[test]
    fn meminfo() {
        let text = "MemTotal:       24684084 kB\nMemFree:        21943804 kB\n\
                    MemAvailable:   24244240 kB\nBuffers:            7536 kB\n";
        let m = parse_meminfo(text).expect("meminfo");
        assert_eq!(m.total_bytes, 24_684_084 * 1024);
        assert_eq!(m.available_bytes, 24_244_240 * 1024);
        assert_eq!(parse_meminfo("MemTotal: 100 kB\nMemFree: 50 kB\n"), None);
        assert_eq!(parse_meminfo("MemTotal: 100 MB\nMemAvailable: 50 kB\n"), None);
        // A prefix of another field's name is not that field.
        assert_eq!(
            parse_meminfo("MemTotalX: 1 kB\nMemTotal: 2 kB\nMemAvailable: 1 kB\n").map(|m| m.total_bytes),
            Some(2048)
        );
    }

    #[test]
    fn net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n\
    lo: 132686169445 85404607    0    0    0     0          0         0 132686169445 85404607    0    0    0     0       0          0\n\
  eth0:59827780    3151    0    0    0     0          0         0   238069    2179    0    0    0     0       0          0\n";
        let all = parse_net_dev(text);
        assert_eq!(
            all,
            vec![
                ("lo".to_owned(), InterfaceCounters { rx_bytes: 132_686_169_445, tx_bytes: 132_686_169_445 }),
                ("eth0".to_owned(), InterfaceCounters { rx_bytes: 59_827_780, tx_bytes: 238_069 }),
            ]
        );
    }

    #[test]
    fn link_speed() {
        assert_eq!(parse_link_speed("1000\n"), Some(125_000_000));
        assert_eq!(parse_link_speed("25000"), Some(3_125_000_000));
        assert_eq!(parse_link_speed("-1\n"), None);
        assert_eq!(parse_link_speed("0\n"), None);
        assert_eq!(parse_link_speed(""), None);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1076 1 0000000003d136a2 100 0 0 10 0\n\
   1: 0100007F:8FB5 0100007F:C980 01 00000000:00000000 00:00000000 00000000  1000        0 5512 1 000000006ef92ea7 20 4 30 10 -1\n\
   2: 0100007F:83D9 0100007F:92F0 06 00000000:00000000 03:000001FE 00000000     0        0 0 3 00000000b8e7a183\n\
   garbage line\n";
        let sockets = parse_net_tcp(text);
        assert_eq!(
            sockets,
            vec![
                TcpSocket { local: "0.0.0.0:2024".parse().expect("addr"), state: TCP_LISTEN, inode: 1076 },
                TcpSocket {
                    local: "127.0.0.1:36789".parse().expect("addr"),
                    state: TCP_ESTABLISHED,
                    inode: 5512
                },
                TcpSocket { local: "127.0.0.1:33753".parse().expect("addr"), state: 6, inode: 0 },
            ]
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn net_tcp6() {
        let text = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000000000000000000000000000:EB71 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 6916582 1 000000007664291c 100 0 0 10 0\n\
   1: 00000000000000000000000001000000:9221 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 6916583 1 000000006a1f65b4 100 0 0 10 0\n\
   2: 0000000000000000FFFF00000100007F:BB4F 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 6916584 1 000000009f43b7f4 100 0 0 10 0\n";
        let local: Vec<String> = parse_net_tcp(text).iter().map(|s| s.local.to_string()).collect();
        assert_eq!(local, ["[::]:60273", "[::1]:37409", "[::ffff:127.0.0.1]:47951"]);
        assert!(parse_net_tcp(text).iter().all(|s| s.state == TCP_LISTEN));
    }

    #[test]
    fn hex_addresses_of_odd_lengths_are_refused() {
        assert_eq!(parse_hex_address("0100007:1F90"), None);
        assert_eq!(parse_hex_address("0100007F"), None);
        assert_eq!(parse_hex_address("0100007F:XYZ1"), None);
        assert_eq!(parse_hex_address("0100007F:1F90").map(|a| a.port()), Some(8080));
    }

    #[test]
    fn socket_links() {
        assert_eq!(parse_socket_link("socket:[6916582]"), Some(6_916_582));
        assert_eq!(parse_socket_link("pipe:[6916538]"), None);
        assert_eq!(parse_socket_link("/dev/null"), None);
        assert_eq!(parse_socket_link("socket:[x]"), None);
    }

    #[test]
    fn pid_stat() {
        let text =
            "23068 (cat) R 23066 23066 19882 0 -1 4194304 101 0 0 0 7 3 0 0 20 0 1 0 151970 3133440 385 \
                    18446744073709551615 94547861622784 0\n";
        assert_eq!(parse_pid_stat(text), Some(ProcessTimes { ticks: 10, start: 151_970 }));
        // A command name with spaces and a parenthesis.
        let text = "42 (a) b (c) S 1 42 42 0 -1 0 0 0 0 0 120 30 0 0 20 0 4 0 999 0 0\n";
        assert_eq!(parse_pid_stat(text), Some(ProcessTimes { ticks: 150, start: 999 }));
        assert_eq!(parse_pid_stat("42 (short) S 1 2 3\n"), None);
        assert_eq!(parse_pid_stat(""), None);
    }

    #[test]
    fn vm_rss() {
        assert_eq!(parse_vm_rss("Name:\tgrep\nVmPeak:\t 9000 kB\nVmRSS:\t    2204 kB\n"), Some(2204 * 1024));
        assert_eq!(parse_vm_rss("Name:\tkthreadd\nThreads:\t1\n"), None);
    }
}
