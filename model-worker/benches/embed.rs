//! `make bench`: how fast the worker embeds, in process and over HTTP.
//!
//! In process (the numbers `scripts/bench_st.py` compares with sentence-transformers on the
//! same texts and threads): embeddings per second at batch 1, 8, 32 and 128, tokenisation
//! and normalisation included as `SentenceTransformer.encode` includes them, and the
//! latency of one sentence at a time (p50/p99).
//!
//! Over HTTP (`BENCH_SERVER=1`): the real `vitals-worker` binary under 8 concurrent
//! clients sending one sentence per request, once with dynamic batching (the default
//! limits) and once with `--max-batch-size 1`, so the value of batching shows.
//!
//! Writes `bench-results/texts.json` (the inputs, for the Python side) and
//! `bench-results/candle.json` (or `BENCH_OUT`). Environment: `BENCH_THREADS` (default: all
//! cores), `MODEL_DIR`, `BENCH_SECS` (per measurement, default 5), `BENCH_SERVER`,
//! `BENCH_BATCHES` (comma-separated, default `1,8,32,128`; `scripts/bench-profile.sh`
//! profiles one size at a time), `BENCH_SINGLE=0` (skip the one-sentence latency).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use vitals_e2e::report::percentile;
use vitals_e2e::{client, wait};
use vitals_worker::model::bert::BertEmbedder;
use vitals_worker::model::device::{self, DeviceSpec};
use vitals_worker::model::tokenizer::TextTokenizer;
use vitals_worker::model::{l2_normalize, Embedder, ModelSpec};

const BATCHES: &str = "1,8,32,128";
const CLIENTS: usize = 8;
const TEXTS: usize = 512;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Search-like sentences of 4 to 48 words, the same every run (a fixed LCG, no RNG crate):
/// short queries and longer passages mixed, as a RAG index sees them.
fn texts() -> Vec<String> {
    const WORDS: &[&str] = &[
        "model",
        "pod",
        "probe",
        "liveness",
        "readiness",
        "the",
        "a",
        "of",
        "inference",
        "latency",
        "GPU",
        "memory",
        "kubernetes",
        "sidecar",
        "embedding",
        "vector",
        "search",
        "query",
        "document",
        "retrieval",
        "batch",
        "queue",
        "heartbeat",
        "restart",
        "load",
        "weights",
        "tokenizer",
        "server",
        "request",
        "answer",
        "quickly",
        "slowly",
        "why",
        "does",
        "my",
        "service",
        "return",
        "errors",
        "after",
        "deploy",
        "how",
        "to",
        "scale",
        "replicas",
        "under",
        "traffic",
        "café",
        "naïve",
        "résumé",
        "東京",
        "データ",
        "🙂",
        "operator",
        "alert",
        "dashboard",
        "metrics",
        "p99",
        "throughput",
        "and",
        "with",
    ];
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize
    };
    (0..TEXTS)
        .map(|_| {
            let n = 4 + next() % 45;
            let mut words: Vec<&str> = (0..n).map(|_| WORDS[next() % WORDS.len()]).collect();
            words[0] = if next() % 3 == 0 { "How" } else { "The" };
            format!("{}.", words.join(" "))
        })
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Tokenise, embed and normalise `batch`, as one `encode` call does.
fn encode(tok: &TextTokenizer, model: &mut BertEmbedder, batch: &[String]) -> usize {
    let ids: Vec<Vec<u32>> = batch.iter().map(|t| tok.encode(t).unwrap().ids).collect();
    let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let mut vectors = model.embed(&refs).unwrap();
    vectors.iter_mut().for_each(|v| l2_normalize(v));
    vectors.len()
}

