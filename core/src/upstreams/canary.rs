//! The opt-in canary of SPEC §12, read: what request each profile sends by default, and
//! the `"canary"` object of an upstream resolved into what the agent's
//! `sources::upstream::canary` runs.
//!
//! Each default is the cheapest request that makes the engine itself do one step, so an
//! engine that died while idle (vLLM #16259: `/health` 200, requests hang) misses it:
//! - vLLM: `POST /v1/completions`, 1 token. The body needs the served model's name, which
//!   only the server knows for sure (`--served-model-name`, or the model path): the canary
//!   asks `GET /v1/models` first (vllm/entrypoints/openai/api_server.py
//!   `show_available_models`, answered by the API server without the engine) and takes
//!   the first `data[].id`.
//! - SGLang: `POST /generate` with `sampling_params.max_new_tokens: 1`
//!   (sgl-project/sglang python/sglang/srt/entrypoints/http_server.py, `GenerateReqInput`).
//! - TGI: `POST /generate` with `parameters.max_new_tokens: 1` (huggingface/
//!   text-generation-inference router/src/server.rs `generate`).
//! - TEI: `POST /embed` of one short input (huggingface/text-embeddings-inference
//!   router/src/http/server.rs `embed`): one forward pass.
//! - llama.cpp: `POST /completion` with `n_predict: 1` (ggml-org/llama.cpp
//!   tools/server/server.cpp routes, `handle_completions`).
//! - Triton has none: an inference request names the model's own input tensors, so the
//!   operator writes it (`"request": {"path": "/v2/models/<m>/infer", "body": ...}`).
//!
//! Its cost, at the default idle time of 60 s: at most one request a minute while the
//! server is idle (60 an hour, each one token), none while it works (docs/model-servers.md).

use std::time::Duration;

use super::{bad, port, request_path, schema, UpstreamsError};

/// The default `idle`.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(60);
/// The default `deadline`.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// Where the canary takes the model's name from, for a body that needs one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFrom {
    /// The body is complete.
    Body,
    /// `GET` this OpenAI-style list first (`/v1/models`) and set the body's `model` to the
    /// first `data[].id`.
    OpenAiModels(&'static str),
}

/// One upstream's canary, as it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanarySpec {
    /// Where to connect (the first httpGet probe's `host`, else where the probes go).
    pub host: Option<String>,
    /// Port.
    pub port: u16,
    /// Request path.
    pub path: String,
    /// The JSON body.
    pub body: serde_json::Value,
    /// Whether the body's `model` is asked from the server first.
    pub model_from: ModelFrom,
    /// How long the server must have been idle before a canary is sent.
    pub idle: Duration,
    /// The limit on the whole answer (the model lookup included).
    pub deadline: Duration,
}

/// The default request of profile `name`: path, body and where its model comes from.
pub fn default_request(name: &str) -> Option<(&'static str, serde_json::Value, ModelFrom)> {
    use serde_json::json;
    Some(match name {
        "vllm" => (
            "/v1/completions",
            json!({"prompt": "ping", "max_tokens": 1}),
            ModelFrom::OpenAiModels("/v1/models"),
        ),
        "sglang" => (
            "/generate",
            json!({"text": "ping", "sampling_params": {"max_new_tokens": 1}}),
            ModelFrom::Body,
        ),
        "tgi" => (
            "/generate",
            json!({"inputs": "ping", "parameters": {"max_new_tokens": 1}}),
            ModelFrom::Body,
        ),
        "tei" => ("/embed", json!({"inputs": "ping"}), ModelFrom::Body),
        "llamacpp" => (
            "/completion",
            json!({"prompt": "ping", "n_predict": 1}),
            ModelFrom::Body,
        ),
        _ => return None,
    })
}

/// A duration field (`60s`, `5m`); absent: `default`.
fn duration(
    value: Option<&str>,
    field: &str,
    default: Duration,
) -> Result<Duration, UpstreamsError> {
    match value {
        None => Ok(default),
        Some(text) => match humantime::parse_duration(text) {
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) => Err(bad(field, "must be longer than zero")),
            Err(e) => Err(bad(field, format!("{text:?} is not a duration ({e})"))),
        },
    }
}

