//! The agent's one outbound HTTP client: connect with the caller's timeout around it, one
//! request at a time, the response head and body read with hard caps. The upstream probers
//! (kubelet-style HTTP and gRPC), the metrics scraper, the canary (SPEC §12) and
//! `vitals-agent status` all use it,
//! so the caps, the failure mapping and the IPv6 authority (`[fd00::5]:8000`) are written
//! once.
//!
//! Built on hyper's connection API rather than an HTTP client crate: the agent binary must
//! stay small, and it only ever talks plain HTTP inside its own pod. Timeouts are the
//! caller's (one bound around the whole exchange, as the kubelet's `timeoutSeconds`).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use vitals_core::state::probe_result::Failure;

/// The largest response head accepted; a longer one is a [`Failure::Protocol`].
pub const HEAD_LIMIT: usize = 16 * 1024;

/// The `User-Agent` of the agent's requests to upstreams (probes and scrapes). Servers
/// that special-case the kubelet's probes (quieter logs) match on the `kube-probe/` prefix.
pub const USER_AGENT: &str = concat!("kube-probe/vitals-", env!("CARGO_PKG_VERSION"));

/// The headers every request to an upstream starts with, as the kubelet's probes: its
/// `User-Agent` and `Accept: accept`. Headers given after them replace them ([`Http1::get`]
/// inserts in order).
pub fn default_headers(accept: &'static str) -> Vec<(HeaderName, HeaderValue)> {
    vec![
        (
            hyper::header::USER_AGENT,
            HeaderValue::from_static(USER_AGENT),
        ),
        (hyper::header::ACCEPT, HeaderValue::from_static(accept)),
    ]
}

/// `host:port` as a URL authority and `Host` header write it: an IPv6 literal in brackets
/// (`[fd00::5]:8000`), whether or not `host` already had them.
pub fn authority(host: &str, port: u16) -> String {
    let bare = bare_host(host);
    if bare.contains(':') {
        format!("[{bare}]:{port}")
    } else {
        format!("{bare}:{port}")
    }
}

/// `host` without the brackets of an IPv6 literal (`[::1]` → `::1`), as sockets take it.
pub fn bare_host(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Opens a fresh TCP connection to `host` (an IP literal, bracketed or not, or a name).
pub async fn connect(host: &str, port: u16) -> Result<TcpStream, Failure> {
    let stream = TcpStream::connect((bare_host(host), port))
        .await
        .map_err(|e| io_failure(&e))?;
    // Requests are tiny; don't wait for Nagle.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

fn io_failure(e: &std::io::Error) -> Failure {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => Failure::Refused,
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
            Failure::Reset
        }
        _ => Failure::Io(e.to_string()),
    }
}

/// Maps a hyper error to what the operator should read.
fn hyper_failure(e: &hyper::Error) -> Failure {
    if let Some(io) = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>())
    {
        return io_failure(io);
    }
    if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        return Failure::Reset;
    }
    Failure::Protocol(e.to_string())
}

/// Aborts a connection's task when the request ends, however it ends.
struct ConnTask(tokio::task::JoinHandle<()>);

impl Drop for ConnTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How much of a response body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRead {
    /// Read up to this many bytes and drop them; a longer, cut or broken body does not
    /// change the answer (the kubelet judges a probe by its status alone).
    Skim(usize),
    /// Keep the whole body; one longer than this is a [`Failure::Protocol`].
    Keep(usize),
}

/// A response.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// Its head's headers.
    pub headers: HeaderMap,
    /// The body as [`BodyRead`] asked (empty when skimmed).
    pub body: Bytes,
    /// Trailers, when the body had them (gRPC's `grpc-status`).
    pub trailers: Option<HeaderMap>,
}

impl Answer {
    /// The `Location` header, when it is text.
    pub fn location(&self) -> Option<&str> {
        self.headers
            .get(hyper::header::LOCATION)
            .and_then(|v| v.to_str().ok())
    }
}

async fn read_body<B>(
    status: StatusCode,
    headers: HeaderMap,
    body: B,
    read: BodyRead,
) -> Result<Answer, Failure>
where
    B: hyper::body::Body<Data = Bytes, Error = hyper::Error>,
{
    let (limit, keep) = match read {
        BodyRead::Skim(n) => (n, false),
        BodyRead::Keep(n) => (n, true),
    };
    let collected = Limited::new(body, limit).collect().await;
    let (body, trailers) = match collected {
        Ok(c) if keep => {
            let trailers = c.trailers().cloned();
            (c.to_bytes(), trailers)
        }
        // Skimmed: the status already arrived, and the kubelet reads what it can.
        Ok(_) => (Bytes::new(), None),
        Err(_) if !keep => (Bytes::new(), None),
        Err(e) => {
            return Err(match e.downcast::<hyper::Error>() {
                Ok(h) => hyper_failure(&h),
                Err(_) => Failure::Protocol(format!("body over {limit} bytes")),
            })
        }
    };
    Ok(Answer {
        status,
        headers,
        body,
        trailers,
    })
}

/// One HTTP/1.1 connection on which GETs are sent one after another (a kept-alive
/// connection is reused while the server keeps it open).
pub struct Http1 {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    _task: ConnTask,
    authority: String,
}

