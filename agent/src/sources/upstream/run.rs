//! The upstreams' tasks (SPEC §8): one prober per distinct probe request on its own period,
//! one scraper per metrics source on `--proc-interval` and the opt-in canary (SPEC §12) (their processes are watched by
//! the one /proc sampler, [`crate::sources::proc::watch`]). Each runs on the agent's runtime with its own
//! timeouts, writes its results through its upstream's [`UpstreamResults`] handle, and
//! stops with the agent's token; nothing here is on the path of a probe of the agent,
//! which reads the latest results from a snapshot.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{probe, scrape};
use crate::cadence::Cadence;
use crate::counters::SourceCounters;
use vitals_core::state::registry::{Registry, UpstreamResults};
use vitals_core::upstreams::{MetricsSpec, ProbeKind, ProbeSpec, UpstreamSpec};

/// How long one scrape may take: beyond it, the page is no evidence.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);

/// The share of one core above which an idle-timing server's process is working (SPEC
/// §12): a llama.cpp engine loop decoding keeps a core busy, an idle one wakes once a
/// second and answers probes in microseconds.
pub const WORKING_CPU_SHARE: f64 = 0.1;

/// Where the upstreams are probed: `$POD_IP` when set (SPEC §8), else loopback.
pub fn host(pod_ip: Option<IpAddr>) -> IpAddr {
    pod_ip.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

/// What the upstreams' tasks share.
#[derive(Clone)]
pub struct Context {
    /// Probe durations and results.
    pub counters: SourceCounters,
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
        for (spec, kinds) in shared_requests(&u.probes) {
            tasks.spawn(prober(
                cx.clone(),
                results.clone(),
                kinds,
                spec,
                stop.clone(),
            ));
        }
        if let Some(c) = &u.canary {
            tasks.spawn(super::canary::run(
                cx.clone(),
                results.clone(),
                c.clone(),
                stop.clone(),
            ));
        }
        if let Some(m) = &u.metrics {
            tasks.spawn(scraper(cx.clone(), results, m.clone(), stop.clone()));
        }
    }
}

/// The probes grouped by the request they send: probes with the same action, period and
/// timeout (vLLM's startup, liveness and readiness are often all `GET /health` every 10 s)
/// would send the same request at the same rate, so one request a period answers all of
/// them, each recorded and counted under its own kind. Their answers could not differ but
/// by the moment they were asked; the upstream serves a third of the probe traffic.
fn shared_requests(probes: &BTreeMap<ProbeKind, ProbeSpec>) -> Vec<(ProbeSpec, Vec<ProbeKind>)> {
    let mut shared: Vec<(ProbeSpec, Vec<ProbeKind>)> = Vec::new();
    for (kind, spec) in probes {
        match shared.iter_mut().find(|(s, _)| s == spec) {
            Some((_, kinds)) => kinds.push(*kind),
            None => shared.push((spec.clone(), vec![*kind])),
        }
    }
    shared
}

/// Runs one probe request every `periodSeconds`, bounded by its `timeoutSeconds`, and
/// records its outcome as the result of each of `kinds`.
async fn prober(
    cx: Context,
    results: UpstreamResults,
    kinds: Vec<ProbeKind>,
    spec: ProbeSpec,
    stop: CancellationToken,
) {
    let mut tick = Cadence::every(spec.period);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            o = probe::run(&spec.action, cx.host, spec.timeout) => o,
        };
        for kind in &kinds {
            cx.counters
                .upstream_probe(results.name().as_str(), *kind, &outcome);
        }
        results.probe(&kinds, outcome);
    }
}

/// Scrapes the metrics every `interval`; counts every scrape that gave no reading.
async fn scraper(
    cx: Context,
    results: UpstreamResults,
    spec: MetricsSpec,
    stop: CancellationToken,
) {
    let mut tick = Cadence::every(cx.scrape_interval);
    let mut scraper = scrape::Scraper::new(results.name().clone(), spec, cx.host);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let working = || results.cpu_share().map(|c| c >= WORKING_CPU_SHARE);
        let (started, result) = tokio::select! {
            () = stop.cancelled() => return,
            r = scraper.scrape(SCRAPE_TIMEOUT, working) => r,
        };
        if let Err(e) = &result {
            cx.counters
                .upstream_scrape_error(results.name().as_str(), e.kind());
        }
        results.scrape(started, result, cx.stall_timeout, cx.scrape_interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitals_core::upstreams::parse;

    #[test]
    fn probes_that_send_the_same_request_at_the_same_rate_share_it() {
        let spec = parse(
            r#"{"vllm": {
                "startupProbe": {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 10},
                "livenessProbe": {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 10},
                "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 5}}}"#,
            &[],
            |_| None,
        )
        .expect("valid")
        .remove(0);
        let shared = shared_requests(&spec.probes);
        let kinds: Vec<_> = shared.iter().map(|(_, k)| k.clone()).collect();
        assert_eq!(
            kinds,
            [
                vec![ProbeKind::Startup, ProbeKind::Liveness],
                vec![ProbeKind::Readiness]
            ],
            "another period is another request"
        );
        assert_eq!(shared[0].0.period, Duration::from_secs(10));
        assert_eq!(shared[1].0.period, Duration::from_secs(5));
    }

    #[test]
    fn another_path_or_timeout_is_another_request() {
        let spec = parse(
            r#"{"vllm": {
                "startupProbe": {"httpGet": {"path": "/health", "port": 8000}},
                "livenessProbe": {"httpGet": {"path": "/health", "port": 8000}, "timeoutSeconds": 3},
                "readinessProbe": {"httpGet": {"path": "/v1/models", "port": 8000}}}}"#,
            &[],
            |_| None,
        )
        .expect("valid")
        .remove(0);
        assert_eq!(shared_requests(&spec.probes).len(), 3);
    }
}
