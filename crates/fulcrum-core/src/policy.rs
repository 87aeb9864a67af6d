//! The policy table: whether a client may use a service or route. Source
//! eligibility (allow/deny CIDR lists), authorization (HTTP Basic against
//! bcrypt hashes, or bearer tokens) and a per-client rate of new sessions.
//!
//! Sans-io like the rest of the core: the daemon reads the htpasswd and token
//! files and hands their text to [`parse_htpasswd`] / [`parse_tokens`], and
//! passes the time in as `now`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;

use crate::model::{Auth, Policy};

/// Why a client is refused, and what it is answered with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Answered with 403. The message names the rule that refused, for the
    /// log; whether the client sees it is the daemon's choice.
    #[error("{0}")]
    Forbidden(String),
    /// Answered with 401, `challenge` being the whole `WWW-Authenticate` value.
    #[error("authorization required")]
    Unauthorized { challenge: String },
    /// Answered with 429, `retry_after_secs` (at least 1) in `Retry-After`.
    #[error("too many new sessions from this client address; retry in {retry_after_secs}s")]
    TooMany { retry_after_secs: u64 },
}

impl Refusal {
    /// The HTTP status this refusal answers with.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Forbidden(_) => 403,
            Refusal::Unauthorized { .. } => 401,
            Refusal::TooMany { .. } => 429,
        }
    }
}

// ---------------------------------------------------------------------------
// Source eligibility

/// Whether `client` may use what `policy` guards: a `deny` entry refuses even
/// an allowed source; a non-empty `allow` list must contain the client.
///
/// An IPv4-mapped IPv6 client (`::ffff:1.2.3.4`, what a dual-stack listener
/// reports for an IPv4 peer) is checked as its IPv4 address, so `10.0.0.0/8`
/// means the same on either kind of listener.
pub fn check_source(policy: &Policy, client: IpAddr) -> Result<(), Refusal> {
    let source = client.to_canonical();
    let holds = |net: &ipnet::IpNet| net.contains(&source) || net.contains(&client);
    if let Some(net) = policy.deny.iter().find(|n| holds(n)) {
        return Err(Refusal::Forbidden(format!("source {source} is denied by {net}")));
    }
    if !policy.allow.is_empty() && !policy.allow.iter().any(holds) {
        return Err(Refusal::Forbidden(format!("source {source} is not in the allow list")));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Credentials

/// The secrets an [`Auth`] is checked against, read by the daemon at load.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// Nothing loaded: every request to an authenticated service is refused.
    #[default]
    None,
    /// User name → bcrypt hash (from [`parse_htpasswd`]).
    Basic(HashMap<String, String>),
    /// Accepted bearer tokens (from [`parse_tokens`]).
    Bearer(HashSet<String>),
}

/// Counts only, so a logged `Credentials` leaks no hash or token.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::None => f.write_str("Credentials::None"),
            Credentials::Basic(users) => write!(f, "Credentials::Basic({} users)", users.len()),
            Credentials::Bearer(tokens) => write!(f, "Credentials::Bearer({} tokens)", tokens.len()),
        }
    }
}

const BCRYPT_PREFIXES: [&str; 3] = ["$2a$", "$2b$", "$2y$"];

/// Parses an htpasswd file of bcrypt entries (`user:$2y$...`, as written by
/// `htpasswd -B`) into user → hash.
///
/// `#` comments and blank lines are skipped. An error names the 1-based line:
/// a line without ':', an empty user name, a hash that is not bcrypt
/// (`$2a$`, `$2b$`, `$2y$`; MD5, SHA and crypt entries are refused rather than
/// silently never matching) or is malformed, a user listed twice. A file with
/// no users at all is an error too: it would lock everyone out.
pub fn parse_htpasswd(text: &str) -> Result<HashMap<String, String>, String> {
    let mut users = HashMap::new();
    let mut defined_on = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let n = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            return Err(format!("line {n}: expected `user:hash`, found no ':'"));
        };
        if user.is_empty() {
            return Err(format!("line {n}: the user name is empty"));
        }
        if !BCRYPT_PREFIXES.iter().any(|p| hash.starts_with(p)) {
            return Err(format!(
                "line {n}: user \"{user}\" has a hash that is not bcrypt ($2a$, $2b$ or $2y$); \
                 create entries with `htpasswd -B`"
            ));
        }
        match hash.parse::<bcrypt::HashParts>() {
            Ok(parts) if (4..=31).contains(&parts.get_cost()) => {}
            _ => return Err(format!("line {n}: user \"{user}\" has a malformed bcrypt hash")),
        }
        if let Some(first) = defined_on.insert(user.to_owned(), n) {
            return Err(format!("line {n}: user \"{user}\" is already defined on line {first}"));
        }
        users.insert(user.to_owned(), hash.to_owned());
    }
    if users.is_empty() {
        return Err("no users".to_owned());
    }
    Ok(users)
}

