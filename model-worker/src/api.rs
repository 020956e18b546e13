//! The HTTP API: routing ([`Route`]), typed request bodies (the `request` module), the
//! one mapping from errors to statuses ([`ApiError`]), and response rendering. Routes:
//! `POST /v1/embeddings` (OpenAI), `POST /embed` (TEI), `GET /v1/models`, `GET /info`,
//! `GET /health`, `GET /metrics`, and `POST /debug/fault` only with
//! `--enable-fault-injection`.
//!
//! The server answers from the first moment, before the model loads: embedding requests
//! get 503 until the phase is `ready`, and again once `draining` or `failed`. Bodies are
//! size-limited before parsing; texts are tokenised on a blocking task (never on the
//! model thread, never on the async runtime), then queued for the model thread.

mod error;
mod request;
mod response;

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;
use vitals_proto::Phase;

pub use error::ApiError;
pub use request::{EncodingFormat, FaultKind, FaultRequest, Input, OpenAiRequest, TeiRequest};

use crate::batch::{Job, LoopFaults, SubmitError, Submitter};
use crate::config::BatchLimits;
use crate::lifecycle::{Lifecycle, Status};
use crate::metrics::Metrics;
use crate::model::l2_normalize;
use crate::startup::Loaded;
use response::{
    EmbeddingList, EmbeddingObject, EmbeddingValue, FaultTaken, Health, InfoDocument, ModelList,
    Usage,
};

/// Largest request body accepted, whatever the other limits (413 beyond).
pub const MAX_BODY_BYTES: usize = 8 << 20;

/// Per-request limits.
#[derive(Debug, Clone, Copy)]
pub struct ApiLimits {
    /// Most texts per request.
    pub max_inputs: usize,
    /// Most characters over all texts of a request.
    pub max_request_chars: usize,
    /// Most queued requests (shown in `/info`).
    pub max_queue: usize,
    /// Batch limits (shown in `/info`).
    pub batch: BatchLimits,
}

/// What every request handler shares.
#[derive(Debug)]
pub struct AppState {
    /// Phase and checks (and the reporter, for faults).
    pub lifecycle: Lifecycle,
    /// The model name clients see before and after loading.
    pub model_name: String,
    /// Set by the model thread once ready.
    pub loaded: Arc<OnceLock<Arc<Loaded>>>,
    /// Where embedding jobs go.
    pub submitter: Submitter,
    /// Metrics.
    pub metrics: Metrics,
    /// Request limits.
    pub limits: ApiLimits,
    /// Whether `/debug/fault` exists.
    pub fault_injection: bool,
    /// Faults the model loop obeys.
    pub loop_faults: Arc<LoopFaults>,
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let bytes =
        serde_json::to_vec(body).expect("API responses serialise: no maps with non-string keys");
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// What a path names. Each route takes one method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/embeddings` (OpenAI).
    Embeddings,
    /// `POST /embed` (text-embeddings-inference).
    Embed,
    /// `GET /v1/models` (OpenAI).
    Models,
    /// `GET /info`.
    Info,
    /// `GET /health`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// `POST /debug/fault`, only with `--enable-fault-injection`.
    Fault,
}

/// The metrics `route` label of requests to no route.
const NO_ROUTE_LABEL: &str = "other";

impl Route {
    const ALL: [Self; 7] = [
        Self::Embeddings,
        Self::Embed,
        Self::Models,
        Self::Info,
        Self::Health,
        Self::Metrics,
        Self::Fault,
    ];

    /// The route `path` names; the fault route only when fault injection is on.
    pub fn parse(path: &str, fault_injection: bool) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|r| r.path() == path)
            .filter(|r| *r != Self::Fault || fault_injection)
    }

    /// Its path, also its metrics `route` label (dashboards and alerts select on it).
    pub fn path(self) -> &'static str {
        match self {
            Self::Embeddings => "/v1/embeddings",
            Self::Embed => "/embed",
            Self::Models => "/v1/models",
            Self::Info => "/info",
            Self::Health => "/health",
            Self::Metrics => "/metrics",
            Self::Fault => "/debug/fault",
        }
    }

    /// The one method it takes.
    pub fn method(self) -> Method {
        match self {
            Self::Embeddings | Self::Embed | Self::Fault => Method::POST,
            Self::Models | Self::Info | Self::Health | Self::Metrics => Method::GET,
        }
    }
}

