//! `make bench`: what the agent costs a pod, measured on the real release binary, and what
//! a probe costs it next to nginx answering `return 200`.
//!
//! - the stripped binary's size;
//! - resident memory with 4 workers connected and heartbeating and `BENCH_UPSTREAMS`
//!   (default 3) vLLM-like upstreams watched (three probes each at 1 s, metrics scraped,
//!   /proc sampled: the fake vLLM of the e2e toolkit, in this process);
//! - CPU used over `BENCH_IDLE_SECS` (default 60) idle seconds with those workers and
//!   upstreams;
//! - CPU per probe against nginx (issue 27 item 9): `BENCH_PROBE_ROUNDS` (default 5) rounds,
//!   each sending every server `BENCH_PROBES` (default 3000) probes at 1000/s in turn (the
//!   order rotating), each probe a new TCP connection with the kubelet's request
//!   (`GET /readyz/wN`, `Connection: close`: the toolkit's `probe_once`). The servers: the
//!   agent on `/readyz/w0`..`w3` (a container's readiness, judged from a snapshot of all 4
//!   workers and the upstreams), nginx with one worker and `location / { return 200; }`,
//!   access log off (twice: as configured by default, the ratios' base, and with
//!   `listen … deferred`, the accept the agent's port uses), and, with `BENCH_BASELINE_BIN`, other agent binaries (older builds,
//!   other profiles; `:`-separated) set up like the first. A server's CPU is the scheduler's run time
//!   (`schedstat`, ns) of every thread of every process it has (nginx: master and
//!   worker), its idle rate subtracted; `utime + stime` from `/proc/PID/stat` over all
//!   rounds is printed beside it as a check;
//! - probe latency over those rounds, measured from the moment each probe was *due* (open
//!   loop), so a stall in the agent shows up in the tail instead of silently delaying the
//!   next probes.
//!
//! Targets (issue 3): p99 under 1 ms, RSS under 8 MiB, idle CPU under 0.5 % of a core,
//! binary under 6 MiB; issue 17: with 4 workers and 3 upstreams, ≤ 6 MiB and ≤ 0.1 %;
//! issue 27: CPU per probe at most nginx's. Results print as tables and go to
//! `bench-results/agent.json`. nginx must be installed (`apt-get install nginx`): the bench
//! fails without it.
//! Environment: `VITALS_AGENT_BIN` (`make bench` sets it to the static build the image
//! ships; unset, `vitals_e2e::bins::agent_bin`: `target/release/vitals-agent`),
//! `BENCH_BASELINE_BIN`, `BENCH_NGINX` (default: `nginx` on the `PATH` or
//! `/usr/sbin/nginx`), `BENCH_IDLE_SECS`, `BENCH_PROBES`, `BENCH_PROBE_ROUNDS`,
//! `BENCH_UPSTREAMS`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    cpu_ns, cpu_seconds, env_u64, rss_kib, start_agent, status_kib, write_results, Measured,
};
use vitals_e2e::report::percentile;
use vitals_e2e::{client, probe, wait};
use vitals_proto::{Phase, Reporter, ReporterConfig, WorkerName};

const WORKERS: usize = 4;
const PROBE_RATE_HZ: u64 = 1000;

