//! A backend's health: active checks counted by rise/fall, passive outlier
//! ejection with a backoff that grows on repeat offences, slow start, and the
//! current state derived from the operator's target state. No probing here:
//! the daemon probes and reports results; `now` is any monotonic clock's
//! reading as a `Duration`, passed in.

use std::time::Duration;

use crate::model::{CheckKind, HealthCheck, PassiveCheck, TargetState};

/// Whether a backend answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Up,
    Down,
}

/// What a backend is now, given what the operator asked of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CurrentState {
    Enabled,
    /// Target drain, sessions still open.
    Draining,
    /// Target drain, no session left.
    Drained,
    Disabled,
}

/// The current state for a target state and the sessions open now.
pub fn current_state(target: TargetState, sessions: u64) -> CurrentState {
    match target {
        TargetState::Enabled => CurrentState::Enabled,
        TargetState::Drain if sessions > 0 => CurrentState::Draining,
        TargetState::Drain => CurrentState::Drained,
        TargetState::Disabled => CurrentState::Disabled,
    }
}

/// A change of health, to log once and feed to the selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub health: Health,
    pub reason: String,
}

/// One backend's health state machine.
#[derive(Clone, Debug)]
pub struct BackendHealth {
    health: Health,
    /// Why the backend has its health (the last check's verdict or the ejection).
    reason: String,
    rise: u32,
    fall: u32,
    /// Whether an active check runs; without one an ejection ends by time alone.
    active: bool,
    passive: PassiveCheck,
    /// Consecutive active results against the current health.
    streak: u32,
    /// Consecutive failed sessions.
    failures: u32,
    /// While ejected, when the ejection ends.
    ejected_until: Option<Duration>,
    /// Ejections so far in this run of offences; each doubles the next.
    offences: u32,
    /// When the backend last came up after being down (slow start runs from here).
    up_since: Option<Duration>,
    /// When the last ejection was made, to forgive old offences.
    last_ejection: Option<Duration>,
}

impl BackendHealth {
    /// A backend starts up: traffic flows at once, and checks take it down
    /// after `fall` failures. It does not slow-start from process start.
    pub fn new(check: &HealthCheck, passive: &PassiveCheck) -> Self {
        let active = check.kind != CheckKind::None;
        BackendHealth {
            health: Health::Up,
            reason: if active { "not checked yet".into() } else { "no active check".into() },
            rise: check.rise.max(1),
            fall: check.fall.max(1),
            active,
            passive: passive.clone(),
            streak: 0,
            failures: 0,
            ejected_until: None,
            offences: 0,
            up_since: None,
            last_ejection: None,
        }
    }