/// Parses a tokens file: one bearer token a line, trimmed; blank lines and
/// `#` comments skipped. A token with whitespace inside (it could never be
/// sent in an `Authorization` header) is an error naming its line; a file
/// without any token is the error `no tokens`.
pub fn parse_tokens(text: &str) -> Result<HashSet<String>, String> {
    let mut tokens = HashSet::new();
    for (index, raw) in text.lines().enumerate() {
        let token = raw.trim();
        if token.is_empty() || token.starts_with('#') {
            continue;
        }
        if token.contains(char::is_whitespace) {
            return Err(format!("line {}: a token cannot contain whitespace", index + 1));
        }
        tokens.insert(token.to_owned());
    }
    if tokens.is_empty() {
        return Err("no tokens".to_owned());
    }
    Ok(tokens)
}

// ---------------------------------------------------------------------------
// Authorization

/// `Authorization` values that recently verified, so most requests skip bcrypt.
///
/// bcrypt is slow on purpose: one verification at the usual cost 10–12 takes
/// 50–250 ms of CPU. Verifying on every request would cap a core at a few
/// dozen authenticated requests per second, and any client that keeps sending
/// a valid header (a browser does, on every request) would burn that CPU.
/// So the exact header values that verified are remembered:
///
/// - exact values, not users: a different password for a known user is
///   verified again, and only what once passed bcrypt ever skips it;
/// - only successes: a failure is never cached, so a wrong guess costs the
///   guesser a full verification each time (the per-client rate limit bounds
///   that), and unknown users are refused without hashing at all;
/// - bounded: at most `capacity` entries, the oldest evicted first, and none
///   longer than `max_value_len` bytes, so memory stays small whatever comes in;
/// - with a TTL (counted from the verification, not refreshed by hits), which
///   bounds how long a password-equivalent value stays in memory.
///
/// One cache belongs to one [`Credentials`]: sharing it between services with
/// different htpasswd files would let one's users into the other, and the
/// daemon starts a new cache whenever it reloads the credentials.
pub struct AuthCache {
    /// Value → when it verified. Holds exactly the keys of `order`.
    verified: HashMap<Vec<u8>, Duration>,
    /// Oldest first; with one TTL for all, also the order of expiry.
    order: VecDeque<(Vec<u8>, Duration)>,
    capacity: usize,
    ttl: Duration,
    max_value_len: usize,
    /// bcrypt verifications run through this cache (for tests and metrics).
    verifications: u64,
}

impl AuthCache {
    /// The default bound: enough for the active users of a large service.
    pub const DEFAULT_CAPACITY: usize = 1024;
    /// The default lifetime of an entry.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(5 * 60);
    /// Header values longer than this are verified every time, never stored.
    pub const MAX_VALUE_LEN: usize = 512;

    /// A cache of at most `capacity` values (0 turns caching off), each kept `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        AuthCache {
            verified: HashMap::new(),
            order: VecDeque::new(),
            capacity,
            ttl,
            max_value_len: Self::MAX_VALUE_LEN,
            verifications: 0,
        }
    }

    /// Whether `value` verified less than the TTL before `now`.
    pub fn contains(&self, value: &[u8], now: Duration) -> bool {
        self.verified.get(value).is_some_and(|&at| now.saturating_sub(at) < self.ttl)
    }

    /// Remembers that `value` verified at `now`, evicting expired entries and,
    /// beyond capacity, the oldest ones.
    pub fn insert(&mut self, value: &[u8], now: Duration) {
        if self.capacity == 0 || value.len() > self.max_value_len {
            return;
        }
        self.expire(now);
        if self.verified.contains_key(value) {
            return;
        }
        while self.order.len() >= self.capacity {
            self.pop_oldest();
        }
        self.verified.insert(value.to_vec(), now);
        self.order.push_back((value.to_vec(), now));
    }

    /// How many values are cached (expired ones may count until the next insert).
    pub fn len(&self) -> usize {
        self.verified.len()
    }

    pub fn is_empty(&self) -> bool {
        self.verified.is_empty()
    }

    /// How many bcrypt verifications [`check_auth`] ran with this cache.
    pub fn verifications(&self) -> u64 {
        self.verifications
    }

    fn expire(&mut self, now: Duration) {
        while self.order.front().is_some_and(|(_, at)| now.saturating_sub(*at) >= self.ttl) {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((value, _)) = self.order.pop_front() {
            self.verified.remove(&value);
        }
    }
}

impl Default for AuthCache {
    fn default() -> Self {
        AuthCache::new(Self::DEFAULT_CAPACITY, Self::DEFAULT_TTL)
    }
}

