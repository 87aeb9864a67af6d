//! `[[snat_pool]]`, a SNAT pool: the source addresses and ports
//! Fulcrum binds its backend connections to, for the pools that name it
//! with `snat = NAME`. What one table says is checked here (an address
//! range inside one network, a port range, blocks that fit); names and
//! their users are checked in `validate`. Like `schema`, every reader
//! records what is wrong and carries on.
//!
//! ```toml
//! [[snat_pool]]
//! name = "to-servers"
//! first_ip = "10.0.0.10"         # IPv4 only for now
//! last_ip = "10.0.0.19"          # first_ip..=last_ip, in one network of netmask
//! netmask = "255.255.255.0"
//! ports = "20000-29999"          # on each address
//! block_size = 64                # ports per connection block
//! initial_blocks = 4             # held from the start (default 1)
//! max_blocks = 100               # most held at once (default: every block)
//! wait = "100ms"                 # how long a session waits when all are taken (default 0s)
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use toml_edit::TableLike;

use super::read::{Located, Report, Section};
use super::schema::{bounded, label, name};
use crate::model::SnatPool;

const SNAT_POOL_KEYS: &[&str] = &[
    "name",
    "first_ip",
    "last_ip",
    "netmask",
    "ports",
    "block_size",
    "initial_blocks",
    "max_blocks",
    "wait",
];

const INITIAL_BLOCKS: u32 = 1;

/// One `[[snat_pool]]` as far as it can be read alone.
pub(super) struct SnatPoolRead<'d> {
    /// `snat pool "to-servers"`, or `snat pool 2` when it has no name.
    pub path: String,
    pub line: Option<usize>,
    pub name: Option<Located<&'d str>>,
    /// The whole pool, when every key of it is right.
    pub pool: Option<SnatPool>,
}

/// `[[snat_pool]]` number `index` (0-based; messages count from 1).
pub(super) fn snat_pool<'d>(
    r: &mut Report,
    table: Located<&'d dyn TableLike>,
    index: usize,
) -> SnatPoolRead<'d> {
    let path = label("snat pool", table.value, index);
    let s = r.section(path, "", table.value, table.line, SNAT_POOL_KEYS);
    r.require(&s, &["name", "first_ip", "last_ip", "netmask", "ports", "block_size"]);
    let name = name(r, &s);
    let first_ip = ipv4(r, &s, "first_ip");
    let last_ip = ipv4(r, &s, "last_ip");
    let netmask = netmask(r, &s);
    let range = match (first_ip, last_ip) {
        (Some(first), Some(last)) => address_range(r, &s, first, last, netmask),
        _ => None,
    };
    let ports = ports(r, &s);
    let block_size = block_size(r, &s, ports);
    let initial_blocks = bounded::<u32>(r, &s, "initial_blocks", 0, i64::from(u32::MAX));
    let max_blocks = bounded::<u32>(r, &s, "max_blocks", 1, i64::from(u32::MAX));
    let wait = r.any_duration(&s, "wait").map_or(Duration::ZERO, |w| w.value);

    // How many blocks the pool has, when the ranges and the block size are right.
    let total = match (range, ports, block_size) {
        (Some((first, last)), Some(ports), Some(size)) => {
            let addresses = u64::from(u32::from(last) - u32::from(first)) + 1;
            let per_address = u64::from(ports.1 - ports.0 + 1) / u64::from(size);
            Some((addresses * per_address, addresses, per_address, size))
        }
        _ => None,
    };
    let described = |(total, addresses, per_address, size): (u64, u64, u64, u16)| {
        format!(
            "the {total} blocks the pool has ({addresses} addresses × {per_address} blocks of {size} ports)"
        )
    };
    if let (Some(max), Some(t)) = (max_blocks, total) {
        if u64::from(max) > t.0 {
            let line = r.get(&s, "max_blocks").and_then(|m| m.line);
            r.error(line, &s.path, format!("max_blocks {max} is more than {}", described(t)));
        }
    }
    if let Some(initial) = initial_blocks {
        let line = r.get(&s, "initial_blocks").and_then(|m| m.line);
        match (max_blocks, total) {
            (Some(max), _) if initial > max => {
                r.error(line, &s.path, format!("initial_blocks {initial} is more than max_blocks {max}"));
            }
            (None, Some(t)) if u64::from(initial) > t.0 => {
                r.error(line, &s.path, format!("initial_blocks {initial} is more than {}", described(t)));
            }
            _ => {}
        }
    }

    let pool = match (name, range, netmask, ports, block_size, total) {
        (Some(name), Some((first_ip, last_ip)), Some(netmask), Some(ports), Some(block_size), Some(t)) => {
            Some(SnatPool {
                name: name.value.to_owned(),
                first_ip,
                last_ip,
                netmask,
                ports,
                block_size,
                initial_blocks: initial_blocks.unwrap_or(INITIAL_BLOCKS),
                // Every block by default; a pool past 2^32 blocks is capped there.
                max_blocks: max_blocks.unwrap_or(u32::try_from(t.0).unwrap_or(u32::MAX)),
                wait,
            })
        }
        _ => None,
    };
    SnatPoolRead { path: s.path, line: s.line, name, pool }
}

