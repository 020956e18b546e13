//! The HTTP API: routing, request validation, the one mapping from errors to statuses,
//! and response rendering. Routes: `POST /v1/embeddings` (OpenAI), `POST /embed` (TEI),
//! `GET /v1/models`, `GET /info`, `GET /health`, `GET /metrics`, and `POST /debug/fault`
//! only with `--enable-fault-injection`.
//!
//! The server answers from the first moment, before the model loads: embedding requests
//! get 503 until the phase is `ready`, and again once `draining` or `failed`. Bodies are
//! size-limited before parsing; texts are tokenised on a blocking task (never on the
//! model thread, never on the async runtime), then queued for the model thread.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use vitals_proto::Phase;

use crate::batch::{Job, LoopFaults, SubmitError, Submitter};
use crate::config::BatchLimits;
use crate::lifecycle::{Lifecycle, Status};
use crate::metrics::Metrics;
use crate::model::l2_normalize;
use crate::startup::Loaded;

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

/// An API error, rendered as OpenAI's `{"error":{"message","type","param","code"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    param: Option<&'static str>,
    code: &'static str,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
            code,
        }
    }

    fn bad_request(code: &'static str, param: Option<&'static str>, message: String) -> Self {
        Self {
            param,
            ..Self::new(StatusCode::BAD_REQUEST, code, message)
        }
    }

    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::SERVICE_UNAVAILABLE => "service_unavailable",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind(),
            "param": self.param,
            "code": self.code,
        }});
        let mut response = json_response(self.status, &body);
        if self.status == StatusCode::TOO_MANY_REQUESTS
            || self.status == StatusCode::SERVICE_UNAVAILABLE
        {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
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

/// Routes one request and records its metrics.
pub async fn handle(state: &AppState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let path = req.uri().path().to_owned();
    let route = match path.as_str() {
        "/v1/embeddings" | "/embed" | "/v1/models" | "/info" | "/health" | "/metrics" => {
            path.as_str()
        }
        "/debug/fault" if state.fault_injection => "/debug/fault",
        _ => "other",
    };
    let allowed = match route {
        "/v1/embeddings" | "/embed" | "/debug/fault" => Method::POST,
        "other" => req.method().clone(),
        _ => Method::GET,
    };
    let response = if route == "other" {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route {path}"),
        )
        .into_response()
    } else if req.method() != allowed {
        let mut r = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{path} accepts {allowed} only"),
        )
        .into_response();
        r.headers_mut().insert(
            hyper::header::ALLOW,
            HeaderValue::from_str(allowed.as_str()).expect("a method name is a valid header"),
        );
        r
    } else {
        let result = match route {
            "/v1/embeddings" => openai_embeddings(state, req).await,
            "/embed" => tei_embed(state, req).await,
            "/v1/models" => Ok(models(state)),
            "/info" => Ok(info(state)),
            "/health" => health(state),
            "/metrics" => Ok(metrics(state)),
            _ => fault(state, req).await,
        };
        result.unwrap_or_else(ApiError::into_response)
    };
    state
        .metrics
        .request(route, response.status().as_u16(), started.elapsed());
    response
}

/// 503 unless the worker serves: phase `ready`, or `draining` within the drain delay
/// (readiness already fails, but requests routed here meanwhile still get answers).
fn require_ready(state: &AppState) -> Result<Arc<Loaded>, ApiError> {
    let Status {
        phase,
        detail,
        accepting,
    } = state.lifecycle.status();
    let unavailable = |code, message: String| {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code,
            message,
        ))
    };
    match phase {
        Phase::Ready | Phase::Draining if accepting => state.loaded.get().cloned().map_or_else(
            || unavailable("not_ready", "the model is not loaded yet".into()),
            Ok,
        ),
        Phase::Ready | Phase::Draining => {
            unavailable("draining", "the server is shutting down".into())
        }
        Phase::Loading | Phase::Warming => unavailable(
            "not_ready",
            format!("the model is {} ({detail}); retry shortly", phase.as_str()),
        ),
        Phase::Failed => unavailable("failed", format!("the worker has failed: {detail}")),
    }
}

