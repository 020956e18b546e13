//! `/metrics` passes `promtool check metrics` (`make test` installs promtool via `make deps`;
//! without it the test fails).
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::{eventually, metric, Agent, Worker};
use vitals_agent::config::Config;
use vitals_core::upstreams::parse;
use vitals_proto::WorkerName;

#[test]
fn metrics_pass_promtool_check() {
    // An upstream still loading (its port listens but never answers, so its startup probe
    // fails) with a canary: the load and canary series of SPEC §12 are in the page too.
    let loading = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = loading.local_addr().unwrap().port();
    let agent = Agent::start(|c: &mut Config| {
        c.expect = vec![WorkerName::parse("model").unwrap()];
        let json = format!(
            r#"{{"srv": {{"startupProbe": {{"httpGet": {{"port": {port}}}}}, "metrics": "vllm", "canary": {{}}}}}}"#
        );
        c.upstreams = parse(&json, &c.expect, |_| None)
            .unwrap()
            .into_iter()
            .map(std::sync::Arc::new)
            .collect();
    });
    let mut w = agent.worker("model", "i-1");
    w.loading(5);
    w.beat(3);
    w.phase("ready");
    w.beat(4);
    agent.wait_for("/readyz", 200, "ok");
    let mut bad = Worker::connect(&agent.socket);
    bad.line("garbage");
    bad.expect_error("bad_frame");
    for path in ["/livez", "/readyz/model", "/startupz", "/readyz/nobody"] {
        agent.get(path);
    }
    // Wait for a /proc sample so the process series carry real values.
    let text = eventually(
        "a /proc sample of the worker and of the loading upstream",
        || {
            let m = agent.metrics();
            metric(&m, "vitals_worker_process_threads{worker=\"model\"}")
                .filter(|v| *v > 0.0)
                .and(metric(
                    &m,
                    "vitals_upstream_load_cpu_seconds{worker=\"srv\"}",
                ))
                .map(|_| m)
        },
    );
    for name in [
        "vitals_probe_requests_total",
        "vitals_probe_duration_seconds_bucket",
        "vitals_worker_startup_seconds",
        "vitals_worker_process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "vitals_upstream_load_resident_memory_bytes",
        "vitals_upstream_load_read_bytes",
        "vitals_upstream_load_unmoved_seconds",
        "vitals_upstream_canaries_total",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    let (passed, report) = vitals_e2e::prom::promtool_check(&text);
    assert!(
        passed && report.trim().is_empty(),
        "promtool: {report}\n{text}"
    );
}