/// Sizes only: the keys are credentials.
impl fmt::Debug for AuthCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthCache")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .field("ttl", &self.ttl)
            .field("verifications", &self.verifications)
            .finish()
    }
}

/// Checks a request's `Authorization` header value (`None` when absent)
/// against `auth` and its loaded `creds`.
///
/// - `Auth::None`: always passes.
/// - `Auth::Basic`: `Basic base64(user:password)` (scheme case-insensitive),
///   verified with bcrypt against the user's hash, through `cache`.
/// - `Auth::Bearer`: `Bearer TOKEN`, compared in constant time with every
///   accepted token.
///
/// Anything missing, malformed or wrong is `Unauthorized` with the challenge
/// of RFC 7617 / RFC 6750; a bearer token that was presented but is not
/// accepted adds `error="invalid_token"`. Credentials of the wrong kind (or
/// none) for `auth` refuse every request: fail closed.
///
/// A bcrypt verification takes tens of milliseconds: the daemon should run a
/// call that may miss the cache off its I/O threads.
pub fn check_auth(
    auth: &Auth,
    creds: &Credentials,
    authorization: Option<&[u8]>,
    cache: &mut AuthCache,
    now: Duration,
) -> Result<(), Refusal> {
    match auth {
        Auth::None => Ok(()),
        Auth::Basic { realm, .. } => {
            let refuse = || Refusal::Unauthorized { challenge: basic_challenge(realm) };
            let Credentials::Basic(users) = creds else { return Err(refuse()) };
            let value = authorization.ok_or_else(refuse)?;
            if cache.contains(value, now) {
                return Ok(());
            }
            let (user, password) = parse_basic(value).ok_or_else(refuse)?;
            // An unknown user is refused without hashing: it saves the CPU an
            // attacker would make us spend, at the cost of telling a careful
            // timer which user names exist (as Apache and NGINX do too).
            let hash = users.get(&user).ok_or_else(refuse)?;
            cache.verifications += 1;
            if bcrypt::verify(&password, hash).unwrap_or(false) {
                cache.insert(value, now);
                Ok(())
            } else {
                Err(refuse())
            }
        }
        Auth::Bearer { realm, .. } => {
            let Credentials::Bearer(tokens) = creds else {
                return Err(Refusal::Unauthorized { challenge: bearer_challenge(realm, false) });
            };
            match authorization.and_then(parse_bearer) {
                None => Err(Refusal::Unauthorized { challenge: bearer_challenge(realm, false) }),
                Some(token) if token_accepted(tokens, token) => Ok(()),
                Some(_) => Err(Refusal::Unauthorized { challenge: bearer_challenge(realm, true) }),
            }
        }
    }
}

/// `Basic realm="…", charset="UTF-8"` (RFC 7617 §2, §2.1).
fn basic_challenge(realm: &str) -> String {
    format!("Basic realm={}, charset=\"UTF-8\"", quoted(realm))
}

/// `Bearer realm="…"`, plus `error="invalid_token"` when a token was
/// presented and refused (RFC 6750 §3, §3.1).
fn bearer_challenge(realm: &str, invalid_token: bool) -> String {
    let error = if invalid_token { ", error=\"invalid_token\"" } else { "" };
    format!("Bearer realm={}{error}", quoted(realm))
}

/// An RFC 9110 quoted-string.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The credentials of `Authorization: <scheme> <credentials>`, if the scheme
/// is `scheme` (case-insensitive) and one or more spaces separate them.
fn credentials_of<'v>(value: &'v [u8], scheme: &str) -> Option<&'v [u8]> {
    let value = value.trim_ascii();
    let (name, rest) = value.split_at_checked(scheme.len())?;
    if !name.eq_ignore_ascii_case(scheme.as_bytes()) || !rest.starts_with(b" ") {
        return None;
    }
    let rest = rest.trim_ascii_start();
    (!rest.is_empty()).then_some(rest)
}

