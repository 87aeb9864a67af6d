//! The SNAT allocator: which source address:port a backend connection
//! binds to, for a pool with a `[[snat_pool]]`.
//!
//! The pool's addresses (`first_ip..=last_ip`) times its port range are cut
//! into connection blocks of `block_size` consecutive ports on one address.
//! `initial_blocks` are held from the start; when every port of the held
//! blocks is taken, one more block is taken, up to `max_blocks`; a block
//! whose ports are all free again is given back, down to `initial_blocks`.
//! Inside the held blocks of an address, the free ports are a sorted list of
//! intervals that merge on release, so a pool of a million ports with few in
//! use costs a few intervals, not a bitmap.
//!
//! Allocation spreads: new blocks go to the address holding the fewest, and
//! ports are taken round-robin over the addresses with a free one. A backend
//! is one destination address:port, so every source address adds a whole
//! port range of concurrent connections to it.
//!
//! Pure: no clock, no sockets. The daemon keeps one allocator per pool
//! behind a lock (`crates/fulcrum/src/snat.rs`) and binds sockets to what it
//! hands out.
//!
//! Why not `rangemap`'s `RangeInclusiveSet` for the free ports: it merges
//! intervals, but the allocator also takes from the interval around a
//! cursor and splits a block out of a merged interval, and a
//! `BTreeMap<first, last>` does all three in a few lines.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::model::SnatPool;

/// The address:port allocator of one SNAT pool.
#[derive(Clone, Debug)]
pub struct SnatAllocator {
    first_ip: u32,
    /// Addresses in `first_ip..=last_ip`: from 1 to 2^32.
    addresses: u64,
    first_port: u16,
    /// The last port of the range (for the stats; whole blocks may end before it).
    last_port: u16,
    block_size: u16,
    /// Whole blocks that fit in the port range; ports past the last one are never used.
    blocks_per_address: u32,
    initial_blocks: u64,
    max_blocks: u64,
    /// Addresses holding at least one block, by index from `first_ip`.
    /// Addresses without one cost nothing, so a /8 of addresses is cheap.
    held: BTreeMap<u32, Address>,
    /// Indexes of the addresses with a free port in a held block: where
    /// `allocate` takes from.
    with_free: BTreeSet<u32>,
    /// `(blocks held, index)` of every address in `held`: where a new block goes.
    by_blocks: BTreeSet<(u32, u32)>,
    blocks_held: u64,
    allocated: u64,
    /// The address `allocate` tries first (round robin over `with_free`).
    next_address: u32,
    /// Where the search for an address holding no block starts.
    next_empty: u32,
}

/// The held blocks of one address and their free ports.
#[derive(Clone, Debug, Default)]
struct Address {
    /// Held blocks by index, with how many of their ports are allocated.
    blocks: BTreeMap<u32, u16>,
    /// Free ports of the held blocks, first → last inclusive: sorted,
    /// disjoint, and never adjacent (adjacent intervals are merged).
    free: BTreeMap<u16, u16>,
    free_count: u32,
    /// Ports are taken from here on, wrapping: a port released a moment ago
    /// is reused last, since its last connection may still sit in TIME_WAIT
    /// toward the same backend.
    cursor: u16,
}

/// What an allocator holds and hands out, for the admin API and metrics.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SnatStats {
    pub first_ip: Ipv4Addr,
    pub last_ip: Ipv4Addr,
    /// Addresses in `first_ip..=last_ip`.
    pub addresses: u64,
    /// The port range, first and last, as configured.
    pub ports: (u16, u16),
    /// Ports usable on each address: the whole blocks of the range.
    pub ports_per_address: u32,
    pub block_size: u16,
    pub blocks_held: u64,
    pub initial_blocks: u64,
    pub max_blocks: u64,
    /// Address:ports handed out and not yet released.
    pub allocated: u64,
    /// Address:ports the pool can hand out at most: `max_blocks × block_size`.
    pub capacity: u64,
    /// The addresses holding blocks, in address order.
    pub per_address: Vec<AddressStats>,
}

/// One address of a [`SnatStats`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AddressStats {
    pub address: Ipv4Addr,
    pub blocks_held: u32,
    pub allocated: u32,
    /// Free ports of the held blocks as `[first, last]` intervals, sorted and merged.
    pub free: Vec<(u16, u16)>,
}

