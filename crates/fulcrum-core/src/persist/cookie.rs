//! Cookie persistence: the id Fulcrum sets in insert mode, reading cookies
//! from a request, writing `Set-Cookie`, and learning an application's cookie
//! from a backend's `Set-Cookie` (RFC 6265 §4.1, §5.2, §5.4).

use std::time::Duration;

use super::key::{key_of, siphash24};
use crate::http::Header;
use crate::model::{BackendId, CookiePersistence, Pool};

/// The key of [`cookie_id`]: "fulcrum/cookie/1" as two little-endian words.
/// Changing it unsticks every client with a cookie: bump the version instead.
const COOKIE_KEY: (u64, u64) = key_of(b"fulcrum/cookie/1");

/// Length of a cookie id: 64 bits in lowercase hex.
const ID_LEN: usize = 16;

/// The value Fulcrum's cookie carries for backend `backend` of pool `pool`
/// in insert mode: 16 lowercase hex digits of SipHash-2-4, under a fixed key,
/// of the two names. Opaque (neither the address nor the name shows) and
/// stable: every node of a cluster, every restart and every release gives the
/// same id, so a client keeps its backend across all of them; renaming the
/// backend or its pool changes it. Not a secret: anyone who knows the names
/// and this function can compute it, which lets a client pick a backend it
/// could reach by chance anyway, nothing more.
pub fn cookie_id(pool: &str, backend: &str) -> String {
    format!("{:016x}", IdHasher::new(pool).hash(backend))
}

/// The backend of `pool` whose [`cookie_id`] is `value`, or `None` for a
/// value that names none (forged, from before a rename, from another pool, or
/// not an id at all: anything but 16 lowercase hex digits). The caller then
/// treats the request as having no cookie. Costs one hash per backend.
pub fn backend_by_cookie(pool: &Pool, value: &str) -> Option<BackendId> {
    if value.len() != ID_LEN || !value.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let wanted = u64::from_str_radix(value, 16).ok()?;
    let mut hasher = IdHasher::new(&pool.name);
    pool.backends.iter().find(|b| hasher.hash(&b.name) == wanted).map(|b| b.id)
}

/// Hashes one pool's backend names, reusing one buffer. The input is the
/// pool name's length (8 bytes, little-endian), the pool name, then the
/// backend name, so that no two (pool, backend) pairs give the same bytes.
struct IdHasher {
    buf: Vec<u8>,
    prefix: usize,
}

impl IdHasher {
    fn new(pool: &str) -> IdHasher {
        let mut buf = Vec::with_capacity(8 + pool.len() + 32);
        buf.extend_from_slice(&(pool.len() as u64).to_le_bytes());
        buf.extend_from_slice(pool.as_bytes());
        let prefix = buf.len();
        IdHasher { buf, prefix }
    }

    fn hash(&mut self, backend: &str) -> u64 {
        self.buf.truncate(self.prefix);
        self.buf.extend_from_slice(backend.as_bytes());
        siphash24(COOKIE_KEY, &self.buf)
    }
}

/// The value of the cookie called `name` in a request: looked for in every
/// `Cookie` field of `headers`, in order (HTTP/2 and some clients send
/// several), across `a=1; b=2` pairs. The name matches exactly (cookie names
/// are case-sensitive); the value is trimmed of spaces and tabs and of one
/// pair of surrounding double quotes. The first match wins. A pair without
/// `=` and a value that is not UTF-8 are skipped. `None` if no pair matches.
pub fn find_cookie<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .filter(|h| h.is("cookie"))
        .flat_map(|h| h.value.split(|&b| b == b';'))
        .filter_map(pair)
        .filter(|(n, _)| *n == name.as_bytes())
        .find_map(|(_, v)| std::str::from_utf8(unquote(v)).ok())
}

/// The value of the `Set-Cookie` header Fulcrum adds in insert mode:
/// `NAME=VALUE; Path=/; Max-Age=1800; HttpOnly; SameSite=Lax`, each attribute
/// as configured in `c`. Max-Age is the ttl in whole seconds, rounded up and at
/// least 1 (a Max-Age of 0 would delete the cookie). `SameSite=None` gets
/// `Secure` too, since browsers drop a `SameSite=None` cookie without it. A
/// `path` of "" leaves the Path attribute out (the browser then uses the
/// request's directory). Assumes config validation kept `;`, control
/// characters and spaces out of the name and path, and `value` is a
/// [`cookie_id`].
pub fn set_cookie(c: &CookiePersistence, value: &str) -> String {
    let mut out = format!("{}={}", c.name, value);
    if !c.path.is_empty() {
        out.push_str("; Path=");
        out.push_str(&c.path);
    }
    out.push_str(&format!("; Max-Age={}", max_age(c.ttl)));
    if c.http_only {
        out.push_str("; HttpOnly");
    }
    if let Some(same_site) = &c.same_site {
        out.push_str("; SameSite=");
        out.push_str(same_site);
        if same_site.eq_ignore_ascii_case("none") {
            out.push_str("; Secure");
        }
    }
    out
}

