//! Probing like the kubelet: one HTTP probe ([`probe_once`], [`kubelet_probe`]) and the
//! threshold state machine that turns probe results into kubelet decisions ([`ProbeWorker`]).
//!
//! Mirrors the kubelet's httpGet prober (kubernetes/kubernetes 1.32: pkg/probe/http/http.go
//! and request.go, pkg/kubelet/prober/prober.go and worker.go): a NEW connection per
//! probe with `Connection: close`, one deadline (1 s by default) over connect, request and
//! body, the body capped at 10 KiB, success iff 200 ≤ status < 400 (a 3xx is a "warning",
//! which the kubelet counts as success), a connect or header error is a counted failure, a
//! body read error is retried up to 3 times and then thrown away. Redirects are not followed:
//! the agent never sends one, and a 3xx already counts as success.

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The kubelet's default probe timeout (`timeoutSeconds: 1`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// The kubelet reads at most this much of a probe's body (`maxRespBodyLength`).
pub const MAX_BODY: usize = 10 * 1024;
/// `prober.go` maxProbeRetries: only errored probes are retried.
const MAX_RETRIES: usize = 3;
/// A response head larger than this is treated as a broken server.
const MAX_HEAD: usize = 16 * 1024;

/// How the kubelet classifies one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeResult {
    /// 2xx.
    Success,
    /// 3xx: the kubelet counts it as success.
    Warning,
    /// Any other status, or no response (refused, timeout, reset before the head).
    Failure,
    /// The body could not be read: retried, then thrown away (changes no state).
    Error,
}

impl ProbeResult {
    /// Whether the kubelet counts this result as a pass.
    pub fn passed(self) -> bool {
        matches!(self, ProbeResult::Success | ProbeResult::Warning)
    }
}

/// One probe as the kubelet sees it, plus what a human needs to understand it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    /// The kubelet's classification.
    pub result: ProbeResult,
    /// The HTTP status, when a response head arrived.
    pub status: Option<u16>,
    /// The body (at most [`MAX_BODY`] bytes, lossy UTF-8), or the error for a failed connection.
    pub body: String,
    /// How long the probe took.
    pub latency: Duration,
}

impl ProbeOutcome {
    /// Whether the kubelet counts this probe as a pass.
    pub fn passed(&self) -> bool {
        self.result.passed()
    }

    /// The agent's reason for a failing probe: the text after `fail: `, or the error text
    /// when no response came. `None` for a passing probe.
    pub fn reason(&self) -> Option<&str> {
        if self.passed() {
            return None;
        }
        let body = self.body.trim();
        Some(body.strip_prefix("fail: ").unwrap_or(body))
    }
}

impl fmt::Display for ProbeOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(s) => write!(f, "{s} {}", self.body.trim()),
            None => write!(f, "--- {}", self.body.trim()),
        }
    }
}

/// Why a probe attempt errored (body read failure): the kubelet retries these.
#[derive(Debug)]
struct BodyError(String);

/// One `DoHTTPProbe`: GET `path` on a new connection to `addr` within `timeout`.
pub fn probe_once(addr: SocketAddr, path: &str, timeout: Duration) -> ProbeOutcome {
    let start = Instant::now();
    let outcome = |result, status, body: String| ProbeOutcome {
        result,
        status,
        body,
        latency: start.elapsed(),
    };
    match probe_attempt(addr, path, timeout, start) {
        Ok(Ok((status, body))) => {
            let result = match status {
                200..=299 => ProbeResult::Success,
                300..=399 => ProbeResult::Warning,
                _ => ProbeResult::Failure,
            };
            outcome(result, Some(status), body)
        }
        Ok(Err(BodyError(e))) => outcome(ProbeResult::Error, None, e),
        Err(e) => outcome(ProbeResult::Failure, None, e),
    }
}

/// `prober.runProbeWithRetries`: up to 3 tries, repeated only while the probe errors.
pub fn kubelet_probe(addr: SocketAddr, path: &str, timeout: Duration) -> ProbeOutcome {
    let mut last = probe_once(addr, path, timeout);
    for _ in 1..MAX_RETRIES {
        if last.result != ProbeResult::Error {
            break;
        }
        last = probe_once(addr, path, timeout);
    }
    last
}