/// Routes one request and records its metrics.
pub async fn handle(state: &AppState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let route = Route::parse(req.uri().path(), state.fault_injection);
    let result = match route {
        Some(route) if req.method() == route.method() => dispatch(state, route, req).await,
        Some(route) => Err(ApiError::MethodNotAllowed { route }),
        None => Err(ApiError::NotFound {
            path: req.uri().path().to_owned(),
        }),
    };
    let response = result.unwrap_or_else(ApiError::into_response);
    state.metrics.request(
        route.map_or(NO_ROUTE_LABEL, Route::path),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

async fn dispatch(
    state: &AppState,
    route: Route,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    match route {
        Route::Embeddings => openai_embeddings(state, req).await,
        Route::Embed => tei_embed(state, req).await,
        Route::Models => Ok(models(state)),
        Route::Info => Ok(info(state)),
        Route::Health => health(state),
        Route::Metrics => Ok(metrics(state)),
        Route::Fault => fault(state, req).await,
    }
}

/// 503 unless the worker serves: phase `ready`, or `draining` within the drain delay
/// (readiness already fails, but requests routed here meanwhile still get answers).
fn require_ready(state: &AppState) -> Result<Arc<Loaded>, ApiError> {
    let Status {
        phase,
        detail,
        accepting,
    } = state.lifecycle.status();
    match phase {
        Phase::Ready | Phase::Draining if accepting => {
            state.loaded.get().cloned().ok_or(ApiError::NotReady {
                state: "not loaded yet".into(),
            })
        }
        Phase::Ready | Phase::Draining => Err(ApiError::Draining),
        Phase::Loading | Phase::Warming => Err(ApiError::NotReady {
            state: format!("{} ({detail})", phase.as_str()),
        }),
        Phase::Failed => Err(ApiError::Failed { reason: detail }),
    }
}

/// Reads the body (at most [`MAX_BODY_BYTES`]) and decodes it as a `T`.
async fn read_body<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::BodyTooLarge
            } else {
                ApiError::UnreadableBody(e.to_string())
            }
        })?
        .to_bytes();
    request::decode(&body)
}

fn check_limits(limits: &ApiLimits, texts: &[String]) -> Result<(), ApiError> {
    if texts.len() > limits.max_inputs {
        return Err(ApiError::TooManyInputs {
            count: texts.len(),
            max: limits.max_inputs,
        });
    }
    let chars: usize = texts.iter().map(|t| t.chars().count()).sum();
    if chars > limits.max_request_chars {
        return Err(ApiError::TooManyCharacters {
            count: chars,
            max: limits.max_request_chars,
        });
    }
    Ok(())
}

/// Embeddings of `texts`, normalised if asked; with the number of tokens used.
/// With `truncate` false, a text longer than the model's maximum is refused.
async fn embed(
    state: &AppState,
    loaded: Arc<Loaded>,
    texts: Vec<String>,
    truncate: bool,
    normalize: bool,
) -> Result<(Vec<Vec<f32>>, usize), ApiError> {
    check_limits(&state.limits, &texts)?;
    let tokenizer = loaded.tokenizer.clone();
    let seqs = tokio::task::spawn_blocking(move || {
        texts
            .iter()
            .map(|t| tokenizer.encode(t))
            .collect::<Result<Vec<_>, _>>()
    })
    .await?
    .map_err(ApiError::Tokenizer)?;
    if !truncate {
        if let Some(index) = seqs.iter().position(|t| t.truncated) {
            return Err(ApiError::InputTooLong {
                index,
                max_tokens: loaded.info.max_tokens,
            });
        }
    }
    let seqs: Vec<Vec<u32>> = seqs.into_iter().map(|t| t.ids).collect();
    let tokens = seqs.iter().map(Vec::len).sum();
    let (reply, answer) = oneshot::channel();
    state
        .submitter
        .submit(Job {
            seqs,
            enqueued: Instant::now(),
            reply,
        })
        .map_err(|e| match e {
            SubmitError::Full => ApiError::QueueFull {
                max_queue: state.limits.max_queue,
            },
            SubmitError::Closed => ApiError::LoopStopped,
        })?;
    // The sender is dropped unanswered only when the model loop stops.
    let mut vectors = answer.await.map_err(|_| ApiError::LoopStopped)??;
    if normalize {
        vectors.iter_mut().for_each(|v| l2_normalize(v));
    }
    Ok((vectors, tokens))
}

async fn openai_embeddings(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let loaded = require_ready(state)?;
    let request: OpenAiRequest = read_body(req).await?;
    let texts = request.input.into_texts("input")?;
    if request.dimensions.is_some() {
        return Err(ApiError::UnsupportedParameter {
            param: "dimensions",
            reason: format!(
                "{} returns {}-dimensional embeddings",
                loaded.info.model, loaded.info.dimension
            ),
        });
    }
    let format = request.encoding_format.unwrap_or_default();
    let normalize = loaded.info.normalize;
    let (vectors, tokens) = embed(state, Arc::clone(&loaded), texts, true, normalize).await?;
    let data = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| EmbeddingObject {
            object: "embedding",
            index,
            embedding: match format {
                EncodingFormat::Float => EmbeddingValue::Float(v),
                EncodingFormat::Base64 => EmbeddingValue::Base64(base64_f32(v)),
            },
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &EmbeddingList {
            object: "list",
            data,
            model: &loaded.info.model,
            usage: Usage {
                prompt_tokens: tokens,
                total_tokens: tokens,
            },
        },
    ))
}

async fn tei_embed(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let loaded = require_ready(state)?;
    let request: TeiRequest = read_body(req).await?;
    let texts = request.inputs.into_texts("inputs")?;
    let normalize = request.normalize.unwrap_or(true);
    let truncate = request.truncate.unwrap_or(false);
    let (vectors, _) = embed(state, loaded, texts, truncate, normalize).await?;
    Ok(json_response(StatusCode::OK, &vectors))
}

