//! The probe port (hyper 1, HTTP/1 only): routing and rendering of SPEC §3 — probes in
//! plain, `?verbose` and JSON forms, `/metrics`, `/status`, `/group` (SPEC §9), 404, 405,
//! HEAD.
//!
//! Every answer is computed from in-memory state held for microseconds; nothing here
//! waits on a worker or does I/O besides the client's own socket. Slow or numerous
//! clients are bounded: a connection cap, a header size limit, and a header read timeout
//! that also closes kept-alive connections idle for that long (hyper starts it for each
//! next request). At the cap a new connection is always served: the agent closes the
//! oldest connection that has not completed a request (an idle or slow-loris client),
//! else the one idle the longest since its last answer (`ConnTable`), so a kubelet
//! probe on a fresh connection is answered whatever a flood holds open, and memory stays
//! bounded by the cap (issue 21 item 14).
//!
//! A kubelet's probe (a fresh connection carrying one whole `GET` of a probe path with
//! `Connection: close`) is answered by the accept loop itself, from its first read, and
//! closed: no task, no runtime registration, no place in the table, so it costs what nginx's
//! `return 200` costs (docs/benchmarks.md). Every other request, and one not arrived whole
//! at accept, is hyper's, served as above; the answers are the same.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{self, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use nix::errno::Errno;
use nix::sys::socket::{recv, send, MsgFlags};
use std::os::fd::AsRawFd;
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::surfaces::metrics::Metrics;
use crate::surfaces::status::StatusSource;
use crate::surfaces::text;
use vitals_core::snapshot::Snapshots;
use vitals_core::state::group::{self, GroupReport};
use vitals_core::state::registry::State;
use vitals_core::verdict::{Answer, Probe, Verdicts};

/// The largest request head accepted (hyper's minimum is 8 KiB).
const MAX_HEAD: usize = 16 * 1024;

/// Bounds on HTTP clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Header read bound, also the keep-alive idle bound.
    pub header_timeout: Duration,
}

/// What the probe port reads: snapshots to judge, metrics to count and encode, and the
/// facts `/status` adds. Nothing here can write the registry.
#[derive(Debug, Clone)]
pub struct Context {
    /// Every answer is rendered from one snapshot.
    pub snapshots: Snapshots,
    /// Probe counts; refreshed from a snapshot and encoded on `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The rest of `/status`.
    pub status: StatusSource,
}

/// One open connection of the probe port.
#[derive(Debug)]
struct ConnEntry {
    opened: Instant,
    /// When its latest request was answered; `None` until its first one.
    answered: Option<Instant>,
    /// Dropped to close it: its task ends when the receiver sees the sender gone (a
    /// oneshot is one allocation and no lock, where a cancellation token per connection
    /// was a tree node behind a mutex).
    _close: oneshot::Sender<()>,
}

/// The probe port's open connections, so that one can be closed to make room at the cap.
#[derive(Debug, Default)]
struct ConnTable {
    next_id: u64,
    open: HashMap<u64, ConnEntry>,
}

impl ConnTable {
    /// Registers a new connection: its id, and what resolves when it is to be closed
    /// (evicted, or the table dropped at shutdown).
    fn add(&mut self, now: Instant) -> (u64, oneshot::Receiver<()>) {
        let id = self.next_id;
        self.next_id += 1;
        let (close, closed) = oneshot::channel();
        self.open.insert(
            id,
            ConnEntry {
                opened: now,
                answered: None,
                _close: close,
            },
        );
        (id, closed)
    }

    /// Closes the connection which makes room: the oldest that has not completed a request
    /// (a client that connected and sent nothing, or a slow loris), else the one idle
    /// longest since its last answer. It leaves the table at once; its id.
    fn evict(&mut self) -> Option<u64> {
        let victim = self
            .open
            .iter()
            .min_by_key(|(_, c)| match c.answered {
                None => (0, c.opened),
                Some(at) => (1, at),
            })
            .map(|(id, _)| *id)?;
        self.open.remove(&victim);
        Some(victim)
    }
}