/// Resolves `c`, the canary of an upstream whose metrics profile is `profile` and whose
/// first httpGet probe goes to `http` (`host`, `port`); `field` names it in errors.
pub fn resolve(
    c: &schema::Canary,
    field: &str,
    profile: Option<&str>,
    http: Option<(Option<String>, u16)>,
) -> Result<CanarySpec, UpstreamsError> {
    let idle = duration(c.idle.as_deref(), &format!("{field}.idle"), DEFAULT_IDLE)?;
    let deadline = duration(
        c.deadline.as_deref(),
        &format!("{field}.deadline"),
        DEFAULT_DEADLINE,
    )?;
    let (host, probe_port) = http.map_or((None, None), |(h, p)| (h, Some(p)));
    let (path, body, model_from, own_port) = match &c.request {
        Some(r) => {
            let rf = format!("{field}.request");
            let own_port = match &r.port {
                Some(p) => Some(port(p, &rf)?),
                None => None,
            };
            let path = request_path(Some(&r.path), &format!("{rf}.path"))?;
            (path, r.body.clone(), ModelFrom::Body, own_port)
        }
        None => {
            let (path, body, from) = profile.and_then(default_request).ok_or_else(|| {
                bad(
                    format!("{field}.request"),
                    format!(
                        "required: {} has no default canary request",
                        profile.map_or(
                            "an upstream without a metrics profile".to_owned(),
                            |p| format!("profile {p}")
                        )
                    ),
                )
            })?;
            (path.to_owned(), body, from, None)
        }
    };
    let port = own_port.or(probe_port).ok_or_else(|| {
        bad(
            format!("{field}.request.port"),
            "required: no httpGet probe to take the port from",
        )
    })?;
    Ok(CanarySpec {
        host,
        port,
        path,
        body,
        model_from,
        idle,
        deadline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary(json: &str) -> schema::Canary {
        serde_json::from_str(json).expect("canary JSON")
    }

    #[test]
    fn defaults_per_profile_and_what_is_refused() {
        let http = Some((None, 8000));
        let vllm = resolve(&canary("{}"), "c", Some("vllm"), http.clone()).expect("default");
        assert_eq!(
            (vllm.path.as_str(), vllm.port, vllm.idle, vllm.deadline),
            ("/v1/completions", 8000, DEFAULT_IDLE, DEFAULT_DEADLINE)
        );
        assert_eq!(vllm.model_from, ModelFrom::OpenAiModels("/v1/models"));
        assert_eq!(vllm.body["max_tokens"], 1);
        for p in ["sglang", "tgi", "tei", "llamacpp"] {
            let c = resolve(&canary("{}"), "c", Some(p), http.clone()).expect(p);
            assert_eq!(c.model_from, ModelFrom::Body, "{p}");
        }
        let custom = resolve(
            &canary(r#"{"request": {"path": "/v2/models/m/infer", "body": {"inputs": []}, "port": 8001}, "idle": "5m", "deadline": "2s"}"#),
            "c",
            Some("triton"),
            http.clone(),
        )
        .expect("custom");
        assert_eq!(
            (custom.port, custom.idle, custom.deadline),
            (8001, Duration::from_secs(300), Duration::from_secs(2))
        );
        let refused = |c: &str, profile: Option<&str>, http: Option<(Option<String>, u16)>| {
            resolve(&canary(c), "x.canary", profile, http)
                .expect_err("refused")
                .to_string()
        };
        assert_eq!(
            refused("{}", Some("triton"), http.clone()),
            "upstreams.x.canary.request: required: profile triton has no default canary request"
        );
        assert_eq!(
            refused(r#"{"idle": "soon"}"#, Some("vllm"), http.clone()),
            "upstreams.x.canary.idle: \"soon\" is not a duration (expected number at 0)"
        );
        assert_eq!(
            refused(r#"{"deadline": "0s"}"#, Some("vllm"), http),
            "upstreams.x.canary.deadline: must be longer than zero"
        );
        assert_eq!(
            refused("{}", Some("vllm"), None),
            "upstreams.x.canary.request.port: required: no httpGet probe to take the port from"
        );
    }
}
