//! The built-in metrics profiles (SPEC §8): for each model server, the counters that move
//! while its engine works, the gauges of requests in flight and waiting, and where its
//! `/metrics` is. Every name is cited to the file of the server's own repository that
//! defines it; a name that drifts upstream shows up as `no series` in `/status`.
//!
//! A `work` counter should move on every engine step while requests run (an iteration or
//! batch counter is best; a token counter also moves every decode step). Histogram
//! families are named by their `_count` series, which moves once per observation.
//!
//! Printed precision (SPEC §8): a counter is compared as the server printed it, and some
//! servers print few digits (llama.cpp streams doubles with C++'s default 6 significant
//! digits, so `n_decode_total` reads `1.23457e+08` past 1e6 steps and two readings of a
//! working engine can print equal). The rule decided here: equal readings are evidence of
//! "unmoved" only when every equal counter was printed to a unit or finer
//! ([`crate::expo::Sample::resolution`] ≤ 1); a coarser one is no evidence, so the stall
//! clock restarts rather than count toward `loop_stalled` (a missed stall costs nothing
//! the probes do not already cover; a false one restarts a working model). Servers that
//! print full precision (Python's and Go's clients, prometheus-cpp) are never affected.
//!
//! Engines (SPEC §12): only vLLM's `work` and busy/pending series all carry an engine
//! label (`engine`). SGLang's scheduler gauges carry `dp_rank` but its counters do not;
//! TGI and TEI run one router with no rank label; Triton labels its series by model and
//! version (models, not engine loops); llama.cpp has one engine loop and no labels.

/// One server's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// The name used in `"metrics": "<name>"` and in the `vitals.dev/profile.<c>` annotation.
    pub name: &'static str,
    /// The server's own metrics port, when it is not the probes' port.
    pub port: Option<u16>,
    /// Path of the metrics endpoint.
    pub path: &'static str,
    /// Counters that move while the engine works.
    pub work: &'static [&'static str],
    /// Gauges of requests being worked on.
    pub busy: &'static [&'static str],
    /// Gauges of requests waiting.
    pub pending: &'static [&'static str],
    /// Whether a scrape may keep its connection open for the next one. Off where a kept
    /// connection would hold one of the server's request threads between scrapes.
    pub keep_alive: bool,
    /// Whether the server's engine loop itself answers the metrics endpoint: then scrapes
    /// that time out while the probes pass are a hung engine (SPEC §8's exception).
    pub engine_answers: bool,
    /// The label naming the engine of a data-parallel server's series, where its `work`
    /// and busy/pending series all carry it: each engine is then judged on its own
    /// (SPEC §12).
    pub engine_label: Option<&'static str>,
    /// How the server says it sleeps, where it can (SPEC §12).
    pub sleep: Option<SleepSignal>,
}

/// Where a server says it is asleep, and what wakes it (SPEC §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepSignal {
    /// A gauge on the metrics page with one series per state, `label="<state>"`: the
    /// engine is asleep while its `awake` series reads 0. Scraping does not wake it.
    /// Only an operator wakes it, unless the server's command line has `idle_flag` (an
    /// idle time after which it sleeps by itself, and then a request wakes it).
    Gauge {
        /// The gauge's name.
        name: &'static str,
        /// The label whose value is the state.
        label: &'static str,
        /// The state meaning awake.
        awake: &'static str,
        /// The command-line flag of the server's idle sleep, in seconds.
        idle_flag: &'static str,
    },
    /// `"is_sleeping": true` in the JSON the server answers on `path`, which neither wakes
    /// it nor restarts its idle timer; any request wakes it. The server sleeps only with
    /// `idle_flag` on its command line (seconds; negative: never), and then every GET of
    /// the metrics page restarts its idle timer (or wakes it), so while it is idle or
    /// asleep the agent reads `path` instead (and the process's CPU time: the page is read
    /// again once the server works).
    Document {
        /// The path of the JSON document.
        path: &'static str,
        /// The command-line flag of the server's idle sleep, in seconds.
        idle_flag: &'static str,
    },
}

impl SleepSignal {
    /// The command-line flag of the server's idle sleep.
    pub fn idle_flag(self) -> &'static str {
        match self {
            Self::Gauge { idle_flag, .. } | Self::Document { idle_flag, .. } => idle_flag,
        }
    }
}