impl SnatAllocator {
    /// An allocator for `pool` holding its `initial_blocks`, spread one per
    /// address before any address gets a second.
    ///
    /// Assumes a validated pool (`config` checks every bound); out-of-range
    /// values are clamped rather than trusted: a reversed address or port
    /// range is read as one address or port, a block size of 0 as 1, block
    /// counts beyond what the ranges hold as all of it.
    pub fn new(pool: &SnatPool) -> SnatAllocator {
        let first_ip = u32::from(pool.first_ip);
        let last_ip = u32::from(pool.last_ip).max(first_ip);
        let last_port = pool.ports.1.max(pool.ports.0);
        let range = u32::from(last_port - pool.ports.0) + 1;
        // `range` is at most 65536, so the smaller of it and a u16 fits a u16.
        let block_size = u16::try_from(u32::from(pool.block_size.max(1)).min(range)).unwrap_or(1);
        let blocks_per_address = range / u32::from(block_size);
        let addresses = u64::from(last_ip - first_ip) + 1;
        let max_blocks = u64::from(pool.max_blocks).min(addresses * u64::from(blocks_per_address));
        let mut allocator = SnatAllocator {
            first_ip,
            addresses,
            first_port: pool.ports.0,
            last_port,
            block_size,
            blocks_per_address,
            initial_blocks: u64::from(pool.initial_blocks).min(max_blocks),
            max_blocks,
            held: BTreeMap::new(),
            with_free: BTreeSet::new(),
            by_blocks: BTreeSet::new(),
            blocks_held: 0,
            allocated: 0,
            next_address: 0,
            next_empty: 0,
        };
        while allocator.blocks_held < allocator.initial_blocks && allocator.take_block().is_some() {}
        allocator
    }

    /// A free address:port, taking one more block if the held ones are
    /// full; `None` when all `max_blocks` blocks are held and every port of
    /// them is allocated. The caller owns it until [`release`](Self::release).
    pub fn allocate(&mut self) -> Option<SocketAddrV4> {
        let from = self.with_free.range(self.next_address..).next().or_else(|| self.with_free.first());
        let index = match from {
            Some(&index) => index,
            None => self.take_block()?,
        };
        self.next_address = index.wrapping_add(1);
        let (first_port, block_size) = (self.first_port, self.block_size);
        let address = self.held.get_mut(&index)?;
        let port = address.take_port()?;
        let block = u32::from(port - first_port) / u32::from(block_size);
        if let Some(used) = address.blocks.get_mut(&block) {
            *used += 1;
        }
        if address.free_count == 0 {
            self.with_free.remove(&index);
        }
        self.allocated += 1;
        Some(SocketAddrV4::new(self.ip(index), port))
    }

    /// Gives `source` back. Returns false, changing nothing, when it is not
    /// allocated now: outside the pool, in no held block, or already free.
    pub fn release(&mut self, source: SocketAddrV4) -> bool {
        let Some(index) = u32::from(*source.ip()).checked_sub(self.first_ip) else {
            return false;
        };
        let Some(block) = self.block_of(source.port()) else {
            return false;
        };
        let Some(address) = self.held.get_mut(&index) else {
            return false;
        };
        if address.is_free(source.port()) {
            return false;
        }
        let Some(used) = address.blocks.get_mut(&block).filter(|used| **used > 0) else {
            return false;
        };
        *used -= 1;
        let unused = *used == 0;
        address.add_free(source.port(), source.port());
        address.free_count += 1;
        self.with_free.insert(index);
        self.allocated -= 1;
        if unused && self.blocks_held > self.initial_blocks {
            self.give_back(index, block);
        }
        true
    }

    /// Address:ports allocated now.
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// The most address:ports this pool hands out at once.
    pub fn capacity(&self) -> u64 {
        self.max_blocks * u64::from(self.block_size)
    }

    pub fn blocks_held(&self) -> u64 {
        self.blocks_held
    }

    /// A snapshot for operators; costs a walk over the held addresses.
    pub fn stats(&self) -> SnatStats {
        let per_address = self
            .held
            .iter()
            .map(|(&index, a)| AddressStats {
                address: self.ip(index),
                blocks_held: u32::try_from(a.blocks.len()).unwrap_or(u32::MAX),
                allocated: a.blocks.values().map(|&used| u32::from(used)).sum(),
                free: a.free.iter().map(|(&first, &last)| (first, last)).collect(),
            })
            .collect();
        SnatStats {
            first_ip: Ipv4Addr::from(self.first_ip),
            last_ip: self.ip_at(self.addresses - 1),
            addresses: self.addresses,
            ports: (self.first_port, self.last_port),
            ports_per_address: self.blocks_per_address * u32::from(self.block_size),
            block_size: self.block_size,
            blocks_held: self.blocks_held,
            initial_blocks: self.initial_blocks,
            max_blocks: self.max_blocks,
            allocated: self.allocated,
            capacity: self.capacity(),
            per_address,
        }
    }

