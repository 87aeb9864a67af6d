//! The one monotonic clock the daemon hands to the core: `now()` is the time
//! since the process first asked, as the `Duration` core functions take.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static EPOCH: OnceLock<Instant> = OnceLock::new();

pub fn now() -> Duration {
    EPOCH.get_or_init(Instant::now).elapsed()
}
