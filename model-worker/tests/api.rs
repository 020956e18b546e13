//! The HTTP API over real sockets, with the real model: every success and error case of
//! the routes, start-up reporting to a fake agent, loading / draining / queue-full
//! answers and the fault routes. One worker (one model load) is shared by most tests;
//! the few that need other flags start their own. Without the model (`make model`) the
//! tests that load it fail.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use vitals_e2e::bins::model_dir;
use vitals_e2e::client::{self, Request, Response};
use vitals_e2e::peer::FakeAgent;
use vitals_e2e::prom;
use vitals_e2e::wait::eventually;
use vitals_proto::message::WorkerMessage;
use vitals_proto::Phase;
use vitals_worker::config::{Args, Config};
use vitals_worker::WorkerError;

/// How long one request may take: a cold batch of long texts on a busy 2-core machine.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A worker running in this process on its own runtime thread.
struct Worker {
    addr: SocketAddr,
    shutdown: CancellationToken,
    result: Mutex<std::sync::mpsc::Receiver<Result<(), WorkerError>>>,
    agent: FakeAgent,
    _dir: tempfile::TempDir,
}

impl Worker {
    fn start(model_dir: &Path, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("agent.sock");
        let agent = FakeAgent::bind(&socket, Duration::from_secs(10));
        let mut argv = vec![
            "vitals-worker".to_owned(),
            "--model-dir".into(),
            model_dir.display().to_string(),
            "--agent-socket".into(),
            socket.display().to_string(),
            "--heartbeat-interval".into(),
            "50ms".into(),
            "--device".into(),
            "cpu".into(),
        ];
        argv.extend(extra.iter().map(|s| (*s).to_owned()));
        let config = Config::from_args(Args::try_parse_from(argv).expect("valid args"))
            .expect("valid config");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let shutdown = CancellationToken::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let sd = shutdown.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let result = rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                vitals_worker::run(config, listener, sd).await
            });
            let _ = tx.send(result);
        });
        Self {
            addr,
            shutdown,
            result: Mutex::new(rx),
            agent,
            _dir: dir,
        }
    }

    fn wait_ready(&self) {
        eventually("the worker ready", Duration::from_secs(120), || {
            (get(self.addr, "/health").status == 200).then_some(())
        });
    }

    /// Waits for `run` to return.
    fn finish(&self, within: Duration) -> Result<(), WorkerError> {
        self.result
            .lock()
            .expect("lock")
            .recv_timeout(within)
            .expect("run returned in time")
    }

    fn messages(&self) -> Vec<WorkerMessage> {
        self.agent.messages()
    }
}

static SHARED: LazyLock<Worker> = LazyLock::new(|| {
    let w = Worker::start(
        &model_dir(),
        &[
            "--max-batch-size",
            "4",
            "--max-inputs",
            "8",
            "--max-request-chars",
            "3000",
            "--batch-linger",
            "5ms",
        ],
    );
    w.wait_ready();
    w
});

fn shared() -> SocketAddr {
    SHARED.addr
}

/// One request on a fresh connection, a JSON body (or any bytes) when given.
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&[u8]>) -> Response {
    let req = Request {
        body: body.map(|b| ("application/json", b)),
        ..Request::new(method, path)
    };
    client::send(addr, &req, REQUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("{method} {path}: no complete answer: {e}"))
}

fn get(addr: SocketAddr, path: &str) -> Response {
    http(addr, "GET", path, None)
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let r = http(addr, "POST", path, Some(body.to_string().as_bytes()));
    (r.status, r.json().expect("JSON body"))
}

fn assert_error(addr: SocketAddr, path: &str, body: &[u8], status: u16, code: &str) -> Value {
    let r = http(addr, "POST", path, Some(body));
    let (got, text) = (r.status, r.text());
    let v: Value = serde_json::from_str(&text).expect("JSON error");
    assert_eq!(got, status, "{text}");
    assert_eq!(v["error"]["code"], code, "{text}");
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert!(v["error"]["type"].is_string());
    assert!(v["error"].get("param").is_some());
    v
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() / (norm(a) * norm(b))
}

