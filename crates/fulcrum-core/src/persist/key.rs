//! Stable hashes and keys: SipHash-2-4 under fixed keys, the header key for
//! `maglev`, the masked client address for the affinity table.
//!
//! Why hand-written: a cookie id or a header's backend must be the same on
//! every node of a cluster, after every restart and in every release. `std`'s
//! `DefaultHasher` does not promise that (its algorithm is unspecified and has
//! changed before), and `RandomState` is seeded per process. SipHash-2-4 is a
//! specified function with published test vectors, about thirty lines, and
//! checked against the reference vectors below; the `siphasher` crate would do
//! the same for one more dependency.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The key of [`header_key`]: "fulcrum/header/1" as two little-endian words.
/// Changing it moves every header-hashed client: bump the version instead.
const HEADER_KEY: (u64, u64) = key_of(b"fulcrum/header/1");

/// Two little-endian words of a 16-byte key, as the SipHash paper reads them.
pub(super) const fn key_of(bytes: &[u8; 16]) -> (u64, u64) {
    let mut k0 = 0u64;
    let mut k1 = 0u64;
    let mut i = 0;
    while i < 8 {
        k0 |= (bytes[i] as u64) << (8 * i);
        k1 |= (bytes[i + 8] as u64) << (8 * i);
        i += 1;
    }
    (k0, k1)
}

/// SipHash-2-4 (Aumasson and Bernstein, 2012) of `data` under `key`.
pub(super) fn siphash24(key: (u64, u64), data: &[u8]) -> u64 {
    let mut s = SipState::new(key);
    let blocks = data.chunks_exact(8);
    let tail = blocks.remainder();
    for block in blocks {
        let mut word = [0u8; 8];
        word.copy_from_slice(block);
        s.compress(u64::from_le_bytes(word));
    }
    // The last word: the message length mod 256 in the top byte, the tail below.
    let mut last = (data.len() as u64) << 56;
    for (i, &b) in tail.iter().enumerate() {
        last |= u64::from(b) << (8 * i);
    }
    s.compress(last);
    s.finish()
}

struct SipState {
    v: [u64; 4],
}