    fn ip(&self, index: u32) -> Ipv4Addr {
        self.ip_at(u64::from(index))
    }

    fn ip_at(&self, index: u64) -> Ipv4Addr {
        // `first_ip + index` stays within `last_ip`, a u32, for every index below `addresses`.
        Ipv4Addr::from(u32::try_from(u64::from(self.first_ip) + index).unwrap_or(u32::MAX))
    }

    /// The block a port of the range is in, if it is in a whole block.
    fn block_of(&self, port: u16) -> Option<u32> {
        let block = u32::from(port.checked_sub(self.first_port)?) / u32::from(self.block_size);
        (block < self.blocks_per_address).then_some(block)
    }

    /// The first and last port of `block`.
    fn block_ports(&self, block: u32) -> (u16, u16) {
        let first = u32::from(self.first_port) + block * u32::from(self.block_size);
        let last = first + u32::from(self.block_size) - 1;
        // Both lie within the port range (`block < blocks_per_address`).
        (u16::try_from(first).unwrap_or(u16::MAX), u16::try_from(last).unwrap_or(u16::MAX))
    }

    /// Takes one more block, on the address holding the fewest (one holding
    /// none first), and returns that address; `None` at `max_blocks`.
    fn take_block(&mut self) -> Option<u32> {
        if self.blocks_held >= self.max_blocks {
            return None;
        }
        let index = if (self.held.len() as u64) < self.addresses {
            self.empty_address()
        } else {
            let &(blocks, index) = self.by_blocks.first()?;
            if blocks >= self.blocks_per_address {
                return None; // unreachable while max_blocks is within the pool
            }
            index
        };
        let address = self.held.entry(index).or_default();
        let held = u32::try_from(address.blocks.len()).unwrap_or(u32::MAX);
        // The lowest block index the address does not hold.
        let block = address.blocks.keys().zip(0..).find(|(&b, i)| b != *i).map_or(held, |(_, i)| i);
        address.blocks.insert(block, 0);
        let (first, last) = self.block_ports(block);
        let address = self.held.get_mut(&index)?;
        address.add_free(first, last);
        address.free_count += u32::from(self.block_size);
        self.by_blocks.remove(&(held, index));
        self.by_blocks.insert((held + 1, index));
        self.with_free.insert(index);
        self.blocks_held += 1;
        Some(index)
    }

    /// An address holding no block, searching from `next_empty` and
    /// wrapping; assumes one exists.
    fn empty_address(&mut self) -> u32 {
        let first_gap = |from: u64, held: &BTreeMap<u32, Address>| {
            let mut candidate = from;
            for &index in held.range(u32::try_from(from).unwrap_or(u32::MAX)..).map(|(i, _)| i) {
                if u64::from(index) != candidate {
                    break;
                }
                candidate += 1;
            }
            candidate
        };
        let mut found = first_gap(u64::from(self.next_empty), &self.held);
        if found >= self.addresses {
            found = first_gap(0, &self.held);
        }
        let index = u32::try_from(found).unwrap_or(0);
        self.next_empty = index.wrapping_add(1);
        index
    }

    /// Gives back `block` of the address at `index`, all of whose ports are free.
    fn give_back(&mut self, index: u32, block: u32) {
        let (first, last) = self.block_ports(block);
        let Some(address) = self.held.get_mut(&index) else { return };
        let held = u32::try_from(address.blocks.len()).unwrap_or(u32::MAX);
        address.blocks.remove(&block);
        address.remove_free(first, last);
        address.free_count -= u32::from(self.block_size);
        let empty = address.blocks.is_empty();
        if address.free_count == 0 {
            self.with_free.remove(&index);
        }
        self.by_blocks.remove(&(held, index));
        if empty {
            self.held.remove(&index);
        } else {
            self.by_blocks.insert((held - 1, index));
        }
        self.blocks_held -= 1;
    }
}