fn decode_base64(s: &str) -> Vec<f32> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut bytes = Vec::new();
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c).expect("base64 char") as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            bytes.push((bits >> n) as u8);
        }
    }
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn openai_embeddings_float_and_base64() {
    let addr = shared();
    let (status, v) = post(
        addr,
        "/v1/embeddings",
        &json!({"input": ["hello world", "", "  "], "model": "anything"}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "all-MiniLM-L6-v2");
    let data = v["data"].as_array().expect("data");
    assert_eq!(data.len(), 3);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["index"], i);
        assert_eq!(d["object"], "embedding");
        let e = floats(&d["embedding"]);
        assert_eq!(e.len(), 384);
        assert!((norm(&e) - 1.0).abs() < 1e-4);
    }
    // "hello world" is 4 tokens with [CLS]/[SEP]; "" and "  " are 2 each.
    assert_eq!(v["usage"]["prompt_tokens"], 8);
    assert_eq!(v["usage"]["total_tokens"], 8);

    let (status, b) = post(
        addr,
        "/v1/embeddings",
        &json!({"input": "hello world", "encoding_format": "base64"}),
    );
    assert_eq!(status, 200);
    let decoded = decode_base64(b["data"][0]["embedding"].as_str().expect("base64 string"));
    assert_eq!(decoded, floats(&data[0]["embedding"]));
}

#[test]
fn concurrent_requests_are_batched_and_match_single_ones() {
    let addr = shared();
    let texts: Vec<String> = (0..10)
        .map(|i| format!("sentence number {i} about {}", "probes ".repeat(i * 3)))
        .collect();
    let single: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| {
            let (s, v) = post(addr, "/v1/embeddings", &json!({"input": t}));
            assert_eq!(s, 200);
            floats(&v["data"][0]["embedding"])
        })
        .collect();
    let threads: Vec<_> = texts
        .iter()
        .cloned()
        .map(|t| {
            std::thread::spawn(move || {
                let (s, v) = post(addr, "/v1/embeddings", &json!({"input": t}));
                assert_eq!(s, 200);
                floats(&v["data"][0]["embedding"])
            })
        })
        .collect();
    for (t, single) in threads.into_iter().zip(&single) {
        let batched = t.join().expect("thread");
        assert!(cosine(&batched, single) >= 0.9999);
    }
    let metrics = get(addr, "/metrics").text();
    let count = |name: &str| prom::metric(&metrics, name, &[]).expect("metric present");
    // 10 concurrent single-text requests ran in fewer than 10 + 10 passes overall.
    assert!(count("embedding_batch_size_count") < count("embedding_texts_total"));
}

