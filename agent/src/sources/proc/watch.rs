//! The one /proc sampler, for workers and upstreams alike: every `--proc-interval`, and at
//! once when a worker says hello or disconnects, it samples every watched process (and the
//! other processes of a container watched by its cgroup, SPEC §11) and looks for the
//! upstreams' processes not found yet (or gone). A found process is not looked for again
//! while its pid keeps its start time (the sample checks that). Results go back through the
//! [`ProcSamples`] handle, where [`vitals_core::state::proc_track`]'s rules apply and the verdict
//! function reads them as plain data.
//!
//! Reads run on a thread of the sampler's own (SPEC §7, §11): a read of /proc can stall on
//! a sick process (`cmdline` waits for the target's memory map lock), and must stall
//! neither a probe nor anything else that blocks (name lookups run on the runtime's
//! blocking pool). Each round has a deadline ([`round_deadline`]): a round that misses it
//! is no evidence, its results are dropped when they come, and no new round starts while
//! it is still running (rounds skipped, never queued behind it). The verdict's staleness
//! bound then stops counting what older samples showed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::cadence::Cadence;
use crate::sources::proc::children;
use crate::sources::proc::discover::{self, Wanted};
use crate::sources::proc::ProcSource;
use vitals_core::proc::{Extras, ProcSample, SampleError};
use vitals_core::state::proc_track::FoundBy;
use vitals_core::state::registry::{Owner, ProcJob, ProcResult, ProcSamples, ProcTarget};

/// One round's samples by pid.
type Samples = HashMap<u32, Result<ProcSample, SampleError>>;

/// Where and how often the sampler reads.
pub struct Sampler {
    /// Samples of one pid (fixtures in tests).
    pub source: Arc<dyn ProcSource>,
    /// The /proc folder searched for the upstreams' processes and containers.
    pub proc_root: PathBuf,
    /// `--proc-interval`.
    pub interval: Duration,
}

/// How long a round may take before it is no evidence: one interval, and at least 1 s, so
/// that a round made late by a starved node is still taken.
pub fn round_deadline(interval: Duration) -> Duration {
    interval.max(Duration::from_secs(1))
}

/// One round for the sampler's thread, and where its results go.
struct Round {
    targets: Vec<ProcTarget>,
    exclude: Vec<u32>,
    reply: oneshot::Sender<Vec<ProcResult>>,
}

/// Runs the sampler until `stop`; `wake` asks for a round at once.
pub async fn watch(
    samples: ProcSamples,
    sampler: Sampler,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let interval = sampler.interval;
    let deadline = round_deadline(interval);
    let (rounds, jobs) = mpsc::channel::<Round>();
    let thread = std::thread::Builder::new()
        .name("vitals-proc".into())
        .spawn(move || {
            // Ends when `watch` returns (the sender is dropped).
            for round in jobs {
                let mut taken = Samples::new();
                let mut containers = None;
                let mut results: Vec<ProcResult> = round
                    .targets
                    .into_iter()
                    .map(|t| sampler.run(t, &round.exclude, &mut taken, &mut containers))
                    .collect();
                sampler.add_extras(&mut results);
                // A round past its deadline has no receiver any more.
                let _ = round.reply.send(results);
            }
        });
    if let Err(e) = thread {
        tracing::error!(error = %e, "cannot start the /proc sampler's thread: /proc checks are off");
        return;
    }
    let mut ticker = Cadence::every(interval);
    let mut late: Option<oneshot::Receiver<Vec<ProcResult>>> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
            () = wake.notified() => {}
        }
        if let Some(rx) = late.as_mut() {
            match rx.try_recv() {
                // Still reading: no round beside it.
                Err(oneshot::error::TryRecvError::Empty) => continue,
                // Done at last: no evidence, dropped.
                Ok(_) | Err(oneshot::error::TryRecvError::Closed) => late = None,
            }
        }
        let (targets, mut exclude) = samples.targets();
        exclude.push(std::process::id());
        if targets.is_empty() {
            continue;
        }
        let (reply, mut results) = oneshot::channel();
        if rounds
            .send(Round {
                targets,
                exclude,
                reply,
            })
            .is_err()
        {
            tracing::error!("the /proc sampler's thread stopped: /proc checks are off");
            return;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            r = tokio::time::timeout(deadline, &mut results) => match r {
                Ok(Ok(results)) => samples.record(results),
                Ok(Err(_)) => {
                    tracing::error!("the /proc sampler's thread stopped: /proc checks are off");
                    return;
                }
                Err(_) => {
                    tracing::warn!(?deadline, "a /proc round missed its deadline: its samples are dropped, and no round starts until it ends");
                    late = Some(results);
                }
            },
        }
    }
}

