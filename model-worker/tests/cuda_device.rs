//! The CUDA build on a machine without a GPU: it serves on the CPU with `--device cpu`,
//! and `--device cuda` fails start-up with exit code 1 and a "no CUDA device" message,
//! never a panic.
//!
//! These run against the binary `make cuda-build` builds (`--features cuda`, named by
//! `VITALS_CUDA_WORKER`), with the toolkit's libraries and its driver stub on
//! `LD_LIBRARY_PATH`, as `make cuda-build` sets them. `cargo test` alone lists them as
//! ignored: the CPU build cannot stand in for the CUDA one.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use vitals_e2e::bins::model_dir;
use vitals_e2e::client::{get, post_json};
use vitals_e2e::pod::free_addr;
use vitals_e2e::wait::{eventually, until};

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
    let timeout = Duration::from_secs(30);
    until(
        "the CUDA build ready on the CPU",
        Duration::from_secs(180),
        || {
            if let Some(status) = child.try_wait().expect("the worker can be waited on") {
                panic!(
                    "exited ({status}) with --device cpu:\n{}",
                    stderr_of(&mut child)
                );
            }
            match get(addr, "/health", timeout) {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("/health answered {}", r.status)),
                Err(e) => Err(format!("{e:?}")),
            }
        },
    );
    let info = get(addr, "/info", timeout).and_then(|r| r.json());
    let embedded = post_json(
        addr,
        "/v1/embeddings",
        &json!({"input": "the GPU build on a CPU", "model": "all-MiniLM-L6-v2"}),
        timeout,
    )
    .and_then(|r| r.json());
    let _ = child.kill();
    let _ = child.wait();
    let info = info.expect("/info answers JSON");
    assert_eq!(info["device"], "cpu", "{info}");
    let body = embedded.expect("/v1/embeddings answers JSON");
    let dims = body["data"][0]["embedding"].as_array().map_or(0, Vec::len);
    assert_eq!(dims, 384, "{body}");
}

#[test]
#[ignore = "needs the CUDA build: `make cuda-build` runs it"]
fn cuda_build_without_a_gpu_says_no_cuda_device() {
    let scratch = tempfile::tempdir().expect("a scratch folder");
    let mut child = start("cuda", free_addr(), scratch.path());
    let status = eventually("the CUDA build to exit", Duration::from_secs(60), || {
        child.try_wait().expect("the worker can be waited on")
    });
    let err = stderr_of(&mut child);
    assert_eq!(status.code(), Some(1), "exit status {status}:\n{err}");
    assert!(
        err.contains("no CUDA device cuda:0: "),
        "no clear message:\n{err}"
    );
    assert!(!err.contains("panicked"), "a panic:\n{err}");
}