/// [`ConnTable`] behind the lock the accept loop and the connections share (held for a
/// map operation, never across an await).
#[derive(Debug, Default)]
struct Conns(Mutex<ConnTable>);

impl Conns {
    fn with<T>(&self, f: impl FnOnce(&mut ConnTable) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A probe-port connection for hyper: the socket, whose orderly shutdown is its close.
/// hyper shuts a connection down (`shutdown(SHUT_WR)`, a FIN) just before it ends, and the
/// connection's task closes the socket right after, which sends the same FIN: one
/// system call per connection less (nginx closes without a shutdown too).
/// What was read before hyper took over (a request the fast path left to it) is read first.
struct Conn(TokioIo<TcpStream>, Bytes);

impl hyper::rt::Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut task::Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.1.is_empty() {
            let n = buf.remaining().min(self.1.len());
            buf.put_slice(&self.1.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut task::Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The probe port's listening socket, non-blocking and watched by the runtime.
pub type Listener = AsyncFd<std::net::TcpListener>;

/// Watches `listener` (non-blocking, from [`crate::listen::bind`]) on the runtime. Not a
/// tokio `TcpListener`: its `accept` registers every connection with the runtime (an
/// `epoll_ctl` to add and one to remove), which a probe answered in the accept loop never
/// needs.
#[allow(unsafe_code)]
pub fn listener(listener: std::net::TcpListener) -> std::io::Result<Listener> {
    // SAFETY: a std `TcpListener` owns its descriptor for its whole life and `as_raw_fd`
    // always returns that one; the `AsyncFd` owns the listener, so the descriptor stays
    // open and the same until the `AsyncFd` is dropped.
    unsafe { AsyncFd::register(listener) }.map_err(std::io::Error::from)
}

/// Serves HTTP on `listener` until `stop`.
pub async fn serve(ctx: Context, listener: Listener, limits: Limits, stop: CancellationToken) {
    let conns = Arc::new(Conns::default());
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD)
        .keep_alive(true);
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => {
                // Closes every connection (their tasks see their senders dropped), so
                // that none needs a handle on `stop` of its own.
                conns.with(|t| t.open.clear());
                return;
            }
            a = accept(&listener) => a,
        };
        let tcp = match accepted {
            Ok(tcp) => tcp,
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        // A kubelet's probe is whole by now (the listener defers accept until a client's
        // first bytes are in, `listen::bind`): answered here and closed, it costs no task,
        // no runtime registration and no place in the connection table.
        let mut first = [0u8; FIRST_READ];
        let read = match recv(tcp.as_raw_fd(), &mut first, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => continue,
            Ok(n) => n,
            Err(Errno::EAGAIN) => 0,
            Err(_) => continue,
        };
        let first = &first[..read];
        if let Some(answer) = kubelet_probe(first).map(|p| answer_probe(&ctx, p)) {
            match send(
                tcp.as_raw_fd(),
                &answer,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(n) if n == answer.len() => continue,
                // A fresh socket's send buffer takes a ~150-byte answer whole; if not, the
                // rest goes out from a task like any connection's.
                Ok(n) => {
                    if let Ok(tcp) = runtime_stream(tcp) {
                        tokio::spawn(send_rest(tcp, answer, n));
                    }
                    continue;
                }
                Err(_) => continue,
            }
        }
        let tcp = match runtime_stream(tcp) {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::debug!(error = %e, "HTTP connection not watched");
                continue;
            }
        };
        let now = Instant::now();
        let (id, closed, evicted) = conns.with(|t| {
            // Refusing would let a flood fail the kubelet's probes; queueing would delay
            // them: the new connection takes the place of one that is doing nothing.
            let evicted = if t.open.len() >= limits.max_connections {
                t.evict()
            } else {
                None
            };
            let (id, closed) = t.add(now);
            (id, closed, evicted)
        });
        if evicted.is_some() {
            tracing::debug!(
                "HTTP connection cap reached; closed an idle connection to serve a new one"
            );
            // Let the victim's task drop its socket before the next accept, so open sockets
            // stay at the cap under a flood that reconnects whatever is closed.
            tokio::task::yield_now().await;
        }
        let ctx = ctx.clone();
        let builder = builder.clone();
        let conns = Arc::clone(&conns);
        let first = Bytes::copy_from_slice(first);
        tokio::spawn(async move {
            tokio::select! {
                _ = closed => {}
                () = connection(tcp, first, &ctx, &builder, &conns, id) => {}
            }
            conns.with(|t| t.open.remove(&id));
        });
    }
}

/// The next connection, accepted blocking (the fast path reads and writes it with
/// `MSG_DONTWAIT`; only one handed to a task is made non-blocking).
async fn accept(listener: &Listener) -> std::io::Result<std::net::TcpStream> {
    loop {
        let mut ready = listener.readable().await?;
        if let Ok(accepted) = ready.try_io(|l| l.get_ref().accept()) {
            return accepted.map(|(tcp, _)| tcp);
        }
    }
}

/// `tcp` registered with the runtime, for a task to serve.
fn runtime_stream(tcp: std::net::TcpStream) -> std::io::Result<TcpStream> {
    tcp.set_nonblocking(true)?;
    TcpStream::from_std(tcp)
}

/// Sends what is left of a fast-path answer, then closes.
async fn send_rest(mut tcp: TcpStream, answer: Vec<u8>, sent: usize) {
    if let Some(rest) = answer.get(sent..) {
        if let Err(e) = tcp.write_all(rest).await {
            tracing::debug!(error = %e, "HTTP probe answer not sent");
        }
    }
}

/// The most of a first read the fast path looks at: a kubelet's probe request is about
/// 150 bytes; anything longer is hyper's.
const FIRST_READ: usize = 1024;

/// Serves one connection the accept loop did not answer itself, with hyper: what the loop
/// read first is read first; a request not there yet at accept is hyper's to wait for,
/// under its header timeout and keep-alive rules. The answers are the same as the fast
/// path's (SPEC §3).
async fn connection(
    tcp: TcpStream,
    first: Bytes,
    ctx: &Context,
    builder: &http1::Builder,
    conns: &Conns,
    id: u64,
) {
    let conn = builder.serve_connection(
        Conn(TokioIo::new(tcp), first),
        service_fn(|req| {
            let response = handle(ctx, &req);
            conns.with(|t| {
                if let Some(c) = t.open.get_mut(&id) {
                    c.answered = Some(Instant::now());
                }
            });
            async move { Ok::<_, Infallible>(response) }
        }),
    );
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// A probe the fast path answers: its route, when `head` is exactly one whole `GET` of a
/// probe path, HTTP/1.1, `Connection: close`, asking for the plain form ([`form`]); else `None`
/// (hyper's).
fn kubelet_probe(head: &[u8]) -> Option<(Probe, Option<&str>)> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(len)) if len == head.len() => {}
        _ => return None,
    }
    if req.method != Some("GET") || req.version != Some(1) {
        return None;
    }
    let (mut close, mut accept) = (false, None);
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).ok()?;
        if h.name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if h.name.eq_ignore_ascii_case("accept") {
            accept = Some(value);
        } else if h.name.eq_ignore_ascii_case("content-length")
            || h.name.eq_ignore_ascii_case("transfer-encoding")
        {
            return None;
        }
    }
    // The same rule as hyper's path: the plain form is the one answered here.
    let (path, query) = req
        .path
        .map(|p| p.split_once('?').map_or((p, None), |(p, q)| (p, Some(q))))?;
    match route(path)? {
        Route::Probe(probe, worker) if close && form(query, accept) == Form::Plain => {
            Some((probe, worker))
        }
        _ => None,
    }
}