/// Every built-in profile.
pub const PROFILES: &[Profile] = &[
    // vLLM: vllm-project/vllm vllm/v1/metrics/loggers.py (PrometheusStatLogger):
    // Histogram "vllm:iteration_tokens_total" (one observation per engine step),
    // Counter "vllm:generation_tokens" and "vllm:prompt_tokens" (prometheus_client adds
    // `_total`), Gauges "vllm:num_requests_running" and "vllm:num_requests_waiting".
    // /metrics is served on the API port (vllm/entrypoints/openai/api_server.py).
    //
    // Engines (SPEC §12): every one of these series is made per engine with
    // `labelnames = ["model_name", "engine"]` and one child per engine index
    // (`make_per_engine` / `create_metric_per_engine` in loggers.py), so a data-parallel
    // server's page has `engine="0"` ... `engine="<n-1>"` and each engine is judged alone.
    //
    // Sleep (SPEC §12): loggers.py's Gauge "vllm:engine_sleep_state" has the labels
    // model_name, engine and `sleep_state` (`awake`, `weights_offloaded`, `discard_all`);
    // `record_sleep_state(sleep, level)` sets `awake` to 0 and the level's series to 1 on
    // every engine at once, and AsyncLLM.sleep/wake_up (vllm/v1/engine/async_llm.py) call
    // it. /metrics is served by the API server, not the engine, so scraping a sleeping
    // engine never wakes it (`/is_sleeping` exists only with VLLM_SERVER_DEV_MODE:
    // vllm/entrypoints/serve/sleep/api_router.py). While asleep the scheduler is paused
    // (EngineCore.sleep → pause_scheduler, vllm/v1/engine/core.py): requests are accepted
    // and wait (`num_requests_waiting` > 0) until `/wake_up`. With `--sleep-idle-ttl`
    // (vllm-project/vllm PR #47703) the API server sleeps the engine after that many idle
    // seconds and wakes it for the next inference request; an engine slept by `/sleep` is
    // never woken by a request.
    Profile {
        name: "vllm",
        port: None,
        path: "/metrics",
        work: &[
            "vllm:iteration_tokens_total_count",
            "vllm:generation_tokens_total",
            "vllm:prompt_tokens_total",
        ],
        busy: &["vllm:num_requests_running"],
        pending: &["vllm:num_requests_waiting"],
        keep_alive: true,
        engine_answers: false,
        engine_label: Some("engine"),
        sleep: Some(SleepSignal::Gauge {
            name: "vllm:engine_sleep_state",
            label: "sleep_state",
            awake: "awake",
            idle_flag: "--sleep-idle-ttl",
        }),
    },
    // SGLang: sgl-project/sglang python/sglang/srt/metrics/collector.py: Gauges
    // "sglang:num_running_reqs" and "sglang:num_queue_reqs" (SchedulerMetricsCollector),
    // Counters "sglang:generation_tokens_total" and "sglang:prompt_tokens_total"
    // (TokenizerMetricsCollector). /metrics on the server port with --enable-metrics.
    //
    // Engines: no per-engine judgement. The scheduler's gauges carry `dp_rank` under data
    // parallelism (`labels["dp_rank"] = dp_rank` where the scheduler builds its
    // SchedulerMetricsCollector, python/sglang/srt/managers/scheduler.py), but the work
    // counters come from the one TokenizerMetricsCollector, labelled by model only, so no
    // counter says which rank worked.
    Profile {
        name: "sglang",
        port: None,
        path: "/metrics",
        work: &[
            "sglang:generation_tokens_total",
            "sglang:prompt_tokens_total",
        ],
        busy: &["sglang:num_running_reqs"],
        pending: &["sglang:num_queue_reqs"],
        keep_alive: true,
        engine_answers: false,
        engine_label: None,
        sleep: None,
    },
    // TGI: huggingface/text-generation-inference backends/v3/src/backend.rs: counter
    // "tgi_batch_inference_success" (every prefill and decode step), gauge
    // "tgi_batch_current_size"; backends/v3/src/queue.rs: gauge "tgi_queue_size".
    // /metrics on the router port (router/src/server.rs).
    Profile {
        name: "tgi",
        port: None,
        path: "/metrics",
        work: &["tgi_batch_inference_success"],
        busy: &["tgi_batch_current_size"],
        pending: &["tgi_queue_size"],
        keep_alive: true,
        engine_answers: false,
        engine_label: None,
        sleep: None,
    },
    // TEI: huggingface/text-embeddings-inference core/src/queue.rs: gauge "te_queue_size"
    // and histogram "te_batch_next_size" (one observation per batch handed to the model);
    // core/src/infer.rs: counters "te_embed_success" and "te_predict_success". TEI has no
    // gauge of batches in flight, so only its queue says it is busy.
    // /metrics on the HTTP port (router/src/http/server.rs).
    Profile {
        name: "tei",
        port: None,
        path: "/metrics",
        work: &[
            "te_batch_next_size_count",
            "te_embed_success",
            "te_predict_success",
        ],
        busy: &[],
        pending: &["te_queue_size"],
        keep_alive: true,
        engine_answers: false,
        engine_label: None,
        sleep: None,
    },
    // Triton: triton-inference-server/core src/metrics.cc: counters "nv_inference_exec_count"
    // and "nv_inference_count", gauge "nv_inference_pending_request_count". Metrics are
    // served on their own port, 8002 by default (triton-inference-server/server
    // docs/user_guide/metrics.md, --metrics-port).
    Profile {
        name: "triton",
        port: Some(8002),
        path: "/metrics",
        work: &["nv_inference_exec_count", "nv_inference_count"],
        busy: &[],
        pending: &["nv_inference_pending_request_count"],
        keep_alive: true,
        engine_answers: false,
        engine_label: None,
        sleep: None,
    },
    // llama.cpp: ggml-org/llama.cpp tools/server/server-task.cpp
    // (server_task_result_metrics::to_metrics, prefix "llamacpp:"): counters
    // "n_decode_total" (llama_decode() calls: the one that moves every engine step),
    // "tokens_predicted_total", "prompt_tokens_total"; gauges "requests_processing" and
    // "requests_deferred". Served with --metrics on the server port.
    //
    // What llama.cpp's source says about scraping it (tools/server/server-context.cpp,
    // server_routes::init_routes, get_metrics):
    // - /metrics posts a SERVER_TASK_TYPE_METRICS task to the engine's task queue and
    //   waits for the engine loop to answer it, while /health answers from the HTTP
    //   thread: a hung engine loop makes scrapes time out and nothing else. Hence
    //   `engine_answers` (SPEC §8's exception).
    // - The task carries `metrics_reset_bucket = true`: every GET of /metrics resets the
    //   window of the `prompt_tokens_seconds` / `predicted_tokens_seconds` gauges
    //   ("averaged over the window between two scrapes"). No query parameter or other
    //   endpoint avoids it: /slots (also a queue task) has no counters, and /props does
    //   not reach the engine loop at all, so it could not see a hang. The agent therefore
    //   still scrapes /metrics, and those two gauges become averages over the last
    //   `--proc-interval` (docs/model-servers.md says so and how to read throughput instead:
    //   rate() of the `*_seconds_total` and `*_total` counters, which no scrape resets).
    // - `to_metrics` streams each value as a double with the default 6 significant
    //   digits: see the module doc on printed precision.
    // - Kept-alive connections: tools/server/server-http.cpp serves with cpp-httplib's
    //   `ThreadPool(n_threads_http, ...)`, where an open connection holds one HTTP thread
    //   while it waits for its next request; a scrape each second would hold one for good,
    //   so each scrape opens its own.
    // - `--api-key` guards /metrics too (measured on b11434: every scrape 401), so the
    //   metrics object takes `headers` from the config.
    // - Sleep (SPEC §12; ggml-org/llama.cpp PR #18228): with `--sleep-idle-seconds N`
    //   the task queue's loop (tools/server/server-queue.cpp, start_loop) unloads the
    //   model once no task was posted for N seconds and reloads it when a request asks
    //   (wait_until_no_sleep); GET /health and GET /props neither wake it nor restart the
    //   timer, and /props says `"is_sleeping"`. Every `server_queue::post` restarts the
    //   timer (`time_last_task`), and /metrics posts a task, so scraping it keeps the
    //   model loaded (issue #20227); PR #27376 answers /metrics from a cached page while
    //   asleep. The agent cannot tell the versions apart, so while the server is idle or
    //   asleep it reads /props instead of /metrics (see SleepSignal::Document).
    // - No engine label: one engine loop per server.
    Profile {
        name: "llamacpp",
        port: None,
        path: "/metrics",
        work: &[
            "llamacpp:n_decode_total",
            "llamacpp:tokens_predicted_total",
            "llamacpp:prompt_tokens_total",
        ],
        busy: &["llamacpp:requests_processing"],
        pending: &["llamacpp:requests_deferred"],
        keep_alive: false,
        engine_answers: true,
        engine_label: None,
        sleep: Some(SleepSignal::Document {
            path: "/props",
            idle_flag: "--sleep-idle-seconds",
        }),
    },
];

