//! A small fake vLLM: the HTTP surface the agent watches (SPEC §8, §12) with switches to
//! make it misbehave. It runs as its own process (the `fake-vllm` binary of this crate) so
//! the agent finds it by its listening port and a scenario can SIGSTOP or kill it.
//!
//! - `GET /health`: 503 while "loading", then 200 (vllm/entrypoints/openai/api_server.py
//!   answers 200 once the engine client is up, whatever the engine loop does, asleep too);
//! - `GET /metrics`: vLLM's real names (vllm-project/vllm vllm/v1/metrics/loggers.py):
//!   `vllm:num_requests_running`, `vllm:num_requests_waiting`,
//!   `vllm:generation_tokens_total`, `vllm:prompt_tokens_total` and the
//!   `vllm:iteration_tokens_total` histogram, moving while requests run, one series per
//!   engine with `engine="<i>"` (loggers.py makes each per engine index), and
//!   `vllm:engine_sleep_state{sleep_state="awake"|"weights_offloaded"|"discard_all"}`
//!   (loggers.py `record_sleep_state`: every engine at once);
//! - data parallelism ([`VllmOptions::engines`]): requests are spread over the engines,
//!   and one engine can hang alone (`/control/hang?engine=3`) while the others work;
//! - sleep, as vllm/v1/engine/core.py and the dev-mode routes of
//!   vllm/entrypoints/serve/sleep/api_router.py do it: `POST /sleep?level=N` aborts what
//!   runs (mode `abort`) and pauses the scheduler, so requests that arrive are accepted and
//!   wait, unprocessed, until `POST /wake_up`; `GET /is_sleeping`. With
//!   [`VllmOptions::sleep_idle_ttl`] (`--sleep-idle-ttl`, vllm-project/vllm PR #47703) the
//!   API server sleeps the engines after that long without an inference request and wakes
//!   them for the next one, holding it meanwhile; health probes and `/metrics` neither
//!   reset that timer nor wake it, and a manual `/sleep` is never woken by a request;
//! - `POST /control/loaded`, `/control/busy?running=N&waiting=M` (inference requests:
//!   N running and M waiting over all engines), `/control/hang[?engine=I]` (that engine
//!   loop, or all, stops: counters freeze, requests stay running, `/health` stays 200),
//!   `/control/slow?ms=N` (every answer waits N ms), `/control/slow_metrics?ms=N` (only
//!   `/metrics` waits: a metrics endpoint behind a stuck exporter or proxy while the
//!   engine and `/health` are fine), `/control/close` (stop listening; the process lives
//!   on), `/control/unhang` (every engine loop resumes), `/control/zombie` (a child, `sleep`,
//!   killed and not waited for: a zombie, as a dead engine-core or tokenizer process its
//!   server has not reaped), `/control/reap` (it is waited for), `GET /control/state` (JSON:
//!   asleep, and the wake-ups by request and by operator).
//! - `GET /v1/models` and `POST /v1/completions` (a 1-token answer that moves engine 0's
//!   counters), what the canary of SPEC §12 sends, and `/control/die[?after_first_chunk=1]`:
//!   the engine died while idle (vLLM #16259): `/health` and `/v1/models` (the API
//!   server's) still answer, a completion never does, or stops after its first chunk;
//!   `/control/revive`: completions answer again, those held silently too.
//!
//! [`serve_llamacpp`] is the same switches in front of a fake llama.cpp server
//! (ggml-org/llama.cpp tools/server), with the behaviours of the real one that the
//! agent must handle (SPEC §8, §12):
//! - `/metrics` is answered by the engine loop (server-context.cpp: the handler posts a
//!   `SERVER_TASK_TYPE_METRICS` task and waits for it), so a hung engine makes scrapes hang
//!   while `/health` (answered by the HTTP thread) stays 200; `/control/unhang` resumes it;
//! - with an API key, `/metrics` wants `Authorization: Bearer <key>` and answers 401
//!   otherwise (`/health` stays public);
//! - values are printed as C++ streams print doubles, 6 significant digits
//!   (server-task.cpp `to_metrics`): `1.23457e+08`; counters may start at a base (a server
//!   that has run for a long time), and every `/metrics` GET resets the window of the
//!   `*_tokens_seconds` gauges (`metrics_reset_bucket`);
//! - `--sleep-idle-seconds` (PR #18228, tools/server/server-queue.cpp `start_loop`): once
//!   no task was posted for that long the model is unloaded; every posted task restarts the
//!   timer and wakes a sleeping server (a reload that takes [`WAKE_FOR`]), a `/metrics` GET
//!   included (issue #20227), unless [`LlamaOptions::metrics_snapshot`] (PR #27376: a
//!   sleeping server answers `/metrics` from its last page); `/health` and `/props`
//!   (`"is_sleeping"`) touch neither; the engine loop burns CPU while it decodes, as a
//!   real one does.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::client;

/// How long a sleeping fake takes to wake (weights back on the GPU, or a model reload).
pub const WAKE_FOR: Duration = Duration::from_millis(300);

/// How the fake vLLM runs.
#[derive(Debug, Clone, Default)]
pub struct VllmOptions {
    /// Loading ends after this long (else on `/control/loaded`).
    pub load_for: Option<Duration>,
    /// Data-parallel engines (`--data-parallel-size`); 0 is taken as 1.
    pub engines: usize,
    /// `--sleep-idle-ttl`: sleep after this long without an inference request.
    pub sleep_idle_ttl: Option<Duration>,
}

/// One engine core.
#[derive(Debug, Default, Clone)]
struct Core {
    hung: bool,
    running: u64,
    waiting: u64,
    iterations: u64,
    generation_tokens: u64,
    prompt_tokens: u64,
}

