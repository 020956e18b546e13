//! The probe port (hyper 1, HTTP/1 only): routing and rendering of SPEC §3 — probes in
//! plain, `?verbose` and JSON forms, `/metrics`, `/status`, `/group` (SPEC §9), 404, 405,
//! HEAD.
//!
//! Every answer is computed from in-memory state held for microseconds; nothing here
//! waits on a worker or does I/O besides the client's own socket. Slow or numerous
//! clients are bounded: a connection cap (over it, new connections are closed at once,
//! not queued), a header size limit, and a header read timeout that also closes
//! kept-alive connections idle for that long (hyper starts it for each next request).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::state::snapshot::Snapshots;
use crate::surfaces::metrics::Metrics;
use crate::surfaces::status::StatusSource;
use crate::verdict::{Answer, Probe};

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

/// Serves HTTP on `listener` until `stop`.
pub async fn serve(ctx: Context, listener: TcpListener, limits: Limits, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD)
        .keep_alive(true);
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            // Queueing would let a flood delay the kubelet; closing lets it retry.
            tracing::debug!("HTTP connection cap reached; closing a new connection");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let ctx = ctx.clone();
        let conn = builder.serve_connection(
            TokioIo::new(tcp),
            service_fn(move |req| {
                let response = handle(&ctx, &req);
                async move { Ok::<_, Infallible>(response) }
            }),
        );
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                r = conn => if let Err(e) = r {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                },
            }
            drop(permit);
        });
    }
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

fn form(query: Option<&str>, accept: Option<&HeaderValue>) -> Form {
    let mut verbose = false;
    let mut json = accept
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
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
            answer
                .reason
                .as_ref()
                .map_or_else(|| "ok".to_owned(), |r| format!("fail: {r}")),
        ),
        Form::Verbose => {
            let mut body = String::new();
            for c in &answer.checks {
                match &c.reason {
                    None => body.push_str(&format!("[+]{} ok\n", c.name)),
                    Some(r) => body.push_str(&format!("[-]{} failed: {r}\n", c.name)),
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
                .map(|c| serde_json::json!({"name": c.name, "ok": c.ok(), "reason": c.reason}))
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
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
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
            let verdicts = ctx.snapshots.take(started).verdicts;
            let (answer, target) = match worker {
                None => {
                    let target = if probe == Probe::Live {
                        "agent"
                    } else {
                        "_all"
                    };
                    (verdicts.aggregate(probe), target)
                }
                Some(name) => match verdicts.worker(probe, name) {
                    Some(answer) => (answer, name),
                    None => {
                        let known: Vec<_> = verdicts.names().collect();
                        let known = if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        };
                        let body = format!("unknown worker {name:?}; known workers: {known}\n");
                        return respond(StatusCode::NOT_FOUND, TEXT, body);
                    }
                },
            };
            let (status, ctype, body) =
                render(&answer, form(req.uri().query(), req.headers().get(ACCEPT)));
            ctx.metrics
                .probe(probe, target, answer.ok(), started.elapsed());
            respond(status, ctype, body)
        }
        Route::Metrics => {
            ctx.metrics.refresh(&ctx.snapshots.take(started));
            respond(StatusCode::OK, METRICS, ctx.metrics.encode())
        }
        Route::Group => {
            let snapshot = ctx.snapshots.take(started);
            let report = crate::verdict::group::report(&snapshot.verdicts, &snapshot.state);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Check;

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
        let json = HeaderValue::from_static("application/json");
        assert_eq!(form(None, None), Form::Plain);
        assert_eq!(form(Some("verbose"), None), Form::Verbose);
        assert_eq!(form(Some("verbose=1"), None), Form::Verbose);
        assert_eq!(form(Some("verbose=false"), None), Form::Plain);
        assert_eq!(form(Some("format=json"), None), Form::Json);
        assert_eq!(form(None, Some(&json)), Form::Json);
        assert_eq!(form(Some("verbose&format=json"), None), Form::Json);
    }

    fn answer(reason: Option<&str>) -> Answer {
        Answer {
            probe: Probe::Ready,
            reason: reason.map(str::to_owned),
            checks: vec![
                Check {
                    name: "agent".into(),
                    reason: None,
                },
                Check {
                    name: "model".into(),
                    reason: reason.map(|_| "phase loading".to_owned()),
                },
            ],
        }
    }

    #[test]
    fn renders_plain_verbose_and_json() {
        let fail = answer(Some("model: phase loading"));
        assert_eq!(
            render(&fail, Form::Plain),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                "fail: model: phase loading".into()
            )
        );
        assert_eq!(render(&answer(None), Form::Plain).2, "ok");
        assert_eq!(
            render(&fail, Form::Verbose).2,
            "[+]agent ok\n[-]model failed: phase loading\nreadyz check failed\n"
        );
        assert_eq!(
            render(&answer(None), Form::Verbose).2,
            "[+]agent ok\n[+]model ok\nreadyz check passed\n"
        );
        let (_, ctype, body) = render(&fail, Form::Json);
        assert_eq!(ctype, JSON);
        let doc: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(doc["status"], "fail");
        assert_eq!(
            doc["checks"][0],
            serde_json::json!({"name": "agent", "ok": true, "reason": null})
        );
        assert_eq!(doc["checks"][1]["reason"], "phase loading");
    }
}
