//! The worker's Prometheus metrics (`GET /metrics`): request counts and latencies per
//! route and status, batch sizes and durations, queue depth. One registry per worker so
//! tests running several workers in one process do not share counters.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Registered metric handles.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    batch_size: Histogram,
    batch_duration: Histogram,
    queue_depth: IntGauge,
    texts: IntCounter,
    tokens: IntCounter,
}

fn registered<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, m: T) -> T {
    registry
        .register(Box::new(m.clone()))
        .expect("metric names are distinct constants, registered once per registry");
    m
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "embedding_requests_total",
                    "HTTP requests by route and status",
                ),
                &["route", "status"],
            )
            .expect("valid metric definition"),
        );
        let request_duration = registered(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "embedding_request_duration_seconds",
                    "HTTP request latency by route",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
                &["route"],
            )
            .expect("valid metric definition"),
        );
        let batch_size = registered(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new("embedding_batch_size", "Texts per forward pass")
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            )
            .expect("valid metric definition"),
        );
        let batch_duration = registered(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "embedding_batch_duration_seconds",
                    "Model time per batch (forward pass and pooling)",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            )
            .expect("valid metric definition"),
        );
        let queue_depth = registered(
            &registry,
            IntGauge::new(
                "embedding_queue_depth",
                "Requests queued or being computed by the model",
            )
            .expect("valid metric definition"),
        );
        let texts = registered(
            &registry,
            IntCounter::new("embedding_texts_total", "Texts embedded")
                .expect("valid metric definition"),
        );
        let tokens = registered(
            &registry,
            IntCounter::new(
                "embedding_tokens_total",
                "Tokens embedded (after truncation)",
            )
            .expect("valid metric definition"),
        );
        Self {
            registry,
            requests,
            request_duration,
            batch_size,
            batch_duration,
            queue_depth,
            texts,
            tokens,
        }
    }

    /// Counts one answered HTTP request.
    pub fn request(&self, route: &str, status: u16, elapsed: Duration) {
        self.requests
            .with_label_values(&[route, &status.to_string()])
            .inc();
        self.request_duration
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
    }

    /// Records one forward pass of `texts` texts and `tokens` real tokens.
    pub fn batch(&self, texts: usize, tokens: usize, elapsed: Duration) {
        self.batch_size.observe(texts as f64);
        self.batch_duration.observe(elapsed.as_secs_f64());
        self.texts.inc_by(texts as u64);
        self.tokens.inc_by(tokens as u64);
    }

    /// Sets the number of requests queued or running.
    pub fn set_queue_depth(&self, n: usize) {
        self.queue_depth.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding gathered metrics into a Vec cannot fail");
        String::from_utf8(out).expect("the text encoder writes UTF-8")
    }
}
