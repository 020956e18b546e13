//! A minimal blocking HTTP/1.1 client over `std::net::TcpStream` for everything that is not
//! a probe: embedding requests, `/status`, `/metrics`, fault injection.
//!
//! One request per connection (`Connection: close`), one deadline over the whole exchange.
//! It keeps what the load checks need to prove "exactly one answer per request": the bytes
//! that arrived after the complete response ([`Response::trailing`]).

use std::fmt;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::probe::{decode_chunked, find_head_end, parse_head, read_some};

/// A complete HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The decoded body.
    pub body: Vec<u8>,
    /// Bytes that arrived after the end of the response: a second answer to one request
    /// would show up here.
    pub trailing: usize,
}

impl Response {
    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value, ClientError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| ClientError::Protocol(format!("body is not JSON ({e}): {}", self.text())))
    }
}

/// Why no complete response came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// The connection was refused: nobody listens on the port (nothing was sent).
    Refused(String),
    /// The connection was reset or closed before any byte of a response arrived: the
    /// client knows at once that it got no answer.
    Reset(String),
    /// A response started but was cut short.
    Truncated(String),
    /// The deadline passed before a complete response arrived.
    Timeout(String),
    /// The bytes that came back were not valid HTTP.
    Protocol(String),
}

impl ClientError {
    /// Whether the server was simply not there (nothing was sent).
    pub fn is_refused(&self) -> bool {
        matches!(self, ClientError::Refused(_))
    }

    /// Whether the request was lost: the client waited in vain, or got a broken answer.
    /// A refused or reset connection is a failure the client sees at once, not a loss.
    pub fn is_lost(&self) -> bool {
        matches!(
            self,
            ClientError::Timeout(_) | ClientError::Truncated(_) | ClientError::Protocol(_)
        )
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Refused(e) => write!(f, "refused: {e}"),
            ClientError::Reset(e) => write!(f, "reset: {e}"),
            ClientError::Truncated(e) => write!(f, "truncated: {e}"),
            ClientError::Timeout(e) => write!(f, "timeout: {e}"),
            ClientError::Protocol(e) => write!(f, "protocol: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// Classifies an I/O error; `answered` says whether response bytes had arrived.
fn io_error(what: &str, e: std::io::Error, answered: bool) -> ClientError {
    use std::io::ErrorKind::*;
    let text = format!("{what}: {e}");
    match e.kind() {
        ConnectionRefused => ClientError::Refused(text),
        WouldBlock | TimedOut => ClientError::Timeout(text),
        _ if answered => ClientError::Truncated(text),
        _ => ClientError::Reset(text),
    }
}

/// Sends one request and reads the complete response within `timeout`.
/// `on_sent` is called once the request has been written completely.
pub fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
    timeout: Duration,
    on_sent: impl FnOnce(),
) -> Result<Response, ClientError> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                ClientError::Timeout(format!("{method} {path}: no answer in {timeout:?}"))
            })
    };
    let mut stream =
        TcpStream::connect_timeout(&addr, left()?).map_err(|e| io_error("connect", e, false))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some((content_type, bytes)) = body {
        req.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            bytes.len()
        ));
    }
    req.push_str("\r\n");
    let mut wire = req.into_bytes();
    if let Some((_, bytes)) = body {
        wire.extend_from_slice(bytes);
    }
    stream
        .set_write_timeout(Some(left()?))
        .map_err(|e| io_error("set timeout", e, false))?;
    stream
        .write_all(&wire)
        .map_err(|e| io_error("write", e, false))?;
    on_sent();

    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        let answered = !buf.is_empty();
        let n = read_some(&mut stream, &mut buf, left()?)
            .map_err(|e| io_error("read head", e, answered))?;
        if n == 0 && buf.is_empty() {
            return Err(ClientError::Reset("EOF before any response byte".into()));
        }
        if n == 0 {
            return Err(ClientError::Truncated(format!(
                "EOF after {} bytes, before the end of the response head",
                buf.len()
            )));
        }
    };
    let head = parse_head(&buf[..head_end]).map_err(ClientError::Protocol)?;
    let mut rest = buf.split_off(head_end);
    // Read to EOF (we asked for Connection: close), then cut the message out of it.
    loop {
        let n = read_some(&mut stream, &mut rest, left()?)
            .map_err(|e| io_error("read body", e, true))?;
        if n == 0 {
            break;
        }
    }
    let (body, used) = if head.chunked {
        decode_chunked(&rest)
            .map_err(ClientError::Protocol)?
            .ok_or_else(|| ClientError::Truncated("EOF inside a chunked body".into()))?
    } else if let Some(len) = head.content_length {
        if rest.len() < len {
            return Err(ClientError::Truncated(format!(
                "EOF after {} of {len} body bytes",
                rest.len()
            )));
        }
        (rest[..len].to_vec(), len)
    } else {
        (rest.clone(), rest.len())
    };
    Ok(Response {
        status: head.status,
        headers: head.headers,
        body,
        trailing: rest.len() - used,
    })
}