/// Whether the engines sleep.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sleep {
    Awake,
    /// `level` as `/sleep?level=` says; `manual`: by `/sleep`, else by the idle TTL.
    Asleep {
        level: u8,
        manual: bool,
    },
    /// Woken by a request, awake at `until` (the request is held meanwhile).
    Waking {
        until: Instant,
    },
}

/// The simulated server.
#[derive(Debug)]
struct Engine {
    loading: bool,
    delay: Duration,
    metrics_delay: Duration,
    cores: Vec<Core>,
    sleep: Sleep,
    /// Requests held by the idle-sleep middleware while the engines wake.
    held: Option<(u64, u64)>,
    last_inference: Instant,
    wakes_by_request: u64,
    wakes_by_operator: u64,
    /// The engine died while idle (`/control/die`).
    dead: Option<Death>,
    /// A child killed and not yet waited for (`/control/zombie`): a zombie until
    /// `/control/reap`.
    zombie: Option<Child>,
}

/// How a dead engine answers a completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Death {
    /// Not at all: the request waits forever.
    Silent,
    /// The head and a first chunk, then nothing (a worker frozen after its first chunk,
    /// Dynamo #13675).
    AfterFirstChunk,
}

impl Engine {
    /// `running` and `waiting` requests spread over the engines as vLLM's DP coordinator
    /// balances them; while asleep (scheduler paused) every request waits.
    fn assign(&mut self, running: u64, waiting: u64) {
        let paused = matches!(self.sleep, Sleep::Asleep { .. });
        let (running, waiting) = if paused {
            (0, running + waiting)
        } else {
            (running, waiting)
        };
        let n = self.cores.len() as u64;
        for (i, c) in self.cores.iter_mut().enumerate() {
            let share = |total: u64| total / n + u64::from((i as u64) < total % n);
            c.running = share(running);
            c.waiting = share(waiting);
        }
    }
}

type Shared = Arc<Mutex<Engine>>;

fn lock(e: &Shared) -> std::sync::MutexGuard<'_, Engine> {
    e.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Serves on `listener` until `/control/close`. Never returns while listening.
pub fn serve(listener: TcpListener, options: VllmOptions) {
    let engine: Shared = Arc::new(Mutex::new(Engine {
        loading: true,
        delay: Duration::ZERO,
        metrics_delay: Duration::ZERO,
        cores: vec![Core::default(); options.engines.max(1)],
        sleep: Sleep::Awake,
        held: None,
        last_inference: Instant::now(),
        wakes_by_request: 0,
        wakes_by_operator: 0,
        dead: None,
        zombie: None,
    }));
    let started = Instant::now();
    {
        // The engine loops: one step every 20 ms per engine with requests, unless hung or
        // asleep; the API server's idle-sleep timer beside them.
        let engine = Arc::clone(&engine);
        let (load_for, ttl) = (options.load_for, options.sleep_idle_ttl);
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(20));
            let mut e = lock(&engine);
            if e.loading && load_for.is_some_and(|d| started.elapsed() >= d) {
                e.loading = false;
            }
            match e.sleep {
                Sleep::Waking { until } if Instant::now() >= until => {
                    e.sleep = Sleep::Awake;
                    if let Some((r, w)) = e.held.take() {
                        e.assign(r, w);
                    }
                }
                Sleep::Awake
                    if ttl.is_some_and(|t| e.last_inference.elapsed() >= t)
                        && e.cores.iter().all(|c| c.running == 0 && c.waiting == 0) =>
                {
                    e.sleep = Sleep::Asleep {
                        level: 1,
                        manual: false,
                    };
                }
                _ => {}
            }
            if e.sleep != Sleep::Awake {
                continue;
            }
            for c in e.cores.iter_mut().filter(|c| !c.hung && c.running > 0) {
                c.iterations += 1;
                c.generation_tokens += c.running;
                if c.waiting > 0 {
                    c.waiting -= 1;
                    c.prompt_tokens += 16;
                }
            }
        });
    }
    let closed = Arc::new(AtomicBool::new(false));
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    for stream in listener.incoming() {
        if closed.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let engine = Arc::clone(&engine);
        let closed = Arc::clone(&closed);
        std::thread::spawn(move || handle(stream, &engine, &closed, addr));
    }
    // Not listening any more (connections are refused); the process stays, as a server
    // whose socket died would.
    drop(listener);
    loop {
        std::thread::park();
    }
}

/// Answers the requests of one connection. Like vLLM's server (uvicorn), an HTTP/1.1
/// connection stays open between requests unless the client asks `Connection: close` (the
/// kubelet's probes do; the agent's scrapes reuse it) and is closed after
/// [`KEEP_ALIVE_IDLE`] without a request.
fn handle(mut stream: TcpStream, engine: &Shared, closed: &AtomicBool, addr: SocketAddr) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Some(mut reader) = stream.try_clone().ok().map(BufReader::new) else {
        return;
    };
    while let Some(request) = read_request(&mut reader) {
        let keep_alive = request.keep_alive && !closed.load(Ordering::SeqCst);
        if answer(&mut stream, &request.head, keep_alive, engine, closed, addr).is_err()
            || !keep_alive
        {
            return;
        }
        let _ = stream.set_read_timeout(Some(KEEP_ALIVE_IDLE));
    }
}

/// How long a kept connection may sit idle (uvicorn's `timeout_keep_alive` default).
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(5);

