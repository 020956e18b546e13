//! What one run of an upstream's probe, or one scrape of its metrics, came to (SPEC §8):
//! plain data the probers and the scraper produce and the state keeps, so the pure
//! verdict code reads results without importing any I/O module.

use std::time::{Duration, Instant};

use crate::expo::ExpoError;

/// Redirects followed before a probe fails (Go's http.Client default, kept by the kubelet).
pub const MAX_REDIRECTS: usize = 10;

/// Why a probe (or a request of the agent's HTTP client) failed, as `/status` and the probe
/// body show it (`probe_failed: <this>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The probe did not finish within `timeoutSeconds`.
    #[error("timeout")]
    Timeout,
    /// Nothing listens on the port.
    #[error("refused")]
    Refused,
    /// The connection was reset or closed before an answer.
    #[error("connection reset")]
    Reset,
    /// An HTTP status outside 200–399.
    #[error("status {0}")]
    Status(u16),
    /// The redirect limit was reached.
    #[error("stopped after {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
    /// The answer was not valid HTTP (or gRPC), or too large a head or body.
    #[error("bad response: {0}")]
    Protocol(String),
    /// A gRPC health answer other than `SERVING`, or a gRPC error status.
    #[error("grpc {0}")]
    Grpc(String),
    /// Another I/O error (host unreachable, no route, name not resolved).
    #[error("{0}")]
    Io(String),
}

impl Failure {
    /// A short fixed name of the kind of failure (the `result` label of
    /// `vitals_upstream_probe_results_total`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Refused => "refused",
            Self::Reset => "reset",
            Self::Status(_) => "status",
            Self::TooManyRedirects => "redirects",
            Self::Protocol(_) => "protocol",
            Self::Grpc(_) => "grpc",
            Self::Io(_) => "error",
        }
    }
}

/// The result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// When the probe started.
    pub started: Instant,
    /// How long the upstream took to answer (or to fail).
    pub latency: Duration,
    /// Pass (with the HTTP status, for HTTP probes) or why not.
    pub result: Result<Option<u16>, Failure>,
}

/// Why a scrape of an upstream's metrics gave no reading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScrapeError {
    /// The endpoint wants credentials the agent did not send, or refused the ones it sent
    /// (401/403): hang detection from metrics is off until the config's `headers` fix it.
    #[error("status {0}: the metrics endpoint refused the agent (credentials: the upstream's metrics \"headers\")")]
    Unauthorized(u16),
    /// The request failed or answered another non-200 status.
    #[error("{0}")]
    Request(#[from] Failure),
    /// The page is not exposition text.
    #[error("not Prometheus text: {0}")]
    Parse(#[from] ExpoError),
    /// The page is not UTF-8.
    #[error("not UTF-8")]
    Encoding,
}

impl ScrapeError {
    /// A short fixed name of the kind of error (the `reason` label of
    /// `vitals_upstream_scrape_errors_total`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "unauthorized",
            Self::Request(f) => f.kind(),
            Self::Parse(_) | Self::Encoding => "parse",
        }
    }

    /// Whether the scrape ran out of time: the only failure that is evidence (of a hung
    /// engine loop) for a server whose engine answers `/metrics` itself (SPEC §8).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Request(Failure::Timeout))
    }
}