fn models(state: &AppState) -> Response<Full<Bytes>> {
    json_response(StatusCode::OK, &ModelList::one(&state.model_name))
}

fn info(state: &AppState) -> Response<Full<Bytes>> {
    let status = state.lifecycle.status();
    let loaded = state.loaded.get().map(|l| &l.info);
    let limits = &state.limits;
    json_response(
        StatusCode::OK,
        &InfoDocument {
            model: &state.model_name,
            version: env!("CARGO_PKG_VERSION"),
            phase: status.phase.as_str(),
            detail: &status.detail,
            dimension: loaded.map(|i| i.dimension),
            max_tokens: loaded.map(|i| i.max_tokens),
            pooling: loaded.map(|i| i.pooling),
            normalize: loaded.map(|i| i.normalize),
            device: loaded.map(|i| i.device.as_str()),
            device_detail: loaded.map(|i| i.device_detail.as_str()),
            max_batch_size: limits.batch.max_batch_size,
            max_batch_tokens: limits.batch.max_batch_tokens,
            max_queue: limits.max_queue,
            max_inputs: limits.max_inputs,
            max_request_chars: limits.max_request_chars,
        },
    )
}

fn health(state: &AppState) -> Result<Response<Full<Bytes>>, ApiError> {
    require_ready(state)?;
    Ok(json_response(StatusCode::OK, &Health { status: "ok" }))
}

fn metrics(state: &AppState) -> Response<Full<Bytes>> {
    // Current even while the model loop is busy or hung.
    state.metrics.set_queue_depth(state.submitter.depth());
    let mut response = Response::new(Full::new(Bytes::from(state.metrics.render())));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// `POST /debug/fault {"kind": "hang_loop"|"stop_heartbeats"|"fail"|"crash"}`.
async fn fault(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let kind = read_body::<FaultRequest>(req).await?.kind()?;
    tracing::warn!(?kind, "fault injection");
    match kind {
        FaultKind::HangLoop => state.loop_faults.hang.store(true, Ordering::SeqCst),
        FaultKind::StopHeartbeats => state.lifecycle.reporter().pause_heartbeats(true),
        FaultKind::Fail => state.lifecycle.fail("fault injection: fail"),
        FaultKind::Crash => {
            // Answer first, then abort: the caller learns the fault was taken.
            tokio::spawn(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                std::process::abort();
            });
        }
    }
    Ok(json_response(StatusCode::OK, &FaultTaken { fault: kind }))
}

/// Standard base64 (with padding) of the little-endian bytes of `v`, as OpenAI's
/// `encoding_format: "base64"` returns.
fn base64_f32(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    BASE64.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_of_floats() {
        // 1.0f32 = 00 00 80 3f little-endian.
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(base64_f32(&[]), "");
        assert_eq!(base64_f32(&[1.0, -2.0, 0.5]), "AACAPwAAAMAAAAA/");
    }

    #[test]
    fn routing_table() {
        for (path, route, method) in [
            ("/v1/embeddings", Route::Embeddings, Method::POST),
            ("/embed", Route::Embed, Method::POST),
            ("/v1/models", Route::Models, Method::GET),
            ("/info", Route::Info, Method::GET),
            ("/health", Route::Health, Method::GET),
            ("/metrics", Route::Metrics, Method::GET),
            ("/debug/fault", Route::Fault, Method::POST),
        ] {
            assert_eq!(Route::parse(path, true), Some(route), "{path}");
            // The metrics label is the path, as dashboards and alerts expect.
            assert_eq!(route.path(), path);
            assert_eq!(route.method(), method, "{path}");
        }
        assert_eq!(Route::parse("/debug/fault", false), None);
        assert_eq!(Route::parse("/health", false), Some(Route::Health));
        for path in [
            "/",
            "",
            "/nope",
            "/v1/embeddings/",
            "/v1",
            "/HEALTH",
            "/health/x",
        ] {
            assert_eq!(Route::parse(path, true), None, "{path}");
        }
    }

    #[test]
    fn limits_count_inputs_and_characters() {
        let limits = ApiLimits {
            max_inputs: 2,
            max_request_chars: 5,
            max_queue: 1,
            batch: BatchLimits {
                max_batch_size: 1,
                max_batch_tokens: 1,
                linger: Duration::ZERO,
            },
        };
        assert!(check_limits(&limits, &["ab".into(), "ü€".into()]).is_ok());
        let e = check_limits(&limits, &["a".into(), "b".into(), "c".into()]).expect_err("inputs");
        assert!(
            matches!(e, ApiError::TooManyInputs { count: 3, max: 2 }),
            "{e:?}"
        );
        let e = check_limits(&limits, &["abcdef".into()]).expect_err("chars");
        assert!(
            matches!(e, ApiError::TooManyCharacters { count: 6, max: 5 }),
            "{e:?}"
        );
    }
}
