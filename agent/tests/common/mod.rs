//! Test harness: a real agent (`vitals_agent::run` on its own runtime thread, port 0, a
//! temp-dir socket), a kubelet-like HTTP client (a new TCP connection per request), and
//! a scripted worker that writes raw protocol lines.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use vitals_agent::config::Config;
use vitals_agent::Listeners;
use vitals_proto::message::{decode_agent_message, AgentMessage};

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

/// Short bounds so scenarios take a second, not minutes.
pub fn fast(c: &mut Config) {
    c.thresholds.hang = Duration::from_millis(800);
    c.thresholds.stall = Duration::from_millis(800);
    c.thresholds.load_stall = Duration::from_millis(800);
    c.thresholds.d_state = Duration::from_millis(800);
}

impl Agent {
    pub fn start(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::defaults();
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

    /// Waits until `path` answers `code` with `body`, returning the last answer.
    pub fn wait_for(&self, path: &str, code: u16, body: &str) -> Resp {
        let start = Instant::now();
        loop {
            let r = try_request(self.addr, "GET", path, &[]);
            if let Some(r) = r.as_ref().filter(|r| r.code == code && r.body == body) {
                return r.clone();
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{path}: wanted {code} {body:?}, still {r:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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

pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    try_request(addr, method, path, headers).expect("a complete HTTP answer")
}

/// Like [`request`], but `None` when the connection is refused, reset or closed early.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<Resp> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(DEADLINE)).ok()?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    (!raw.is_empty()).then(|| parse_response(&raw))
}

pub fn parse_response(raw: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("a full response");
    let mut lines = head.lines();
    let status = lines.next().expect("status line");
    let code = status
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Resp {
        code,
        headers,
        body: body.to_owned(),
    }
}

/// A scripted worker speaking raw protocol lines.
pub struct Worker {
    pub stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Worker {
    /// Connects without saying anything.
    pub fn connect(socket: &std::path::Path) -> Self {
        let stream = UnixStream::connect(socket).expect("connect to agent socket");
        stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        Self { stream, reader }
    }

    /// Connects, says hello, and expects `welcome`.
    pub fn hello(socket: &std::path::Path, name: &str, instance: &str) -> Self {
        let mut w = Self::connect(socket);
        w.line(&hello_line(name, instance));
        match w.reply() {
            Some(AgentMessage::Welcome(_)) => w,
            other => panic!("expected welcome for {name}, got {other:?}"),
        }
    }

    pub fn line(&mut self, line: &str) {
        self.stream.write_all(line.as_bytes()).expect("write");
        self.stream.write_all(b"\n").expect("write");
    }

    pub fn phase(&mut self, phase: &str) {
        self.line(&format!(
            r#"{{"type":"phase","phase":"{phase}","detail":"test"}}"#
        ));
    }

    pub fn loading(&mut self, done: u64) {
        self.line(&format!(
            r#"{{"type":"phase","phase":"loading","detail":"weights","progress":{{"done":{done},"total":100,"unit":"MiB"}}}}"#
        ));
    }

    pub fn check(&mut self, name: &str, ok: bool, message: &str) {
        self.line(&format!(
            r#"{{"type":"check","name":"{name}","ok":{ok},"message":"{message}"}}"#
        ));
    }

    pub fn beat(&mut self, progress: u64) {
        self.line(&format!(
            r#"{{"type":"heartbeat","seq":{progress},"progress":{progress},"pending":0,"in_flight":0}}"#
        ));
    }

    /// The agent's next line, `None` at EOF.
    pub fn reply(&mut self) -> Option<AgentMessage> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(
                decode_agent_message(line.trim_end().as_bytes()).expect("agent speaks protocol"),
            ),
        }
    }

    /// Expects an `error` with `code`, then EOF.
    pub fn expect_error(&mut self, code: &str) {
        match self.reply() {
            Some(AgentMessage::Error(e)) => assert_eq!(e.code.as_str(), code, "{}", e.message),
            other => panic!("expected error {code}, got {other:?}"),
        }
        assert!(self.reply().is_none(), "connection closed after the error");
    }
}

pub fn hello_line(name: &str, instance: &str) -> String {
    format!(
        r#"{{"type":"hello","v":1,"worker":"{name}","instance":"{instance}","pid":{},"version":"test","heartbeat_ms":100}}"#,
        std::process::id()
    )
}

/// Polls `f` until it returns `Some`, failing after [`DEADLINE`].
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of one sample line in a metrics text (`name{labels}`), if present.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