/// Answers one request; `keep_alive` says whether the connection stays open after it.
fn answer(
    stream: &mut TcpStream,
    (method, target, _): &Head,
    keep_alive: bool,
    engine: &Shared,
    closed: &AtomicBool,
    addr: SocketAddr,
) -> std::io::Result<()> {
    let (method, target) = (method.as_str(), target.as_str());
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let param = |k: &str| query_param(query, k);
    let delay = lock(engine).delay;
    let (code, body) = match (method, path) {
        ("GET", "/health") => {
            std::thread::sleep(delay);
            if lock(engine).loading {
                (503, String::new())
            } else {
                (200, String::new())
            }
        }
        ("GET", "/metrics") => {
            let metrics_delay = lock(engine).metrics_delay;
            std::thread::sleep(delay + metrics_delay);
            (200, metrics(&lock(engine)))
        }
        ("POST", "/sleep") => {
            let mut e = lock(engine);
            // Mode `abort`: what runs or waits is aborted; the scheduler pauses.
            e.assign(0, 0);
            e.held = None;
            e.sleep = Sleep::Asleep {
                level: u8::try_from(param("level").max(1)).unwrap_or(1),
                manual: true,
            };
            (200, String::new())
        }
        ("POST", "/wake_up") => {
            let mut e = lock(engine);
            if matches!(e.sleep, Sleep::Asleep { .. }) {
                e.wakes_by_operator += 1;
            }
            e.sleep = Sleep::Awake;
            // The scheduler resumes what waited.
            let waiting = e.cores.iter().map(|c| c.waiting).sum();
            e.assign(waiting, 0);
            (200, String::new())
        }
        ("GET", "/is_sleeping") => (
            200,
            format!(
                r#"{{"is_sleeping":{}}}"#,
                lock(engine).sleep != Sleep::Awake
            ),
        ),
        ("GET", "/control/state") => {
            let e = lock(engine);
            (
                200,
                format!(
                    r#"{{"is_sleeping":{},"wakes_by_request":{},"wakes_by_operator":{}}}"#,
                    e.sleep != Sleep::Awake,
                    e.wakes_by_request,
                    e.wakes_by_operator
                ),
            )
        }
        // vllm/entrypoints/openai/api_server.py `show_available_models`: answered by the
        // API server from its own list, without the engine.
        ("GET", "/v1/models") => (
            200,
            r#"{"object":"list","data":[{"id":"fake/llama","object":"model","owned_by":"vllm"}]}"#
                .into(),
        ),
        ("POST", "/v1/completions") => {
            std::thread::sleep(delay);
            let mut e = lock(engine);
            match e.dead {
                Some(Death::AfterFirstChunk) => {
                    drop(e);
                    return first_chunk_then_silence(stream);
                }
                Some(Death::Silent) => {
                    // Held until `/control/revive`, then answered as the engine answers.
                    drop(e);
                    while lock(engine).dead.is_some() {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    e = lock(engine);
                }
                None => {}
            }
            e.last_inference = Instant::now();
            let core = &mut e.cores[0];
            core.prompt_tokens += 1;
            core.generation_tokens += 1;
            core.iterations += 1;
            (
                200,
                r#"{"id":"cmpl-0","object":"text_completion","model":"fake/llama","choices":[{"index":0,"text":" pong","finish_reason":"length"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#
                    .into(),
            )
        }
        ("POST", "/control/die") => {
            lock(engine).dead = Some(if param("after_first_chunk") == 1 {
                Death::AfterFirstChunk
            } else {
                Death::Silent
            });
            (200, "ok".into())
        }
        ("POST", "/control/revive") => {
            lock(engine).dead = None;
            (200, "ok".into())
        }
        ("POST", "/control/loaded") => {
            lock(engine).loading = false;
            (200, "ok".into())
        }
        ("POST", "/control/unhang") => {
            for c in &mut lock(engine).cores {
                c.hung = false;
            }
            (200, "ok".into())
        }
        ("POST", "/control/busy") => {
            let mut e = lock(engine);
            e.last_inference = Instant::now();
            let (running, waiting) = (param("running"), param("waiting"));
            match e.sleep {
                Sleep::Asleep { manual: false, .. } => {
                    e.sleep = Sleep::Waking {
                        until: Instant::now() + WAKE_FOR,
                    };
                    e.wakes_by_request += 1;
                    e.held = Some((running, waiting));
                }
                Sleep::Waking { .. } => e.held = Some((running, waiting)),
                _ => e.assign(running, waiting),
            }
            (200, "ok".into())
        }
        ("POST", "/control/hang") => {
            let mut e = lock(engine);
            let one = query_param_str(query, "engine").and_then(|i| i.parse::<usize>().ok());
            for (i, c) in e.cores.iter_mut().enumerate() {
                if one.is_none_or(|one| one == i) {
                    c.hung = true;
                }
            }
            (200, "ok".into())
        }
        ("POST", "/control/zombie") => {
            let mut e = lock(engine);
            if e.zombie.is_some() {
                (200, "ok".into())
            } else {
                match Command::new("sleep")
                    .arg("3600")
                    .stdin(Stdio::null())
                    .spawn()
                {
                    Ok(mut child) => {
                        let _ = child.kill();
                        // Held, not waited for: the kernel keeps it as a zombie.
                        e.zombie = Some(child);
                        (200, "ok".into())
                    }
                    Err(err) => (503, format!("cannot start a child: {err}")),
                }
            }
        }
        ("POST", "/control/reap") => {
            if let Some(mut child) = lock(engine).zombie.take() {
                let _ = child.wait();
            }
            (200, "ok".into())
        }
        ("POST", "/control/slow") => {
            lock(engine).delay = Duration::from_millis(param("ms"));
            (200, "ok".into())
        }
        ("POST", "/control/slow_metrics") => {
            lock(engine).metrics_delay = Duration::from_millis(param("ms"));
            (200, "ok".into())
        }
        ("POST", "/control/close") => {
            closed.store(true, Ordering::SeqCst);
            // Wake the accept loop so it sees the flag and drops the listener.
            let _ = TcpStream::connect(addr);
            (200, "ok".into())
        }
        _ => (404, String::new()),
    };
    let reason = match code {
        200 => "OK",
        503 => "Service Unavailable",
        _ => "Not Found",
    };
    let connection = if keep_alive { "keep-alive" } else { "close" };
    write!(
        stream,
        "HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: {connection}\r\n\r\n{body}",
        body.len()
    )
}

/// A completion to an engine that dies after its first chunk: a chunked head and one
/// chunk, and then the connection stays open and silent (the server process lives on).
fn first_chunk_then_silence(stream: &mut TcpStream) -> std::io::Result<()> {
    let chunk = "data: {\"choices\":[{\"text\":\" po\"}]}\n\n";
    write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n",
        chunk.len()
    )?;
    stream.flush()?;
    loop {
        std::thread::park();
    }
}

