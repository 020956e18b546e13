//! When /proc is sampled: every `--proc-interval`, and at once when a worker says hello,
//! for every pid the registry lists, on tokio's blocking pool (a read of /proc can stall on
//! a sick process, and must never stall a probe). Results go back into the registry, where
//! the verdict function reads them as plain data.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::sources::proc::ProcSource;
use crate::state::registry::Registry;

/// Samples every known pid each `interval` (and whenever `wake` is notified, for a new
/// worker) until `stop`.
pub async fn watch(
    registry: Arc<Registry>,
    source: Arc<dyn ProcSource>,
    interval: Duration,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
            () = wake.notified() => {}
        }
        let targets = registry.current().proc_targets();
        if targets.is_empty() {
            continue;
        }
        let source = Arc::clone(&source);
        let sampled = tokio::task::spawn_blocking(move || {
            targets
                .into_iter()
                .map(|t| {
                    let result = source.sample(t.pid);
                    (t, result)
                })
                .collect::<Vec<_>>()
        });
        let results = tokio::select! {
            () = stop.cancelled() => return,
            r = sampled => r,
        };
        match results {
            Ok(results) => registry.update(|state| {
                for (target, result) in results {
                    state.apply_sample(&target, result);
                }
            }),
            Err(e) => tracing::error!(error = %e, "/proc sampling task failed"),
        }
    }
}