/// Whole seconds, rounded up, at least 1.
fn max_age(ttl: Duration) -> u64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    secs.max(1)
}

/// Learn mode: the value of the cookie `name` set by one `Set-Cookie` field
/// value from a backend (`JSESSIONID=abc; Path=/; HttpOnly` → `abc`), trimmed
/// and unquoted as in [`find_cookie`]. `None` when the field sets another
/// cookie, when the value is empty or not UTF-8, and when the field deletes
/// the cookie (`Max-Age` of zero or less, RFC 6265 §5.2.2; the last Max-Age
/// counts, one that is not a number is ignored). An `Expires` date in the past
/// is not detected: the core has no wall clock, and a deleting field with a
/// non-empty value only adds an entry that is never looked up and expires by
/// TTL.
pub fn learned_cookie<'a>(set_cookie_value: &'a [u8], name: &str) -> Option<&'a str> {
    let mut parts = set_cookie_value.split(|&b| b == b';');
    let (n, v) = pair(parts.next()?)?;
    if n != name.as_bytes() {
        return None;
    }
    let value = unquote(v);
    if value.is_empty() {
        return None;
    }
    let mut deleting = false;
    for (attribute, arg) in parts.filter_map(pair) {
        if attribute.eq_ignore_ascii_case(b"max-age") {
            if let Some(expires_now) = max_age_deletes(arg) {
                deleting = expires_now;
            }
        }
    }
    if deleting {
        return None;
    }
    std::str::from_utf8(value).ok()
}

/// Whether a Max-Age argument expires the cookie at once (zero or negative),
/// or `None` if it is not a number and so is ignored.
fn max_age_deletes(arg: &[u8]) -> Option<bool> {
    let (negative, digits) = match arg.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, arg),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(negative || digits.iter().all(|&d| d == b'0'))
}

/// One `name=value` item, both trimmed of spaces and tabs; `None` without `=`.
fn pair(item: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = item.iter().position(|&b| b == b'=')?;
    Some((trim(&item[..eq]), trim(&item[eq + 1..])))
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(s.len());
    let end = s.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(start, |i| i + 1);
    &s[start..end]
}