fn metrics(e: &Engine) -> String {
    let mut page = String::new();
    let mut family =
        |name: &str, kind: &str, help: &str, series: &dyn Fn(&str, &Core) -> String| {
            page.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (i, c) in e.cores.iter().enumerate() {
                let l = format!(r#"engine="{i}",model_name="fake/llama""#);
                page.push_str(&series(&l, c));
            }
        };
    family(
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
        &|l, c| format!("vllm:num_requests_running{{{l}}} {}.0\n", c.running),
    );
    family(
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        &|l, c| format!("vllm:num_requests_waiting{{{l}}} {}.0\n", c.waiting),
    );
    let (awake, offloaded, discarded) = match e.sleep {
        Sleep::Asleep { level: 2, .. } => (0, 0, 1),
        Sleep::Asleep { .. } | Sleep::Waking { .. } => (0, 1, 0),
        Sleep::Awake => (1, 0, 0),
    };
    family(
        "vllm:engine_sleep_state",
        "gauge",
        "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
        &|l, _| {
            format!(
                "vllm:engine_sleep_state{{{l},sleep_state=\"awake\"}} {awake}.0\n\
                 vllm:engine_sleep_state{{{l},sleep_state=\"weights_offloaded\"}} {offloaded}.0\n\
                 vllm:engine_sleep_state{{{l},sleep_state=\"discard_all\"}} {discarded}.0\n"
            )
        },
    );
    family(
        "vllm:prompt_tokens_total",
        "counter",
        "Number of prefill tokens processed.",
        &|l, c| format!("vllm:prompt_tokens_total{{{l}}} {}.0\n", c.prompt_tokens),
    );
    family(
        "vllm:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        &|l, c| {
            format!(
                "vllm:generation_tokens_total{{{l}}} {}.0\n",
                c.generation_tokens
            )
        },
    );
    family(
        "vllm:iteration_tokens_total",
        "histogram",
        "Histogram of number of tokens per engine_step.",
        &|l, c| {
            format!(
                "vllm:iteration_tokens_total_bucket{{{l},le=\"+Inf\"}} {it}.0\n\
             vllm:iteration_tokens_total_count{{{l}}} {it}.0\n\
             vllm:iteration_tokens_total_sum{{{l}}} {}.0\n",
                c.generation_tokens + c.prompt_tokens,
                it = c.iterations
            )
        },
    );
    page
}

/// How the fake llama.cpp server runs.
#[derive(Debug, Clone, Default)]
pub struct LlamaOptions {
    /// `--api-key`: `/metrics` then wants `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Where every counter starts (a server that has run for a long time).
    pub counter_base: u64,
    /// Loading ends after this long (else on `/control/loaded`).
    pub load_for: Option<Duration>,
    /// `--sleep-idle-seconds`: unload the model after this long without a task.
    pub sleep_idle: Option<Duration>,
    /// PR #27376 and later: a sleeping server answers `/metrics` from its last page
    /// instead of waking.
    pub metrics_snapshot: bool,
}

/// The fake llama.cpp engine: its state and the `/metrics` tasks waiting for its loop.
#[derive(Debug, Default)]
struct Llama {
    loading: bool,
    hung: bool,
    /// The model is unloaded (`server_queue::sleeping`).
    sleeping: bool,
    /// A reload asked for by a task, done at this time.
    waking_until: Option<Instant>,
    /// `server_queue::time_last_task`.
    last_task: Option<Instant>,
    /// Wake-ups, and which were asked by a `/metrics` GET.
    wakes: u64,
    wakes_by_metrics: u64,
    /// When the server last fell asleep.
    slept_at: Option<Instant>,
    /// The last page rendered, for the snapshot a sleeping server answers.
    last_page: String,
    running: u64,
    waiting: u64,
    n_decode: u64,
    tokens_predicted: u64,
    prompt_tokens: u64,
    /// The `*_tokens_seconds` window, reset by every `/metrics` GET.
    bucket_tokens: u64,
    bucket_ms: u64,
    /// `/metrics` requests waiting for the engine loop to render the page.
    tasks: Vec<mpsc::Sender<String>>,
}

/// A double as `std::stringstream << double` writes it: `%g` with 6 significant digits.
pub fn cpp_double(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let strip = |s: String| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    let sci = format!("{v:.5e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", strip(mantissa.to_string()), exp.abs())
    } else {
        let decimals = usize::try_from(5 - exp).unwrap_or(0);
        strip(format!("{v:.decimals$}"))
    }
}