/// The outer error is a failure before or while reading the head (a counted failure); the
/// inner one a failure while reading the body (an error, retried).
fn probe_attempt(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    start: Instant,
) -> Result<Result<(u16, String), BodyError>, String> {
    let deadline = start + timeout;
    let left = |what: &str| {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("Client.Timeout exceeded while {what}"))
    };
    let mut stream = TcpStream::connect_timeout(&addr, left("connecting")?)
        .map_err(|e| format!("dial {addr}: {e}"))?;
    // The kubelet's dialer sets SO_LINGER 1 s; closing with linger is not observable by the
    // agent, so a plain close is enough here.
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .set_write_timeout(Some(left("writing the request")?))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;

    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() > MAX_HEAD {
            return Err("response head too large".into());
        }
        let n = read_some(&mut stream, &mut buf, left("awaiting headers")?).map_err(|e| {
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                "Client.Timeout exceeded while awaiting headers".to_string()
            } else {
                format!("awaiting headers: {e}")
            }
        })?;
        if n == 0 {
            return Err("EOF before the response head".into());
        }
    };
    let head = parse_head(&buf[..head_end]).map_err(|e| format!("malformed response: {e}"))?;
    let mut body = buf.split_off(head_end);
    // Read the body until EOF (Connection: close), the declared length, or the cap.
    let want = head.content_length.map_or(MAX_BODY, |n| n.min(MAX_BODY));
    while body.len() < want && !head.chunked {
        let budget = match left("reading body") {
            Ok(d) => d,
            Err(e) => return Ok(Err(BodyError(e))),
        };
        match read_some(&mut stream, &mut body, budget) {
            // EOF before the declared length is Go's "unexpected EOF": an error.
            Ok(0) if head.content_length.is_some() => {
                return Ok(Err(BodyError("EOF before the end of the body".into())))
            }
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Ok(Err(BodyError(format!("reading body: {e}")))),
        }
    }
    if head.chunked {
        loop {
            match decode_chunked(&body) {
                Ok(Some((decoded, _))) => {
                    body = decoded;
                    break;
                }
                Ok(None) => {}
                Err(e) => return Ok(Err(BodyError(e))),
            }
            let budget = match left("reading body") {
                Ok(d) => d,
                Err(e) => return Ok(Err(BodyError(e))),
            };
            match read_some(&mut stream, &mut body, budget) {
                Ok(0) => return Ok(Err(BodyError("EOF inside a chunked body".into()))),
                Ok(_) => {}
                Err(e) => return Ok(Err(BodyError(format!("reading body: {e}")))),
            }
        }
    }
    body.truncate(MAX_BODY);
    Ok(Ok((
        head.status,
        String::from_utf8_lossy(&body).into_owned(),
    )))
}

/// Reads once into `buf` with a read timeout of `budget`.
pub(crate) fn read_some(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    budget: Duration,
) -> std::io::Result<usize> {
    stream.set_read_timeout(Some(budget))?;
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// The parts of a response head the harness uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub status: u16,
    pub content_length: Option<usize>,
    pub chunked: bool,
    pub headers: Vec<(String, String)>,
}

/// The index just past the `\r\n\r\n` that ends a response head.
pub(crate) fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parses `HTTP/1.x NNN reason` and the header lines.
pub(crate) fn parse_head(head: &[u8]) -> Result<Head, String> {
    let text = std::str::from_utf8(head).map_err(|_| "head is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (100..=999).contains(s))
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut out = Head {
        status,
        content_length: None,
        chunked: false,
        headers: Vec::new(),
    };
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_string());
        if name == "content-length" {
            out.content_length = Some(
                value
                    .parse()
                    .map_err(|_| format!("bad content-length {value:?}"))?,
            );
        } else if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
            out.chunked = true;
        }
        out.headers.push((name, value));
    }
    Ok(out)
}

/// Decodes a complete chunked body: `Ok(None)` while more bytes are needed, else the body
/// and how many input bytes it used.
pub(crate) fn decode_chunked(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let Some(line_end) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&buf[pos..pos + line_end])
            .map_err(|_| "chunk size is not UTF-8".to_string())?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        pos += line_end + 2;
        if size == 0 {
            // Trailers (none expected) end with an empty line.
            let Some(end) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
                return Ok(None);
            };
            return Ok(Some((out, pos + end + 2)));
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
}

/// Which kind of kubelet probe a [`ProbeWorker`] models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// `readinessProbe`: starts NotReady; failures take the pod out of endpoints.
    Readiness,
    /// `livenessProbe`: starts Live; reaching the failure threshold restarts the container.
    Liveness,
    /// `startupProbe`: stops probing once it has succeeded; failing restarts the container.
    Startup,
}

/// What the kubelet concludes from a run of probe results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubeletState {
    /// Readiness: in the endpoints.
    Ready,
    /// Readiness: out of the endpoints.
    NotReady,
    /// Liveness: no action.
    Live,
    /// Startup: not yet succeeded; other probes wait.
    NotStarted,
    /// Startup: succeeded; never probed again.
    Started,
    /// Liveness or startup reached its failure threshold: the container would be restarted.
    WouldRestart,
}