impl SipState {
    fn new((k0, k1): (u64, u64)) -> SipState {
        SipState {
            v: [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f6d,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
        }
    }

    fn round(&mut self) {
        let [v0, v1, v2, v3] = &mut self.v;
        *v0 = v0.wrapping_add(*v1);
        *v1 = v1.rotate_left(13) ^ *v0;
        *v0 = v0.rotate_left(32);
        *v2 = v2.wrapping_add(*v3);
        *v3 = v3.rotate_left(16) ^ *v2;
        *v0 = v0.wrapping_add(*v3);
        *v3 = v3.rotate_left(21) ^ *v0;
        *v2 = v2.wrapping_add(*v1);
        *v1 = v1.rotate_left(17) ^ *v2;
        *v2 = v2.rotate_left(32);
    }

    /// Two compression rounds over one message word.
    fn compress(&mut self, m: u64) {
        self.v[3] ^= m;
        self.round();
        self.round();
        self.v[0] ^= m;
    }

    /// Four finalization rounds.
    fn finish(mut self) -> u64 {
        self.v[2] ^= 0xff;
        for _ in 0..4 {
            self.round();
        }
        self.v[0] ^ self.v[1] ^ self.v[2] ^ self.v[3]
    }
}

/// The key of `header` persistence for a header's value: a 64-bit hash that
/// every node and every release computes alike, to feed the `maglev`
/// selector's `pick`. Takes the value as received (the HTTP parser has
/// already stripped surrounding whitespace); any bytes, any length.
pub fn header_key(value: &[u8]) -> u64 {
    siphash24(HEADER_KEY, value)
}

/// The key of the affinity table for client address `ip`: the address with
/// all but its first `mask_v4` (IPv4) or `mask_v6` (IPv6) bits cleared, so
/// that a whole subnet sticks together (`mask_v4 = 24`: clients behind one
/// /24 share a backend). An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a
/// dual-stack listener reports for an IPv4 client) is the IPv4 client it
/// maps, masked by `mask_v4`, and comes back as IPv4. Masks beyond the
/// address length mean the whole address (32, 128); 0 puts every client of
/// that family under one key.
pub fn source_key(ip: IpAddr, mask_v4: u8, mask_v6: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(mask4(v4, mask_v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(mask4(v4, mask_v4)),
            None => IpAddr::V6(mask6(v6, mask_v6)),
        },
    }
}

fn mask4(ip: Ipv4Addr, bits: u8) -> Ipv4Addr {
    let keep = u32::MAX.checked_shl(32 - u32::from(bits.min(32))).unwrap_or(0);
    Ipv4Addr::from(u32::from(ip) & keep)
}

fn mask6(ip: Ipv6Addr, bits: u8) -> Ipv6Addr {
    let keep = u128::MAX.checked_shl(128 - u32::from(bits.min(128))).unwrap_or(0);
    Ipv6Addr::from(u128::from(ip) & keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference key of the SipHash paper: bytes 00..0f.
    const PAPER_KEY: (u64, u64) = key_of(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);

    #[test]
    fn siphash_matches_the_reference_vectors() {
        // Appendix A of the paper: message 00..0e under key 00..0f.
        let message: Vec<u8> = (0..15).collect();
        assert_eq!(siphash24(PAPER_KEY, &message), 0xa129_ca61_49be_45e5);
        // The reference implementation's vectors.h (as also in the `siphasher`
        // crate's tests): lengths 0, 7 and 8, the empty, longest-tail and
        // one-full-block cases.
        let vector = |len: u8| {
            let message: Vec<u8> = (0..len).collect();
            siphash24(PAPER_KEY, &message).to_le_bytes()
        };
        assert_eq!(vector(0), [0x31, 0x0e, 0x0e, 0xdd, 0x47, 0xdb, 0x6f, 0x72]);
        assert_eq!(vector(7), [0x37, 0xd1, 0x01, 0x8b, 0xf5, 0x00, 0x02, 0xab]);
        assert_eq!(vector(8), [0x62, 0x24, 0x93, 0x9a, 0x79, 0xf5, 0xf5, 0x93]);
    }

    #[test]
    fn header_key_is_stable_and_separates_values() {
        // Pinned: a change here moves every header-hashed client in a cluster
        // mid-upgrade. Bump HEADER_KEY's version on purpose, never by accident.
        assert_eq!(header_key(b"tenant-42"), header_key(b"tenant-42"));
        assert_eq!(header_key(b""), siphash24(key_of(b"fulcrum/header/1"), b""));
        assert_ne!(header_key(b"tenant-42"), header_key(b"tenant-43"));
        assert_ne!(header_key(b"a"), header_key(b"a\0"));
    }

    #[test]
    fn source_key_masks_ipv4() {
        let ip: IpAddr = "203.0.113.77".parse().unwrap();
        assert_eq!(source_key(ip, 32, 128), ip);
        assert_eq!(source_key(ip, 24, 128), "203.0.113.0".parse::<IpAddr>().unwrap());
        assert_eq!(source_key(ip, 20, 128), "203.0.112.0".parse::<IpAddr>().unwrap());
        assert_eq!(source_key(ip, 0, 128), "0.0.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(source_key(ip, 99, 128), ip, "a mask past 32 keeps the whole address");
    }

    #[test]
    fn source_key_masks_ipv6() {
        let ip: IpAddr = "2001:db8:aa:bb:1:2:3:4".parse().unwrap();
        assert_eq!(source_key(ip, 32, 128), ip);
        assert_eq!(source_key(ip, 32, 64), "2001:db8:aa:bb::".parse::<IpAddr>().unwrap());
        assert_eq!(source_key(ip, 32, 56), "2001:db8:aa::".parse::<IpAddr>().unwrap());
        assert_eq!(source_key(ip, 32, 0), "::".parse::<IpAddr>().unwrap());
        assert_eq!(source_key(ip, 32, 200), ip);
    }

    #[test]
    fn source_key_treats_ipv4_mapped_as_ipv4() {
        let mapped: IpAddr = "::ffff:198.51.100.9".parse().unwrap();
        assert_eq!(source_key(mapped, 24, 64), "198.51.100.0".parse::<IpAddr>().unwrap());
        assert_eq!(source_key(mapped, 32, 0), "198.51.100.9".parse::<IpAddr>().unwrap());
        // The same client over IPv4 and over a dual-stack socket: one key.
        let plain: IpAddr = "198.51.100.9".parse().unwrap();
        assert_eq!(source_key(mapped, 28, 64), source_key(plain, 28, 64));
        // Not mapped (an ordinary IPv6 address): masked as IPv6.
        let v6: IpAddr = "64:ff9b::c633:6409".parse().unwrap();
        assert!(source_key(v6, 24, 128).is_ipv6());
    }
}
