//! The one /proc sampler, for workers and upstreams alike: every `--proc-interval`, and at
//! once when a worker says hello or disconnects, it samples every watched process and looks
//! for the upstreams' processes not found yet (or gone), on tokio's blocking pool (a read of
//! /proc can stall on a sick process, and must never stall a probe). A found process is not
//! looked for again while its pid keeps its start time (the sample checks that). Results
//! go back through the [`ProcSamples`] handle, where [`crate::state::proc_track`]'s rules
//! apply and the verdict function reads them as plain data.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::sources::proc::discover::{self, Wanted};
use crate::sources::proc::ProcSource;
use crate::state::registry::{ProcJob, ProcResult, ProcSamples, ProcTarget};

/// Where and how often the sampler reads.
pub struct Sampler {
    /// Samples of one pid (fixtures in tests).
    pub source: Arc<dyn ProcSource>,
    /// The /proc folder searched for the upstreams' processes.
    pub proc_root: PathBuf,
    /// `--proc-interval`.
    pub interval: Duration,
}

/// Runs the sampler until `stop`; `wake` asks for a round at once.
pub async fn watch(
    samples: ProcSamples,
    sampler: Sampler,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let sampler = Arc::new(sampler);
    let mut ticker = tokio::time::interval(sampler.interval.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
            () = wake.notified() => {}
        }
        let (targets, exclude) = samples.targets();
        if targets.is_empty() {
            continue;
        }
        let sampler = Arc::clone(&sampler);
        let round = tokio::task::spawn_blocking(move || {
            targets
                .into_iter()
                .map(|target| sampler.run(target, &exclude))
                .collect::<Vec<_>>()
        });
        let results = tokio::select! {
            () = stop.cancelled() => return,
            r = round => r,
        };
        match results {
            Ok(results) => samples.record(results),
            Err(e) => tracing::error!(error = %e, "/proc sampling task failed"),
        }
    }
}

impl Sampler {
    /// Does one job (blocking).
    fn run(&self, target: ProcTarget, exclude: &[u32]) -> ProcResult {
        match &target.job {
            ProcJob::Sample(pid) => ProcResult {
                sample: Some(self.source.sample(*pid)),
                discovered: None,
                target,
            },
            ProcJob::Discover { ports, cmdline } => {
                let wanted = Wanted {
                    ports: ports.as_slice(),
                    cmdline: cmdline.as_deref(),
                };
                let found = discover::find(&self.proc_root, wanted, exclude);
                // Sampled in the same round, so a new process is judged at once.
                let sample = found.as_ref().ok().map(|w| self.source.sample(w.pid));
                ProcResult {
                    discovered: Some(found),
                    sample,
                    target,
                }
            }
        }
    }
}