/// Issue 27's measured case on the real model: one text truncated at 256 tokens and 31
/// short ones in one request, under `--max-batch-tokens 1024`, take one forward pass on
/// the CPU, whose encoder packs them (the sum of their lengths is about 500 tokens); when
/// the limit counted rows × longest, 4 × 256 filled it and they took 2.
#[test]
fn a_long_text_and_short_ones_share_one_pass_on_the_cpu() {
    let w = Worker::start(
        &model_dir(),
        &[
            "--max-batch-size",
            "32",
            "--max-batch-tokens",
            "1024",
            "--max-inputs",
            "32",
            "--drain-delay=0s",
        ],
    );
    w.wait_ready();
    let mut input = vec!["probes ".repeat(300)];
    input.extend((0..31).map(|i| format!("short text number {i}")));
    let (status, v) = post(w.addr, "/v1/embeddings", &json!({"input": input}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"].as_array().map(Vec::len), Some(32));
    let metrics = get(w.addr, "/metrics").text();
    let value = |name: &str| prom::metric(&metrics, name, &[]).expect("metric present");
    eprintln!(
        "32 texts ran in {} forward pass(es)",
        value("embedding_batch_size_count")
    );
    assert_eq!(value("embedding_texts_total"), 32.0);
    assert_eq!(value("embedding_batch_size_count"), 1.0, "{metrics}");
    w.shutdown.cancel();
    w.finish(Duration::from_secs(30)).expect("a clean drain");
}

#[test]
fn tei_embed_normalize_and_truncate() {
    let addr = shared();
    let (status, v) = post(addr, "/embed", &json!({"inputs": "hello world"}));
    assert_eq!(status, 200, "{v}");
    let rows = v.as_array().expect("array of arrays");
    assert_eq!(rows.len(), 1);
    assert!((norm(&floats(&rows[0])) - 1.0).abs() < 1e-4);

    let (_, raw) = post(
        addr,
        "/embed",
        &json!({"inputs": ["hello world"], "normalize": false}),
    );
    let raw = floats(&raw[0]);
    assert!((norm(&raw) - 1.0).abs() > 1e-2, "not normalised");
    assert!(cosine(&raw, &floats(&rows[0])) > 0.9999);

    let long = "word ".repeat(400);
    assert_error(
        addr,
        "/embed",
        json!({"inputs": long}).to_string().as_bytes(),
        413,
        "input_too_long",
    );
    let (status, _) = post(addr, "/embed", &json!({"inputs": long, "truncate": true}));
    assert_eq!(status, 200);
    // OpenAI's route always truncates, as sentence-transformers does.
    let (status, _) = post(addr, "/v1/embeddings", &json!({"input": long}));
    assert_eq!(status, 200);
}

#[test]
fn invalid_requests_are_400() {
    let addr = shared();
    let e = "/v1/embeddings";
    assert_error(addr, e, b"{not json", 400, "invalid_json");
    assert_error(addr, e, b"[1,2]", 400, "invalid_json");
    let v = assert_error(addr, e, br#"{"model":"m"}"#, 400, "missing_field");
    assert_eq!(v["error"]["param"], "input");
    assert_error(addr, e, br#"{"input":[]}"#, 400, "empty_input");
    assert_error(addr, e, br#"{"input":[[1,2,3]]}"#, 400, "unsupported_input");
    assert_error(addr, e, br#"{"input":42}"#, 400, "invalid_input");
    let v = assert_error(
        addr,
        e,
        br#"{"input":"a","dimensions":128}"#,
        400,
        "unsupported_parameter",
    );
    assert_eq!(v["error"]["param"], "dimensions");
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("dimensions")));
    assert_error(
        addr,
        e,
        br#"{"input":"a","encoding_format":"hex"}"#,
        400,
        "invalid_parameter",
    );
    assert_error(
        addr,
        "/embed",
        br#"{"inputs":"a","normalize":"yes"}"#,
        400,
        "invalid_parameter",
    );
    assert_error(addr, "/embed", br#"{"input":"a"}"#, 400, "missing_field");
}

#[test]
fn oversized_requests_are_413() {
    let addr = shared();
    let nine = json!({"input": vec!["a"; 9]}).to_string();
    assert_error(
        addr,
        "/v1/embeddings",
        nine.as_bytes(),
        413,
        "too_many_inputs",
    );
    let chars = json!({"input": ["é".repeat(3001)]}).to_string();
    assert_error(
        addr,
        "/v1/embeddings",
        chars.as_bytes(),
        413,
        "too_many_characters",
    );
    let huge = vec![b' '; vitals_worker::api::MAX_BODY_BYTES + 1];
    assert_error(addr, "/v1/embeddings", &huge, 413, "body_too_large");
}

#[test]
fn routes_methods_and_info() {
    let addr = shared();
    let r = get(addr, "/nope");
    assert_eq!(r.status, 404, "{}", r.text());
    // Without --enable-fault-injection the fault route does not exist.
    assert_error(
        addr,
        "/debug/fault",
        br#"{"kind":"crash"}"#,
        404,
        "not_found",
    );
    let r = get(addr, "/v1/embeddings");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));

    let r = get(addr, "/health");
    assert_eq!(r.status, 200, "{}", r.text());
    let info = get(addr, "/info").json().expect("json");
    assert_eq!(info["model"], "all-MiniLM-L6-v2");
    assert_eq!(info["dimension"], 384);
    assert_eq!(info["max_tokens"], 256);
    assert_eq!(info["device"], "cpu");
    assert_eq!(info["pooling"], "mean");
    assert_eq!(info["max_batch_size"], 4);
    assert_eq!(info["phase"], "ready");
    let models = get(addr, "/v1/models").json().expect("json");
    assert_eq!(models["data"][0]["id"], "all-MiniLM-L6-v2");
    let r = get(addr, "/metrics");
    let metrics = r.text();
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/plain")));
    for name in [
        "embedding_requests_total",
        "embedding_request_duration_seconds_bucket",
        "embedding_batch_size_bucket",
        "embedding_queue_depth",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
}

#[test]
fn start_up_is_reported_to_the_agent() {
    let messages = SHARED
        .agent
        .wait_for("3 heartbeats", Duration::from_secs(10), |m| {
            let beats = m
                .iter()
                .filter(|m| matches!(m, WorkerMessage::Heartbeat(_)))
                .count();
            (beats >= 3).then(|| m.to_vec())
        });
    let phases: Vec<Phase> = messages
        .iter()
        .filter_map(|m| match m {
            WorkerMessage::Phase(p) => Some(p.phase),
            _ => None,
        })
        .collect();
    let order = |p: Phase| phases.iter().position(|&x| x == p).expect("phase seen");
    assert!(order(Phase::Loading) < order(Phase::Warming));
    assert!(order(Phase::Warming) < order(Phase::Ready));
    let progress: Vec<(u64, Option<u64>, String)> = messages
        .iter()
        .filter_map(|m| match m {
            WorkerMessage::Phase(p) => p.progress.clone().map(|g| (g.done, g.total, g.unit)),
            _ => None,
        })
        .collect();
    let last = progress.last().expect("byte progress reported");
    assert_eq!(last.2, "bytes");
    assert_eq!(Some(last.0), last.1, "progress reaches the total");
    for name in ["tokenizer", "device"] {
        assert!(
            messages
                .iter()
                .any(|m| matches!(m, WorkerMessage::Check(c) if c.name == name && c.ok)),
            "check {name}"
        );
    }
    let beats: Vec<u64> = messages
        .iter()
        .filter_map(|m| match m {
            WorkerMessage::Heartbeat(h) => Some(h.progress),
            _ => None,
        })
        .collect();
    assert!(beats.windows(2).all(|w| w[0] <= w[1]));
    assert!(beats.last() > beats.first(), "the idle loop ticks");
}

#[test]
fn loading_answers_503_and_faults_work_before_ready() {
    let w = Worker::start(
        &model_dir(),
        &["--enable-fault-injection", "--fault-slow-load", "60s"],
    );
    w.agent
        .wait_for("phase loading", Duration::from_secs(10), |m| {
            m.iter()
                .any(|m| matches!(m, WorkerMessage::Phase(p) if p.phase == Phase::Loading))
                .then_some(())
        });
    let v = assert_error(
        w.addr,
        "/v1/embeddings",
        br#"{"input":"a"}"#,
        503,
        "not_ready",
    );
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("loading")));
    let health = get(w.addr, "/health");
    assert_eq!(health.status, 503);
    assert_eq!(health.header("retry-after"), Some("1"));
    let info = get(w.addr, "/info").text();
    assert!(info.contains(r#""phase":"loading""#), "{info}");

    assert_error(
        w.addr,
        "/debug/fault",
        br#"{"kind":"nope"}"#,
        400,
        "invalid_parameter",
    );
    let (status, _) = post(w.addr, "/debug/fault", &json!({"kind": "fail"}));
    assert_eq!(status, 200);
    assert_error(w.addr, "/v1/embeddings", br#"{"input":"a"}"#, 503, "failed");
    w.agent
        .wait_for("failed reported", Duration::from_secs(5), |m| {
            m.iter()
                .any(|m| matches!(m, WorkerMessage::Phase(p) if p.phase == Phase::Failed))
                .then_some(())
        });
    // Shutdown interrupts the (slow) load promptly; a failed worker exits with its failure.
    w.shutdown.cancel();
    let err = w
        .finish(Duration::from_secs(10))
        .expect_err("a failed worker does not stop cleanly");
    assert!(matches!(err, WorkerError::Failed(_)), "{err}");
}

#[test]
fn full_queue_is_429_and_draining_is_503() {
    let w = Worker::start(
        &model_dir(),
        &[
            // Refuse at once on SIGTERM: the drain delay is the e2e drain scenario's.
            "--drain-delay=0s",
            "--enable-fault-injection",
            "--max-queue",
            "1",
            "--max-batch-size",
            "2",
            "--drain-timeout",
            "1s",
        ],
    );
    w.wait_ready();
    let (status, _) = post(w.addr, "/debug/fault", &json!({"kind": "hang_loop"}));
    assert_eq!(status, 200);
    let addr = w.addr;
    // This request is queued and never answered: the loop hangs.
    let stuck = std::thread::spawn(move || {
        let _ = http(addr, "POST", "/v1/embeddings", Some(br#"{"input":"a"}"#));
    });
    eventually("the request queued", Duration::from_secs(10), || {
        let metrics = get(addr, "/metrics").text();
        (prom::metric(&metrics, "embedding_queue_depth", &[]) == Some(1.0)).then_some(())
    });
    let r = http(addr, "POST", "/v1/embeddings", Some(br#"{"input":"b"}"#));
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    // HTTP still answers while the loop hangs.
    assert_eq!(get(addr, "/health").status, 200);

    // Hung: the queued request woke the loop, whose next step after a tick is the fault
    // check; six heartbeats in a row (250 ms) without a tick, where a live idle loop ticks
    // every 100 ms (batch::TICK), show it stopped.
    let queued = w.agent.heartbeats().len();
    w.agent
        .wait_for("the loop hung", Duration::from_secs(10), |_| {
            let beats = w.agent.heartbeats();
            let last = &beats[queued.max(beats.len().saturating_sub(6))..];
            (last.len() == 6 && last.iter().all(|p| *p == last[0])).then_some(())
        });

    // The hung loop no longer ticks: heartbeats still come, their progress is frozen.
    let before = w.agent.heartbeats();
    let after = w
        .agent
        .wait_for("heartbeats continue", Duration::from_secs(10), |_| {
            Some(w.agent.heartbeats()).filter(|a| a.len() >= before.len() + 3)
        });
    assert_eq!(before.last(), after.last(), "progress frozen");

    let (status, _) = post(addr, "/debug/fault", &json!({"kind": "stop_heartbeats"}));
    assert_eq!(status, 200);
    let before = w.agent.heartbeats().len();
    // Silence is what is checked: no heartbeat for 400 ms (eight periods), bar the one that
    // may have been on its way when the fault landed.
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        w.agent.heartbeats().len() <= before + 1,
        "no heartbeats after stop_heartbeats"
    );

    w.shutdown.cancel();
    eventually("draining answers", Duration::from_secs(5), || {
        let r = http(addr, "POST", "/v1/embeddings", Some(br#"{"input":"c"}"#));
        (r.status == 503).then_some(())
    });
    assert_error(addr, "/v1/embeddings", br#"{"input":"c"}"#, 503, "draining");
    let start = Instant::now();
    w.finish(Duration::from_secs(10))
        .expect("exits 0 after the drain timeout");
    assert!(start.elapsed() < Duration::from_secs(5));
    drop(stuck);
}

#[test]
fn a_missing_model_fails_with_a_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = Worker::start(dir.path(), &[]);
    let err = w.finish(Duration::from_secs(10)).expect_err("fails");
    let WorkerError::Failed(reason) = err else {
        panic!("unexpected error {err}")
    };
    assert!(reason.contains("modules.json"), "{reason}");
    // The fake agent reads the socket on a thread of its own: the report was sent before the
    // worker returned, but may be read a moment after.
    eventually("the failed phase reported", Duration::from_secs(5), || {
        w.messages()
            .iter()
            .any(|m| matches!(m, WorkerMessage::Phase(p) if p.phase == Phase::Failed && p.detail == reason))
            .then_some(())
    });
}
