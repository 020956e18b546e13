//! Every way an API request can fail, and the one mapping from each to its HTTP status,
//! OpenAI error `type`, `code` and `param`. Handlers name a variant, never a status.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde::Serialize;

use super::{json_response, Route, MAX_BODY_BYTES};
use crate::batch::InferenceError;
use crate::model::ModelError;

/// Why a request failed; rendered as OpenAI's `{"error":{"message","type","param","code"}}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No route has this path.
    #[error("no route {path}")]
    NotFound {
        /// The path asked for.
        path: String,
    },
    /// The route exists but takes another method.
    #[error("{} accepts {} only", .route.path(), .route.method())]
    MethodNotAllowed {
        /// The route asked for.
        route: Route,
    },
    /// The model is not serving yet (loading, warming).
    #[error("the model is {state}; retry shortly")]
    NotReady {
        /// What the model is doing instead, e.g. `loading (reading weights)`.
        state: String,
    },
    /// The worker is shutting down.
    #[error("the server is shutting down")]
    Draining,
    /// The worker has failed for good.
    #[error("the worker has failed: {reason}")]
    Failed {
        /// Why, as reported to the agent.
        reason: String,
    },
    /// The body is larger than [`MAX_BODY_BYTES`].
    #[error("request body exceeds {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
    /// The body could not be read off the connection.
    #[error("cannot read the body: {0}")]
    UnreadableBody(String),
    /// The body is not JSON, or not a JSON object.
    #[error("invalid JSON body: {0}")]
    InvalidJson(String),
    /// A required field is absent or null.
    #[error("missing required field `{field}`")]
    MissingField {
        /// The field.
        field: &'static str,
    },
    /// The texts field is an empty array.
    #[error("`{field}` must not be an empty array")]
    EmptyInput {
        /// The texts field (`input` or `inputs`).
        field: &'static str,
    },
    /// The texts field holds token ids.
    #[error("`{field}` must hold strings; token-id inputs are not supported")]
    UnsupportedInput {
        /// The texts field.
        field: &'static str,
    },
    /// The texts field is neither a string nor an array of strings.
    #[error("`{field}` must be a string or an array of strings")]
    InvalidInput {
        /// The texts field.
        field: &'static str,
    },
    /// A parameter has a value this API does not define.
    #[error("invalid `{param}`: {reason}")]
    InvalidParameter {
        /// The parameter's path in the body, e.g. `encoding_format`.
        param: String,
        /// What is wrong with its value.
        reason: String,
    },
    /// A parameter this server does not implement.
    #[error("`{param}` is not supported: {reason}")]
    UnsupportedParameter {
        /// The parameter.
        param: &'static str,
        /// Why not.
        reason: String,
    },
    /// More texts than `--max-inputs`.
    #[error("{count} inputs exceed the limit of {max} per request")]
    TooManyInputs {
        /// Texts sent.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// More characters over all texts than `--max-request-chars`.
    #[error("{count} characters exceed the limit of {max} per request")]
    TooManyCharacters {
        /// Characters sent.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A text is longer than the model's window and truncation was not asked for.
    #[error(
        "input {index} is longer than {max_tokens} tokens; send \"truncate\": true to truncate it"
    )]
    InputTooLong {
        /// Which text.
        index: usize,
        /// The model's window.
        max_tokens: usize,
    },
    /// `--max-queue` requests are already waiting.
    #[error("the queue is full ({max_queue} requests); retry later")]
    QueueFull {
        /// The limit.
        max_queue: usize,
    },
    /// The model thread stopped before taking or answering the request.
    #[error("the model loop has stopped")]
    LoopStopped,
    /// The model failed on a batch holding this request.
    #[error(transparent)]
    Inference(#[from] InferenceError),
    /// The tokenizer rejected a text.
    #[error("cannot tokenise: {0}")]
    Tokenizer(#[source] ModelError),
    /// The tokenisation task panicked or was cancelled.
    #[error("tokenisation task failed: {0}")]
    TokenizerTask(#[from] tokio::task::JoinError),
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotReady { .. } | Self::Draining | Self::Failed { .. } | Self::LoopStopped => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::BodyTooLarge
            | Self::TooManyInputs { .. }
            | Self::TooManyCharacters { .. }
            | Self::InputTooLong { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Inference(_) | Self::TokenizerTask(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::UnreadableBody(_)
            | Self::InvalidJson(_)
            | Self::MissingField { .. }
            | Self::EmptyInput { .. }
            | Self::UnsupportedInput { .. }
            | Self::InvalidInput { .. }
            | Self::InvalidParameter { .. }
            | Self::UnsupportedParameter { .. }
            | Self::Tokenizer(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// OpenAI's error `type`.
    pub fn kind(&self) -> &'static str {
        match self.status() {
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::SERVICE_UNAVAILABLE => "service_unavailable",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// The machine-readable `code` clients branch on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            // Both mean "try again, here or elsewhere": the same code for clients.
            Self::NotReady { .. } | Self::LoopStopped => "not_ready",
            Self::Draining => "draining",
            Self::Failed { .. } => "failed",
            Self::BodyTooLarge => "body_too_large",
            Self::UnreadableBody(_) => "bad_body",
            Self::InvalidJson(_) => "invalid_json",
            Self::MissingField { .. } => "missing_field",
            Self::EmptyInput { .. } => "empty_input",
            Self::UnsupportedInput { .. } => "unsupported_input",
            Self::InvalidInput { .. } => "invalid_input",
            Self::InvalidParameter { .. } => "invalid_parameter",
            Self::UnsupportedParameter { .. } => "unsupported_parameter",
            Self::TooManyInputs { .. } => "too_many_inputs",
            Self::TooManyCharacters { .. } => "too_many_characters",
            Self::InputTooLong { .. } => "input_too_long",
            Self::QueueFull { .. } => "queue_full",
            Self::Inference(_) => "inference_failed",
            Self::Tokenizer(_) | Self::TokenizerTask(_) => "tokenizer_failed",
        }
    }

    /// The request field at fault, if one is.
    pub fn param(&self) -> Option<&str> {
        match self {
            Self::MissingField { field }
            | Self::EmptyInput { field }
            | Self::UnsupportedInput { field }
            | Self::InvalidInput { field }
            | Self::UnsupportedParameter { param: field, .. } => Some(field),
            Self::InvalidParameter { param, .. } => Some(param),
            _ => None,
        }
    }

    /// The response: the OpenAI error body, `Retry-After` when retrying may succeed
    /// (429, 503) and `Allow` on 405.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let status = self.status();
        let body = ErrorBody {
            error: ErrorObject {
                message: self.to_string(),
                kind: self.kind(),
                param: self.param(),
                code: self.code(),
            },
        };
        let mut response = json_response(status, &body);
        let headers = response.headers_mut();
        if matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Self::MethodNotAllowed { route } = self {
            let allow = HeaderValue::from_str(route.method().as_str())
                .expect("a method name is a valid header value");
            headers.insert(ALLOW, allow);
        }
        response
    }
}

/// OpenAI's error body.
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

/// What went wrong, in OpenAI's fields.
#[derive(Debug, Serialize)]
struct ErrorObject<'a> {
    /// [`ApiError`]'s display.
    message: String,
    /// [`ApiError::kind`].
    #[serde(rename = "type")]
    kind: &'static str,
    /// [`ApiError::param`]; null when no field is at fault.
    param: Option<&'a str>,
    /// [`ApiError::code`].
    code: &'static str,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http_body_util::BodyExt;
    use serde_json::{json, Value};

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime builds")
    }

    fn model_error() -> ModelError {
        ModelError::Unsupported("test".into())
    }

    #[test]
    fn every_error_has_its_status_type_code_and_param() {
        let rt = runtime();
        let join_error = rt.block_on(async {
            let task = tokio::spawn(std::future::pending::<()>());
            task.abort();
            task.await.expect_err("an aborted task")
        });
        let bad = "invalid_request_error";
        let unavailable = "service_unavailable";
        let too_large = "invalid_request_error";
        let cases = [
            (
                ApiError::NotFound { path: "/x".into() },
                404,
                bad,
                "not_found",
                None,
            ),
            (
                ApiError::MethodNotAllowed {
                    route: Route::Embeddings,
                },
                405,
                bad,
                "method_not_allowed",
                None,
            ),
            (
                ApiError::NotReady {
                    state: "loading".into(),
                },
                503,
                unavailable,
                "not_ready",
                None,
            ),
            (ApiError::Draining, 503, unavailable, "draining", None),
            (
                ApiError::Failed { reason: "x".into() },
                503,
                unavailable,
                "failed",
                None,
            ),
            (ApiError::LoopStopped, 503, unavailable, "not_ready", None),
            (
                ApiError::BodyTooLarge,
                413,
                too_large,
                "body_too_large",
                None,
            ),
            (
                ApiError::UnreadableBody("x".into()),
                400,
                bad,
                "bad_body",
                None,
            ),
            (
                ApiError::InvalidJson("x".into()),
                400,
                bad,
                "invalid_json",
                None,
            ),
            (
                ApiError::MissingField { field: "input" },
                400,
                bad,
                "missing_field",
                Some("input"),
            ),
            (
                ApiError::EmptyInput { field: "inputs" },
                400,
                bad,
                "empty_input",
                Some("inputs"),
            ),
            (
                ApiError::UnsupportedInput { field: "input" },
                400,
                bad,
                "unsupported_input",
                Some("input"),
            ),
            (
                ApiError::InvalidInput { field: "input" },
                400,
                bad,
                "invalid_input",
                Some("input"),
            ),
            (
                ApiError::InvalidParameter {
                    param: "encoding_format".into(),
                    reason: "x".into(),
                },
                400,
                bad,
                "invalid_parameter",
                Some("encoding_format"),
            ),
            (
                ApiError::UnsupportedParameter {
                    param: "dimensions",
                    reason: "x".into(),
                },
                400,
                bad,
                "unsupported_parameter",
                Some("dimensions"),
            ),
            (
                ApiError::TooManyInputs { count: 3, max: 2 },
                413,
                too_large,
                "too_many_inputs",
                None,
            ),
            (
                ApiError::TooManyCharacters { count: 3, max: 2 },
                413,
                too_large,
                "too_many_characters",
                None,
            ),
            (
                ApiError::InputTooLong {
                    index: 0,
                    max_tokens: 256,
                },
                413,
                too_large,
                "input_too_long",
                None,
            ),
            (
                ApiError::QueueFull { max_queue: 1 },
                429,
                "rate_limit_error",
                "queue_full",
                None,
            ),
            (
                ApiError::Inference(InferenceError(Arc::new(model_error()))),
                500,
                "server_error",
                "inference_failed",
                None,
            ),
            (
                ApiError::Tokenizer(model_error()),
                400,
                bad,
                "tokenizer_failed",
                None,
            ),
            (
                ApiError::TokenizerTask(join_error),
                500,
                "server_error",
                "tokenizer_failed",
                None,
            ),
        ];
        for (error, status, kind, code, param) in cases {
            let what = format!("{error:?}");
            let message = error.to_string();
            assert_eq!(
                (
                    error.status().as_u16(),
                    error.kind(),
                    error.code(),
                    error.param()
                ),
                (status, kind, code, param),
                "{what}"
            );
            let response = error.into_response();
            assert_eq!(response.status().as_u16(), status, "{what}");
            let headers = response.headers();
            assert_eq!(
                headers.get(RETRY_AFTER).is_some(),
                status == 429 || status == 503,
                "{what}: Retry-After on 429 and 503 only"
            );
            assert_eq!(headers.get(ALLOW).is_some(), status == 405, "{what}");
            let body = rt
                .block_on(response.into_body().collect())
                .expect("a full body")
                .to_bytes();
            let body: Value = serde_json::from_slice(&body).expect("a JSON body");
            assert_eq!(
                body,
                json!({"error": {"message": message, "type": kind, "param": param, "code": code}}),
                "{what}"
            );
            assert!(!message.is_empty(), "{what}");
        }
    }

    #[test]
    fn method_not_allowed_names_the_allowed_method() {
        let response = ApiError::MethodNotAllowed {
            route: Route::Models,
        }
        .into_response();
        assert_eq!(
            response.headers().get(ALLOW).map(HeaderValue::as_bytes),
            Some(&b"GET"[..])
        );
        let e = ApiError::MethodNotAllowed {
            route: Route::Embeddings,
        };
        assert_eq!(e.to_string(), "/v1/embeddings accepts POST only");
    }
}
