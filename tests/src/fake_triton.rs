//! A fake Triton whose Python-backend stub dies and is never reaped while the server
//! answers live and ready 200 (Triton #8604, #7230), for the zombie rule of SPEC §12.
//!
//! Built from triton-inference-server/python_backend (read at f9088ff): src/stub_launcher.cc
//! `Launch` forks and execs one `triton_python_backend_stub` per model instance, a direct
//! child of the server, and reaps it only in `StubActive()` (the per-model readiness,
//! `/v2/models/<m>/ready`) or at unload; src/python_be.cc `ProcessRequests` answers every
//! request of a dead stub "Stub process ... is not healthy" and never restarts it. The
//! server-wide `/v2/health/live` and `/v2/health/ready` do not ask the stub.
//!
//! - `GET /v2/health/live`, `/v2/health/ready`: 200, always;
//! - `POST /v2/models/<m>/infer`: 200 while the stub runs, 500 once it died;
//! - `GET /metrics`: Triton's counters (the `triton` profile scrapes them);
//! - `POST /control/kill-stub`: the stub is killed (SIGKILL) and left unreaped: a zombie.
//!
//! The stub is this same binary run through a symlink named `triton_python_backend_stub`,
//! so its `comm` is Triton's own `triton_python_b`.

use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};

use crate::fake_vllm::read_head;

/// The argument that makes the binary a stub: it sleeps until killed.
pub const STUB_ARG: &str = "--triton-stub";

/// Starts the stub as the real launcher does: a child of this process, never waited for.
fn launch_stub() -> Child {
    let exe = std::env::current_exe().expect("the fake knows its own path");
    let dir = std::env::temp_dir().join(format!("fake-triton-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp folder");
    let link = dir.join("triton_python_backend_stub");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&exe, &link).expect("symlink the stub");
    Command::new(&link)
        .arg(STUB_ARG)
        .stdin(Stdio::null())
        .spawn()
        .expect("start the stub")
}

/// Serves the fake Triton on `listener`. Never returns.
pub fn serve_triton(listener: TcpListener) {
    // Held, never waited for: once killed it stays a zombie, as in Triton #8604.
    let stub = Arc::new(Mutex::new(Some(launch_stub())));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let stub = Arc::clone(&stub);
        std::thread::spawn(move || handle(stream, &stub));
    }
}

fn handle(mut stream: TcpStream, stub: &Mutex<Option<Child>>) {
    let Some((method, target, _)) = read_head(&stream) else {
        return;
    };
    let mut stub = stub.lock().unwrap_or_else(PoisonError::into_inner);
    let alive = stub.as_ref().is_some();
    let (code, body) = match (method.as_str(), target.as_str()) {
        ("GET", "/v2/health/live" | "/v2/health/ready") => (200, String::new()),
        ("POST", t) if t.starts_with("/v2/models/") && t.ends_with("/infer") => {
            if alive {
                (200, r#"{"outputs":[]}"#.to_owned())
            } else {
                (
                    500,
                    r#"{"error":"Failed to process the request(s) for model instance 'm_0_0', message: Stub process 'm_0_0' is not healthy."}"#
                        .to_owned(),
                )
            }
        }
        ("GET", "/metrics") => (
            200,
            "# TYPE nv_inference_exec_count counter\nnv_inference_exec_count{model=\"m\",version=\"1\"} 0\n# TYPE nv_inference_count counter\nnv_inference_count{model=\"m\",version=\"1\"} 0\n# TYPE nv_inference_pending_request_count gauge\nnv_inference_pending_request_count{model=\"m\",version=\"1\"} 0\n"
                .to_owned(),
        ),
        ("POST", "/control/kill-stub") => {
            if let Some(mut child) = stub.take() {
                let _ = child.kill();
                // Dropped without wait(): the kernel keeps it as a zombie.
                drop(child);
            }
            (200, "ok".to_owned())
        }
        _ => (404, String::new()),
    };
    let reason = match code {
        200 => "OK",
        500 => "Internal Server Error",
        _ => "Not Found",
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {code} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}