/// The whole HTTP/1.1 answer to a probe the fast path took: the status, headers and body
/// `handle` gives the same request, and what hyper adds to them (`date`, `content-length`,
/// `connection: close`), so a client cannot tell which path answered.
fn answer_probe(ctx: &Context, (probe, worker): (Probe, Option<&str>)) -> Vec<u8> {
    let (status, ctype, body) = probe_answer(ctx, probe, worker, Form::Plain, Instant::now());
    on_the_wire(status, ctype, &body, SystemTime::now())
}

/// An answer as hyper writes it to a client that asked `Connection: close`, dated `now`.
fn on_the_wire(status: StatusCode, ctype: &'static str, body: &str, now: SystemTime) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(192 + body.len());
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    for (name, value) in answer_headers(ctype) {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    let _ = write!(
        out,
        "date: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        httpdate::HttpDate::from(now),
        body.len()
    );
    out.into_bytes()
}

/// What a path names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route<'a> {
    Probe(Probe, Option<&'a str>),
    Metrics,
    Status,
    Group,
}

fn route(path: &str) -> Option<Route<'_>> {
    match path {
        "/metrics" => return Some(Route::Metrics),
        "/status" => return Some(Route::Status),
        "/group" => return Some(Route::Group),
        _ => {}
    }
    let rest = path.strip_prefix('/')?;
    let (head, worker) = match rest.split_once('/') {
        Some((head, w)) if !w.is_empty() && !w.contains('/') => (head, Some(w)),
        Some(_) => return None,
        None => (rest, None),
    };
    Some(Route::Probe(Probe::from_path(head)?, worker))
}