fn llama_metrics(e: &Llama, base: u64) -> String {
    let per_second = |tokens: u64| {
        if e.bucket_ms == 0 {
            0.0
        } else {
            tokens as f64 * 1000.0 / e.bucket_ms as f64
        }
    };
    let items = [
        (
            "prompt_tokens_total",
            "counter",
            (base + e.prompt_tokens) as f64,
        ),
        (
            "tokens_predicted_total",
            "counter",
            (base + e.tokens_predicted) as f64,
        ),
        ("n_decode_total", "counter", (base + e.n_decode) as f64),
        ("prompt_tokens_seconds", "gauge", per_second(0)),
        (
            "predicted_tokens_seconds",
            "gauge",
            per_second(e.bucket_tokens),
        ),
        ("requests_processing", "gauge", e.running as f64),
        ("requests_deferred", "gauge", e.waiting as f64),
    ];
    let mut page = String::new();
    for (name, kind, value) in items {
        page.push_str(&format!(
            "# HELP llamacpp:{name} {name}\n# TYPE llamacpp:{name} {kind}\nllamacpp:{name} {}\n",
            cpp_double(value)
        ));
    }
    page
}

/// Serves a fake llama.cpp on `listener` (see the module doc). Never returns.
pub fn serve_llamacpp(listener: TcpListener, options: LlamaOptions) {
    let engine = Arc::new(Mutex::new(Llama {
        loading: true,
        last_task: Some(Instant::now()),
        ..Llama::default()
    }));
    let started = Instant::now();
    {
        // The engine loop: a decode step every 20 ms while requests run (burning CPU as a
        // real one does), then the queued `/metrics` tasks; nothing at all while hung.
        // Asleep once no task came for the idle time; a task wakes it.
        let engine = Arc::clone(&engine);
        let (base, load_for, idle) = (options.counter_base, options.load_for, options.sleep_idle);
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(20));
            let mut e = engine.lock().unwrap_or_else(PoisonError::into_inner);
            if e.loading && load_for.is_some_and(|d| started.elapsed() >= d) {
                e.loading = false;
            }
            if e.hung {
                continue;
            }
            let now = Instant::now();
            if let Some(until) = e.waking_until {
                if now < until {
                    continue;
                }
                e.waking_until = None;
                e.sleeping = false;
                e.last_task = Some(now);
            }
            if e.sleeping {
                continue;
            }
            let idle_for = e
                .last_task
                .map_or(Duration::ZERO, |t| now.duration_since(t));
            if e.running == 0 && e.tasks.is_empty() && idle.is_some_and(|i| idle_for >= i) {
                e.sleeping = true;
                e.slept_at = Some(now);
                continue;
            }
            if e.running > 0 {
                e.n_decode += 1;
                e.tokens_predicted += e.running;
                e.bucket_tokens += e.running;
                if e.waiting > 0 {
                    e.waiting -= 1;
                    e.prompt_tokens += 16;
                }
                // update_slots() keeps the timer from counting a busy server as idle.
                e.last_task = Some(now);
                let spin = Instant::now();
                while spin.elapsed() < Duration::from_millis(8) {
                    std::hint::spin_loop();
                }
            }
            e.bucket_ms += 20;
            let page = llama_metrics(&e, base);
            e.last_page.clone_from(&page);
            let tasks = std::mem::take(&mut e.tasks);
            if !tasks.is_empty() {
                e.bucket_tokens = 0;
                e.bucket_ms = 0;
            }
            drop(e);
            for t in tasks {
                let _ = t.send(page.clone());
            }
        });
    }
    let key = options.api_key.map(|k| format!("Bearer {k}"));
    let snapshot = options.metrics_snapshot;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let (engine, key) = (Arc::clone(&engine), key.clone());
        std::thread::spawn(move || handle_llama(stream, &engine, key.as_deref(), snapshot));
    }
}

impl Llama {
    /// `server_queue::post`: a task restarts the idle timer and wakes a sleeping server.
    fn post(&mut self) {
        self.last_task = Some(Instant::now());
        if self.sleeping && self.waking_until.is_none() {
            self.waking_until = Some(Instant::now() + WAKE_FOR);
            self.wakes += 1;
        }
    }
}

fn handle_llama(mut stream: TcpStream, engine: &Mutex<Llama>, key: Option<&str>, snapshot: bool) {
    let Some((method, target, headers)) = read_head(&stream) else {
        return;
    };
    let lock = || engine.lock().unwrap_or_else(PoisonError::into_inner);
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let param = |k: &str| query_param(query, k);
    let authorized = key.is_none_or(|k| {
        headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("authorization") && v == k)
    });
    let (code, body) = match (method.as_str(), path) {
        ("GET", "/health") if lock().loading => (
            503,
            r#"{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}"#.into(),
        ),
        ("GET", "/health") => (200, r#"{"status":"ok"}"#.to_string()),
        ("GET", "/metrics") if !authorized => (
            401,
            r#"{"error":{"code":401,"message":"Invalid API Key","type":"authentication_error"}}"#
                .into(),
        ),
        ("GET", "/metrics") if snapshot && lock().sleeping => (200, lock().last_page.clone()),
        ("GET", "/metrics") => {
            // Posted to the engine loop; answered when (if) the loop takes it.
            let (tx, rx) = mpsc::channel();
            {
                let mut e = lock();
                if e.sleeping {
                    e.wakes_by_metrics += 1;
                }
                e.post();
                e.tasks.push(tx);
            }
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(page) => (200, page),
                Err(_) => return,
            }
        }
        // Answered by the HTTP thread: neither wakes it nor restarts the idle timer.
        ("GET", "/props") => {
            let e = lock();
            (
                200,
                format!(
                    r#"{{"total_slots":1,"model_path":"fake.gguf","is_sleeping":{}}}"#,
                    e.sleeping
                ),
            )
        }
        ("GET", "/control/state") => {
            let e = lock();
            let since = |t: Option<Instant>| t.map_or(-1.0, |t| t.elapsed().as_secs_f64());
            (
                200,
                format!(
                    r#"{{"is_sleeping":{},"wakes":{},"wakes_by_metrics":{},"asleep_for":{},"idle_for":{}}}"#,
                    e.sleeping,
                    e.wakes,
                    e.wakes_by_metrics,
                    if e.sleeping { since(e.slept_at) } else { -1.0 },
                    since(e.last_task)
                ),
            )
        }
        ("POST", "/control/loaded") => {
            lock().loading = false;
            (200, "ok".into())
        }
        ("POST", "/control/busy") => {
            // Completion requests: tasks, which wake a sleeping server.
            let mut e = lock();
            e.post();
            e.running = param("running");
            e.waiting = param("waiting");
            (200, "ok".into())
        }
        ("POST", "/control/hang") => {
            lock().hung = true;
            (200, "ok".into())
        }
        ("POST", "/control/unhang") => {
            lock().hung = false;
            (200, "ok".into())
        }
        _ => (404, String::new()),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {code} X\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// The query's value of `k` as a number (0 when absent or not one).
fn query_param(query: &str, k: &str) -> u64 {
    query_param_str(query, k)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The query's value of `k`.
fn query_param_str<'q>(query: &'q str, k: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(key, _)| *key == k)
        .map(|(_, v)| v)
}

