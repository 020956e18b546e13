//! Waiting on a condition instead of sleeping: poll with a deadline, and fail saying what was
//! awaited. Tests synchronise with this (or with an event); a fixed sleep is left only where
//! the passing of time is itself what a test checks.

use std::fmt::Debug;
use std::time::{Duration, Instant};

/// How often [`eventually`] looks again.
pub const POLL_EVERY: Duration = Duration::from_millis(20);

/// Polls `check` until it returns `Some`, and returns that; panics naming `what` once
/// `within` has passed.
#[track_caller]
pub fn eventually<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    until(what, within, || check().ok_or("not yet"))
}

/// Polls `check` until it returns `Ok`, and returns that; panics naming `what` and the last
/// `Err` (what was seen instead) once `within` has passed.
#[track_caller]
pub fn until<T, E: Debug>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for {what}; last seen: {last:?}"
            ),
        }
        std::thread::sleep(POLL_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_value_found() {
        let mut n = 0;
        let got = eventually("the third look", Duration::from_secs(5), || {
            n += 1;
            (n == 3).then_some(n * 10)
        });
        assert_eq!(got, 30);
    }

    #[test]
    #[should_panic(expected = "waiting for nothing")]
    fn fails_at_the_deadline() {
        eventually::<()>("nothing", Duration::from_millis(50), || None);
    }

    #[test]
    #[should_panic(expected = "last seen: 41")]
    fn says_what_it_saw_last() {
        until::<(), _>("42", Duration::from_millis(50), || Err(41));
    }
}