/// `GET path` within `timeout`.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response, ClientError> {
    request_with(addr, "GET", path, None, timeout, || {})
}

/// `POST path` with a JSON body within `timeout`.
pub fn post_json(
    addr: SocketAddr,
    path: &str,
    json: &serde_json::Value,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let body = json.to_string();
    request_with(
        addr,
        "POST",
        path,
        Some(("application/json", body.as_bytes())),
        timeout,
        || {},
    )
}

/// The value of the Prometheus sample `name{labels}` in an exposition text, where `labels`
/// is the exact label set as rendered (`worker="model"`), or empty for none.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric_name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if metric_name != name {
                return None;
            }
            let got = parse_labels(label_text);
            let matches = labels.len() == got.len()
                && labels
                    .iter()
                    .all(|(k, v)| got.iter().any(|(gk, gv)| gk == k && gv == v));
            matches.then(|| value.parse().ok()).flatten()
        })
}

fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(match n {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key.trim().trim_start_matches(',').trim().to_string(), value));
        rest = after[end..].trim_start_matches(',').trim();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    fn serve_once(answer: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        thread::spawn(move || {
            if let Ok((mut conn, _)) = listener.accept() {
                let mut buf = Vec::new();
                while find_head_end(&buf).is_none() {
                    if read_some(&mut conn, &mut buf, Duration::from_secs(2)).unwrap_or(0) == 0 {
                        break;
                    }
                }
                let _ = conn.write_all(answer);
            }
        });
        addr
    }

    #[test]
    fn reads_one_response_and_counts_trailing_bytes() {
        let addr = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n");
        let r = get(addr, "/", Duration::from_secs(2)).expect("a response");
        assert_eq!((r.status, r.text().as_str(), r.trailing), (200, "ok", 17));
    }

    #[test]
    fn a_short_body_is_an_error() {
        let addr = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nok");
        let e = get(addr, "/", Duration::from_secs(2)).expect_err("body cut short");
        assert!(matches!(e, ClientError::Truncated(_)), "{e}");
    }

    #[test]
    fn refused_is_told_apart() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        drop(listener);
        let e = get(addr, "/", Duration::from_secs(1)).expect_err("nobody listens");
        assert!(e.is_refused(), "{e}");
    }

    #[test]
    fn finds_metric_samples() {
        let text = "# HELP vitals_worker_ready x\n# TYPE vitals_worker_ready gauge\n\
            vitals_worker_ready{worker=\"model\"} 1\n\
            vitals_worker_hangs_total{reason=\"loop_stalled\",worker=\"model\"} 2\n\
            vitals_up 3.5\n";
        assert_eq!(
            metric(text, "vitals_worker_ready", &[("worker", "model")]),
            Some(1.0)
        );
        assert_eq!(
            metric(
                text,
                "vitals_worker_hangs_total",
                &[("worker", "model"), ("reason", "loop_stalled")]
            ),
            Some(2.0)
        );
        assert_eq!(metric(text, "vitals_up", &[]), Some(3.5));
        assert_eq!(
            metric(text, "vitals_worker_ready", &[("worker", "x")]),
            None
        );
    }
}
