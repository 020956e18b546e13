//! `make bench`: what leading a group costs the agent (SPEC §9), on the real release binary.
//!
//! A leader agent polls `BENCH_MEMBERS` (default 16) members every second (the default
//! `--group-poll`); each member is the toolkit's in-process `FakeMember` answering a member
//! agent's `/group` document (the leader's cost does not depend on who answers). Measured:
//! the leader's resident memory once formed, its CPU over `BENCH_IDLE_SECS` (default 60)
//! seconds of polling, and the same for an agent outside any group, for comparison.
//! Results print as a table and go to `bench-results/group.json`.
//! Environment: `VITALS_AGENT_BIN` (`make bench`: the static release build; unset,
//! `vitals_e2e::bins::agent_bin`),
//! `BENCH_MEMBERS`, `BENCH_IDLE_SECS`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::{cpu_ns, env_u64, rss_kib, start_agent, status_kib, write_results};
use vitals_e2e::member::{live, FakeMember};
use vitals_e2e::{client, wait};

/// One GET on a new connection (the toolkit's client, 1 s timeout): the status and body.
fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), client::ClientError> {
    client::get(addr, path, Duration::from_secs(1))
        .map(|r| (r.status, String::from_utf8_lossy(&r.body).into_owned()))
}

/// Starts an agent with `extra` flags, waits until `/readyz` passes; returns it with its
/// RSS then and its CPU share over `idle` (percent of a core), its RSS after and its peak
/// RSS over the whole run (`VmHWM`, what a memory limit must clear: SPEC §11).
fn measure(bin: &Path, extra: &[String], idle: Duration) -> (u64, f64, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let agent = start_agent(bin, addr, &dir.path().join("agent.sock"), extra);
    let pid = agent.0.id();
    wait::eventually(
        "the agent ready (group formed)",
        Duration::from_secs(15),
        || (get(addr, "/readyz").ok()?.0 == 200).then_some(()),
    );
    thread::sleep(Duration::from_secs(2));
    let rss = rss_kib(pid);
    let cpu0 = cpu_ns(pid);
    let t0 = Instant::now();
    thread::sleep(idle);
    let cpu = (cpu_ns(pid) - cpu0) as f64 / t0.elapsed().as_nanos() as f64 * 100.0;
    let rss_after = rss_kib(pid);
    let peak = status_kib(pid, "VmHWM:");
    let (_, status) = get(addr, "/status").unwrap();
    if !extra.is_empty() {
        let doc: serde_json::Value = serde_json::from_str(&status).unwrap();
        let members = doc["group"]["members"].as_array().map_or(0, Vec::len);
        assert!(doc["group"]["formed"] == true && members > 0, "{doc}");
    }
    (rss, cpu, rss_after, peak)
}

fn main() {
    let bin = vitals_e2e::bins::agent_bin();
    let members = usize::try_from(env_u64("BENCH_MEMBERS", 16)).unwrap();
    let idle = Duration::from_secs(env_u64("BENCH_IDLE_SECS", 60));
    // Kept for the whole bench: each answers as long as it lives.
    let fakes: Vec<FakeMember> = (1..=members)
        .map(|i| FakeMember::start(live(&format!("{}:4242", 1000 + i))))
        .collect();
    let addrs: Vec<String> = fakes.iter().map(|m| m.addr.to_string()).collect();
    let leader_flags = vec![
        "--group-role".to_owned(),
        "leader".to_owned(),
        "--group-members".to_owned(),
        addrs.join(","),
        "--group-poll".to_owned(),
        "1s".to_owned(),
    ];
    eprintln!("an agent outside any group, idle for {idle:?} …");
    let (base_rss, base_cpu, base_rss_after, base_peak) = measure(&bin, &[], idle);
    eprintln!("a leader polling {members} members every 1 s, for {idle:?} …");
    let (rss, cpu, rss_after, peak) = measure(&bin, &leader_flags, idle);
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "| agent ({}) | RSS formed / after / peak (VmHWM) | CPU over {} s (`schedstat`) |",
        bin.display(),
        idle.as_secs()
    );
    println!("|---|---|---|");
    println!(
        "| outside any group | {:.2} / {:.2} / {:.2} MiB | {base_cpu:.3} % of a core |",
        mib(base_rss),
        mib(base_rss_after),
        mib(base_peak)
    );
    println!(
        "| leader, {members} members polled every 1 s | {:.2} / {:.2} / {:.2} MiB | {cpu:.3} % of a core |",
        mib(rss),
        mib(rss_after),
        mib(peak)
    );
    let json = serde_json::json!({
        "members": members,
        "poll_seconds": 1,
        "idle_seconds": idle.as_secs(),
        "leader": {"rss_kib": rss, "rss_after_kib": rss_after, "peak_rss_kib": peak, "cpu_percent": cpu},
        "no_group": {"rss_kib": base_rss, "rss_after_kib": base_rss_after, "peak_rss_kib": base_peak, "cpu_percent": base_cpu},
    });
    write_results("group.json", &json);
}
