//! Reads an upstream's Prometheus metrics (SPEC §8 `M`): one GET bounded in time and
//! size, parsed strictly, reduced to the sums the stall rule needs. A failed scrape is no
//! evidence of a stall (except where the engine answers the page itself, [`vitals_core::stall`]);
//! a refused one (401/403) is logged once and shown, never silent.
//!
//! The connection is kept for the next scrape where the server keeps it open and the
//! profile allows ([`vitals_core::upstreams::profiles::Profile::keep_alive`]): one handshake instead of one
//! per `--proc-interval`. The kubelet-style probes never reuse one (SPEC §8).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hyper::header::{HeaderName, HeaderValue, CONNECTION};
use vitals_proto::WorkerName;

use crate::net::{self, BodyRead, Http1};
use vitals_core::engines::{Page, Scrape};
use vitals_core::expo;
use vitals_core::stall::Reading;
use vitals_core::state::probe_result::Failure;
pub use vitals_core::state::probe_result::ScrapeError;
use vitals_core::upstreams::profiles::SleepSignal;
use vitals_core::upstreams::MetricsSpec;

/// The largest metrics page read. vLLM's page with a few models' histograms is a few
/// hundred KiB; anything far beyond is not a metrics page worth holding in the agent.
pub const PAGE_LIMIT: usize = 2 * 1024 * 1024;

/// One upstream's scrapes, one after another, with the connection they may share.
pub struct Scraper {
    name: WorkerName,
    spec: MetricsSpec,
    host: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    conn: Option<Http1>,
    /// The latest scrape was refused (401/403): logged once per run of refusals.
    refused: bool,
    /// Whether the latest page showed the server idle and awake (`None`: no page yet).
    /// Where reading the page would keep it awake ([`SleepSignal::Document`]), rounds
    /// after an idle page read only whether it sleeps until it shows work, and the first
    /// round asks whether it sleeps before reading the page at all.
    idle: Option<bool>,
}

impl Scraper {
    /// Scrapes `spec` of upstream `name` on its own host, else on `default_host`.
    pub fn new(name: WorkerName, spec: MetricsSpec, default_host: IpAddr) -> Self {
        let host = spec
            .host
            .clone()
            .unwrap_or_else(|| default_host.to_string());
        let mut headers = net::default_headers("text/plain");
        headers.extend(
            spec.headers
                .iter()
                .map(|h| (h.name.clone(), h.value.clone())),
        );
        Self {
            name,
            spec,
            host,
            headers,
            conn: None,
            refused: false,
            idle: None,
        }
    }