/// Reads the body (at most [`MAX_BODY_BYTES`]) and parses it as a JSON object.
async fn read_json(req: Request<Incoming>) -> Result<serde_json::Map<String, Value>, ApiError> {
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("request body exceeds {MAX_BODY_BYTES} bytes"),
                )
            } else {
                ApiError::bad_request("bad_body", None, format!("cannot read the body: {e}"))
            }
        })?
        .to_bytes();
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request(
            "invalid_json",
            None,
            "the body must be a JSON object".into(),
        )),
        Err(e) => Err(ApiError::bad_request(
            "invalid_json",
            None,
            format!("invalid JSON body: {e}"),
        )),
    }
}

/// A string or a non-empty array of strings, as `input` / `inputs`.
fn texts(
    body: &serde_json::Map<String, Value>,
    field: &'static str,
) -> Result<Vec<String>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Err(ApiError::bad_request(
            "missing_field",
            Some(field),
            format!("missing required field `{field}`"),
        )),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if items.is_empty() => Err(ApiError::bad_request(
            "empty_input",
            Some(field),
            format!("`{field}` must not be an empty array"),
        )),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                Value::Number(_) | Value::Array(_) => Err(ApiError::bad_request(
                    "unsupported_input",
                    Some(field),
                    format!("`{field}` must hold strings; token-id inputs are not supported"),
                )),
                _ => Err(ApiError::bad_request(
                    "invalid_input",
                    Some(field),
                    format!("`{field}` must be a string or an array of strings"),
                )),
            })
            .collect(),
        Some(_) => Err(ApiError::bad_request(
            "invalid_input",
            Some(field),
            format!("`{field}` must be a string or an array of strings"),
        )),
    }
}

fn optional_bool(
    body: &serde_json::Map<String, Value>,
    field: &'static str,
    default: bool,
) -> Result<bool, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::bad_request(
            "invalid_parameter",
            Some(field),
            format!("`{field}` must be a boolean"),
        )),
    }
}

fn check_limits(limits: &ApiLimits, texts: &[String]) -> Result<(), ApiError> {
    if texts.len() > limits.max_inputs {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_inputs",
            format!(
                "{} inputs exceed the limit of {} per request",
                texts.len(),
                limits.max_inputs
            ),
        ));
    }
    let chars: usize = texts.iter().map(|t| t.chars().count()).sum();
    if chars > limits.max_request_chars {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_characters",
            format!(
                "{chars} characters exceed the limit of {} per request",
                limits.max_request_chars
            ),
        ));
    }
    Ok(())
}

/// Embeddings of `texts`, normalised if asked; with the number of tokens used.
/// With `truncate` false, a text longer than the model's maximum is a 413.
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
            .enumerate()
            .map(|(i, t)| tokenizer.encode(t).map(|tokens| (i, tokens)))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "tokenizer_failed",
            format!("tokenisation task failed: {e}"),
        )
    })?
    .map_err(|e| {
        ApiError::bad_request("tokenizer_failed", None, format!("cannot tokenise: {e}"))
    })?;
    if !truncate {
        if let Some((i, _)) = seqs.iter().find(|(_, t)| t.truncated) {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "input_too_long",
                format!(
                    "input {i} is longer than {} tokens; send \"truncate\": true to truncate it",
                    loaded.info.max_tokens
                ),
            ));
        }
    }
    let seqs: Vec<Vec<u32>> = seqs.into_iter().map(|(_, t)| t.ids).collect();
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
            SubmitError::Full => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "queue_full",
                format!(
                    "the queue is full ({} requests); retry later",
                    state.limits.max_queue
                ),
            ),
            SubmitError::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the model loop has stopped",
            ),
        })?;
    let mut vectors = answer
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the model loop stopped before answering",
            )
        })?
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "inference_failed",
                e.to_string(),
            )
        })?;
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
    let body = read_json(req).await?;
    let texts = texts(&body, "input")?;
    let base64 = match body.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                Some("encoding_format"),
                format!("encoding_format must be \"float\" or \"base64\", not {other}"),
            ))
        }
    };
    if body.get("dimensions").is_some_and(|d| !d.is_null()) {
        return Err(ApiError::bad_request(
            "unsupported_parameter",
            Some("dimensions"),
            format!(
                "`dimensions` is not supported: {} returns {}-dimensional embeddings",
                loaded.info.model, loaded.info.dimension
            ),
        ));
    }
    let normalize = loaded.info.normalize;
    let (vectors, tokens) = embed(state, Arc::clone(&loaded), texts, true, normalize).await?;
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                Value::String(base64_f32(v))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "object": "list",
            "data": data,
            "model": loaded.info.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }),
    ))
}