/// A request head: method, target, header lines (name, value).
pub(crate) type Head = (String, String, Vec<(String, String)>);

/// One request read from a connection.
struct Request {
    head: Head,
    /// HTTP/1.1 without `Connection: close`.
    keep_alive: bool,
}

/// The request line's method and target, and the header lines (no bodies are sent to
/// these servers).
pub(crate) fn read_head(stream: &TcpStream) -> Option<Head> {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    read_request(&mut reader).map(|r| r.head)
}

/// The next request on a connection; `None` at its end (closed, idle too long, garbage).
fn read_request(reader: &mut impl BufRead) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        match reader.read_line(&mut h) {
            Ok(0) | Err(_) => break,
            Ok(_) if h == "\r\n" || h == "\n" => break,
            Ok(_) => {
                if let Some((n, v)) = h.trim_end().split_once(':') {
                    headers.push((n.trim().to_string(), v.trim().to_string()));
                }
            }
        }
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next().unwrap_or("/").to_string();
    let keep_alive = parts.next() == Some("HTTP/1.1")
        && !headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close"));
    Some(Request {
        head: (method, target, headers),
        keep_alive,
    })
}

/// A running `fake-vllm` process, in its own process group (a "container").
#[derive(Debug)]
pub struct FakeVllm {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl FakeVllm {
    /// Starts `bin` on `addr` (loading for `load_for`, or until [`FakeVllm::loaded`]),
    /// logging to `log`.
    pub fn start(bin: &Path, addr: SocketAddr, load_for: Option<Duration>, log: &Path) -> Self {
        Self::start_with(bin, addr, load_for, &[], log)
    }