/// One GET on a new connection, as the kubelet probes (the toolkit's client, 1 s timeout);
/// the status code.
fn get(addr: SocketAddr, path: &str) -> Result<u16, client::ClientError> {
    client::get(addr, path, Duration::from_secs(1)).map(|r| r.status)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// An agent as a pod runs it: 4 workers connected and heartbeating, `upstreams` fake vLLMs
/// watched.
struct Pod {
    agent: Measured,
    addr: SocketAddr,
    reporters: Vec<Reporter>,
    _upstreams: Vec<vitals_e2e::fake_vllm::FakeVllm>,
    stop: Arc<AtomicBool>,
    ticker: Option<thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Pod {
    fn start(bin: &Path, upstreams: u64) -> Self {
        // Upstreams: a fake vLLM each, loaded at once; probed and scraped as inject wires
        // vLLM. Each its own process, as in a pod, so the agent finds it once by its
        // listening socket (in this process, beside the workers it excludes, it would
        // search every round, reading /proc/net/tcp swollen by the probes' TIME_WAITs).
        let dir = tempfile::tempdir().unwrap();
        let fake = vitals_e2e::bins::e2e_bin("fake-vllm");
        let vllms: Vec<_> = (0..upstreams)
            .map(|i| {
                let log = dir.path().join(format!("vllm{i}.log"));
                vitals_e2e::fake_vllm::FakeVllm::start(
                    &fake,
                    free_addr(),
                    Some(Duration::ZERO),
                    &log,
                )
            })
            .collect();
        let upstream_json = vllms
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let port = v.addr.port();
                let probe = format!(r#"{{"httpGet": {{"path": "/health", "port": {port}}}, "periodSeconds": 1}}"#);
                format!(r#""vllm{i}": {{"startupProbe": {probe}, "livenessProbe": {probe}, "readinessProbe": {probe}, "metrics": "vllm"}}"#)
            })
            .collect::<Vec<_>>()
            .join(", ");

        let socket = dir.path().join("agent.sock");
        let addr = free_addr();
        let agent = start_agent(
            bin,
            addr,
            &socket,
            &["--upstreams".to_owned(), format!("{{{upstream_json}}}")],
        );
        wait::eventually("the agent's /livez", Duration::from_secs(10), || {
            (get(addr, "/livez").ok() == Some(200)).then_some(())
        });

        // Four workers, heartbeating every second as the default reporter does; a loop
        // thread ticks their progress so they stay live (a stalled loop would change
        // nothing here but the verdict text, yet the bench should measure the common,
        // healthy case).
        let reporters: Vec<Reporter> = (0..WORKERS)
            .map(|i| {
                let name = WorkerName::parse(format!("w{i}")).unwrap();
                let r = Reporter::start(ReporterConfig::new(&socket, name, "bench")).unwrap();
                r.set_check("device", true, "bench");
                r.set_phase(Phase::Ready, "serving", None);
                r
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let counters: Vec<_> = reporters.iter().map(Reporter::counters).collect();
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    counters.iter().for_each(|c| c.tick());
                    thread::sleep(Duration::from_millis(250));
                }
            })
        };
        wait::eventually("every worker ready", Duration::from_secs(10), || {
            (0..WORKERS)
                .all(|i| get(addr, &format!("/readyz/w{i}")).ok() == Some(200))
                .then_some(())
        });
        wait::eventually("the upstreams ready", Duration::from_secs(10), || {
            (0..upstreams)
                .all(|i| get(addr, &format!("/readyz/vllm{i}")).ok() == Some(200))
                .then_some(())
        });
        Self {
            agent,
            addr,
            reporters,
            _upstreams: vllms,
            stop,
            ticker: Some(ticker),
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.agent.0.id()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        self.reporters.clear();
    }
}

/// The nginx binary: `BENCH_NGINX`, else `nginx` on the `PATH`, else `/usr/sbin/nginx`
/// (Debian's, not on a user's `PATH`); panics with how to install it when there is none.
fn nginx_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("BENCH_NGINX") {
        return PathBuf::from(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|bin| bin.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nginx not found (the probe-cost comparison needs it): `apt-get install -y nginx`, \
                 or set BENCH_NGINX to its binary"
            )
        })
}

/// nginx answering `return 200` on every path: one worker process, access log off, in the
/// foreground (its master is the child this bench kills). `deferred`: its `listen … deferred`
/// (TCP_DEFER_ACCEPT, which the agent's port sets), the fair comparison beside the default
/// one the issue measured against.
struct Nginx {
    master: Measured,
    worker: u32,
    bin: PathBuf,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(deferred: bool) -> Self {
        let bin = nginx_bin();
        let listen_opts = if deferred { " deferred" } else { "" };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let addr = free_addr();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             server {{ listen {addr}{listen_opts}; location / {{ return 200; }} }}\n}}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let master = Command::new(&bin)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: cannot start ({e})", bin.display()));
        let master = Measured(master);
        let worker = wait::eventually("nginx's worker answering", Duration::from_secs(10), || {
            let ok = probe::probe_once(addr, "/", Duration::from_secs(1)).status == Some(200);
            let worker =
                std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", master.0.id()))
                    .ok()?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()?;
            ok.then_some(worker)
        });
        Self {
            master,
            worker,
            bin,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not the SIGKILL of `Measured`: the master stops its worker before it
        // exits (a killed master leaves the worker serving).
        let master = nix::unistd::Pid::from_raw(i32::try_from(self.master.0.id()).unwrap());
        let _ = nix::sys::signal::kill(master, nix::sys::signal::Signal::SIGTERM);
        let _ = self.master.0.wait();
    }
}

