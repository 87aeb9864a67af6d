//! Persistence: keeping a client on the same backend.
//!
//! Four kinds, as `model::Persistence` names them, and what each needs here:
//!
//! - `cookie` in insert mode: no table. Fulcrum sets a cookie whose value is
//!   [`cookie_id`] of the backend (an opaque, stable hash of pool and backend
//!   name, never its address) with [`set_cookie`], reads it back from the
//!   request with [`find_cookie`] and resolves it with [`backend_by_cookie`].
//! - `cookie` with `learn = true`: the backend's own session cookie (e.g.
//!   `JSESSIONID`) is read from its `Set-Cookie` with [`learned_cookie`] and
//!   kept in a cookie map table, a [`StickyTable`] of cookie value → backend.
//! - `source_ip`: an affinity table, a [`StickyTable`] keyed by
//!   [`source_key`] (the client address under its mask).
//! - `header`: no table; [`header_key`] of the header's value is the key fed
//!   to the `maglev` selector.
//!
//! Whether a sticky backend may still be used (a down or disabled one is
//! replaced, a draining one keeps its clients) is the caller's decision: it
//! looks the backend up, checks it, and on replacement inserts the new one.
//!
//! Sans-io like the rest of the core: time comes in as `now`, the reading of
//! any monotonic clock as a `Duration`.

mod cookie;
mod key;
mod table;

pub use cookie::{backend_by_cookie, cookie_id, find_cookie, learned_cookie, set_cookie};
pub use key::{header_key, source_key};
pub use table::StickyTable;