/// `prober/worker.go` `doProbe` for one probe: the state changes only when a run of equal
/// results reaches its threshold; errors are thrown away; startup stops once started.
#[derive(Debug, Clone)]
pub struct ProbeWorker {
    kind: ProbeKind,
    success_threshold: u32,
    failure_threshold: u32,
    passing: Option<bool>,
    last: Option<bool>,
    run: u32,
    started: bool,
    restarts: u32,
}

impl ProbeWorker {
    /// A worker with the kubelet's initial state for `kind` and the given thresholds
    /// (both at least 1, as the API server enforces).
    pub fn new(kind: ProbeKind, success_threshold: u32, failure_threshold: u32) -> Self {
        Self {
            kind,
            success_threshold: success_threshold.max(1),
            failure_threshold: failure_threshold.max(1),
            passing: Self::initial(kind),
            last: None,
            run: 0,
            started: false,
            restarts: 0,
        }
    }

    fn initial(kind: ProbeKind) -> Option<bool> {
        match kind {
            ProbeKind::Readiness => Some(false),
            ProbeKind::Liveness => Some(true),
            ProbeKind::Startup => None,
        }
    }

    /// The kubelet's current conclusion.
    pub fn state(&self) -> KubeletState {
        match self.kind {
            ProbeKind::Readiness if self.passing == Some(true) => KubeletState::Ready,
            ProbeKind::Readiness => KubeletState::NotReady,
            _ if self.started => KubeletState::Started,
            _ if self.restarts > 0 => KubeletState::WouldRestart,
            ProbeKind::Liveness => KubeletState::Live,
            ProbeKind::Startup => KubeletState::NotStarted,
        }
    }