impl Address {
    /// Takes the first free port from the cursor on, wrapping.
    fn take_port(&mut self) -> Option<u16> {
        let cursor = self.cursor;
        let containing = self.free.range(..=cursor).next_back().filter(|(_, &last)| last >= cursor);
        let (first, last) = containing
            .or_else(|| self.free.range(cursor..).next())
            .or_else(|| self.free.first_key_value())
            .map(|(&first, &last)| (first, last))?;
        let port = if first <= cursor && cursor <= last { cursor } else { first };
        self.free.remove(&first);
        if first < port {
            self.free.insert(first, port - 1);
        }
        if port < last {
            self.free.insert(port + 1, last);
        }
        self.free_count -= 1;
        self.cursor = port.wrapping_add(1);
        Some(port)
    }

    fn is_free(&self, port: u16) -> bool {
        self.free.range(..=port).next_back().is_some_and(|(_, &last)| last >= port)
    }

    /// Adds the free ports `first..=last` (none of them free yet), merging
    /// with the intervals either side.
    fn add_free(&mut self, mut first: u16, mut last: u16) {
        if let Some((&before, &end)) = first.checked_sub(1).and_then(|p| self.free.range(..=p).next_back()) {
            if end.checked_add(1) == Some(first) {
                self.free.remove(&before);
                first = before;
            }
        }
        if let Some(after) = last.checked_add(1) {
            if let Some(end) = self.free.remove(&after) {
                last = end;
            }
        }
        self.free.insert(first, last);
    }

    /// Removes the free ports `first..=last`, which lie inside one interval.
    fn remove_free(&mut self, first: u16, last: u16) {
        let Some((&from, &to)) = self.free.range(..=first).next_back() else { return };
        self.free.remove(&from);
        if from < first {
            self.free.insert(from, first - 1);
        }
        if last < to {
            self.free.insert(last + 1, to);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn pool(
        first: Ipv4Addr,
        last: Ipv4Addr,
        ports: (u16, u16),
        block_size: u16,
        initial: u32,
        max: u32,
    ) -> SnatPool {
        SnatPool {
            name: "to-servers".into(),
            first_ip: first,
            last_ip: last,
            netmask: Ipv4Addr::new(255, 0, 0, 0),
            ports,
            block_size,
            initial_blocks: initial,
            max_blocks: max,
            wait: Duration::ZERO,
        }
    }

    /// The black-box test's pool: 127.0.0.10-11 × 40000-40003 in blocks of 2.
    fn small() -> SnatAllocator {
        SnatAllocator::new(&pool(
            Ipv4Addr::new(127, 0, 0, 10),
            Ipv4Addr::new(127, 0, 0, 11),
            (40000, 40003),
            2,
            1,
            4,
        ))
    }

    impl SnatAllocator {
        /// Every invariant the allocator keeps, checked the slow way.
        fn check(&self) -> Result<(), String> {
            let mut blocks = 0u64;
            let mut allocated = 0u64;
            for (&index, a) in &self.held {
                if a.blocks.is_empty() {
                    return Err(format!("address {index} is held with no block"));
                }
                let mut previous: Option<u16> = None;
                let mut free = 0u32;
                for (&first, &last) in &a.free {
                    if first > last {
                        return Err(format!("interval {first}-{last} runs backwards"));
                    }
                    if previous.is_some_and(|p| u32::from(p) + 1 >= u32::from(first)) {
                        return Err(format!("interval {first}-{last} overlaps or touches the one before"));
                    }
                    for port in first..=last {
                        let held = self.block_of(port).is_some_and(|b| a.blocks.contains_key(&b));
                        if !held {
                            return Err(format!("free port {port} is in no held block"));
                        }
                    }
                    free += u32::from(last - first) + 1;
                    previous = Some(last);
                }
                if free != a.free_count {
                    return Err(format!("address {index}: free_count {} but {free} free", a.free_count));
                }
                for (&block, &used) in &a.blocks {
                    let (first, last) = self.block_ports(block);
                    let free_in = (first..=last).filter(|p| a.is_free(*p)).count();
                    if usize::from(used) + free_in != usize::from(self.block_size) {
                        return Err(format!("block {block}: {used} used + {free_in} free"));
                    }
                    allocated += u64::from(used);
                }
                blocks += a.blocks.len() as u64;
                if self.with_free.contains(&index) != (a.free_count > 0) {
                    return Err(format!("address {index}: with_free disagrees"));
                }
                if !self.by_blocks.contains(&(a.blocks.len() as u32, index)) {
                    return Err(format!("address {index}: by_blocks disagrees"));
                }
            }
            if self.by_blocks.len() != self.held.len()
                || !self.with_free.iter().all(|i| self.held.contains_key(i))
            {
                return Err("an index set names an address not held".into());
            }
            if blocks != self.blocks_held || allocated != self.allocated {
                return Err(format!(
                    "counted {blocks} blocks, {allocated} allocated; recorded {}, {}",
                    self.blocks_held, self.allocated
                ));
            }
            if !(self.initial_blocks..=self.max_blocks).contains(&self.blocks_held) {
                return Err(format!(
                    "{} blocks held, outside {}..={}",
                    self.blocks_held, self.initial_blocks, self.max_blocks
                ));
            }
            Ok(())
        }
    }

    #[test]
    fn the_small_pool_hands_out_every_pair_once_over_both_addresses() {
        let mut s = small();
        assert_eq!((s.blocks_held(), s.capacity()), (1, 8));
        let all: Vec<SocketAddrV4> = (0..8).map(|_| s.allocate().expect("a free pair")).collect();
        let distinct: HashSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), 8);
        for ip in [Ipv4Addr::new(127, 0, 0, 10), Ipv4Addr::new(127, 0, 0, 11)] {
            assert_eq!(all.iter().filter(|a| *a.ip() == ip).count(), 4, "{ip} carries half: {all:?}");
        }
        assert!(all.iter().all(|a| (40000..=40003).contains(&a.port())));
        assert_eq!(s.allocate(), None, "all four blocks are full");
        assert_eq!(s.stats().allocated, 8);

        assert!(s.release(all[3]));
        assert!(!s.release(all[3]), "a second release is refused");
        assert_eq!(s.allocate(), Some(all[3]), "the one free pair");
        for a in &all {
            assert!(s.release(*a));
            s.check().expect("invariants");
        }
        assert_eq!((s.allocated(), s.blocks_held()), (0, 1));
    }

