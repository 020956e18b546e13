//! One kubelet-faithful prober (SPEC §8): runs a container's original `httpGet`,
//! `tcpSocket` or `grpc` probe the way the kubelet would, bounded in time and memory.
//!
//! The kubelet's behaviour copied here (kubernetes/kubernetes pkg/probe/http/http.go and
//! request.go, pkg/probe/tcp/tcp.go, pkg/probe/grpc/grpc.go): a fresh connection per probe
//! (`Connection: close`), `User-Agent: kube-probe/…` and `Accept: */*` unless the probe sets
//! them, a `Host` header taken from `httpHeaders` when present, 200–399 passes, redirects
//! followed only to the same host and at most 10, the body read up to 10 KiB and the rest
//! discarded, the whole probe bounded by `timeoutSeconds`. Every probe also has hard caps
//! of its own ([`crate::net`]): a response head over 16 KiB is an error, and nothing of a
//! body beyond 10 KiB is kept, so a hostile upstream costs a few KiB at most.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hyper::header::{HeaderName, HeaderValue};
use hyper::Uri;

use crate::net::{self, BodyRead};
pub use vitals_core::state::probe_result::{Failure, Outcome, MAX_REDIRECTS};
use vitals_core::upstreams::{Action, HttpGet};

/// The kubelet reads at most this much of a probe's body (pkg/probe/http/http.go).
pub const BODY_LIMIT: usize = 10 * 1024;

/// Runs one probe against `default_host` (the pod IP, or 127.0.0.1), bounded by `timeout`.
pub async fn run(action: &Action, default_host: IpAddr, timeout: Duration) -> Outcome {
    let started = Instant::now();
    let work = async {
        match action {
            Action::Http(h) => http(h, default_host).await.map(Some),
            Action::Tcp { port, host } => {
                let host = host.clone().unwrap_or_else(|| default_host.to_string());
                net::connect(&host, *port).await.map(|_| None)
            }
            Action::Grpc { port, service } => {
                super::grpc::check(&default_host.to_string(), *port, service)
                    .await
                    .map(|()| None)
            }
        }
    };
    let result = match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(Failure::Timeout),
    };
    Outcome {
        started,
        latency: started.elapsed(),
        result,
    }
}

/// The kubelet's headers, then the probe's own `httpHeaders` (parsed at start-up), which
/// replace them (a `Host` among them replaces the connection's authority).
fn request_headers(probe: &HttpGet) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = net::default_headers("*/*");
    headers.extend(probe.headers.iter().cloned());
    headers
}

async fn http(probe: &HttpGet, default_host: IpAddr) -> Result<u16, Failure> {
    let host = probe
        .host
        .clone()
        .unwrap_or_else(|| default_host.to_string());
    let headers = request_headers(probe);
    let mut port = probe.port;
    let mut path = probe.path.clone();
    for _ in 0..=MAX_REDIRECTS {
        // A fresh connection per request, as the kubelet's (SPEC §8).
        let answer =
            net::get_once(&host, port, &path, &headers, BodyRead::Skim(BODY_LIMIT)).await?;
        let status = answer.status;
        let Some(location) = answer.location().filter(|_| status.is_redirection()) else {
            return if (200..400).contains(&status.as_u16()) {
                Ok(status.as_u16())
            } else {
                Err(Failure::Status(status.as_u16()))
            };
        };
        match same_host_target(location, &host, port) {
            Some((p, next)) => {
                port = p;
                path = next;
            }
            // Another host (or scheme): the kubelet does not follow it, and the redirect
            // itself counts as success.
            None => return Ok(status.as_u16()),
        }
    }
    Err(Failure::TooManyRedirects)
}

