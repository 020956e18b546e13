//! Reads an upstream's Prometheus metrics (SPEC §8 `M`): one GET on a fresh connection,
//! bounded in time and size, parsed strictly, reduced to the sums the stall rule needs.
//! A failed scrape is no evidence either way; the caller simply records nothing.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::config::MetricsSpec;
use super::expo;
use super::probe::{http_once, Failure};
use super::stall::Reading;

/// The largest metrics page read. vLLM's page with a few models' histograms is a few
/// hundred KiB; anything far beyond is not a metrics page worth holding in the agent.
pub const PAGE_LIMIT: usize = 2 * 1024 * 1024;

/// Why a scrape gave no reading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScrapeError {
    /// The request failed or answered a non-200 status.
    #[error("{0}")]
    Request(#[from] Failure),
    /// The page is not exposition text.
    #[error("not Prometheus text: {0}")]
    Parse(#[from] expo::ExpoError),
    /// The page is not UTF-8.
    #[error("not UTF-8")]
    Encoding,
}

/// Scrapes `spec` at `host` within `timeout`.
pub async fn scrape(
    host: IpAddr,
    spec: &MetricsSpec,
    timeout: Duration,
) -> Result<Reading, ScrapeError> {
    let at = Instant::now();
    let host = host.to_string();
    let get = http_once(&host, spec.port, &spec.path, &[], PAGE_LIMIT);
    let (status, _, body) = match tokio::time::timeout(timeout, get).await {
        Ok(r) => r?,
        Err(_) => return Err(Failure::Timeout.into()),
    };
    if status.as_u16() != 200 {
        return Err(Failure::Status(status.as_u16()).into());
    }
    let text = std::str::from_utf8(&body).map_err(|_| ScrapeError::Encoding)?;
    reading(text, spec, at)
}

/// The stall rule's view of one page.
pub fn reading(text: &str, spec: &MetricsSpec, at: Instant) -> Result<Reading, ScrapeError> {
    let samples = expo::parse(text)?;
    let sum = |names: &[String]| -> Option<f64> {
        expo::totals(&samples, names)
            .into_iter()
            .flatten()
            .reduce(|a, b| a + b)
    };
    Ok(Reading {
        at,
        work: expo::totals(&samples, &spec.work),
        busy: sum(&spec.busy),
        pending: sum(&spec.pending),
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, TcpListener};

    use super::*;
    use crate::sources::upstream::config::parse;

    fn vllm_spec(port: u16) -> MetricsSpec {
        let text = format!(
            r#"{{"v": {{"livenessProbe": {{"httpGet": {{"path": "/health", "port": {port}}}}}, "metrics": "vllm"}}}}"#
        );
        parse(&text, &[]).expect("valid")[0]
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
        assert_eq!(r.busy, Some(2.0));
        assert_eq!(r.pending, Some(1.0));
        assert_eq!(r.work, vec![None, Some(90.0), None]);
        assert!(r.is_busy());
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
}
