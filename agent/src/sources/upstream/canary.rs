//! The opt-in canary of SPEC §12: one task per upstream that asked for one, sending its
//! request only after the server has been idle for `idle` (no work counter moved, nothing
//! running or waiting, no canary) while every probe passes, one at a time, with a deadline
//! on the whole answer (a stream that stops after its first chunk misses it). Its outcome
//! goes to the upstream's state ([`vitals_core::state::upstream::CanaryTrack`]) and to
//! `vitals_upstream_canaries_total{result}`.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::run::Context;
use crate::cadence::Cadence;
use crate::net::{self, BodyRead};
use vitals_core::state::probe_result::Failure;
use vitals_core::state::registry::UpstreamResults;
use vitals_core::state::upstream::{CanaryResult, CanaryRun};
use vitals_core::upstreams::canary::{CanarySpec, ModelFrom};

/// The most of an answer kept (a 1-token answer is far smaller).
const ANSWER_LIMIT: usize = 64 * 1024;

/// How often the task looks whether a canary is due.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Runs `spec`'s canaries for the upstream of `results` until `stop`.
pub async fn run(cx: Context, results: UpstreamResults, spec: CanarySpec, stop: CancellationToken) {
    let started = Instant::now();
    let host = spec.host.clone().unwrap_or_else(|| cx.host.to_string());
    let mut tick = Cadence::every(LOOK_EVERY.min(spec.idle));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let due = results
            .canary_due_since(started)
            .is_some_and(|quiet| quiet.elapsed() >= spec.idle);
        if !due {
            continue;
        }
        let sent = Instant::now();
        results.canary_sent(sent);
        let answer = tokio::select! {
            () = stop.cancelled() => return,
            a = tokio::time::timeout(spec.deadline, send(&spec, &host)) => a,
        };
        let result = match answer {
            Err(_) => CanaryResult::Deadline,
            Ok(Ok(())) => CanaryResult::Ok,
            Ok(Err(why)) => CanaryResult::Error(why),
        };
        if result == CanaryResult::Deadline {
            tracing::warn!(upstream = %results.name(), deadline = ?spec.deadline, path = %spec.path, "canary missed its deadline");
        }
        cx.counters
            .upstream_canary(results.name().as_str(), result.label());
        results.canary_ended(CanaryRun {
            started: sent,
            ended: Instant::now(),
            result,
        });
    }
}

/// Sends one canary and reads its whole answer; `Err` says why it was not a 2xx.
async fn send(spec: &CanarySpec, host: &str) -> Result<(), String> {
    let mut body = spec.body.clone();
    if let ModelFrom::OpenAiModels(path) = spec.model_from {
        let model = served_model(host, spec.port, path).await?;
        if let Some(fields) = body.as_object_mut() {
            fields.insert("model".to_owned(), serde_json::Value::String(model));
        }
    }
    let answer = net::post_json_once((host, spec.port), &spec.path, &body, ANSWER_LIMIT)
        .await
        .map_err(|f: Failure| f.to_string())?;
    if answer.status.is_success() {
        Ok(())
    } else {
        Err(format!("status {}", answer.status.as_u16()))
    }
}

/// The first model an OpenAI-style `GET <path>` lists (`{"data": [{"id": ...}]}`).
async fn served_model(host: &str, port: u16, path: &str) -> Result<String, String> {
    let answer = net::get_once(
        host,
        port,
        path,
        &net::default_headers("application/json"),
        BodyRead::Keep(ANSWER_LIMIT),
    )
    .await
    .map_err(|f| format!("{path}: {f}"))?;
    if !answer.status.is_success() {
        return Err(format!("{path}: status {}", answer.status.as_u16()));
    }
    first_model_id(&answer.body).ok_or_else(|| format!("{path}: no data[0].id in the answer"))
}

fn first_model_id(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("data")?
        .get(0)?
        .get("id")?
        .as_str()
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_served_model_is_the_first_listed() {
        let vllm = br#"{"object":"list","data":[{"id":"meta-llama/Llama-3.1-8B","object":"model","owned_by":"vllm"},{"id":"lora-a"}]}"#;
        assert_eq!(
            first_model_id(vllm).as_deref(),
            Some("meta-llama/Llama-3.1-8B")
        );
        assert_eq!(first_model_id(br#"{"data":[]}"#), None);
        assert_eq!(first_model_id(b"not json"), None);
    }
}