/// How to render a probe answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Plain,
    Verbose,
    Json,
}

fn form(query: Option<&str>, accept: Option<&str>) -> Form {
    let mut verbose = false;
    let mut json = accept.is_some_and(|a| a.contains("application/json"));
    for pair in query.unwrap_or("").split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "verbose" => verbose = !matches!(value, "0" | "false"),
            "format" => json = value == "json",
            _ => {}
        }
    }
    if json {
        Form::Json
    } else if verbose {
        Form::Verbose
    } else {
        Form::Plain
    }
}

/// Renders a probe answer: `(status, content type, body)`.
fn render(answer: &Answer, form: Form) -> (StatusCode, &'static str, String) {
    let status = if answer.ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let (ctype, body) = match form {
        Form::Plain => (
            TEXT,
            match &answer.result {
                Ok(()) => "ok".to_owned(),
                Err(why) => format!("fail: {}", text::failing(why)),
            },
        ),
        Form::Verbose => {
            let mut body = String::new();
            for c in &answer.checks {
                let name = text::check_name(&c.name);
                match &c.result {
                    Ok(()) => body.push_str(&format!("[+]{name} ok\n")),
                    Err(r) => body.push_str(&format!("[-]{name} failed: {}\n", text::reason(r))),
                }
            }
            let verdict = if answer.ok() { "passed" } else { "failed" };
            body.push_str(&format!("{} check {verdict}\n", answer.probe.as_str()));
            (TEXT, body)
        }
        Form::Json => {
            let checks: Vec<_> = answer
                .checks
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "name": text::check_name(&c.name),
                        "ok": c.ok(),
                        "reason": c.result.as_ref().err().map(text::reason),
                    })
                })
                .collect();
            let doc = serde_json::json!({
                "status": if answer.ok() { "pass" } else { "fail" },
                "checks": checks,
            });
            (JSON, doc.to_string())
        }
    };
    (status, ctype, body)
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";
const METRICS: &str = "text/plain; version=0.0.4; charset=utf-8";

fn respond(
    status: StatusCode,
    ctype: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    for (name, value) in answer_headers(ctype) {
        resp.headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    resp
}

/// The headers of every answer, whichever path sends it: probes are never cached (a
/// proxy's stale `ok` would hide a hang).
fn answer_headers(ctype: &'static str) -> [(HeaderName, &'static str); 2] {
    [(CONTENT_TYPE, ctype), (CACHE_CONTROL, "no-store")]
}