/// An IPv4 address key, saying what is wrong with anything else.
fn ipv4(r: &mut Report, s: &Section, key: &str) -> Option<Located<Ipv4Addr>> {
    let text = r.string(s, key)?;
    let problem = match text.value.trim().parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => return Some(Located { value: ip, line: text.line }),
        Ok(IpAddr::V6(_)) => "is an IPv6 address; snat pools take IPv4 addresses only for now",
        Err(_) if text.value.parse::<SocketAddr>().is_ok() => {
            r#"has a port; give the address alone, like "10.0.0.10" (the ports go in ports)"#
        }
        Err(_) => r#"is not an IPv4 address; write one like "10.0.0.10""#,
    };
    r.error(text.line, &s.path, format!("{key} {:?} {problem}", text.value));
    None
}

/// `netmask`: dotted, with its one bits first.
fn netmask(r: &mut Report, s: &Section) -> Option<Ipv4Addr> {
    let text = r.string(s, "netmask")?;
    let prefix = text.value.trim().trim_start_matches('/').parse::<u32>().ok().filter(|p| *p <= 32);
    let problem = match (text.value.trim().parse::<IpAddr>(), prefix) {
        (Ok(IpAddr::V4(mask)), _) if is_netmask(mask) => return Some(mask),
        (Ok(IpAddr::V4(_)), _) => {
            r#"is not a netmask: its one bits must all come first, like "255.255.255.0""#.to_owned()
        }
        (Ok(IpAddr::V6(_)), _) => {
            "is an IPv6 netmask; snat pools take IPv4 addresses only for now".to_owned()
        }
        (Err(_), Some(bits)) => {
            let mask = Ipv4Addr::from(u32::MAX.checked_shl(32 - bits).unwrap_or(0));
            format!("is a prefix length; write the netmask dotted: \"{mask}\"")
        }
        (Err(_), None) => r#"is not a netmask; write one dotted, like "255.255.255.0""#.to_owned(),
    };
    r.error(text.line, &s.path, format!("netmask {:?} {problem}", text.value));
    None
}

fn is_netmask(mask: Ipv4Addr) -> bool {
    let bits = u32::from(mask);
    bits.leading_ones() + bits.trailing_zeros() == 32
}

/// `first_ip..=last_ip`, which must run upward inside one network of `netmask`.
fn address_range(
    r: &mut Report,
    s: &Section,
    first: Located<Ipv4Addr>,
    last: Located<Ipv4Addr>,
    netmask: Option<Ipv4Addr>,
) -> Option<(Ipv4Addr, Ipv4Addr)> {
    if last.value < first.value {
        let message = format!(
            "last_ip {} is below first_ip {}; the range runs from first_ip up to last_ip",
            last.value, first.value
        );
        r.error(last.line, &s.path, message);
        return None;
    }
    if let Some(mask) = netmask {
        let network = |ip: Ipv4Addr| Ipv4Addr::from(u32::from(ip) & u32::from(mask));
        if network(first.value) != network(last.value) {
            let bits = u32::from(mask).leading_ones();
            let message = format!(
                "first_ip {} and last_ip {} are not in one network of netmask {mask} ({}/{bits} and {}/{bits}); \
                 narrow the range or widen the netmask",
                first.value,
                last.value,
                network(first.value),
                network(last.value),
            );
            r.error(last.line, &s.path, message);
            return None;
        }
    }
    Some((first.value, last.value))
}

/// `ports = "FIRST-LAST"`, inclusive, within 1..=65535.
fn ports(r: &mut Report, s: &Section) -> Option<(u16, u16)> {
    const LIKE: &str = r#"write "FIRST-LAST", like "20000-29999""#;
    let found = r.get(s, "ports")?;
    if found.value.as_integer().is_some() {
        let message = format!("ports must be a range string ({LIKE}), found an integer");
        r.error(found.line, &s.path, message);
        return None;
    }
    let text = r.string(s, "ports")?;
    let parsed = text.value.split_once('-').and_then(|(first, last)| {
        Some((first.trim().parse::<u32>().ok()?, last.trim().parse::<u32>().ok()?))
    });
    let problem = match parsed {
        None => format!("is not a port range; {LIKE}"),
        Some((first, last)) if !(1..=65535).contains(&first) || !(1..=65535).contains(&last) => {
            "has a port outside 1..=65535".to_owned()
        }
        Some((first, last)) if first > last => {
            format!("runs backwards; write the lower port first, like \"{last}-{first}\"")
        }
        Some((first, last)) => {
            return Some((u16::try_from(first).ok()?, u16::try_from(last).ok()?));
        }
    };
    r.error(text.line, &s.path, format!("ports {:?} {problem}", text.value));
    None
}

/// `block_size`: at least one port, at most the whole range. A range that
/// is not a whole number of blocks leaves its last ports unused: a warning.
fn block_size(r: &mut Report, s: &Section, ports: Option<(u16, u16)>) -> Option<u16> {
    let size = bounded::<u16>(r, s, "block_size", 1, 65535)?;
    let Some((first, last)) = ports else { return Some(size) };
    let range = u32::from(last - first) + 1;
    let line = r.get(s, "block_size").and_then(|b| b.line);
    if u32::from(size) > range {
        let message = format!("block_size {size} is more than the {range} ports of ports \"{first}-{last}\"");
        r.error(line, &s.path, message);
        return None;
    }
    let unused = range % u32::from(size);
    if unused > 0 {
        let message = format!(
            "ports \"{first}-{last}\" hold {range} ports, not a whole number of blocks of {size}: \
             the last {unused} on each address are never used"
        );
        r.warn(line, &s.path, message);
    }
    Some(size)
}
