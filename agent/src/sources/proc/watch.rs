//! The one /proc sampler, for workers and upstreams alike: every `--proc-interval`, and at
//! once when a worker says hello or disconnects, it samples every watched process and looks
//! for the upstreams' processes not found yet (or gone), on tokio's blocking pool (a read of
//! /proc can stall on a sick process, and must never stall a probe). A found process is not
//! looked for again while its pid keeps its start time (the sample checks that). Results
//! go back through the [`ProcSamples`] handle, where [`crate::state::proc_track`]'s rules
//! apply and the verdict function reads them as plain data.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::cadence::Cadence;
use crate::sources::proc::children::{self, Extras};
use crate::sources::proc::discover::{self, Wanted};
use crate::sources::proc::{ProcSample, ProcSource, SampleError};
use crate::state::registry::{Owner, ProcJob, ProcResult, ProcSamples, ProcTarget};

/// One round's samples by pid.
type Samples = HashMap<u32, Result<ProcSample, SampleError>>;

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
    let mut ticker = Cadence::every(sampler.interval);
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
            let mut taken = HashMap::new();
            let mut results = targets
                .into_iter()
                .map(|target| sampler.run(target, &exclude, &mut taken))
                .collect::<Vec<_>>();
            sampler.add_extras(&mut results);
            results
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
    /// Samples `pid` once per round: `taken` holds this round's samples, so a process
    /// watched twice (a worker that is also an upstream's process, or several upstreams
    /// served by one process) costs one read.
    fn sample(&self, pid: u32, taken: &mut Samples) -> Result<ProcSample, SampleError> {
        taken
            .entry(pid)
            .or_insert_with(|| self.source.sample(pid))
            .clone()
    }

    /// Does one job (blocking).
    fn run(&self, target: ProcTarget, exclude: &[u32], taken: &mut Samples) -> ProcResult {
        match &target.job {
            ProcJob::Sample(pid) => ProcResult {
                sample: Some(self.sample(*pid, taken)),
                discovered: None,
                extras: None,
                target,
            },
            ProcJob::Discover { ports, cmdline } => {
                let wanted = Wanted {
                    ports: ports.as_slice(),
                    cmdline: cmdline.as_deref(),
                };
                let found = discover::find(&self.proc_root, wanted, exclude);
                // Sampled in the same round, so a new process is judged at once.
                let sample = found.as_ref().ok().map(|w| self.sample(w.pid, taken));
                ProcResult {
                    discovered: Some(found),
                    sample,
                    extras: None,
                    target,
                }
            }
        }
    }

    /// Adds to each result of an upstream's living process its zombie children (one scan
    /// of the pod's processes for all of them) and, while it loads, what it has read
    /// (SPEC §12).
    fn add_extras(&self, results: &mut [ProcResult]) {
        let living_upstream = |r: &ProcResult| -> Option<u32> {
            if r.target.of != Owner::Upstream || !matches!(&r.sample, Some(Ok(s)) if !s.is_dead()) {
                return None;
            }
            match &r.target.job {
                ProcJob::Sample(pid) => Some(*pid),
                ProcJob::Discover { .. } => r.discovered.as_ref()?.as_ref().ok().map(|w| w.pid),
            }
        };
        let parents: Vec<u32> = results.iter().filter_map(living_upstream).collect();
        if parents.is_empty() {
            return;
        }
        let taken_at = Instant::now();
        let scan = children::zombies_of(&self.proc_root, &parents);
        for r in results.iter_mut() {
            let Some(pid) = living_upstream(r) else {
                continue;
            };
            r.extras = Some(Extras {
                taken_at,
                zombies: match &scan {
                    Ok(by_parent) => Ok(by_parent.get(&pid).cloned().unwrap_or_default()),
                    Err(e) => Err(e.clone()),
                },
                read: r
                    .target
                    .loading
                    .then(|| children::bytes_read(&self.proc_root, pid)),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use vitals_proto::WorkerName;

    use super::*;

    /// Counts the reads of each round; every pid is a sleeping process.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl ProcSource for Counting {
        fn sample(&self, pid: u32) -> Result<ProcSample, SampleError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(ProcSample {
                taken_at: Instant::now(),
                state: 'S',
                cpu_seconds: 0.0,
                rss_bytes: 1,
                threads: 1,
                start_time: u64::from(pid),
            })
        }
    }

    #[test]
    fn a_process_watched_twice_is_read_once_per_round() {
        let source = Arc::new(Counting::default());
        let sampler = Sampler {
            source: Arc::clone(&source) as Arc<dyn ProcSource>,
            proc_root: PathBuf::from("/proc"),
            interval: Duration::from_secs(1),
        };
        let target = |name: &str, pid| ProcTarget {
            name: WorkerName::parse(name).expect("valid name"),
            of: Owner::Upstream,
            job: ProcJob::Sample(pid),
            loading: false,
        };
        let mut taken = Samples::new();
        let results: Vec<_> = [target("a", 7), target("b", 7), target("c", 8)]
            .into_iter()
            .map(|t| sampler.run(t, &[], &mut taken))
            .collect();
        assert_eq!(
            source.0.load(Ordering::SeqCst),
            2,
            "pids 7 and 8, once each"
        );
        let starts: Vec<_> = results
            .iter()
            .map(|r| r.sample.clone().and_then(Result::ok).map(|s| s.start_time))
            .collect();
        assert_eq!(
            starts,
            [Some(7), Some(7), Some(8)],
            "each target gets its pid's sample"
        );
    }
}