/// The profile called `name`.
pub fn builtin(name: &str) -> Option<&'static Profile> {
    PROFILES.iter().find(|p| p.name == name)
}

/// The names of every profile, for error messages.
pub fn names() -> Vec<&'static str> {
    PROFILES.iter().map(|p| p.name).collect()
}

/// Whether a server of profile `name` cannot recover a child process that died (SPEC §12):
/// then a zombie child fails its liveness too, not only its readiness, because only a
/// restart brings the model back.
///
/// Triton's Python backend (triton-inference-server/python_backend, read at f9088ff):
/// src/stub_launcher.cc forks and execs one `triton_python_backend_stub` per model
/// instance and reaps it only in `StubActive()` (`waitpid(WNOHANG)`, called from
/// `TRITONBACKEND_ModelInstanceReady`, the per-model readiness) and at unload
/// (`KillStubProcess`/`WaitForStubProcess`). When the stub dies, every request to that
/// instance fails in `ProcessRequests` with "Stub process ... is not healthy", and
/// src/python_be.cc `TRITONBACKEND_ModelInstanceExecute` never restarts it (its comment
/// still reads "TODO: Implement restart"); the server-wide `/v2/health/live` and
/// `/v2/health/ready` stay 200 (Triton #8604, #7230). So a Triton whose child is a zombie
/// stays broken until the model is reloaded or the server restarted. The other servers'
/// children (vLLM's engine cores, SGLang's schedulers, llama.cpp has none) are not
/// restarted either, but their parents watch them and exit or fail `/health` themselves;
/// a zombie there only fails readiness.
pub fn children_unrecoverable(name: &str) -> bool {
    name == "triton"
}