/// A cookie value without one pair of surrounding double quotes (RFC 6265
/// allows `name="value"`; the quotes are not part of the value here).
fn unquote(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, value: &str) -> Header {
        Header { name: name.to_owned(), value: value.as_bytes().to_vec() }
    }

    fn pool() -> Pool {
        let text = r#"
[[service]]
name = "web"
listen = ["127.0.0.1:8080"]
mode = "http"
pool = "web"

[[pool]]
name = "web"
  [[pool.backend]]
  name = "web1"
  address = "127.0.0.1:9001"
  [[pool.backend]]
  name = "web2"
  address = "127.0.0.1:9002"
  [[pool.backend]]
  name = "web3"
  address = "127.0.0.1:9003"
"#;
        match crate::config::load(text) {
            Ok(loaded) => loaded.model.pools.into_iter().next().unwrap(),
            Err(errors) => panic!("test config invalid: {errors:?}"),
        }
    }

    fn insert_mode() -> CookiePersistence {
        CookiePersistence {
            name: "FULCRUM".to_owned(),
            learn: false,
            path: "/".to_owned(),
            ttl: Duration::from_secs(30 * 60),
            http_only: true,
            same_site: Some("Lax".to_owned()),
            max_entries: 10_000,
        }
    }

    #[test]
    fn cookie_id_is_16_lowercase_hex_stable_and_opaque() {
        let id = cookie_id("web", "web1");
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{id}");
        assert_eq!(id, cookie_id("web", "web1"));
        // Pinned across releases: this value is in clients' cookie jars.
        assert_eq!(
            u64::from_str_radix(&id, 16).unwrap(),
            siphash24(COOKIE_KEY, b"\x03\0\0\0\0\0\0\0webweb1")
        );
        assert!(!id.contains("web") && !id.contains("9001"));
        assert_ne!(id, cookie_id("web", "web2"));
        assert_ne!(id, cookie_id("api", "web1"));
        // The pool name's length separates the names: no two pairs collide by
        // concatenation.
        assert_ne!(cookie_id("ab", "c"), cookie_id("a", "bc"));
    }

    #[test]
    fn backend_by_cookie_finds_each_backend() {
        let pool = pool();
        for b in &pool.backends {
            assert_eq!(backend_by_cookie(&pool, &cookie_id(&pool.name, &b.name)), Some(b.id));
        }
    }

    #[test]
    fn backend_by_cookie_refuses_forged_and_foreign_ids() {
        let pool = pool();
        let good = cookie_id("web", "web2");
        assert_eq!(backend_by_cookie(&pool, &cookie_id("other", "web2")), None, "another pool's id");
        assert_eq!(backend_by_cookie(&pool, &cookie_id("web", "web9")), None, "an unknown backend");
        assert_eq!(backend_by_cookie(&pool, "0000000000000000"), None);
        assert_eq!(backend_by_cookie(&pool, &good.to_uppercase()), None, "ids are lowercase");
        assert_eq!(backend_by_cookie(&pool, &good[..15]), None, "too short");
        assert_eq!(backend_by_cookie(&pool, &format!("{good}0")), None, "too long");
        assert_eq!(backend_by_cookie(&pool, &format!("+{}", &good[1..])), None, "a sign is not hex");
        assert_eq!(backend_by_cookie(&pool, "127.0.0.1:9002"), None, "an address is not an id");
        assert_eq!(backend_by_cookie(&pool, ""), None);
    }

    #[test]
    fn find_cookie_reads_pairs_exactly() {
        let headers = [header("Host", "example.com"), header("Cookie", "a=1; FULCRUM=abc ;b=2")];
        assert_eq!(find_cookie(&headers, "FULCRUM"), Some("abc"));
        assert_eq!(find_cookie(&headers, "a"), Some("1"));
        assert_eq!(find_cookie(&headers, "b"), Some("2"));
        assert_eq!(find_cookie(&headers, "fulcrum"), None, "names are case-sensitive");
        assert_eq!(find_cookie(&headers, "FULCRUM2"), None);
        assert_eq!(find_cookie(&headers, "FULC"), None);
        assert_eq!(find_cookie(&[], "FULCRUM"), None);
    }

    #[test]
    fn find_cookie_strips_quotes() {
        let headers = [header("cookie", "FULCRUM=\"0123456789abcdef\"; x=\"\"; y=\"; z=\"q")];
        assert_eq!(find_cookie(&headers, "FULCRUM"), Some("0123456789abcdef"));
        assert_eq!(find_cookie(&headers, "x"), Some(""));
        assert_eq!(find_cookie(&headers, "y"), Some("\""), "a lone quote is kept");
        assert_eq!(find_cookie(&headers, "z"), Some("\"q"));
    }

    #[test]
    fn find_cookie_looks_across_several_cookie_fields_first_wins() {
        let headers = [
            header("Cookie", "a=1"),
            header("X-Cookie", "FULCRUM=not-this-header"),
            header("COOKIE", "b=2; FULCRUM=first"),
            header("cookie", "FULCRUM=second"),
        ];
        assert_eq!(find_cookie(&headers, "FULCRUM"), Some("first"));
        assert_eq!(find_cookie(&headers, "a"), Some("1"));
        assert_eq!(find_cookie(&headers, "b"), Some("2"));
    }

    #[test]
    fn find_cookie_skips_malformed_pairs() {
        let headers = [Header {
            name: "Cookie".to_owned(),
            value: b"junk; ;FULCRUM=\xff\xfe; =x; FULCRUM=ok".to_vec(),
        }];
        assert_eq!(find_cookie(&headers, "FULCRUM"), Some("ok"), "not UTF-8 is skipped");
        assert_eq!(find_cookie(&headers, "junk"), None, "a pair needs '='");
        assert_eq!(find_cookie(&headers, ""), Some("x"));
    }

    #[test]
    fn set_cookie_carries_the_configured_attributes() {
        let c = insert_mode();
        assert_eq!(
            set_cookie(&c, "0123456789abcdef"),
            "FULCRUM=0123456789abcdef; Path=/; Max-Age=1800; HttpOnly; SameSite=Lax"
        );
        let other = CookiePersistence {
            name: "LB".to_owned(),
            path: "/app".to_owned(),
            ttl: Duration::from_millis(1500),
            http_only: false,
            same_site: None,
            ..insert_mode()
        };
        assert_eq!(set_cookie(&other, "v"), "LB=v; Path=/app; Max-Age=2");
    }

    #[test]
    fn set_cookie_never_deletes_and_secures_samesite_none() {
        let tiny = CookiePersistence { ttl: Duration::from_millis(10), ..insert_mode() };
        assert!(set_cookie(&tiny, "v").contains("; Max-Age=1;"), "{}", set_cookie(&tiny, "v"));
        let zero = CookiePersistence { ttl: Duration::ZERO, path: String::new(), ..insert_mode() };
        assert_eq!(set_cookie(&zero, "v"), "FULCRUM=v; Max-Age=1; HttpOnly; SameSite=Lax");
        let none = CookiePersistence { same_site: Some("None".to_owned()), ..insert_mode() };
        assert!(set_cookie(&none, "v").ends_with("; SameSite=None; Secure"));
    }

    #[test]
    fn set_cookie_round_trips_through_find_cookie() {
        let value = cookie_id("web", "web3");
        let set = set_cookie(&insert_mode(), &value);
        // What a browser sends back: the pair alone.
        let pair = set.split(';').next().unwrap();
        let headers = [header("Cookie", &format!("other=1; {pair}"))];
        let pool = pool();
        let found = find_cookie(&headers, "FULCRUM").and_then(|v| backend_by_cookie(&pool, v));
        assert_eq!(found, Some(BackendId(2)));
    }

    #[test]
    fn learned_cookie_takes_the_named_cookie() {
        assert_eq!(learned_cookie(b"JSESSIONID=abc; Path=/; HttpOnly", "JSESSIONID"), Some("abc"));
        assert_eq!(learned_cookie(b"JSESSIONID=abc", "JSESSIONID"), Some("abc"));
        assert_eq!(learned_cookie(b" JSESSIONID = \"abc\" ;Secure", "JSESSIONID"), Some("abc"));
        assert_eq!(learned_cookie(b"JSESSIONID=abc; Max-Age=3600", "JSESSIONID"), Some("abc"));
        assert_eq!(learned_cookie(b"PHPSESSID=abc; Path=/", "JSESSIONID"), None, "another cookie");
        assert_eq!(learned_cookie(b"jsessionid=abc", "JSESSIONID"), None, "names are case-sensitive");
        assert_eq!(
            learned_cookie(b"Path=/; JSESSIONID=abc", "JSESSIONID"),
            None,
            "only the first pair is the cookie"
        );
        assert_eq!(learned_cookie(b"JSESSIONID", "JSESSIONID"), None);
        assert_eq!(learned_cookie(b"", "JSESSIONID"), None);
        assert_eq!(learned_cookie(b"JSESSIONID=\xff", "JSESSIONID"), None);
    }

    #[test]
    fn learned_cookie_ignores_deleting_cookies() {
        assert_eq!(learned_cookie(b"JSESSIONID=abc; Max-Age=0; Path=/", "JSESSIONID"), None);
        assert_eq!(learned_cookie(b"JSESSIONID=abc; max-age=000", "JSESSIONID"), None);
        assert_eq!(learned_cookie(b"JSESSIONID=abc; MAX-AGE=-1", "JSESSIONID"), None);
        assert_eq!(learned_cookie(b"JSESSIONID=; Path=/", "JSESSIONID"), None, "an empty value");
        assert_eq!(learned_cookie(b"JSESSIONID=\"\"", "JSESSIONID"), None, "an empty quoted value");
        // The last Max-Age counts; one that is not a number is ignored.
        assert_eq!(learned_cookie(b"JSESSIONID=abc; Max-Age=0; Max-Age=60", "JSESSIONID"), Some("abc"));
        assert_eq!(learned_cookie(b"JSESSIONID=abc; Max-Age=60; Max-Age=0", "JSESSIONID"), None);
        assert_eq!(learned_cookie(b"JSESSIONID=abc; Max-Age=soon", "JSESSIONID"), Some("abc"));
        assert_eq!(learned_cookie(b"JSESSIONID=abc; Max-Age=-", "JSESSIONID"), Some("abc"));
        assert_eq!(
            learned_cookie(b"JSESSIONID=abc; Max-Age=99999999999999999999999", "JSESSIONID"),
            Some("abc")
        );
    }
}
