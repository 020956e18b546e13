//! The one blocking HTTP/1.1 test client (over `std::net::TcpStream`) for everything that is
//! not a kubelet probe: the agent's and the worker's tests, embedding requests, `/status`,
//! `/metrics`, fault injection. ([`crate::probe`] is the kubelet's own client, kept apart
//! because it must behave exactly as the kubelet does.)
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

    /// The value of header `name` (any case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
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

/// One request: its method, target, extra header lines and body.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `GET`, `POST`, `HEAD`, ...
    pub method: &'a str,
    /// The request target (`/readyz?verbose`).
    pub path: &'a str,
    /// Header lines besides `Host` and `Connection`.
    pub headers: &'a [(&'a str, &'a str)],
    /// The content type and the bytes of the body, if any.
    pub body: Option<(&'a str, &'a [u8])>,
}

impl<'a> Request<'a> {
    /// A request without headers or body.
    pub fn new(method: &'a str, path: &'a str) -> Self {
        Self {
            method,
            path,
            headers: &[],
            body: None,
        }
    }

    fn wire(&self, addr: SocketAddr) -> Vec<u8> {
        let (method, path) = (self.method, self.path);
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some((content_type, bytes)) = self.body {
            head.push_str(&format!(
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                bytes.len()
            ));
        }
        head.push_str("\r\n");
        let mut wire = head.into_bytes();
        if let Some((_, bytes)) = self.body {
            wire.extend_from_slice(bytes);
        }
        wire
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
    let req = Request {
        body,
        ..Request::new(method, path)
    };
    exchange(addr, &req, timeout, on_sent)
}

/// Sends `req` and reads the complete response within `timeout`.
pub fn send(
    addr: SocketAddr,
    req: &Request<'_>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    exchange(addr, req, timeout, || {})
}

fn exchange(
    addr: SocketAddr,
    req: &Request<'_>,
    timeout: Duration,
    on_sent: impl FnOnce(),
) -> Result<Response, ClientError> {
    let (method, path) = (req.method, req.path);
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
    stream
        .set_write_timeout(Some(left()?))
        .map_err(|e| io_error("set timeout", e, false))?;
    // A server may answer (a 413, say) and close before reading all of a large body: the
    // write then fails, and the answer is still there to read.
    let unsent = match stream.write_all(&req.wire(addr)) {
        Ok(()) => {
            on_sent();
            None
        }
        Err(e) => Some(io_error("write", e, false)),
    };

    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        let answered = !buf.is_empty();
        let read = read_some(&mut stream, &mut buf, left()?);
        let n = match (read, unsent.clone()) {
            (Ok(n), _) => n,
            (Err(_), Some(write_error)) if !answered => return Err(write_error),
            (Err(e), _) => return Err(io_error("read head", e, answered)),
        };
        match (n, unsent.clone()) {
            (0, Some(write_error)) if buf.is_empty() => return Err(write_error),
            (0, None) if buf.is_empty() => {
                return Err(ClientError::Reset("EOF before any response byte".into()))
            }
            (0, _) => {
                return Err(ClientError::Truncated(format!(
                    "EOF after {} bytes, before the end of the response head",
                    buf.len()
                )))
            }
            _ => {}
        }
    };
    let head = parse_head(&buf[..head_end]).map_err(ClientError::Protocol)?;
    let mut rest = buf.split_off(head_end);
    // Read to EOF (we asked for Connection: close), then cut the message out of it.
    // A server that stopped reading our body resets the connection after its answer:
    // then the answer read so far is all there is.
    loop {
        match read_some(&mut stream, &mut rest, left()?) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) if unsent.is_some() => break,
            Err(e) => return Err(io_error("read body", e, true)),
        }
    }
    // RFC 9112 §6.3: the answer to HEAD, and 1xx, 204 and 304 answers, have no body
    // whatever their Content-Length says.
    let bodyless = method == "HEAD" || head.status < 200 || matches!(head.status, 204 | 304);
    let (body, used) = if bodyless {
        (Vec::new(), 0)
    } else if head.chunked {
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

/// The Prometheus sample lookup, where the HTTP callers (`/metrics` pages) reach for it.
pub use crate::prom::metric;

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
    fn head_answers_have_no_body_and_headers_are_sent() {
        let addr = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
        let req = Request {
            headers: &[("X-Probe", "1")],
            ..Request::new("HEAD", "/readyz")
        };
        let r = send(addr, &req, Duration::from_secs(2)).expect("a response");
        assert_eq!(
            (r.status, r.body.len(), r.header("Content-Length")),
            (200, 0, Some("2"))
        );
        assert!(String::from_utf8_lossy(&req.wire(addr)).contains("\r\nX-Probe: 1\r\n"));
    }

    #[test]
    fn an_early_answer_to_a_large_body_is_read() {
        let addr = serve_once(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n");
        let big = vec![b' '; 8 << 20];
        let req = Request {
            body: Some(("application/json", &big)),
            ..Request::new("POST", "/")
        };
        let r = send(addr, &req, Duration::from_secs(5)).expect("the 413 is read");
        assert_eq!(r.status, 413);
    }
}