/// `Basic dXNlcjpwYXNz` → (`user`, `pass` bytes). The password is kept as
/// bytes: bcrypt hashes bytes, and old clients send Latin-1.
fn parse_basic(value: &[u8]) -> Option<(String, Vec<u8>)> {
    // The `base64` crate (already built for bcrypt) rather than a hand-written
    // decoder: its STANDARD engine is strict the way RFC 7617 reads — padding
    // required, non-canonical trailing bits refused — and well fuzzed.
    let decoded = base64::engine::general_purpose::STANDARD.decode(credentials_of(value, "Basic")?).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

fn parse_bearer(value: &[u8]) -> Option<&[u8]> {
    credentials_of(value, "Bearer")
}

/// Whether `token` is one of `tokens`, compared so the time taken does not
/// depend on where a guess first differs from a real token, nor on which
/// token (if any) it equals. Token lengths can still be timed; tokens are
/// meant to be long and random, so a length is no help to a guesser.
fn token_accepted(tokens: &HashSet<String>, token: &[u8]) -> bool {
    tokens.iter().fold(false, |found, t| found | constant_time_eq(t.as_bytes(), token))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keeps the optimiser from turning the fold back into an early exit.
    std::hint::black_box(diff) == 0
}

// ---------------------------------------------------------------------------
// Rate of new sessions per client

/// New sessions per second per client address: a token bucket per client.
///
/// Each client may open `per_second` sessions at once (the burst), and one
/// more every `1/per_second` s after. Implemented as GCRA (the "virtual
/// scheduling" form of a token bucket): a client's whole bucket is one
/// timestamp, the theoretical arrival time of its next session, so there is
/// no per-tick refill and no floating point.
///
/// Clients are IPv4 addresses (IPv4-mapped IPv6 counted as IPv4) and IPv6 /64
/// prefixes: a single IPv6 host usually owns a whole /64, and per-address
/// buckets there would let it rotate addresses to escape its limit.
///
/// Memory is bounded: at most `max_clients` buckets, the least recently seen
/// evicted first. An evicted client returns with a full bucket, which is only
/// generous to a client that stayed away while `max_clients` others came.
#[derive(Debug)]
pub struct RateLimiter {
    /// Time one session's token takes to come back: 1 s / per_second.
    interval: Duration,
    /// How far ahead of now a client's next arrival time may run and still be
    /// admitted: (burst - 1) intervals.
    tolerance: Duration,
    max_clients: usize,
    buckets: HashMap<IpAddr, Bucket>,
    /// Last-seen stamp → client, oldest first: the eviction order.
    by_seen: BTreeMap<u64, IpAddr>,
    /// Source of last-seen stamps; grows by one per `admit`.
    clock: u64,
}

#[derive(Debug)]
struct Bucket {
    /// When the client's bucket would be full again, in `now` time; at or
    /// before now it is full.
    next_arrival: Duration,
    seen: u64,
}

impl RateLimiter {
    /// A limiter of `per_second` new sessions per client (also the burst), for
    /// at most `max_clients` clients. Zero in either is taken as 1.
    pub fn new(per_second: u32, max_clients: usize) -> Self {
        let per_second = per_second.max(1);
        let interval = Duration::from_secs(1) / per_second;
        RateLimiter {
            interval,
            tolerance: interval * (per_second - 1),
            max_clients: max_clients.max(1),
            buckets: HashMap::new(),
            by_seen: BTreeMap::new(),
            clock: 0,
        }
    }

    /// Takes one token from `client`'s bucket at `now`, or says how long to
    /// wait (`TooMany`, at least 1 s). A refused attempt takes no token.
    pub fn admit(&mut self, client: IpAddr, now: Duration) -> Result<(), Refusal> {
        let key = client_key(client);
        self.clock += 1;
        let seen = self.clock;
        if !self.buckets.contains_key(&key) {
            while self.buckets.len() >= self.max_clients {
                let Some((_, oldest)) = self.by_seen.pop_first() else { break };
                self.buckets.remove(&oldest);
            }
        }
        let bucket = self.buckets.entry(key).or_insert(Bucket { next_arrival: now, seen });
        self.by_seen.remove(&bucket.seen);
        bucket.seen = seen;
        self.by_seen.insert(seen, key);

        let next_arrival = bucket.next_arrival.max(now);
        let ahead = next_arrival - now;
        if ahead > self.tolerance {
            let wait = ahead - self.tolerance;
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(Refusal::TooMany { retry_after_secs: secs.max(1) });
        }
        bucket.next_arrival = next_arrival + self.interval;
        Ok(())
    }

    /// How many clients have a bucket now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// The bucket a client address counts against: IPv4 as is (mapped IPv6
/// unwrapped), IPv6 by its /64.
fn client_key(client: IpAddr) -> IpAddr {
    crate::persist::source_key(client, 32, 64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::PathBuf;
    use std::sync::OnceLock;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn nets(list: &[&str]) -> Vec<ipnet::IpNet> {
        list.iter().map(|s| s.parse().expect("test net")).collect()
    }

    fn policy(allow: &[&str], deny: &[&str]) -> Policy {
        Policy { allow: nets(allow), deny: nets(deny), ..Default::default() }
    }

    fn forbidden(r: Result<(), Refusal>) -> String {
        match r {
            Err(Refusal::Forbidden(msg)) => msg,
            other => panic!("expected Forbidden, got {other:?}"),
        }
    }

    #[test]
    fn refusal_statuses() {
        assert_eq!(Refusal::Forbidden("x".into()).status(), 403);
        assert_eq!(Refusal::Unauthorized { challenge: String::new() }.status(), 401);
        assert_eq!(Refusal::TooMany { retry_after_secs: 1 }.status(), 429);
    }

    #[test]
    fn source_empty_policy_admits_everyone() {
        assert_eq!(check_source(&Policy::default(), ip("192.0.2.1")), Ok(()));
        assert_eq!(check_source(&Policy::default(), ip("2001:db8::1")), Ok(()));
    }

    #[test]
    fn source_deny_wins_over_allow_and_names_the_rule() {
        let p = policy(&["10.0.0.0/8"], &["10.9.0.0/16"]);
        assert_eq!(forbidden(check_source(&p, ip("10.9.1.2"))), "source 10.9.1.2 is denied by 10.9.0.0/16");
        assert_eq!(check_source(&p, ip("10.8.1.2")), Ok(()));
    }

    #[test]
    fn source_allow_list_must_contain_client() {
        let p = policy(&["192.0.2.0/24", "2001:db8::/32"], &[]);
        assert_eq!(check_source(&p, ip("192.0.2.77")), Ok(()));
        assert_eq!(check_source(&p, ip("2001:db8:1::5")), Ok(()));
        assert_eq!(
            forbidden(check_source(&p, ip("198.51.100.1"))),
            "source 198.51.100.1 is not in the allow list"
        );
        assert!(check_source(&p, ip("2001:db9::1")).is_err());
    }

    #[test]
    fn source_ipv4_mapped_is_checked_as_ipv4() {
        let p = policy(&[], &["10.9.0.0/16"]);
        assert_eq!(
            forbidden(check_source(&p, ip("::ffff:10.9.1.2"))),
            "source 10.9.1.2 is denied by 10.9.0.0/16"
        );
        let p = policy(&["127.0.0.0/8"], &[]);
        assert_eq!(check_source(&p, ip("::ffff:127.0.0.1")), Ok(()));
        assert!(check_source(&p, ip("::1")).is_err());
    }

    /// One real bcrypt hash of "secret" for all tests (cost 4 keeps them fast).
    fn secret_hash() -> &'static str {
        static HASH: OnceLock<String> = OnceLock::new();
        HASH.get_or_init(|| bcrypt::hash("secret", 4).expect("bcrypt hash"))
    }

    #[test]
    fn htpasswd_parses_users_skipping_comments_and_blanks() {
        let text = format!("# users\n\nalice:{h}\r\n  bob:{h}  \n", h = secret_hash());
        let users = parse_htpasswd(&text).expect("valid file");
        assert_eq!(users.len(), 2);
        assert_eq!(users["alice"], secret_hash());
        assert_eq!(users["bob"], secret_hash());
        // All three bcrypt prefixes are accepted.
        for prefix in BCRYPT_PREFIXES {
            let hash = format!("{prefix}{}", &secret_hash()[4..]);
            assert!(parse_htpasswd(&format!("u:{hash}")).is_ok(), "{prefix}");
        }
    }

    #[test]
    fn htpasswd_errors_name_the_line() {
        let h = secret_hash();
        let err = parse_htpasswd(&format!("# c\nalice:{h}\nbob\n")).expect_err("no colon");
        assert!(err.starts_with("line 3:"), "{err}");
        let err = parse_htpasswd("\ncarol:$apr1$abc$defghijklmnopqrstuvw/\n").expect_err("md5");
        assert!(err.starts_with("line 2:") && err.contains("not bcrypt") && err.contains("carol"), "{err}");
        let err = parse_htpasswd("dave:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=").expect_err("sha");
        assert!(err.starts_with("line 1:") && err.contains("not bcrypt"), "{err}");
        let err = parse_htpasswd("erin:$2y$04$tooshort").expect_err("malformed");
        assert!(err.starts_with("line 1:") && err.contains("malformed"), "{err}");
        let err = parse_htpasswd(&format!(":{h}")).expect_err("empty user");
        assert!(err.starts_with("line 1:"), "{err}");
    }

    #[test]
    fn htpasswd_duplicate_user_is_an_error() {
        let h = secret_hash();
        let err = parse_htpasswd(&format!("alice:{h}\nbob:{h}\n\nalice:{h}\n")).expect_err("duplicate");
        assert_eq!(err, "line 4: user \"alice\" is already defined on line 1");
    }

    #[test]
    fn htpasswd_without_users_is_an_error() {
        assert_eq!(parse_htpasswd(""), Err("no users".to_owned()));
        assert_eq!(parse_htpasswd("# only a comment\n\n"), Err("no users".to_owned()));
    }

    #[test]
    fn tokens_parse_trimmed_skipping_comments_and_blanks() {
        let tokens = parse_tokens("# ci\n  tok-1  \n\ntok-2\r\ntok-1\n").expect("valid");
        assert_eq!(tokens, HashSet::from(["tok-1".to_owned(), "tok-2".to_owned()]));
    }

    #[test]
    fn tokens_errors() {
        assert_eq!(parse_tokens(""), Err("no tokens".to_owned()));
        assert_eq!(parse_tokens("# none\n   \n"), Err("no tokens".to_owned()));
        assert_eq!(parse_tokens("ok\nnot ok\n"), Err("line 2: a token cannot contain whitespace".to_owned()));
    }

    fn basic_auth() -> Auth {
        Auth::Basic { realm: "fulcrum".into(), htpasswd: PathBuf::from("/etc/fulcrum/htpasswd") }
    }

    fn bearer_auth() -> Auth {
        Auth::Bearer { realm: "fulcrum".into(), tokens_file: PathBuf::from("/etc/fulcrum/tokens") }
    }

    fn basic_creds() -> Credentials {
        let hash = secret_hash().to_owned();
        Credentials::Basic(HashMap::from([("alice".to_owned(), hash.clone()), ("bob".to_owned(), hash)]))
    }

    fn basic_header(user_pass: &str) -> Vec<u8> {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_pass)).into_bytes()
    }

    const BASIC_CHALLENGE: &str = "Basic realm=\"fulcrum\", charset=\"UTF-8\"";

    fn challenge(r: Result<(), Refusal>) -> String {
        match r {
            Err(Refusal::Unauthorized { challenge }) => challenge,
            other => panic!("expected Unauthorized, got {other:?}"),
        }
    }

    #[test]
    fn auth_none_admits_anything() {
        let mut cache = AuthCache::default();
        assert_eq!(check_auth(&Auth::None, &Credentials::None, None, &mut cache, Duration::ZERO), Ok(()));
    }

    #[test]
    fn basic_right_password_passes() {
        let mut cache = AuthCache::default();
        let header = basic_header("alice:secret");
        assert_eq!(
            check_auth(&basic_auth(), &basic_creds(), Some(&header), &mut cache, Duration::ZERO),
            Ok(())
        );
        assert_eq!(cache.verifications(), 1);
        let padded = b"Basic Ym9iOnNlY3JldA==";
        assert_eq!(
            check_auth(&basic_auth(), &basic_creds(), Some(padded), &mut cache, Duration::ZERO),
            Ok(())
        );
        // The scheme is case-insensitive and extra spaces are allowed.
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:secret");
        let loose = format!("bAsIc   {b64} ").into_bytes();
        assert_eq!(
            check_auth(&basic_auth(), &basic_creds(), Some(&loose), &mut cache, Duration::ZERO),
            Ok(())
        );
    }

    #[test]
    fn basic_refusals_carry_the_challenge() {
        let creds = basic_creds();
        let mut cache = AuthCache::default();
        let mut check =
            |h: Option<&[u8]>| challenge(check_auth(&basic_auth(), &creds, h, &mut cache, Duration::ZERO));
        assert_eq!(check(None), BASIC_CHALLENGE, "missing header");
        assert_eq!(check(Some(&basic_header("alice:wrong"))), BASIC_CHALLENGE, "wrong password");
        assert_eq!(check(Some(b"Basic !!!not-base64!!!")), BASIC_CHALLENGE, "malformed base64");
        // "bob:secret" is right; only its padding is wrong.
        assert_eq!(check(Some(b"Basic Ym9iOnNlY3JldA")), BASIC_CHALLENGE, "missing padding");
        assert_eq!(check(Some(b"Basic YWxpY2U6c2VjcmV0=")), BASIC_CHALLENGE, "excess padding");
        assert_eq!(check(Some(&basic_header("alicesecret"))), BASIC_CHALLENGE, "no colon");
        assert_eq!(check(Some(b"Basic")), BASIC_CHALLENGE, "no credentials");
        assert_eq!(check(Some(b"Basic ")), BASIC_CHALLENGE, "empty credentials");
        assert_eq!(check(Some(b"Bearer YWxpY2U6c2VjcmV0")), BASIC_CHALLENGE, "wrong scheme");
        assert_eq!(check(Some(b"BasicYWxpY2U6c2VjcmV0")), BASIC_CHALLENGE, "no space");
    }

    #[test]
    fn basic_unknown_user_is_refused_without_hashing() {
        let mut cache = AuthCache::default();
        let header = basic_header("mallory:secret");
        assert!(check_auth(&basic_auth(), &basic_creds(), Some(&header), &mut cache, Duration::ZERO).is_err());
        assert_eq!(cache.verifications(), 0);
    }

    #[test]
    fn basic_without_matching_credentials_fails_closed() {
        let mut cache = AuthCache::default();
        let header = basic_header("alice:secret");
        for creds in [Credentials::None, Credentials::Bearer(HashSet::from(["t".to_owned()]))] {
            let r = check_auth(&basic_auth(), &creds, Some(&header), &mut cache, Duration::ZERO);
            assert_eq!(challenge(r), BASIC_CHALLENGE);
        }
    }

    #[test]
    fn cache_hit_skips_bcrypt() {
        let creds = basic_creds();
        let mut cache = AuthCache::default();
        let header = basic_header("alice:secret");
        for second in 0..10 {
            let now = Duration::from_secs(second);
            assert_eq!(check_auth(&basic_auth(), &creds, Some(&header), &mut cache, now), Ok(()));
        }
        assert_eq!(cache.verifications(), 1);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn cache_never_holds_failures() {
        let creds = basic_creds();
        let mut cache = AuthCache::default();
        let header = basic_header("alice:wrong");
        for _ in 0..3 {
            assert!(check_auth(&basic_auth(), &creds, Some(&header), &mut cache, Duration::ZERO).is_err());
        }
        assert_eq!(cache.verifications(), 3);
        assert!(cache.is_empty());
    }

    #[test]
    fn cache_entries_expire_after_ttl() {
        let creds = basic_creds();
        let mut cache = AuthCache::new(8, Duration::from_secs(300));
        let header = basic_header("alice:secret");
        let check = |cache: &mut AuthCache, secs| {
            check_auth(&basic_auth(), &creds, Some(&header), cache, Duration::from_secs(secs))
        };
        assert_eq!(check(&mut cache, 0), Ok(()));
        assert_eq!(check(&mut cache, 299), Ok(()));
        assert_eq!(cache.verifications(), 1);
        assert_eq!(check(&mut cache, 300), Ok(()), "verified again once expired");
        assert_eq!(cache.verifications(), 2);
        assert_eq!(cache.len(), 1, "the expired entry was replaced, not duplicated");
    }

    #[test]
    fn cache_is_bounded_and_evicts_oldest() {
        let mut cache = AuthCache::new(2, Duration::from_secs(300));
        let now = Duration::ZERO;
        cache.insert(b"a", now);
        cache.insert(b"b", now);
        cache.insert(b"a", now);
        cache.insert(b"c", now);
        assert_eq!(cache.len(), 2);
        assert!(!cache.contains(b"a", now), "oldest evicted");
        assert!(cache.contains(b"b", now) && cache.contains(b"c", now));
        cache.insert(&[b'x'; AuthCache::MAX_VALUE_LEN + 1], now);
        assert_eq!(cache.len(), 2, "oversized values are not stored");
        let mut off = AuthCache::new(0, Duration::from_secs(300));
        off.insert(b"a", now);
        assert!(off.is_empty());
    }

    fn bearer_creds() -> Credentials {
        Credentials::Bearer(HashSet::from(["tok-abc".to_owned(), "tok-xyz".to_owned()]))
    }

    #[test]
    fn bearer_accepts_known_tokens() {
        let mut cache = AuthCache::default();
        for h in [&b"Bearer tok-abc"[..], b"bearer tok-xyz"] {
            assert_eq!(
                check_auth(&bearer_auth(), &bearer_creds(), Some(h), &mut cache, Duration::ZERO),
                Ok(())
            );
        }
    }

    #[test]
    fn bearer_challenges_per_rfc_6750() {
        let creds = bearer_creds();
        let mut cache = AuthCache::default();
        let mut check =
            |h: Option<&[u8]>| challenge(check_auth(&bearer_auth(), &creds, h, &mut cache, Duration::ZERO));
        assert_eq!(check(None), "Bearer realm=\"fulcrum\"");
        assert_eq!(check(Some(b"Basic dG9rLWFiYw==")), "Bearer realm=\"fulcrum\"");
        assert_eq!(check(Some(b"Bearer tok-ab")), "Bearer realm=\"fulcrum\", error=\"invalid_token\"");
        assert_eq!(check(Some(b"Bearer tok-abcd")), "Bearer realm=\"fulcrum\", error=\"invalid_token\"");
        let r = check_auth(
            &bearer_auth(),
            &Credentials::None,
            Some(b"Bearer tok-abc"),
            &mut AuthCache::default(),
            Duration::ZERO,
        );
        assert!(r.is_err(), "no tokens loaded fails closed");
    }

    #[test]
    fn realm_is_quoted() {
        assert_eq!(basic_challenge(r#"a "b" \c"#), r#"Basic realm="a \"b\" \\c", charset="UTF-8""#);
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn retry_after(r: Result<(), Refusal>) -> u64 {
        match r {
            Err(Refusal::TooMany { retry_after_secs }) => retry_after_secs,
            other => panic!("expected TooMany, got {other:?}"),
        }
    }

    #[test]
    fn rate_burst_then_refused_then_refilled() {
        let mut limiter = RateLimiter::new(5, 100);
        let client = ip("192.0.2.1");
        for _ in 0..5 {
            assert_eq!(limiter.admit(client, secs(10.0)), Ok(()));
        }
        assert_eq!(retry_after(limiter.admit(client, secs(10.0))), 1);
        // One token comes back every 200 ms.
        assert_eq!(retry_after(limiter.admit(client, secs(10.19))), 1);
        assert_eq!(limiter.admit(client, secs(10.2)), Ok(()));
        assert!(limiter.admit(client, secs(10.2)).is_err());
        // After a full second the whole burst is back.
        for _ in 0..5 {
            assert_eq!(limiter.admit(client, secs(11.2)), Ok(()));
        }
        assert!(limiter.admit(client, secs(11.2)).is_err());
    }

    #[test]
    fn rate_retry_after_is_rounded_up_and_at_least_one() {
        let mut limiter = RateLimiter::new(1, 10);
        let client = ip("192.0.2.1");
        assert_eq!(limiter.admit(client, secs(0.0)), Ok(()));
        assert_eq!(retry_after(limiter.admit(client, secs(0.0))), 1);
        assert_eq!(retry_after(limiter.admit(client, secs(0.999))), 1);
        assert_eq!(limiter.admit(client, secs(1.0)), Ok(()));
        // Zero is taken as one per second.
        let mut zero = RateLimiter::new(0, 0);
        assert_eq!(zero.admit(client, secs(0.0)), Ok(()));
        assert_eq!(retry_after(zero.admit(client, secs(0.5))), 1);
    }

    #[test]
    fn rate_buckets_are_per_client() {
        let mut limiter = RateLimiter::new(1, 10);
        assert_eq!(limiter.admit(ip("192.0.2.1"), Duration::ZERO), Ok(()));
        assert!(limiter.admit(ip("192.0.2.1"), Duration::ZERO).is_err());
        assert_eq!(limiter.admit(ip("192.0.2.2"), Duration::ZERO), Ok(()));
        // IPv4-mapped is the same client as IPv4; IPv6 counts by /64.
        assert!(limiter.admit(ip("::ffff:192.0.2.2"), Duration::ZERO).is_err());
        assert_eq!(limiter.admit(ip("2001:db8:0:1::1"), Duration::ZERO), Ok(()));
        assert!(limiter.admit(ip("2001:db8:0:1::2"), Duration::ZERO).is_err());
        assert_eq!(limiter.admit(ip("2001:db8:0:2::1"), Duration::ZERO), Ok(()));
    }

    #[test]
    fn rate_memory_is_bounded_evicting_least_recently_seen() {
        let mut limiter = RateLimiter::new(1, 2);
        let (a, b, c) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3"));
        let now = Duration::ZERO;
        assert_eq!(limiter.admit(a, now), Ok(()));
        assert_eq!(limiter.admit(b, now), Ok(()));
        assert!(limiter.admit(a, now).is_err(), "a seen again: b is now the least recent");
        assert_eq!(limiter.admit(c, now), Ok(()));
        assert_eq!(limiter.len(), 2);
        assert!(limiter.admit(a, now).is_err(), "a kept its empty bucket");
        assert_eq!(limiter.admit(b, now), Ok(()), "b was evicted and starts full");
        assert_eq!(limiter.len(), 2);
    }

    proptest! {
        /// Over any window from the start, a client gets at most the burst plus
        /// one session per interval elapsed, and memory never passes the bound.
        #[test]
        fn rate_never_exceeds_bucket(
            per_second in 1u32..50,
            max_clients in 1usize..16,
            steps in proptest::collection::vec((0u8..12, 0u64..300_000_000), 1..300),
        ) {
            let mut limiter = RateLimiter::new(per_second, max_clients);
            let mut now = Duration::ZERO;
            let mut admitted: HashMap<u8, u64> = HashMap::new();
            for (client, advance_ns) in steps {
                now += Duration::from_nanos(advance_ns);
                let addr = IpAddr::from([10, 0, 0, client]);
                match limiter.admit(addr, now) {
                    Ok(()) => *admitted.entry(client).or_default() += 1,
                    Err(Refusal::TooMany { retry_after_secs }) => prop_assert!(retry_after_secs >= 1),
                    Err(other) => prop_assert!(false, "unexpected {other:?}"),
                }
                prop_assert!(limiter.len() <= max_clients);
                if max_clients >= 12 {
                    let allowed = u64::from(per_second) + (now.as_secs_f64() * f64::from(per_second)) as u64 + 1;
                    prop_assert!(admitted[&client] <= allowed);
                }
            }
        }

        #[test]
        fn basic_parsing_never_panics(value in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = parse_basic(&value);
            let _ = parse_bearer(&value);
        }
    }
}