async fn tei_embed(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let loaded = require_ready(state)?;
    let body = read_json(req).await?;
    let texts = texts(&body, "inputs")?;
    let normalize = optional_bool(&body, "normalize", true)?;
    let truncate = optional_bool(&body, "truncate", false)?;
    let (vectors, _) = embed(state, loaded, texts, truncate, normalize).await?;
    Ok(json_response(StatusCode::OK, &vectors))
}

fn models(state: &AppState) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": [
            {"id": state.model_name, "object": "model", "created": 0, "owned_by": "vitals"}
        ]}),
    )
}

fn info(state: &AppState) -> Response<Full<Bytes>> {
    let status = state.lifecycle.status();
    let loaded = state.loaded.get();
    let limits = &state.limits;
    json_response(
        StatusCode::OK,
        &json!({
            "model": state.model_name,
            "version": env!("CARGO_PKG_VERSION"),
            "phase": status.phase.as_str(),
            "detail": status.detail,
            "dimension": loaded.map(|l| l.info.dimension),
            "max_tokens": loaded.map(|l| l.info.max_tokens),
            "pooling": loaded.map(|l| l.info.pooling),
            "normalize": loaded.map(|l| l.info.normalize),
            "device": loaded.map(|l| l.info.device.clone()),
            "device_detail": loaded.map(|l| l.info.device_detail.clone()),
            "max_batch_size": limits.batch.max_batch_size,
            "max_batch_tokens": limits.batch.max_batch_tokens,
            "max_queue": limits.max_queue,
            "max_inputs": limits.max_inputs,
            "max_request_chars": limits.max_request_chars,
        }),
    )
}

fn health(state: &AppState) -> Result<Response<Full<Bytes>>, ApiError> {
    require_ready(state)?;
    Ok(json_response(StatusCode::OK, &json!({"status": "ok"})))
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
    let body = read_json(req).await?;
    let kind = body.get("kind").and_then(Value::as_str).unwrap_or_default();
    tracing::warn!(kind, "fault injection");
    match kind {
        "hang_loop" => state.loop_faults.hang.store(true, Ordering::SeqCst),
        "stop_heartbeats" => state.lifecycle.reporter().pause_heartbeats(true),
        "fail" => state.lifecycle.fail("fault injection: fail"),
        "crash" => {
            // Answer first, then abort: the caller learns the fault was taken.
            tokio::spawn(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                std::process::abort();
            });
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                Some("kind"),
                "kind must be one of hang_loop, stop_heartbeats, fail, crash".into(),
            ))
        }
    }
    Ok(json_response(StatusCode::OK, &json!({"fault": kind})))
}

/// Standard base64 (with padding) of the little-endian bytes of `v`, as OpenAI's
/// `encoding_format: "base64"` returns.
pub fn base64_f32(v: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
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
        assert_eq!(
            (e.status, e.code),
            (StatusCode::PAYLOAD_TOO_LARGE, "too_many_inputs")
        );
        let e = check_limits(&limits, &["abcdef".into()]).expect_err("chars");
        assert_eq!(e.code, "too_many_characters");
    }

    #[test]
    fn errors_render_in_openai_shape() {
        let r = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", "full").into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            r.headers().get(RETRY_AFTER).map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
    }
}