fn in_process(
    texts: &[String],
    threads: usize,
    secs: f64,
    batches: &[usize],
    single_too: bool,
) -> serde_json::Value {
    let dir = std::env::var("MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join("models/all-MiniLM-L6-v2"));
    let spec = ModelSpec::read(&dir).expect("the model folder (run `make model`)");
    let tok = TextTokenizer::load(&spec.dir, spec.max_seq_length).unwrap();
    let dev = device::open(DeviceSpec::Cpu, threads).unwrap();
    let mut model = BertEmbedder::load(&spec, &dev.device, &mut |_, _| Ok(())).unwrap();
    let tokens: usize = texts.iter().map(|t| tok.encode(t).unwrap().ids.len()).sum();
    eprintln!(
        "candle: {} texts, {:.1} tokens on average, {threads} threads",
        texts.len(),
        tokens as f64 / texts.len() as f64
    );

    let mut throughput = serde_json::Map::new();
    for &b in batches {
        encode(&tok, &mut model, &texts[..b]); // warm-up: allocations, thread pool
        let (mut rows, mut i) = (0usize, 0usize);
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < secs || rows < 3 * b {
            let from = (i * b) % (texts.len() - b + 1);
            rows += encode(&tok, &mut model, &texts[from..from + b]);
            i += 1;
        }
        let per_s = rows as f64 / start.elapsed().as_secs_f64();
        eprintln!("candle: batch {b:>3}: {per_s:8.1} embeddings/s");
        throughput.insert(b.to_string(), json!(per_s));
    }

    let mut single = Vec::new();
    if !single_too {
        return json!({
            "threads": threads,
            "texts": texts.len(),
            "mean_tokens": tokens as f64 / texts.len() as f64,
            "embeddings_per_s": throughput,
        });
    }
    let start = Instant::now();
    for t in texts.iter().cycle() {
        if single.len() >= 200 && start.elapsed().as_secs_f64() >= secs {
            break;
        }
        let t0 = Instant::now();
        encode(&tok, &mut model, std::slice::from_ref(t));
        single.push(t0.elapsed());
    }
    single.sort_unstable();
    let (p50, p99) = (percentile(&single, 0.5), percentile(&single, 0.99));
    eprintln!(
        "candle: single sentence p50 {:.2} ms, p99 {:.2} ms",
        ms(p50),
        ms(p99)
    );
    json!({
        "threads": threads,
        "texts": texts.len(),
        "mean_tokens": tokens as f64 / texts.len() as f64,
        "embeddings_per_s": throughput,
        "single_ms": {"p50": ms(p50), "p99": ms(p99), "n": single.len()},
    })
}

/// Kills the worker when the measurement ends, however it ends.
struct WorkerProcess(Child);

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server(texts: &[String], threads: usize, secs: f64, max_batch: usize) -> serde_json::Value {
    let bin = workspace().join("target/worker/vitals-worker");
    let dir = tempfile::tempdir().unwrap();
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let model = std::env::var("MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join("models/all-MiniLM-L6-v2"));
    let child = Command::new(&bin)
        .arg("--model-dir")
        .arg(&model)
        .args(["--device", "cpu", "--listen", &addr.to_string()])
        .args(["--threads", &threads.to_string()])
        .args(["--max-batch-size", &max_batch.to_string()])
        .arg("--agent-socket")
        .arg(dir.path().join("no-agent.sock"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let _worker = WorkerProcess(child);
    wait::eventually("the worker's /health", Duration::from_secs(120), || {
        client::get(addr, "/health", Duration::from_secs(1))
            .ok()
            .filter(|r| r.status == 200)
    });

    let stop = Arc::new(AtomicBool::new(false));
    let bodies: Arc<Vec<String>> = Arc::new(
        texts
            .iter()
            .map(|t| json!({"input": t, "model": "all-MiniLM-L6-v2"}).to_string())
            .collect(),
    );
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (stop, bodies) = (Arc::clone(&stop), Arc::clone(&bodies));
            thread::spawn(move || {
                let (mut lat, mut errors) = (Vec::new(), 0usize);
                let mut i = c * 61;
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    // The toolkit's client: one request per connection (on loopback a
                    // connect costs tens of µs, against milliseconds of embedding).
                    let body = bodies[i % bodies.len()].as_bytes();
                    let req = client::Request {
                        body: Some(("application/json", body)),
                        ..client::Request::new("POST", "/v1/embeddings")
                    };
                    if client::send(addr, &req, Duration::from_secs(30)).map(|r| r.status)
                        != Ok(200)
                    {
                        errors += 1;
                    }
                    lat.push(t0.elapsed());
                    i += 1;
                }
                (lat, errors)
            })
        })
        .collect();
    thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let (mut lat, mut errors) = (Vec::new(), 0);
    for c in clients {
        let (l, e) = c.join().unwrap();
        lat.extend(l);
        errors += e;
    }
    lat.sort_unstable();
    let rps = lat.len() as f64 / secs;
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    eprintln!(
        "server, {CLIENTS} clients, max batch {max_batch}: {rps:.1} requests/s, p50 {:.1} ms, p99 {:.1} ms, {errors} errors",
        ms(p50),
        ms(p99)
    );
    json!({"max_batch_size": max_batch, "clients": CLIENTS, "requests_per_s": rps,
           "p50_ms": ms(p50), "p99_ms": ms(p99), "errors": errors, "requests": lat.len()})
}

fn main() {
    let threads = env_or(
        "BENCH_THREADS",
        thread::available_parallelism().map_or(1, |n| n.get()),
    );
    // As the worker's main does, before any other thread exists.
    device::configure_cpu_threads(threads);
    let secs: f64 = env_or("BENCH_SECS", 5.0);
    let texts = texts();
    let out = workspace().join("bench-results");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("texts.json"),
        serde_json::to_string(&texts).unwrap(),
    )
    .unwrap();

    let batches: Vec<usize> = std::env::var("BENCH_BATCHES")
        .unwrap_or_else(|_| BATCHES.to_owned())
        .split(',')
        .map(|b| {
            b.trim()
                .parse()
                .expect("BENCH_BATCHES: comma-separated sizes")
        })
        .collect();
    let single_too = std::env::var("BENCH_SINGLE").map_or(true, |v| v != "0");
    let mut result = json!({
        "in_process": in_process(&texts, threads, secs, &batches, single_too),
        "mkl": cfg!(feature = "mkl"),
    });
    if std::env::var_os("BENCH_SERVER").is_some() {
        result["server"] = json!([
            server(&texts, threads, secs * 2.0, 32),
            server(&texts, threads, secs * 2.0, 1),
        ]);
    }
    let file = std::env::var("BENCH_OUT").unwrap_or_else(|_| "candle.json".to_owned());
    std::fs::write(
        out.join(file),
        serde_json::to_string_pretty(&result).unwrap(),
    )
    .unwrap();
}