    /// [`FakeVllm::start`] with more of the binary's arguments (`--engines 8`,
    /// `--sleep-idle-ttl 2`, `--llamacpp --sleep-idle-seconds 2`, ...).
    pub fn start_with(
        bin: &Path,
        addr: SocketAddr,
        load_for: Option<Duration>,
        args: &[&str],
        log: &Path,
    ) -> Self {
        let file = std::fs::File::create(log).expect("the log folder is writable");
        let err = file.try_clone().expect("a log file handle can be cloned");
        let mut cmd = Command::new(bin);
        cmd.arg(addr.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .process_group(0);
        if let Some(d) = load_for {
            cmd.arg(d.as_millis().to_string());
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let me = FakeVllm { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        // `/health` answers at once, loading or not, and (unlike `/metrics` on llama.cpp)
        // neither wakes the server nor restarts its idle timer.
        while client::get(addr, "/health", Duration::from_secs(1)).is_err() {
            assert!(
                Instant::now() < deadline,
                "fake-vllm did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        me
    }

    /// Its pid (and process group).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends control request `path` (`/control/hang`, ...; see the module doc).
    pub fn control(&self, path: &str) {
        let r = client::request_with(self.addr, "POST", path, None, Duration::from_secs(5), || {})
            .unwrap_or_else(|e| panic!("fake-vllm {path}: {e}"));
        assert_eq!(r.status, 200, "fake-vllm {path}");
    }

    /// Ends "loading": `/health` turns 200.
    pub fn loaded(&self) {
        self.control("/control/loaded");
    }

    /// `running` requests in the batch and `waiting` in the queue.
    pub fn busy(&self, running: u64, waiting: u64) {
        self.control(&format!(
            "/control/busy?running={running}&waiting={waiting}"
        ));
    }

    /// The engine loop stops; `/health` keeps answering 200.
    pub fn hang_engine(&self) {
        self.control("/control/hang");
    }

    /// The engine dies while idle: `/health` stays 200, completions never answer (with
    /// `after_first_chunk`, they stop after their first chunk).
    pub fn die(&self, after_first_chunk: bool) {
        self.control(&format!(
            "/control/die?after_first_chunk={}",
            u8::from(after_first_chunk)
        ));
    }

    /// Engine `i` of a data-parallel server stops alone.
    pub fn hang_one_engine(&self, i: usize) {
        self.control(&format!("/control/hang?engine={i}"));
    }

    /// An operator's `POST /sleep?level=N` (vLLM's dev-mode route).
    pub fn sleep(&self, level: u8) {
        self.control(&format!("/sleep?level={level}"));
    }

    /// What the server says of itself (`GET /control/state`): whether it sleeps, and its
    /// wake-ups.
    pub fn state(&self) -> serde_json::Value {
        let r = client::get(self.addr, "/control/state", Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("fake-vllm /control/state: {e}"));
        serde_json::from_str(&r.text())
            .unwrap_or_else(|e| panic!("fake-vllm /control/state is not JSON ({e})"))
    }

    /// Every answer from now on waits `d`.
    pub fn slow(&self, d: Duration) {
        self.control(&format!("/control/slow?ms={}", d.as_millis()));
    }

    /// Every `/metrics` answer from now on waits `d`; `/health` and the engine are unchanged.
    pub fn slow_metrics(&self, d: Duration) {
        self.control(&format!("/control/slow_metrics?ms={}", d.as_millis()));
    }

    /// Stops listening (the process stays).
    pub fn close(&self) {
        self.control("/control/close");
    }

    /// Sends `sig` to its process group.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let group = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).expect("pids fit in i32"));
        nix::sys::signal::killpg(group, sig)
            .unwrap_or_else(|e| panic!("killpg({group}, {sig}) for fake-vllm: {e}"));
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FakeVllm {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(addr: SocketAddr, name: &str) -> f64 {
        let page = client::get(addr, "/metrics", Duration::from_secs(2))
            .expect("metrics")
            .text();
        // This page has one series per name.
        page.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix('{')?
                    .split_once("} ")?
                    .1
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("{name} missing in {page}"))
    }

    fn await_move(addr: SocketAddr, name: &str, from: f64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if counter(addr, name) != from {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn keeps_a_connection_open_like_uvicorn_unless_asked_to_close() {
        use std::io::Read;
        let addr = start_vllm(VllmOptions {
            load_for: Some(Duration::ZERO),
            ..VllmOptions::default()
        });
        let mut conn = TcpStream::connect(addr).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut reader = BufReader::new(conn.try_clone().expect("clone"));
        // Status line and headers of one answer, then its body by its content-length.
        let mut answer = |request: &str| {
            conn.write_all(request.as_bytes()).expect("send");
            let mut head = Vec::new();
            let mut line = String::new();
            while reader.read_line(&mut line).expect("head") > 2 {
                head.push(line.trim_end().to_ascii_lowercase());
                line.clear();
            }
            let length: usize = head
                .iter()
                .find_map(|h| h.strip_prefix("content-length: ")?.parse().ok())
                .expect("content-length");
            let mut body = vec![0; length];
            reader.read_exact(&mut body).expect("body");
            head
        };
        for _ in 0..2 {
            let head = answer("GET /metrics HTTP/1.1\r\nHost: fake\r\n\r\n");
            assert!(head[0].starts_with("http/1.1 200"), "{head:?}");
            assert!(
                head.contains(&"connection: keep-alive".to_owned()),
                "{head:?}"
            );
        }
        let head = answer("GET /health HTTP/1.1\r\nHost: fake\r\nConnection: close\r\n\r\n");
        assert!(head.contains(&"connection: close".to_owned()), "{head:?}");
        let mut rest = Vec::new();
        assert_eq!(
            reader.read_to_end(&mut rest).expect("closed"),
            0,
            "closed after a close request"
        );
    }

    #[test]
    fn loads_works_and_hangs_with_health_still_ok() {
        let addr = start_vllm(VllmOptions::default());
        let health = || {
            client::get(addr, "/health", Duration::from_secs(2))
                .expect("health")
                .status
        };
        assert_eq!(health(), 503);
        let post = |p: &str| {
            client::request_with(addr, "POST", p, None, Duration::from_secs(2), || {})
                .expect("control")
        };
        post("/control/loaded");
        assert_eq!(health(), 200);
        post("/control/busy?running=2&waiting=1");
        let it = counter(addr, "vllm:iteration_tokens_total_count");
        assert!(
            await_move(addr, "vllm:iteration_tokens_total_count", it),
            "engine steps while busy"
        );
        post("/control/hang");
        let frozen = counter(addr, "vllm:iteration_tokens_total_count");
        assert!(
            !await_move(addr, "vllm:iteration_tokens_total_count", frozen),
            "frozen when hung"
        );
        assert_eq!(counter(addr, "vllm:num_requests_running"), 2.0);
        assert_eq!(
            health(),
            200,
            "vLLM's /health does not see a dead engine loop"
        );
        post("/control/unhang");
        assert!(
            await_move(addr, "vllm:iteration_tokens_total_count", frozen),
            "steps again once unhung"
        );
        post("/control/close");
        let deadline = Instant::now() + Duration::from_secs(2);
        while !client::get(addr, "/health", Duration::from_secs(1)).is_err_and(|e| e.is_refused()) {
            assert!(Instant::now() < deadline, "still listening");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn doubles_print_as_cpp_streams_do() {
        for (v, want) in [
            (0.0, "0"),
            (12.0, "12"),
            (999_999.0, "999999"),
            (1_000_000.0, "1e+06"),
            (1_234_567.0, "1.23457e+06"),
            (123_456_789.0, "1.23457e+08"),
            (0.125, "0.125"),
            (2.371_514, "2.37151"),
        ] {
            assert_eq!(cpp_double(v), want, "{v}");
        }
    }

    #[test]
    fn llamacpp_metrics_come_from_the_engine_loop_and_want_the_key() {
        let addr = start_llamacpp(LlamaOptions {
            api_key: Some("k".into()),
            counter_base: 123_456_789,
            load_for: Some(Duration::ZERO),
            ..LlamaOptions::default()
        });
        let t = Duration::from_secs(2);
        let metrics = |auth: &[(&str, &str)], timeout| {
            let req = client::Request {
                headers: auth,
                ..client::Request::new("GET", "/metrics")
            };
            client::send(addr, &req, timeout)
        };
        let key = [("Authorization", "Bearer k")];
        crate::wait::eventually("loaded", t, || {
            (client::get(addr, "/health", t).ok()?.status == 200).then_some(())
        });
        assert_eq!(metrics(&[], t).expect("answer").status, 401);
        let page = metrics(&key, t).expect("answer").text();
        assert!(
            page.contains("llamacpp:n_decode_total 1.23457e+08\n"),
            "{page}"
        );
        let post =
            |p: &str| client::request_with(addr, "POST", p, None, t, || {}).expect("control");
        post("/control/hang");
        let hung = metrics(&key, Duration::from_millis(500));
        assert!(
            hung.is_err_and(|e| e.is_lost()),
            "a hung engine never answers /metrics"
        );
        assert_eq!(client::get(addr, "/health", t).expect("health").status, 200);
        post("/control/unhang");
        assert_eq!(metrics(&key, t).expect("answer").status, 200);
    }

    fn start_vllm(options: VllmOptions) -> SocketAddr {
        on_loopback(move |listener| serve(listener, options))
    }

    fn start_llamacpp(options: LlamaOptions) -> SocketAddr {
        on_loopback(move |listener| serve_llamacpp(listener, options))
    }

    /// Runs `server` on a thread, listening on a free loopback port; its address.
    fn on_loopback(server: impl FnOnce(TcpListener) + Send + 'static) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || server(listener));
        addr
    }

    fn post_to(addr: SocketAddr, path: &str) {
        let r = client::request_with(addr, "POST", path, None, Duration::from_secs(2), || {})
            .expect("control");
        assert_eq!(r.status, 200, "{path}");
    }

    fn series(addr: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
        let page = client::get(addr, "/metrics", Duration::from_secs(2))
            .expect("metrics")
            .text();
        // Every series of the fake carries the model's name.
        let mut labels = labels.to_vec();
        labels.push(("model_name", "fake/llama"));
        crate::prom::metric(&page, name, &labels)
            .unwrap_or_else(|| panic!("{name} {labels:?} in {page}"))
    }

    #[test]
    fn one_engine_of_a_data_parallel_vllm_hangs_alone_and_sleep_pauses_them_all() {
        let addr = start_vllm(VllmOptions {
            load_for: Some(Duration::ZERO),
            engines: 2,
            ..VllmOptions::default()
        });
        post_to(addr, "/control/busy?running=2&waiting=0");
        post_to(addr, "/control/hang?engine=1");
        let steps = |e: &str| series(addr, "vllm:iteration_tokens_total_count", &[("engine", e)]);
        let (zero, one) = (steps("0"), steps("1"));
        crate::wait::eventually("engine 0 works", Duration::from_secs(2), || {
            (steps("0") > zero).then_some(())
        });
        assert_eq!(steps("1"), one, "engine 1 hung alone");
        // An operator's /sleep aborts what runs; what arrives waits, on every engine.
        post_to(addr, "/sleep?level=1");
        post_to(addr, "/control/busy?running=2&waiting=0");
        let awake = |e: &str| {
            series(
                addr,
                "vllm:engine_sleep_state",
                &[("engine", e), ("sleep_state", "awake")],
            )
        };
        assert_eq!((awake("0"), awake("1")), (0.0, 0.0));
        assert_eq!(
            series(addr, "vllm:num_requests_waiting", &[("engine", "0")]),
            1.0
        );
        assert_eq!(
            series(addr, "vllm:num_requests_running", &[("engine", "0")]),
            0.0
        );
        post_to(addr, "/wake_up");
        assert_eq!(awake("0"), 1.0);
        assert_eq!(
            series(addr, "vllm:num_requests_running", &[("engine", "0")]),
            1.0
        );
    }

    #[test]
    fn an_idle_vllm_sleeps_by_its_ttl_and_a_request_wakes_it_scrapes_do_not() {
        let addr = start_vllm(VllmOptions {
            load_for: Some(Duration::ZERO),
            sleep_idle_ttl: Some(Duration::from_millis(200)),
            ..VllmOptions::default()
        });
        let sleeping = || {
            client::get(addr, "/is_sleeping", Duration::from_secs(2))
                .expect("is_sleeping")
                .text()
                .contains("true")
        };
        crate::wait::eventually("asleep by its TTL", Duration::from_secs(2), || {
            sleeping().then_some(())
        });
        series(addr, "vllm:num_requests_running", &[("engine", "0")]);
        std::thread::sleep(WAKE_FOR);
        assert!(sleeping(), "a scrape does not wake it");
        post_to(addr, "/control/busy?running=1&waiting=0");
        crate::wait::eventually("woken by the request", Duration::from_secs(2), || {
            (!sleeping()).then_some(())
        });
        assert_eq!(
            series(addr, "vllm:num_requests_running", &[("engine", "0")]),
            1.0
        );
    }

    #[test]
    fn llamacpp_metrics_wake_it_before_pr_27376_and_a_snapshot_after() {
        for snapshot in [false, true] {
            let addr = start_llamacpp(LlamaOptions {
                load_for: Some(Duration::ZERO),
                sleep_idle: Some(Duration::from_millis(200)),
                metrics_snapshot: snapshot,
                ..LlamaOptions::default()
            });
            let asleep = || {
                client::get(addr, "/props", Duration::from_secs(2))
                    .expect("props")
                    .text()
                    .contains(r#""is_sleeping":true"#)
            };
            crate::wait::eventually("asleep", Duration::from_secs(2), || asleep().then_some(()));
            let page = client::get(addr, "/metrics", Duration::from_secs(2)).expect("metrics");
            assert_eq!(page.status, 200);
            assert_eq!(
                asleep(),
                snapshot,
                "snapshot {snapshot}: a /metrics GET wakes it unless served from a snapshot"
            );
        }
    }
}
