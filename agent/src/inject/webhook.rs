//! `vitals-agent webhook`: a Kubernetes mutating admission webhook (SPEC §10) that applies
//! `inject`'s transform to Pods at CREATE and answers with a JSON Patch. HTTPS only, the
//! certificate re-read from its files while serving; `POST /mutate`, `GET /healthz`,
//! `GET /metrics`. Runs only under this subcommand: the agent's `run` never touches it.
//!
//! Nothing here denies a pod: a pod that cannot be injected is admitted unchanged with a
//! warning, and a request that is not an AdmissionReview gets a 4xx. Every read is bounded
//! in size and time, so a slow or hostile client costs one connection slot, briefly.

pub(super) mod convert;
mod review;
mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder as _, HistogramVec, IntCounterVec, Registry};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use vitals_proto::env;

use crate::counters::{histogram_opts, opts};

pub use self::review::{review, Answer, BadReview, Outcome, API_VERSION, INJECT_KEY};
pub use self::tls::{CertStore, TlsError};
use super::InjectOptions;
use crate::config::LogFormat;

/// The largest AdmissionReview accepted (SPEC §10); the API server's own limit on a request
/// is 3 MiB too, so a real Pod always fits.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Flags of `vitals-agent webhook`.
#[derive(Debug, Clone, Args)]
#[command(after_help = crate::config::DURATIONS_HELP)]
pub struct WebhookArgs {
    /// Address to serve HTTPS on.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "[::]:9443",
        env = env::WEBHOOK_LISTEN
    )]
    pub listen: SocketAddr,
    /// PEM certificate chain (re-read while serving, see --tls-reload-interval).
    #[arg(long, value_name = "FILE", env = env::TLS_CERT)]
    pub tls_cert: PathBuf,
    /// PEM private key of the certificate.
    #[arg(long, value_name = "FILE", env = env::TLS_KEY)]
    pub tls_key: PathBuf,
    /// How often the certificate and key files are re-read; new connections get a changed
    /// pair, open ones keep theirs.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "5s",
        env = env::TLS_RELOAD_INTERVAL,
        value_parser = humantime::parse_duration
    )]
    pub tls_reload_interval: Duration,
    /// Agent image injected into pods.
    #[arg(long, value_name = "IMAGE", env = env::IMAGE)]
    pub image: String,
    /// Inject the agent as an ordinary container, for clusters without native sidecars
    /// (before Kubernetes 1.29).
    #[arg(long, env = env::LEGACY_SIDECAR)]
    pub legacy_sidecar: bool,
    /// The agent container's pull secret and resources (LimitRanges, quotas and policy
    /// engines validate the injected pod).
    #[command(flatten)]
    pub agent: super::AgentArgs,
    /// After SIGTERM, keep serving this long (the Service's endpoints drop the pod), then
    /// stop accepting and finish the reviews in flight.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "5s",
        env = env::SHUTDOWN_DELAY,
        value_parser = humantime::parse_duration
    )]
    pub shutdown_delay: Duration,
    /// Log line format.
    #[arg(long, value_enum, default_value = "text", env = env::LOG_FORMAT)]
    pub log_format: LogFormat,
}

/// What [`serve`] needs besides its listener.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The transform's options (image, legacy sidecar).
    pub options: InjectOptions,
    /// See [`WebhookArgs::tls_reload_interval`].
    pub tls_reload_interval: Duration,
    /// Longest wait for a TLS handshake, a request head, or a whole body.
    pub read_timeout: Duration,
    /// Connections served at once; more are closed at accept.
    pub max_connections: usize,
}

impl WebhookArgs {
    /// The settings these flags ask for.
    pub fn settings(&self) -> Settings {
        Settings {
            options: InjectOptions {
                containers: Vec::new(),
                legacy_sidecar: self.legacy_sidecar,
                image: Some(self.image.clone()),
                skip_unknown: false,
                image_pull_secrets: self.agent.pull_secrets(),
                agent_resources: self.agent.resources.clone(),
            },
            tls_reload_interval: self.tls_reload_interval,
            read_timeout: Duration::from_secs(10),
            max_connections: 512,
        }
    }
}

/// Runs the webhook until SIGTERM or SIGINT (then `--shutdown-delay`, then a graceful stop).
pub fn run(args: &WebhookArgs) -> anyhow::Result<()> {
    let certs = CertStore::load(&args.tls_cert, &args.tls_key)?;
    // The agent's bind: dual-stack `[::]`, falling back to 0.0.0.0 where the kernel has no
    // IPv6 (SPEC §11), instead of crash-looping there.
    let listener = crate::listen::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    // One thread, as the agent's: a review or a handshake is well under a millisecond of
    // CPU (see the benchmark), and the agent binary keeps tokio's multi-thread runtime out.
    // Scale out with replicas.
    let rt = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let delay = args.shutdown_delay;
    let settings = args.settings();
    rt.block_on(async move {
        let listener = TcpListener::from_std(listener)?;
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(on_signal(shutdown.clone(), delay));
        tracing::info!(listen = %args.listen, image = %args.image, version = super::VERSION, "vitals webhook started");
        serve(settings, certs, listener, shutdown).await;
        signals.abort();
        tracing::info!("vitals webhook stopped");
        anyhow::Ok(())
    })
}