/// Each process's cgroup, by pid (one round's view of the pod's containers).
type Cgroups = HashMap<u32, String>;

/// The cgroup of every process under `proc_root` that has one readable.
fn cgroups(proc_root: &Path) -> Cgroups {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Cgroups::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let text = std::fs::read_to_string(proc_root.join(format!("{pid}/cgroup"))).ok()?;
            Some((pid, text))
        })
        .collect()
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

    /// Samples of every other live process in `pid`'s container (cgroup). The pod's
    /// cgroups are read once per round, on the first container that needs them.
    fn container_others(
        &self,
        pid: u32,
        taken: &mut Samples,
        containers: &mut Option<Cgroups>,
    ) -> Vec<(u32, ProcSample)> {
        let containers = containers.get_or_insert_with(|| cgroups(&self.proc_root));
        let Some(own) = containers.get(&pid) else {
            return Vec::new();
        };
        let mut others: Vec<u32> = containers
            .iter()
            .filter(|(p, cg)| **p != pid && *cg == own)
            .map(|(p, _)| *p)
            .collect();
        others.sort_unstable();
        others
            .into_iter()
            .filter_map(|p| Some((p, self.sample(p, taken).ok()?)))
            .collect()
    }

    /// Does one job (blocking).
    fn run(
        &self,
        target: ProcTarget,
        exclude: &[u32],
        taken: &mut Samples,
        containers: &mut Option<Cgroups>,
    ) -> ProcResult {
        match &target.job {
            ProcJob::Sample { pid, container } => {
                let others = container.then(|| self.container_others(*pid, taken, containers));
                ProcResult {
                    sample: Some(self.sample(*pid, taken)),
                    discovered: None,
                    others,
                    extras: None,
                    target,
                }
            }
            ProcJob::Discover { ports, cmdline } => {
                let wanted = Wanted {
                    ports: ports.as_slice(),
                    cmdline: cmdline.as_deref(),
                };
                let found = discover::find(&self.proc_root, wanted, exclude);
                // Sampled in the same round, so a new process is judged at once.
                let sample = found.as_ref().ok().map(|w| self.sample(w.pid, taken));
                let others = found
                    .as_ref()
                    .ok()
                    .filter(|w| w.found_by == FoundBy::Cgroup)
                    .map(|w| self.container_others(w.pid, taken, containers));
                ProcResult {
                    discovered: Some(found),
                    sample,
                    others,
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
                ProcJob::Sample { pid, .. } => Some(*pid),
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
    use std::sync::Mutex;

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
            job: ProcJob::Sample {
                pid,
                container: false,
            },
            loading: false,
        };
        let mut taken = Samples::new();
        let results: Vec<_> = [target("a", 7), target("b", 7), target("c", 8)]
            .into_iter()
            .map(|t| sampler.run(t, &[], &mut taken, &mut None))
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

    /// A process of the given state for every pid; pid 11 is stopped.
    struct Letters;

    impl ProcSource for Letters {
        fn sample(&self, pid: u32) -> Result<ProcSample, SampleError> {
            Ok(ProcSample {
                taken_at: Instant::now(),
                state: if pid == 11 { 'T' } else { 'S' },
                cpu_seconds: 0.0,
                rss_bytes: 1,
                threads: 1,
                start_time: u64::from(pid),
            })
        }
    }

    /// SPEC §11: a container watched by its cgroup is sampled whole, its shell wrapper
    /// (the process found) and every other process in the same cgroup, none of another.
    #[test]
    fn a_container_found_by_its_cgroup_is_sampled_whole() {
        let root = tempfile::tempdir().expect("tempdir");
        for (pid, cgroup) in [(10, "/pod/ray"), (11, "/pod/ray"), (12, "/pod/agent")] {
            let dir = root.path().join(pid.to_string());
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(dir.join("cgroup"), format!("0::{cgroup}\n")).expect("cgroup");
        }
        let sampler = Sampler {
            source: Arc::new(Letters),
            proc_root: root.path().to_path_buf(),
            interval: Duration::from_secs(1),
        };
        let target = |container| ProcTarget {
            name: WorkerName::parse("ray").expect("valid name"),
            of: Owner::Upstream,
            job: ProcJob::Sample { pid: 10, container },
            loading: false,
        };
        let r = sampler.run(target(true), &[], &mut Samples::new(), &mut None);
        let others: Vec<_> = r
            .others
            .iter()
            .flatten()
            .map(|(p, s)| (*p, s.state))
            .collect();
        assert_eq!(others, [(11, 'T')], "the stopped child under the shell");
        let r = sampler.run(target(false), &[], &mut Samples::new(), &mut None);
        assert_eq!(
            r.others, None,
            "a process found by its socket is judged alone"
        );
    }

    /// Blocks its first read until released (a read of a sick process), then says every
    /// process is sleeping. That first read says stopped, with another start time: had it
    /// been recorded, the worker's process would count as gone for good.
    struct StuckOnce {
        entered: Mutex<Option<mpsc::Sender<()>>>,
        release: Mutex<mpsc::Receiver<()>>,
    }

    impl ProcSource for StuckOnce {
        fn sample(&self, pid: u32) -> Result<ProcSample, SampleError> {
            let first = self.entered.lock().expect("not poisoned").take();
            let (state, start_time) = match first {
                Some(entered) => {
                    let _ = entered.send(());
                    let _ = self.release.lock().expect("not poisoned").recv();
                    ('T', 1)
                }
                None => ('S', u64::from(pid)),
            };
            Ok(ProcSample {
                taken_at: Instant::now(),
                state,
                cpu_seconds: 0.0,
                rss_bytes: 1,
                threads: 1,
                start_time,
            })
        }
    }

    /// SPEC §7, §11 (issue 27): a /proc round stuck in a read holds up no name lookup (they
    /// share no thread), and when it ends after its deadline its samples are dropped: the
    /// `T` it read is never recorded; the rounds after it are.
    #[test]
    fn a_stuck_round_holds_up_no_name_lookup_and_is_no_evidence() {
        use vitals_core::fixtures::{hello, name, PEER, T};
        use vitals_core::state::registry::Registry;
        let rt = crate::runtime().expect("the agent's runtime");
        rt.block_on(async {
            let registry = Arc::new(Registry::new(&[name("model")], T.hang));
            registry
                .worker_reports()
                .hello(&hello("model", "a"), PEER, 1, Instant::now())
                .expect("name free");
            let (entered_tx, entered) = mpsc::channel();
            let (release, release_rx) = mpsc::channel();
            let interval = Duration::from_millis(100);
            let sampler = Sampler {
                source: Arc::new(StuckOnce {
                    entered: Mutex::new(Some(entered_tx)),
                    release: Mutex::new(release_rx),
                }),
                proc_root: PathBuf::from("/proc"),
                interval,
            };
            let stop = CancellationToken::new();
            let task = tokio::spawn(watch(
                registry.proc_samples(),
                sampler,
                Arc::new(Notify::new()),
                stop.clone(),
            ));
            let started = Instant::now();
            while entered.try_recv().is_err() {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "no round started"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let lookup = tokio::net::lookup_host(("localhost", 80));
            let found = tokio::time::timeout(Duration::from_secs(2), lookup)
                .await
                .expect("a name lookup is not queued behind a stuck /proc round");
            assert!(
                found.is_ok_and(|mut a| a.next().is_some()),
                "localhost resolves"
            );
            tokio::time::sleep(round_deadline(interval) + interval * 2).await;
            release.send(()).expect("the read waits");
            let track = || {
                let state = registry.current();
                let w = &state.workers[&name("model")];
                w.instance.as_ref().expect("said hello").proc.clone()
            };
            let released = Instant::now();
            while track().previous.is_none() {
                assert!(
                    released.elapsed() < Duration::from_secs(5),
                    "no rounds after it"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let t = track();
            let states: Vec<_> = [&t.previous, &t.latest]
                .into_iter()
                .flatten()
                .map(|s| s.state)
                .collect();
            assert_eq!(states, ['S', 'S'], "the late round's T is never recorded");
            assert!(!t.gone && t.stopped_since.is_none(), "{t:?}");
            stop.cancel();
            task.await.expect("the sampler stops");
        });
    }
}