/// One server in the probe-cost comparison: where it listens, which path is probed, and
/// which processes do its work.
struct Server {
    label: String,
    addr: SocketAddr,
    /// The path of probe `i`.
    path: fn(u64) -> String,
    pids: Vec<u32>,
    binary_bytes: u64,
    binary_note: &'static str,
    idle_rss_kib: u64,
    /// Scheduler run time per second while idle, subtracted from each round.
    idle_ns_per_s: f64,
    /// Each round's CPU per probe, ns, in round order.
    per_probe_ns: Vec<f64>,
    /// `utime + stime` over all rounds, seconds.
    ticks_s: f64,
    /// Context switches over all rounds.
    switches: u64,
    probes: u64,
    failures: u64,
    from_due: Vec<Duration>,
}

impl Server {
    fn new(
        label: String,
        (addr, path): (SocketAddr, fn(u64) -> String),
        pids: Vec<u32>,
        (binary, binary_note): (&Path, &'static str),
    ) -> Self {
        Self {
            label,
            addr,
            path,
            pids,
            binary_bytes: std::fs::metadata(binary).unwrap().len(),
            binary_note,
            idle_rss_kib: 0,
            idle_ns_per_s: 0.0,
            per_probe_ns: Vec::new(),
            ticks_s: 0.0,
            switches: 0,
            probes: 0,
            failures: 0,
            from_due: Vec::new(),
        }
    }

    fn cpu_ns(&self) -> u64 {
        self.pids.iter().map(|&p| cpu_ns(p)).sum()
    }

    fn cpu_seconds(&self) -> f64 {
        self.pids.iter().map(|&p| cpu_seconds(p)).sum()
    }

    /// Context switches of every thread so far, voluntary and not.
    fn switches(&self) -> u64 {
        self.pids
            .iter()
            .flat_map(|p| std::fs::read_dir(format!("/proc/{p}/task")).unwrap())
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("status")).ok())
            .flat_map(|status| {
                status
                    .lines()
                    .filter(|l| l.contains("ctxt_switches:"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    }

    fn rss_kib(&self) -> u64 {
        self.pids.iter().map(|&p| rss_kib(p)).sum()
    }

    /// One round: `n` probes at [`PROBE_RATE_HZ`], each on a new connection; records the
    /// CPU per probe (idle rate subtracted) and each probe's latency from when it was due.
    fn round(&mut self, n: u64) {
        let period = Duration::from_nanos(1_000_000_000 / PROBE_RATE_HZ);
        let (ns0, s0, sw0) = (self.cpu_ns(), self.cpu_seconds(), self.switches());
        let start = Instant::now();
        for i in 0..n {
            let due = start + period * u32::try_from(i).unwrap();
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            let outcome = probe::probe_once(self.addr, &(self.path)(i), Duration::from_secs(1));
            if outcome.status != Some(200) {
                self.failures += 1;
            }
            self.from_due.push(Instant::now() - due);
        }
        let elapsed = start.elapsed().as_secs_f64();
        let busy = (self.cpu_ns() - ns0) as f64 - self.idle_ns_per_s * elapsed;
        self.per_probe_ns.push(busy / n as f64);
        self.ticks_s += self.cpu_seconds() - s0;
        self.switches += self.switches() - sw0;
        self.probes += n;
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn range(values: &[f64]) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken from the command line.
    let bin = vitals_e2e::bins::agent_bin();
    let baselines: Vec<PathBuf> = std::env::var_os("BENCH_BASELINE_BIN")
        .map(|bins| std::env::split_paths(&bins).collect())
        .unwrap_or_default();
    let idle_secs = env_u64("BENCH_IDLE_SECS", 60);
    let probes = env_u64("BENCH_PROBES", 3000);
    let rounds = env_u64("BENCH_PROBE_ROUNDS", 5);
    let upstreams = env_u64("BENCH_UPSTREAMS", 3);

    let nginx = Nginx::start(false);
    let nginx_deferred = Nginx::start(true);
    let pod = Pod::start(&bin, upstreams);
    let baseline_pods: Vec<_> = baselines
        .iter()
        .map(|b| (b, Pod::start(b, upstreams)))
        .collect();
    let pid = pod.pid();

    let readyz = |i: u64| format!("/readyz/w{}", i % WORKERS as u64);
    let mut servers = vec![Server::new(
        format!("agent ({})", bin.display()),
        (pod.addr, readyz),
        vec![pid],
        (&bin, ""),
    )];
    for (b, p) in &baseline_pods {
        servers.push(Server::new(
            format!("agent, baseline ({})", b.display()),
            (p.addr, readyz),
            vec![p.pid()],
            (b, ""),
        ));
    }
    servers.push(Server::new(
        "nginx `return 200`, `listen … deferred`".to_owned(),
        (nginx_deferred.addr, |_| "/readyz/w0".to_owned()),
        vec![nginx_deferred.master.0.id(), nginx_deferred.worker],
        (
            &nginx_deferred.bin,
            " (dynamic: libc, pcre, ssl, zlib besides)",
        ),
    ));
    // Last: the others' ratios are to it.
    servers.push(Server::new(
        "nginx `return 200`".to_owned(),
        (nginx.addr, |_| "/readyz/w0".to_owned()),
        vec![nginx.master.0.id(), nginx.worker],
        (&nginx.bin, " (dynamic: libc, pcre, ssl, zlib besides)"),
    ));
    let binary_bytes = servers[0].binary_bytes;

    eprintln!("{WORKERS} workers connected, {upstreams} upstreams ready; idle for {idle_secs} s …");
    thread::sleep(Duration::from_secs(2));
    let idle_rss_kib = rss_kib(pid);
    let (anon_kib, file_kib) = (status_kib(pid, "RssAnon:"), status_kib(pid, "RssFile:"));
    let idle0: Vec<u64> = servers.iter().map(Server::cpu_ns).collect();
    let (cpu0, ns0) = (cpu_seconds(pid), cpu_ns(pid));
    for s in &mut servers {
        s.idle_rss_kib = s.rss_kib();
    }
    let t0 = Instant::now();
    thread::sleep(Duration::from_secs(idle_secs));
    let idle_elapsed = t0.elapsed();
    let idle_ticks_pct = (cpu_seconds(pid) - cpu0) / idle_elapsed.as_secs_f64() * 100.0;
    let idle_cpu_pct = (cpu_ns(pid) - ns0) as f64 / idle_elapsed.as_nanos() as f64 * 100.0;
    for (s, before) in servers.iter_mut().zip(idle0) {
        s.idle_ns_per_s = (s.cpu_ns() - before) as f64 / idle_elapsed.as_secs_f64();
    }
    let idle_rss_after_kib = rss_kib(pid);

    eprintln!(
        "{rounds} rounds of {probes} probes at {PROBE_RATE_HZ}/s per server, a new connection each …"
    );
    for r in 0..rounds as usize {
        // Rotate who goes first, so that no server always follows the same one.
        let n = servers.len();
        for k in 0..n {
            servers[(r + k) % n].round(probes);
        }
    }
    let rss_after_probes_kib = rss_kib(pid);
    drop(baseline_pods);
    drop(pod);

    let nginx_rounds = servers.last().unwrap().per_probe_ns.clone();
    let agent = &servers[0];
    let mut from_due = agent.from_due.clone();
    from_due.sort_unstable();
    let (p50, p99, p999, max) = (
        percentile(&from_due, 0.50),
        percentile(&from_due, 0.99),
        percentile(&from_due, 0.999),
        *from_due.last().unwrap(),
    );
    let failures = agent.failures;
    let agent_probes = agent.probes;

    let mib = |kib: u64| kib as f64 / 1024.0;
    println!("| agent ({}) | measured | target |", bin.display());
    println!("|---|---|---|");
    println!(
        "| stripped binary | {:.2} MiB ({binary_bytes} bytes) | < 6 MiB |",
        binary_bytes as f64 / (1 << 20) as f64
    );
    println!(
        "| RSS, {WORKERS} workers connected + {upstreams} upstreams, idle | {:.2} MiB (after {idle_secs} s idle: {:.2} MiB) | < 8 MiB |",
        mib(idle_rss_kib),
        mib(idle_rss_after_kib)
    );
    println!(
        "| of which anonymous / file-backed (shared page cache: the binary's pages) | {:.2} / {:.2} MiB | |",
        mib(anon_kib),
        mib(file_kib)
    );
    println!(
        "| RSS after the probe runs | {:.2} MiB | |",
        mib(rss_after_probes_kib)
    );
    println!("| CPU over {idle_secs} idle s (`schedstat`) | {idle_cpu_pct:.3} % of a core (ticks: {idle_ticks_pct:.3} %) | < 0.5 % |");
    println!(
        "| probe latency at {PROBE_RATE_HZ}/s, new connection each (n = {agent_probes}) | p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs | p99 < 1 ms |",
        us(p50),
        us(p99),
        us(p999),
        us(max)
    );
    println!("| failed probes | {failures} | 0 |");

    println!();
    println!(
        "| server, {rounds} rounds × {probes} probes | CPU per probe (`schedstat`): median [min–max] | ÷ nginx, same round: median [min–max] | `utime+stime` per probe, all rounds | context switches per probe | binary | idle RSS | idle CPU | latency p50 / p99 | failed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut json_servers = Vec::new();
    for s in &servers {
        let ratios: Vec<f64> = s
            .per_probe_ns
            .iter()
            .zip(&nginx_rounds)
            .map(|(a, n)| a / n)
            .collect();
        let (lo, hi) = range(&s.per_probe_ns);
        let (rlo, rhi) = range(&ratios);
        let mut lat = s.from_due.clone();
        lat.sort_unstable();
        let (l50, l99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
        let ticks_us = s.ticks_s / s.probes as f64 * 1e6;
        println!(
            "| {} | {:.1} µs [{:.1}–{:.1}] | {:.2}x [{:.2}–{:.2}] | {ticks_us:.1} µs | {:.2} | {:.2} MiB{} | {:.2} MiB | {:.3} % | {:.0} / {:.0} µs | {} |",
            s.label,
            median(&s.per_probe_ns) / 1e3,
            lo / 1e3,
            hi / 1e3,
            median(&ratios),
            rlo,
            rhi,
            s.switches as f64 / s.probes as f64,
            s.binary_bytes as f64 / (1 << 20) as f64,
            s.binary_note,
            mib(s.idle_rss_kib),
            s.idle_ns_per_s / 1e7,
            us(l50),
            us(l99),
            s.failures,
        );
        json_servers.push(serde_json::json!({
            "server": s.label,
            "cpu_per_probe_ns": s.per_probe_ns,
            "ratio_to_nginx": ratios,
            "utime_stime_per_probe_us": ticks_us,
            "context_switches_per_probe": s.switches as f64 / s.probes as f64,
            "binary_bytes": s.binary_bytes,
            "idle_rss_kib": s.idle_rss_kib,
            "idle_cpu_percent": s.idle_ns_per_s / 1e7,
            "latency_us": {"p50": us(l50), "p99": us(l99)},
            "probes": s.probes,
            "failed_probes": s.failures,
        }));
    }

    let json = serde_json::json!({
        "binary_bytes": binary_bytes,
        "workers": WORKERS,
        "upstreams": upstreams,
        "idle_seconds": idle_secs,
        "idle_rss_kib": idle_rss_kib,
        "idle_rss_after_kib": idle_rss_after_kib,
        "rss_after_probes_kib": rss_after_probes_kib,
        "idle_rss_anon_kib": anon_kib,
        "idle_rss_file_kib": file_kib,
        "idle_cpu_percent": idle_cpu_pct,
        "idle_cpu_percent_ticks": idle_ticks_pct,
        "probes": agent_probes,
        "probe_rate_hz": PROBE_RATE_HZ,
        "probe_latency_us": {"p50": us(p50), "p99": us(p99), "p999": us(p999), "max": us(max)},
        "failed_probes": failures,
        "probe_cost": json_servers,
    });
    write_results("agent.json", &json);
}