/// Answers one request. HEAD gets GET's status and headers; hyper drops the body.
fn handle<B>(ctx: &Context, req: &Request<B>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let Some(route) = route(req.uri().path()) else {
        return respond(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /livez, /readyz, /startupz, /livez/{worker}, /metrics, /status or /group\n",
        );
    };
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut resp = respond(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "method not allowed: use GET or HEAD\n",
        );
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match route {
        Route::Probe(probe, worker) => {
            let accept = req.headers().get(ACCEPT).and_then(|a| a.to_str().ok());
            let form = form(req.uri().query(), accept);
            let (status, ctype, body) = probe_answer(ctx, probe, worker, form, started);
            respond(status, ctype, body)
        }
        Route::Metrics => {
            ctx.metrics.refresh(&ctx.snapshots.take(started));
            respond(StatusCode::OK, METRICS, ctx.metrics.encode())
        }
        Route::Group => {
            let snapshot = ctx.snapshots.take(started);
            let report = group_report(&snapshot.verdicts, &snapshot.state);
            match serde_json::to_vec(&report) {
                Ok(body) => respond(StatusCode::OK, JSON, body),
                Err(e) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    format!("cannot render group: {e}\n"),
                ),
            }
        }
        Route::Status => {
            let doc = ctx.status.build(&ctx.snapshots.take(started));
            match serde_json::to_vec_pretty(&doc) {
                Ok(body) => respond(StatusCode::OK, JSON, body),
                Err(e) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    format!("cannot render status: {e}\n"),
                ),
            }
        }
    }
}

/// A probe's answer (`status, content type, body`), judged from a snapshot taken at
/// `started`, and counted: 404 naming the known workers for an unknown one.
fn probe_answer(
    ctx: &Context,
    probe: Probe,
    worker: Option<&str>,
    form: Form,
    started: Instant,
) -> (StatusCode, &'static str, String) {
    // A container's probe judges that container alone; the aggregate judges them all.
    let answer = match worker {
        None => ctx.snapshots.take(started).verdicts.aggregate(probe),
        Some(name) => {
            let snapshot = ctx.snapshots.take_for(started, name);
            match snapshot.verdicts.worker(probe, name) {
                Some(answer) => answer,
                None => {
                    // Named from the state: judging every container only to list them
                    // would make a wrong probe path the costliest request.
                    let known: Vec<_> = snapshot.state.names().collect();
                    let known = if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    };
                    let body = format!("unknown worker {name:?}; known workers: {known}\n");
                    return (StatusCode::NOT_FOUND, TEXT, body);
                }
            }
        }
    };
    let (status, ctype, body) = render(&answer, form);
    ctx.metrics
        .probe(probe, &answer.target, answer.ok(), started.elapsed());
    (status, ctype, body)
}