impl std::fmt::Debug for Http1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

impl Http1 {
    /// Connects to `host:port`.
    pub async fn open(host: &str, port: u16) -> Result<Self, Failure> {
        let stream = connect(host, port).await?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(HEAD_LIMIT)
            .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| hyper_failure(&e))?;
        let task = ConnTask(tokio::spawn(async move {
            // Its errors surface on the request; nothing to do with them here.
            let _ = conn.await;
        }));
        Ok(Self {
            sender,
            _task: task,
            authority: authority(host, port),
        })
    }

    /// Whether another request may be sent: the server has not closed the connection
    /// (nor answered `Connection: close`).
    pub fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }

    /// One GET of `path`. `Host` is the connection's authority unless `headers` names
    /// another; `close` asks the server to close the connection after answering.
    pub async fn get(
        &mut self,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        close: bool,
        read: BodyRead,
    ) -> Result<Answer, Failure> {
        self.sender.ready().await.map_err(|e| hyper_failure(&e))?;
        let mut req = Request::get(path)
            .body(Empty::new())
            .map_err(|e| Failure::Protocol(e.to_string()))?;
        let h = req.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.authority) {
            h.insert(HOST, v);
        }
        if close {
            h.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        for (name, value) in headers {
            h.insert(name.clone(), value.clone());
        }
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| hyper_failure(&e))?;
        let (parts, body) = resp.into_parts();
        read_body::<Incoming>(parts.status, parts.headers, body, read).await
    }
}

/// One GET on a fresh connection that is closed after the answer (the kubelet's way).
pub async fn get_once(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(HeaderName, HeaderValue)],
    read: BodyRead,
) -> Result<Answer, Failure> {
    Http1::open(host, port)
        .await?
        .get(path, headers, true, read)
        .await
}

/// One POST of `json` to `path` over HTTP/1.1, with the agent's [`default_headers`], on a
/// fresh connection that is closed after the answer, its body kept up to `limit` bytes (a
/// streamed answer is read to its last chunk, so a deadline around the call covers the
/// whole answer).
pub async fn post_json_once(
    (host, port): (&str, u16),
    path: &str,
    json: &serde_json::Value,
    limit: usize,
) -> Result<Answer, Failure> {
    let body = Bytes::from(json.to_string());
    let headers = default_headers("application/json");
    let stream = connect(host, port).await?;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(HEAD_LIMIT)
        .handshake::<_, Full<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| hyper_failure(&e))?;
    let _conn = ConnTask(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let mut first = vec![
        (CONNECTION, HeaderValue::from_static("close")),
        (
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ),
    ];
    if let Ok(v) = HeaderValue::from_str(&authority(host, port)) {
        first.push((HOST, v));
    }
    let req = post_request(path.to_owned(), &first, &headers, body)?;
    kept_answer(sender.send_request(req).await, limit).await
}

/// A POST of `body` to `target`, with `first` and then `headers` (a later one replaces an
/// earlier one of the same name).
fn post_request(
    target: String,
    first: &[(HeaderName, HeaderValue)],
    headers: &[(HeaderName, HeaderValue)],
    body: Bytes,
) -> Result<Request<Full<Bytes>>, Failure> {
    let mut req = Request::post(target)
        .body(Full::new(body))
        .map_err(|e| Failure::Protocol(e.to_string()))?;
    for (name, value) in first.iter().chain(headers) {
        req.headers_mut().insert(name.clone(), value.clone());
    }
    Ok(req)
}

/// The answer to a request, its body kept up to `limit` bytes with its trailers.
async fn kept_answer(
    sent: Result<hyper::Response<Incoming>, hyper::Error>,
    limit: usize,
) -> Result<Answer, Failure> {
    let (parts, body) = sent.map_err(|e| hyper_failure(&e))?.into_parts();
    read_body::<Incoming>(parts.status, parts.headers, body, BodyRead::Keep(limit)).await
}

/// One POST over cleartext HTTP/2 (prior knowledge, as gRPC speaks it) on a fresh
/// connection, its body kept up to `limit` bytes with its trailers.
pub async fn post_h2(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(HeaderName, HeaderValue)],
    body: Bytes,
    limit: usize,
) -> Result<Answer, Failure> {
    let stream = connect(host, port).await?;
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .max_header_list_size(u32::try_from(HEAD_LIMIT).unwrap_or(u32::MAX))
        .handshake::<_, Full<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| hyper_failure(&e))?;
    let _conn = ConnTask(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let req = post_request(
        format!("http://{}{path}", authority(host, port)),
        &[],
        headers,
        body,
    )?;
    kept_answer(sender.send_request(req).await, limit).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        assert_eq!(authority("10.0.0.5", 8000), "10.0.0.5:8000");
        assert_eq!(authority("fd00::5", 8000), "[fd00::5]:8000");
        assert_eq!(authority("[fd00::5]", 8000), "[fd00::5]:8000");
        assert_eq!(authority("vllm.local", 80), "vllm.local:80");
        assert_eq!(bare_host("[::1]"), "::1");
        assert_eq!(bare_host("::1"), "::1");
    }
}