    #[test]
    fn new_blocks_go_to_the_address_holding_fewest() {
        let mut s = small();
        let first: Vec<_> = (0..3).map(|_| s.allocate().expect("free")).collect();
        assert_eq!(*first[0].ip(), Ipv4Addr::new(127, 0, 0, 10));
        assert_eq!(*first[2].ip(), Ipv4Addr::new(127, 0, 0, 11), "the second block is on the other address");
        let stats = s.stats();
        assert_eq!(stats.per_address.iter().map(|a| a.blocks_held).collect::<Vec<_>>(), [1, 1]);
    }

    #[test]
    fn releasing_what_was_not_allocated_changes_nothing() {
        let mut s = small();
        let taken = s.allocate().expect("free");
        let before = s.stats();
        for bogus in [
            SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 9), 40000),
            SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 12), 40000),
            SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 10), 39999),
            SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 10), 40004),
            SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 11), 40000), // a block not held
            SocketAddrV4::new(*taken.ip(), taken.port() + 1),       // held but free
        ] {
            assert!(!s.release(bogus), "{bogus}");
            assert_eq!(s.stats(), before, "{bogus}");
        }
    }

    #[test]
    fn free_ports_are_intervals_that_merge() {
        let mut s = SnatAllocator::new(&pool(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 1),
            (1000, 1009),
            10,
            1,
            1,
        ));
        let ports: Vec<_> = (0..10).map(|_| s.allocate().expect("free")).collect();
        for i in [1, 3, 2] {
            assert!(s.release(ports[i]));
        }
        assert_eq!(s.stats().per_address[0].free, [(1001, 1003)]);
        assert!(s.release(ports[0]));
        assert!(s.release(ports[9]));
        assert_eq!(s.stats().per_address[0].free, [(1000, 1003), (1009, 1009)]);
    }

    #[test]
    fn ports_past_the_last_whole_block_are_never_used() {
        let mut s = SnatAllocator::new(&pool(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 1),
            (1000, 1004),
            2,
            0,
            99,
        ));
        assert_eq!((s.blocks_held(), s.capacity()), (0, 4));
        let ports: HashSet<u16> = (0..4).map(|_| s.allocate().expect("free").port()).collect();
        assert_eq!(ports, HashSet::from([1000, 1001, 1002, 1003]));
        assert_eq!(s.allocate(), None);
    }

    #[test]
    fn the_top_of_the_address_and_port_space_is_handled() {
        let top = Ipv4Addr::new(255, 255, 255, 255);
        let mut s =
            SnatAllocator::new(&pool(Ipv4Addr::new(255, 255, 255, 254), top, (65534, 65535), 1, 1, 4));
        let all: HashSet<_> = (0..4).map(|_| s.allocate().expect("free")).collect();
        assert_eq!(all.len(), 4);
        assert!(all.contains(&SocketAddrV4::new(top, 65535)));
        assert_eq!(s.allocate(), None);
        assert_eq!(s.stats().last_ip, top);
        for a in all {
            assert!(s.release(a));
        }
        s.check().expect("invariants");
    }

    #[derive(Clone, Debug)]
    enum Op {
        Allocate,
        /// Release the n-th live allocation (modulo how many there are).
        Release(usize),
        /// Release an address:port near the pool, allocated or not.
        Bogus(u8, u16),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        let op = prop_oneof![
            5 => Just(Op::Allocate),
            4 => any::<usize>().prop_map(Op::Release),
            1 => (any::<u8>(), any::<u16>()).prop_map(|(a, p)| Op::Bogus(a, p)),
        ];
        proptest::collection::vec(op, 0..300)
    }

    /// A small pool anywhere in the address and port space, including the top of both.
    fn pools() -> impl Strategy<Value = SnatPool> {
        (1u32..=4, any::<bool>(), 1u16..=24, any::<bool>(), any::<u16>(), any::<u32>(), any::<u32>())
            .prop_map(|(addresses, top_ip, range, top_port, size, initial, max)| {
                let first =
                    if top_ip { u32::MAX - (addresses - 1) } else { u32::from(Ipv4Addr::new(10, 0, 0, 1)) };
                let lo = if top_port { u16::MAX - (range - 1) } else { 20000 };
                let block_size = size % range + 1;
                let total = addresses * u32::from(range / block_size);
                let max = max % total + 1;
                let initial = initial % (max + 1);
                pool(
                    Ipv4Addr::from(first),
                    Ipv4Addr::from(first + (addresses - 1)),
                    (lo, lo + (range - 1)),
                    block_size,
                    initial,
                    max,
                )
            })
    }

    proptest! {
        #[test]
        fn allocation_keeps_every_invariant(pool in pools(), ops in ops()) {
            let mut s = SnatAllocator::new(&pool);
            prop_assert_eq!(s.check(), Ok(()));
            let mut live: Vec<SocketAddrV4> = Vec::new();
            for op in ops {
                match op {
                    Op::Allocate => match s.allocate() {
                        Some(a) => {
                            prop_assert!(!live.contains(&a), "{} handed out twice", a);
                            prop_assert!((pool.first_ip..=pool.last_ip).contains(a.ip()));
                            prop_assert!((pool.ports.0..=pool.ports.1).contains(&a.port()));
                            live.push(a);
                        }
                        None => prop_assert_eq!(live.len() as u64, s.capacity(), "refused with ports free"),
                    },
                    Op::Release(n) if !live.is_empty() => {
                        let a = live.swap_remove(n % live.len());
                        prop_assert!(s.release(a));
                    }
                    Op::Release(_) => {}
                    Op::Bogus(offset, port) => {
                        let ip = Ipv4Addr::from(u32::from(pool.first_ip).wrapping_add(u32::from(offset % 8)).wrapping_sub(2));
                        let a = SocketAddrV4::new(ip, port);
                        let was_live = live.contains(&a);
                        prop_assert_eq!(s.release(a), was_live);
                        live.retain(|l| *l != a);
                    }
                }
                prop_assert_eq!(s.allocated(), live.len() as u64);
                prop_assert_eq!(s.check(), Ok(()));
            }
            for a in live.drain(..) {
                prop_assert!(s.release(a));
            }
            prop_assert_eq!(s.check(), Ok(()));
            prop_assert_eq!(s.allocated(), 0);
            prop_assert_eq!(s.blocks_held(), u64::from(pool.initial_blocks));
        }

        #[test]
        fn a_full_pool_uses_every_address(pool in pools()) {
            let mut s = SnatAllocator::new(&pool);
            let mut n = 0;
            while s.allocate().is_some() {
                n += 1;
            }
            prop_assert_eq!(n, s.capacity());
            let used: HashSet<_> = s.stats().per_address.iter().map(|a| a.address).collect();
            let addresses = u64::from(u32::from(pool.last_ip) - u32::from(pool.first_ip)) + 1;
            prop_assert_eq!(used.len() as u64, addresses.min(u64::from(pool.max_blocks)), "blocks spread over addresses");
        }
    }
}