/// Cancels `shutdown` `delay` after the first SIGTERM or SIGINT.
async fn on_signal(shutdown: CancellationToken, delay: Duration) {
    let name = crate::stop_signal().await;
    tracing::info!(signal = name, delay = ?delay, "shutdown signal received; still serving for the delay");
    tokio::time::sleep(delay).await;
    shutdown.cancel();
}

/// The webhook's metrics.
#[derive(Debug, Clone)]
struct Metrics {
    registry: Registry,
    admissions: IntCounterVec,
    duration: HistogramVec,
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let admissions = IntCounterVec::new(
            opts(
                "webhook_admissions_total",
                "AdmissionReviews answered, by result (injected, already_injected, opted_out, ignored, skipped, not_injected, bad_request)",
            ),
            &["result"],
        )
        .expect("static metric definition is valid");
        let duration = HistogramVec::new(
            histogram_opts(
                "webhook_review_duration_seconds",
                "Time from a request's head to its answer (body read, decision, patch), by result",
                &[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0, 5.0,
                ],
            ),
            &["result"],
        )
        .expect("static metric definition is valid");
        for outcome in Outcome::ALL {
            admissions.with_label_values(&[outcome.label()]);
        }
        registry
            .register(Box::new(admissions.clone()))
            .expect("metric registered once");
        registry
            .register(Box::new(duration.clone()))
            .expect("metric registered once");
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("metric registered once");
        Metrics {
            registry,
            admissions,
            duration,
        }
    }

    fn record(&self, outcome: Outcome, started: Instant) {
        let label = [outcome.label()];
        self.admissions.with_label_values(&label).inc();
        self.duration
            .with_label_values(&label)
            .observe(started.elapsed().as_secs_f64());
    }

    fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail on I/O; a malformed family would be our bug.
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

struct Context {
    settings: Settings,
    metrics: Metrics,
}

/// Serves HTTPS on `listener` with the certificate from `certs` (watched for changes) until
/// `shutdown`; then stops accepting and gives open connections up to the read timeout to
/// finish.
pub async fn serve(
    settings: Settings,
    certs: Arc<CertStore>,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(certs.server_config());
    tokio::spawn(Arc::clone(&certs).watch(settings.tls_reload_interval, shutdown.child_token()));
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let read_timeout = settings.read_timeout;
    let ctx = Arc::new(Context {
        settings,
        metrics: Metrics::new(),
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout)
        .max_buf_size(64 * 1024)
        .keep_alive(true);
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (tcp, _) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!("connection cap reached; closing a new connection");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, builder, ctx, stop) = (
            acceptor.clone(),
            builder.clone(),
            Arc::clone(&ctx),
            shutdown.clone(),
        );
        connections.spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(read_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    return;
                }
            };
            let conn = builder.serve_connection(
                TokioIo::new(tls),
                service_fn(move |req| {
                    let ctx = Arc::clone(&ctx);
                    async move { Ok::<_, Infallible>(handle(&ctx, req).await) }
                }),
            );
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = stop.cancelled() => conn.as_mut().graceful_shutdown(),
            }
            if tokio::time::timeout(read_timeout, conn).await.is_err() {
                tracing::debug!("connection still busy at shutdown; closed");
            }
        });
    }
    connections.close();
    connections.wait().await;
}

async fn handle(ctx: &Context, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/mutate") => {
            let (outcome, response) = mutate(ctx, req).await;
            ctx.metrics.record(outcome, started);
            response
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/metrics") => Response::builder()
            .header(CONTENT_TYPE, "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(ctx.metrics.render())))
            .expect("static response parts are valid"),
        (_, "/mutate" | "/healthz" | "/metrics") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: POST /mutate, GET /healthz, GET /metrics\n",
        ),
    }
}

async fn mutate(ctx: &Context, req: Request<Incoming>) -> (Outcome, Response<Full<Bytes>>) {
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("an AdmissionReview is at most {MAX_BODY} bytes\n"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return (Outcome::BadRequest, too_large());
    }
    let body = Limited::new(req.into_body(), MAX_BODY).collect();
    let body = match tokio::time::timeout(ctx.settings.read_timeout, body).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return (Outcome::BadRequest, too_large())
        }
        Ok(Err(e)) => {
            return (
                Outcome::BadRequest,
                text(
                    StatusCode::BAD_REQUEST,
                    &format!("cannot read the body: {e}\n"),
                ),
            )
        }
        Err(_) => {
            return (
                Outcome::BadRequest,
                text(
                    StatusCode::REQUEST_TIMEOUT,
                    "the body did not arrive in time\n",
                ),
            )
        }
    };
    match review(&body, &ctx.settings.options) {
        Ok(answer) => {
            if answer.result == Outcome::NotInjected {
                tracing::warn!(pod = %answer.pod, warnings = ?answer.warnings, "pod admitted without Vitals");
            } else {
                tracing::debug!(pod = %answer.pod, result = answer.result.label(), warnings = ?answer.warnings, detail = ?answer.detail, "admission reviewed");
            }
            let response = Response::builder()
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(answer.body)))
                .expect("static response parts are valid");
            (answer.result, response)
        }
        Err(e) => {
            tracing::info!(error = %e, "bad AdmissionReview");
            (
                Outcome::BadRequest,
                text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
            )
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response parts are valid")
}