    /// Where the server says whether it sleeps without waking, when reading its metrics
    /// would keep it awake: its idle sleep is on ([`SleepSignal::Document`]).
    fn quiet_path(&self) -> Option<&'static str> {
        match self.spec.sleep.as_ref() {
            Some(s) if s.idle_after.is_some() => match s.signal {
                SleepSignal::Document { path, .. } => Some(path),
                SleepSignal::Gauge { .. } => None,
            },
            _ => None,
        }
    }

    /// One round, bounded by `timeout` per request: when it started, and what it learnt or
    /// why nothing. `working` says whether the server's process shows work now (its CPU
    /// time, `None`: /proc cannot tell); it is asked only while the server is idle where
    /// reading the page would keep it awake (SPEC §12: the agent never wakes it).
    pub async fn scrape(
        &mut self,
        timeout: Duration,
        working: impl FnOnce() -> Option<bool>,
    ) -> (Instant, Result<Scrape, ScrapeError>) {
        let started = Instant::now();
        if let Some(path) = self.quiet_path().filter(|_| self.idle != Some(false)) {
            let asleep = self.sleeping(path, timeout).await;
            // Without /proc the page stays unread: a scrape must never keep it awake.
            let idle = self.idle == Some(true);
            if asleep == Some(true) || (idle && working() != Some(true)) {
                return (
                    started,
                    Ok(Scrape::Quiet {
                        at: started,
                        asleep,
                    }),
                );
            }
        }
        let result = self.scrape_at(started, timeout).await;
        self.idle = match &result {
            Ok(p) => Some(!p.is_busy() && p.asleep != Some(true)),
            Err(_) => self.idle,
        };
        match &result {
            Err(ScrapeError::Unauthorized(status)) if !self.refused => {
                self.refused = true;
                // Names the header, never its value.
                let sent: Vec<&str> = self.spec.headers.iter().map(|h| h.name.as_str()).collect();
                tracing::warn!(
                    upstream = %self.name,
                    status,
                    headers_sent = ?sent,
                    "the metrics endpoint refuses the agent's scrapes: hang detection from metrics is off until the upstream's metrics \"headers\" carry valid credentials"
                );
            }
            Err(ScrapeError::Unauthorized(_)) => {}
            _ if self.refused => {
                self.refused = false;
                tracing::info!(upstream = %self.name, "the metrics endpoint no longer refuses the agent's scrapes");
            }
            _ => {}
        }
        (started, result.map(Scrape::Page))
    }

    /// `"is_sleeping"` in the JSON document on `path` (absent: `false`, a server without
    /// sleep); `None` when it cannot be read.
    async fn sleeping(&self, path: &str, timeout: Duration) -> Option<bool> {
        let read = net::get_once(
            &self.host,
            self.spec.port,
            path,
            &self.headers,
            BodyRead::Keep(PAGE_LIMIT),
        );
        let answer = tokio::time::timeout(timeout, read).await.ok()?.ok()?;
        if answer.status != 200 {
            return None;
        }
        let doc: serde_json::Value = serde_json::from_slice(&answer.body).ok()?;
        Some(doc.get("is_sleeping").and_then(serde_json::Value::as_bool) == Some(true))
    }

    async fn scrape_at(&mut self, at: Instant, timeout: Duration) -> Result<Page, ScrapeError> {
        let kept = self.conn.take().filter(Http1::is_open);
        let (host, spec, headers) = (&self.host, &self.spec, &self.headers);
        let close = !spec.keep_alive;
        let exchange = async {
            if let Some(mut conn) = kept {
                match conn
                    .get(&spec.path, headers, close, BodyRead::Keep(PAGE_LIMIT))
                    .await
                {
                    Ok(answer) => return Ok((conn, answer)),
                    // The server closed the kept connection between scrapes: once more,
                    // on a fresh one.
                    Err(Failure::Reset) => {}
                    Err(e) => return Err(e),
                }
            }
            let mut conn = Http1::open(host, spec.port).await?;
            let answer = conn
                .get(&spec.path, headers, close, BodyRead::Keep(PAGE_LIMIT))
                .await?;
            Ok((conn, answer))
        };
        let (conn, answer) = match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r?,
            Err(_) => return Err(Failure::Timeout.into()),
        };
        let server_closes = answer
            .headers
            .get(CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if spec.keep_alive && !server_closes && conn.is_open() {
            self.conn = Some(conn);
        }
        match answer.status.as_u16() {
            200 => {}
            s @ (401 | 403) => return Err(ScrapeError::Unauthorized(s)),
            s => return Err(Failure::Status(s).into()),
        }
        let text = std::str::from_utf8(&answer.body).map_err(|_| ScrapeError::Encoding)?;
        page(text, spec, at)
    }
}