    pub fn health(&self) -> Health {
        self.health
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Whether passive checks have ejected the backend (until when).
    pub fn ejected_until(&self) -> Option<Duration> {
        self.ejected_until
    }

    /// Takes an active check's result: `Err` carries why it failed
    /// ("HTTP 503 from /healthz"). Returns the change when health flips.
    pub fn check_result(&mut self, result: Result<String, String>, now: Duration) -> Option<Change> {
        if let Some(until) = self.ejected_until {
            if now < until {
                return None; // ejected: checks count only after the ejection ends
            }
        }
        match (self.health, result) {
            (Health::Up, Ok(verdict)) => {
                self.streak = 0;
                self.reason = verdict;
                None
            }
            (Health::Up, Err(why)) => {
                self.streak += 1;
                if self.streak >= self.fall {
                    let reason = format!("{why} ({} failed checks in a row)", self.streak);
                    Some(self.go(Health::Down, reason, now))
                } else {
                    None
                }
            }
            (Health::Down, Ok(verdict)) => {
                self.streak += 1;
                if self.streak >= self.rise {
                    let reason = format!("{verdict} ({} passed checks in a row)", self.streak);
                    Some(self.go(Health::Up, reason, now))
                } else {
                    None
                }
            }
            (Health::Down, Err(why)) => {
                self.streak = 0;
                if self.ejected_until.is_none() {
                    self.reason = why;
                }
                None
            }
        }
    }

    /// A real session succeeded on the backend.
    pub fn session_ok(&mut self) {
        self.failures = 0;
    }

    /// A real session failed on the backend (connect failure, 5xx, reset).
    /// After `consecutive_failures` in a row it is ejected, if `may_eject`
    /// (the pool is under its `max_ejected_percent`). Returns the change.
    pub fn session_failed(&mut self, why: &str, now: Duration, may_eject: bool) -> Option<Change> {
        let limit = self.passive.consecutive_failures;
        if limit == 0 || self.health == Health::Down {
            return None;
        }
        self.failures += 1;
        if self.failures < limit || !may_eject {
            return None;
        }
        // A backend that behaved for a whole max_ejection is forgiven its past.
        if self.last_ejection.is_some_and(|t| now.saturating_sub(t) > self.passive.max_ejection * 2) {
            self.offences = 0;
        }
        let factor = 1u32.checked_shl(self.offences.min(20)).unwrap_or(u32::MAX);
        let length = self.passive.ejection.saturating_mul(factor).min(self.passive.max_ejection);
        self.offences += 1;
        self.last_ejection = Some(now);
        self.ejected_until = Some(now + length);
        let reason =
            format!("ejected for {length:?} after {} failed sessions in a row: {why}", self.failures);
        Some(self.go(Health::Down, reason, now))
    }

    /// Ends an ejection whose time is over when no active check runs (with
    /// one, the backend returns through `rise` passing checks). Call it
    /// about once a check interval.
    pub fn tick(&mut self, now: Duration) -> Option<Change> {
        let until = self.ejected_until?;
        if now < until {
            return None;
        }
        if self.active {
            self.ejected_until = None;
            self.streak = 0;
            self.reason = "ejection over, waiting for passing checks".into();
            return None;
        }
        Some(self.go(Health::Up, "ejection over".into(), now))
    }

    /// The weight to balance with now: during slow start it ramps from 1 to
    /// `weight` over `slow_start` since the backend came back up.
    pub fn effective_weight(&self, weight: u32, slow_start: Option<Duration>, now: Duration) -> u32 {
        match (slow_start, self.up_since) {
            (Some(ramp), Some(since)) if !ramp.is_zero() => {
                let elapsed = now.saturating_sub(since);
                if elapsed >= ramp {
                    weight
                } else {
                    let share = elapsed.as_secs_f64() / ramp.as_secs_f64();
                    ((f64::from(weight) * share).ceil() as u32).clamp(1, weight)
                }
            }
            _ => weight,
        }
    }

    fn go(&mut self, health: Health, reason: String, now: Duration) -> Change {
        self.health = health;
        self.reason = reason.clone();
        self.streak = 0;
        self.failures = 0;
        if health == Health::Up {
            self.ejected_until = None;
            self.up_since = Some(now);
        }
        Change { health, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(kind: CheckKind) -> HealthCheck {
        HealthCheck {
            kind,
            interval: Duration::from_secs(1),
            jitter: Duration::ZERO,
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 3,
        }
    }

    fn passive(n: u32) -> PassiveCheck {
        PassiveCheck {
            consecutive_failures: n,
            ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(60),
            max_ejected_percent: 100,
        }
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn fall_then_rise() {
        let mut h = BackendHealth::new(&check(CheckKind::Tcp), &passive(0));
        assert_eq!(h.health(), Health::Up);
        assert_eq!(h.check_result(Err("refused".into()), S(1)), None);
        assert_eq!(h.check_result(Err("refused".into()), S(2)), None);
        let down = h.check_result(Err("connect refused".into()), S(3)).unwrap();
        assert_eq!(down.health, Health::Down);
        assert!(down.reason.starts_with("connect refused"), "{}", down.reason);
        assert_eq!(h.check_result(Ok("ok".into()), S(4)), None);
        assert_eq!(
            h.check_result(Err("timeout after 500ms".into()), S(5)),
            None,
            "a failure resets the rise count"
        );
        assert_eq!(h.reason(), "timeout after 500ms");
        assert_eq!(h.check_result(Ok("ok".into()), S(6)), None);
        assert_eq!(h.check_result(Ok("HTTP 200".into()), S(7)).unwrap().health, Health::Up);
    }

    #[test]
    fn a_success_resets_the_fall_count() {
        let mut h = BackendHealth::new(&check(CheckKind::Tcp), &passive(0));
        for t in 0..20 {
            let r = if t % 3 == 2 { Ok("ok".to_owned()) } else { Err("x".to_owned()) };
            assert_eq!(h.check_result(r, S(t)), None);
        }
        assert_eq!(h.health(), Health::Up);
    }

    #[test]
    fn ejection_grows_and_ends_by_time_without_active_checks() {
        let mut h = BackendHealth::new(&check(CheckKind::None), &passive(3));
        assert_eq!(h.session_failed("502", S(0), true), None);
        h.session_ok();
        assert_eq!(h.session_failed("502", S(0), true), None);
        assert_eq!(h.session_failed("502", S(0), true), None);
        let c = h.session_failed("HTTP 502", S(1), true).unwrap();
        assert_eq!(c.health, Health::Down);
        assert!(c.reason.contains("10s") && c.reason.contains("HTTP 502"), "{}", c.reason);
        assert_eq!(h.tick(S(10)), None);
        assert_eq!(h.tick(S(11)).unwrap().health, Health::Up);
        // A repeat offence doubles the ejection, up to max_ejection.
        for _ in 0..3 {
            h.session_failed("reset", S(12), true);
        }
        assert_eq!(h.ejected_until(), Some(S(32)));
        assert_eq!(h.tick(S(32)).unwrap().health, Health::Up);
        for _ in 0..3 {
            h.session_failed("reset", S(33), true);
        }
        assert_eq!(h.ejected_until(), Some(S(73)));
        assert_eq!(h.tick(S(73)).unwrap().health, Health::Up);
        for _ in 0..3 {
            h.session_failed("reset", S(74), true);
        }
        assert_eq!(h.ejected_until(), Some(S(134)), "capped at max_ejection");
    }

    #[test]
    fn an_ejected_backend_returns_through_the_active_check() {
        let mut h = BackendHealth::new(&check(CheckKind::Tcp), &passive(1));
        assert_eq!(h.session_failed("refused", S(0), true).unwrap().health, Health::Down);
        assert_eq!(h.check_result(Ok("ok".into()), S(5)), None, "checks do not count while ejected");
        assert_eq!(h.check_result(Ok("ok".into()), S(6)), None);
        assert_eq!(h.tick(S(10)), None);
        assert_eq!(h.health(), Health::Down);
        assert_eq!(h.check_result(Ok("ok".into()), S(11)), None);
        assert_eq!(h.check_result(Ok("ok".into()), S(12)).unwrap().health, Health::Up);
    }

    #[test]
    fn ejection_respects_the_pool_cap_and_the_off_switch() {
        let mut h = BackendHealth::new(&check(CheckKind::None), &passive(1));
        assert_eq!(h.session_failed("x", S(0), false), None);
        assert_eq!(h.health(), Health::Up);
        let mut off = BackendHealth::new(&check(CheckKind::None), &passive(0));
        for _ in 0..100 {
            assert_eq!(off.session_failed("x", S(0), true), None);
        }
    }

    #[test]
    fn slow_start_ramps_after_coming_back_only() {
        let mut h = BackendHealth::new(&check(CheckKind::Tcp), &passive(0));
        let ramp = Some(S(10));
        assert_eq!(h.effective_weight(100, ramp, S(0)), 100, "no slow start at process start");
        for t in 0..3 {
            h.check_result(Err("x".into()), S(t));
        }
        h.check_result(Ok("ok".into()), S(20));
        h.check_result(Ok("ok".into()), S(20));
        assert_eq!(h.effective_weight(100, ramp, S(20)), 1);
        assert_eq!(h.effective_weight(100, ramp, S(25)), 50);
        assert_eq!(h.effective_weight(100, ramp, S(30)), 100);
        assert_eq!(h.effective_weight(100, None, S(21)), 100);
    }

    #[test]
    fn current_state_follows_target_and_sessions() {
        assert_eq!(current_state(TargetState::Enabled, 3), CurrentState::Enabled);
        assert_eq!(current_state(TargetState::Drain, 3), CurrentState::Draining);
        assert_eq!(current_state(TargetState::Drain, 0), CurrentState::Drained);
        assert_eq!(current_state(TargetState::Disabled, 3), CurrentState::Disabled);
    }

    proptest::proptest! {
        /// Whatever the sequence of results, health changes only as reported,
        /// and a change is never reported twice in a row.
        #[test]
        fn changes_are_reported_exactly_once(events in proptest::collection::vec(0u8..4, 0..200)) {
            let mut h = BackendHealth::new(&check(CheckKind::Tcp), &passive(2));
            let mut last = h.health();
            for (t, e) in events.into_iter().enumerate() {
                let now = S(t as u64);
                let change = match e {
                    0 => h.check_result(Ok("ok".into()), now),
                    1 => h.check_result(Err("bad".into()), now),
                    2 => h.session_failed("5xx", now, true),
                    _ => h.tick(now),
                };
                if let Some(c) = change {
                    proptest::prop_assert_ne!(c.health, last);
                    last = c.health;
                }
                proptest::prop_assert_eq!(h.health(), last);
            }
        }
    }
}