/// Where a `Location` leads when it stays on `host`: (port, path and query).
fn same_host_target(location: &str, host: &str, port: u16) -> Option<(u16, String)> {
    let uri: Uri = location.parse().ok()?;
    let path = uri
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
    match (uri.scheme_str(), uri.host()) {
        (None, None) if location.starts_with('/') => Some((port, path)),
        (Some("http"), Some(h)) if net::bare_host(h) == net::bare_host(host) => {
            Some((uri.port_u16().unwrap_or(80), path))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, Shutdown, TcpListener};
    use std::sync::mpsc;

    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const T: Duration = Duration::from_secs(1);

    /// A server that answers every connection with `reply`, on its own thread; sends each
    /// request head it read on the returned channel.
    fn server(
        reply: impl Fn(&mut std::net::TcpStream, &str) + Send + 'static,
    ) -> (u16, mpsc::Receiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let _ = tx.send(head.clone());
                reply(&mut s, &head);
            }
        });
        (port, rx)
    }

    fn answer(code: u16, extra: &str) -> impl Fn(&mut std::net::TcpStream, &str) {
        let text = format!("HTTP/1.1 {code} X\r\ncontent-length: 2\r\n{extra}\r\nok");
        move |s, _| {
            let _ = s.write_all(text.as_bytes());
        }
    }

    fn http_probe(port: u16, path: &str) -> Action {
        Action::Http(HttpGet {
            path: path.to_string(),
            port,
            host: None,
            headers: vec![
                (hyper::header::HOST, HeaderValue::from_static("vllm.local")),
                (
                    HeaderName::from_static("x-probe"),
                    HeaderValue::from_static("1"),
                ),
            ],
        })
    }

    async fn probe(action: &Action) -> Outcome {
        let o = run(action, LOCAL, T).await;
        // Every probe ends within its timeout, whatever the upstream does.
        assert!(o.latency < T + Duration::from_millis(500), "{o:?}");
        o
    }

    #[tokio::test]
    async fn status_codes_as_the_kubelet_reads_them() {
        for (code, want) in [
            (200, Ok(Some(200))),
            (204, Ok(Some(204))),
            (399, Ok(Some(399))),
            (400, Err(Failure::Status(400))),
            (503, Err(Failure::Status(503))),
        ] {
            let (port, rx) = server(answer(code, ""));
            assert_eq!(
                probe(&http_probe(port, "/health?x=1")).await.result,
                want,
                "{code}"
            );
            let head = rx.recv().expect("request seen");
            assert!(head.starts_with("GET /health?x=1 HTTP/1.1\r\n"), "{head}");
            let lower = head.to_ascii_lowercase();
            for h in [
                "host: vllm.local",
                "x-probe: 1",
                "user-agent: kube-probe/",
                "connection: close",
                "accept: */*",
            ] {
                assert!(lower.contains(h), "{h} missing in {head}");
            }
        }
    }

    #[tokio::test]
    async fn tcp_connects_or_is_refused() {
        let (port, _rx) = server(|_, _| {});
        let ok = probe(&Action::Tcp { port, host: None }).await;
        assert_eq!(ok.result, Ok(None));
        let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        assert_eq!(
            probe(&Action::Tcp { port, host: None }).await.result,
            Err(Failure::Refused)
        );
        assert_eq!(
            probe(&http_probe(port, "/")).await.result,
            Err(Failure::Refused)
        );
    }

    #[tokio::test]
    async fn misbehaving_upstreams_end_within_the_timeout() {
        // Accepts, reads the request, never answers.
        let (hang, _a) = server(|s, _| {
            let mut b = [0u8; 1];
            let _ = s.read(&mut b);
        });
        assert_eq!(
            probe(&http_probe(hang, "/")).await.result,
            Err(Failure::Timeout)
        );
        // Answers after twice the timeout.
        let (slow, _b) = server(|s, h| {
            std::thread::sleep(Duration::from_secs(2));
            answer(200, "")(s, h);
        });
        assert_eq!(
            probe(&http_probe(slow, "/")).await.result,
            Err(Failure::Timeout)
        );
        // Closes without answering.
        let (reset, _c) = server(|s, _| {
            let _ = s.shutdown(Shutdown::Both);
        });
        assert_eq!(
            probe(&http_probe(reset, "/")).await.result,
            Err(Failure::Reset)
        );
        // Headers without end.
        let (endless, _d) = server(|s, _| {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n");
            while s
                .write_all(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n")
                .is_ok()
            {}
        });
        let r = probe(&http_probe(endless, "/")).await.result;
        assert!(matches!(r, Err(Failure::Protocol(_))), "{r:?}");
        // A 10 MB body: the status counts, the body is not kept.
        let (big, _e) = server(|s, _| {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10485760\r\n\r\n");
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..160 {
                if s.write_all(&chunk).is_err() {
                    return;
                }
            }
        });
        assert_eq!(probe(&http_probe(big, "/")).await.result, Ok(Some(200)));
        // A body that never ends, chunked.
        let (trickle, _f) = server(|s, _| {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\n");
            std::thread::sleep(Duration::from_secs(3));
        });
        assert_eq!(
            probe(&http_probe(trickle, "/")).await.result,
            Err(Failure::Timeout)
        );
    }

    #[tokio::test]
    async fn redirects_same_host_only_and_bounded() {
        let (target, _t) = server(answer(200, ""));
        let (hop, _h) = server(answer(
            302,
            &format!("location: http://127.0.0.1:{target}/ready\r\n"),
        ));
        assert_eq!(probe(&http_probe(hop, "/")).await.result, Ok(Some(200)));
        let (relative, _r) = server(|s, head| {
            let text = if head.starts_with("GET /next ") {
                "HTTP/1.1 503 X\r\ncontent-length: 0\r\n\r\n"
            } else {
                "HTTP/1.1 301 X\r\nlocation: /next\r\ncontent-length: 0\r\n\r\n"
            };
            let _ = s.write_all(text.as_bytes());
        });
        assert_eq!(
            probe(&http_probe(relative, "/")).await.result,
            Err(Failure::Status(503))
        );
        let (away, _w) = server(answer(302, "location: http://example.invalid/\r\n"));
        assert_eq!(probe(&http_probe(away, "/")).await.result, Ok(Some(302)));
        let (lp, rx) = server(answer(302, "location: /loop\r\n"));
        assert_eq!(
            probe(&http_probe(lp, "/")).await.result,
            Err(Failure::TooManyRedirects)
        );
        assert_eq!(rx.try_iter().count(), MAX_REDIRECTS + 1);
    }

    #[test]
    fn locations() {
        assert_eq!(
            same_host_target("/a?b", "10.0.0.1", 8000),
            Some((8000, "/a?b".into()))
        );
        assert_eq!(
            same_host_target("http://10.0.0.1:81/x", "10.0.0.1", 8000),
            Some((81, "/x".into()))
        );
        assert_eq!(
            same_host_target("http://10.0.0.1", "10.0.0.1", 8000),
            Some((80, "/".into()))
        );
        assert_eq!(
            same_host_target("https://10.0.0.1/x", "10.0.0.1", 8000),
            None
        );
        assert_eq!(same_host_target("http://other/x", "10.0.0.1", 8000), None);
        assert_eq!(
            same_host_target("http://[::1]:81/x", "::1", 8000),
            Some((81, "/x".into()))
        );
    }
}