/// The stall rule's view of one page: each engine's series (SPEC §12), and whether the
/// server says it is asleep.
pub fn page(text: &str, spec: &MetricsSpec, at: Instant) -> Result<Page, ScrapeError> {
    let samples = expo::parse(text)?;
    let names: Vec<String> = [&spec.work, &spec.busy, &spec.pending]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    // Engines are judged apart only where every work series says which engine worked: a
    // counter without the label would leave the labelled engines looking unmoved.
    let label = spec.engine_label.as_deref().filter(|l| {
        samples
            .iter()
            .filter(|s| spec.work.iter().any(|n| n == s.name))
            .all(|s| s.labels.iter().any(|(k, _)| k == l))
    });
    let mut groups = expo::by_label(&samples, &names, label);
    if groups.is_empty() {
        groups.insert(None, Vec::new());
    }
    let engines = groups
        .into_iter()
        .map(|(engine, series)| {
            let sum = |names: &[String]| -> Option<f64> {
                expo::totals(&series, names)
                    .into_iter()
                    .flatten()
                    .reduce(|a, b| a + b)
            };
            let reading = Reading {
                at,
                work: expo::totals(&series, &spec.work),
                busy: sum(&spec.busy),
                pending: sum(&spec.pending),
                // A counter moves by whole steps: a last digit worth more than 1 can hide one.
                blurred: expo::coarsest(&series, &spec.work) > 1.0,
            };
            (engine, reading)
        })
        .collect();
    let asleep = match spec.sleep.as_ref().map(|s| s.signal) {
        Some(SleepSignal::Gauge {
            name, label, awake, ..
        }) => expo::asleep(&samples, name, label, awake),
        // The page is read only while the server works or its document says it is awake
        // ([`Scraper::scrape`]): a page read is an awake server.
        Some(SleepSignal::Document { .. }) => Some(false),
        None => None,
    };
    Ok(Page {
        at,
        engines,
        asleep,
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, TcpListener};

    use super::*;
    use vitals_core::upstreams::parse;

    async fn scrape(
        host: IpAddr,
        spec: &MetricsSpec,
        timeout: Duration,
    ) -> Result<Page, ScrapeError> {
        let name = WorkerName::parse("vllm").expect("valid");
        match Scraper::new(name, spec.clone(), host)
            .scrape(timeout, || None)
            .await
            .1
        {
            Ok(Scrape::Page(p)) => Ok(p),
            Ok(quiet) => panic!("a vLLM page is always read: {quiet:?}"),
            Err(e) => Err(e),
        }
    }

    fn vllm_spec(port: u16) -> MetricsSpec {
        let text = format!(
            r#"{{"v": {{"livenessProbe": {{"httpGet": {{"path": "/health", "port": {port}}}}}, "metrics": "vllm"}}}}"#
        );
        parse(&text, &[], |_| None).expect("valid")[0]
            .metrics
            .clone()
            .expect("metrics")
    }

    fn serve_once(body: &'static str) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let mut b = [0u8; 4096];
                let _ = s.read(&mut b);
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        port
    }

    #[tokio::test]
    async fn a_vllm_page_becomes_a_reading() {
        let port = serve_once(
            "vllm:num_requests_running{engine=\"0\"} 2.0\nvllm:num_requests_waiting{engine=\"0\"} 1.0\nvllm:generation_tokens_total{engine=\"0\"} 90.0\n",
        );
        let r = scrape(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            &vllm_spec(port),
            Duration::from_secs(1),
        )
        .await
        .expect("reading");
        let r = &r.engines[&Some("0".to_owned())];
        assert_eq!(r.busy, Some(2.0));
        assert_eq!(r.pending, Some(1.0));
        assert_eq!(r.work, vec![None, Some(90.0), None]);
        assert!(r.is_busy());
    }

    #[test]
    fn each_engine_of_a_data_parallel_vllm_is_read_apart_and_the_sleep_gauge_too() {
        let spec = vllm_spec(1);
        let text = "vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 2.0\n\
            vllm:num_requests_running{engine=\"1\",model_name=\"m\"} 1.0\n\
            vllm:generation_tokens_total{engine=\"0\",model_name=\"m\"} 90.0\n\
            vllm:generation_tokens_total{engine=\"1\",model_name=\"m\"} 7.0\n\
            vllm:engine_sleep_state{engine=\"0\",model_name=\"m\",sleep_state=\"awake\"} 0.0\n\
            vllm:engine_sleep_state{engine=\"0\",model_name=\"m\",sleep_state=\"weights_offloaded\"} 1.0\n\
            vllm:engine_sleep_state{engine=\"1\",model_name=\"m\",sleep_state=\"awake\"} 0.0\n";
        let p = page(text, &spec, Instant::now()).expect("page");
        let work = |e: &str| p.engines[&Some(e.to_owned())].work[1];
        assert_eq!((work("0"), work("1")), (Some(90.0), Some(7.0)));
        assert_eq!((p.busy(), p.work()), (Some(3.0), Some(97.0)));
        assert_eq!(p.asleep, Some(true), "every engine's awake series reads 0");
        let awake = text.replacen(
            "sleep_state=\"awake\"} 0.0",
            "sleep_state=\"awake\"} 1.0",
            1,
        );
        assert_eq!(
            page(&awake, &spec, Instant::now()).expect("page").asleep,
            Some(false)
        );
        // An unlabelled page (vLLM before the engine label) is one engine.
        let old = page("vllm:num_requests_running 1\n", &spec, Instant::now()).expect("page");
        assert_eq!(old.engines.keys().collect::<Vec<_>>(), [&None]);
        assert_eq!(old.asleep, None);
        // A work counter without the label: the server is judged as one.
        let mixed = "vllm:num_requests_running{engine=\"0\"} 1\nvllm:num_requests_running{engine=\"1\"} 1\nvllm:generation_tokens_total 5\n";
        let mixed = page(mixed, &spec, Instant::now()).expect("page");
        assert_eq!(mixed.engines.keys().collect::<Vec<_>>(), [&None]);
        assert_eq!(mixed.busy(), Some(2.0));
    }

    #[tokio::test]
    async fn an_error_page_is_no_reading() {
        let port = serve_once("<html>upstream connect error</html>");
        let e = scrape(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            &vllm_spec(port),
            Duration::from_secs(1),
        )
        .await
        .expect_err("not metrics");
        assert!(matches!(e, ScrapeError::Parse(_)), "{e}");
    }

    #[test]
    fn a_counter_printed_too_coarsely_is_blurred() {
        let spec = vllm_spec(1);
        let text =
            |w: &str| format!("vllm:num_requests_running 1\nvllm:generation_tokens_total {w}\n");
        let at = Instant::now();
        let r = |w: &str| page(&text(w), &spec, at).expect("page").engines[&None].clone();
        assert!(r("1.23457e+08").blurred, "llama.cpp's 6 digits past 1e8");
        assert!(!r("123456789").blurred);
        assert!(!r("123456789.0").blurred, "Python's repr");
    }

    /// A keep-alive HTTP/1.1 server (hyper's) answering every request with a vLLM page;
    /// counts the connections it accepted.
    async fn keep_alive_server() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let accepted = std::sync::Arc::new(AtomicUsize::new(0));
        let count = std::sync::Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(
                            b"vllm:num_requests_running 1\nvllm:generation_tokens_total 5\n",
                        )),
                    ))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc),
                );
            }
        });
        (port, accepted)
    }

    #[tokio::test]
    async fn scrapes_reuse_a_kept_alive_connection_unless_the_profile_says_not_to() {
        use std::sync::atomic::Ordering;
        let host = IpAddr::V4(Ipv4Addr::LOCALHOST);
        for (keep_alive, want) in [(true, 1), (false, 3)] {
            let (port, accepted) = keep_alive_server().await;
            let spec = MetricsSpec {
                keep_alive,
                ..vllm_spec(port)
            };
            let mut s = Scraper::new(WorkerName::parse("v").expect("valid"), spec, host);
            for _ in 0..3 {
                let (_, r) = s.scrape(Duration::from_secs(1), || None).await;
                let Ok(Scrape::Page(p)) = r else {
                    panic!("no page: {r:?}")
                };
                assert_eq!(p.busy(), Some(1.0));
            }
            assert_eq!(
                accepted.load(Ordering::SeqCst),
                want,
                "keep_alive {keep_alive}"
            );
        }
    }
}