/// What this agent answers on `GET /group` (SPEC §9): `live` when every container's
/// `/livez/<c>` passes (the agent's own liveness is not the model's), `ready` as `/readyz`,
/// the first failing liveness reason (`<container>: <reason>`), else the readiness reason,
/// and the instances the registry knows.
fn group_report(v: &Verdicts, state: &State) -> GroupReport {
    let not_live = v.names().find_map(|name| {
        let why = v.worker(Probe::Live, name)?.result.err()?;
        Some(format!("{name}: {}", text::failing(&why)))
    });
    let ready = v.aggregate(Probe::Ready);
    GroupReport {
        live: not_live.is_none(),
        ready: ready.ok(),
        reason: not_live.or_else(|| ready.result.err().map(|why| text::failing(&why))),
        instances: group::instances(state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitals_core::fixtures::name;
    use vitals_core::verdict::{Check, CheckName, Failing, ReadyReason, Reason, Target};

    /// The kubelet's request (kubernetes/kubernetes pkg/probe/http: Go's client with
    /// keep-alives off sends `Connection: close`; `User-Agent: kube-probe/<version>`,
    /// `Accept: */*`) is the fast path's; anything else is left to hyper whole.
    #[test]
    fn only_a_whole_kubelet_probe_takes_the_fast_path() {
        let kubelet = |path: &str, extra: &str| {
            format!("GET {path} HTTP/1.1\r\nHost: 10.1.2.3:9180\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\n{extra}Connection: close\r\n\r\n")
        };
        assert_eq!(
            kubelet_probe(kubelet("/readyz", "").as_bytes()),
            Some((Probe::Ready, None))
        );
        assert_eq!(
            kubelet_probe(kubelet("/livez/vllm", "").as_bytes()),
            Some((Probe::Live, Some("vllm")))
        );
        let hypers = [
            (
                "kept alive",
                "GET /readyz HTTP/1.1\r\nHost: a\r\n\r\n".to_owned(),
            ),
            (
                "HTTP/1.0",
                "GET /readyz HTTP/1.0\r\nConnection: close\r\n\r\n".to_owned(),
            ),
            ("a query", kubelet("/readyz?verbose", "")),
            ("a worker's query", kubelet("/readyz/vllm?format=json", "")),
            (
                "JSON asked",
                kubelet("/readyz", "Accept: application/json\r\n"),
            ),
            ("not a probe", kubelet("/metrics", "")),
            ("HEAD", kubelet("/readyz", "").replacen("GET", "HEAD", 1)),
            ("a body", kubelet("/readyz", "Content-Length: 2\r\n") + "ok"),
            ("half a head", kubelet("/readyz", "")[..40].to_owned()),
            ("a second request behind", kubelet("/readyz", "").repeat(2)),
            ("not HTTP", "\x16\x03\x01 a TLS hello".to_owned()),
        ];
        for (what, head) in hypers {
            assert_eq!(kubelet_probe(head.as_bytes()), None, "{what}");
        }
    }

    /// The fast path's answer is hyper's for the same request: the same headers (hyper
    /// adds `date`, `content-length` and, asked to close, `connection: close`), a valid date.
    #[test]
    fn the_fast_paths_answer_has_hyper_headers() {
        let now = SystemTime::now();
        let wire = on_the_wire(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "fail: model: phase: loading",
            now,
        );
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(len)) = resp.parse(&wire) else {
            panic!(
                "not a whole HTTP answer: {:?}",
                String::from_utf8_lossy(&wire)
            );
        };
        assert_eq!(
            (resp.version, resp.code, resp.reason),
            (Some(1), Some(503), Some("Service Unavailable"))
        );
        let header = |name: &str| {
            let h = resp.headers.iter().find(|h| h.name == name);
            std::str::from_utf8(h.unwrap_or_else(|| panic!("no {name}")).value).expect("text")
        };
        let hypers = respond(StatusCode::SERVICE_UNAVAILABLE, TEXT, "x");
        for (name, value) in hypers.headers() {
            assert_eq!(header(name.as_str()), value, "{name}");
        }
        assert_eq!(
            resp.headers.len(),
            hypers.headers().len() + 3,
            "{:?}",
            resp.headers
        );
        assert_eq!(header("connection"), "close");
        assert_eq!(header("content-length"), "27");
        assert_eq!(&wire[len..], b"fail: model: phase: loading");
        let date = httpdate::parse_http_date(header("date")).expect("an HTTP date");
        assert!(
            now.duration_since(date)
                .is_ok_and(|d| d < Duration::from_secs(1)),
            "{date:?}"
        );
    }

    #[test]
    fn eviction_takes_the_oldest_silent_connection_then_the_longest_idle() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut t = ConnTable::default();
        let (kept_alive, _) = t.add(at(0));
        let (silent_old, mut old_closed) = t.add(at(1));
        let (_silent_new, _) = t.add(at(2));
        let (recent, _) = t.add(at(3));
        for (id, answered) in [(kept_alive, 10), (recent, 20)] {
            t.open.get_mut(&id).expect("open").answered = Some(at(answered));
        }
        let victim = t.evict().expect("one to close");
        assert_eq!(
            victim, silent_old,
            "the oldest that never completed a request"
        );
        assert!(!t.open.contains_key(&silent_old));
        assert!(
            old_closed
                .try_recv()
                .is_err_and(|e| e == oneshot::error::TryRecvError::Closed),
            "its connection is told to close"
        );
        t.evict().expect("the younger silent one");
        t.evict().expect("then the longest idle");
        assert_eq!(t.open.keys().copied().collect::<Vec<_>>(), vec![recent]);
        t.evict().expect("the last");
        assert!(t.evict().is_none());
    }

    #[test]
    fn routes() {
        assert_eq!(route("/livez"), Some(Route::Probe(Probe::Live, None)));
        assert_eq!(
            route("/readyz/model"),
            Some(Route::Probe(Probe::Ready, Some("model")))
        );
        assert_eq!(
            route("/startupz/a-b"),
            Some(Route::Probe(Probe::Startup, Some("a-b")))
        );
        assert_eq!(route("/metrics"), Some(Route::Metrics));
        assert_eq!(route("/status"), Some(Route::Status));
        assert_eq!(route("/group"), Some(Route::Group));
        for none in [
            "/",
            "",
            "/healthz",
            "/readyz/",
            "/readyz/a/b",
            "/livezz",
            "/metrics/x",
        ] {
            assert_eq!(route(none), None, "{none:?}");
        }
    }

    #[test]
    fn forms() {
        let json = "application/json";
        assert_eq!(form(None, None), Form::Plain);
        assert_eq!(form(Some("verbose"), None), Form::Verbose);
        assert_eq!(form(Some("verbose=1"), None), Form::Verbose);
        assert_eq!(form(Some("verbose=false"), None), Form::Plain);
        assert_eq!(form(Some("format=json"), None), Form::Json);
        assert_eq!(form(None, Some(json)), Form::Json);
        assert_eq!(form(Some("verbose&format=json"), None), Form::Json);
    }

    fn answer(loading: bool) -> Answer {
        let model = name("model");
        let reason = Reason::from(ReadyReason::Phase(Some(vitals_proto::Phase::Loading)));
        let result = if loading { Err(reason) } else { Ok(()) };
        Answer {
            probe: Probe::Ready,
            target: Target::All,
            result: result.clone().map_err(|reason| Failing {
                container: Some(model.clone()),
                reason,
            }),
            checks: vec![
                Check {
                    name: CheckName::Target(Target::Agent),
                    result: Ok(()),
                },
                Check {
                    name: CheckName::Target(Target::Container(model)),
                    result,
                },
            ],
        }
    }

    #[test]
    fn renders_plain_verbose_and_json() {
        let fail = answer(true);
        assert_eq!(
            render(&fail, Form::Plain),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                "fail: model: phase: loading".into()
            )
        );
        assert_eq!(render(&answer(false), Form::Plain).2, "ok");
        assert_eq!(
            render(&fail, Form::Verbose).2,
            "[+]_agent ok\n[-]model failed: phase: loading\nreadyz check failed\n"
        );
        assert_eq!(
            render(&answer(false), Form::Verbose).2,
            "[+]_agent ok\n[+]model ok\nreadyz check passed\n"
        );
        let (_, ctype, body) = render(&fail, Form::Json);
        assert_eq!(ctype, JSON);
        let doc: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(doc["status"], "fail");
        assert_eq!(
            doc["checks"][0],
            serde_json::json!({"name": "_agent", "ok": true, "reason": null})
        );
        assert_eq!(doc["checks"][1]["reason"], "phase: loading");
    }
}
