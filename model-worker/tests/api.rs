//! The HTTP API over real sockets, with the real model: every success and error case of
//! the routes, start-up reporting to a fake agent, loading / draining / queue-full
//! answers and the fault routes. One worker (one model load) is shared by most tests;
//! the few that need other flags start their own.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use vitals_proto::codec::{encode_line, read_line};
use vitals_proto::message::{decode_hello, decode_message, AgentMessage, Welcome, WorkerMessage};
use vitals_proto::Phase;
use vitals_worker::config::{Args, Config};
use vitals_worker::WorkerError;

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/all-MiniLM-L6-v2")
}

fn have_model() -> bool {
    let ok = model_dir().join("model.safetensors").exists();
    if !ok {
        eprintln!("SKIPPED: no model (run `make model`; `make test` fetches it)");
    }
    ok
}

/// A worker running in this process on its own runtime thread.
struct Worker {
    addr: SocketAddr,
    shutdown: CancellationToken,
    result: Mutex<std::sync::mpsc::Receiver<Result<(), WorkerError>>>,
    agent: Arc<Mutex<Vec<WorkerMessage>>>,
    _dir: tempfile::TempDir,
}

impl Worker {
    fn start(model_dir: &Path, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("agent.sock");
        let agent = fake_agent(&socket);
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
        let start = Instant::now();
        while get(self.addr, "/health").0 != 200 {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "worker not ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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
        self.agent.lock().expect("lock").clone()
    }
}

/// A minimal agent: welcomes each connection and records every message.
fn fake_agent(socket: &Path) -> Arc<Mutex<Vec<WorkerMessage>>> {
    let listener = UnixListener::bind(socket).expect("bind agent socket");
    let messages = Arc::new(Mutex::new(Vec::new()));
    let out = Arc::clone(&messages);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let out = Arc::clone(&out);
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let Ok(line) = read_line(&mut stream, &mut buf) else {
                    return;
                };
                if decode_hello(&line).is_err() {
                    return;
                }
                let welcome = AgentMessage::Welcome(Welcome {
                    v: 1,
                    agent_version: "fake".into(),
                    hang_timeout_ms: 10_000,
                });
                if stream.write_all(&encode_line(&welcome)).is_err() {
                    return;
                }
                while let Ok(line) = read_line(&mut stream, &mut buf) {
                    if let Ok(m) = decode_message(&line) {
                        out.lock().expect("lock").push(m);
                    }
                }
            });
        }
    });
    messages
}

static SHARED: LazyLock<Option<Worker>> = LazyLock::new(|| {
    if !have_model() {
        return None;
    }
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
    Some(w)
});

fn shared() -> Option<SocketAddr> {
    SHARED.as_ref().map(|w| w.addr)
}

/// One HTTP/1.1 request on a fresh connection: (status, headers, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> (u16, HashMap<String, String>, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("write head");
    // A server may answer (413) and close before reading a huge body.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a full response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn get(addr: SocketAddr, path: &str) -> (u16, HashMap<String, String>, String) {
    http(addr, "GET", path, None)
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let (status, _, text) = http(addr, "POST", path, Some(body.to_string().as_bytes()));
    (status, serde_json::from_str(&text).expect("JSON body"))
}

fn assert_error(addr: SocketAddr, path: &str, body: &[u8], status: u16, code: &str) -> Value {
    let (got, _, text) = http(addr, "POST", path, Some(body));
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
    let Some(addr) = shared() else { return };
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
    let Some(addr) = shared() else { return };
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
    let (_, _, metrics) = get(addr, "/metrics");
    let count = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .expect("metric present")
    };
    // 10 concurrent single-text requests ran in fewer than 10 + 10 passes overall.
    assert!(count("embedding_batch_size_count") < count("embedding_texts_total"));
}

