//! Test harness: a real agent (`vitals_agent::run` on its own runtime thread, port 0, a
//! temp-dir socket), the agent binary as a command ([`agent_cmd`]), the agent's short-timeout
//! fixture ([`fast`]) and inject's fixtures ([`fixtures`], [`yaml`]). The HTTP client, the
//! scripted worker, the metrics reader and polling come from the shared toolkit
//! (`vitals_e2e`); the helpers below keep the names these tests use.
#![allow(dead_code, unused_imports, missing_docs, clippy::unwrap_used)]

pub mod fixtures;
pub mod kubelet;
pub mod review;
pub mod yaml;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use vitals_agent::config::Config;
use vitals_agent::Listeners;
use vitals_e2e::client::{self, Request, Response};
use vitals_e2e::report::percentile;

pub use vitals_e2e::peer::{hello_line, PythonWorker, Worker};

/// How long any condition may take to come true before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub struct Agent {
    pub addr: SocketAddr,
    pub socket: PathBuf,
    pub config: Config,
    shutdown: CancellationToken,
    thread: Option<JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

/// Short bounds so scenarios take a second, not minutes: the one thresholds fixture of the
/// agent's integration tests (its unit tests use `verdict::tests::T`).
pub fn fast(c: &mut Config) {
    c.thresholds.hang = Duration::from_millis(800);
    c.thresholds.stall = Duration::from_millis(800);
    c.thresholds.load_stall = Duration::from_millis(800);
    c.thresholds.d_state = Duration::from_millis(800);
}

/// The agent binary as a command, stdin closed; the tests' own environment must not leak
/// `VITALS_*` settings in (every flag also reads one).
pub fn agent_cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vitals-agent"));
    for (k, _) in std::env::vars() {
        if k.starts_with("VITALS_") {
            c.env_remove(k);
        }
    }
    c.stdin(Stdio::null());
    c
}

impl Agent {
    pub fn start(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::defaults().expect("the built-in defaults are valid");
        config.listen = "127.0.0.1:0".parse().expect("addr");
        config.socket = dir.path().join("run/vitals/agent.sock");
        config.shutdown_grace = Duration::ZERO;
        config.proc_interval = Duration::from_millis(100);
        tweak(&mut config);
        let listeners = Listeners::bind(&config).expect("bind");
        let addr = listeners.http_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let thread = std::thread::spawn({
            let (config, shutdown) = (config.clone(), shutdown.clone());
            move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(vitals_agent::run(config, listeners, shutdown))
            }
        });
        Self {
            addr,
            socket: config.socket.clone(),
            config,
            shutdown,
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// One request on a new connection, as the kubelet probes.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        request(self.addr, method, path, headers)
    }

    pub fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[])
    }

    /// Waits until `path` answers `code` with `body`, returning that answer.
    #[track_caller]
    pub fn wait_for(&self, path: &str, code: u16, body: &str) -> Resp {
        vitals_e2e::wait::until(
            &format!("{path}: {code} {body:?}"),
            DEADLINE,
            || match try_request(self.addr, "GET", path, &[]) {
                Some(r) if r.code == code && r.body == body => Ok(r),
                other => Err(other),
            },
        )
    }

    pub fn worker(&self, name: &str, instance: &str) -> Worker {
        Worker::hello(&self.socket, name, instance)
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics").body
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/status").body).expect("status is JSON")
    }

    /// Signals shutdown (as SIGTERM does).
    pub fn signal_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Signals shutdown and waits for `run` to return.
    pub fn stop(mut self) -> std::io::Result<()> {
        self.shutdown.cancel();
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("agent thread")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An answer as these tests read it: status, headers, body text.
#[derive(Debug, Clone)]
pub struct Resp {
    pub code: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl From<Response> for Resp {
    fn from(r: Response) -> Self {
        Self {
            code: r.status,
            body: r.text(),
            headers: r.headers,
        }
    }
}

/// One request on a new connection, as the kubelet probes.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let req = Request {
        headers,
        ..Request::new(method, path)
    };
    client::send(addr, &req, DEADLINE)
        .unwrap_or_else(|e| panic!("{method} {path}: no complete HTTP answer: {e}"))
        .into()
}

/// Like [`request`], but `None` when the connection is refused, reset or closed early.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<Resp> {
    let req = Request {
        headers,
        ..Request::new(method, path)
    };
    client::send(addr, &req, DEADLINE).ok().map(Resp::from)
}

/// The probe port's promise under any load a test makes: p99 under this.
pub const P99_BOUND: Duration = Duration::from_millis(10);
/// And no answer slower than this.
pub const MAX_BOUND: Duration = Duration::from_millis(100);

/// Asserts `times` (one per probe) meet [`P99_BOUND`] and [`MAX_BOUND`], printing the
/// percentiles under `label`.
#[track_caller]
pub fn assert_fast(label: &str, mut times: Vec<Duration>) {
    times.sort();
    let p50 = percentile(&times, 0.5);
    let p99 = percentile(&times, 0.99);
    let max = *times.last().expect("at least one probe timed");
    eprintln!(
        "{label}: {} probes, p50 {p50:?}, p99 {p99:?}, max {max:?}",
        times.len()
    );
    assert!(p99 < P99_BOUND, "{label}: p99 {p99:?}");
    assert!(max < MAX_BOUND, "{label}: max {max:?}");
}

/// Polls `f` until it returns `Some`, failing after [`DEADLINE`].
#[track_caller]
pub fn eventually<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    vitals_e2e::wait::eventually(what, DEADLINE, f)
}

/// The value of one sample in a metrics text, the series written as the exposition writes it
/// (`name{labels}`, any label order).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    vitals_e2e::prom::series(text, series)
}