    /// How many times the container would have been restarted.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// Feeds one probe result; returns the new state when it changed.
    pub fn feed(&mut self, result: ProbeResult) -> Option<KubeletState> {
        if result == ProbeResult::Error || self.started {
            return None;
        }
        let pass = result.passed();
        self.run = if self.last == Some(pass) {
            self.run + 1
        } else {
            1
        };
        self.last = Some(pass);
        let threshold = if pass {
            self.success_threshold
        } else {
            self.failure_threshold
        };
        if self.run < threshold {
            return None;
        }
        let before = self.state();
        self.passing = Some(pass);
        if !pass && self.kind != ProbeKind::Readiness {
            // The container would be restarted; the kubelet resets the worker.
            self.restarts += 1;
            self.run = 0;
            self.passing = Self::initial(self.kind);
            return Some(KubeletState::WouldRestart);
        }
        self.started = self.kind == ProbeKind::Startup;
        let after = self.state();
        (after != before).then_some(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::thread;

    /// A one-connection-per-request server: answers each request with `respond(i)` and
    /// reports the raw request it read.
    fn serve(
        respond: impl Fn(usize) -> Option<Vec<u8>> + Send + 'static,
        count: usize,
    ) -> (SocketAddr, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for i in 0..count {
                let Ok((mut conn, _)) = listener.accept() else {
                    return;
                };
                let mut buf = Vec::new();
                while find_head_end(&buf).is_none() {
                    if read_some(&mut conn, &mut buf, Duration::from_secs(2)).unwrap_or(0) == 0 {
                        break;
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
                if let Some(answer) = respond(i) {
                    let _ = conn.write_all(&answer);
                } else {
                    // Never answer: hold the connection past the probe timeout.
                    thread::sleep(Duration::from_millis(1500));
                }
            }
        });
        (addr, rx)
    }

    fn answer(status: u16, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn classifies_statuses_like_the_kubelet() {
        let statuses = [200u16, 204, 302, 399, 400, 404, 500, 503];
        let (addr, _) = serve(
            move |i| Some(answer(statuses[i], "fail: x")),
            statuses.len(),
        );
        let got: Vec<_> = statuses
            .iter()
            .map(|_| probe_once(addr, "/livez", DEFAULT_TIMEOUT).result)
            .collect();
        use ProbeResult::*;
        assert_eq!(
            got,
            [Success, Success, Warning, Warning, Failure, Failure, Failure, Failure]
        );
    }

    #[test]
    fn sends_a_kubelet_request_on_a_new_connection() {
        let (addr, requests) = serve(|_| Some(answer(200, "ok")), 2);
        for _ in 0..2 {
            let out = probe_once(addr, "/readyz/model?verbose", DEFAULT_TIMEOUT);
            assert_eq!(out.status, Some(200));
            assert_eq!(out.body, "ok");
            assert_eq!(out.reason(), None);
        }
        // Two accepts served two probes: each probe opened its own connection.
        for _ in 0..2 {
            let req = requests
                .recv_timeout(Duration::from_secs(2))
                .expect("the server saw the request");
            assert!(
                req.starts_with("GET /readyz/model?verbose HTTP/1.1\r\n"),
                "{req}"
            );
            assert!(req.contains("\r\nConnection: close\r\n"), "{req}");
            assert!(req.contains("\r\nUser-Agent: kube-probe/1.32\r\n"), "{req}");
            assert!(req.contains("\r\nAccept: */*\r\n"), "{req}");
        }
    }

    #[test]
    fn reports_the_agents_reason() {
        let (addr, _) = serve(|_| Some(answer(503, "fail: load_stalled\n")), 1);
        let out = probe_once(addr, "/livez/model", DEFAULT_TIMEOUT);
        assert_eq!(out.result, ProbeResult::Failure);
        assert_eq!(out.reason(), Some("load_stalled"));
    }

    #[test]
    fn a_silent_server_fails_after_the_timeout() {
        let (addr, _) = serve(|_| None, 1);
        let out = probe_once(addr, "/livez", Duration::from_millis(300));
        assert_eq!(out.result, ProbeResult::Failure);
        assert!(out.latency >= Duration::from_millis(300), "{out:?}");
        assert!(out.latency < Duration::from_millis(900), "{out:?}");
        assert!(
            out.body.contains("Timeout") || out.body.contains("timed out"),
            "{out:?}"
        );
    }

    #[test]
    fn a_refused_connection_fails() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        drop(listener);
        let out = probe_once(addr, "/livez", DEFAULT_TIMEOUT);
        assert_eq!(out.result, ProbeResult::Failure);
        assert_eq!(out.status, None);
    }

    #[test]
    fn caps_the_body_and_reads_chunked_bodies() {
        let big = "x".repeat(MAX_BODY * 2);
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec();
        let (addr, _) = serve(
            move |i| {
                Some(if i == 0 {
                    answer(200, &big)
                } else {
                    chunked.clone()
                })
            },
            2,
        );
        assert_eq!(probe_once(addr, "/", DEFAULT_TIMEOUT).body.len(), MAX_BODY);
        assert_eq!(probe_once(addr, "/", DEFAULT_TIMEOUT).body, "ok");
    }

    #[test]
    fn a_body_cut_short_is_an_error_and_retried() {
        // A 10-byte chunk of which 2 bytes arrive before the connection closes: the first
        // two attempts error, the third succeeds.
        let (addr, requests) = serve(
            |i| {
                Some(if i < 2 {
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nA\r\nok".to_vec()
                } else {
                    answer(200, "ok")
                })
            },
            3,
        );
        let out = kubelet_probe(addr, "/", DEFAULT_TIMEOUT);
        assert_eq!(out.result, ProbeResult::Success);
        assert_eq!(requests.try_iter().count(), 3);
    }

    fn feed_all(w: &mut ProbeWorker, results: &str) -> Vec<Option<KubeletState>> {
        results
            .chars()
            .map(|c| {
                w.feed(match c {
                    's' => ProbeResult::Success,
                    'w' => ProbeResult::Warning,
                    'f' => ProbeResult::Failure,
                    _ => ProbeResult::Error,
                })
            })
            .collect()
    }

    #[test]
    fn readiness_needs_runs_of_equal_results() {
        let mut w = ProbeWorker::new(ProbeKind::Readiness, 2, 3);
        assert_eq!(w.state(), KubeletState::NotReady);
        let got = feed_all(&mut w, "sfsseffsff");
        use KubeletState::*;
        // s f s s(→Ready) e(ignored) f f s f f: failures never reach 3 in a row.
        assert_eq!(
            got,
            [
                None,
                None,
                None,
                Some(Ready),
                None,
                None,
                None,
                None,
                None,
                None
            ]
        );
        assert_eq!(feed_all(&mut w, "f"), [Some(NotReady)]);
    }

    #[test]
    fn liveness_restarts_at_the_failure_threshold_and_resets() {
        let mut w = ProbeWorker::new(ProbeKind::Liveness, 1, 3);
        assert_eq!(w.state(), KubeletState::Live);
        let got = feed_all(&mut w, "ffwfffff");
        use KubeletState::*;
        assert_eq!(
            got,
            [None, None, None, None, None, Some(WouldRestart), None, None]
        );
        assert_eq!(w.restarts(), 1);
        assert_eq!(feed_all(&mut w, "f"), [Some(WouldRestart)]);
        assert_eq!(w.restarts(), 2);
    }

    #[test]
    fn startup_stops_once_started() {
        let mut w = ProbeWorker::new(ProbeKind::Startup, 1, 30);
        assert_eq!(w.state(), KubeletState::NotStarted);
        assert_eq!(
            feed_all(&mut w, "ffs"),
            [None, None, Some(KubeletState::Started)]
        );
        assert_eq!(feed_all(&mut w, "ffffffffff"), [None; 10]);
        assert_eq!(w.state(), KubeletState::Started);
    }
}
