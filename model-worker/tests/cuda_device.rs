//! The CUDA build on a machine without a GPU: it serves on the CPU with `--device cpu`,
//! and `--device cuda` fails start-up with exit code 1 and a "no CUDA device" message,
//! never a panic.
//!
//! These run against the binary `make cuda-build` builds (`--features cuda`, named by
//! `VITALS_CUDA_WORKER`), with the toolkit's libraries and its driver stub on
//! `LD_LIBRARY_PATH`, as `make cuda-build` sets them. `cargo test` alone lists them as
//! ignored: the CPU build cannot stand in for the CUDA one.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The CUDA-built worker; missing is a failure, not a skip.
fn cuda_worker() -> PathBuf {
    let path = std::env::var_os("VITALS_CUDA_WORKER")
        .map(PathBuf::from)
        .expect(
        "VITALS_CUDA_WORKER is not set: it names the `--features cuda` binary (make cuda-build)",
    );
    assert!(
        path.is_file(),
        "the CUDA build {} does not exist (make cuda-build)",
        path.display()
    );
    path
}

fn model_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "no model in {} (make model)",
        dir.display()
    );
    dir
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
}

/// Starts the CUDA build on `device`, stderr captured, no agent.
fn start(device: &str, addr: SocketAddr, scratch: &Path) -> Child {
    Command::new(cuda_worker())
        .arg("--model-dir")
        .arg(model_dir())
        .args(["--device", device, "--listen", &addr.to_string()])
        .arg("--agent-socket")
        .arg(scratch.join("agent.sock"))
        .args(["--threads", "1", "--max-batch-tokens", "1024"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the CUDA build starts")
}

/// One HTTP/1.1 request; the status code and body, or None if nothing answers yet.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((code, body.to_owned()))
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("the worker can be waited on") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn stderr_of(child: &mut Child) -> String {
    let mut err = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut err);
    }
    err
}

#[test]
#[ignore = "needs the CUDA build: `make cuda-build` runs it"]
fn cuda_build_serves_on_the_cpu() {
    let scratch = tempfile::tempdir().expect("a scratch folder");
    let addr = free_addr();
    let mut child = start("cpu", addr, scratch.path());
    let deadline = Instant::now() + Duration::from_secs(180);
    let ready = loop {
        if let Some(status) = child.try_wait().expect("the worker can be waited on") {
            panic!(
                "the CUDA build exited ({status}) with --device cpu:\n{}",
                stderr_of(&mut child)
            );
        }
        if matches!(http(addr, "GET", "/health", ""), Some((200, _))) {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let info = http(addr, "GET", "/info", "");
    let embedded = http(
        addr,
        "POST",
        "/v1/embeddings",
        r#"{"input":"the GPU build on a CPU","model":"all-MiniLM-L6-v2"}"#,
    );
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        ready,
        "not ready within 180 s on the CPU:\n{}",
        stderr_of(&mut child)
    );
    let (code, info) = info.expect("/info answers");
    assert_eq!(code, 200, "{info}");
    let info: serde_json::Value = serde_json::from_str(&info).expect("/info is JSON");
    assert_eq!(info["device"], "cpu", "{info}");
    let (code, body) = embedded.expect("/v1/embeddings answers");
    assert_eq!(code, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("an embeddings response");
    let dims = body["data"][0]["embedding"].as_array().map_or(0, Vec::len);
    assert_eq!(dims, 384, "{body}");
}

#[test]
#[ignore = "needs the CUDA build: `make cuda-build` runs it"]
fn cuda_build_without_a_gpu_says_no_cuda_device() {
    let scratch = tempfile::tempdir().expect("a scratch folder");
    let mut child = start("cuda", free_addr(), scratch.path());
    let status = wait_exit(&mut child, Duration::from_secs(60));
    if status.is_none() {
        let _ = child.kill();
    }
    let err = stderr_of(&mut child);
    let status = status.unwrap_or_else(|| panic!("still running after 60 s:\n{err}"));
    assert_eq!(status.code(), Some(1), "exit status {status}:\n{err}");
    assert!(
        err.contains("no CUDA device cuda:0: "),
        "no clear message:\n{err}"
    );
    assert!(!err.contains("panicked"), "a panic:\n{err}");
}
