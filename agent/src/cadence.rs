//! The one clock grid of the agent's periodic work. Every task that runs "every P" (the
//! upstream probers and scrapers, the /proc sampler, the ticker, the group poller) ticks at
//! the multiples of P counted from one process-wide epoch, so tasks with equal periods, or
//! periods that divide one another (250 ms and 1 s), come due in the same timer turn: an
//! idle agent wakes once per grid point instead of once per task. Wake-ups, not the work
//! done in them, are most of an idle agent's CPU (docs/benchmarks.md, issue 17).

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

/// The shortest period a cadence keeps; shorter ones are raised to it.
pub const MIN_PERIOD: Duration = Duration::from_millis(10);

/// The grid's origin: the first moment any cadence was asked for (the agent's start).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The first grid point of `period` strictly after `now`.
fn next_point(epoch: Instant, now: Instant, period: Duration) -> Instant {
    let period_ns = period.as_nanos().max(1);
    let index = now.saturating_duration_since(epoch).as_nanos() / period_ns + 1;
    epoch + Duration::from_nanos(u64::try_from(index * period_ns).unwrap_or(u64::MAX))
}

/// Ticks every `period` on the grid. The first tick is at once; each later one is the next
/// grid point after the caller asks, so a tick missed while the caller was busy (a probe
/// longer than its period) is skipped, never made up in a burst.
#[derive(Debug)]
pub struct Cadence {
    period: Duration,
    started: bool,
}

impl Cadence {
    /// A cadence of `period` (at least [`MIN_PERIOD`]).
    pub fn every(period: Duration) -> Self {
        // Fixes the epoch no later than the first cadence's creation.
        let _ = epoch();
        Self {
            period: period.max(MIN_PERIOD),
            started: false,
        }
    }

    /// Waits for the next tick.
    pub async fn tick(&mut self) {
        if !self.started {
            self.started = true;
            return;
        }
        tokio::time::sleep_until(next_point(epoch(), Instant::now(), self.period)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_lie_on_multiples_of_the_period_from_the_epoch() {
        let e = Instant::now();
        let ms = Duration::from_millis;
        let second = Duration::from_secs(1);
        assert_eq!(next_point(e, e, second), e + second);
        assert_eq!(next_point(e, e + ms(999), second), e + second);
        assert_eq!(
            next_point(e, e + second, second),
            e + ms(2000),
            "strictly after: a task that just ticked waits a whole period"
        );
        assert_eq!(
            next_point(e, e + ms(3700), second),
            e + ms(4000),
            "a late caller skips to the next point, no burst"
        );
        // A 250 ms task's points include every 1 s task's.
        assert_eq!(next_point(e, e + ms(760), ms(250)), e + ms(1000));
    }

    #[tokio::test]
    async fn the_first_tick_is_at_once_and_each_later_one_the_next_point() {
        let period = Duration::from_millis(50);
        let mut c = Cadence::every(period);
        let first = tokio::time::timeout(Duration::ZERO, c.tick()).await;
        assert!(first.is_ok(), "the first tick waits for nothing");
        for _ in 0..3 {
            let asked = Instant::now();
            c.tick().await;
            let due = next_point(epoch(), asked, period);
            assert!(Instant::now() >= due, "a tick before its grid point");
        }
    }
}