#[test]
fn tei_embed_normalize_and_truncate() {
    let Some(addr) = shared() else { return };
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
    let Some(addr) = shared() else { return };
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
    let Some(addr) = shared() else { return };
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
    let Some(addr) = shared() else { return };
    let (status, _, body) = get(addr, "/nope");
    assert_eq!(status, 404, "{body}");
    // Without --enable-fault-injection the fault route does not exist.
    assert_error(
        addr,
        "/debug/fault",
        br#"{"kind":"crash"}"#,
        404,
        "not_found",
    );
    let (status, headers, _) = get(addr, "/v1/embeddings");
    assert_eq!(status, 405);
    assert_eq!(headers.get("allow").map(String::as_str), Some("POST"));

    let (status, _, body) = get(addr, "/health");
    assert_eq!(status, 200, "{body}");
    let (_, _, body) = get(addr, "/info");
    let info: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(info["model"], "all-MiniLM-L6-v2");
    assert_eq!(info["dimension"], 384);
    assert_eq!(info["max_tokens"], 256);
    assert_eq!(info["device"], "cpu");
    assert_eq!(info["pooling"], "mean");
    assert_eq!(info["max_batch_size"], 4);
    assert_eq!(info["phase"], "ready");
    let (_, _, body) = get(addr, "/v1/models");
    let models: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(models["data"][0]["id"], "all-MiniLM-L6-v2");
    let (status, headers, metrics) = get(addr, "/metrics");
    assert_eq!(status, 200);
    assert!(headers["content-type"].starts_with("text/plain"));
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
    let Some(worker) = SHARED.as_ref() else {
        return;
    };
    let start = Instant::now();
    let messages = loop {
        let m = worker.messages();
        let beats = m
            .iter()
            .filter(|m| matches!(m, WorkerMessage::Heartbeat(_)))
            .count();
        if beats >= 3 {
            break m;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no heartbeats");
        std::thread::sleep(Duration::from_millis(50));
    };
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
    if !have_model() {
        return;
    }
    let w = Worker::start(
        &model_dir(),
        &["--enable-fault-injection", "--fault-slow-load", "60s"],
    );
    std::thread::sleep(Duration::from_millis(300));
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
    let (status, headers, _) = get(w.addr, "/health");
    assert_eq!(status, 503);
    assert_eq!(headers.get("retry-after").map(String::as_str), Some("1"));
    let (_, _, info) = get(w.addr, "/info");
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
    let start = Instant::now();
    while !w
        .messages()
        .iter()
        .any(|m| matches!(m, WorkerMessage::Phase(p) if p.phase == Phase::Failed))
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "failed not reported"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Shutdown interrupts the (slow) load promptly; a failed worker exits with its failure.
    w.shutdown.cancel();
    let err = w
        .finish(Duration::from_secs(10))
        .expect_err("a failed worker does not stop cleanly");
    assert!(matches!(err, WorkerError::Failed(_)), "{err}");
}

#[test]
fn full_queue_is_429_and_draining_is_503() {
    if !have_model() {
        return;
    }
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
    std::thread::sleep(Duration::from_millis(300));
    let addr = w.addr;
    // This request is queued and never answered: the loop hangs.
    let stuck = std::thread::spawn(move || {
        let _ = http(addr, "POST", "/v1/embeddings", Some(br#"{"input":"a"}"#));
    });
    let start = Instant::now();
    loop {
        let (_, _, metrics) = get(addr, "/metrics");
        if metrics.contains("embedding_queue_depth 1") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "request not queued"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, headers, body) = http(addr, "POST", "/v1/embeddings", Some(br#"{"input":"b"}"#));
    assert_eq!(status, 429, "{body}");
    assert_eq!(headers.get("retry-after").map(String::as_str), Some("1"));
    // HTTP still answers while the loop hangs.
    assert_eq!(get(addr, "/health").0, 200);

    // The hung loop no longer ticks: heartbeats still come, their progress is frozen.
    let progress = |w: &Worker| -> Vec<u64> {
        w.messages()
            .iter()
            .filter_map(|m| match m {
                WorkerMessage::Heartbeat(h) => Some(h.progress),
                _ => None,
            })
            .collect()
    };
    let before = progress(&w);
    std::thread::sleep(Duration::from_millis(300));
    let after = progress(&w);
    assert!(after.len() >= before.len() + 3, "heartbeats continue");
    assert_eq!(before.last(), after.last(), "progress frozen");

    let (status, _) = post(addr, "/debug/fault", &json!({"kind": "stop_heartbeats"}));
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(100));
    let before = progress(&w).len();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        progress(&w).len(),
        before,
        "no heartbeats after stop_heartbeats"
    );

    w.shutdown.cancel();
    std::thread::sleep(Duration::from_millis(100));
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
    assert!(w.messages().iter().any(
        |m| matches!(m, WorkerMessage::Phase(p) if p.phase == Phase::Failed && p.detail == reason)
    ));
}
