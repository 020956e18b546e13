//! The kubelet's gRPC probe: one `grpc.health.v1.Health/Check` call over cleartext HTTP/2
//! (kubernetes/kubernetes pkg/probe/grpc/grpc.go; only `SERVING` passes).
//!
//! The two messages are written by hand (grpc/grpc-proto grpc/health/v1/health.proto):
//! `HealthCheckRequest { string service = 1; }` and
//! `HealthCheckResponse { ServingStatus status = 1; }` are one field each, a dozen lines of
//! protobuf wire format, where a protobuf and gRPC stack would add far more code to the
//! agent than the whole prober.

use bytes::{Buf, Bytes};
use hyper::header::{HeaderValue, CONTENT_TYPE, TE, USER_AGENT as USER_AGENT_HEADER};

use crate::net::{self, USER_AGENT};
use vitals_core::state::probe_result::Failure;

/// The most of a response body read; a health answer is a few bytes.
const BODY_LIMIT: usize = 4 * 1024;

/// `HealthCheckRequest` in protobuf, inside a gRPC length-prefixed frame.
fn request_frame(service: &str) -> Bytes {
    let mut msg = Vec::with_capacity(service.len() + 6);
    if !service.is_empty() {
        // Field 1, wire type 2 (length-delimited).
        msg.push(0x0a);
        let mut len = service.len();
        while len >= 0x80 {
            msg.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        msg.push(len as u8);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut frame = Vec::with_capacity(5 + msg.len());
    frame.push(0); // not compressed
    frame.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&msg);
    Bytes::from(frame)
}

/// The `status` of a `HealthCheckResponse` frame (0 UNKNOWN when absent, as proto3 says).
fn response_status(mut body: &[u8]) -> Result<u64, Failure> {
    let bad = |what: &str| Failure::Protocol(format!("health response: {what}"));
    if body.len() < 5 {
        return Err(bad("no message"));
    }
    if body[0] != 0 {
        return Err(bad("compressed"));
    }
    body.advance(1);
    let len = body.get_u32() as usize;
    let mut msg = body.get(..len).ok_or_else(|| bad("truncated"))?;
    let mut status = 0;
    while !msg.is_empty() {
        let key = varint(&mut msg).ok_or_else(|| bad("bad field"))?;
        match (key >> 3, key & 7) {
            (1, 0) => status = varint(&mut msg).ok_or_else(|| bad("bad status"))?,
            // Unknown fields are skipped, as protobuf readers do.
            (_, 0) => {
                varint(&mut msg).ok_or_else(|| bad("bad field"))?;
            }
            (_, 2) => {
                let n = usize::try_from(varint(&mut msg).ok_or_else(|| bad("bad field"))?)
                    .map_err(|_| bad("bad field"))?;
                msg = msg.get(n..).ok_or_else(|| bad("truncated"))?;
            }
            _ => return Err(bad("unexpected wire type")),
        }
    }
    Ok(status)
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn status_name(status: u64) -> String {
    match status {
        0 => "UNKNOWN".into(),
        1 => "SERVING".into(),
        2 => "NOT_SERVING".into(),
        3 => "SERVICE_UNKNOWN".into(),
        n => format!("status {n}"),
    }
}

/// gRPC status codes (grpc/grpc doc/statuscodes.md), for the failure message.
fn code_name(code: &str) -> String {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    code.parse::<usize>()
        .ok()
        .and_then(|i| NAMES.get(i))
        .map_or_else(|| format!("code {code}"), |n| (*n).to_string())
}

/// One health check against `host:port`; `Ok` only for `SERVING`.
pub async fn check(host: &str, port: u16, service: &str) -> Result<(), Failure> {
    let headers = [
        (CONTENT_TYPE, HeaderValue::from_static("application/grpc")),
        (TE, HeaderValue::from_static("trailers")),
        (USER_AGENT_HEADER, HeaderValue::from_static(USER_AGENT)),
    ];
    let answer = net::post_h2(
        host,
        port,
        "/grpc.health.v1.Health/Check",
        &headers,
        request_frame(service),
        BODY_LIMIT,
    )
    .await?;
    if answer.status != hyper::StatusCode::OK {
        return Err(Failure::Grpc(format!(
            "http status {}",
            answer.status.as_u16()
        )));
    }
    // A "trailers-only" answer carries grpc-status in the headers.
    let grpc_status = answer
        .trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| answer.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok());
    match grpc_status {
        Some("0") => {}
        Some(code) => return Err(Failure::Grpc(code_name(code))),
        None => return Err(Failure::Protocol("no grpc-status".into())),
    }
    match response_status(&answer.body)? {
        1 => Ok(()),
        other => Err(Failure::Grpc(status_name(other))),
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    use http_body_util::BodyExt;
    use hyper::body::Incoming;
    use hyper::{HeaderMap, Request, Response};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    use super::*;
    use vitals_core::upstreams::Action;

    #[test]
    fn wire_format() {
        assert_eq!(&request_frame("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &request_frame("vllm")[..],
            &[0, 0, 0, 0, 6, 0x0a, 4, b'v', b'l', b'l', b'm']
        );
        let long = "s".repeat(200);
        assert_eq!(&request_frame(&long)[5..8], &[0x0a, 0xc8, 0x01]);
        assert_eq!(response_status(&[0, 0, 0, 0, 2, 0x08, 1]), Ok(1));
        assert_eq!(response_status(&[0, 0, 0, 0, 0]), Ok(0));
        // An unknown string field before the status is skipped.
        assert_eq!(
            response_status(&[0, 0, 0, 0, 5, 0x12, 1, b'x', 0x08, 2]),
            Ok(2)
        );
        assert!(response_status(&[0, 0, 0, 0, 9, 0x08]).is_err());
        assert!(response_status(&[1, 0, 0, 0, 0]).is_err());
    }

    /// A cleartext HTTP/2 gRPC server answering every call with `status` (or, with
    /// `code`, a gRPC error).
    async fn server(status: u8, code: &'static str) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    let ok_path = req.uri().path() == "/grpc.health.v1.Health/Check";
                    let body = req.into_body().collect().await.map(|b| b.to_bytes());
                    let service_ok = body.is_ok_and(|b| b.len() >= 5);
                    let mut trailers = HeaderMap::new();
                    let code = if ok_path && service_ok { code } else { "12" };
                    trailers.insert("grpc-status", HeaderValue::from_static(code));
                    let frames = vec![
                        Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(vec![
                            0, 0, 0, 0, 2, 0x08, status,
                        ]))),
                        Ok(hyper::body::Frame::trailers(trailers)),
                    ];
                    let body = frames_body(frames);
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/grpc")
                            .body(body)
                            .expect("response"),
                    )
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc),
                );
            }
        });
        port
    }

    /// A body of fixed frames (data, then trailers).
    fn frames_body<T: Unpin>(items: Vec<T>) -> Frames<T> {
        Frames(items.into_iter())
    }

    struct Frames<T>(std::vec::IntoIter<T>);

    impl<T: Unpin> hyper::body::Body for Frames<Result<hyper::body::Frame<Bytes>, T>>
    where
        T: std::error::Error + Send + Sync + 'static,
    {
        type Data = Bytes;
        type Error = T;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, T>>> {
            std::task::Poll::Ready(self.0.next())
        }
    }

    async fn probe(port: u16) -> Result<Option<u16>, Failure> {
        let action = Action::Grpc {
            port,
            service: "vllm".into(),
        };
        crate::sources::upstream::probe::run(
            &action,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            Duration::from_secs(1),
        )
        .await
        .result
    }

    #[tokio::test]
    async fn only_serving_passes() {
        assert_eq!(probe(server(1, "0").await).await, Ok(None));
        assert_eq!(
            probe(server(2, "0").await).await,
            Err(Failure::Grpc("NOT_SERVING".into()))
        );
        assert_eq!(
            probe(server(1, "12").await).await,
            Err(Failure::Grpc("UNIMPLEMENTED".into()))
        );
    }

    #[tokio::test]
    async fn an_http1_server_is_a_failure_not_a_hang() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                use tokio::io::AsyncWriteExt;
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let r = probe(port).await;
        assert!(
            matches!(r, Err(Failure::Reset | Failure::Protocol(_))),
            "{r:?}"
        );
    }
}