/// Image repositories of each server, as published by its project (registry and
/// organisation included; `docker.io/` and `library/` optional).
const IMAGES: &[(&str, &str)] = &[
    ("vllm/vllm-openai", "vllm"),
    ("lmsysorg/sglang", "sglang"),
    ("nvcr.io/nvidia/tritonserver", "triton"),
    ("ghcr.io/huggingface/text-generation-inference", "tgi"),
    ("ghcr.io/huggingface/text-embeddings-inference", "tei"),
    ("ghcr.io/ggml-org/llama.cpp", "llamacpp"),
    // The project's organisation before it moved to ggml-org.
    ("ghcr.io/ggerganov/llama.cpp", "llamacpp"),
];

/// The profile for a container image (`vllm/vllm-openai:v0.8.5` → `vllm`), if it is a
/// known server's.
pub fn for_image(image: &str) -> Option<&'static str> {
    // Drop the digest, then the tag (a `:` after the last `/`; one before it is a port).
    let repo = image.split('@').next().unwrap_or(image);
    let repo = match repo.rfind(':') {
        Some(i) if !repo[i..].contains('/') => &repo[..i],
        _ => repo,
    };
    let repo = repo.strip_prefix("docker.io/").unwrap_or(repo);
    let repo = repo.strip_prefix("index.docker.io/").unwrap_or(repo);
    IMAGES.iter().find(|(r, _)| *r == repo).map(|(_, p)| *p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expo::is_metric_name;

    #[test]
    fn every_profile_is_well_formed() {
        for p in PROFILES {
            assert!(!p.work.is_empty(), "{}", p.name);
            assert!(!(p.busy.is_empty() && p.pending.is_empty()), "{}", p.name);
            for n in p.work.iter().chain(p.busy).chain(p.pending) {
                assert!(is_metric_name(n), "{}: {n}", p.name);
            }
            assert_eq!(builtin(p.name), Some(p));
        }
        assert_eq!(builtin("triton").and_then(|p| p.port), Some(8002));
    }

    #[test]
    fn images_pick_profiles() {
        let cases = [
            ("vllm/vllm-openai:v0.8.5", Some("vllm")),
            ("docker.io/vllm/vllm-openai", Some("vllm")),
            ("vllm/vllm-openai@sha256:abcd", Some("vllm")),
            ("lmsysorg/sglang:v0.4.6-cu124", Some("sglang")),
            ("nvcr.io/nvidia/tritonserver:24.08-py3", Some("triton")),
            (
                "ghcr.io/huggingface/text-generation-inference:3.0",
                Some("tgi"),
            ),
            (
                "ghcr.io/huggingface/text-embeddings-inference:cpu-1.5",
                Some("tei"),
            ),
            ("ghcr.io/ggml-org/llama.cpp:server", Some("llamacpp")),
            ("ghcr.io/ggerganov/llama.cpp:server-cuda", Some("llamacpp")),
            ("registry.local:5000/vllm/vllm-openai:latest", None),
            ("nginx:1.27", None),
            ("myorg/vllm-openai-fork", None),
        ];
        for (image, want) in cases {
            assert_eq!(for_image(image), want, "{image}");
        }
    }
}
