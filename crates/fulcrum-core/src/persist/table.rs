//! The sticky table: key → backend with a sliding TTL and an LRU size bound.
//! The cookie map table (learn mode) and the source affinity table are both
//! one of these.
//!
//! How: an `lru::LruCache` (a hash map over an intrusive doubly linked list)
//! keeps the entries in recency order, each with its expiry. Every touch
//! (a hit, an insert) sets the expiry to `now + ttl` and moves the entry to the
//! most recent end; since the ttl is the same for all and `now` never goes
//! back, recency order *is* expiry order: the least recently used entry is
//! always the first to expire. So `expire` pops from the old end until it
//! meets a live entry, and the size bound evicts from that same end: both
//! O(1) per entry removed, with no scan and no second index.
//!
//! Why the `lru` crate: it is the well-kept implementation of exactly this
//! structure (O(1) get/put/pop_lru, `retain`, no preallocation through
//! `unbounded_with_hasher`), and a hand-written slab list would be a hundred
//! lines more of the same. It is used without its `hashbrown` feature, so
//! keys are hashed by `std`'s SipHash with a per-process random key: the keys
//! here (client addresses, cookie values) come from outside, and a flood of
//! colliding keys must not turn lookups linear. The random key changes only
//! the map's internal layout, never an answer.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::Hash;
use std::time::Duration;

use lru::LruCache;

use crate::model::BackendId;

/// A bounded map of sticky keys to backends whose entries live `ttl` past
/// their last use.
///
/// - An entry not touched (looked up by [`get`](Self::get) or written by
///   [`insert`](Self::insert)) for `ttl` is expired: `get` no longer sees it,
///   and `get` or [`expire`](Self::expire) removes it.
/// - At most `max_entries` entries are held; inserting a new key into a full
///   table evicts the least recently used entry (which is also the one
///   closest to expiry).
/// - `now` is the reading of any monotonic clock. A `now` earlier than one
///   already seen is taken as the latest seen, so that calls racing to a
///   shared table with slightly stale readings cannot break the order.
///
/// Every operation is O(1) amortised except
/// [`remove_backend`](Self::remove_backend), O(entries), for the rare moment a
/// backend leaves its pool. Not synchronised: `get` moves the entry, so
/// callers that share a table serialise (or shard) access themselves.
pub struct StickyTable<K> {
    /// Most recently used at the front; each entry with its expiry.
    entries: LruCache<K, Entry, RandomState>,
    ttl: Duration,
    max_entries: usize,
    /// The latest `now` seen: expiries are computed from it, so they never
    /// decrease along the recency order.
    clock: Duration,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    backend: BackendId,
    /// The entry is dead from this instant on: `now >= expires`.
    expires: Duration,
}

impl<K: Hash + Eq + Clone> StickyTable<K> {
    /// An empty table whose entries live `ttl` after their last use, holding
    /// at most `max_entries` (0 holds nothing: inserts are dropped). Allocates
    /// nothing until entries arrive.
    pub fn new(ttl: Duration, max_entries: usize) -> StickyTable<K> {
        StickyTable {
            entries: LruCache::unbounded_with_hasher(RandomState::new()),
            ttl,
            max_entries,
            clock: Duration::ZERO,
        }
    }

    /// The backend `key` sticks to, refreshing the entry (its expiry moves to
    /// `now + ttl`, and it becomes the most recently used). `None` if there is
    /// no entry or it has expired; an expired entry is removed.
    pub fn get(&mut self, key: &K, now: Duration) -> Option<BackendId> {
        let now = self.tick(now);
        let expires = now.saturating_add(self.ttl);
        let entry = self.entries.get_mut(key)?;
        if now >= entry.expires {
            self.entries.pop(key);
            return None;
        }
        entry.expires = expires;
        Some(entry.backend)
    }

    /// Makes `key` stick to `backend` from `now` for `ttl`, replacing any
    /// entry `key` had (live or expired). A new key in a full table first
    /// evicts the least recently used entry.
    pub fn insert(&mut self, key: K, backend: BackendId, now: Duration) {
        let now = self.tick(now);
        if self.max_entries == 0 {
            return;
        }
        let entry = Entry { backend, expires: now.saturating_add(self.ttl) };
        if let Some(existing) = self.entries.get_mut(&key) {
            *existing = entry;
            return;
        }
        while self.entries.len() >= self.max_entries {
            self.entries.pop_lru();
        }
        self.entries.push(key, entry);
    }

    /// Forgets `key`, if present.
    pub fn remove(&mut self, key: &K) {
        self.entries.pop(key);
    }

    /// Entries held, expired ones not yet removed included. Never above
    /// `max_entries`.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Removes every entry expired at `now` and returns how many. Call it
    /// periodically (each second, say) so that memory follows the live
    /// entries; lookups are correct without it. Costs O(1) per entry removed.
    pub fn expire(&mut self, now: Duration) -> usize {
        let now = self.tick(now);
        let mut removed = 0;
        while self.entries.peek_lru().is_some_and(|(_, e)| now >= e.expires) {
            self.entries.pop_lru();
            removed += 1;
        }
        removed
    }

    /// Forgets every key that sticks to `backend` (it left the pool, or the
    /// ids were renumbered on reload) and returns how many. O(entries). A
    /// backend that is merely down or disabled needs no call: the caller
    /// replaces it on lookup with [`insert`](Self::insert).
    pub fn remove_backend(&mut self, backend: BackendId) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, e| e.backend != backend);
        before - self.entries.len()
    }

    /// How long an entry lives after its last use.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The most entries held at once.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    fn tick(&mut self, now: Duration) -> Duration {
        self.clock = self.clock.max(now);
        self.clock
    }
}

impl<K: Hash + Eq + Clone> fmt::Debug for StickyTable<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StickyTable")
            .field("len", &self.entries.len())
            .field("ttl", &self.ttl)
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
