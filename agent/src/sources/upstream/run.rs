//! The upstreams' tasks (SPEC §8): one prober per probe on its own period, one scraper per
//! metrics source on `--proc-interval`, and one /proc watcher for all of them. Each runs on
//! the agent's runtime with its own timeouts, writes its results into the registry, and
//! stops with the agent's token; nothing here is on the path of a probe of the agent,
//! which reads the latest results from a snapshot.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vitals_proto::WorkerName;

use super::config::{MetricsSpec, ProbeKind, ProbeSpec, UpstreamSpec};
use super::{probe, scrape};
use crate::sources::proc::discover;
use crate::sources::proc::ProcSource;
use crate::state::registry::Registry;
use crate::surfaces::metrics::Metrics;

/// How long one scrape may take: beyond it, the page is no evidence.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the upstreams are probed: `$POD_IP` when set (SPEC §8), else loopback.
pub fn host(pod_ip: Option<IpAddr>) -> IpAddr {
    pod_ip.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

/// What the upstreams' tasks share.
#[derive(Clone)]
pub struct Context {
    /// Where results go.
    pub registry: Arc<Registry>,
    /// Probe durations and results.
    pub metrics: Arc<Metrics>,
    /// Where the upstreams are probed.
    pub host: IpAddr,
    /// `--stall-timeout`.
    pub stall_timeout: Duration,
    /// `--proc-interval`: scrapes and /proc samples.
    pub proc_interval: Duration,
    /// /proc samples (fixtures in tests).
    pub proc_source: Arc<dyn ProcSource>,
    /// The /proc folder searched for listeners.
    pub proc_root: PathBuf,
}

/// Spawns every task of every upstream on `tasks`, each stopping with `stop`.
pub fn spawn(
    tasks: &TaskTracker,
    cx: &Context,
    upstreams: &[Arc<UpstreamSpec>],
    stop: &CancellationToken,
) {
    for u in upstreams {
        for (kind, spec) in &u.probes {
            tasks.spawn(prober(
                cx.clone(),
                u.name.clone(),
                *kind,
                spec.clone(),
                stop.clone(),
            ));
        }
        if let Some(m) = &u.metrics {
            tasks.spawn(scraper(cx.clone(), u.name.clone(), m.clone(), stop.clone()));
        }
    }
    if !upstreams.is_empty() {
        tasks.spawn(proc_watch(cx.clone(), stop.clone()));
    }
}

fn ticker(every: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(every.max(Duration::from_millis(10)));
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}

/// Runs one probe every `periodSeconds`, bounded by its `timeoutSeconds`.
async fn prober(
    cx: Context,
    name: WorkerName,
    kind: ProbeKind,
    spec: ProbeSpec,
    stop: CancellationToken,
) {
    let mut tick = ticker(spec.period);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            o = probe::run(&spec.action, cx.host, spec.timeout) => o,
        };
        cx.metrics.upstream_probe(name.as_str(), kind, &outcome);
        cx.registry.update(|state| {
            if let Some(u) = state.upstreams.get_mut(&name) {
                u.record_probe(kind, outcome);
            }
        });
    }
}

/// Scrapes the metrics every `interval`; counts every failed scrape.
async fn scraper(cx: Context, name: WorkerName, spec: MetricsSpec, stop: CancellationToken) {
    let mut tick = ticker(cx.proc_interval);
    let mut scraper = scrape::Scraper::new(name.clone(), spec, cx.host);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (started, result) = tokio::select! {
            () = stop.cancelled() => return,
            r = scraper.scrape(SCRAPE_TIMEOUT) => r,
        };
        if let Err(e) = &result {
            cx.metrics.upstream_scrape_error(name.as_str(), e.kind());
        }
        cx.registry.update(|state| {
            if let Some(u) = state.upstreams.get_mut(&name) {
                u.record_scrape(started, result, cx.stall_timeout);
            }
        });
    }
}

/// Finds each upstream's process and samples it every `interval`, on the blocking pool.
async fn proc_watch(cx: Context, stop: CancellationToken) {
    let mut tick = ticker(cx.proc_interval);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let state = cx.registry.current();
        // The cgroup fallback must not pick the agent's or a protocol worker's group.
        let mut exclude = vec![std::process::id()];
        exclude.extend(state.worker_pids());
        let targets: Vec<_> = state
            .upstreams
            .iter()
            .map(|(name, u)| {
                let found = u.proc.found.as_ref().ok().filter(|_| !u.proc.gone).cloned();
                (name.clone(), u.spec.probe_ports(), found)
            })
            .collect();
        drop(state);
        let (source, root) = (Arc::clone(&cx.proc_source), cx.proc_root.clone());
        let work = tokio::task::spawn_blocking(move || {
            targets
                .into_iter()
                .map(|(name, ports, found)| match found {
                    Some(f) => (name, None, Some(source.sample(f.pid))),
                    None => {
                        // Sampled in the same round, so a new process is judged at once.
                        let d = discover::find(&root, &ports, &exclude);
                        let s = d.as_ref().ok().map(|f| source.sample(f.pid));
                        (name, Some(d), s)
                    }
                })
                .collect::<Vec<_>>()
        });
        let results = tokio::select! {
            () = stop.cancelled() => return,
            r = work => r,
        };
        let Ok(results) = results else {
            tracing::error!("upstream /proc task failed");
            continue;
        };
        cx.registry.update(|state| {
            for (name, discovery, sample) in results {
                let Some(u) = state.upstreams.get_mut(&name) else {
                    continue;
                };
                if let Some(d) = discovery {
                    u.record_discovery(d);
                }
                if let Some(s) = sample {
                    u.record_sample(s);
                }
            }
        });
    }
}
