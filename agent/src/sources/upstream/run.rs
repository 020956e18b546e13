//! The upstreams' tasks (SPEC §8): one prober per probe on its own period and one scraper
//! per metrics source on `--proc-interval` (their processes are watched by the one /proc
//! sampler, [`crate::sources::proc::watch`]). Each runs on the agent's runtime with its own
//! timeouts, writes its results through its upstream's [`UpstreamResults`] handle, and
//! stops with the agent's token; nothing here is on the path of a probe of the agent,
//! which reads the latest results from a snapshot.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::{MetricsSpec, ProbeKind, ProbeSpec, UpstreamSpec};
use super::{probe, scrape};
use crate::state::registry::{Registry, UpstreamResults};
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
    /// Probe durations and results.
    pub metrics: Arc<Metrics>,
    /// Where the upstreams are probed.
    pub host: IpAddr,
    /// `--stall-timeout`.
    pub stall_timeout: Duration,
    /// `--proc-interval`: scrapes.
    pub scrape_interval: Duration,
}

/// Spawns every task of every upstream on `tasks`, each writing through its upstream's
/// handle from `registry` and stopping with `stop`.
pub fn spawn(
    tasks: &TaskTracker,
    cx: &Context,
    registry: &Arc<Registry>,
    upstreams: &[Arc<UpstreamSpec>],
    stop: &CancellationToken,
) {
    for u in upstreams {
        let results = registry.upstream_results(u.name.clone());
        for (kind, spec) in &u.probes {
            tasks.spawn(prober(
                cx.clone(),
                results.clone(),
                *kind,
                spec.clone(),
                stop.clone(),
            ));
        }
        if let Some(m) = &u.metrics {
            tasks.spawn(scraper(cx.clone(), results, m.clone(), stop.clone()));
        }
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
    results: UpstreamResults,
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
        cx.metrics
            .upstream_probe(results.name().as_str(), kind, &outcome);
        results.probe(kind, outcome);
    }
}

/// Scrapes the metrics every `interval`; counts every scrape that gave no reading.
async fn scraper(
    cx: Context,
    results: UpstreamResults,
    spec: MetricsSpec,
    stop: CancellationToken,
) {
    let mut tick = ticker(cx.scrape_interval);
    let mut scraper = scrape::Scraper::new(results.name().clone(), spec, cx.host);
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
            cx.metrics
                .upstream_scrape_error(results.name().as_str(), e.kind());
        }
        results.scrape(started, result, cx.stall_timeout);
    }
}
